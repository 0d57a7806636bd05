"""Shared fixtures: a sandbox in a child process, reached over real HTTP on 127.0.0.1.

Every rotator log line the suite produces lands in one directory (in-process structlog output
and the output of rotator subprocesses); at the end of the session it is scanned for every API
key value any sandbox issued. A hit fails the run (the report names file and line, not the value).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
from leakforms import Scanner

from rotator import logs
from rotator.sandbox.control import SandboxProcess

pytest_plugins = ["masked"]  # failing assertions show credential values as fingerprints

LOG_DIR = Path(os.environ.get("ROTATOR_TEST_LOG_DIR") or tempfile.mkdtemp(prefix="rotator-test-logs-"))
LOG_DIR.mkdir(parents=True, exist_ok=True)
os.environ["ROTATOR_TEST_LOG_DIR"] = str(LOG_DIR)
ISSUED: set[str] = set()


def _collect(sbx: SandboxProcess) -> None:
    with contextlib.suppress(Exception):  # a sandbox already gone: nothing to collect
        ISSUED.update(sbx.issued_values())


def start_sandbox(**kwargs: object) -> SandboxProcess:
    sbx = SandboxProcess.start(**kwargs)  # type: ignore[arg-type]
    sbx.on_stop = _collect
    return sbx


_STREAMS: list[TextIO] = []


# A run this long of a value counts as a leak in the suite's scan (a cut-off prefix, say); the echo tests
# look for 8. Longer here because the scan covers every line the suite writes with every value issued.
SCAN_FRAGMENT = 16


def find_leaks(log_dir: Path, values: set[str]) -> list[str]:
    """``file:line`` of every log line that contains one of ``values``: raw, a 16-character piece of it,
    in base64 (of any text around it: ``Basic base64(user:value)``) or URL-encoded."""
    scanner = Scanner(values, fragment=SCAN_FRAGMENT)
    leaks = []
    for path in sorted(log_dir.rglob("*")):
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if scanner.found_in(line):
                leaks.append(f"{path}:{number}")
    return leaks


def pytest_configure(config: pytest.Config) -> None:
    stream = open(LOG_DIR / "in-process.jsonl", "a", buffering=1)  # noqa: SIM115 - open for the session
    _STREAMS.append(stream)
    logs.configure(level="debug", json_output=True, stream=stream)


def pytest_unconfigure(config: pytest.Config) -> None:
    for stream in _STREAMS:
        stream.close()
    _STREAMS.clear()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for stream in _STREAMS:
        stream.flush()
    values = {v for v in ISSUED if len(v) >= 8}
    if not values:
        return
    leaks = find_leaks(LOG_DIR, values)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if leaks:
        if reporter:
            reporter.write_line(f"KEY LEAK: {len(leaks)} log lines contain an issued key value: {leaks[:10]}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter:
        files = sum(1 for p in LOG_DIR.rglob("*") if p.is_file())
        reporter.write_line(f"log-leak scan: {len(values)} issued key values, {files} log files, no leak")


@pytest.fixture
def sandbox() -> Iterator[SandboxProcess]:
    """A fresh sandbox for one test: free ports, in-memory state."""
    with start_sandbox() as sbx:
        yield sbx


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[SandboxProcess]:
    """One sandbox for tests that only read, or clean up after themselves."""
    with start_sandbox() as sbx:
        yield sbx
