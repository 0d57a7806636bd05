"""Find a credential value in text in any form an upstream may echo it: the tests' own oracle.

Written independently of ``rotator.redact`` (which decodes what looks encoded): this side encodes the value and
looks for what any encoding of text containing it must contain. For base64 that is the "core" of
``base64(X + value + Y)`` that does not depend on X or Y: for each of the 3 alignments of ``len(X) % 3``, the
full base64 quanta made only of the value's bytes. Results name the form, never the value.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote_plus

_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


def _windows(text: str, size: int) -> set[str]:
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def _base64_cores(data: bytes) -> list[str]:
    cores = []
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + data).decode()
        core = encoded[(k + 2) // 3 * 4 : (k + len(data)) // 3 * 4]
        cores += [core, core.replace("+", "-").replace("/", "_")]
    return cores


class Forms:
    """Every form of ``value`` worth looking for; ``fragment`` characters of it already count as a leak."""

    def __init__(self, value: str, *, fragment: int = 8) -> None:
        self.fragment = fragment
        self.raw = _windows(value, fragment)
        # 12 base64 characters = 9 bytes of the value: more than a fragment, never there by chance.
        self.encoded = set().union(*(_windows(core, 12) for core in _base64_cores(value.encode())))

    def found_in(self, text: str) -> list[str]:
        """The forms of the value that ``text`` holds ([] when none)."""
        found = []
        if _windows(text, self.fragment) & self.raw:
            found.append(f"raw or a fragment of >= {self.fragment} characters")
        if _windows(text, 12) & self.encoded:
            found.append("base64 (std or url-safe) of text containing it")
        if _PERCENT.search(text) and _windows(unquote_plus(text), self.fragment) & self.raw:
            found.append("url-encoded")
        return found


class Scanner:
    """Many values at once (the suite's log scan): is any form of any of them in a line?"""

    def __init__(self, values: set[str], *, fragment: int) -> None:
        forms = [Forms(v, fragment=fragment) for v in values if len(v) >= fragment]
        self.short = [v for v in values if len(v) < fragment]  # looked for whole
        self.fragment = fragment
        self.raw: set[str] = set().union(*(f.raw for f in forms))
        self.encoded: set[str] = set().union(*(f.encoded for f in forms))

    def found_in(self, text: str) -> bool:
        if any(v in text for v in self.short):
            return True
        if _windows(text, self.fragment) & self.raw or _windows(text, 12) & self.encoded:
            return True
        return bool(_PERCENT.search(text)) and bool(_windows(unquote_plus(text), self.fragment) & self.raw)


def leaks(text: str, values: list[str], *, fragment: int = 8) -> list[str]:
    """``value #i: form`` for every value found in ``text`` (by index: the report carries no value)."""
    found = []
    for i, value in enumerate(values):
        found += [f"value #{i}: {form}" for form in Forms(value, fragment=fragment).found_in(text)]
    return found
