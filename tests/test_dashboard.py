"""The Grafana dashboard: importable, every query names metrics rotator exports, and every panel
query returns data from a real Prometheus scraping metrics that real rotations (against the
sandbox) produced: two rotations, a revocation, a registry 429 and an IAM 503 retried."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import start_sandbox
from monitoring_env import BUILTIN_SERIES, PROMETHEUS, REPO, exported_names, referenced_metrics
from prometheus_client import CollectorRegistry, start_http_server
from rotation_env import CRED, FakeClock, write_config

from rotator.adapters.registry_wire import Quota
from rotator.app import App
from rotator.metrics import Metrics
from rotator.policy import Request
from rotator.settings import load

DASHBOARD = REPO / "grafana" / "rotator.json"
RULES = REPO / "deploy" / "prometheus" / "rotator-rules.yaml"
DATA_DEADLINE_S = 30.0  # the first scraped sample takes ~5-6 s; rates need a second one
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
        if name in BUILTINS:
            return BUILTINS[name]
        raise AssertionError(f"unknown template variable ${name} in {expr!r}")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


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
    } <= titles


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


def _fill_metrics(tmp: Path, metrics: Metrics) -> Iterator[None]:
    """Real rotations against a sandbox, with one registry 429 and one IAM 503 on the way."""
    sbx = start_sandbox()
    clock = FakeClock()
    config = write_config(tmp, sbx, schedule={"interval": "1d"}, max_age="30d")
    app = App(load(config), clock=clock, metrics=metrics)
    try:
        sbx.set_faults("registry", {"path_prefix": "/v2/", "methods": ["HEAD"], "error_status": 429, "error_count": 1})
        sbx.set_faults(
            "iam", {"path_prefix": "/v1/apikeys", "methods": ["POST"], "error_status": 503, "error_count": 1}
        )
        assert app.reconciler(CRED).run(Request(reason="dashboard test")).result == "succeeded"
        sbx.clear_faults()
        assert app.reconciler(CRED).run(Request(reason="retire the first key")).result == "succeeded"
        clock.advance(3601)  # past grace_period: the first key gets disabled, its delete stays pending
        app.reconciler(CRED).run()
        cred = app.settings.credential(CRED)
        journal = app.store.load(CRED)
        assert len(journal.retired) == 1 and journal.retired[0].disabled_at is not None
        metrics.observe_journal(CRED, journal, app.policy(cred))  # as the daemon does after each pass
        # The sandbox's registry sends no ratelimit-* headers: report a quota the way the reconciler
        # does when a registry (Docker Hub) announces one.
        quota = Quota(limit=200, remaining=150)
        event = {"credential": CRED, "registry": cred.registry.server, "result": "ok", "seconds": 0.1, "quota": quota}
        metrics.on_event("verification", event)
        yield
    finally:
        app.close()
        sbx.stop()


@dataclass
class LivePrometheus:
    url: str
    deadline: float

    def query(self, expr: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body: dict[str, Any] = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
        return body

    def wait_for_data(self, expr: str) -> list[dict[str, Any]]:
        """Poll until the query returns a non-empty result, up to the shared deadline."""
        last: dict[str, Any] = {}
        for _ in range(int(DATA_DEADLINE_S / 0.1) + 1):
            last = self.query(expr)
            if last["data"]["result"]:
                result: list[dict[str, Any]] = last["data"]["result"]
                return result
            if time.monotonic() > self.deadline:
                break
            time.sleep(0.05)
        raise AssertionError(f"no data for {expr!r} within {DATA_DEADLINE_S} s: {last}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePrometheus]:
    """Prometheus scraping (every 1 s) the metrics of a rotator that rotated against a sandbox."""
    tmp = tmp_path_factory.mktemp("dashboard")
    registry = CollectorRegistry()
    filler = _fill_metrics(tmp, Metrics(registry))
    next(filler)
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "rotator", "static_configs": [{"targets": [f"127.0.0.1:{httpd.server_port}"]}]}
        ],
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
            time.sleep(0.05)
        yield LivePrometheus(url=url, deadline=time.monotonic() + DATA_DEADLINE_S)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
        filler.close()


@pytest.mark.real
@pytest.mark.parametrize("expr", TARGETS)
def test_panel_query_returns_data(live: LivePrometheus, expr: str) -> None:
    """The panel's query, as Grafana would send it for the credential, returns a non-empty result."""
    result = live.wait_for_data(expand(expr, grafana_regex(CRED)))
    assert all("value" in series for series in result)


