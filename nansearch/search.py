"""The search: an Optuna study whose trials are short training runs.

The first trials cover every level of every factor evenly (a shuffled balanced design,
enqueued into the study), so every rate rests on data; then Optuna's sampler steers
toward instability by maximizing :func:`nansearch.runner.instability_score`.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from nansearch.config import NansearchError, SweepConfig, save_config
from nansearch.factors import Factor
from nansearch.ranking import Bins
from nansearch.runner import TrialResult, TrialRunner

log = logging.getLogger(__name__)

RESULT_ATTR = "result"


def open_storage(url: str | None, study_dir: Path) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; a journal file in the study folder by default.

    ``url`` is any Optuna storage URL (``sqlite:///...``, ``postgresql://...``), or a
    journal file as ``journal:PATH`` or a plain path ending in ``.log`` or ``.jsonl``.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(study_dir / "optuna-journal.log")))
    if url.startswith("journal:") or url.endswith((".log", ".jsonl")):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise NansearchError(
            f"storage={url!r}: not a storage URL; use e.g. sqlite:///study.db, "
            "postgresql://user@host/db, or journal:path/to/file.log"
        )
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=30)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NansearchError(f"storage={url!r}: cannot open it: {first}") from None


def distributions(factors: list[Factor]) -> dict[str, optuna.distributions.BaseDistribution]:
    return {factor.name: factor.distribution() for factor in factors}


def rank_axes(factors: list[Factor]) -> list[tuple[str, list[Any] | Bins]]:
    """How the ranking groups each factor: its levels, or log-spaced ranges."""
    axes = []
    for factor in factors:
        dist = factor.distribution()
        if isinstance(dist, CategoricalDistribution):
            axes.append((factor.name, list(dist.choices)))
        elif isinstance(dist, FloatDistribution):
            axes.append((factor.name, Bins.log_spaced(dist.low, dist.high)))
    return axes


def cover_size(cfg: SweepConfig, factors: list[Factor]) -> int:
    """Default: every level of the widest factor at least twice, and a third of the budget."""
    if cfg.search.cover >= 0:
        return min(cfg.search.cover, cfg.trials)
    widest = max((len(f.levels or []) for f in factors), default=1)
    return min(cfg.trials, max(2 * widest, cfg.trials // 3))


def cover_plan(factors: list[Factor], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` configurations in which each level of each factor appears equally often.

    Each categorical factor cycles through its levels and is shuffled on its own, so the
    levels of different factors are paired at random; a continuous factor is stratified
    over its range (log-uniform where the range is logarithmic).
    """
    rng = random.Random(seed)
    columns: dict[str, list[Any]] = {}
    for factor in factors:
        dist = factor.distribution()
        if isinstance(dist, CategoricalDistribution):
            choices = list(dist.choices)
            start = rng.randrange(len(choices))
            column = [choices[(start + i) % len(choices)] for i in range(count)]
        else:
            low, high = (
                (math.log(dist.low), math.log(dist.high)) if dist.log else (dist.low, dist.high)
            )
            column = [low + (high - low) * (i + rng.random()) / count for i in range(count)]
            if dist.log:
                column = [math.exp(v) for v in column]
            column = [min(max(v, dist.low), dist.high) for v in column]
        rng.shuffle(column)
        columns[factor.name] = column
    return [{name: col[i] for name, col in columns.items()} for i in range(count)]


def make_sampler(cfg: SweepConfig, n_startup: int) -> optuna.samplers.BaseSampler:
    if cfg.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.samplers.TPESampler(
        seed=cfg.seed, n_startup_trials=max(1, n_startup), multivariate=True
    )


def recorded(study: optuna.Study) -> list[TrialResult]:
    """Every trial that finished with a result, in trial order."""
    results = []
    for trial in study.get_trials(deepcopy=False):
        data = trial.user_attrs.get(RESULT_ATTR)
        if data is not None and trial.state in (TrialState.COMPLETE, TrialState.FAIL):
            results.append(TrialResult.from_json(data))
    return sorted(results, key=lambda r: r.number)


