"""The errors a user's input causes: printed as one message, without a traceback."""

from __future__ import annotations


class NansearchError(Exception):
    """An error caused by the user's input: printed as one message, without a traceback."""


class ConfigError(NansearchError):
    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")
