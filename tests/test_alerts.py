"""Alert rules: promtool accepts and tests them, every alert is tested firing and silent, the tests
can fail, the PrometheusRule matches the rules file, and every metric the rules use exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring_env import BUILTIN_SERIES, PROMTOOL, REPO, exported_names, referenced_metrics

pytestmark = pytest.mark.real

RULES_DIR = REPO / "deploy" / "prometheus"
RULES = RULES_DIR / "rotator-rules.yaml"
RULE_TESTS = RULES_DIR / "rotator-rules.test.yaml"
PROMETHEUS_RULE = REPO / "deploy" / "manifests" / "prometheusrule.yaml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/example/rotator/blob/main/docs/runbooks.md#"


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


ALERTS = [rule["alert"] for rule in _rules()]


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def _alert_cases() -> dict[str, dict[str, int]]:
    """Per alert name: how many evaluations expect it firing and how many expect silence."""
    cases: dict[str, dict[str, int]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            seen = cases.setdefault(case["alertname"], {"firing": 0, "silent": 0})
            seen["firing" if case.get("exp_alerts") else "silent"] += 1
    return cases


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_promtool_check_rules_accepts_the_rules() -> None:
    """`promtool check rules` parses every rule of the rules file (exit 0)."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` runs the firing and silent cases and they all hold (exit 0)."""
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_there_are_the_expected_alerts() -> None:
    """The rules define exactly the alerts the runbooks and the platform team expect."""
    assert sorted(ALERTS) == sorted(
        [
            "RotatorDown",
            "RotatorAbsent",
            "RotatorNoLeader",
            "RotatorSplitBrain",
            "RotatorRotationFailing",
            "RotatorPassesFailing",
            "RotatorCredentialTooOld",
            "RotatorKeyExpiringSoon",
            "RotatorRotationOverdue",
            "RotatorRevocationOverdue",
            "RotatorSecretsOutOfSync",
            "RotatorClusterUnreachable",
            "RotatorVerificationFailing",
            "RotatorRegistryRateLimited",
            "RotatorRegistryQuotaLow",
        ]
    )


@pytest.mark.parametrize("alert", [pytest.param(a, id=a) for a in ALERTS])
def test_alert_is_tested_firing_and_silent(alert: str) -> None:
    """The promtool test file has at least one case where the alert fires and one where it is silent."""
    cases = _alert_cases().get(alert, {"firing": 0, "silent": 0})
    assert cases["firing"] >= 1, f"{alert} is never expected to fire in {RULE_TESTS.name}"
    assert cases["silent"] >= 1, f"{alert} is never expected to stay silent in {RULE_TESTS.name}"


