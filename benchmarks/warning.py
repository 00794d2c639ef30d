"""The early warning against what really happens: predict from the short trial, run long.

Each configuration below is a real mechanism whose NaN can come after the trial's
steps. It is run for the trial's ``STEPS`` steps, its trail forecast
(:func:`nansearch.analysis.warning.forecast`), then run again for the horizon, ten
times as long, with the same seed; the long run says whether and when it really fails.
Each seed builds its own model and batch.
Configurations that already fail within the trial's steps are NaN trials, not
forecasts, and are counted apart.

- ``lm-amp-fp16``: a token MLP language model trained by AdamW at high learning rates
  under amp-fp16 (fp16 autocast with a GradScaler).
- ``lm-bf16``: the same at high learning rates under amp-bf16, and plain SGD in bf16.
- ``growing-residual``: the same residual MLP, no normalization, regressing toward
  targets in the units the data came in (up to 1e4): the gradients grow past what
  fp16 holds at any loss scale, and the residual stream grows toward the targets.
- ``sgd-edge``: plain SGD in fp32 on that regression, at learning rates around the
  edge past which it diverges.

The figures, with the issue's targets:

- recall: of the configurations that fail within the horizon (and not within the
  trial), the share flagged at risk (>= 0.80);
- precision: of those flagged, the share that really fails within the horizon (>= 0.80);
- step: of those flagged that fail, the share whose predicted step is within a factor
  of 2 of the real first bad step (>= 0.70).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

from benchmarks._common import REPO, RESULTS, describe, environment, quick
from nansearch.analysis.warning import forecast
from nansearch.config import load_config
from nansearch.search.sweep import prepare

STEPS = 20
HORIZON = 10 * STEPS
TARGETS = {"recall": 0.8, "precision": 0.8, "step": 0.7}
LATE = f"{REPO}/benchmarks/late_target.py:build"
BASE = {"checkpoint": "fresh", "batch": "clean", "init": "pretrained"}


@dataclass(frozen=True)
class Mechanism:
    name: str
    what: str
    overrides: tuple[str, ...]
    configs: tuple[tuple[str, float], ...]  # (dtype, lr)


MECHANISMS = [
    Mechanism(
        "lm-amp-fp16",
        "AdamW, high lr, amp-fp16 (language model)",
        ("optimizer.name=adamw",),
        tuple(("amp-fp16", lr) for lr in (0.03, 0.1, 0.3, 1.0)),
    ),
    Mechanism(
        "lm-bf16",
        "AdamW high lr under amp-bf16; SGD in bf16 (language model)",
        ("optimizer.name=adamw",),
        tuple(("amp-bf16", lr) for lr in (0.3, 1.0, 3.0)),
    ),
    Mechanism(
        "lm-bf16-sgd",
        "plain SGD in bf16 near its edge (language model)",
        ("optimizer.name=sgd",),
        tuple(("bf16", lr) for lr in (2.0, 2.5, 2.8)),
    ),
    Mechanism(
        "growing-residual",
        "regression to unnormalized targets (1e4), AdamW, amp-fp16",
        ("optimizer.name=adamw", "target.options.target_scale=1e4"),
        tuple(("amp-fp16", lr) for lr in (0.0003, 0.001, 0.003, 0.01, 0.03)),
    ),
    Mechanism(
        "sgd-edge",
        "regression to unnormalized targets (1e3), plain SGD, fp32",
        ("optimizer.name=sgd", "target.options.target_scale=1e3"),
        tuple(("fp32", lr) for lr in (1e-5, 2e-5, 3e-5, 4e-5, 6e-5)),
    ),
]


def runner_for(mechanism: Mechanism, seed: int):
    cfg = load_config(
        REPO / "sweeps" / "custom.yaml",
        [
            f"target.fn={LATE}",
            "tracking.wandb=off",
            f"steps={STEPS}",
            "factors.dtype.levels=[fp32,bf16,amp-bf16,amp-fp16]",
            "factors.lr.low=1e-9",
            "factors.lr.high=100.0",
            f"target.options.seed={seed}",  # the model's init and its batch
            *mechanism.overrides,
        ],
    )
    return prepare(cfg)[1]


def measure(mechanism: Mechanism, seeds: int) -> list[dict[str, Any]]:
    rows = []
    for seed in range(seeds):
        runner = runner_for(mechanism, seed)
        for dtype, lr in mechanism.configs:
            params = {**BASE, "dtype": dtype, "lr": lr}
            short = runner.run(params, seed=seed, steps=STEPS)
            row: dict[str, Any] = {"mechanism": mechanism.name, "dtype": dtype, "lr": lr}
            row["seed"] = seed
            if short.outcome != "finite":
                row.update(kind="trial-nan" if short.is_nan else "error")
                rows.append(row)
                continue
            predicted = forecast(short, HORIZON)
            long = runner.run(params, seed=seed, steps=HORIZON)
            row.update(
                kind="forecast",
                flagged=predicted.at_risk,
                predicted_step=predicted.predicted_step,
                signal=predicted.signal,
                trend=predicted.trend,
                fails=long.is_nan,
                first_bad_step=long.first_bad_step,
                outcome=long.outcome,
            )
            rows.append(row)
    return rows


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cases = [r for r in rows if r["kind"] == "forecast"]
    fails = [r for r in cases if r["fails"]]
    flagged = [r for r in cases if r["flagged"]]
    hits = [r for r in flagged if r["fails"]]
    close = [r for r in hits if within_2x(r["predicted_step"], r["first_bad_step"])]
    return {
        "cases": len(cases),
        "trial_nan": sum(r["kind"] == "trial-nan" for r in rows),
        "fail": len(fails),
        "flagged": len(flagged),
        "hits": len(hits),
        "close": len(close),
        "recall": len(hits) / len(fails) if fails else None,
        "precision": len(hits) / len(flagged) if flagged else None,
        "step": len(close) / len(hits) if hits else None,
    }


def within_2x(predicted: int, real: int) -> bool:
    real = max(real, 1)
    return real / 2 <= predicted <= 2 * real


def shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run() -> str:
    seeds = 1 if quick() else 3
    logging.getLogger("nansearch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    per: dict[str, dict[str, Any]] = {}
    for mechanism in MECHANISMS:
        found = measure(mechanism, seeds)
        rows += found
        per[mechanism.name] = figures(found)
    total = figures(rows)
    env = environment()
    lines = [
        f"Early warning: forecast from {STEPS} steps, checked by running {HORIZON} "
        f"(the horizon), {seeds} seed(s) per configuration",
        f"  {describe(env)}{'; quick run' if quick() else ''}",
        f"  {'mechanism':<18}{'finite':>7}{'fail':>6}{'flagged':>9}{'right':>7}"
        f"{'recall':>8}{'precision':>11}{'step<=2x':>10}   trial-NaN",
    ]
    for name, f in [*per.items(), ("all", total)]:
        lines.append(
            f"  {name:<18}{f['cases']:>7}{f['fail']:>6}{f['flagged']:>9}{f['hits']:>7}"
            f"{shown(f['recall']):>8}{shown(f['precision']):>11}{shown(f['step']):>10}"
            f"   {f['trial_nan']}"
        )
    for key, target in TARGETS.items():
        value = total[key]
        verdict = "not measured" if value is None else ("holds" if value >= target else "FAILS")
        lines.append(f"  {key}: {shown(value)} (target >= {target:.2f}: {verdict})")
    lines.append("  missed or wrong, with the real outcome:")
    for r in rows:
        if r["kind"] != "forecast" or r["flagged"] == r["fails"]:
            if r["kind"] == "forecast" and r["flagged"] and r["fails"]:
                if within_2x(r["predicted_step"], r["first_bad_step"]):
                    continue
            else:
                continue
        lines.append(
            f"    {r['mechanism']} {r['dtype']} lr={r['lr']:g} seed {r['seed']}: "
            f"predicted {r['predicted_step']} ({r['signal']}, {r['trend']}), "
            f"real {r['first_bad_step']} ({r['outcome']})"
        )
    lines.append(f"  whole benchmark {time.perf_counter() - start:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "warning.json"
    record = {"suite": "warning", "quick": quick(), "seeds": seeds, "environment": env,
              "steps": STEPS, "horizon": HORIZON, "figures": total, "per_mechanism": per,
              "rows": rows}  # fmt: skip
    path.write_text(json.dumps(record, indent=2) + "\n")
    lines.append(f"  written to {path}")
    return "\n".join(lines)
