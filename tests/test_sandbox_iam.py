"""Fidelity of the IAM emulator, proven with IBM's own Python SDK (IamIdentityV1 + IAMAuthenticator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from ibm_cloud_sdk_core import ApiException
from ibm_cloud_sdk_core.authenticators import BearerTokenAuthenticator, IAMAuthenticator
from ibm_platform_services import IamIdentityV1

from rotator.sandbox.control import SandboxProcess


def sdk(endpoints: dict[str, Any], apikey: str) -> IamIdentityV1:
    service = IamIdentityV1(authenticator=IAMAuthenticator(apikey=apikey, url=endpoints["iam"]))
    service.set_service_url(endpoints["iam"])
    return service


def token_for(endpoints: dict[str, Any], apikey: str) -> str:
    token: str = IAMAuthenticator(apikey=apikey, url=endpoints["iam"]).token_manager.get_token()
    return token


def target_iam_id(endpoints: dict[str, Any]) -> str:
    return f"iam-{endpoints['service_id']}"


def create_key(service: IamIdentityV1, endpoints: dict[str, Any], name: str) -> dict[str, Any]:
    result: dict[str, Any] = service.create_api_key(
        name=name, iam_id=target_iam_id(endpoints), account_id=endpoints["account_id"], description="test"
    ).get_result()
    return result


def admin_keys(sandbox: SandboxProcess) -> list[dict[str, Any]]:
    """Every key as the emulator holds it (deleted ones too), without the usage counters."""
    response = sandbox.admin.get("/iam/keys")
    response.raise_for_status()
    keys: list[dict[str, Any]] = response.json()["keys"]
    return [{k: v for k, v in key.items() if k != "activity"} for key in keys]


def list_all_pages(service: IamIdentityV1, endpoints: dict[str, Any], pagesize: int) -> tuple[list[str], int]:
    """Names across every page, following the pagetoken inside ``next`` as IBM's own tests do."""
    names: list[str] = []
    pagetoken: str | None = None
    for pages in range(1, 50):
        result = service.list_api_keys(
            account_id=endpoints["account_id"],
            iam_id=target_iam_id(endpoints),
            pagesize=pagesize,
            pagetoken=pagetoken,
        ).get_result()
        names += [key["name"] for key in result["apikeys"]]
        if "next" not in result:
            return names, pages
        pagetoken = parse_qs(urlsplit(result["next"]).query)["pagetoken"][0]
    raise AssertionError("pagination did not end")


def test_seeded_target_starts_with_the_two_foreign_keys(shared_sandbox: SandboxProcess) -> None:
    """The target service ID's keys are exactly the seeded foreign keys, with ids in the endpoints file."""
    endpoints = shared_sandbox.endpoints
    result = sdk(endpoints, endpoints["admin_apikey"]).list_api_keys(iam_id=target_iam_id(endpoints)).get_result()
    listed = {key["name"]: key["id"] for key in result["apikeys"] if key["name"] in endpoints["foreign_apikeys"]}
    assert listed == endpoints["foreign_apikey_ids"]
    assert set(endpoints["foreign_apikey_ids"]) == set(endpoints["foreign_apikeys"])
    assert all(key["apikey"] == "" for key in result["apikeys"])


def test_sdk_create_and_list_pages_through_next(sandbox: SandboxProcess) -> None:
    """Keys created by the SDK come back across pages of one, following ``next`` until it is absent."""
    endpoints = sandbox.endpoints
    service = sdk(endpoints, endpoints["admin_apikey"])
    created = [create_key(service, endpoints, f"sdk-key-{i}") for i in range(2)]
    assert all(len(key["apikey"]) >= 32 for key in created)
    names, pages = list_all_pages(service, endpoints, pagesize=1)
    assert names == [*endpoints["foreign_apikeys"], "sdk-key-0", "sdk-key-1"]
    assert pages == 4
    response = service.get_api_key(id=created[0]["id"])
    assert response.get_result()["apikey"] == ""  # the value is only shown at creation
    assert response.get_headers()["ETag"] == response.get_result()["entity_tag"]


