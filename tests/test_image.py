"""The container image: `make image` builds deploy/Containerfile (FROM a Python base bootstrapped from
Debian packages, .ci/image-test-base), and the image is run the way a cluster runs it: as user 10001,
config and secrets mounted read-only, against a sandbox on 127.0.0.1 (host network).

`podman run` is refused on machines like CI's (setrlimit), so the image runs with `buildah from` +
`buildah run --isolation chroot`. The first run bootstraps the base (cached under /var/lib/containers);
later runs reuse it and the build's cached layers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from monitoring_env import REPO
from polling import wait_for
from rotation_env import CRED, key_id_of, pulls, stored_password, write_config

from rotator import __version__
from rotator.sandbox.control import SandboxProcess

pytestmark = pytest.mark.real

TEST_BASE = "localhost/rotator-test-base:3.11-bookworm"
IMAGE = "localhost/rotator:test"
USER = "10001:10001"
# The first run bootstraps the base (~40 s idle, ~3 min on a loaded 2-core machine) and builds (~1.5 min).
BUILD_TIMEOUT_S = 900.0
RUN_TIMEOUT_S = 120.0  # one command in the image: interpreter start, a rotation against the sandbox
RUNTIME_LAYER_BUDGET = 150 * 10**6  # bytes: rotator and its dependencies (issue 15)
SHUTDOWN_GRACE_S = 10  # daemon.shutdown_grace in the test config: `rotator run` must exit 0 within it
# Where deploy/manifests/deployment.yaml mounts the config and the secrets. (/var/run/secrets is named by
# its real path, /run: buildah 1.28 resolves a symlink in a mount's destination against the host's root.)
CONFIG_DIR, SECRETS_DIR = "/etc/rotator", "/run/secrets/rotator"
LOG_DIR = Path(os.environ.get("ROTATOR_TEST_LOG_DIR", "/tmp"))  # the suite's log-leak scan reads it


def _tools_or_fail() -> None:
    """In CI a missing tool fails the test (make test installs them); elsewhere it is a skip with the fix."""
    missing = [tool for tool in ("podman", "buildah", "debootstrap") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (debootstrap, buildah)")
    if not missing:
        return
    message = f"the image test needs {', '.join(missing)}: run `make system-deps` as root"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(args: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}"
    return result


def _git_head() -> str:
    return _run(["git", "-C", str(REPO), "rev-parse", "HEAD"], 30, "git rev-parse").stdout.strip()


@pytest.fixture(scope="module")
def sbom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Builds the image (and the base, when missing); returns the SBOM `make image` wrote out."""
    _tools_or_fail()
    _run(["bash", str(REPO / ".ci" / "image-test-base"), TEST_BASE], BUILD_TIMEOUT_S, "bootstrapping the base")
    path = tmp_path_factory.mktemp("dist") / "sbom.cdx.json"
    make = ["make", "-C", str(REPO), "image", f"PYTHON_IMAGE={TEST_BASE}", f"IMAGE={IMAGE}", f"SBOM={path}"]
    _run(make, BUILD_TIMEOUT_S, "make image")
    document: dict[str, Any] = json.loads(path.read_text())
    return document


@pytest.fixture
def container(sbom: dict[str, Any]) -> Iterator[str]:
    """A fresh working container of the image; removed afterwards."""
    name = f"rotator-test-{uuid.uuid4().hex[:8]}"
    _run(["buildah", "from", "--name", name, IMAGE], 120, "buildah from")
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=120, check=False)


def in_image(container: str, *command: str, volumes: tuple[str, ...] = ()) -> list[str]:
    """The `buildah run` command line for ``command`` in ``container``: user 10001, host network."""
    args = ["buildah", "run", "--isolation", "chroot", "--user", USER, "--network", "host"]
    args += ["--env", "ROTATOR_LOG_FORMAT=json"]
    for volume in volumes:
        args += ["--volume", volume]
    return [*args, container, "--", *command]


def run_in_image(container: str, *command: str, volumes: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        in_image(container, *command, volumes=volumes),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    (LOG_DIR / f"image-{uuid.uuid4().hex[:12]}.log").write_text(
        f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}"
    )
    return result


# -- what the image is -------------------------------------------------------------------------------


