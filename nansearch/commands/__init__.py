"""Subcommands: each module has ``register(subparsers)`` and a function that returns data."""

from nansearch.commands import rerun, sweep

COMMANDS = [sweep.register, rerun.register]
