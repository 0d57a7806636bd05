"""Credential values the tests hold, shown only as a fingerprint when an assertion fails.

A ``Masked`` is a ``str`` (it compares, hashes and goes over HTTP as the value), but its repr is a short
sha256 prefix, and this module, loaded as a pytest plugin by conftest, keeps pytest from diffing its text:
a failing test report never carries a key, token or password.
"""

from __future__ import annotations

import hashlib

import pytest


class Masked(str):
    __slots__ = ()

    def __repr__(self) -> str:
        return f"<secret sha256:{hashlib.sha256(self.encode()).hexdigest()[:12]}>"


def masked(value: str | None) -> Masked | None:
    return None if value is None else Masked(value)


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: object, right: object) -> list[str] | None:
    """A comparison that involves a credential value is reported by fingerprint, never diffed as text."""
    if isinstance(left, Masked) or isinstance(right, Masked):
        return [f"{_shown(left)} {op} {_shown(right)} (credential values shown as fingerprints)"]
    return None


def _shown(value: object) -> str:
    # The other side may hold the value too (a status document, a log line): only its shape is shown.
    if isinstance(value, Masked) or value is None:
        return repr(value)
    if isinstance(value, str | bytes):
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, list | tuple | set | frozenset):
        return f"<{type(value).__name__}: {', '.join(_shown(v) for v in value)}>"
    return f"<{type(value).__name__}>"
