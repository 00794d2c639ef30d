"""Search strategies against planted causes: how soon the true cause is ranked first.

Five scenarios, each a real NaN mechanism with a known answer (the factor values it
needs), searched among factors that do not matter:

- ``fp16-adam``: pure fp16 weights under AdamW (eps rounds to 0): ``dtype=fp16``.
- ``lr-too-high``: plain SGD in fp32 diverges to inf, then NaN: ``lr above`` an edge.
- ``masked-row``: a row that is all padding, under hand-written eager attention that
  masks with -inf (``sweeps/custom_target.py``): ``batch=padded-row``.
- ``labels-ignored``: every label -100, mean loss over no token: ``batch=labels-all-ignored``.
- ``blip2-uninit``: the born-from case, a BLIP-2 checkpoint loaded as OPT with its
  missing weights left uninitialized: ``checkpoint=blip2-full`` with
  ``init=uninitialized-missing``; neither alone.

Three strategies, ranked by the same code (the first cause of
:func:`nansearch.analysis.causes.find_causes`, which the ranking's first conclusion states):

- ``nansearch``: the sweep's own phases with their defaults for the budget (cover,
  focus with TPE, confirm, isolate, the stopping rule), run once per budget, since the
  phases scale with it; a settled run stops short of its budget.
- ``random``: Optuna's ``RandomSampler``.
- ``tpe``: Optuna's ``TPESampler`` with its defaults, maximizing the same score.

Each configuration's outcome is a real training run (the demo OPT, or the custom
target's tiny GPT), run once at seed 0 the first time any strategy asks for it and
looked up after that; the learning rate is snapped to a grid of ``LR_GRID`` log-spaced
values for the lookup. Reruns therefore agree with the first run: the benchmark
measures the search, not the flakiness.

"Trials to first, for good" is the first trial count from which the top cause is the
true one at every later count of the 100-trial run (and at its end); ``>100`` when it
never is. The ratio row compares the medians of nansearch and random.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from benchmarks._common import REPO, RESULTS, demo_ready, describe, environment, quick
from nansearch.analysis.causes import Cause, find_causes
from nansearch.config import SweepConfig, load_config
from nansearch.factors import Factor
from nansearch.search.phases import continuous_names, run_probes
from nansearch.search.queue import suggest
from nansearch.search.study import Search, distributions, recorded
from nansearch.search.sweep import prepare
from nansearch.trial.runner import TrialResult

BUDGETS = (20, 50, 100)
LR_GRID = 12
TARGET = 1 / 3  # nansearch's trials to the answer, over random search's

Truth = Callable[[Cause], bool]


def equals(**values: str) -> Truth:
    def holds(cause: Cause) -> bool:
        got = {(c.factor, c.op, str(c.value)) for c in cause.conditions}
        return got == {(k, "=", v) for k, v in values.items()}

    return holds


def above(factor: str, low: float, high: float) -> Truth:
    """A range ``factor above x`` with its edge between ``low`` and ``high``."""

    def holds(cause: Cause) -> bool:
        (c, *rest) = cause.conditions
        return not rest and c.factor == factor and c.op == ">=" and low <= c.value <= high

    return holds


@dataclass(frozen=True)
class Scenario:
    name: str
    answer: str
    factors: str  # the sweep file's factors (and optimizer), as YAML
    truth: Truth
    target: str = "include: [{repo}/configs/opt-target.yaml]"

    def write(self, folder: Path) -> Path:
        """The scenario as a sweep file, the way a user would write it."""
        path = folder / f"{self.name}.yaml"
        head = self.target.format(repo=REPO)
        path.write_text(f"{head}\nstudy: {self.name}\nsteps: 10\n{self.factors}")
        return path


OPT_ONLY = "checkpoint: {levels: {opt-lm: 'demo:opt-lm'}}"
INITS = "pretrained: {scheme: pretrained}, reinit-normal: {scheme: normal, std: 0.02}"
BATCHES = "clean, vocab-edge-ids, long-sequence"


def factors_yaml(
    checkpoint: str = OPT_ONLY,
    dtype: str = "fp32, bf16",
    lr: str = "{low: 1.0e-4, high: 1.0e-2}",
    init: str = INITS,
    batch: str = BATCHES,
    optimizer: str = "adamw",
) -> str:
    return (
        f"optimizer: {{name: {optimizer}}}\nfactors:\n  {checkpoint}\n"
        f"  dtype: {{levels: [{dtype}]}}\n  lr: {lr}\n  init: {{levels: {{{init}}}}}\n"
        f"  batch: {{levels: [{batch}]}}\n"
    )


SCENARIOS = [
    Scenario(
        "fp16-adam",
        "dtype=fp16",
        factors_yaml(dtype="fp32, bf16, fp16"),
        equals(dtype="fp16"),
    ),
    Scenario(
        "lr-too-high",
        "lr above ~2 (SGD)",
        factors_yaml(lr="{low: 1.0e-2, high: 100.0}", optimizer="sgd"),
        above("lr", 0.3, 100.0),  # its edge moves with the init and the dtype
    ),
    Scenario(
        "masked-row",
        "batch=padded-row",
        "factors:\n  checkpoint: {levels: {fresh: fresh}}\n  dtype: {levels: [fp32, bf16]}\n"
        "  lr: {low: 1.0e-4, high: 1.0e-2}\n  batch: {levels: [clean, padded-row]}\n",
        equals(batch="padded-row"),
        target="target: {{kind: custom, fn: '{repo}/sweeps/custom_target.py:build', "
        "options: {{batch_size: 4}}}}",
    ),
    Scenario(
        "labels-ignored",
        "batch=labels-all-ignored",
        factors_yaml(batch=f"{BATCHES}, labels-all-ignored"),
        equals(batch="labels-all-ignored"),
    ),
    Scenario(
        "blip2-uninit",
        "checkpoint=blip2-full + init=uninitialized-missing",
        factors_yaml(
            checkpoint="checkpoint: {levels: {opt-lm: 'demo:opt-lm', blip2-full: 'demo:blip2-full'}}",
            init=f"{INITS}, uninitialized-missing: {{scheme: uninitialized-missing}}",
        ),
        equals(checkpoint="blip2-full", init="uninitialized-missing"),
    ),
]


class Oracle:
    """A trial runner that trains each distinct configuration once and remembers it."""

    def __init__(self, cfg: SweepConfig, factors: list[Factor]):
        _, self.runner = prepare(cfg)
        self.factors = factors
        lr = cfg.factors.lr
        step = (math.log(lr.high) - math.log(lr.low)) / (LR_GRID - 1)
        self.grid = [math.exp(math.log(lr.low) + i * step) for i in range(LR_GRID)]
        self.known: dict[tuple, TrialResult] = {}
        self.seconds = 0.0

    def snap(self, params: dict[str, Any]) -> dict[str, Any]:
        out = dict(params)
        if "lr" in out:
            out["lr"] = min(self.grid, key=lambda g: abs(math.log(g / out["lr"])))
        return out

    def run(self, params: dict[str, Any], seed: int, steps: int | None = None) -> TrialResult:
        snapped = self.snap(params)
        key = tuple(sorted((k, str(v)) for k, v in snapped.items()))
        if key not in self.known:
            start = time.perf_counter()
            self.known[key] = self.runner.run(snapped, seed=0)
            self.seconds += time.perf_counter() - start
        return replace(self.known[key], params=dict(params), seed=seed)


def top_cause(results: list[TrialResult], factors: list[Factor]) -> Cause | None:
    causes = find_causes(results, [f.name for f in factors], continuous_names(factors))
    return causes[0] if causes else None


def right_from(results: list[TrialResult], factors: list[Factor], truth: Truth) -> int | None:
    """The trial count from which the top cause is the true one, to the end; None if never."""
    first = None
    for count in range(1, len(results) + 1):
        cause = top_cause(results[:count], factors)
        ok = cause is not None and truth(cause)
        first = (first or count) if ok else None
    return first


def nansearch_run(cfg: SweepConfig, oracle: Oracle, factors: list[Factor], folder: Path):
    cfg.out = str(folder)
    search = Search(cfg, factors, oracle, storage=optuna.storages.InMemoryStorage())
    search.run()
    run_probes(search)
    return recorded(search.study)


def baseline_run(cfg: SweepConfig, oracle: Oracle, factors: list[Factor], sampler, trials: int):
    dists = distributions(factors)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    results: list[TrialResult] = []

    def objective(trial: optuna.Trial) -> float:
        params = {name: suggest(trial, name, dist) for name, dist in dists.items()}
        result = oracle.run(params, seed=trial.number)
        result.number = trial.number
        results.append(result)
        if result.score is None:
            raise optuna.TrialPruned()  # an error: neither NaN nor finite
        return result.score

    study.optimize(objective, n_trials=trials)
    return results


def scenario_rows(scenario: Scenario, seeds: int, folder: Path) -> dict[str, Any]:
    sweep = scenario.write(folder)
    common = ["tracking.wandb=off", f"out={folder}"]
    base = load_config(sweep, [*common, f"trials={BUDGETS[-1]}"])
    factors, _ = prepare(base)
    oracle = Oracle(base, factors)
    out: dict[str, Any] = {"answer": scenario.answer, "strategies": {}}
    for strategy in ("nansearch", "random", "tpe"):
        firsts, right = [], {b: 0 for b in BUDGETS}
        used = []
        for seed in range(seeds):
            if strategy == "nansearch":
                runs = {}
                for budget in BUDGETS:
                    cfg = load_config(
                        sweep,
                        [
                            *common,
                            f"study={scenario.name}-{seed}-{budget}",
                            f"trials={budget}",
                            f"seed={seed}",
                        ],
                    )
                    runs[budget] = nansearch_run(cfg, oracle, factors, folder)
                full = runs[BUDGETS[-1]]
                for budget in BUDGETS:
                    cause = top_cause(runs[budget], factors)
                    right[budget] += cause is not None and scenario.truth(cause)
            else:
                sampler = (
                    optuna.samplers.RandomSampler(seed=seed)
                    if strategy == "random"
                    else optuna.samplers.TPESampler(seed=seed)
                )
                full = baseline_run(base, oracle, factors, sampler, BUDGETS[-1])
                for budget in BUDGETS:
                    cause = top_cause(full[:budget], factors)
                    right[budget] += cause is not None and scenario.truth(cause)
            firsts.append(right_from(full, factors, scenario.truth))
            used.append(len(full))
        out["strategies"][strategy] = {
            "trials_to_first": firsts,
            "right": right,
            "trials_run": used,
        }
    out["configurations_trained"] = len(oracle.known)
    out["training_seconds"] = oracle.seconds
    return out


def median_first(firsts: list[int | None], cap: int = BUDGETS[-1] + 1) -> float:
    return statistics.median(cap if f is None else f for f in firsts)


def shown(value: float) -> str:
    return f">{BUDGETS[-1]}" if value > BUDGETS[-1] else f"{value:g}"


def run() -> str:
    seeds = 3 if quick() else 10
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("nansearch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    demo_ready()
    start = time.perf_counter()
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in SCENARIOS:
            details[scenario.name] = scenario_rows(scenario, seeds, Path(tmp))
    env = environment()
    lines = [
        f"Strategies: trials until the true cause is ranked first for good, {seeds} seeds",
        f"  {describe(env)}{'; quick run' if quick() else ''}",
        f"  {'scenario':<16}{'strategy':<11}{'to first (median, range)':<26}"
        + "".join(f"{'@' + str(b):>7}" for b in BUDGETS)
        + f"{'trials run':>12}",
    ]
    verdicts = []
    for name, data in details.items():
        for strategy, s in data["strategies"].items():
            firsts = s["trials_to_first"]
            known = [f for f in firsts if f is not None]
            spread = f"{min(known)}-{max(known)}" if known else "-"
            never_ = sum(f is None for f in firsts)
            spread += f", {never_} never" if never_ else ""
            at = "".join(f"{s['right'][b]:>4}/{seeds:<2}" for b in BUDGETS)
            used = statistics.median(s["trials_run"])
            head = name if strategy == "nansearch" else ""
            lines.append(
                f"  {head:<16}{strategy:<11}{shown(median_first(firsts)) + ' (' + spread + ')':<26}"
                f"{at}{used:>10g}"
            )
        ours = median_first(data["strategies"]["nansearch"]["trials_to_first"])
        theirs = median_first(data["strategies"]["random"]["trials_to_first"])
        ratio = ours / theirs
        at50 = data["strategies"]["nansearch"]["right"][50] == seeds
        verdicts.append((name, ratio, at50))
        lines.append(
            f"  {'':<16}nansearch / random: {ratio:.2f} (target <= {TARGET:.2f}: "
            f"{'holds' if ratio <= TARGET else 'FAILS'}); right at 50 in every seed: "
            f"{'yes' if at50 else 'NO'}; answer: {data['answer']}"
        )
    fewest = min(
        f
        for data in details.values()
        for s in data["strategies"].values()
        for f in s["trials_to_first"]
        if f is not None
    )
    lines += [
        f"  fewest trials to the answer, any strategy, any seed: {fewest}. The ranking names a",
        "  cause only once it is significant after its multiple-testing correction (3 NaN runs",
        "  at least, about 12 runs in all), which bounds every strategy alike; where the cause",
        "  is a third to a sixth of the space, random search is already near that bound.",
        "  'trials run': what a 100-trial budget spent (nansearch stops once settled).",
    ]
    lines.append(
        f"  outcomes: {sum(d['configurations_trained'] for d in details.values())} real "
        f"training runs, {sum(d['training_seconds'] for d in details.values()):.0f} s; "
        f"whole benchmark {time.perf_counter() - start:.0f} s"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "strategies.json"
    record = {"suite": "strategies", "quick": quick(), "seeds": seeds, "environment": env,
              "verdicts": verdicts, "details": details}  # fmt: skip
    path.write_text(json.dumps(record, indent=2) + "\n")
    lines.append(f"  written to {path}")
    return "\n".join(lines)
