"""`rotator --version`: the version and the source revision. In an image the revision is the one baked
in at build time (tests/test_image.py); from a checkout it is git's HEAD; elsewhere "unknown"."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from monitoring_env import REPO

from rotator import __version__


def version_output(cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "rotator", "--version"], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_version_from_a_checkout_names_git_head() -> None:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert version_output(REPO) == f"rotator {__version__} (revision {head.stdout.strip()})"


def test_version_outside_a_checkout_says_unknown(tmp_path: Path) -> None:
    """A copy of the package with no git repository around it (and no REVISION file in the prefix)."""
    shutil.copytree(REPO / "rotator", tmp_path / "rotator", ignore=shutil.ignore_patterns("__pycache__"))
    assert not (Path(sys.prefix) / "REVISION").exists()
    probe = [sys.executable, "-c", "import rotator; print(rotator.__file__)"]
    imported = subprocess.run(probe, capture_output=True, text=True, cwd=tmp_path, timeout=60, check=True)
    assert imported.stdout.strip().startswith(str(tmp_path)), "the copy, not the checkout, must be imported"
    assert version_output(tmp_path) == f"rotator {__version__} (revision unknown)"
