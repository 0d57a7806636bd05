"""``rotator schema WHAT``: print a schema generated from rotator's models (each is committed too, and
the test suite checks the committed copy against this output)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rotator import crd

# What -> the text printed; `rotator schema crd` renders the RegistryCredential CustomResourceDefinition.
SCHEMAS: dict[str, Callable[[], str]] = {"crd": crd.render}


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "print a schema generated from rotator's models (crd: the RegistryCredential definition)"
    p = sub.add_parser("schema", help=text, description=text)
    p.add_argument("what", choices=sorted(SCHEMAS))
    p.set_defaults(func=print_schema)


def print_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(SCHEMAS[args.what]())
    return 0
