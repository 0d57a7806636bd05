"""The command implementations behind ``rotator rotate|plan|status|check|run``.

Each returns an exit code: 0 success, 1 the operation failed (the reason is printed), 2 bad
usage or configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from rotator import logs, settings
from rotator.app import App
from rotator.errors import RotatorError
from rotator.policy import Request
from rotator.status import key_expiry_check, render_text


def _load(args: argparse.Namespace) -> settings.Settings:
    loaded = settings.load(args.config)
    logs.get("rotator.config").info("config.loaded", config=loaded.redacted())
    return loaded


def _names(cfg: settings.Settings, name: str | None) -> list[str]:
    return [cfg.credential(name).name] if name else [c.name for c in cfg.credentials]


def rotate(args: argparse.Namespace) -> int:
    with App(_load(args)) as app:
        journal = app.store.load(args.name)
        # An unfinished rotation (a crashed run) is finished first; it is the rotation asked for.
        request = None if journal.rotation else Request(reason="manual (rotator rotate)")
        outcome = app.reconciler(args.name).run(request, wait_budget=args.wait)
    if outcome.result == "succeeded":
        print(f"rotated {args.name}: rotation {outcome.rotation_id} succeeded" + _detail(outcome.detail))
        return 0
    if outcome.result == "idle":
        print(f"{args.name}: nothing to do")
        return 0
    print(f"rotation of {args.name} {outcome.result}: {outcome.detail}", file=sys.stderr)
    return 1


def reconcile(args: argparse.Namespace) -> int:
    """One pass without asking for a rotation: finish one in flight, heal drift, revoke what is due."""
    cfg = _load(args)
    code = 0
    with App(cfg) as app:
        for name in _names(cfg, args.name):
            worst = 0
            for _ in range(20):  # each pass ends after a finished rotation; go on until nothing is due
                outcome = app.reconciler(name).run(None, wait_budget=args.wait)
                print(f"{name}: {outcome.result}" + _detail(outcome.detail))
                worst = max(worst, 1 if outcome.result in ("failed", "inconclusive") else 0)
                if outcome.result not in ("succeeded", "failed"):
                    break
            code = max(code, worst)
    return code


def _detail(detail: str) -> str:
    return f" ({detail})" if detail else ""


def status(args: argparse.Namespace) -> int:
    cfg = _load(args)
    now = dt.datetime.now(dt.UTC)
    with App(cfg) as app:
        statuses = [app.status(name, now) for name in _names(cfg, args.name)]
    print(json.dumps(statuses, indent=2) if args.json else render_text(statuses, now))
    return 0


def plan(args: argparse.Namespace) -> int:
    """What a rotation would do now, read-only."""
    cfg = _load(args)
    out: list[dict[str, Any]] = []
    with App(cfg) as app:
        for name in _names(cfg, args.name):
            cred = cfg.credential(name)
            reconciler = app.reconciler(name)
            journal = app.store.load(name)
            vault = app.store.load_vault(name)
            targets = reconciler.targets()
            views = reconciler.read_targets(targets)
            actions: list[str] = [f"mint a new {cred.provider.key_noun} ({cred.provider.kind})"]
            actions.append(f"verify it pulls {', '.join(cred.registry.images)}")
            for view in views:
                where = f"{view.target.sink} secret {view.target.namespace}/{view.target.name}"
                if view.refused:
                    actions.append(f"skip {where}: {view.refused}")
                elif not view.exists:
                    actions.append(f"create {where}")
                else:
                    actions.append(f"update {where} (entry {cred.registry.server})")
            for sink in reconciler.sinks.values():
                for target in (t for t in targets if t.sink == sink.name):
                    for account in sink.service_account_missing(target):
                        actions.append(f"add {target.name} to serviceaccount {target.namespace}/{account}")
            if journal.current:
                actions.append(
                    f"retire key {journal.current.id}: disable after {cred.grace_period}, "
                    f"delete {cred.delete_after} later"
                )
            if journal.rotation:
                actions.insert(0, f"first finish rotation {journal.rotation.id} (phase {journal.rotation.phase})")
            out.append({"credential": name, "actions": actions, "vault_has_current": bool(vault.current)})
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for item in out:
            print(f"credential {item['credential']}: a rotation would")
            for action in item["actions"]:
                print(f"  - {action}")
    return 0


def check(args: argparse.Namespace) -> int:
    """Config valid, IAM reachable and allowed, targets readable and writable, registry reachable."""
    cfg = _load(args)
    failures = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal failures
        failures += 0 if ok else 1
        print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail else ""))

    report(True, f"config {cfg.source}", f"{len(cfg.credentials)} credential(s)")
    with App(cfg) as app:
        try:
            app.store.check()
            report(True, "state store")
        except RotatorError as exc:
            report(False, "state store", str(exc))
        for name in _names(cfg, args.name):
            cred = cfg.credential(name)
            try:
                provider = app.provider(cred)
                provider.check_access()
                report(True, f"{name}: {cred.provider.service_label}", cred.provider.rights_label)
                margin = app.policy(cred).expiry_margin
                now = dt.datetime.now(dt.UTC)
                for key in provider.list_owned(credential=name):
                    ok, text = key_expiry_check(key.id, key.expires_at, margin, now)
                    report(ok, f"{name}: {text}")
            except RotatorError as exc:
                report(False, f"{name}: {cred.provider.service_label}", str(exc))
            try:
                reconciler = app.reconciler(name)
                targets = reconciler.targets()
                views = reconciler.read_targets(targets)
                refused = [v for v in views if v.refused]
                report(
                    not refused,
                    f"{name}: {len(views)} target(s) readable",
                    "; ".join(f"{v.target.namespace}/{v.target.name}: {v.refused}" for v in refused[:5]),
                )
                for sink in reconciler.sinks.values():
                    denied = sink.check_writable([t for t in targets if t.sink == sink.name])
                    report(not denied, f"{name}: {sink.name} targets writable", "; ".join(denied[:5]))
            except RotatorError as exc:
                report(False, f"{name}: targets", str(exc))
            reachable, detail = _registry_reachable(app, cred.registry.server)
            report(reachable, f"{name}: registry {cred.registry.server}", detail)
    return 0 if failures == 0 else 1


def _registry_reachable(app: App, server: str) -> tuple[bool, str]:
    """An anonymous ``GET /v2/``: 200 or 401 means a v2 registry answers (no credential is sent)."""
    import httpx

    from rotator.imageref import registry_for_server

    url = app.verifier.base_url(registry_for_server(server)) + "/v2/"
    try:
        response = app.http.get(url)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}"
    ok = response.status_code in (200, 401)
    return ok, f"{url} answered {response.status_code}"


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from prometheus_client import CollectorRegistry

    from rotator.daemon import Daemon
    from rotator.metrics import Metrics

    cfg = _load(args)
    if args.resync is not None:
        cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, resync=dt.timedelta(seconds=args.resync)))
    registry = CollectorRegistry()
    return Daemon(App(cfg, metrics=Metrics(registry)), registry=registry).serve()
