"""Command line: argv -> settings -> app. Owns exit codes (0 ok, 1 failed, 2 usage/config)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rotator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from rotator.sandbox import server as sandbox_server

    sandbox = sub.add_parser("sandbox", help="serve local emulators of IAM, Kubernetes and registries")
    sandbox_server.add_arguments(sandbox)
    sandbox.set_defaults(func=sandbox_server.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
