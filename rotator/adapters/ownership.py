"""The one guard every provider puts in front of a mutating call: never touch a key rotator did not mint.

A key is rotator's when the provider's marker (name/label plus, for IAM, the description tag and the
target identity) says so; ``KeyInfo.owned`` carries that verdict. These functions are the only way
adapters turn it into a refusal, so the rule cannot drift between providers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rotator.errors import NotFoundError, NotOwnedError
from rotator.model import KeyInfo

Marker = Callable[[KeyInfo], "tuple[str, str] | None"]


def refuse_unless_owned(info: KeyInfo, operation: str, noun: str) -> None:
    if not info.owned:
        raise NotOwnedError(f"{operation}: {noun} {info.id} ({info.name!r}) is not rotator's; not touching it")


def owned_or_refuse(get: Callable[[str], KeyInfo | None], key_id: str, operation: str, noun: str) -> KeyInfo:
    """The key, read fresh, when it exists and is rotator's; raises before any mutating request otherwise."""
    info = get(key_id)
    if info is None:
        raise NotFoundError(f"{operation}: {noun} {key_id} not found")
    refuse_unless_owned(info, operation, noun)
    return info


def owned_by(keys: Iterable[KeyInfo], credential: str, marker: Marker) -> list[KeyInfo]:
    """The owned keys whose marker names ``credential`` (not another credential's)."""
    out = []
    for info in keys:
        parsed = marker(info)
        if info.owned and parsed is not None and parsed[0] == credential:
            out.append(info)
    return out
