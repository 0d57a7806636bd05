"""A seeded chaos run of ``rotator run`` against the sandbox: faults, rotate and leak requests, SIGKILLs.

One random.Random(seed) decides every step, so a failing seed can be replayed (timings still vary with the
machine, which is the point). Everything talks to 127.0.0.1. The run:

- every ~0.1-0.5 s does one of: set a fault rule (IAM mint 503s, secret write 500s or 429s, registry 503s,
  the registry rejecting new keys), clear the faults, POST /rotate (sometimes repeating an Idempotency-Key),
  POST /leaked for the current or a retired key, or SIGKILL the daemon and start it again — some restarts
  armed to die at a step boundary (during a rollback, right after IAM minted a key);
- samples IAM and the journal: owned enabled keys the journal knows must stay <= 2 + keys in grace, allowing
  a revocation ``REVOKE_SLACK_S`` to happen once due;
- then clears the faults and waits for every accepted request and every leak to settle.

``figures()`` returns what was counted; ``check()`` asserts the promises (see ``Figures``).
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from daemon_env import API_AUTH, Daemon, api_config, first_rotation_done
from polling import wait_for
from rotation_env import CRED, iam_keys, pulls, stored_password

from rotator.adapters.state import FileStateStore
from rotator.journal import Result
from rotator.sandbox.control import SandboxProcess

TEAMS = ("team-a", "team-b", "team-c")
# A disable that fell due is done by the next pass: a retry wait (retry_backoff_max below) plus a pass under
# faults (in-step retries of up to a few seconds) and a restart after a kill.
REVOKE_SLACK_S = 15.0
SETTLE_TIMEOUT_S = 90.0
ORPHAN_WINDOW_S = 11 * 60  # past the policy's 10-minute orphan window
FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("iam", {"path_prefix": "/v1/apikeys", "methods": ["POST"], "error_status": 503, "error_rate": 0.5}),
    ("iam", {"path_prefix": "/v1/apikeys/", "methods": ["POST"], "error_status": 500, "error_rate": 0.3}),
    (
        "kubernetes",
        {"path_prefix": "/api/v1/namespaces/team-b/", "methods": ["PUT"], "error_status": 500, "error_rate": 0.6},
    ),
    (
        "kubernetes",
        {"path_prefix": "/api/v1/namespaces/", "methods": ["PUT"], "throttle_seconds": 1.0, "retry_after": 1},
    ),
    ("registry", {"path_prefix": "/v2/", "error_status": 503, "error_rate": 0.5}),
]
# Restarts armed to die at a boundary: during a rollback (with new keys rejected), or right after IAM minted
# a key and before the journal saw its id (which leaves an orphan for the sweep).
ARMED = ("rollback:after-restore", "mint:after-provider")
ROLLBACK_FAULT = {"path_prefix": "/v1/apikeys/", "methods": ["DELETE"], "error_status": 503, "error_rate": 0.5}


@dataclass
class Figures:
    seed: int
    seconds: float = 0.0
    steps: int = 0
    posts: int = 0
    refused: int = 0  # 429/503 answers: nothing accepted, nothing promised
    accepted: int = 0  # 202s, first answers per Idempotency-Key
    replays: int = 0
    joined: int = 0
    served: dict[str, int] = field(default_factory=dict)  # own requests by end state
    leaks_reported: int = 0
    leaks_disabled: int = 0
    disable_seconds: list[float] = field(default_factory=list)
    kills: int = 0
    armed_kills: list[str] = field(default_factory=list)  # restarts armed to die at a boundary
    armed_reached: int = 0  # ... that did
    rollbacks: int = 0
    orphans_swept: int = 0
    max_enabled: int = 0
    bound_violations: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        d = self.disable_seconds
        timing = f"median {statistics.median(d):.1f}s max {max(d):.1f}s" if d else "n/a"
        return (
            f"seed {self.seed}: {self.seconds:.0f}s, {self.kills} kills "
            f"({len(self.armed_kills)} armed: {', '.join(self.armed_kills) or '-'}; {self.armed_reached} reached), "
            f"{self.steps} steps, {self.posts} posts ({self.refused} refused); "
            f"requests accepted {self.accepted} (replays {self.replays}) -> served {sum(self.served.values())} "
            f"{dict(sorted(self.served.items()))}, joined {self.joined}; leaks {self.leaks_reported} reported, "
            f"{self.leaks_disabled} disabled, time to disable {timing}; rollbacks {self.rollbacks}; "
            f"orphans swept {self.orphans_swept}; max enabled owned keys {self.max_enabled}; "
            f"bound violations {len(self.bound_violations)}; problems {len(self.problems)}"
        )


@dataclass
class Accepted:
    rotation_id: str
    joined: bool
    idempotency_key: str
    leaked_key_id: str | None = None


class ChaosRun:
    def __init__(self, sandbox: SandboxProcess, tmp_path: Path, seed: int) -> None:
        self.sbx = sandbox
        self.tmp = tmp_path
        self.rng = random.Random(seed)
        self.figures = Figures(seed=seed)
        self.store = FileStateStore(tmp_path / "state")
        schedule = {"interval": "15s", "retry_backoff": "1s", "retry_backoff_max": "3s"}
        self.config = api_config(
            tmp_path,
            sandbox,
            schedule=schedule,
            grace_period="4s",
            delete_after="4s",
            registry={
                "server": sandbox.endpoints["registry_host"],
                "images": sandbox.endpoints["images"],
                "verify_budget": "5s",
                "recheck_interval": "1s",
            },
        )
        # Callers here are meant to be many and fast: the per-caller budget must not turn them away.
        doc = yaml.safe_load(self.config.read_text())
        doc["server"]["rate_limit"] = {"per_minute": 6000, "burst": 100}
        self.config.write_text(yaml.safe_dump(doc))
        self.daemon: Daemon | None = None
        self.armed = False
        self.base = ""
        self.accepted: list[Accepted] = []
        self.leaks: dict[str, float] = {}  # key id -> when reported (monotonic)
        self.disabled_seen: dict[str, float] = {}
        self.results: dict[str, Result] = {}  # every rotation result seen in the journal
        self.deny_new_keys = False

    # -- the daemon ----------------------------------------------------------------------------------
    def start(self, crash_at: str | None = None) -> None:
        env = {"ROTATOR_CRASH_AT": crash_at} if crash_at else None
        self.armed = crash_at is not None
        self.daemon = Daemon(self.config, identity=f"chaos-{self.figures.kills}", env=env)
        try:
            self.base = self.daemon.api()
        except AssertionError:  # died before its API listened: only an armed one may, at its boundary
            if not (self.armed and self.daemon.proc.wait(5) == -signal.SIGKILL):
                raise
            self.revive()

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.proc.poll() is None

    def revive(self) -> None:
        """A daemon armed to die at a boundary that did is replaced by a clean one."""
        if self.daemon is not None and not self.alive():
            self.figures.armed_reached += 1 if self.armed and self.daemon.proc.returncode == -signal.SIGKILL else 0
            self.restart()

    def restart(self, crash_at: str | None = None) -> None:
        if self.daemon is not None:
            self.daemon.stop(signal.SIGKILL)
        self.figures.kills += 1
        self.start(crash_at)

    # -- requests ------------------------------------------------------------------------------------
    def post(self, path: str, body: dict[str, str], key: str) -> httpx.Response | None:
        self.figures.posts += 1
        try:
            return httpx.post(f"{self.base}{path}", headers={**API_AUTH, "Idempotency-Key": key}, json=body, timeout=15)
        except httpx.TransportError:
            return None  # the daemon died under it: the same key is sent again after the restart

    def request(self, leaked_key_id: str | None = None, key: str | None = None) -> None:
        key = key or f"chaos-{len(self.accepted)}-{self.rng.randrange(10**9)}"
        path, body = (f"/v1/credentials/{CRED}/rotate", {"reason": f"chaos {key}"})
        if leaked_key_id:
            path, body = (f"/v1/credentials/{CRED}/leaked", {"key_id": leaked_key_id})
        response = self.post(path, body, key)
        if response is None:
            self.revive()
            response = self.post(path, body, key)
            if response is None:
                return
        if response.status_code in (429, 503):
            self.figures.refused += 1
            return  # rate limited or the store unreachable: not accepted, nothing promised
        if response.status_code == 422 and leaked_key_id:
            return  # the key was deleted in the meantime: no longer the credential's
        if response.status_code != 202:
            self.figures.problems.append(f"{path} answered {response.status_code}: {response.text[:200]}")
            return
        answer = response.json()
        known = next((a for a in self.accepted if a.idempotency_key == key), None)
        if known is not None:
            self.figures.replays += 1
            if answer["rotation_id"] != known.rotation_id:
                self.figures.problems.append(
                    f"replay of {key} answered {answer['rotation_id']}, not {known.rotation_id}"
                )
            return
        self.accepted.append(Accepted(answer["rotation_id"], answer["joined"], key, leaked_key_id))
        if leaked_key_id and leaked_key_id not in self.leaks:
            self.leaks[leaked_key_id] = time.monotonic()

    def status(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{self.base}/v1/credentials", headers=API_AUTH, timeout=10)
        except httpx.TransportError:
            return None
        return response.json()["credentials"][0] if response.status_code == 200 else None

    # -- one random step -----------------------------------------------------------------------------
    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.20:
            service, rule = self.rng.choice(FAULTS)
            self.sbx.set_faults(service, rule)
        elif roll < 0.27:
            self.sbx.clear_faults()
            self.set_deny(False)
        elif roll < 0.30:
            self.set_deny(True)  # verification is rejected from now on: rotations roll back
        elif roll < 0.60:
            earlier = [a.idempotency_key for a in self.accepted if not a.leaked_key_id]
            self.request(key=self.rng.choice(earlier) if earlier and self.rng.random() < 0.2 else None)
        elif roll < 0.72:
            status = self.status()
            if status is not None:
                pending = [r["key_id"] for r in status["revocations_pending"] if r["step"] == "disable"]
                keys = [status["current_key_id"], *pending]
                keys = [k for k in keys if k]
                if keys:
                    self.request(leaked_key_id=self.rng.choice(keys))
        elif roll < 0.82:
            crash_at = self.rng.choice(ARMED) if self.rng.random() < 0.5 else None
            if crash_at == "rollback:after-restore":
                self.set_deny(True)
            self.restart(crash_at)
            if crash_at:
                self.figures.armed_kills.append(crash_at)
        self.revive()

    def forced_kill(self, crash_at: str) -> None:
        """Whatever the dice say, once per run at each armed boundary: let the rotation in flight end (a request
        would join it, and it may be past the boundary), restart armed, ask for a rotation (its new key rejected
        for the rollback one, whose key deletions then half fail), and wait until the daemon died there."""
        self.sbx.clear_faults()
        self.set_deny(False)
        self.revive()
        wait_for(lambda: self.store.load(CRED).rotation is None, "the rotation in flight to end", timeout=60)
        if crash_at.startswith("rollback:"):
            self.set_deny(True)
            self.sbx.set_faults("iam", ROLLBACK_FAULT)
        self.restart(crash_at)
        self.figures.armed_kills.append(crash_at)
        armed = self.daemon
        assert armed is not None
        key = f"forced-{crash_at}"
        if self.armed and self.alive():  # (it may have died there already, starting: then it was replaced)
            response = self.post(f"/v1/credentials/{CRED}/rotate", {"reason": f"chaos {key}"}, key)
            if response is not None and response.status_code == 202:
                answer = response.json()
                self.accepted.append(Accepted(answer["rotation_id"], answer["joined"], key))
            wait_for(lambda: armed.proc.poll() is not None, f"the daemon to die at {crash_at}", timeout=60)
            assert armed.proc.returncode == -signal.SIGKILL, f"the armed daemon exited {armed.proc.returncode}"
        self.revive()
        self.request(key=key)  # answered before the kill: a replay of the same id; cut off: accepted now

    def set_deny(self, enabled: bool) -> None:
        if enabled != self.deny_new_keys:
            self.sbx.admin.post("/registry/deny-new-keys", json={"enabled": enabled}).raise_for_status()
            self.deny_new_keys = enabled

    def sample(self) -> None:
        """Owned enabled keys the journal knows, against 2 + keys inside their grace (+ ones just due)."""
        now = dt.datetime.now(dt.UTC)
        keys = iam_keys(self.sbx)
        journal = self.store.load(CRED)
        self.results.update({r.rotation_id: r for r in journal.history})  # the journal keeps only the newest
        known = journal.known_key_ids()
        enabled = [k["id"] for k in keys if k["id"] in known and not k["disabled"] and not k["deleted"]]
        slack = dt.timedelta(seconds=REVOKE_SLACK_S)
        grace = [r for r in journal.retired if r.disabled_at is None and r.disable_at + slack > now]
        self.figures.max_enabled = max(self.figures.max_enabled, len(enabled))
        if len(enabled) > 2 + len(grace):
            self.figures.bound_violations.append(f"{len(enabled)} enabled, {len(grace)} in grace at {now:%T}")
        for k in keys:
            if k["id"] in self.leaks and (k["disabled"] or k["deleted"]) and k["id"] not in self.disabled_seen:
                self.disabled_seen[k["id"]] = time.monotonic()

    # -- the run ---------------------------------------------------------------------------------------
    def run(self, seconds: float) -> Figures:
        started = time.monotonic()
        self.start()
        first_rotation_done(self.sbx, self.tmp)
        try:
            forced = list(ARMED)
            while time.monotonic() - started < seconds:
                if forced and time.monotonic() - started > seconds * (len(ARMED) - len(forced) + 1) / (len(ARMED) + 1):
                    self.forced_kill(forced.pop(0))
                self.step()
                self.sample()
                self.figures.steps += 1
                time.sleep(self.rng.uniform(0.1, 0.5))  # request pacing, not a wait for a condition
            self.sbx.clear_faults()
            self.set_deny(False)
            if self.armed or not self.alive():
                self.restart()  # settling is done by a daemon that is not armed to die
            self.settle()
        finally:
            self.figures.seconds = time.monotonic() - started
            if self.daemon is not None:
                self.daemon.stop()
        return self.figures

    def rotation(self, rotation_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/v1/rotations/{rotation_id}", headers=API_AUTH, timeout=10)
        assert response.status_code == 200, f"{rotation_id}: {response.status_code} {response.text[:200]}"
        body: dict[str, Any] = response.json()
        return body

    def settle(self) -> None:
        """Every accepted request ends, every leaked key is disabled; then the counts."""

        def all_done() -> bool:
            self.sample()
            states = [self.rotation(a.rotation_id)["state"] for a in self.accepted]
            return all(s in ("succeeded", "failed", "joined") for s in states) and set(self.disabled_seen) >= set(
                self.leaks
            )

        wait_for(all_done, "every accepted request to end and every leak to be disabled", timeout=SETTLE_TIMEOUT_S)
        journal = self.store.load(CRED)
        self.results.update({r.rotation_id: r for r in journal.history})
        own_results = self.results
        for a in self.accepted:
            shown = self.rotation(a.rotation_id)
            if shown["id"] != a.rotation_id:
                self.figures.problems.append(f"{a.rotation_id} shown as {shown['id']}")
            if a.joined:
                self.figures.joined += 1
                continue
            self.figures.served[shown["state"]] = self.figures.served.get(shown["state"], 0) + 1
            result = own_results.get(a.rotation_id)
            if shown["state"] == "joined" and not str(shown.get("detail") or "").startswith("joined rotation "):
                self.figures.problems.append(f"{a.rotation_id} joined without naming the rotation")
            if result is not None and (shown["state"], shown["detail"]) != (result.result, result.detail or None):
                self.figures.problems.append(f"{a.rotation_id} shows {shown['state']}, its rotation {result.result}")
            if result is None and shown["state"] == "succeeded" and not a.leaked_key_id:
                self.figures.problems.append(f"{a.rotation_id} succeeded without a rotation of its own")
        self.figures.accepted = len(self.accepted)
        self.figures.rollbacks = sum(1 for r in self.results.values() if r.result == "failed")
        self.figures.leaks_reported = len(self.leaks)
        self.figures.leaks_disabled = len(set(self.disabled_seen) & set(self.leaks))
        self.figures.disable_seconds = [
            self.disabled_seen[k] - self.leaks[k] for k in self.leaks if k in self.disabled_seen
        ]

    def check_secrets(self) -> None:
        """Today's secret invariants (the daemon stopped): every target holds the current key, and it pulls."""
        assert self.store.load(CRED).rotation is None
        vault = self.store.load_vault(CRED)
        assert vault.current is not None and pulls(self.sbx, vault.current) == "ok"
        for ns in TEAMS:
            assert stored_password(self.sbx, ns) == vault.current, f"{ns} does not hold the current key"


