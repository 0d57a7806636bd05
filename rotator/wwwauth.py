"""Parse ``WWW-Authenticate`` challenges (RFC 7235 §4.1), leniently. Pure: text in, values out.

Registries are not strict about the grammar, so the parser accepts:

- quoted and unquoted parameter values (cp.icr.io sends ``realm=https://cp.icr.io/oauth/token, service=registry``);
- ``,`` or ``, `` between parameters, and an unquoted value that itself holds a comma
  (``scope=repository:a:pull,push``) when what follows the comma is neither a parameter nor a known scheme;
- any case in scheme and parameter names (both are lower-cased);
- missing ``service`` and unknown parameters (kept, never required).

What cannot be read (an unterminated quote, a parameter before any scheme, stray characters) raises
``ChallengeError`` with a short reason; a challenge header is server-controlled text, so reasons quote
at most a few characters of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Schemes that start a new challenge even when they carry no parameters.
KNOWN_SCHEMES = frozenset({"basic", "bearer", "digest", "negotiate", "ntlm", "hoba", "mutual", "aws4-hmac-sha256"})

_TOKEN_STOP = frozenset(' \t,="')
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class ChallengeError(ValueError):
    """The header is not a usable challenge; the message says why without echoing it whole."""


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic", ...
    params: Mapping[str, str] = field(default_factory=dict)  # names lower case
    token68: str | None = None

    def get(self, name: str) -> str | None:
        return self.params.get(name.lower())


@dataclass(frozen=True)
class BearerChallenge:
    realm: str
    service: str | None = None
    scope: str | None = None


@dataclass(frozen=True)
class BasicChallenge:
    realm: str | None = None


AuthChallenge = BearerChallenge | BasicChallenge


class _Reader:
    """A cursor over the header text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_spaces(self) -> bool:
        start = self.pos
        while self.peek() in (" ", "\t"):
            self.pos += 1
        return self.pos > start

    def skip_separators(self) -> None:
        while self.peek() in (" ", "\t", ","):
            self.pos += 1

    def token(self) -> str:
        start = self.pos
        while not self.done() and self.text[self.pos] not in _TOKEN_STOP:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        """A quoted-string starting at the opening quote; backslash escapes one character."""
        self.pos += 1
        out: list[str] = []
        while not self.done():
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and not self.done():
                out.append(self.text[self.pos])
                self.pos += 1
            elif char == '"':
                return "".join(out)
            else:
                out.append(char)
        raise ChallengeError("unterminated quoted value")

    def bare_value(self) -> str:
        end = self.text.find(",", self.pos)
        end = len(self.text) if end < 0 else end
        value = self.text[self.pos : end].strip()
        self.pos = end
        return value

    def rest_of_item(self) -> str:
        end = self.text.find(",", self.pos)
        return self.text[self.pos : len(self.text) if end < 0 else end].strip()


@dataclass
class _Building:
    scheme: str
    params: dict[str, str] = field(default_factory=dict)
    token68: str | None = None
    last_unquoted: str | None = None  # name of the last parameter whose value was unquoted

    def freeze(self) -> Challenge:
        return Challenge(scheme=self.scheme, params=dict(self.params), token68=self.token68)


def parse_challenges(header: str | Sequence[str]) -> list[Challenge]:
    """Every challenge in one header value (or several values of the same header), in order."""
    text = header if isinstance(header, str) else ", ".join(header)
    if not text.strip():
        raise ChallengeError("empty WWW-Authenticate header")
    reader = _Reader(text)
    done: list[Challenge] = []
    current: _Building | None = None
    while True:
        reader.skip_separators()
        if reader.done():
            break
        start = reader.pos
        name = reader.token()
        if not name:
            raise ChallengeError(f"unexpected character {reader.peek()!r} at offset {start}")
        spaced = reader.skip_spaces()
        if reader.peek() == "=":
            current = _param(reader, current, name)
            continue
        if current is not None and _continues_value(reader, current, name, spaced):
            current.params[current.last_unquoted or ""] += "," + name
            continue
        if current is not None:
            done.append(current.freeze())
        current = _Building(scheme=name.lower())
        if spaced:
            _token68(reader, current)
    if current is not None:
        done.append(current.freeze())
    if not done:
        raise ChallengeError("no challenge in WWW-Authenticate header")
    return done


def _param(reader: _Reader, current: _Building | None, name: str) -> _Building:
    if current is None:
        raise ChallengeError(f"parameter {name[:20]!r} before any auth scheme")
    reader.pos += 1  # the "="
    reader.skip_spaces()
    key = name.lower()
    if reader.peek() == '"':
        value, current.last_unquoted = reader.quoted(), None
    else:
        value, current.last_unquoted = reader.bare_value(), key
    current.params.setdefault(key, value)  # a repeated parameter: the first one wins
    return current


def _continues_value(reader: _Reader, current: _Building, word: str, spaced: bool) -> bool:
    """A bare word after an unquoted value's comma (``scope=repository:a:pull,push``) extends that value."""
    if current.last_unquoted is None or word.lower() in KNOWN_SCHEMES:
        return False
    return not (spaced and not reader.done() and reader.peek() != ",")


def _token68(reader: _Reader, current: _Building) -> None:
    item = reader.rest_of_item()
    if item and _TOKEN68.fullmatch(item):
        current.token68 = item
        reader.pos += len(item)


def select(challenges: Sequence[Challenge]) -> AuthChallenge:
    """The challenge a registry client answers: Bearer with a usable realm first, then Basic."""
    for challenge in challenges:
        if challenge.scheme == "bearer":
            return _bearer(challenge)
    for challenge in challenges:
        if challenge.scheme == "basic":
            return BasicChallenge(realm=challenge.get("realm"))
    schemes = ", ".join(sorted({c.scheme[:20] for c in challenges}))
    raise ChallengeError(f"no Bearer or Basic challenge (offered: {schemes})")


def _bearer(challenge: Challenge) -> BearerChallenge:
    realm = challenge.get("realm")
    if not realm:
        raise ChallengeError("Bearer challenge without a realm")
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ChallengeError("Bearer realm is not an absolute http(s) URL")
    return BearerChallenge(realm=realm, service=challenge.get("service") or None, scope=challenge.get("scope"))


def parse(header: str | Sequence[str] | None) -> AuthChallenge:
    """The usable challenge of a 401 response's header; ``ChallengeError`` when there is none."""
    if header is None:
        raise ChallengeError("401 without a WWW-Authenticate header")
    return select(parse_challenges(header))
