"""The suite's log-leak scan finds a value wherever it sits in a line, and only there."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import find_leaks


def test_scan_finds_a_leaked_value_and_names_file_and_line(tmp_path: Path) -> None:
    """A value inside a JSON log line is reported as file:line; clean files are not."""
    (tmp_path / "a.log").write_text('{"event":"x"}\n{"event":"key.minted","oops":"AbCdEfGh1234567890"}\n')
    (tmp_path / "b.log").write_text('{"event":"clean"}\n')
    assert find_leaks(tmp_path, {"AbCdEfGh1234567890"}) == [f"{tmp_path / 'a.log'}:2"]
    assert find_leaks(tmp_path, {"not-there-at-all"}) == []


@pytest.mark.parametrize(
    "shown",
    [
        pytest.param(lambda v: v[:16] + "...", id="cut-off-prefix"),
        pytest.param(lambda v: "Basic " + base64.b64encode(f"iamapikey:{v}".encode()).decode(), id="basic-base64"),
        pytest.param(lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("="), id="base64-url"),
        pytest.param(lambda v: "".join(f"%{b:02x}" for b in v.encode()), id="url-encoded"),
    ],
)
def test_scan_finds_encoded_and_cut_forms(tmp_path: Path, shown: Callable[[str], str]) -> None:
    """What an echoing upstream makes of a value is found too."""
    value = "AbCdEfGh1234567890-xyzXYZ_0987"
    (tmp_path / "a.log").write_text(json.dumps({"event": "x", "detail": shown(value)}) + "\n")
    assert find_leaks(tmp_path, {value}) == [f"{tmp_path / 'a.log'}:1"]
