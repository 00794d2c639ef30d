"""What went into the study: the audit's findings and the configuration."""

from __future__ import annotations

from typing import Any

from nansearch.report.sections._base import Section

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def audit_section(audit: dict[str, Any] | None) -> Section | None:
    if audit is None:
        return None
    findings = audit.get("findings") or []
    findings = sorted(findings, key=lambda f: SEVERITY_ORDER.get(f.get("severity"), 3))
    rows = [
        {
            key: str(f.get(key, ""))
            for key in ("severity", "check", "subject", "found", "why", "fix")
        }
        for f in findings
    ]
    return Section("audit", "Audit findings", "audit", rows)


def config_section(config_text: str | None) -> Section | None:
    if not config_text:
        return None
    return Section("config", "Configuration", "config", config_text)