def sweep_orphans(chaos: ChaosRun) -> tuple[list[str], list[str]]:
    """Orphans after the run (the daemon stopped). A kill right after IAM minted is what leaves one; the
    rotation it belonged to deletes its own key when it resumes, so to see the sweep itself one more is minted
    the way a process whose journal write was lost leaves it (a rotation id no journal holds). A pass now must
    keep it (it may be a concurrent rotation's), a pass with the clock past the orphan window deletes it and
    any other. Returns (swept, still unaccounted)."""
    from rotation_env import FakeClock, live_owned_keys, make_app

    def unaccounted() -> list[str]:
        known = chaos.store.load(CRED).known_key_ids()
        return [k["id"] for k in live_owned_keys(chaos.sbx) if k["id"] not in known]

    clock = FakeClock()
    with make_app(chaos.config, clock=clock) as app:
        lost = app.provider(app.settings.credential(CRED)).mint(credential=CRED, rotation_id="lost-journal-write")
        before = unaccounted()
        app.reconciler(CRED).run()
        assert lost.info.id in unaccounted(), "a young orphan was swept inside its window"
        clock.advance(ORPHAN_WINDOW_S)
        app.reconciler(CRED).run()
    after = unaccounted()
    swept = sorted(set(before) - set(after))
    chaos.figures.orphans_swept = len(swept)
    return swept, after
