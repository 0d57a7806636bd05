"""Running the real kubectl against a sandbox: its own HOME and cache, the sandbox's kubeconfig."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

KUBECTL = shutil.which("kubectl")
KUBECTL_TIMEOUT_S = 30

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def kubectl_runner(kubeconfig: str, home: Path) -> Kubectl:
    """A kubectl that asserts success unless ``check=False``; skips the test when kubectl is missing."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    kubectl = KUBECTL

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, HOME=str(home), KUBECONFIG=kubeconfig)
        result = subprocess.run(
            [kubectl, "--cache-dir", str(home / "cache"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=KUBECTL_TIMEOUT_S,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    return run
