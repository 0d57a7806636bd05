"""``rotator.redact.clean``: every encoding of a secret in play is masked, and only then is text cut."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest
from leakforms import leaks
from masked import Masked

from rotator import redact
from rotator.model import SecretStr

# Shaped like an IAM API key (44 url-safe characters); its base64 holds '+' and '/', so the std and url-safe
# alphabets differ.
KEY = Masked("pQ9-Wm_2zL7vXk4RtY8nB3cJ6hF1sD5gA0eU~?>>xN2o")
OTHER = Masked("dckr_pat_Zr8Qm2Vw5Kx9Lb3Ny7Hc4Td1Pf6")  # passed for one call only, never registered


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _pct(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


@pytest.fixture(autouse=True)
def registered() -> None:
    redact.register(KEY)


FORMS = [
    pytest.param(f"key {KEY} refused", id="raw"),
    pytest.param(f"key {_b64(KEY)} refused", id="base64-std-padded"),
    pytest.param(f"key {_b64(KEY).rstrip('=')} refused", id="base64-std-unpadded"),
    pytest.param(f"key {_b64url(KEY)} refused", id="base64-url-padded"),
    pytest.param(f"key {_b64url(KEY).rstrip('=')} refused", id="base64-url-unpadded"),
    pytest.param(f"Authorization: Basic {_b64('iamapikey:' + KEY)}", id="basic-iamapikey"),
    pytest.param(f"Authorization: Basic {_b64('someone-else:' + KEY)}", id="basic-any-user"),
    pytest.param(f"Authorization: Basic {_b64('u:' + KEY)}", id="basic-one-letter-user"),
    pytest.param(f"got {_b64(json.dumps({'apikey': KEY}))}", id="base64-of-json"),
    pytest.param(f"x{_b64('ab:' + KEY)}", id="base64-glued-to-a-word"),
    pytest.param(f"apikey={quote(KEY, safe='')}", id="url-encoded"),
    pytest.param(f"apikey={quote_plus(KEY)}", id="url-encoded-plus"),
    pytest.param(f"apikey={_pct(KEY)}", id="url-encoded-every-byte"),
    pytest.param(f"apikey={_pct(KEY).lower()}", id="url-encoded-lower-hex"),
    pytest.param(f"b={quote(_b64('iamapikey:' + KEY), safe='')}", id="base64-then-url-encoded"),
    pytest.param(f"prefix {KEY[:23]}…", id="prefix-23"),
    pytest.param(f"prefix {KEY[:8]}", id="prefix-8"),
    pytest.param(f"tail {KEY[-9:]}", id="suffix-9"),
    pytest.param(f"middle {KEY[10:20]} here", id="fragment-10"),
    pytest.param(f"half {_b64('iamapikey:' + KEY)[:40]}", id="cut-basic-base64"),
]


@pytest.mark.parametrize("text", FORMS)
def test_every_form_of_a_registered_secret_is_masked(text: str) -> None:
    """No form of the key survives, and the words around it do."""
    assert leaks(text, [KEY]), "the oracle must see the key in the input"
    out = redact.clean(text)
    assert leaks(out, [KEY]) == []
    assert redact.MASK in out
    words = text.split()
    if len(words) > 1:  # the label before the value is kept (compared as a Masked: no text in a report)
        assert Masked(out.split()[0]) == Masked(words[0])


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"token {OTHER} refused", id="raw"),
        pytest.param(f"Authorization: Basic {_b64('someone:' + OTHER)}", id="basic-any-user"),
        pytest.param(f"token={_pct(OTHER)}", id="url-encoded-every-byte"),
        pytest.param(f"prefix {OTHER[:12]}…", id="prefix-12"),
    ],
)
def test_a_secret_given_for_one_call_is_masked_in_every_form(text: str) -> None:
    """``extra`` secrets (an access token, an admin key) get the same treatment without being registered."""
    assert leaks(redact.clean(text), [OTHER]), "OTHER is not registered: without extra it stays"
    assert leaks(redact.clean(text, extra=[SecretStr(OTHER)]), [OTHER]) == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"b={_b64(_pct(KEY))} end", id="url-encoded-then-base64"),
        pytest.param(f"b={_b64(_b64(KEY))} end", id="base64-twice"),
        pytest.param(f"b={_b64(_b64('iamapikey:' + KEY))} end", id="basic-base64-twice"),
    ],
)
def test_nested_encodings_are_masked(text: str) -> None:
    """Two encodings deep (the oracle above does not decode, so the whole run must be the mask)."""
    assert redact.clean(text) == f"b={redact.MASK} end"


def test_scrub_comes_before_the_cut() -> None:
    """A key that straddles the limit leaves no prefix: the cut is made on already-masked text."""
    text = "." * 100 + " " + KEY + " refused " + "." * 40
    out = redact.clean(text, limit=120)
    assert len(out) <= 120 and out.endswith("…")
    assert leaks(out, [KEY]) == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("HEAD us.icr.io/team/app:latest answered 401 (UNAUTHORIZED: authentication required)", id="words"),
        pytest.param("Basic " + _b64("iamapikey:not-the-key-at-all-0000"), id="other-base64"),
        pytest.param("https://iam.cloud.ibm.com/identity/token?x=%2F%3D", id="other-url-encoding"),
        pytest.param("rotation 3f2a9c1e-0b6d-4e7a-9c2f-5d8e1a4b7c90 failed", id="uuid"),
    ],
)
def test_text_without_a_secret_is_unchanged(text: str) -> None:
    assert redact.clean(text) == text


def test_clean_tree_masks_every_string_of_a_document() -> None:
    doc = {"a": [f"x {KEY}", {"b": _b64("iamapikey:" + KEY)}], "n": 3, "none": None}
    out = redact.clean_tree(doc)
    assert leaks(json.dumps(out), [KEY]) == []
    assert out["n"] == 3 and out["none"] is None


def test_short_values_are_not_registered() -> None:
    """A value shorter than 8 characters would mask ordinary words; it is ignored."""
    redact.register("abc")
    assert redact.clean("abcdef abc") == "abcdef abc"
