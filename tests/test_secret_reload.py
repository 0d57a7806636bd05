"""An admin key rotated in its mounted file is used without a restart; an unreadable file keeps the last key.

The operator's side (a new admin key, the old one deleted) is done with IBM's own SDK, as an operator would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ibm_cloud_sdk_core.authenticators import IAMAuthenticator
from ibm_platform_services import IamIdentityV1
from logtail import LogTail
from masked import masked
from polling import wait_for
from rotation_env import CRED, make_app, pulls, stored_password, write_config

from rotator.app import App
from rotator.policy import Request
from rotator.sandbox.control import SandboxProcess, iam_provider_config

TOKEN_LIFETIME_S = 2  # the sandbox's IAM tokens; rotator fetches a new one (re-reading the key) after 80 %


def write_atomically(path: Path, value: str) -> None:
    """How the kubelet updates a mounted Secret: the new content appears at once, never half-written."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


@pytest.fixture
def key_file(sandbox: SandboxProcess, tmp_path: Path) -> Path:
    path = tmp_path / "admin-apikey"
    write_atomically(path, sandbox.endpoints["admin_apikey"])
    return path


@pytest.fixture
def app(sandbox: SandboxProcess, tmp_path: Path, key_file: Path) -> Iterator[App]:
    sandbox.admin.put("/iam/token-lifetime", json={"seconds": TOKEN_LIFETIME_S}).raise_for_status()
    provider = {**iam_provider_config(sandbox.endpoints), "apikey": {"file": str(key_file)}}
    with make_app(write_config(tmp_path, sandbox, provider=provider)) as built:
        yield built


def rotate(app: App, sbx: SandboxProcess) -> str:
    outcome = app.reconciler(CRED).run(Request(reason="test"))
    assert outcome.result == "succeeded", outcome.detail
    value = stored_password(sbx, "team-a")
    assert value is not None
    return value


def identity(sbx: SandboxProcess, apikey: str) -> IamIdentityV1:
    service = IamIdentityV1(authenticator=IAMAuthenticator(apikey=apikey, url=sbx.endpoints["iam"]))
    service.set_service_url(sbx.endpoints["iam"])
    return service


def token_expired(sbx: SandboxProcess, token: str) -> bool:
    response = httpx.get(
        sbx.endpoints["iam"] + "/v1/apikeys",
        params={"account_id": sbx.endpoints["account_id"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status_code == 401


def signs_in(sbx: SandboxProcess, apikey: str) -> bool:
    form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": apikey}
    return httpx.post(sbx.endpoints["iam"] + "/identity/token", data=form).status_code == 200


def wait_until_cached_tokens_are_due(sbx: SandboxProcess, apikey: str) -> None:
    """Rotator's cached IAM token was fetched before now: once a token fetched now has expired, rotator's
    is past its refresh point too, and its next IAM call reads the key file again."""
    token = IAMAuthenticator(apikey=apikey, url=sbx.endpoints["iam"]).token_manager.get_token()
    wait_for(lambda: token_expired(sbx, token), "IAM tokens fetched before now to expire")


FIELD = "credentials[0].provider.apikey"


def test_admin_key_rotated_in_its_file_takes_effect_without_a_restart(
    sandbox: SandboxProcess, app: App, key_file: Path
) -> None:
    ep = sandbox.endpoints
    tail = LogTail()
    first = rotate(app, sandbox)

    # The operator rotates rotator's own key: a new key for the admin service ID, into the file, old one deleted.
    old_value = ep["admin_apikey"]
    operator = identity(sandbox, old_value)
    old_id = operator.get_api_keys_details(iam_api_key=old_value).get_result()["id"]
    created = operator.create_api_key(
        name="rotator-admin-key-2", iam_id=f"iam-{ep['admin_service_id']}", account_id=ep["account_id"]
    ).get_result()
    write_atomically(key_file, created["apikey"])
    operator.delete_api_key(id=old_id)
    # Tokens minted from a deleted key stay valid until they expire (as at IBM Cloud): wait that out, so the
    # next rotation can only succeed by signing in with the new key.
    wait_until_cached_tokens_are_due(sandbox, created["apikey"])
    assert not signs_in(sandbox, old_value) and signs_in(sandbox, created["apikey"])

    second = rotate(app, sandbox)
    assert masked(second) != masked(first) and pulls(sandbox, second) == "ok"
    assert tail.events("secret.reloaded", field=FIELD), "the new admin key was not reported as reloaded"


def test_unreadable_key_file_keeps_the_last_key_and_says_which_field(
    sandbox: SandboxProcess, app: App, key_file: Path
) -> None:
    admin_key = sandbox.endpoints["admin_apikey"]
    tail = LogTail()
    first = rotate(app, sandbox)
    key_file.unlink()  # a Secret being re-mounted, a volume gone: the key itself is still valid at IAM
    wait_until_cached_tokens_are_due(sandbox, admin_key)
    second = rotate(app, sandbox)
    assert masked(second) != masked(first) and pulls(sandbox, second) == "ok"
    failures = tail.events("secret.reload_failed", field=FIELD)
    assert len(failures) == 1, "one warning per outage, naming the field"
    assert str(key_file) in failures[0]["error"]

    write_atomically(key_file, admin_key)
    wait_until_cached_tokens_are_due(sandbox, admin_key)
    rotate(app, sandbox)
    assert tail.events("secret.reload_recovered", field=FIELD)
