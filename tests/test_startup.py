"""``rotator run`` checks every input before it starts anything, and exits cleanly.

Each bad input (API token file, listen port, kubeconfig, API server) makes ``rotator run`` exit 2
(configuration) or 1 (runtime failure: an API server that does not answer) with one line on stderr
naming the config field, no traceback, and not one request to IAM nor any but a read to Kubernetes:
no key minted, no secret written. Every case runs several times: before these checks, threads
inside ssl calls at interpreter shutdown made about one run in three abort with SIGABRT (134).
``rotator check`` reports the same inputs, and a daemon whose API server goes away mid-run counts
transient pass errors instead of crashing its worker.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from daemon_env import Daemon
from polling import wait_for
from rotation_env import run_rotator, write_config
from tcpproxy import TcpProxy

from rotator.adapters.state import FileStateStore
from rotator.sandbox.control import SandboxProcess

RUNS = 5  # per bad input: SIGABRT was seen in about one run in three
TOKEN = "operator-token-0123456789"
CORRUPT = '{"current": '  # a journal cut short


def token_server(tmp_path: Path, text: str | None, *, listen: str = "127.0.0.1:0") -> dict[str, Any]:
    """``server`` config with a token file holding ``text`` (None: the file does not exist)."""
    path = tmp_path / "api-tokens"
    if text is not None:
        path.write_text(text)
        path.chmod(0o600)
    return {"listen": listen, "auth": {"mode": "token-file", "file": str(path)}}


def kubeconfig(tmp_path: Path, sbx: SandboxProcess, *, server: str | None = None, ca_file: str | None = None) -> str:
    """A copy of the sandbox's kubeconfig (TLS) with another server URL or certificate authority (a new file
    each time)."""
    import base64

    doc = yaml.safe_load(Path(sbx.endpoints["kubeconfig"]).read_text())
    cluster = doc["clusters"][0]["cluster"]
    if server is not None:
        cluster["server"] = server
    if ca_file is not None:
        cluster["certificate-authority-data"] = base64.b64encode(Path(ca_file).read_bytes()).decode()
    path = tmp_path / f"kubeconfig-{len(list(tmp_path.glob('kubeconfig-*')))}"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def bad_run_config(case: str, tmp_path: Path, sbx: SandboxProcess, busy: socket.socket) -> Path:
    tokens = {
        "short-token": "short-token alice rotate\n",
        "bad-role": f"{TOKEN} alice admin\n",
        "missing-token-file": None,
    }
    server = token_server(tmp_path, tokens.get(case, f"{TOKEN} alice rotate\n"))
    top: dict[str, Any] = {"server": server}
    if case == "busy-port":
        server["listen"] = f"127.0.0.1:{busy.getsockname()[1]}"
    elif case == "missing-kubeconfig":
        top["kubernetes"] = {"kubeconfig": str(tmp_path / "no-such-kubeconfig")}
    elif case == "unreachable-api-server":
        top["kubernetes"] = {"kubeconfig": kubeconfig(tmp_path, sbx, server=f"https://127.0.0.1:{closed_port()}")}
    elif case == "untrusted-api-server":
        top["kubernetes"] = {"kubeconfig": kubeconfig(tmp_path, sbx, ca_file=sbx.endpoints["registry_token_cert"])}
    elif case == "unloadable-tls":  # a certificate whose key is missing
        server["tls"] = {"cert_file": sbx.endpoints["registry_token_cert"], "key_file": str(tmp_path / "no-key")}
    elif case == "corrupt-state":
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "icr-pull.journal.json").write_text(CORRUPT)
    return write_config(tmp_path, sbx, top=top)


# case -> exit code, what the one stderr line must say
BAD_INPUTS = {
    "short-token": (2, ["server.auth.file", "line 1", "shorter than 16 characters"]),
    "bad-role": (2, ["server.auth.file", "line 1", "'admin' is not one of read, rotate"]),
    "missing-token-file": (2, ["server.auth.file", "does not exist"]),
    "busy-port": (2, ["server.listen", "already in use"]),
    "missing-kubeconfig": (2, ["kubernetes.kubeconfig", "does not exist"]),
    "unreachable-api-server": (1, ["kubernetes.kubeconfig", "connection refused"]),
    "untrusted-api-server": (2, ["kubernetes.kubeconfig", "TLS certificate not trusted", "certificate authority"]),
    "corrupt-state": (1, ["icr-pull.journal.json is corrupt", "move it aside"]),
    "unloadable-tls": (2, ["server.tls", "cannot load cert_file", "key_file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_stops_run_before_anything_starts(case: str, sandbox: SandboxProcess, tmp_path: Path) -> None:
    """Exit 2 (or 1 for an API server that does not answer, a corrupt state store) with one stderr line
    naming the field or file, every time; no traceback; nothing sent to IAM and only reads to Kubernetes."""
    code, words = BAD_INPUTS[case]
    with socket.create_server(("127.0.0.1", 0)) as busy:  # a port in use by someone else
        config = bad_run_config(case, tmp_path, sandbox, busy)
        for _ in range(RUNS):
            result = run_rotator("run", "-c", str(config), timeout=60)
            assert result.returncode == code, result.stderr[-2000:]
            text = [line for line in result.stderr.splitlines() if not line.startswith("{")]
            assert len(text) == 1, result.stderr[-2000:]
            assert text[0].startswith("rotator") and all(w in text[0] for w in words), text[0]
            output = result.stdout + result.stderr
            assert "Traceback" not in output and '"daemon.started"' not in output
    assert sandbox.requests("iam") == [], "rotator talked to IAM before its inputs were checked"
    writes = [(r["method"], r["path"]) for r in sandbox.requests("kubernetes") if r["method"] != "GET"]
    assert writes == [], f"rotator wrote to Kubernetes before its inputs were checked: {writes}"
    if case == "corrupt-state":
        assert (tmp_path / "state" / "icr-pull.journal.json").read_text() == CORRUPT  # never overwritten
    else:
        assert not FileStateStore(tmp_path / "state").load("icr-pull").history


def test_check_reports_the_token_file_and_the_api_server(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """``rotator check``: the token file (count, mode warning, a bad line by number) and the API server
    (answers, missing kubeconfig, refused, untrusted certificate), one line each, no traceback."""
    good = token_server(tmp_path, f"{TOKEN} alice rotate\n")
    (tmp_path / "api-tokens").chmod(0o644)
    result = run_rotator("check", "-c", str(write_config(tmp_path, sandbox, top={"server": good})))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"ok   server.auth.file {tmp_path / 'api-tokens'}: 1 token(s)" in lines
    assert any(
        line.startswith("WARN server.auth.file:") and "mode 0644" in line and "chmod 600" in line for line in lines
    ), lines
    assert any(line.startswith("ok   kubernetes API server: https://127.0.0.1:") for line in lines), lines

    bad_tokens = {"server": token_server(tmp_path, f"{TOKEN} alice rotate\nshort bob read\n")}
    result = run_rotator("check", "-c", str(write_config(tmp_path, sandbox, top=bad_tokens)))
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [
        "FAIL server.auth.file: "
        f"{tmp_path / 'api-tokens'}: line 2: the token is shorter than 16 characters; each line is "
        "'<token> <principal> <role>' with a token of at least 16 characters and a role of read, rotate"
    ]

    for kube, words in [
        ({"kubeconfig": str(tmp_path / "nowhere")}, ["kubernetes.kubeconfig", "does not exist"]),
        (
            {"kubeconfig": kubeconfig(tmp_path, sandbox, server=f"https://127.0.0.1:{closed_port()}")},
            ["connection refused", "check that it is up and that kubernetes.kubeconfig"],
        ),
        (
            {"kubeconfig": kubeconfig(tmp_path, sandbox, ca_file=sandbox.endpoints["registry_token_cert"])},
            ["TLS certificate not trusted", "check the certificate authority in kubernetes.kubeconfig"],
        ),
    ]:
        result = run_rotator("check", "-c", str(write_config(tmp_path, sandbox, top={"kubernetes": kube})))
        assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr[-2000:]
        api = [line for line in result.stdout.splitlines() if "kubernetes API server" in line]
        assert api[0].startswith("FAIL kubernetes API server: ") and all(w in api[0] for w in words), api


def test_api_server_gone_mid_run_is_a_transient_pass_error(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """The API server becomes unreachable after start-up: a requested rotation's pass fails as transient
    (logged, counted in rotator_pass_errors_total{reason="transient"}, retried), never worker.crashed;
    SIGTERM still ends the daemon with 0."""
    from monitoring_env import sample, scrape

    tls_port = int(sandbox.endpoints["kubernetes_tls"].rsplit(":", 1)[1])
    proxy = TcpProxy(tls_port)
    try:
        top = {
            "server": token_server(tmp_path, f"{TOKEN} alice rotate\n"),
            "kubernetes": {"kubeconfig": kubeconfig(tmp_path, sandbox, server=f"https://127.0.0.1:{proxy.port}")},
            "daemon": {"resync": "1h", "shutdown_grace": "10s"},
        }
        schedule = {"interval": "1h", "retry_backoff": "1s", "retry_backoff_max": "2s"}
        daemon = Daemon(write_config(tmp_path, sandbox, top=top, schedule=schedule))
        try:
            base = daemon.api()
            store = FileStateStore(tmp_path / "state")
            wait_for(lambda: store.load("icr-pull").last_result is not None, "the first rotation", timeout=60)
            proxy.close()  # the API server goes away: open connections closed, new ones refused

            headers = {"Authorization": f"Bearer {TOKEN}"}
            response = httpx.post(f"{base}/v1/credentials/icr-pull/rotate", headers=headers, timeout=10)
            assert response.status_code == 202, response.text

            def transient_errors() -> float:
                return sample(scrape(base), "rotator_pass_errors_total", credential="icr-pull", reason="transient")

            wait_for(lambda: transient_errors() >= 2, "two transient pass errors (the request and a retry)", 60)
            failed = [e for e in daemon.events() if e.get("event") == "worker.failed"]
            assert failed and all(e["reason"] == "transient" for e in failed), failed
            assert all("Kubernetes API server" in e["error"] and "kubernetes.kubeconfig" in e["error"] for e in failed)
            assert not daemon.logged("worker.crashed")
            assert "Traceback" not in daemon.log_path.read_text(errors="replace")
        finally:
            assert daemon.stop() == 0
    finally:
        proxy.close()
