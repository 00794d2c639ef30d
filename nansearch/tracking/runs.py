"""What goes into the W&B runs: a trial's config, history and summary, and the tables,
charts and files of a study's analysis run. :mod:`nansearch.tracking.tracker` decides when
runs are written and what happens when W&B fails; this module only fills them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from nansearch.config.schema import SweepConfig
from nansearch.tracking._base import FinishedStudy
from nansearch.trial.runner import TrialResult

TRIAL_STEP_KEYS = ("loss", "logit_absmax", "grad_norm")


def target_name(cfg: SweepConfig) -> str:
    target = cfg.target
    if target.kind in ("custom", "function"):
        return f"{target.kind} {target.fn}"
    if target.kind == "causal-lm":
        return f"causal-lm {target.model_class}"
    return target.kind


def trial_history(result: TrialResult) -> list[dict[str, Any]]:
    """One row per step: the three values the runner read back and non-finite flags."""
    rows = []
    for step in range(len(result.loss)):
        row = {key: getattr(result, key)[step] for key in TRIAL_STEP_KEYS}
        row["nonfinite/logits"] = int(not math.isfinite(row["logit_absmax"]))
        row["nonfinite/loss"] = int(not math.isfinite(row["loss"]))
        row["nonfinite/grad"] = int(not math.isfinite(row["grad_norm"]))
        row["nonfinite/params"] = int(
            result.outcome == "nonfinite-params" and step == result.first_bad_step
        )
        rows.append(row)
    return rows


def trial_summary(result: TrialResult) -> dict[str, Any]:
    summary = {
        "outcome": result.outcome,
        "nan": int(result.is_nan),
        "score": result.score,
        "seconds": result.seconds,
        "skipped_steps": result.skipped_steps,
        "compute_dtype": result.compute_dtype,
        "device": result.device,
    }
    if result.is_nan:
        summary["first_bad_step"] = result.first_bad_step
        summary["nonfinite_in"] = result.outcome.removeprefix("nonfinite-")
    if result.error:
        summary["error"] = result.error[:1000]
    return {key: value for key, value in summary.items() if value is not None}


def trial_forecast(result: TrialResult, cfg: SweepConfig) -> dict[str, Any]:
    """A finite trial's early warning, for its run's summary: at risk or not, and when."""
    from nansearch.analysis.warning import forecast, horizon_of

    horizon = horizon_of(cfg.steps, cfg.search.horizon)
    found = forecast(result, horizon, cfg.optimizer.min_loss_scale)
    if found is None:
        return {}
    summary: dict[str, Any] = {"at_risk": int(found.at_risk), "horizon": horizon}
    if found.predicted_step is not None:
        summary.update(
            predicted_step=found.predicted_step, trend=found.trend, trend_signal=found.signal
        )
    return summary


def fix_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per seed: how it ended and its loss, the fix's beside the reference's."""
    rows = []
    for i, run in enumerate(record.get("runs") or []):
        ref = (
            (record.get("reference_runs") or [{}] * (i + 1))[i]
            if record.get("reference_runs")
            else {}
        )
        row = {
            "seed": run["seed"],
            "finite": int(run["outcome"] == "finite"),
            "steps_run": run["steps_run"],
            "loss_trend": finite_or_none(run.get("trend")),
            "reference_loss_trend": finite_or_none(ref.get("trend")),
        }
        rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def fix_summary(record: dict[str, Any]) -> dict[str, Any]:
    runs = record.get("runs") or []
    return {
        "verdict": record["verdict"],
        "verified": int(record["verdict"] == "verified"),
        "why": record["why"],
        "finite_seeds": sum(r["outcome"] == "finite" for r in runs),
        "seeds_run": len(runs),
        "overrides": " ".join(record["overrides"]),
        **fix_words(record),
    }


def fix_words(record: dict[str, Any]) -> dict[str, str]:
    """What a user reads off a fix run: how the change reads where its overrides say it
    badly (what a stripped checkpoint was stripped of, and where it was saved), and, once
    verified, the ``nansearch sweep`` line the terminal prints to rerun it."""
    return {key: str(record[key]) for key in ("label", "rerun") if record.get(key)}


