"""Named step boundaries where a test can kill the process (``ROTATOR_CRASH_AT=<name>``).

The crash-safety test runs ``rotator rotate`` once per boundary below, SIGKILLs it there, and
runs it again: the journal must carry the rotation to a safe end from every one of them. The
request boundaries are crossed by the daemon's API path; their test kills ``rotator run`` there.
"""

from __future__ import annotations

import os
import signal

BOUNDARIES = (
    "start:after",
    "mint:before",
    "mint:after-provider",
    "mint:after-vault",
    "mint:after",
    "verify_new:after",
    "distribute:before",
    "distribute:after-snapshot",
    "distribute:partial",
    "distribute:after",
    "verify_stored:after",
    "promote:after-vault",
    "promote:after",
    "rollback:after-restore",
    "rollback:after-delete",
    "unlock:after",
    "disable:after",
    "delete:after",
)

# The daemon's request path (``rotator run`` only): a request recorded in the book but not yet answered,
# and one answered (or about to be) that the worker has not started.
REQUEST_BOUNDARIES = (
    "request:recorded",
    "request:before-start",
)


def boundary(name: str) -> None:
    if os.environ.get("ROTATOR_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
