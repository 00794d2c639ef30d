"""A whole sweep: set up, search, rank, and write what a study leaves behind."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nansearch.config import NansearchError, SweepConfig
from nansearch.factors import Factor, build_factors
from nansearch.ranking import rank
from nansearch.report import write_report
from nansearch.runner import TrialResult, TrialRunner
from nansearch.search import Search, SweepCallbacks, rank_axes
from nansearch.targets import build_target
from nansearch.tracking import Tracker, make_tracker

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What a sweep produced, for the command line to print and for tests to check."""

    study_dir: Path
    results: list[TrialResult]
    ranking: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)  # W&B: sync command, report URL


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


def write_report_safely(study_dir: Path) -> Path | None:
    """report.html; a failure to draw it never costs the sweep its results."""
    try:
        return write_report(study_dir)
    except Exception:
        log.exception("report.html could not be written; `nansearch report` rebuilds it")
        return None


def read_audit(study_dir: Path) -> dict[str, Any] | None:
    path = study_dir / "audit.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_sweep(
    cfg: SweepConfig,
    resume: bool = False,
    callbacks: SweepCallbacks | None = None,
    tracker: Tracker | None = None,
) -> SweepOutcome:
    factors, runner = prepare(cfg)
    search = Search(cfg, factors, runner, resume=resume)
    tracker = tracker or make_tracker(cfg, search.dir)
    callbacks = callbacks or SweepCallbacks()
    observed = SweepCallbacks(
        on_start=list(callbacks.on_start), on_trial=[tracker.log_trial, *callbacks.on_trial]
    )
    tracker.start(cfg)
    try:
        results = search.run(observed)
        ranking = write_ranking(cfg, factors, results, search.dir)
        report = write_report_safely(search.dir)
        tracking = tracker.finish_study(ranking, results, search.dir, read_audit(search.dir))
    finally:
        tracker.close()
    files = {
        "config": search.dir / "config.yaml",
        "trials": search.dir / "trials.jsonl",
        "ranking": search.dir / "ranking.json",
    }
    if report is not None:
        files["report"] = report
    if cfg.storage is None:
        files["storage"] = search.dir / "optuna-journal.log"
    return SweepOutcome(search.dir, results, ranking, files, tracking)