def _lock_pins() -> dict[str, str]:
    text = (REPO / "deploy" / "requirements.lock").read_text()
    return {name: version for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.MULTILINE)}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_labels_layer_budget_and_sbom(sbom: dict[str, Any]) -> None:
    """OCI labels name the source, version, revision (this checkout's HEAD) and licence; the layer of
    rotator and its dependencies stays under 150 MB; the SBOM is CycloneDX JSON listing exactly the
    locked runtime dependencies at their locked versions (nothing from the test extras or build tools)."""
    [info] = json.loads(_run(["podman", "image", "inspect", IMAGE], 60, "podman image inspect").stdout)
    labels = info["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] == _git_head()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert info["Config"]["User"] == USER
    assert info["Config"]["Entrypoint"] == ["rotator"]

    def layer_bytes(image: str) -> int:
        history = json.loads(_run(["podman", "history", "--format", "json", image], 60, "podman history").stdout)
        return sum(int(entry["size"]) for entry in history)

    runtime_layer = layer_bytes(IMAGE) - layer_bytes(TEST_BASE)
    assert 10 * 10**6 < runtime_layer < RUNTIME_LAYER_BUDGET, f"{runtime_layer / 1e6:.1f} MB over the base"

    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["name"] == "rotator"
    assert sbom["metadata"]["component"]["version"] == __version__
    listed = {_canonical(c["name"]): c["version"] for c in sbom["components"]}
    assert listed == {_canonical(name): version for name, version in _lock_pins().items()}
    assert all(c["purl"].startswith("pkg:pypi/") for c in sbom["components"])


# A script run by the image's Python: what can be imported and found there.
_PROBE = """
import importlib.metadata, importlib.util, json, os, shutil
print(json.dumps({
    "uid": os.getuid(),
    "modules": {m: importlib.util.find_spec(m) is not None
                for m in ("rotator", "rotator.sandbox", "rotator.demo", "pip", "setuptools", "pytest",
                          "cryptography", "hypothesis", "kubernetes.aio")},
    "programs": sorted(p for p in ("pip", "pip3", "gcc", "cc", "make") if shutil.which(p)),
    "sandbox_files": [str(f) for f in importlib.metadata.files("rotator") if "sandbox" in str(f)],
    "revision_file": open("/opt/rotator/REVISION").read().strip(),
    "sbom_components": len(json.load(open("/opt/rotator/sbom.cdx.json"))["components"]),
}))
"""


def test_image_holds_rotator_without_sandbox_pip_compilers_or_test_extras(sbom: dict[str, Any], container: str) -> None:
    """As user 10001: `rotator --version` shows the version and the revision baked in at build time;
    the sandbox, the demo, pip, setuptools, compilers and test extras are absent, so `rotator sandbox`
    explains itself and exits 2."""
    version = run_in_image(container, "rotator", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"rotator {__version__} (revision {_git_head()})"

    probe = run_in_image(container, "python", "-c", _PROBE)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["uid"] == 10001
    assert found["modules"] == {
        "rotator": True,
        "rotator.sandbox": False,
        "rotator.demo": False,
        "pip": False,
        "setuptools": False,
        "pytest": False,
        "cryptography": False,
        "hypothesis": False,
        "kubernetes.aio": False,
    }
    assert found["programs"] == []
    assert found["sandbox_files"] == []
    assert found["revision_file"] == _git_head()
    assert found["sbom_components"] == len(sbom["components"])

    imported = run_in_image(container, "python", "-c", "import rotator.sandbox")
    assert imported.returncode == 1 and "No module named 'rotator.sandbox'" in imported.stderr
    sandbox = run_in_image(container, "rotator", "sandbox", "--port-base", "0")
    assert sandbox.returncode == 2
    assert "not part of this installation" in sandbox.stderr and "make venv" in sandbox.stderr


# -- running it --------------------------------------------------------------------------------------


def _mounts(sandbox: SandboxProcess, tmp_path: Path) -> tuple[str, ...]:
    """The config and the sandbox's client files, readable by user 10001 only, mounted read-only where
    the Deployment mounts its ConfigMap and Secret."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("admin-apikey", "kubeconfig"):
        shutil.copyfile(Path(sandbox.endpoints["files_dir"]) / name, secrets / name)
    host_config = write_config(tmp_path, sandbox)
    doc = yaml.safe_load(host_config.read_text())
    doc["credentials"][0]["provider"]["apikey"] = {"file": f"{SECRETS_DIR}/admin-apikey"}
    doc["kubernetes"]["kubeconfig"] = f"{SECRETS_DIR}/kubeconfig"
    doc["state"] = {"kind": "file", "path": "/tmp/rotator-state"}  # the Deployment's writable /tmp
    doc["server"] = {"listen": "127.0.0.1:0"}
    doc["daemon"] = {"shutdown_grace": f"{SHUTDOWN_GRACE_S}s"}
    config = tmp_path / "config"
    config.mkdir()
    (config / "rotator.yaml").write_text(yaml.safe_dump(doc))
    for path in (*secrets.iterdir(), config / "rotator.yaml"):
        os.chown(path, 10001, 10001)
        path.chmod(0o400)
    return (f"{config}:{CONFIG_DIR}:ro", f"{secrets}:{SECRETS_DIR}:ro")


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        children = [c for t in tasks for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:  # the process (or a thread) ended while being read
        return out
    for child in children:
        out += [int(child), *_descendants(int(child))]
    return out


def _rotator_pid(runner: subprocess.Popen[bytes]) -> int | None:
    """The process `buildah run` started (its own helpers are named buildah-chroot-*). `buildah run`
    does not pass SIGTERM on, so the test signals rotator itself, as a kubelet's runtime would."""
    for pid in _descendants(runner.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command and not command[0].startswith(b"buildah"):
            return pid
    return None


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]


def test_image_checks_rotates_serves_and_stops_writing_only_to_tmp(
    sandbox: SandboxProcess, tmp_path: Path, container: str
) -> None:
    """In the image, as user 10001 with config and secrets read-only: `rotator check` passes, `rotator
    rotate` puts a verified new key in the cluster, `rotator run` gets to /readyz 200 and serves
    /metrics, then exits 0 within shutdown_grace of a SIGTERM; the container's filesystem changed only
    under /tmp."""
    volumes = _mounts(sandbox, tmp_path)
    config = f"{CONFIG_DIR}/rotator.yaml"

    check = run_in_image(container, "rotator", "check", "-c", config, volumes=volumes)
    assert check.returncode == 0, check.stdout + check.stderr
    rotate = run_in_image(container, "rotator", "rotate", CRED, "-c", config, "--wait", "30", volumes=volumes)
    assert rotate.returncode == 0, rotate.stdout + rotate.stderr
    key = stored_password(sandbox, "team-a")
    assert key is not None and pulls(sandbox, key) == "ok"
    assert key_id_of(sandbox, key)  # a key IAM issued for the service ID

    log = LOG_DIR / f"image-run-{uuid.uuid4().hex[:8]}.log"
    with log.open("wb") as out:
        runner = subprocess.Popen(
            in_image(container, "rotator", "run", "-c", config, volumes=volumes), stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def listening() -> dict[str, Any] | None:
            assert runner.poll() is None, log.read_text(errors="replace")[-3000:]
            return next((e for e in _events(log) if e.get("event") == "api.listening"), None)

        line = wait_for(listening, "the API to listen", timeout=RUN_TIMEOUT_S)
        base = f"http://{line['host']}:{line['port']}"
        with httpx.Client(base_url=base, timeout=5) as client:
            wait_for(lambda: client.get("/readyz").status_code == 200, "/readyz 200", timeout=RUN_TIMEOUT_S)
            metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "rotator_" in metrics.text
        pid = wait_for(lambda: _rotator_pid(runner), "rotator's process", timeout=10)
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        code = runner.wait(timeout=SHUTDOWN_GRACE_S)
        took = time.monotonic() - stopped_at
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(30)
    assert code == 0, log.read_text(errors="replace")[-3000:]
    assert took < SHUTDOWN_GRACE_S

    changes = _run(["podman", "diff", container], 60, "podman diff").stdout.split("\n")
    paths = [line.split(" ", 1)[1] for line in changes if line.strip()]
    assert "/tmp/rotator-state" in paths  # the diff sees what rotator wrote
    assert [p for p in paths if p != "/tmp" and not p.startswith("/tmp/")] == []
