"""Chaos figures for several seeds: ``python bench/chaos.py --seeds 1 2 3 [--seconds 60]``.

Each seed starts its own sandbox and runs ``tests/chaos_env.py``'s ChaosRun (random faults, rotate and leak
requests, SIGKILLs, armed kills during a rollback and right after a mint), then prints one summary line:
requests accepted / served / joined, leaks reported / disabled, time to disable, kills, bound violations.
Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from chaos_env import ChaosRun, sweep_orphans  # noqa: E402
from conftest import start_sandbox  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    failed = 0
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp, start_sandbox() as sandbox:
            chaos = ChaosRun(sandbox, Path(tmp), seed)
            figures = chaos.run(args.seconds)
            sweep_orphans(chaos)
            print(figures.summary(), flush=True)
            for problem in (figures.problems + figures.bound_violations)[:10]:
                print(f"  {problem}")
            failed += bool(figures.problems or figures.bound_violations)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
