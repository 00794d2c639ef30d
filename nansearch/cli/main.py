"""The command line. This module only registers subcommands; each lives in a module beside it."""

from __future__ import annotations

import argparse
import logging
import sys

from nansearch.config import NansearchError
from nansearch.jsonl import DISK_ERRNOS, disk_error
from nansearch.startup import quick_exit, quiet_libraries, uncollected_imports


def build_parser() -> argparse.ArgumentParser:
    from nansearch.cli import COMMANDS

    parser = argparse.ArgumentParser(
        prog="nansearch",
        description="Find which suspected cause makes a training run's logits NaN.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    quick_exit()
    with uncollected_imports():
        parser = build_parser()
        args = parser.parse_args(argv)
        quiet_libraries(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except NansearchError as exc:
        print(f"nansearch: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        print(f"nansearch: {disk_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nansearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
