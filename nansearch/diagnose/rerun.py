"""Rerun failing trials of a study with diagnostics, and say where each NaN was born.

The trials are chosen to cover the study's conclusions: one failing trial per cause
first, then the NaN runs no conclusion explains (:func:`select`); each record says which
conclusion it serves. For each chosen trial:

1. the trial again with its own seed, under :class:`~nansearch.diagnose.diagnostics.Diagnostics`:
   does it fail at the same step, the same way (on the CPU it must);
2. when it failed in the forward or the backward pass, its failing step once more, op by
   op in the forward pass, in autograd's anomaly mode when the gradient is to blame;
3. ``seeds`` runs with fresh seeds and no diagnostics: how often the configuration fails.

Each rerun gets one sentence of diagnosis and is saved as
``<study>/reruns/trial-<n>.json``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nansearch.analysis.conclusion import Conclusion
from nansearch.audit import AUDIT_FILE, Finding, read_audit
from nansearch.audit.checkpoint import audit_checkpoints
from nansearch.config import NansearchError, SweepConfig, load_config
from nansearch.diagnose.diagnostics import Diagnostics
from nansearch.diagnose.explain import STAGES, diagnose, op_within, several
from nansearch.diagnose.record import RerunRecord
from nansearch.search.prepare import prepare
from nansearch.search.storage import open_storage
from nansearch.search.study import read_trials, recorded
from nansearch.trial.runner import TrialResult, TrialRunner

log = logging.getLogger(__name__)

RERUNS = "reruns"

RecordCallback = Callable[[RerunRecord], None]


@dataclass
class RerunOutcome:
    """What a rerun produced, for the command line to print and for tests to check."""

    study_dir: Path
    records: list[RerunRecord] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def open_study(study_dir: Path) -> SweepConfig:
    """The configuration a finished study ran with."""
    config = study_dir / "config.yaml"
    if not config.is_file():
        parent = study_dir.parent
        known = sorted(p.parent.name for p in parent.glob("*/config.yaml"))
        raise NansearchError(
            f"{study_dir}: no study there (no config.yaml); "
            + (f"studies under {parent}: {', '.join(known)}" if known else "run a sweep first")
        )
    return load_config(config)


def latest_study(out: Path) -> str:
    """The study under ``out`` that changed last."""
    studies = sorted(out.glob("*/config.yaml"), key=lambda p: p.parent.stat().st_mtime)
    if not studies:
        raise NansearchError(f"no study under {out}/: run `nansearch sweep` first")
    return studies[-1].parent.name


def study_trials(cfg: SweepConfig, study_dir: Path) -> list[TrialResult]:
    """The study's recorded trials: ``trials.jsonl``, or the Optuna storage that holds them."""
    jsonl = study_dir / "trials.jsonl"
    if cfg.storage is None and jsonl.is_file():
        return read_trials(jsonl)
    import optuna

    storage = open_storage(cfg.storage, study_dir)
    try:
        study = optuna.load_study(study_name=cfg.study, storage=storage)
    except KeyError:
        raise NansearchError(f"study {cfg.study!r} is not in its storage {cfg.storage}") from None
    return recorded(study)


@dataclass(frozen=True)
class Pick:
    """A trial chosen for a rerun, and the conclusions of the study it speaks to.

    ``serves`` is the index (in ``ranking.json``'s ``conclusions``) of the conclusion the
    rerun was chosen for, None when no conclusion explains the trial; ``holds`` indexes
    every conclusion that names a rule the trial's values carry.
    """

    trial: TrialResult
    serves: int | None
    holds: tuple[int, ...] = ()


