"""The suite's log-leak scan finds a value wherever it sits in a line, and only there."""

from __future__ import annotations

from pathlib import Path

from conftest import find_leaks


def test_scan_finds_a_leaked_value_and_names_file_and_line(tmp_path: Path) -> None:
    """A value inside a JSON log line is reported as file:line; clean files are not."""
    (tmp_path / "a.log").write_text('{"event":"x"}\n{"event":"key.minted","oops":"AbCdEfGh1234567890"}\n')
    (tmp_path / "b.log").write_text('{"event":"clean"}\n')
    assert find_leaks(tmp_path, {"AbCdEfGh1234567890"}) == [f"{tmp_path / 'a.log'}:2"]
    assert find_leaks(tmp_path, {"not-there-at-all"}) == []
