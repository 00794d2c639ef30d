"""Subcommands: each module has ``register(subparsers)`` and a function that returns data."""

from nansearch.cli import audit, report, rerun, sweep, worker

COMMANDS = [sweep.register, worker.register, audit.register, rerun.register, report.register]