def test_sdk_details_disable_enable_delete(sandbox: SandboxProcess) -> None:
    """A disabled key gets no token, an enabled one does, and a deleted key is a 404 to get_api_key."""
    endpoints = sandbox.endpoints
    service = sdk(endpoints, endpoints["admin_apikey"])
    key = create_key(service, endpoints, "lifecycle")
    details = service.get_api_keys_details(iam_api_key=key["apikey"]).get_result()
    assert details["id"] == key["id"]
    assert service.disable_api_key(id=key["id"]).get_status_code() == 204
    with pytest.raises(ApiException) as refused:
        token_for(endpoints, key["apikey"])
    assert refused.value.code == 400
    assert refused.value.message == "Provided API key could not be found."
    assert service.enable_api_key(id=key["id"]).get_status_code() == 204
    assert jwt.decode(token_for(endpoints, key["apikey"]), options={"verify_signature": False})["sub_type"] == (
        "ServiceId"
    )
    assert service.delete_api_key(id=key["id"]).get_status_code() == 204
    with pytest.raises(ApiException) as gone:
        service.get_api_key(id=key["id"])
    assert gone.value.code == 404


def test_token_claims_and_configurable_lifetime(sandbox: SandboxProcess) -> None:
    """Tokens are JWTs with integer exp/iat and the service ID's claims; the lifetime is set by the admin route."""
    endpoints = sandbox.endpoints
    sandbox.admin.put("/iam/token-lifetime", json={"seconds": 5}).raise_for_status()
    form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": endpoints["admin_apikey"]}
    body = httpx.post(f"{endpoints['iam']}/identity/token", data=form).json()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert (body["expires_in"], claims["exp"] - claims["iat"], body["expiration"]) == (5, 5, claims["exp"])
    assert claims["iam_id"] == f"iam-{endpoints['admin_service_id']}"
    assert claims["account"]["bss"] == endpoints["account_id"]
    assert (body["token_type"], body["refresh_token"]) == ("Bearer", "not_supported")


def test_token_minted_before_delete_stays_valid(sandbox: SandboxProcess) -> None:
    """Deleting a key stops new tokens but an already issued token keeps working until it expires."""
    endpoints = sandbox.endpoints
    admin = sdk(endpoints, endpoints["admin_apikey"])
    key = create_key(admin, endpoints, "short-lived")
    token = token_for(endpoints, key["apikey"])
    admin.delete_api_key(id=key["id"])
    with pytest.raises(ApiException):
        token_for(endpoints, key["apikey"])
    as_target = IamIdentityV1(authenticator=BearerTokenAuthenticator(token))
    as_target.set_service_url(endpoints["iam"])
    result = as_target.list_api_keys(iam_id=target_iam_id(endpoints)).get_result()
    assert sorted(k["name"] for k in result["apikeys"]) == sorted(endpoints["foreign_apikeys"])


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s, e: s.list_api_keys(iam_id=target_iam_id(e)), id="list-target-keys"),
        pytest.param(lambda s, e: create_key(s, e, "intruder"), id="create-on-target"),
        pytest.param(lambda s, e: s.get_api_key(id=e["foreign_apikey_ids"]["ci-pipeline"]), id="get-foreign"),
        pytest.param(lambda s, e: s.delete_api_key(id=e["foreign_apikey_ids"]["ci-pipeline"]), id="delete-foreign"),
        pytest.param(lambda s, e: s.disable_api_key(id=e["foreign_apikey_ids"]["ci-pipeline"]), id="disable-foreign"),
        pytest.param(lambda s, e: s.list_api_keys(account_id="another-account"), id="other-account"),
    ],
)
def test_outsider_is_forbidden(shared_sandbox: SandboxProcess, call: Any) -> None:
    """An identity without rights on the target service ID gets 403 and changes nothing."""
    endpoints = shared_sandbox.endpoints
    before = admin_keys(shared_sandbox)
    with pytest.raises(ApiException) as denied:
        call(sdk(endpoints, endpoints["outsider_apikey"]), endpoints)
    assert denied.value.code == 403
    assert admin_keys(shared_sandbox) == before


def test_key_limit_is_enforced_and_freed_by_delete(sandbox: SandboxProcess) -> None:
    """With a limit of 3, the target (2 foreign keys) takes one more; then 400 limit_exceeded until one is deleted."""
    endpoints = sandbox.endpoints
    sandbox.admin.put("/iam/key-limit", json={"limit": 3}).raise_for_status()
    service = sdk(endpoints, endpoints["admin_apikey"])
    third = create_key(service, endpoints, "third")
    with pytest.raises(ApiException) as limited:
        create_key(service, endpoints, "fourth")
    assert limited.value.code == 400
    assert limited.value.http_response.json()["errors"][0]["code"] == "limit_exceeded"
    service.delete_api_key(id=third["id"])
    assert create_key(service, endpoints, "fourth")["name"] == "fourth"


