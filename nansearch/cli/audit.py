"""``nansearch audit SWEEP.yaml [key=value ...]``: name the likely causes before any trial."""

from __future__ import annotations

import argparse
from pathlib import Path

from nansearch.audit import AUDIT_FILE, Audit, format_findings, run_audit
from nansearch.cli.sweep import add_sweep_file
from nansearch.config import load_config
from nansearch.search.prepare import prepare


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "audit", help="check checkpoints, batches and settings for known NaN causes, no training"
    )
    add_sweep_file(parser)
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when an error is found"
    )
    parser.set_defaults(func=main)


def audit(sweep_file: str, overrides: list[str]) -> tuple[Audit, Path]:
    """Audit a sweep file; returns the audit and the ``audit.json`` it wrote."""
    cfg = load_config(sweep_file, overrides)
    factors, runner = prepare(cfg)
    result = run_audit(cfg, factors, runner)
    return result, result.write(cfg.study_dir / AUDIT_FILE)


def main(args: argparse.Namespace) -> int:
    result, path = audit(args.sweep_file, args.overrides)
    print(format_findings(result))
    print(f"\nwritten to {path}")
    return 1 if args.strict and result.errors else 0
