"""Shared fixtures: a sandbox in a child process, reached over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rotator.sandbox.control import SandboxProcess


@pytest.fixture
def sandbox() -> Iterator[SandboxProcess]:
    """A fresh sandbox for one test: free ports, in-memory state."""
    with SandboxProcess.start() as sbx:
        yield sbx


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[SandboxProcess]:
    """One sandbox for tests that only read, or clean up after themselves."""
    with SandboxProcess.start() as sbx:
        yield sbx
