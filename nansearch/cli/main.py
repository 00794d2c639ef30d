"""The command line. This module only registers subcommands; each lives in a module beside it."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from nansearch.config import NansearchError
from nansearch.jsonl import DISK_ERRNOS, disk_error
from nansearch.startup import quick_exit, uncollected_imports


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


def _quiet_libraries(verbose: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    import optuna
    import transformers

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    quick_exit()
    with uncollected_imports():
        parser = build_parser()
        args = parser.parse_args(argv)
        _quiet_libraries(args.verbose)
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
