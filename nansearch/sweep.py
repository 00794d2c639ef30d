"""A whole sweep: set up, search, rank, and write what a study leaves behind."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nansearch.audit import AUDIT_FILE, Audit, run_audit, summary
from nansearch.config import NansearchError, SweepConfig
from nansearch.factors import Factor, build_factors
from nansearch.ranking import rank
from nansearch.runner import TrialResult, TrialRunner
from nansearch.search import Search, SweepCallbacks, rank_axes
from nansearch.targets import build_target

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What a sweep produced, for the command line to print and for tests to check."""

    study_dir: Path
    results: list[TrialResult]
    ranking: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    audit: Audit | None = None


def import_plugins(plugins: list[str]) -> None:
    """Import the modules or files that register factors and levels."""
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_file():
                raise NansearchError(f"plugins: no such file {plugin}")
            name = f"nansearch_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path.resolve())
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(plugin)
            except ImportError as exc:
                raise NansearchError(f"plugins: cannot import {plugin!r}: {exc}") from None


def prepare(cfg: SweepConfig) -> tuple[list[Factor], TrialRunner]:
    import_plugins(cfg.plugins)
    factors = build_factors(cfg)
    runner = TrialRunner(cfg, factors, build_target(cfg.target))
    return factors, runner


def write_ranking(
    cfg: SweepConfig, factors: list[Factor], results: list[TrialResult], study_dir: Path
) -> dict[str, Any]:
    ranking = {"study": cfg.study, **rank(results, rank_axes(factors))}
    path = study_dir / "ranking.json"
    path.write_text(json.dumps(ranking, indent=2) + "\n")
    return ranking


def audit_sweep(cfg: SweepConfig, factors: list[Factor], runner: TrialRunner) -> Audit:
    """The audit before the first trial, written to ``audit.json`` and logged."""
    audit = run_audit(cfg, factors, runner)
    path = audit.write(cfg.study_dir / AUDIT_FILE)
    log.info("audit: %s in %.1fs, written to %s", summary(audit), audit.seconds, path)
    for finding in audit.findings:
        log.debug("%s %s [%s]: %s", finding.severity, finding.check, finding.subject, finding.found)
    return audit


def run_sweep(
    cfg: SweepConfig,
    resume: bool = False,
    callbacks: SweepCallbacks | None = None,
    on_audit: Callable[[Audit], None] | None = None,
) -> SweepOutcome:
    """Audit, search, rank. ``on_audit`` hears the audit before the first trial runs."""
    factors, runner = prepare(cfg)
    search = Search(cfg, factors, runner, resume=resume)
    audit = audit_sweep(cfg, factors, runner)
    if on_audit is not None:
        on_audit(audit)
    results = search.run(callbacks)
    ranking = write_ranking(cfg, factors, results, search.dir)
    files = {
        "config": search.dir / "config.yaml",
        "audit": search.dir / AUDIT_FILE,
        "trials": search.dir / "trials.jsonl",
        "ranking": search.dir / "ranking.json",
    }
    if cfg.storage is None:
        files["storage"] = search.dir / "optuna-journal.log"
    return SweepOutcome(search.dir, results, ranking, files, audit)