def test_update_needs_current_if_match_and_lock_blocks_changes(sandbox: SandboxProcess) -> None:
    """PUT with the current ETag works, a stale one is 409; a locked key refuses update and delete with 409."""
    endpoints = sandbox.endpoints
    service = sdk(endpoints, endpoints["admin_apikey"])
    key = create_key(service, endpoints, "editable")
    etag = service.get_api_key(id=key["id"]).get_headers()["ETag"]
    updated = service.update_api_key(id=key["id"], if_match=etag, description="changed").get_result()
    assert updated["description"] == "changed"
    with pytest.raises(ApiException) as stale:
        service.update_api_key(id=key["id"], if_match=etag, description="again")
    assert stale.value.code == 409
    service.lock_api_key(id=key["id"])
    for attempt in (
        lambda: service.update_api_key(id=key["id"], if_match="*", name="renamed"),
        lambda: service.delete_api_key(id=key["id"]),
    ):
        with pytest.raises(ApiException) as locked:
            attempt()
        assert locked.value.code == 409
    service.unlock_api_key(id=key["id"])
    assert service.delete_api_key(id=key["id"]).get_status_code() == 204


def test_service_ids_list_and_get(shared_sandbox: SandboxProcess) -> None:
    """The seeded service IDs are listed for the account and fetched by id; an unknown id is 404."""
    endpoints = shared_sandbox.endpoints
    service = sdk(endpoints, endpoints["admin_apikey"])
    listed = service.list_service_ids(account_id=endpoints["account_id"]).get_result()["serviceids"]
    assert {s["name"] for s in listed} == {"registry-puller", "rotator-admin", "outsider"}
    target = service.get_service_id(id=endpoints["service_id"]).get_result()
    assert (target["name"], target["iam_id"]) == ("registry-puller", target_iam_id(endpoints))
    with pytest.raises(ApiException) as missing:
        service.get_service_id(id="ServiceId-00000000-0000-0000-0000-000000000000")
    assert missing.value.code == 404


def test_keys_and_values_survive_a_restart(tmp_path: Path) -> None:
    """With --state-dir, a created key and its value are still there after the sandbox restarts."""
    with SandboxProcess.start(state_dir=tmp_path) as first:
        endpoints = first.endpoints
        key = create_key(sdk(endpoints, endpoints["admin_apikey"]), endpoints, "persistent")
    with SandboxProcess.start(state_dir=tmp_path) as second:
        endpoints = second.endpoints
        assert jwt.decode(token_for(endpoints, key["apikey"]), options={"verify_signature": False})["iam_id"] == (
            target_iam_id(endpoints)
        )
        assert any(k["id"] == key["id"] and not k["deleted"] for k in admin_keys(second))


