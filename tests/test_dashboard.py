"""The Grafana dashboard: importable, every query names metrics rotator exports, and every panel
query returns data from a real Prometheus scraping a running ``rotator run`` daemon that rotated
against the sandbox: an IAM key twice (one on request through the API, the old key then disabled),
a Docker Hub token once (its registry reports a pull quota), a registry 429 and an IAM 503 retried."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dockerhub_env as hub_env
import httpx
import pytest
import yaml
from conftest import start_sandbox
from daemon_env import Daemon
from monitoring_env import BUILTIN_SERIES, PROMETHEUS, REPO, exported_names, referenced_metrics, sample, scrape
from polling import POLL_S
from rotation_env import CRED, write_config

from rotator.sandbox.control import SandboxProcess

DASHBOARD = REPO / "grafana" / "rotator.json"
RULES = REPO / "deploy" / "prometheus" / "rotator-rules.yaml"
DATA_DEADLINE_S = 30.0  # per wait: the first scraped sample takes ~5-6 s; rates need a second one
START_DEADLINE_S = 30.0  # the daemon starts and rotates both credentials
API_TOKEN = "dashboard-test-token-0123456789"
CREDENTIALS = (CRED, hub_env.CRED)
# Grafana's built-in variables, as Grafana would expand them for a short dashboard range.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "__range_s": "300"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p.get("type") != "row"]


def _targets() -> list[tuple[str, str]]:
    """(panel title / refId, expression) for every query of every panel."""
    return [(f"{p['title']} / {t['refId']}", t["expr"]) for p in _panels() for t in p["targets"]]


def expand(expr: str, credential_regex: str) -> str:
    """The query Grafana would send: template variables substituted."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "credential":
            return credential_regex
        if name == "cluster":  # "All": the variable's allValue, which keeps series without a cluster label
            return CLUSTER_ALL
        if name in BUILTINS:
            return BUILTINS[name]
        raise AssertionError(f"unknown template variable ${name} in {expr!r}")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


CLUSTER_ALL = ".*"


def grafana_regex(*values: str) -> str:
    """A multi-value variable as Grafana's Prometheus datasource formats it: (a|b), regex
    metacharacters escaped with a backslash that is itself escaped inside a PromQL string."""
    return "(" + "|".join(re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", v) for v in values) + ")"


TARGETS = [pytest.param(expr, id=where) for where, expr in _targets()]


# -- pure checks ---------------------------------------------------------------------------------


