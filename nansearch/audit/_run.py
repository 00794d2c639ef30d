"""Running every audit: config, then checkpoints, then batches, in seconds and before any trial."""

from __future__ import annotations

import logging
import time

from nansearch.audit._base import Audit, Finding
from nansearch.audit.batch import audit_batches
from nansearch.audit.checkpoint import audit_checkpoints
from nansearch.audit.config import audit_config
from nansearch.config import SweepConfig
from nansearch.factors import Factor
from nansearch.trial.runner import TrialRunner

log = logging.getLogger(__name__)


def run_audit(
    cfg: SweepConfig, factors: list[Factor] | None = None, runner: TrialRunner | None = None
) -> Audit:
    """Audit a sweep before its first trial.

    Pass the sweep's own ``factors`` and ``runner`` so the audit loads each checkpoint the
    way the trials do, into the same cache; without them they are built from ``cfg``.
    An audit that fails is reported as a finding; it never stops the sweep.
    """
    start = time.perf_counter()
    if factors is None or runner is None:
        from nansearch.search.prepare import prepare

        factors, runner = prepare(cfg)
    audits = {
        "config": lambda: audit_config(cfg, runner.device),
        "checkpoint": lambda: audit_checkpoints(cfg, runner),
        "batch": lambda: audit_batches(cfg, factors, runner),
    }
    findings: list[Finding] = []
    for name, audit in audits.items():
        try:
            findings += audit()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            log.exception("the %s audit failed; the sweep goes on", name)
            findings.append(
                Finding(
                    severity="warning",
                    check="audit.incomplete",
                    subject=f"{name} audit",
                    found=f"the {name} audit stopped: {type(exc).__name__}: {exc}",
                    why="Causes it would have named are not in this report.",
                    fix="Run with -v for the traceback; the trials themselves are unaffected.",
                )
            )
    return Audit(findings, seconds=round(time.perf_counter() - start, 3))
