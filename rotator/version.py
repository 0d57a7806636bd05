"""The version line: rotator's version and the source revision it was built from.

An image records the git revision given at build time in ``<prefix>/REVISION`` (deploy/Containerfile
writes it into the virtualenv, ``sys.prefix``); a source checkout asks git; anything else says
"unknown".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rotator import __version__

REVISION_FILE = Path(sys.prefix) / "REVISION"
# The checkout this package was imported from, when it was (editable install, PYTHONPATH).
_SOURCE = Path(__file__).resolve().parents[1]
UNKNOWN = "unknown"


def revision() -> str:
    try:
        baked = REVISION_FILE.read_text().strip()
    except OSError:
        baked = ""
    if baked:
        return baked
    if not (_SOURCE / ".git").exists():
        return UNKNOWN
    try:
        result = subprocess.run(
            ["git", "-C", str(_SOURCE), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else UNKNOWN


def version_line() -> str:
    return f"rotator {__version__} (revision {revision()})"


class VersionAction(argparse.Action):
    """``--version``: worked out only when asked, since it may run git."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the version and the source revision it was built from, then exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        print(version_line())
        parser.exit()
