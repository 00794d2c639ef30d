"""Run the benchmarks and print their tables; each module has ``run() -> str``.

``python -m benchmarks [--quick] [--threads N] [suite ...]``: all suites by default;
``--quick`` runs shorter versions (fewer rounds and steps) of those that offer one.

Every process runs torch with one thread unless ``--threads`` says otherwise: on a
machine shared with other work, torch's worker threads spin while they wait for one
another, and a busy neighbour stretches the same training step by up to 5x from one
run to the next; a single thread slows only in proportion to the CPU it gets. One
thread per process is also how several CPU workers share a machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

SUITES: list[str] = [
    "overhead",
    "fixed_cost",
    "sweep_floor",
    "memory",
    "workers",
    "threads",
    "strategies",
    "warning",
    "own_code",
    "structure",
]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("suites", nargs="*", metavar="suite", help=f"any of {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="shorter runs, wider spread")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (default 1)"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        parser.error(f"no suite {', '.join(unknown)}; suites: {', '.join(SUITES)}")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: must be at least 1")
    from benchmarks._common import QUICK_ENV, THREADS_ENV

    if args.quick:
        os.environ[QUICK_ENV] = "1"
    os.environ[THREADS_ENV] = str(args.threads)
    torch.set_num_threads(args.threads)
    from nansearch.startup import quiet_libraries

    quiet_libraries()
    for name in args.suites or SUITES:
        module = importlib.import_module(f"benchmarks.{name}")
        print(module.run(), flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
