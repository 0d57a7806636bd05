"""Configuration: valid files load; each bad one names the file, the field, the value and a fix."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotator import settings
from rotator.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

GOOD: dict[str, Any] = {
    "credentials": [
        {
            "name": "icr-pull",
            "provider": {
                "kind": "ibm-iam",
                "account_id": "abc",
                "service_id": "ServiceId-1234",
                "apikey": {"env": "ROTATOR_TEST_APIKEY"},
            },
            "registry": {"server": "us.icr.io", "images": ["us.icr.io/team/app:latest"]},
            "schedule": {"interval": "7d"},
            "max_age": "30d",
            "grace_period": "1h",
            "targets": {"kubernetes": {"secret_name": "icr-pull", "namespaces": {"names": ["team-a"]}}},
        }
    ]
}


def load(tmp_path: Path, doc: Any) -> settings.Settings:
    path = tmp_path / "rotator.yaml"
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return settings.load(path, base_dir=tmp_path)


def with_change(path: str, value: Any) -> dict[str, Any]:
    """GOOD with one field (dotted path, [i] for list items) set, or removed when value is DELETE."""
    doc = copy.deepcopy(GOOD)
    node: Any = doc
    parts = path.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    """A minimal valid config loads, durations parsed and defaults filled in."""
    cfg = load(tmp_path, GOOD)
    cred = cfg.credential("icr-pull")
    assert cred.schedule.interval == dt.timedelta(days=7)
    assert cred.max_age == dt.timedelta(days=30)
    assert cred.registry.username == "iamapikey"
    assert cred.registry.recheck_interval == dt.timedelta(seconds=30)
    assert cred.delete_after == dt.timedelta(days=1)
    assert cred.schedule.retry_backoff == dt.timedelta(minutes=1)
    assert cred.schedule.retry_backoff_max == dt.timedelta(hours=1)
    assert cfg.kubernetes.concurrency == 16


def test_shipped_configs_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every config in config/ is valid (a RegistryCredential there: its spec)."""
    monkeypatch.setenv("ROTATOR_ADMIN_APIKEY", "x" * 44)
    for path in sorted((REPO / "config").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") == "RegistryCredential":
            settings.credential_from_spec(doc["metadata"]["name"], doc["spec"], source=str(path))
        else:
            settings.load(path, base_dir=REPO)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(with_change("credentials[0].nmae", "x"), "credentials[0].nmae: unknown field", id="unknown-field"),
        pytest.param(
            with_change("credentials[0].name", "Bad_Name"),
            "credentials[0].name: 'Bad_Name' is not a valid Kubernetes name",
            id="bad-name",
        ),
        pytest.param(
            with_change("credentials[0].name", "a" * 254), "is not a valid Kubernetes name", id="name-too-long"
        ),
        pytest.param(
            with_change("credentials[0].max_age", "30 days"),
            "credentials[0].max_age: '30 days' is not a duration; write a number and a unit",
            id="bad-duration",
        ),
        pytest.param(
            with_change("credentials[0].max_age", 30), "credentials[0].max_age: 30 has no unit", id="duration-no-unit"
        ),
        pytest.param(
            with_change("credentials[0].schedule", {"interval": "1d", "cron": "0 3 * * *"}),
            "credentials[0].schedule: give interval or cron, not both",
            id="interval-and-cron",
        ),
        pytest.param(
            with_change("credentials[0].schedule", {"cron": "61 * * * *"}),
            "credentials[0].schedule.cron: '61 * * * *' is not a 5-field cron expression",
            id="bad-cron",
        ),
        pytest.param(
            with_change(
                "credentials[0].schedule", {"interval": "1d", "retry_backoff": "10m", "retry_backoff_max": "5m"}
            ),
            "credentials[0].schedule.retry_backoff_max: must not be shorter than retry_backoff",
            id="backoff-max-below-backoff",
        ),
        pytest.param(
            with_change("credentials[0].schedule", {"interval": "1d", "retry_backoff": "0s"}),
            "credentials[0].schedule.retry_backoff:",
            id="zero-backoff",
        ),
        pytest.param(
            with_change("credentials[0].schedule", {"interval": "60d"}),
            "schedule.interval: is longer than max_age",
            id="interval-over-max-age",
        ),
        pytest.param(
            with_change("credentials[0].provider.apikey", "s3cr3t-inline-key"),
            "credentials[0].provider.apikey: expected a mapping",
            id="inline-key",
        ),
        pytest.param(
            with_change("credentials[0].provider.apikey", {"file": "/x", "env": "Y"}),
            "give exactly one of file",
            id="key-file-and-env",
        ),
        pytest.param(
            with_change("credentials[0].provider.kind", "aws"),
            "credentials[0].provider.kind: 'aws' is not a known provider",
            id="unknown-provider",
        ),
        pytest.param(
            with_change("credentials[0].provider.service_id", "1234"),
            "credentials[0].provider.service_id: '1234' is not a service ID",
            id="bad-service-id",
        ),
        pytest.param(
            with_change("credentials[0].registry.images", []),
            "credentials[0].registry.images: is empty",
            id="no-images",
        ),
        pytest.param(
            with_change("credentials[0].registry.images", ["app"]),
            "is not an image reference",
            id="bad-image",
        ),
        pytest.param(
            with_change("credentials[0].targets.kubernetes.namespaces", {"names": ["a"], "all": True}),
            "choose namespaces by exactly one of names, selector or all",
            id="two-namespace-selections",
        ),
        pytest.param(
            with_change("credentials[0].targets.kubernetes.namespaces", {"names": ["Team_A"]}),
            "(item 0: 'Team_A') is not a valid namespace name",
            id="bad-namespace",
        ),
        pytest.param(
            with_change("credentials[0].registry.recheck_interval", "0s"),
            "credentials[0].registry.recheck_interval: '0s' must be longer than zero",
            id="zero-recheck-interval",
        ),
        pytest.param(
            with_change("credentials[0].registry", DELETE), "credentials[0].registry: is required", id="no-registry"
        ),
        pytest.param({"credentials": []}, "credentials: is required", id="no-credentials"),
        pytest.param("credentials: [\n  - name: x\n   bad", "is not valid YAML at line", id="bad-yaml"),
        pytest.param(
            {**GOOD, "kubernetes": {"concurrency": 0}},
            "kubernetes.concurrency: 0 is not a whole number from 1 to 256",
            id="bad-concurrency",
        ),
        pytest.param(
            with_change("credentials[0].registry.server", "${ROTATOR_SURELY_UNSET_VAR}"),
            "environment variable ROTATOR_SURELY_UNSET_VAR is not set",
            id="unset-env",
        ),
        pytest.param(
            {**GOOD, "server": {"listen": "8080"}},
            "server.listen: '8080' is not host:port",
            id="server-listen-no-host",
        ),
        pytest.param(
            {**GOOD, "server": {"listen": "::1:8080"}},
            "server.listen: '::1:8080' is not host:port; write an IPv6 address in brackets",
            id="server-listen-bare-ipv6",
        ),
        pytest.param(
            {**GOOD, "server": {"listen": "0.0.0.0:70000"}},
            "server.listen: '0.0.0.0:70000' is not host:port",
            id="server-listen-port-range",
        ),
        pytest.param(
            {**GOOD, "server": {"auth": {"mode": "basic"}}},
            "server.auth.mode: 'basic' is not one of token-file, kubernetes, disabled",
            id="server-auth-unknown-mode",
        ),
        pytest.param(
            {**GOOD, "server": {"auth": {"mode": "token-file"}}},
            "server.auth.file: is required with mode token-file",
            id="server-token-file-missing",
        ),
        pytest.param(
            {**GOOD, "server": {"auth": {"mode": "kubernetes", "file": "tokens"}}},
            "server.auth.file: is only used with mode token-file",
            id="server-file-with-kubernetes",
        ),
        pytest.param(
            {**GOOD, "server": {"auth": {"mode": "kubernetes", "cache_ttl": 10}}},
            "server.auth.cache_ttl: 10 has no unit",
            id="server-cache-ttl-no-unit",
        ),
        pytest.param(
            {**GOOD, "server": {"rate_limit": {"per_minute": 0}}},
            "server.rate_limit.per_minute: 0 is not a number above 0",
            id="server-rate-zero",
        ),
        pytest.param(
            {**GOOD, "server": {"rate_limit": {"burst": 0}}},
            "server.rate_limit.burst: 0 is not a whole number from 1 to 10000",
            id="server-burst-zero",
        ),
        pytest.param(
            {**GOOD, "server": {"metrics_public": "yes"}},
            "server.metrics_public: 'yes' is not true or false",
            id="server-metrics-public-not-bool",
        ),
        pytest.param(
            {**GOOD, "server": {"idempotency_ttl": "0s"}},
            "server.idempotency_ttl: '0s' must be longer than zero",
            id="server-idempotency-ttl-zero",
        ),
        pytest.param(
            {**GOOD, "server": {"lisen": "0.0.0.0:8080"}},
            "server.lisen: unknown field",
            id="server-unknown-field",
        ),
    ],
)
def test_bad_config_names_file_field_and_fix(tmp_path: Path, doc: Any, expected: str) -> None:
    """Each bad config fails with a message naming the file and the precise problem."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, doc)
    message = str(info.value)
    assert str(tmp_path / "rotator.yaml") in message
    assert expected in message


def test_server_section_defaults_and_values(tmp_path: Path) -> None:
    """Without a server section the API listens on 0.0.0.0:8080 with auth disabled; given values load."""
    cfg = load(tmp_path, GOOD)
    assert (cfg.server.host, cfg.server.port, cfg.server.auth.mode) == ("0.0.0.0", 8080, "disabled")
    doc = {
        **GOOD,
        "server": {
            "listen": "[::1]:0",
            "metrics_public": False,
            "auth": {"mode": "token-file", "file": "api-tokens"},
            "rate_limit": {"per_minute": 2.5, "burst": 3},
            "idempotency_ttl": "1h",
        },
    }
    server = load(tmp_path, doc).server
    assert (server.host, server.port, server.metrics_public) == ("::1", 0, False)
    assert server.auth.file == tmp_path / "api-tokens"
    assert (server.rate_per_minute, server.rate_burst, server.idempotency_ttl) == (2.5, 3, dt.timedelta(hours=1))


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    """Two independent mistakes are both reported, not only the first."""
    doc = with_change("credentials[0].max_age", "soon")
    doc["credentials"][0]["grace_period"] = "later"
    with pytest.raises(ConfigError) as info:
        load(tmp_path, doc)
    assert "max_age" in str(info.value) and "grace_period" in str(info.value)


def test_redacted_view_shows_where_the_key_is_not_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The logged config names the key's source and never contains its value."""
    monkeypatch.setenv("ROTATOR_TEST_APIKEY", "very-secret-admin-key-value")
    cfg = load(tmp_path, GOOD)
    assert cfg.credential("icr-pull").provider.apikey.load().reveal() == "very-secret-admin-key-value"
    text = repr(cfg.redacted())
    assert "env:ROTATOR_TEST_APIKEY" in text
    assert "very-secret-admin-key-value" not in text