def fail_stale(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a process that died as failed, and retry each once.

    Only for storages without heartbeats (the journal file), when no other worker can be
    running: a sweep that starts or resumes alone.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        retry(study, trial)
    return len(stale)


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Enqueue a failed trial's configuration again, unless it was a retry itself."""
    if "retry_of" in trial.user_attrs or not trial.params:
        return
    study.enqueue_trial(
        trial.params,
        user_attrs={
            "phase": trial.user_attrs.get("phase", "search"),
            "retry_of": trial.number,
        },
    )


@dataclass
class SweepCallbacks:
    """What the outside world hears from a sweep; tracking and progress plug in here."""

    on_start: list[Callable[[int, int], None]] = field(default_factory=list)  # (done, budget)
    on_trial: list[Callable[[TrialResult], None]] = field(default_factory=list)

    def start(self, done: int, budget: int) -> None:
        for callback in self.on_start:
            try:
                callback(done, budget)
            except Exception:
                log.exception("a start callback failed; the sweep goes on")

    def trial(self, result: TrialResult) -> None:
        for callback in self.on_trial:
            try:
                callback(result)
            except Exception:  # an observer must never stop the search
                log.exception("a trial callback failed; the sweep goes on")


class Search:
    """One study: its storage, its factors, and the loop that fills its trial budget."""

    def __init__(
        self,
        cfg: SweepConfig,
        factors: list[Factor],
        runner: TrialRunner,
        resume: bool = False,
        storage: optuna.storages.BaseStorage | None = None,
    ):
        self.cfg = cfg
        self.factors = factors
        self.runner = runner
        self.dir = cfg.study_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage or open_storage(cfg.storage, self.dir)
        self.cover = cover_size(cfg, factors)
        self.study = self._open(resume)

    def _open(self, resume: bool) -> optuna.Study:
        name = self.cfg.study
        exists = name in optuna.get_all_study_names(self.storage)
        if exists and not resume:
            raise NansearchError(
                f"study {name!r} already exists in its storage; add --resume to continue it, "
                "or choose another name with study=NAME"
            )
        if not exists and resume:
            log.info("study %r does not exist yet; starting it", name)
        study = optuna.create_study(
            study_name=name,
            storage=self.storage,
            direction="maximize",
            sampler=make_sampler(self.cfg, self.cover),
            load_if_exists=True,
        )
        if not exists:
            study.set_user_attr("config_seed", self.cfg.seed)
            for params in cover_plan(self.factors, self.cover, self.cfg.seed):
                study.enqueue_trial(params, user_attrs={"phase": "cover"})
        else:
            stale = fail_stale(study)
            if stale:
                log.warning(
                    "%d trial(s) left running by a stopped process were marked "
                    "failed and will be run again",
                    stale,
                )
        return study

    @property
    def done(self) -> int:
        return len(recorded(self.study))

    def run(self, callbacks: SweepCallbacks | None = None) -> list[TrialResult]:
        """Run trials until the budget is met; returns every recorded trial."""
        callbacks = callbacks or SweepCallbacks()
        save_config(self.cfg, self.dir / "config.yaml")
        dists = distributions(self.factors)
        callbacks.start(self.done, self.cfg.trials)
        while self.done < self.cfg.trials:
            self.run_one(dists, callbacks)
        results = recorded(self.study)
        write_trials(results, self.dir / "trials.jsonl")
        return results

    def run_one(self, dists, callbacks: SweepCallbacks) -> TrialResult:
        trial = self.study.ask(dists)
        phase = trial.user_attrs.get("phase", "search")
        seed = self.cfg.seed * 100_003 + trial.number
        result = self.runner.run(trial.params, seed)
        result.number, result.phase = trial.number, phase
        trial.set_user_attr(RESULT_ATTR, result.to_json())
        trial.set_user_attr("outcome", result.outcome)
        if result.score is None:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, result.score)
        append_trial(result, self.dir / "trials.jsonl")
        callbacks.trial(result)
        return result


def append_trial(result: TrialResult, path: Path) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(trial_line(result)) + "\n")


def write_trials(results: list[TrialResult], path: Path) -> None:
    """Rewrite ``trials.jsonl`` from the study, which holds every worker's trials."""
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(trial_line(r)) + "\n" for r in results))
    tmp.replace(path)


def trial_line(result: TrialResult) -> dict[str, Any]:
    data = result.to_json()
    head = {k: data.pop(k) for k in ("number", "params", "outcome", "first_bad_step", "score")}
    return {**head, **data}


def read_trials(path: Path) -> list[TrialResult]:
    results = {}
    for line in path.read_text().splitlines():
        if line.strip():
            result = TrialResult.from_json(json.loads(line))
            results[result.number] = result
    return [results[n] for n in sorted(results)]
