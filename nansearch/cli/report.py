"""``nansearch report STUDY [--out runs]``: rebuild a study's report.html from its files."""

from __future__ import annotations

import argparse
from pathlib import Path

from nansearch.config import NansearchError
from nansearch.report.page import write_report


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="rebuild a study's report.html")
    parser.add_argument("study", help="the study's name (its folder under --out)")
    parser.add_argument("--out", default="runs", help="where study folders are (default runs)")
    parser.set_defaults(func=main)


def report(study: str, out: str = "runs") -> Path:
    study_dir = Path(out) / study
    if not study_dir.is_dir():
        found = sorted(p.parent.name for p in Path(out).glob("*/ranking.json"))
        known = f"studies there: {', '.join(found)}" if found else "no study there yet"
        raise NansearchError(f"no study {study!r} under {out}/ ({known})")
    return write_report(study_dir)


def main(args: argparse.Namespace) -> int:
    print(report(args.study, args.out))
    return 0
