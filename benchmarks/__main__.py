"""Run every benchmark and print its table; each module has ``run() -> str``."""

from __future__ import annotations

import importlib
import sys

SUITES: list[str] = ["workers"]


def main(argv: list[str]) -> int:
    chosen = argv or SUITES
    for name in chosen:
        module = importlib.import_module(f"benchmarks.{name}")
        print(module.run())
        print()
    if not chosen:
        print("no benchmarks registered yet")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
