"""What an audit finds, and the record it leaves (``audit.json``)."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One thing an audit found, why it leads to NaN, and what to do about it.

    ``check`` is a dotted id such as ``checkpoint.wrapped``; ``subject`` names what it
    is about, such as ``checkpoint=blip2-full`` or ``dtype=fp16``.
    """

    severity: str
    check: str
    subject: str
    found: str
    why: str
    fix: str

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity={self.severity!r}: valid values are {SEVERITIES}")


@dataclass
class Audit:
    """Every finding of one audit, most severe first, and how long the audit took."""

    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self):
        self.findings = sorted(self.findings, key=lambda f: SEVERITIES.index(f.severity))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def about(self, subject: str) -> list[Finding]:
        return [f for f in self.findings if f.subject == subject]

    def to_json(self) -> dict[str, Any]:
        return {"findings": [asdict(f) for f in self.findings], "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Audit:
        return cls([Finding(**f) for f in data["findings"]], float(data["seconds"]))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def read_audit(path: Path) -> Audit:
    return Audit.from_json(json.loads(Path(path).read_text()))


def summary(audit: Audit) -> str:
    """``2 errors, 1 warning, 1 note`` or ``no findings``."""
    counts = Counter(f.severity for f in audit.findings)
    words = {"error": "error", "warning": "warning", "info": "note"}
    parts = [
        f"{counts[s]} {words[s]}{'s' if counts[s] != 1 else ''}" for s in SEVERITIES if counts[s]
    ]
    return ", ".join(parts) or "no findings"


def format_findings(audit: Audit, width: int = 100) -> str:
    """The findings as a reader scans them: severity, check and subject, then found/why/fix."""
    lines = [f"audit: {summary(audit)} ({audit.seconds:.1f}s)"]
    for finding in audit.findings:
        lines.append(f"{finding.severity.upper():<7} {finding.check}  [{finding.subject}]")
        for label in ("found", "why", "fix"):
            lines += textwrap.wrap(
                getattr(finding, label),
                width=width,
                initial_indent=f"  {label + ':':<7}",
                subsequent_indent=" " * 9,
            )
    return "\n".join(lines)
