"""THE redaction of text that leaves the process: logs, the journal, status, API answers, Events, errors.

It knows every secret in play (values registered here, plus any a caller passes for one call) and masks:

- the raw value, and any fragment of it of ``MIN_FRAGMENT`` (8) characters or more: a prefix left by some
  upstream's truncation, a suffix, anything in between;
- the value inside base64, standard or URL-safe, padded or not, wherever it sits in the encoded text:
  ``base64(value)``, ``Basic base64(iamapikey:value)``, ``base64(any-user:value)``, ``base64(json)``;
- the value URL-encoded (``%XX``, ``+`` for space), and base64 inside URL-encoding and the reverse.

Encoded forms are found by decoding, not by listing the encodings of each secret: base64 of a concatenation
(``user:value``) is not aligned with the value's own base64, and the user part can be anything an upstream
chose to echo. So every run of text that looks like base64 is decoded at each of its 4 possible alignments,
every run with ``%XX`` is URL-decoded, and the decoded text is searched (again, to a small depth) for a
fragment of a secret; a run that hides one is masked whole.

Then, and only then, text is cut to its length limit (``clean(text, limit=N)``): cutting first can leave a
fragment of a secret that no longer matches the whole value.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, unquote_plus

from rotator.model import SecretStr

MASK = "***"
# Shorter fragments would match ordinary words; 8 random characters are ~48 bits, never there by chance.
MIN_FRAGMENT = 8
# Registered values kept (the oldest are forgotten first): every key minted for a few years of daily
# rotations, without growing for ever in a daemon that runs for months.
MAX_REGISTERED = 1024
# How many encodings deep decoded text is searched again (base64 in URL-encoding in base64 ...).
MAX_DEPTH = 3

_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{11,}=*")  # 11 base64 characters hold at least 8 bytes
# Starts only where a run starts (the look-behind), so a long line is scanned once, not once per character.
_URL_RUN = re.compile(r"(?<![A-Za-z0-9._~+/=%-])[A-Za-z0-9._~+/=-]*(?:%[0-9A-Fa-f]{2}[A-Za-z0-9._~+/=-]*)+")
_TO_STANDARD = str.maketrans("-_", "+/")

_registered: OrderedDict[str, None] = OrderedDict()
_registered_grams: frozenset[str] = frozenset()
_lock = threading.Lock()

Secret = str | SecretStr


def _raw(value: Secret) -> str:
    return value.reveal() if isinstance(value, SecretStr) else value


def _grams(value: str) -> set[str]:
    return {value[i : i + MIN_FRAGMENT] for i in range(len(value) - MIN_FRAGMENT + 1)}


def register(value: Secret) -> None:
    """Mask ``value`` (and its encodings) in every message from now on. Shorter than 8: nothing to do."""
    global _registered_grams
    raw = _raw(value)
    if len(raw) < MIN_FRAGMENT:
        return
    with _lock:
        if raw in _registered:
            _registered.move_to_end(raw)
            return
        _registered[raw] = None
        while len(_registered) > MAX_REGISTERED:
            _registered.popitem(last=False)
        _registered_grams = frozenset().union(*(_grams(v) for v in _registered))


# The fragments to look for: the registered ones and those of this call's extra secrets, kept apart so
# that a call with one extra secret does not copy the whole registry.
Grams = tuple[frozenset[str], ...]


def _grams_in_play(extra: Iterable[Secret]) -> Grams:
    with _lock:
        grams = _registered_grams
    more = [_raw(v) for v in extra]
    own = frozenset().union(*(_grams(v) for v in more if len(v) >= MIN_FRAGMENT))
    return tuple(g for g in (grams, own) if g)


def clean(text: str, *, extra: Iterable[Secret] = (), limit: int | None = None) -> str:
    """``text`` with every form of every secret masked, then cut to ``limit`` characters (``…`` marks a cut)."""
    grams = _grams_in_play(extra)
    if grams and len(text) >= MIN_FRAGMENT:
        text = _mask(text, grams, 0)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def clean_tree(value: Any, *, extra: Iterable[Secret] = ()) -> Any:
    """Every string in a JSON-like value (dicts, lists, tuples) cleaned; other values as they are."""
    grams = _grams_in_play(extra)
    if not grams:
        return value
    return _tree(value, grams)


def _tree(value: Any, grams: Grams) -> Any:
    if isinstance(value, str):
        return _mask(value, grams, 0) if len(value) >= MIN_FRAGMENT else value
    if isinstance(value, dict):
        return {k: _tree(v, grams) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tree(v, grams) for v in value]
    return value


def _mask(text: str, grams: Grams, depth: int) -> str:
    text = _mask_fragments(text, grams)
    if depth >= MAX_DEPTH:
        return text
    if "%" in text:
        text = _URL_RUN.sub(lambda m: MASK if _hides(unquote(m.group(0)), grams, depth) else m.group(0), text)
    return _B64_RUN.sub(lambda m: MASK if _base64_hides(m.group(0), grams, depth) else m.group(0), text)


def _mask_fragments(text: str, grams: Grams) -> str:
    """Every stretch of ``text`` covered by secret fragments of 8 or more characters, masked."""
    windows = [text[i : i + MIN_FRAGMENT] for i in range(len(text) - MIN_FRAGMENT + 1)]
    found = set().union(*(g.intersection(windows) for g in grams))
    if not found:  # the common case, decided by set operations in C
        return text
    covered_to = -1
    spans: list[list[int]] = []
    for i, window in enumerate(windows):
        if window in found:
            end = i + MIN_FRAGMENT
            if spans and i <= covered_to:
                spans[-1][1] = end
            else:
                spans.append([i, end])
            covered_to = end
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        out += [text[last:start], MASK]
        last = end
    out.append(text[last:])
    return "".join(out)


def _hides(decoded: str, grams: Grams, depth: int) -> bool:
    """Whether decoded text holds a secret fragment, directly or in a further encoding."""
    if len(decoded) < MIN_FRAGMENT:
        return False
    if _mask_fragments(decoded, grams) != decoded:
        return True
    # Deeper only for text: a wrong alignment decodes to bytes that are almost never all ASCII.
    return decoded.isascii() and _mask(decoded, grams, depth + 1) != decoded


def _base64_hides(run: str, grams: Grams, depth: int) -> bool:
    if "+" in run and "%" not in run and _hides(unquote_plus(run), grams, depth):
        return True
    body = run.rstrip("=").translate(_TO_STANDARD)
    for offset in range(4):  # the encoded value may start at any of the 4 positions of a base64 quantum
        chunk = body[offset:]
        chunk = chunk[: len(chunk) - len(chunk) % 4 if len(chunk) % 4 == 1 else len(chunk)]
        try:
            decoded = base64.b64decode(chunk + "=" * (-len(chunk) % 4))
        except (binascii.Error, ValueError):
            continue
        if _hides(decoded.decode("utf-8", "replace"), grams, depth):
            return True
    return False