def test_dashboard_is_importable() -> None:
    """__inputs names a Prometheus datasource; the datasource and credential variables are as Grafana needs."""
    dash = _dashboard()
    assert dash["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    credential = variables["credential"]
    assert credential["type"] == "query" and credential["multi"] is True and credential["includeAll"] is True
    assert credential["query"]["query"] == "label_values(rotator_key_created_timestamp_seconds, credential)"
    cluster = variables["cluster"]
    assert cluster["type"] == "query" and cluster["multi"] is True and cluster["includeAll"] is True
    assert cluster["query"]["query"] == "label_values(rotator_secrets_managed, cluster)"
    assert cluster["allValue"] == CLUSTER_ALL
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_dashboard_has_the_required_panels() -> None:
    """Key age, next rotation, results, durations, sync, verification, 429s, quota, revocation, leader, errors."""
    titles = {p["title"] for p in _panels()}
    assert {
        "Key age vs max age",
        "Time to next rotation",
        "Rotation results",
        "Rotation duration",
        "Secrets in sync / out of sync",
        "Verification results",
        "Verification latency",
        "Registry 429 responses",
        "Registry pull quota remaining",
        "Revocation backlog",
        "Time to revocation deadline",
        "Leader",
        "Provider request errors",
        "Since last successful pass",
        "Fleet clusters out of sync",
    } <= titles
    # The per-target panels follow the cluster variable.
    per_target = [e for where, e in _targets() if where.startswith(("Secrets in sync", "Secret writes", "Fleet"))]
    assert per_target and all('cluster=~"$cluster"' in e for e in per_target)


@pytest.mark.parametrize("expr", TARGETS)
def test_panel_query_uses_exported_metrics(expr: str) -> None:
    """Every metric a panel query names is one that rotator/metrics.py registers."""
    used = referenced_metrics(expand(expr, "(x)"))
    assert used, f"no metric in {expr!r}"
    assert not used - exported_names() - BUILTIN_SERIES, f"unknown metrics {sorted(used - exported_names())}"


def test_metric_check_catches_a_renamed_metric() -> None:
    """Renaming a metric in a panel query is detected by the check above."""
    expr = next(e for where, e in _targets() if where.startswith("Registry 429"))
    renamed = expr.replace("rotator_registry_rate_limited_total", "rotator_registry_throttled_total")
    assert referenced_metrics(expand(renamed, "(x)")) - exported_names() == {"rotator_registry_throttled_total"}


# -- against a live Prometheus ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(tmp: Path, sbx: SandboxProcess, tokens: Path) -> Path:
    """Two credentials: an IAM key into ICR-like secrets (old key disabled 1 s after a rotation), and a
    Docker Hub organization token (whose registry reports a pull quota); the API behind a token file."""
    top = {
        "server": {"listen": "127.0.0.1:0", "auth": {"mode": "token-file", "file": str(tokens)}},
        # A pass every second: after a rotation the next pass otherwise waits for resync, not for the
        # replaced key's disable deadline.
        "daemon": {"resync": "1s"},
    }
    doc = yaml.safe_load(write_config(tmp, sbx, top=top, grace_period="1s").read_text())
    hub = yaml.safe_load(hub_env.write_config(tmp, sbx).read_text())["credentials"][0]
    doc["credentials"].append(hub)
    path = tmp / "rotator-dashboard.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def wait_until(
    url: str, what: str, check: Callable[[dict[tuple[str, frozenset[tuple[str, str]]], float]], bool]
) -> None:
    """Poll the daemon's /metrics until ``check`` holds (bounded)."""
    deadline = time.monotonic() + START_DEADLINE_S
    while not check(samples := scrape(url)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {sorted(k[0] for k in samples)}"
        time.sleep(POLL_S)


def _run_daemon(tmp: Path) -> Generator[str, None, None]:
    """A running daemon that has rotated against a sandbox: icr-pull twice (the second on request through
    the API, the first key then disabled), hub-pull once; one registry 429 and one IAM 503 on the way."""
    sbx = start_sandbox()
    tokens = tmp / "api-tokens"
    tokens.write_text(f"{API_TOKEN} dashboard-test rotate\n")
    tokens.chmod(0o600)
    sbx.set_faults("registry", {"path_prefix": "/v2/", "methods": ["HEAD"], "error_status": 429, "error_count": 1})
    sbx.set_faults("iam", {"path_prefix": "/v1/apikeys", "methods": ["POST"], "error_status": 503, "error_count": 1})
    daemon = Daemon(_config(tmp, sbx, tokens), identity="dashboard-test")
    try:
        url = daemon.api()
        wait_until(
            url,
            "the first rotations",
            lambda s: (
                sample(s, "rotator_rotations_total", credential=CRED, result="succeeded") >= 1
                and sample(s, "rotator_rotations_total", credential=hub_env.CRED, result="succeeded") >= 1
            ),
        )
        response = httpx.post(
            f"{url}/v1/credentials/{CRED}/rotate",
            json={"reason": "dashboard test"},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        wait_until(
            url,
            "the second rotation and the disable of the first key",
            lambda s: (
                sample(s, "rotator_rotations_total", credential=CRED, result="succeeded") >= 2
                and sample(s, "rotator_revocations_total", credential=CRED, step="disable") >= 1
                and sample(s, "rotator_revocations_pending", credential=CRED) == 1
            ),
        )
        yield url
    finally:
        daemon.stop()
        sbx.stop()


@dataclass
class LivePrometheus:
    url: str

    def query(self, expr: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body: dict[str, Any] = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
        return body

    def wait_for_data(self, expr: str) -> list[dict[str, Any]]:
        """Poll until the query returns a non-empty result. Each wait has its own deadline: one shared by the
        module's tests would leave a late test none on a slow machine."""
        deadline = time.monotonic() + DATA_DEADLINE_S
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.query(expr)
            if last["data"]["result"]:
                result: list[dict[str, Any]] = last["data"]["result"]
                return result
            time.sleep(POLL_S)
        raise AssertionError(f"no data for {expr!r} within {DATA_DEADLINE_S} s: {last}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePrometheus]:
    """Prometheus scraping (every 1 s) a running rotator daemon that rotated against a sandbox."""
    tmp = tmp_path_factory.mktemp("dashboard")
    daemon = _run_daemon(tmp)
    target = next(daemon).removeprefix("http://")
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "rotator", "static_configs": [{"targets": [target]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(POLL_S)
        yield LivePrometheus(url=url)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        daemon.close()


@pytest.mark.real
@pytest.mark.parametrize("expr", TARGETS)
def test_panel_query_returns_data(live: LivePrometheus, expr: str) -> None:
    """The panel's query, as Grafana would send it for the credential, returns a non-empty result."""
    result = live.wait_for_data(expand(expr, grafana_regex(*CREDENTIALS)))
    assert all("value" in series for series in result)


@pytest.mark.real
def test_credential_variable_lists_the_credential(live: LivePrometheus) -> None:
    """The credential variable's label_values query finds both rotated credentials."""
    live.wait_for_data("rotator_key_created_timestamp_seconds")
    response = httpx.get(
        f"{live.url}/api/v1/label/credential/values",
        params={"match[]": "rotator_key_created_timestamp_seconds"},
        timeout=5,
    )
    assert response.json()["data"] == sorted(CREDENTIALS)


@pytest.mark.real
def test_key_age_panel_shows_fresh_keys(live: LivePrometheus) -> None:
    """The key-age query yields the real age of the keys just minted (seconds, not 0 and not years)."""
    expr = next(e for where, e in _targets() if where == "Key age vs max age / A")
    series = live.wait_for_data(expand(expr, grafana_regex(*CREDENTIALS)))
    assert sorted(s["metric"]["credential"] for s in series) == sorted(CREDENTIALS)
    assert all(-5 < float(s["value"][1]) < 600 for s in series)


@pytest.mark.real
def test_alert_rules_evaluate_against_scraped_series(live: LivePrometheus) -> None:
    """Loaded into the live server, every alert rule evaluates without error, and every metric the rules
    select with job="rotator" has scraped series (so the job matcher fits the scrape config)."""
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for name in sorted({m for r in rules for m in referenced_metrics(r["expr"])}):
        live.wait_for_data(f'{name}{{job="rotator"}}')
    evaluated: dict[str, str] = {}
    deadline = time.monotonic() + DATA_DEADLINE_S
    while True:
        groups = httpx.get(f"{live.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        evaluated = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        if len(evaluated) == len(rules) and all(h != "unknown" for h in evaluated.values()):
            break
        assert time.monotonic() < deadline, f"rules not evaluated in time: {evaluated}"
        time.sleep(POLL_S)
    assert evaluated == {r["alert"]: "ok" for r in rules}
    # Nothing is wrong with a daemon that just rotated: once every rule has been evaluated on the
    # scraped data, no alert is pending or firing.
    data_seen = time.time()
    deadline = time.monotonic() + DATA_DEADLINE_S
    while True:
        groups = httpx.get(f"{live.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        times = [_epoch(r["lastEvaluation"]) for g in groups for r in g["rules"]]
        if min(times) > data_seen:
            break
        assert time.monotonic() < deadline, "rules not evaluated again in time"
        time.sleep(POLL_S)
    assert live.query("ALERTS")["data"]["result"] == []


def _epoch(rfc3339: str) -> float:
    """Prometheus' RFC 3339 times (nanoseconds, Z) as Unix seconds."""
    whole = re.sub(r"\.\d+", "", rfc3339).replace("Z", "+00:00")
    return dt.datetime.fromisoformat(whole).timestamp()  # rounded down: a lower bound is what the caller needs


def test_expand_substitutes_every_variable_form() -> None:
    """$credential, ${credential} and Grafana's interval variables all become concrete PromQL."""
    assert expand('x{c=~"$credential"}[$__rate_interval]', "(a)") == 'x{c=~"(a)"}[1m]'
    assert expand('x{c=~"${credential}"}[${__interval}]', "(a)") == 'x{c=~"(a)"}[15s]'
    with pytest.raises(AssertionError):
        expand("x[$__unknown]", "(a)")
    assert grafana_regex("icr-pull", "a.b") == "(icr-pull|a\\\\.b)"


@pytest.mark.real
@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        pytest.param('sum(rotator_rotations_total{credential="icr-pull",result="succeeded"})', 2.0, id="icr-twice"),
        pytest.param('sum(rotator_rotations_total{credential="hub-pull",result="succeeded"})', 1.0, id="hub-once"),
        pytest.param("sum(rotator_registry_rate_limited_total)", 1.0, id="one-429"),
        pytest.param('sum(rotator_provider_requests_total{provider="ibm-iam",code="503"})', 1.0, id="one-iam-503"),
        pytest.param('sum(rotator_revocations_total{credential="icr-pull",step="disable"})', 1.0, id="one-disable"),
        pytest.param('sum(rotator_revocations_pending{credential="icr-pull"})', 1.0, id="one-delete-pending"),
        pytest.param("sum(rotator_secrets_managed)", 6.0, id="six-target-secrets"),
        pytest.param("sum(rotator_secrets_out_of_sync)", 0.0, id="none-out-of-sync"),
        pytest.param("count(rotator_registry_quota_limit > 0)", 1.0, id="hub-quota-reported"),
        pytest.param("sum(rotator_leader)", 1.0, id="one-leader"),
    ],
)
def test_scraped_values_match_what_happened(live: LivePrometheus, expr: str, expected: float) -> None:
    """The scraped series carry what the rotations really did (so the panels show real events)."""
    [series] = live.wait_for_data(expr)
    assert float(series["value"][1]) == expected
