"""Command line: argv -> settings -> app. Owns exit codes (0 ok, 1 failed, 2 usage or config)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rotator import logs
from rotator.errors import ConfigError, LockedError, RotatorError, StateError


def _with_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="the YAML config file (see config/example.yaml)")


def build_parser(*, sandbox: bool = True) -> argparse.ArgumentParser:
    """The CLI; ``sandbox=False`` names the sandbox command without loading the emulators (aiohttp's
    server, the token signer and its cryptography: ~25 MiB and ~0.3 s that ``rotator run`` does not need)."""
    from rotator import commands, schemas, version

    parser = argparse.ArgumentParser(
        prog="rotator",
        description="Rotates registry pull credentials: mint, distribute, verify the pull, then revoke.",
    )
    parser.add_argument("--version", action=version.VersionAction)
    parser.add_argument(
        "--log-level",
        default=os.environ.get("ROTATOR_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=os.environ.get("ROTATOR_LOG_FORMAT"),
        help="default: console on a terminal, JSON otherwise",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        return p

    p = add("rotate", commands.rotate, "rotate one credential now (exit 0 when the new key is verified and in place)")
    p.add_argument("name", help="the credential's name in the config")
    _with_config(p)
    p.add_argument(
        "--wait",
        type=float,
        default=300.0,
        help="seconds to wait out an inconclusive verification (rate limits) before giving up",
    )
    p = add("reconcile", commands.reconcile, "one pass: finish a rotation in flight, heal drift, revoke what is due")
    p.add_argument("name", nargs="?")
    _with_config(p)
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait out an inconclusive verification")
    p = add("plan", commands.plan, "show what a rotation would do, without doing anything")
    p.add_argument("name", nargs="?")
    _with_config(p)
    p.add_argument("--json", action="store_true")
    p = add("status", commands.status, "show each credential's key, age, next rotation and pending revocations")
    p.add_argument("name", nargs="?")
    _with_config(p)
    p.add_argument("--json", action="store_true")
    p = add("check", commands.check, "check config, IAM access, targets and registry, without side effects")
    p.add_argument("name", nargs="?")
    _with_config(p)
    p = add("run", commands.run, "run the daemon")
    _with_config(p)
    p.add_argument("--resync", type=float, help="longest seconds between passes when nothing is due (daemon.resync)")
    p = add("schema", commands.schema, "print a document generated from rotator's models")
    p.add_argument(
        "name",
        choices=sorted(schemas.GENERATORS),
        help="config: the config file's JSON Schema; crd: the RegistryCredential CustomResourceDefinition",
    )
    _add_sandbox(sub, load=sandbox)
    return parser


def _add_sandbox(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, load: bool) -> None:
    """The sandbox command; unless ``load``, only its name and help (another command runs)."""
    text = "serve local emulators of IAM, Kubernetes and registries"
    sandbox_server = _sandbox_server() if load else None
    if sandbox_server is None:
        # Not asked for, or a non-editable install (the container image) that leaves the emulators out.
        # Any arguments are taken as plain words ("\0" prefix) so that the answer is the explanation,
        # not a usage error.
        p = sub.add_parser("sandbox", help=text, description=text, prefix_chars="\0", add_help=False)
        p.add_argument("args", nargs="*", help=argparse.SUPPRESS)
        p.set_defaults(func=_sandbox_missing)
        return
    p = sub.add_parser("sandbox", help=text, description=text)
    p.set_defaults(func=sandbox_server.main)
    sandbox_server.add_arguments(p)


def _sandbox_server() -> Any:
    try:
        from rotator.sandbox import server
    except ModuleNotFoundError as exc:
        if exc.name != "rotator.sandbox":
            raise
        return None
    return server


def _sandbox_missing(args: argparse.Namespace) -> int:
    print(
        "rotator sandbox: the sandbox emulators are not part of this installation (the container image and "
        "wheels leave them out); run them from a source checkout: make venv && .venv/bin/rotator sandbox",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(sandbox="sandbox" in words)
    args = parser.parse_args(words)
    json_output = None if args.log_format is None else args.log_format == "json"
    logs.configure(level=args.log_level, json_output=json_output)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        text = str(exc)
        sep = "\n" if "\n" in text else " "  # one problem on the same line, a list of them below
        print(f"rotator: configuration error:{sep}{logs.scrub(text)}", file=sys.stderr)
        code = 2
    except (LockedError, StateError) as exc:
        print(f"rotator: {logs.scrub(str(exc))}", file=sys.stderr)
        code = 1
    except RotatorError as exc:
        print(f"rotator {args.command}: {type(exc).__name__}: {logs.scrub(str(exc))}", file=sys.stderr)
        code = 1
    if args.command == "run":
        _exit_without_finalising(code)
    return code


def _exit_without_finalising(code: int) -> None:
    """End ``rotator run`` now when a daemon thread is still alive after the daemon's bounded joins (a
    watch stream or an HTTP call that did not return in time). Python 3.11 finalises the interpreter
    with daemon threads still running, and one inside an ssl call then aborts the process (SIGABRT,
    exit 134; CPython gh-87135) instead of exiting with ``code``. Skipping finalisation is safe here:
    the journal and vault are written atomically and fsynced as each step ends, and a step cut short
    is resumed or rolled back on the next start (as after SIGKILL). Output is flushed first."""
    if not any(t.daemon and t.is_alive() for t in threading.enumerate()):
        return  # nothing left running: the normal exit is safe
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