def select(
    results: list[TrialResult],
    top: int,
    numbers: list[int] | None,
    conclusions: Sequence[Conclusion] = (),
) -> list[Pick]:
    """The trials named by number, or ``top`` failing trials that cover the conclusions.

    First one failing trial per conclusion that names a cause, in the conclusions' order
    (of its trials, the one that holds the fewest other causes, then the worst: earlier
    failure, then lower number); then the NaN runs no conclusion explains, worst first;
    then the other failing trials, worst first. A configuration is rerun once.
    """
    if numbers:
        by_number = {r.number: r for r in results if r.number is not None}
        for number in numbers:
            if number not in by_number:
                valid = f"0 to {max(by_number)}" if by_number else "none yet"
                raise NansearchError(f"--trial {number}: no such trial (trials: {valid})")
        return [_pick(by_number[n], None, conclusions) for n in dict.fromkeys(numbers)]
    failing = sorted((r for r in results if r.is_nan), key=lambda r: (-(r.score or 0), r.number))
    causal = [i for i, c in enumerate(conclusions) if c.names_cause]
    holds = {r.number: [i for i in causal if conclusions[i].speaks_of(r)] for r in failing}
    chosen: list[Pick] = []
    seen: set[str] = set()

    def take(result: TrialResult, serves: int | None) -> None:
        key = json.dumps(result.params, sort_keys=True, default=str)
        if key not in seen and len(chosen) < top:
            seen.add(key)
            chosen.append(_pick(result, serves, conclusions))

    for index in causal:
        mine = [r for r in failing if index in holds[r.number]]
        mine.sort(key=lambda r: len(holds[r.number]))  # stable: worst first among equals
        fresh = [r for r in mine if json.dumps(r.params, sort_keys=True, default=str) not in seen]
        if fresh:
            take(fresh[0], index)
    loose = next((i for i, c in enumerate(conclusions) if c.kind == "unexplained"), None)
    for result in failing:
        if loose is not None and conclusions[loose].speaks_of(result):
            take(result, loose)
    for result in failing:
        take(result, holds[result.number][0] if holds[result.number] else None)
    return chosen


def _pick(result: TrialResult, serves: int | None, conclusions: Sequence[Conclusion]) -> Pick:
    """A :class:`Pick`; ``serves`` defaults to the first conclusion that explains the trial."""
    speaking = tuple(i for i, c in enumerate(conclusions) if c.speaks_of(result))
    if serves is None and speaking:
        serves = speaking[0]
    causal = tuple(i for i in speaking if conclusions[i].names_cause)
    return Pick(result, serves, causal)


def study_conclusions(study_dir: Path) -> list[Conclusion]:
    """The conclusions of the study's ``ranking.json``; none when it has no ranking yet."""
    path = study_dir / "ranking.json"
    if not path.is_file():
        return []
    try:
        items = json.loads(path.read_text()).get("conclusions") or []
        return [Conclusion.from_json(c) for c in items]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable (%s); reruns are chosen by score alone", path, exc)
        return []


def served(pick: Pick, conclusions: Sequence[Conclusion]) -> dict[str, Any]:
    """What a rerun record says about the conclusions it speaks to (numbered from 1)."""

    def entry(index: int) -> dict[str, Any]:
        item = conclusions[index]
        return {"conclusion": index + 1, "kind": item.kind, "rule": item.about}

    return {
        "serves": entry(pick.serves) if pick.serves is not None else None,
        "holds": [entry(i) for i in pick.holds],
    }


def fresh_seeds(seed: int, count: int) -> list[int]:
    """``count`` seeds drawn from the trial's seed: the same on every rerun, never the trial's."""
    rng = random.Random(seed)
    seeds: list[int] = []
    while len(seeds) < count:
        candidate = rng.randrange(2**31)
        if candidate != seed and candidate not in seeds:
            seeds.append(candidate)
    return seeds


KEY_CHECKS = ("checkpoint.wrapped", "checkpoint.foreign")  # audit checks on a whole checkpoint


def checkpoint_fixes(findings: list[Finding]) -> dict[str, str]:
    """The audit's fix for each checkpoint level whose weights the class does not find."""
    return {
        f.subject.removeprefix("checkpoint="): f.fix.rstrip(".")
        for f in findings
        if f.check in KEY_CHECKS and f.subject.startswith("checkpoint=")
    }


def study_fixes(study_dir: Path) -> dict[str, str] | None:
    """:func:`checkpoint_fixes` from the study's ``audit.json``; None when it has none."""
    path = study_dir / AUDIT_FILE
    if not path.is_file():
        return None
    try:
        return checkpoint_fixes(read_audit(path).findings)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable (%s); the checkpoint is audited again", path, exc)
        return None