def test_missing_key_file_says_which_field_and_path(tmp_path: Path) -> None:
    """A key file that does not exist is reported with the field and the path."""
    cfg = load(tmp_path, with_change("credentials[0].provider.apikey", {"file": "nope/apikey"}))
    with pytest.raises(ConfigError, match=r"credentials\[0\]\.provider\.apikey: cannot read .*nope/apikey"):
        cfg.credential("icr-pull").provider.apikey.load()


def test_an_inline_key_is_refused_without_repeating_it(tmp_path: Path) -> None:
    """A key written inline is rejected, and the error message does not contain the key."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, with_change("credentials[0].provider.apikey", "AbCdEf0123456789-inline-key"))
    assert "credentials[0].provider.apikey" in str(info.value)
    assert "AbCdEf0123456789-inline-key" not in str(info.value)


def test_a_bad_duration_is_quoted_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, with_change("credentials[0].grace_period", "ten minutes"))
    assert str(info.value).count("ten minutes") == 1


def test_unset_and_empty_key_variables_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key's environment variable that is not set is reported as not set (variable and field named), an
    empty one as empty."""
    apikey = load(tmp_path, GOOD).credential("icr-pull").provider.apikey
    monkeypatch.delenv("ROTATOR_TEST_APIKEY", raising=False)
    with pytest.raises(ConfigError) as unset:
        apikey.load()
    assert "credentials[0].provider.apikey: environment variable ROTATOR_TEST_APIKEY is not set" in str(unset.value)
    monkeypatch.setenv("ROTATOR_TEST_APIKEY", "  ")
    with pytest.raises(ConfigError) as empty:
        apikey.load()
    assert "credentials[0].provider.apikey: environment variable ROTATOR_TEST_APIKEY is empty" in str(empty.value)


