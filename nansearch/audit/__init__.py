"""Audits: checkpoint, batch and config checks that name a cause before the first trial."""

from nansearch.audit._base import SEVERITIES, Audit, Finding, format_findings, read_audit, summary
from nansearch.audit._run import run_audit

AUDIT_FILE = "audit.json"

__all__ = [
    "AUDIT_FILE",
    "SEVERITIES",
    "Audit",
    "Finding",
    "format_findings",
    "read_audit",
    "run_audit",
    "summary",
]