@pytest.mark.real
def test_credential_variable_lists_the_credential(live: LivePrometheus) -> None:
    """The credential variable's label_values query finds the rotated credential."""
    live.wait_for_data("rotator_key_created_timestamp_seconds")
    response = httpx.get(
        f"{live.url}/api/v1/label/credential/values",
        params={"match[]": "rotator_key_created_timestamp_seconds"},
        timeout=5,
    )
    assert response.json()["data"] == [CRED]


@pytest.mark.real
def test_key_age_panel_shows_a_fresh_key(live: LivePrometheus) -> None:
    """The key-age query yields the real age of the key just minted (seconds, not 0 and not years)."""
    expr = next(e for where, e in _targets() if where == "Key age vs max age / A")
    [series] = live.wait_for_data(expand(expr, grafana_regex(CRED)))
    assert series["metric"] == {"credential": CRED}
    assert -5 < float(series["value"][1]) < 600  # minted seconds ago (the fake clock moved on only afterwards)


@pytest.mark.real
def test_alert_rules_evaluate_against_scraped_series(live: LivePrometheus) -> None:
    """Loaded into the live server, every alert rule evaluates without error, and every metric the rules
    select with job="rotator" has scraped series (so the job matcher fits the scrape config)."""
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for name in sorted({m for r in rules for m in referenced_metrics(r["expr"])}):
        live.wait_for_data(f'{name}{{job="rotator"}}')
    evaluated: dict[str, str] = {}
    for _ in range(200):
        groups = httpx.get(f"{live.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        evaluated = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        if len(evaluated) == len(rules) and all(h != "unknown" for h in evaluated.values()):
            break
        assert time.monotonic() < live.deadline, f"rules not evaluated in time: {evaluated}"
        time.sleep(0.05)
    assert evaluated == {r["alert"]: "ok" for r in rules}
    # This rotator runs without leader election (rotator_leader is 0), which the rules must notice on
    # live data; nothing else is wrong with a credential that just rotated.
    active = live.wait_for_data('ALERTS{alertname="RotatorNoLeader"}')
    assert active[0]["metric"]["alertstate"] == "pending"
    everything = live.query("ALERTS")["data"]["result"]
    assert sorted({a["metric"]["alertname"] for a in everything}) == ["RotatorNoLeader"]


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
        pytest.param("sum(rotator_rotations_total)", 2.0, id="two-rotations"),
        pytest.param("sum(rotator_registry_rate_limited_total)", 1.0, id="one-429"),
        pytest.param('sum(rotator_provider_requests_total{code="503"})', 1.0, id="one-iam-503"),
        pytest.param('sum(rotator_revocations_total{step="disable"})', 1.0, id="one-disable"),
        pytest.param("sum(rotator_revocations_pending)", 1.0, id="one-delete-pending"),
        pytest.param("sum(rotator_secrets_managed)", 3.0, id="three-target-secrets"),
        pytest.param("sum(rotator_secrets_out_of_sync)", 0.0, id="none-out-of-sync"),
    ],
)
def test_scraped_values_match_what_happened(live: LivePrometheus, expr: str, expected: float) -> None:
    """The scraped series carry what the rotations really did (so the panels show real events)."""
    [series] = live.wait_for_data(expr)
    assert float(series["value"][1]) == expected
