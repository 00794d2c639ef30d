"""Subcommands: each module has ``register(subparsers)`` and a function that returns data."""

from nansearch.commands import report, sweep

COMMANDS = [sweep.register, report.register]