@pytest.mark.parametrize("rule", [pytest.param(r, id=r["alert"]) for r in _rules()])
def test_alert_has_severity_annotations_and_runbook(rule: dict[str, Any]) -> None:
    """Each alert has a severity, a summary, a description and a runbook URL whose anchor exists."""
    assert rule["labels"]["severity"] in ("warning", "critical")
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook_url"] == RUNBOOK_BASE + rule["alert"].lower()
    headings = [line.lstrip("#").strip() for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")]
    assert rule["alert"].lower() in {_anchor(h) for h in headings}, f"docs/runbooks.md has no ## {rule['alert']}"


@pytest.mark.parametrize("rule", [pytest.param(r, id=r["alert"]) for r in _rules()])
def test_rule_metrics_exist_in_rotator(rule: dict[str, Any]) -> None:
    """Every metric a rule's expression names is one rotator/metrics.py registers (or Prometheus' own `up`)."""
    used = referenced_metrics(rule["expr"])
    assert used, f"no metric found in {rule['expr']!r}"
    unknown = used - exported_names() - BUILTIN_SERIES
    assert not unknown, f"{rule['alert']} uses metrics rotator does not export: {sorted(unknown)}"


def test_metric_check_catches_a_renamed_metric() -> None:
    """The metric-name check is not vacuous: a renamed metric in an expression is reported."""
    expr = next(r["expr"] for r in _rules() if r["alert"] == "RotatorCredentialTooOld")
    renamed = expr.replace("rotator_key_max_age_seconds", "rotator_key_max_age")
    assert referenced_metrics(renamed) - exported_names() == {"rotator_key_max_age"}


def _mutate_severity(tests: str, rules: str) -> tuple[str, str]:
    return tests.replace("severity: critical\n              job: rotator\n", "severity: warning\n", 1), rules


def _mutate_annotation(tests: str, rules: str) -> tuple[str, str]:
    return tests.replace("1h 10m 0s old", "1h 9m 0s old", 1), rules


def _mutate_rule_window(tests: str, rules: str) -> tuple[str, str]:
    return tests, rules.replace(
        'expr: up{job="rotator"} == 0\n        for: 10m', 'expr: up{job="rotator"} == 0\n        for: 30m'
    )


@pytest.mark.parametrize(
    ("mutate", "alert"),
    [
        pytest.param(_mutate_severity, "RotatorAbsent", id="wrong-expected-severity"),
        pytest.param(_mutate_annotation, "RotatorCredentialTooOld", id="wrong-expected-annotation"),
        pytest.param(_mutate_rule_window, "RotatorDown", id="rule-for-changed"),
    ],
)
def test_broken_copy_makes_promtool_fail(tmp_path: Path, mutate: Any, alert: str) -> None:
    """A copy with one wrong expectation (or a changed rule) fails `promtool test rules` on that alert."""
    tests, rules = mutate(RULE_TESTS.read_text(), RULES.read_text())
    assert (tests, rules) != (RULE_TESTS.read_text(), RULES.read_text()), "the mutation did not apply"
    (tmp_path / RULES.name).write_text(rules)
    (tmp_path / RULE_TESTS.name).write_text(tests)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert alert in result.stdout + result.stderr


def test_prometheusrule_carries_the_same_groups() -> None:
    """The kustomize PrometheusRule holds exactly the groups of the plain rules file."""
    plain = yaml.safe_load(RULES.read_text())["groups"]
    crd = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert crd["apiVersion"] == "monitoring.coreos.com/v1" and crd["kind"] == "PrometheusRule"
    assert crd["spec"]["groups"] == plain


def test_prometheusrule_is_regenerated() -> None:
    """The generator's --check agrees the committed PrometheusRule is what it would write."""
    script = RULES_DIR / "sync_prometheusrule.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_generator_check_detects_a_stale_file(tmp_path: Path) -> None:
    """--check fails when the PrometheusRule differs from the rules file (so the check above can fail)."""
    copy = tmp_path / "deploy"
    shutil.copytree(RULES_DIR, copy / "prometheus")
    (copy / "manifests").mkdir()
    (copy / "manifests" / PROMETHEUS_RULE.name).write_text(PROMETHEUS_RULE.read_text().replace("for: 10m", "for: 9m"))
    result = subprocess.run(
        [sys.executable, str(copy / "prometheus" / "sync_prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "out of date" in result.stderr


def _runbook_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    for chunk in RUNBOOKS.read_text().split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        sections[title.strip()] = body
    return sections


@pytest.mark.parametrize("alert", [pytest.param(a, id=a) for a in ALERTS])
def test_runbook_section_has_meaning_impact_diagnosis_fix(alert: str) -> None:
    """Each alert's runbook section says what it means, its impact, how to diagnose (with commands) and the fix."""
    body = _runbook_sections()[alert]
    for part in ("**Meaning.**", "**Impact.**", "**Diagnosis.**", "**Fix.**"):
        assert part in body, f"{alert}: {part} missing"
    assert "kubectl" in body or "rotator status" in body or "Prometheus" in body


def test_metrics_doc_lists_every_metric() -> None:
    """docs/metrics.md documents every metric rotator registers (counters by their _total name)."""
    text = (REPO / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`(rotator_[a-z_]+)`", text))
    exported = {n for n in exported_names() if not n.endswith(("_created", "_bucket", "_sum", "_count"))}
    histograms = {n[: -len("_bucket")] for n in exported_names() if n.endswith("_bucket")}
    assert exported | histograms <= documented, sorted((exported | histograms) - documented)