# -- malformed requests -----------------------------------------------------------------------------
GRANT = "urn:ibm:params:oauth:grant-type:apikey"
FOREIGN = "{foreign}"  # replaced by a seeded foreign key id


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "auth", "status", "code"),
    [
        pytest.param("POST", "/v1/apikeys", {"content": b"{not json"}, True, 400, "BXNIM0106E", id="bad-json"),
        pytest.param("POST", "/v1/apikeys", {"json": [1, 2]}, True, 400, "BXNIM0106E", id="json-not-object"),
        pytest.param("POST", "/v1/apikeys", {"json": {}}, True, 400, "BXNIM0109E", id="missing-name"),
        pytest.param("POST", "/v1/apikeys", {"json": {"name": "x"}}, True, 400, "BXNIM0109E", id="missing-iam-id"),
        pytest.param(
            "POST",
            "/v1/apikeys",
            {"json": {"name": "x", "iam_id": "iam-x", "apikey": "short"}},
            True,
            400,
            "BXNIM0106E",
            id="passthrough-key-too-short",
        ),
        pytest.param(
            "POST",
            "/v1/apikeys",
            {"json": {"name": "x", "iam_id": "iam-x"}, "headers": {"Entity-Lock": "maybe"}},
            True,
            400,
            "BXNIM0106E",
            id="bad-entity-lock",
        ),
        pytest.param("PATCH", "/v1/apikeys", {}, True, 405, "BXNIM9405E", id="wrong-method"),
        pytest.param("GET", "/v1/apikeys", {}, False, 401, "BXNIM9401E", id="no-token"),
        pytest.param(
            "GET",
            "/v1/apikeys",
            {"headers": {"Authorization": "Bearer x.y.z"}},
            None,
            401,
            "BXNIM9401E",
            id="bad-token",
        ),
        pytest.param("GET", "/v1/apikeys", {"params": {"pagesize": "0"}}, True, 400, "BXNIM0106E", id="pagesize-0"),
        pytest.param("GET", "/v1/apikeys", {"params": {"pagesize": "101"}}, True, 400, "BXNIM0106E", id="pagesize-101"),
        pytest.param("GET", "/v1/apikeys", {"params": {"pagesize": "ab"}}, True, 400, "BXNIM0106E", id="pagesize-text"),
        pytest.param(
            "GET", "/v1/apikeys", {"params": {"pagetoken": "@@"}}, True, 400, "BXNIM0106E", id="bad-pagetoken"
        ),
        pytest.param("GET", "/v1/apikeys/details", {}, True, 400, "BXNIM0109E", id="details-without-header"),
        pytest.param("GET", "/v1/apikeys/ApiKey-nope", {}, True, 404, "BXNIM0102E", id="unknown-key"),
        pytest.param("PUT", f"/v1/apikeys/{FOREIGN}", {"json": {}}, True, 400, "BXNIM0109E", id="put-no-if-match"),
        pytest.param(
            "PUT",
            f"/v1/apikeys/{FOREIGN}",
            {"json": {}, "headers": {"If-Match": "0-stale"}},
            True,
            409,
            "BXNIM9409E",
            id="put-stale-if-match",
        ),
        pytest.param("GET", "/v1/serviceids/", {}, True, 400, "BXNIM0109E", id="serviceids-no-account"),
        pytest.param("GET", "/nowhere", {}, True, 404, "BXNIM0102E", id="unknown-path"),
    ],
)
def test_malformed_identity_requests(
    shared_sandbox: SandboxProcess,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    auth: bool | None,
    status: int,
    code: str,
) -> None:
    """Malformed Identity API requests get IAM's status and the API-handbook error shape, never a 500."""
    endpoints = shared_sandbox.endpoints
    headers = dict(kwargs.pop("headers", {}))
    if auth:
        headers["Authorization"] = f"Bearer {token_for(endpoints, endpoints['admin_apikey'])}"
    path = path.replace(FOREIGN, endpoints["foreign_apikey_ids"]["legacy-manual"])
    response = httpx.request(method, endpoints["iam"] + path, headers=headers, **kwargs)
    body = response.json()
    assert (response.status_code, body["status_code"]) == (status, status)
    assert body["errors"][0]["message_code"] == code
    assert body["errors"][0]["code"] and body["errors"][0]["message"] and body["trace"]