def test_logged_config_names_each_key_source(tmp_path: Path) -> None:
    """The config.loaded log line shows a secret source as file:PATH or env:NAME (as documented), through
    the log redaction that hides the values of fields named apikey or password."""
    from rotation_env import run_rotator

    doc = copy.deepcopy(GOOD)
    doc["credentials"][0]["provider"]["apikey"] = {"file": "keys/apikey"}
    doc["credentials"].append(
        {
            **copy.deepcopy(GOOD["credentials"][0]),
            "name": "hub-pull",
            "provider": {"kind": "dockerhub", "username": "rotatorbot", "password": {"env": "HUB_PASSWORD"}},
            "registry": {"server": "docker.io", "images": ["docker.io/rotatorbot/app:1"]},
        }
    )
    doc["state"] = {"path": str(tmp_path / "state")}
    (tmp_path / "rotator.yaml").write_text(yaml.safe_dump(doc))
    result = run_rotator("status", "-c", str(tmp_path / "rotator.yaml"))
    assert result.returncode == 0, result.stderr
    line = next(json.loads(x) for x in result.stderr.splitlines() if '"config.loaded"' in x)
    iam, hub = line["config"]["credentials"]
    assert iam["provider"]["apikey"] == f"file:{Path.cwd() / 'keys' / 'apikey'}"
    assert hub["provider"]["password"] == "env:HUB_PASSWORD"


