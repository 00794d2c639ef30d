"""Subcommands: each module has ``register(subparsers)`` and a function that returns data."""

from nansearch.commands import audit, rerun, sweep

COMMANDS = [sweep.register, audit.register, rerun.register]