@pytest.mark.parametrize(
    ("method", "kwargs", "status", "code"),
    [
        pytest.param("POST", {"data": {"grant_type": GRANT}}, 400, "BXNIM0109E", id="missing-apikey"),
        pytest.param("POST", {"data": {"apikey": "k"}}, 400, "BXNIM0109E", id="missing-grant-type"),
        pytest.param("POST", {"data": {"grant_type": "password", "apikey": "k"}}, 400, "BXNIM0106E", id="bad-grant"),
        pytest.param(
            "POST",
            {"data": {"grant_type": GRANT, "apikey": "k", "response_type": "bogus"}},
            400,
            "BXNIM0106E",
            id="bad-response-type",
        ),
        pytest.param("POST", {"data": {"grant_type": GRANT, "apikey": "x" * 44}}, 400, "BXNIM0415E", id="unknown-key"),
        pytest.param("POST", {"json": {"grant_type": GRANT}}, 400, "BXNIM0109E", id="json-instead-of-form"),
        pytest.param("GET", {}, 405, "BXNIM0106E", id="wrong-method"),
        pytest.param(
            "POST",
            {"content": b"\xff\xfe", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            400,
            "BXNIM0109E",
            id="form-not-utf8",
        ),
        pytest.param(
            "POST",
            {"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
            400,
            "BXNIM0109E",
            id="broken-multipart",
        ),
    ],
)
def test_malformed_token_requests(
    shared_sandbox: SandboxProcess, method: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    """Bad token requests get the token endpoint's own error shape (errorCode/errorMessage/context)."""
    response = httpx.request(method, shared_sandbox.endpoints["iam"] + "/identity/token", **kwargs)
    body = response.json()
    assert response.status_code == status
    assert body["errorCode"] == code
    assert body["errorMessage"] and body["context"]["requestType"] == "incoming.Identity_Token"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/iam/key-limit", {"limit": 0}, id="limit-zero"),
        pytest.param("/iam/key-limit", {"limit": "3"}, id="limit-text"),
        pytest.param("/iam/token-lifetime", {"secs": 5}, id="lifetime-wrong-field"),
        pytest.param("/iam/token-lifetime", [5], id="lifetime-not-object"),
    ],
)
def test_admin_routes_reject_bad_values(shared_sandbox: SandboxProcess, path: str, body: Any) -> None:
    """The test-control routes answer 400 naming the expected field, not a 500."""
    response = shared_sandbox.admin.put(path, json=body)
    assert response.status_code == 400
    assert ("limit" if "limit" in path else "seconds") in response.json()["error"]


# -- item 5 of issue 14: the calls IBM's own integration tests make -------------------------------------


def test_sdk_api_key_calls_as_ibm_tests_make_them(sandbox: SandboxProcess) -> None:
    """expires_at with seconds on create and update, a ``co`` filter across pages, history and activity."""
    endpoints = sandbox.endpoints
    service = sdk(endpoints, endpoints["admin_apikey"])
    iam_id, account = target_iam_id(endpoints), endpoints["account_id"]
    first = service.create_api_key(
        name="Python-SDK-IT-ApiKey-1", iam_id=iam_id, account_id=account, expires_at="2049-01-02T18:30:00+0000"
    ).get_result()
    assert first["expires_at"] == "2049-01-02T18:30:00+0000"
    service.create_api_key(name="Python-SDK-IT-ApiKey-2", iam_id=iam_id, account_id=account)
    service.create_api_key(name="unrelated", iam_id=iam_id, account_id=account)
    names: list[str] = []
    pagetoken: str | None = None
    for _ in range(10):
        page = service.list_api_keys(
            account_id=account, iam_id=iam_id, pagesize=1, pagetoken=pagetoken, filter='name co "Python"'
        ).get_result()
        names += [k["name"] for k in page["apikeys"]]
        if "next" not in page:
            break
        pagetoken = parse_qs(urlsplit(page["next"]).query)["pagetoken"][0]
    assert names == ["Python-SDK-IT-ApiKey-1", "Python-SDK-IT-ApiKey-2"]
    either = service.list_api_keys(
        account_id=account, iam_id=iam_id, filter='name eq "unrelated" or name ew "-2"'
    ).get_result()
    assert sorted(k["name"] for k in either["apikeys"]) == ["Python-SDK-IT-ApiKey-2", "unrelated"]
    got = service.get_api_key(id=first["id"], include_history=True, include_activity=True)
    assert [h["action"] for h in got.get_result()["history"]] == ["create"]
    with_history = service.list_api_keys(iam_id=iam_id, include_history=True, filter='name eq "unrelated"')
    assert [[h["action"] for h in k["history"]] for k in with_history.get_result()["apikeys"]] == [["create"]]
    assert all("history" not in k for k in service.list_api_keys(iam_id=iam_id).get_result()["apikeys"])
    updated = service.update_api_key(
        id=first["id"], if_match=got.get_headers()["Etag"], description="updated", expires_at="2050-03-04T05:06:07+0000"
    ).get_result()
    assert (updated["description"], updated["expires_at"]) == ("updated", "2050-03-04T05:06:07+0000")


@pytest.mark.parametrize(
    "text", ["name co Python", 'nom co "Python"', 'name like "x"', 'name co "x" nand name co "y"', 'name co "x']
)
def test_a_filter_the_emulator_cannot_read_is_refused_with_the_reason(
    shared_sandbox: SandboxProcess, text: str
) -> None:
    endpoints = shared_sandbox.endpoints
    service = sdk(endpoints, endpoints["admin_apikey"])
    for call in (
        lambda: service.list_api_keys(iam_id=target_iam_id(endpoints), filter=text),
        lambda: service.list_service_ids(account_id=endpoints["account_id"], filter=text),
    ):
        with pytest.raises(ApiException) as refused:
            call()
        assert refused.value.code == 400
        assert "filter" in refused.value.message


def test_sdk_service_id_lifecycle(sandbox: SandboxProcess) -> None:
    """Create (with an inline key), get with history, list by name and filter, update with If-Match,
    lock blocks update and delete, unlock, delete takes the service ID's keys with it."""
    endpoints = sandbox.endpoints
    service = sdk(endpoints, endpoints["admin_apikey"])
    account = endpoints["account_id"]
    created = service.create_service_id(
        account_id=account,
        name="Python-SDK-IT-ServiceId",
        description="test",
        apikey={"name": "API Key Name", "store_value": True, "expires_at": "2049-01-02T18:30:00+0000"},
    ).get_result()
    sid = created["id"]
    assert created["apikey"]["iam_id"] == created["iam_id"] and created["apikey"]["apikey"]
    got = service.get_service_id(id=sid, include_history=True, include_activity=True)
    assert [h["action"] for h in got.get_result()["history"]] == ["create"]
    by_name = service.list_service_ids(account_id=account, name="Python-SDK-IT-ServiceId", filter='name co "Python"')
    assert [s["id"] for s in by_name.get_result()["serviceids"]] == [sid]
    none = service.list_service_ids(account_id=account, name="Python-SDK-IT-ServiceId", filter='name co "Java"')
    assert none.get_result()["serviceids"] == []
    updated = service.update_service_id(id=sid, if_match=got.get_headers()["Etag"], description="updated")
    assert updated.get_result()["description"] == "updated"
    with pytest.raises(ApiException) as stale:
        service.update_service_id(id=sid, if_match=got.get_headers()["Etag"], description="again")
    assert stale.value.code == 409
    assert service.lock_service_id(id=sid).get_status_code() == 204
    assert service.get_service_id(id=sid).get_result()["locked"] is True
    for call in (
        lambda: service.update_service_id(id=sid, if_match="*", name="x"),
        lambda: service.delete_service_id(id=sid),
    ):
        with pytest.raises(ApiException) as locked:
            call()
        assert (locked.value.code, locked.value.message) == (409, f"Service ID {sid} is locked.")
    assert service.unlock_service_id(id=sid).get_status_code() == 204
    listed = service.list_service_ids(account_id=account, name="Python-SDK-IT-ServiceId", include_history=True)
    (entry,) = listed.get_result()["serviceids"]
    assert [h["action"] for h in entry["history"]] == ["create", "update", "lock", "unlock"]
    assert service.delete_service_id(id=sid).get_status_code() == 204
    with pytest.raises(ApiException) as gone:
        service.get_service_id(id=sid)
    assert gone.value.code == 404
    with pytest.raises(ApiException) as key_gone:
        service.get_api_key(id=created["apikey"]["id"])
    assert key_gone.value.code == 404


def test_seeded_service_ids_are_nobodys_to_change(shared_sandbox: SandboxProcess) -> None:
    endpoints = shared_sandbox.endpoints
    service = sdk(endpoints, endpoints["admin_apikey"])
    for call in (
        lambda: service.delete_service_id(id=endpoints["service_id"]),
        lambda: service.lock_service_id(id=endpoints["service_id"]),
        lambda: service.update_service_id(id=endpoints["service_id"], if_match="*", description="x"),
    ):
        with pytest.raises(ApiException) as refused:
            call()
        assert refused.value.code == 403


def test_a_leaked_key_is_disabled_the_way_iam_does_it(sandbox: SandboxProcess) -> None:
    """IAM applies ``action_when_leaked``: ``disable`` leaves a disabled key, ``none`` leaves it alone."""
    endpoints = sandbox.endpoints
    service = sdk(endpoints, endpoints["admin_apikey"])
    iam_id, account = target_iam_id(endpoints), endpoints["account_id"]
    guarded = service.create_api_key(name="g", iam_id=iam_id, account_id=account, action_when_leaked="disable")
    ignored = service.create_api_key(name="i", iam_id=iam_id, account_id=account, action_when_leaked="none")
    for key in (guarded.get_result(), ignored.get_result()):
        sandbox.admin.post(f"/iam/keys/{key['id']}/leaked").raise_for_status()
    assert service.get_api_key(id=guarded.get_result()["id"]).get_result()["disabled"] is True
    assert service.get_api_key(id=ignored.get_result()["id"]).get_result()["disabled"] is False
    with pytest.raises(ApiException) as refused:
        token_for(endpoints, guarded.get_result()["apikey"])
    assert refused.value.code == 400