def log_analysis(run: Any, study: FinishedStudy) -> None:
    """The ranking, NaN rate per level, importances, trials, conclusions, the factors the
    code ignores, audit, report."""
    import wandb

    from nansearch.analysis.ranking import Ranking

    ranking, results, audit = study.ranking, study.results, study.audit
    typed = Ranking.from_json(ranking)
    study_dir = Path(study.study_dir)

    row_keys = ["nan", "total", "errors", "rate", "ci_low", "ci_high"]
    table = wandb.Table(columns=["rank", "factor", "kind", "effect", "level", *row_keys])
    logged: dict[str, Any] = {"ranking": table}
    for rank, factor in enumerate(typed.factors, 1):
        per_level = wandb.Table(columns=["level", *row_keys])
        for row in factor.levels:
            values = [getattr(row, key) for key in row_keys]
            table.add_data(rank, factor.name, factor.kind, factor.effect, row.value, *values)
            per_level.add_data(row.value, *values)
        logged[f"nan_rate/{factor.name}"] = wandb.plot.bar(
            per_level, "level", "rate", title=f"NaN rate per {factor.name} level"
        )

    importance = typed.importance
    if importance:
        imp = wandb.Table(columns=["factor", "importance"], data=list(importance.items()))
        logged["importance"] = wandb.plot.bar(
            imp, "factor", "importance", title="fANOVA importance for the instability score"
        )

    names = [f.name for f in typed.factors]
    names += sorted({k for r in results for k in r.params} - set(names))
    trials = wandb.Table(
        allow_mixed_types=True,
        columns=[
            "trial",
            "phase",
            *names,
            "seed",
            "outcome",
            "first_bad_step",
            "score",
            "seconds",
            "error",
        ],
    )
    for r in results:
        params = [cell(r.params.get(name)) for name in names]
        error = (r.error or "").splitlines()[0] if r.error else None
        trials.add_data(
            r.number,
            r.phase,
            *params,
            r.seed,
            r.outcome,
            r.first_bad_step,
            r.score,
            r.seconds,
            error,
        )
    logged["trials"] = trials

    conclusions = [c.text for c in typed.conclusions]
    if conclusions:
        logged["conclusions"] = wandb.Table(columns=["conclusion"], data=[[c] for c in conclusions])
    for key in ("interactions", "minimal_causes", "at_risk", "ignored", "fixes"):
        if ranking.get(key):
            logged[key] = dict_table(wandb, ranking[key])
    findings = (audit or {}).get("findings") or []
    if findings:
        logged["audit"] = dict_table(wandb, findings)
    run.log(logged)

    # under study/ so that no count hides a table of the same name
    run.summary.update(
        {
            "study/trials": typed.trials,
            "study/nan": typed.nan,
            "study/finite": typed.finite,
            "study/errors": typed.errors,
            "study/outcomes": typed.outcomes,
            "study/top_factor": names[0] if names else None,
            "study/importance": importance,
            "study/audit_findings": len(findings),
            "study/at_risk": len(ranking.get("at_risk") or []),
            # the factors the user's code gave no sign of reading, by name
            "study/ignored": [item["factor"] for item in ranking.get("ignored") or []],
        }
    )
    log_report_artifact(run, study_dir, str(ranking.get("study") or study_dir.name))


ARTIFACT_FILES = "artifact-files"  # beside the run's files/, in the study folder


def log_report_artifact(run, study_dir: Path, study: str) -> bool:
    """The study's ``report.html`` as a version of its ``report-<study>`` artifact.

    The file is copied into the run's own folder first and added from there as is
    (``policy="immutable"``), so the artifact's manifest names a file inside the study
    folder, which ``wandb sync`` of that folder finds, instead of a staged copy under
    ``$WANDB_DATA_DIR``. A later version (after ``nansearch rerun``) gets its own copy.
    """
    import shutil

    import wandb

    report = study_dir / "report.html"
    if not report.is_file():
        return False
    keep = Path(run.dir).resolve().parent / ARTIFACT_FILES
    keep.mkdir(parents=True, exist_ok=True)
    copy = shutil.copyfile(report, keep / "report.html")
    name = re.sub(r"[^\w.-]", "-", study)
    artifact = wandb.Artifact(f"report-{name}", type="report")
    artifact.add_file(str(copy), name="report.html", policy="immutable")
    run.log_artifact(artifact)
    return True


def dict_table(wandb, rows: list[dict[str, Any]]):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return wandb.Table(
        allow_mixed_types=True,
        columns=columns,
        data=[[cell(row.get(key)) for key in columns] for row in rows],
    )


def cell(value: Any) -> Any:
    """A table cell: scalars as they are, anything else as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def scalar_or_flat(value: Any) -> bool:
    scalar = (bool, int, float, str, type(None))
    if isinstance(value, dict):
        return all(isinstance(v, scalar) for v in value.values())
    return isinstance(value, scalar)


def finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
