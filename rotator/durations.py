"""Durations as people write them in config: ``90s``, ``15m``, ``1h30m``, ``30d``, ``2w``."""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> dt.timedelta:
    """``1h30m`` -> 5400 s. Raises ValueError with the accepted form (not the value)."""
    compact = text.strip().replace(" ", "")
    if not compact:
        raise ValueError("is an empty duration; write a number and a unit, e.g. 90s")
    pos, total = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact):
        # The caller shows the value (settings errors quote it once, by field).
        raise ValueError("is not a duration; write a number and a unit (ms s m h d w), e.g. 90s, 1h30m, 30d")
    return dt.timedelta(seconds=total)


def format_duration(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)