def rerun_trial(
    runner: TrialRunner,
    trial: TrialResult,
    seeds: int,
    holds: Sequence[dict[str, Any]] = (),
    fixes: dict[str, str] | None = None,
) -> RerunRecord:
    """Rerun one trial with diagnostics, then with fresh seeds; the record to save.

    ``holds`` are the study's conclusions whose rule the trial carries (from
    :func:`served`): when there are several, the diagnosis names each. ``fixes`` are the
    audit's fixes by checkpoint level (:func:`checkpoint_fixes`); without them the
    trial's checkpoint is audited when its weights turn out to be missing.
    """
    start = time.perf_counter()
    diag = Diagnostics()
    with diag:
        again = runner.run(trial.params, trial.seed, trial.steps, observer=diag)
    deep = None
    stage = STAGES.get(again.outcome)
    step = again.first_bad_step
    if stage in ("forward", "backward") and step is not None:
        deep = Diagnostics(
            op_step=step if stage == "forward" else None,
            anomaly_step=step if stage == "backward" else None,
        )
        with deep:
            pass_two = runner.run(trial.params, trial.seed, step + 1, observer=deep)
        deep.explain_error(pass_two.error)
    missing = runner.missing_keys(trial.params)
    fix = None
    if missing and "checkpoint" in trial.params:
        if fixes is None:
            fixes = checkpoint_fixes(audit_checkpoints(runner.cfg, runner))
        fix = fixes.get(str(trial.params["checkpoint"]))
    stage, module, sentence = diagnose(again, diag, deep, missing, fix)
    sentence += several(holds)
    fresh = [runner.run(trial.params, seed, trial.steps) for seed in fresh_seeds(trial.seed, seeds)]
    op = op_within(diag.forward, deep) if stage == "forward" else None
    record = _finite(
        {
            "trial": trial.number,
            "params": trial.params,
            "seed": trial.seed,
            "diagnosis": sentence,
            "reproduced": (again.outcome, again.first_bad_step)
            == (trial.outcome, trial.first_bad_step),
            "seed_rate": {"nan": sum(r.is_nan for r in fresh), "total": len(fresh)},
            "first_bad_step": again.first_bad_step,
            "outcome": again.outcome,
            "stage": stage,
            "module": module,
            "trail": list(diag.trail),
            "trial_outcome": trial.outcome,
            "trial_first_bad_step": trial.first_bad_step,
            "steps": trial.steps,
            "device": again.device,
            "compute_dtype": again.compute_dtype,
            "error": again.error,
            "op": asdict(op) if op else None,
            "findings": _findings(diag, deep),
            "seeds": [
                {"seed": r.seed, "outcome": r.outcome, "first_bad_step": r.first_bad_step}
                for r in fresh
            ],
            "seconds": time.perf_counter() - start,
        }
    )
    return RerunRecord.from_json(record)


def rerun_study(
    study_dir: Path,
    top: int = 3,
    numbers: list[int] | None = None,
    seeds: int = 5,
    on_record: RecordCallback | None = None,
) -> RerunOutcome:
    """Rerun the chosen trials of the study in ``study_dir`` and save one record each.

    ``on_record`` hears every record once it is saved (experiment tracking plugs in
    here); its failures are logged and the rerun goes on.
    """
    if top < 1:
        raise NansearchError(f"--top {top}: rerun at least 1 trial")
    if seeds < 0:
        raise NansearchError(f"--seeds {seeds}: the number of fresh seeds must be 0 or more")
    cfg = open_study(study_dir)
    conclusions = study_conclusions(study_dir)
    chosen = select(study_trials(cfg, study_dir), top, numbers, conclusions)
    fixes = study_fixes(study_dir)
    outcome = RerunOutcome(study_dir)
    if not chosen:
        return outcome
    _, runner = prepare(cfg)
    folder = study_dir / RERUNS
    folder.mkdir(parents=True, exist_ok=True)
    for pick in chosen:
        trial = pick.trial
        log.info("rerunning trial %d with diagnostics", trial.number)
        about = served(pick, conclusions)
        record = rerun_trial(runner, trial, seeds, about["holds"], fixes)
        record.study = cfg.study
        record.serves, record.holds = about["serves"], about["holds"]
        path = folder / f"trial-{trial.number}.json"
        path.write_text(json.dumps(record.to_json(), indent=2) + "\n")
        outcome.records.append(record)
        outcome.files.append(path)
        if on_record is not None:
            try:
                on_record(record)
            except Exception:  # a tracker must never stop the rerun
                log.exception("the record callback failed for trial %d", trial.number)
    return outcome


def _findings(diag: Diagnostics, deep: Diagnostics | None) -> dict[str, Any]:
    found = {
        "forward": diag.forward,
        "received": diag.received,
        "inputs": diag.inputs,
        "loss": diag.loss,
        "grads": diag.grads,
        "update": diag.update,
        "backward": deep.backward if deep is not None else None,
    }
    return {
        key: [asdict(v) for v in value] if isinstance(value, list) else asdict(value)
        for key, value in found.items()
        if value
    }


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