# What `rotator check` may use while refusing an alias bomb: the interpreter, its imports and threads, with
# room to spare; the old code passed it within seconds (600 MB in 15 s).
BOMB_MEMORY = 768 * 1024 * 1024
BOMB_TIMEOUT_S = 60  # a loaded 2-core machine; the refusal itself takes well under a second


def test_yaml_alias_bomb_is_refused_fast_with_little_memory(tmp_path: Path) -> None:
    """A billion-laughs config (9 levels of 9 aliases: 387 million strings once expanded) makes `rotator check`
    exit 2 naming the file, within a bounded time and address space, instead of expanding it."""
    import resource
    import subprocess
    import sys

    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "${HOME}"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    lines.append("credentials: *i")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (BOMB_MEMORY, BOMB_MEMORY))

    result = subprocess.run(
        [sys.executable, "-m", "rotator", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=BOMB_TIMEOUT_S,
        preexec_fn=limit_memory,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{path}: the document expands to more than 100000 values" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_self_containing_anchor_is_refused(tmp_path: Path) -> None:
    """An anchor that contains itself (an endless structure) is refused, not a RecursionError."""
    with pytest.raises(ConfigError, match="expands to more than 64 levels"):
        load(tmp_path, "credentials: &loop [*loop]\n")


CE = {
    "endpoint": "https://api.us-south.codeengine.cloud.ibm.com/v2",
    "project_id": "4a6c8e0f-1b3d-4f5a-8c7e-9d0b2a4c6e8f",
}
HUB_PROVIDER = {"kind": "dockerhub", "username": "rotatorbot", "password": {"env": "HUB_PASSWORD"}}


def with_endpoint(where: str, url: str, *, allow: bool = False) -> dict[str, Any]:
    """GOOD with one endpoint set to ``url`` (and allow_insecure_http on the same node)."""
    doc = copy.deepcopy(GOOD)
    cred = doc["credentials"][0]
    flag = {"allow_insecure_http": True} if allow else {}
    if where == "iam":
        cred["provider"].update(endpoint=url, **flag)
    elif where == "dockerhub":
        cred["provider"] = {**HUB_PROVIDER, "endpoint": url, **flag}
        cred["registry"] = {"server": "docker.io", "images": ["docker.io/rotatorbot/app:1"]}
    elif where == "registry":
        cred["registry"].update(endpoint=url, **flag)
    else:
        cred["targets"]["codeengine"] = {**CE, "secret_name": "icr", where: url, **flag}
    return doc


ENDPOINTS = {
    "iam": "credentials[0].provider.endpoint",
    "dockerhub": "credentials[0].provider.endpoint",
    "registry": "credentials[0].registry.endpoint",
    "iam_endpoint": "credentials[0].targets.codeengine.iam_endpoint",
}


@pytest.mark.parametrize("where", list(ENDPOINTS))
def test_plain_http_to_another_host_is_refused_unless_allowed(tmp_path: Path, where: str) -> None:
    """Keys and tokens never go over plain http to a host that is not loopback, unless that endpoint says
    allow_insecure_http: true (then `rotator check` lists it). User-info does not make a host loopback."""
    for url in ("http://iam.lab.example:8080", "http://127.0.0.1:80@evil.example/", "http://10.0.0.5"):
        with pytest.raises(ConfigError) as info:
            load(tmp_path, with_endpoint(where, url))
        field = ENDPOINTS[where]
        assert f"{field}: '{url}' is plain http to a host that is not loopback" in str(info.value)
        assert f"{field.rsplit('.', 1)[0]}.allow_insecure_http: true" in str(info.value)
        allowed = load(tmp_path, with_endpoint(where, url, allow=True))
        assert [w.split(":")[0] for w in allowed.insecure_endpoints()] == [field.rsplit(".", 1)[0]]
    for url in ("http://127.0.0.1:5000", "http://[::1]:5000", "http://localhost:5000", "https://iam.lab.example"):
        assert load(tmp_path, with_endpoint(where, url)).insecure_endpoints() == []


def test_plain_http_code_engine_project_endpoint_is_refused(tmp_path: Path) -> None:
    doc = with_endpoint("iam_endpoint", "https://iam.cloud.ibm.com")
    doc["credentials"][0]["targets"]["codeengine"]["endpoint"] = "http://ce.lab.example/v2"
    with pytest.raises(ConfigError, match=r"targets\.codeengine\.endpoint: 'http://ce.lab.example/v2' is plain http"):
        load(tmp_path, doc)


FLEET = [
    {"name": "dev", "kubeconfig": "spokes/dev", "context": "dev", "namespaces": {"all": True}},
    {
        "name": "prod",
        "kubeconfig": "spokes/prod",
        "secret_name": "prod-pull",
        "namespaces": {"names": ["team-a"]},
        "service_accounts": ["default"],
    },
]


def test_kubernetes_targets_as_a_list_of_clusters(tmp_path: Path) -> None:
    doc = with_change("credentials.0.targets.kubernetes", FLEET)
    doc["credentials"][0]["unreachable_timeout"] = "2h"
    cred = load(tmp_path, doc).credentials[0]
    assert cred.kubernetes is None
    dev, prod = cred.clusters
    assert cred.kubernetes_targets == (dev, prod)
    assert dev.cluster is not None and dev.cluster.name == "dev" and dev.cluster.context == "dev"
    assert dev.cluster.kubeconfig == tmp_path / "spokes/dev"
    assert dev.secret_name == "icr-pull"  # the credential's name
    assert prod.secret_name == "prod-pull" and prod.service_accounts == ("default",)
    assert cred.unreachable_timeout == dt.timedelta(hours=2) and cred.revoke_despite_unreachable is False


def test_the_single_mapping_form_is_unchanged(tmp_path: Path) -> None:
    cred = load(tmp_path, GOOD).credentials[0]
    assert cred.kubernetes is not None and cred.kubernetes.cluster is None and cred.clusters == ()
    assert cred.unreachable_timeout == dt.timedelta(hours=24)


@pytest.mark.parametrize(
    ("clusters", "field", "words"),
    [
        ([{"kubeconfig": "k", "namespaces": {"all": True}}], "targets.kubernetes[0].name", "is required"),
        ([{"name": "dev", "namespaces": {"all": True}}], "targets.kubernetes[0].kubeconfig", "in_cluster: true"),
        ([{**FLEET[0]}, {**FLEET[0]}], "targets.kubernetes[1].name", "names two clusters"),
        ([{**FLEET[0], "in_cluster": True}], "targets.kubernetes[0].in_cluster", "must not be set"),
        ([{**FLEET[0], "namespace": "x"}], "targets.kubernetes[0].namespace", "unknown field"),
        ([{"name": "dev", "kubeconfig": "k"}], "targets.kubernetes[0].namespaces", "is required"),
        ([], "targets.kubernetes", "lists no cluster"),
    ],
)
def test_bad_clusters_name_the_field(tmp_path: Path, clusters: Any, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, with_change("credentials.0.targets.kubernetes", clusters))
    assert f"credentials[0].{field}: " in str(err.value) and words in str(err.value)


def test_credentials_from_cluster_needs_no_credentials_and_refuses_some(tmp_path: Path) -> None:
    kube = {"kubeconfig": str(tmp_path / "kubeconfig")}
    cluster = settings.parse(
        {"credentials_from": "cluster", "kubernetes": kube}, source=Path("c.yaml"), base_dir=tmp_path
    )
    assert cluster.credentials == () and cluster.credentials_from == "cluster"
    assert settings.parse(copy.deepcopy(GOOD), source=Path("c.yaml"), base_dir=tmp_path).credentials_from == "file"
    with pytest.raises(ConfigError, match=r"credentials: must be empty with credentials_from: cluster"):
        settings.parse({**copy.deepcopy(GOOD), "credentials_from": "cluster"}, source=Path("c.yaml"), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"c.yaml: credentials_from: .*'files'"):
        settings.parse({**copy.deepcopy(GOOD), "credentials_from": "files"}, source=Path("c.yaml"), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"credentials: is required"):
        settings.parse({"credentials_from": "both"}, source=Path("c.yaml"), base_dir=tmp_path)
