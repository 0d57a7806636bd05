"""A failing assertion about credential values reports fingerprints, never the values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CASES = """
from masked import masked

NEW = masked("new-secret-value-" + "a" * 20)
OLD = masked("old-secret-value-" + "b" * 20)

def test_equal():
    assert NEW == OLD

def test_not_equal_in_a_chain():
    assert NEW is not None and NEW != NEW

def test_membership():
    assert NEW in [OLD]

def test_not_in_a_document():
    document = '{"password": "' + NEW + '"}'
    assert NEW not in document
"""


def test_failing_comparisons_never_print_the_values(tmp_path: Path) -> None:
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "masked", "-q", "-p", "no:cacheprovider", "test_cases.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert "4 failed" in out, out[-2000:]
    assert "<secret sha256:" in out
    assert "secret-value" not in out, "a credential value reached the failure report"
