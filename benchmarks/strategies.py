"""Search strategies against planted causes: how soon the true cause is ranked first.

Five scenarios, each a real NaN mechanism with a known answer (the factor values it
needs), searched among factors that do not matter:

- ``fp16-adam``: pure fp16 weights under AdamW (eps rounds to 0): ``dtype=fp16``.
- ``lr-too-high``: plain SGD diverges to inf, then NaN: ``lr above`` an edge, which is
  lower in bf16 than in fp32. Its truth is measured, not written down
  (:class:`benchmarks.edges.Edge`): every configuration trained on the grid, a cause
  true when its edge is the runs' own within a grid step and each value it names
  moves that edge (``dtype=bf16 with lr above e`` can be true, ``batch=X with lr above
  e`` only if that batch's runs go NaN differently at the edge).
- ``masked-row``: a row that is all padding, under hand-written eager attention that
  masks with -inf (``sweeps/custom_target.py``): ``batch=padded-row``.
- ``labels-ignored``: every label -100, mean loss over no token: ``batch=labels-all-ignored``.
- ``blip2-uninit``: the born-from case, a BLIP-2 checkpoint loaded as OPT with its
  missing weights left uninitialized: ``checkpoint=blip2-full`` with
  ``init=uninitialized-missing``; neither alone.

Three strategies, each judged by what the ranking's conclusions name after a given
number of trials (:meth:`Run.named`), computed by the same analysis code:

- ``nansearch``: the sweep's own phases with their defaults for the budget (cover,
  focus with TPE, the stopping rule, and the confirm and isolate probes, which run as
  soon as a NaN run of a kind nothing explains appears and after the queue), run once
  per budget, since the phases scale with it; a settled run stops short of its budget.
  It is judged by its conclusions: the causes the counts name
  (:func:`nansearch.analysis.causes.find_causes`, probes included, as the ranking counts
  them) and those named by a complete isolation whose failure every fresh seed
  reproduced (the ``isolated-cause`` conclusions). A confirmation or isolation counts
  from the trial count at which its last probe ran, and every probe counts as a trial.
- ``random``: Optuna's ``RandomSampler``.
- ``tpe``: Optuna's ``TPESampler`` with its defaults, maximizing the same score.

Random and TPE run no probes, so the same conclusions name for them exactly the causes
the counts name: they are judged by the counts-based ranking. That is the fair
comparison of what each strategy would tell its user: nansearch's probes are trials
it chose to spend, and are paid for in the same trial count; a strategy without
probes has only its counts to conclude from. A false cause counts against either,
whatever named it.

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

import atexit
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch

from benchmarks._common import (
    REPO,
    RESULTS,
    THREADS_ENV,
    demo_ready,
    describe,
    environment,
    quick,
)
from benchmarks.edges import Edge
from nansearch.analysis.causes import ABOVE, BELOW, EQUALS, Condition, find_causes
from nansearch.analysis.conclusions import conclude
from nansearch.config import SweepConfig, load_config
from nansearch.factors import Factor
from nansearch.search.confirm import Confirmation
from nansearch.search.isolate import Isolation, midpoint
from nansearch.search.phases import run_probes
from nansearch.search.plan import continuous_names
from nansearch.search.queue import suggest
from nansearch.search.study import Search, SweepCallbacks, distributions
from nansearch.search.sweep import prepare
from nansearch.trial.runner import TrialResult

BUDGETS = (20, 50, 100)
LR_GRID = 12
TARGET = 1 / 3  # nansearch's trials to the answer, over random search's
SEEDS_ENV = "NANSEARCH_BENCH_SEEDS"  # seeds per scenario (default 10, 3 with --quick)
SCENARIOS_ENV = "NANSEARCH_SCENARIOS"  # the scenarios to run, comma-separated
# a file for every seed's judged results: two trees that rank alike write the same file
JUDGED_ENV = "NANSEARCH_BENCH_JUDGED"
# worker processes for the scenarios' seeds (default 1: all in this process)
JOBS_ENV = "NANSEARCH_BENCH_JOBS"
# a folder that keeps each configuration's trained outcome for the next run on this
# machine: a second run trains nothing its search asks for again (stale once training
# code or a scenario changes: empty it then)
OUTCOMES_ENV = "NANSEARCH_BENCH_OUTCOMES"
# every (scenario, seed) as it ends, one JSON line each: what a stopped run had done
PARTIAL = RESULTS / "strategies.partial.jsonl"

Truth = Callable[["Named"], bool]


def equals(**values: str) -> Truth:
    def holds(cause: Named) -> bool:
        got = {(c.factor, c.op, str(c.value)) for c in cause.conditions}
        return got == {(k, "=", v) for k, v in values.items()}

    return holds


def above(factor: str, low: float, high: float, **values: str) -> Truth:
    """A range ``factor above x`` with its edge between ``low`` and ``high``, with the
    factor values ``values`` when it needs them too (``lr above 0.3 with dtype=amp-fp16``)."""

    def holds(cause: Named) -> bool:
        ranges = [c for c in cause.conditions if c.op != "="]
        fixed = {(c.factor, str(c.value)) for c in cause.conditions if c.op == "="}
        if len(ranges) != 1 or fixed != {(k, v) for k, v in values.items()}:
            return False
        (c,) = ranges
        return c.factor == factor and c.op == ">=" and low <= c.value <= high

    return holds


@dataclass(frozen=True)
class Scenario:
    name: str
    answer: str
    factors: str  # the sweep file's factors (and optimizer), as YAML
    truth: Truth | None  # the one cause ranked first; None: the scenario plants several
    target: str = "include: [{repo}/configs/opt-target.yaml]"
    planted: tuple[Truth, ...] = ()  # every planted cause (several, or none at all)
    steps: int = 10
    files: Callable[[Path], str] | None = None  # writes data files, returns their YAML

    @property
    def causes(self) -> tuple[Truth, ...]:
        return self.planted or ((self.truth,) if self.truth else ())

    def write(self, folder: Path) -> Path:
        """The scenario as a sweep file, the way a user would write it."""
        path = folder / f"{self.name}.yaml"
        head = self.target.format(repo=REPO)
        extra = self.files(folder) if self.files else ""
        path.write_text(f"{head}\nstudy: '{self.name}'\nsteps: {self.steps}\n{self.factors}{extra}")
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
        "lr above its measured edge, per level where the edge moves (SGD)",
        factors_yaml(lr="{low: 1.0e-2, high: 100.0}", optimizer="sgd"),
        Edge("lr"),  # measured: its edge moves with the dtype
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


DEMO_INITS = (
    "pretrained: {scheme: pretrained}, reinit-normal: {scheme: normal, std: 0.02, "
    "pattern: '.*'}, uninitialized-missing: {scheme: uninitialized-missing}"
)
BOTH = "checkpoint: {levels: {opt-lm: 'demo:opt-lm', blip2-full: 'demo:blip2-full'}}"
RARE = 11  # the one batch file of 16 whose labels are all ignored


def batch_files(folder: Path) -> str:
    """16 batch files of the demo's corpus, as a user saves them; one has every label -100."""
    import torch
    from safetensors.torch import save_file

    from nansearch.corpus import corpus_batch

    lines = []
    for i in range(16):
        ids = corpus_batch(torch.Generator().manual_seed(1000 + i), 8, 32, 512)
        labels = torch.full_like(ids, -100) if i == RARE else ids.clone()
        path = folder / f"batch-{i:02d}.safetensors"
        save_file(
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels},
            str(path),
        )
        lines.append(f"      b{i:02d}: {path}")
    return "    files:\n" + "\n".join(lines) + "\n"


# the new scenarios plant several causes, a rare one, or none; they are judged on
# "trials until every planted cause is named and no false one is"
PLANTED = [
    Scenario(
        "demo-four",
        "dtype=fp16; checkpoint=blip2-full + init=uninitialized-missing; "
        "batch=labels-all-ignored; lr above ~0.3 with dtype=amp-fp16",
        factors_yaml(
            checkpoint=BOTH,
            dtype="fp32, bf16, fp16, amp-fp16, amp-bf16",
            lr="{low: 1.0e-4, high: 1.0}",
            init=DEMO_INITS,
            batch="clean, labels-all-ignored, padded-row, vocab-edge-ids, long-sequence",
        ),
        None,
        planted=(
            equals(dtype="fp16"),
            equals(checkpoint="blip2-full", init="uninitialized-missing"),
            equals(batch="labels-all-ignored"),
            above("lr", 0.03, 1.0, dtype="amp-fp16"),
        ),
        steps=20,
    ),
    Scenario(
        "rare-batch",
        f"batch=b{RARE} (1 of 16 batch files, every label ignored)",
        factors_yaml(batch="b00").replace(
            "  batch: {levels: [b00]}\n", "  batch:\n    levels: [b00]\n"
        ),
        None,
        planted=(equals(batch=f"b{RARE}"),),
        files=batch_files,
    ),
    Scenario(
        "masked",
        "dtype=fp16 (loud) and checkpoint=blip2-full + init=uninitialized-missing",
        factors_yaml(
            checkpoint=BOTH,
            dtype="fp32, bf16, fp16",
            init=f"{INITS}, uninitialized-missing: {{scheme: uninitialized-missing}}",
        ),
        None,
        planted=(
            equals(dtype="fp16"),
            equals(checkpoint="blip2-full", init="uninitialized-missing"),
        ),
    ),
    Scenario(
        "three-way",
        "dtype=fp16 + init=normal-large + batch=padded-row",
        factors_yaml(
            dtype="fp32, bf16, fp16",
            init=f"{INITS}, normal-large: {{scheme: normal, std: 2.0}}",
            batch="clean, padded-row, long-sequence",
            optimizer="sgd",
        ),
        None,
        planted=(equals(dtype="fp16", init="normal-large", batch="padded-row"),),
    ),
    Scenario("null", "no cause", factors_yaml(), None),
]


class Oracle:
    """A trial runner that trains each distinct configuration once and remembers it.

    With ``shared``, a folder that worker processes of one benchmark run share, an
    outcome one of them trained is read back by the others instead of trained again
    (the same outcome: each configuration is trained at seed 0 on one thread)."""

    def __init__(self, cfg: SweepConfig, factors: list[Factor], shared: Path | None = None):
        _, self.runner = prepare(cfg)
        self.factors = factors
        lr = cfg.factors.lr
        step = (math.log(lr.high) - math.log(lr.low)) / (LR_GRID - 1)
        self.grid = [math.exp(math.log(lr.low) + i * step) for i in range(LR_GRID)]
        self.known: dict[tuple, TrialResult] = {}
        self.seconds = 0.0
        self.trained = 0  # configurations this process trained itself
        self.shared = shared

    def snap(self, params: dict[str, Any]) -> dict[str, Any]:
        out = dict(params)
        if "lr" in out:
            out["lr"] = min(self.grid, key=lambda g: abs(math.log(g / out["lr"])))
        return out

    def run(self, params: dict[str, Any], seed: int, steps: int | None = None) -> TrialResult:
        snapped = self.snap(params)
        key = tuple(sorted((k, str(v)) for k, v in snapped.items()))
        if key not in self.known:
            self.known[key] = self._read(key) or self._train(key, snapped)
        return replace(self.known[key], params=dict(params), seed=seed)

    def _file(self, key: tuple) -> Path | None:
        if self.shared is None:
            return None
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
        return self.shared / f"{digest}.pickle"

    def _read(self, key: tuple) -> TrialResult | None:
        path = self._file(key)
        if path is None or not path.is_file():
            return None
        return pickle.loads(path.read_bytes())

    def _train(self, key: tuple, snapped: dict[str, Any]) -> TrialResult:
        start = time.perf_counter()
        result = self.runner.run(snapped, seed=0)
        self.seconds += time.perf_counter() - start
        self.trained += 1
        path = self._file(key)
        if path is not None:  # written whole, then renamed: a reader sees all or nothing
            partial = path.with_suffix(f".{os.getpid()}.partial")
            partial.write_bytes(pickle.dumps(result))
            partial.replace(path)
        return result


@dataclass(frozen=True)
class Named:
    """A cause as a conclusion names it: its conditions, and what named it."""

    conditions: tuple[Condition, ...]
    evidence: tuple[str, ...] = ("counts",)

    @property
    def text(self) -> str:
        return " with ".join(c.text for c in self.conditions)


def as_named(isolation: Isolation) -> Named:
    """The rule an isolation names, as conditions: a range by the side and edge it found."""
    conditions = []
    for name in isolation.minimal:
        if name in isolation.ranges:
            passing, failing = isolation.ranges[name]
            op = ABOVE if failing > passing else BELOW
            conditions.append(Condition(name, op, midpoint(passing, failing)))
        else:
            conditions.append(Condition(name, EQUALS, isolation.failing[name]))
    return Named(tuple(conditions), ("isolation", "confirmation"))


@dataclass
class Run:
    """One strategy's run: its trials in the order they ran and, for nansearch, the
    confirmations and isolations its probes made, each known from the trial count at
    which its last probe had run."""

    results: list[TrialResult]
    confirmations: list[tuple[int, Confirmation]] = field(default_factory=list)
    isolations: list[tuple[int, Isolation]] = field(default_factory=list)
    _named: dict[tuple, list[Named]] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.results)

    def named(self, factors: list[Factor], count: int | None = None) -> list[Named]:
        """The causes the conclusions name after ``count`` trials, in their order: those
        of the counts (:func:`find_causes`), then those named by isolation and
        confirmation (``isolated-cause``) from the probes done by then. A run with no
        probes (random, TPE) is judged by the counts alone: the same code, nothing else."""
        count = len(self.results) if count is None else count
        key = (count, tuple(f.name for f in factors))
        if key not in self._named:  # each count is judged several ways: analysed once
            self._named[key] = self._conclude(factors, count)
        return list(self._named[key])

    def _conclude(self, factors: list[Factor], count: int) -> list[Named]:
        results = self.results[:count]
        causes = find_causes(results, [f.name for f in factors], continuous_names(factors))
        isolations = [i for done, i in self.isolations if done <= count]
        confirmations = [c for done, c in self.confirmations if done <= count]
        if not isolations:
            return [Named(c.conditions) for c in causes]
        out = []
        for item in conclude(results, causes, isolations, confirmations):
            if item.cause is not None:
                out.append(Named(item.cause.conditions, tuple(item.evidence or ())))
            elif item.kind == "isolated-cause" and item.isolation is not None:
                out.append(as_named(item.isolation))
        return out


def top_cause(run: Run, factors: list[Factor], count: int | None = None) -> Named | None:
    """The first cause the conclusions name."""
    named = run.named(factors, count)
    return named[0] if named else None


def right_from(run: Run, factors: list[Factor], truth: Truth) -> int | None:
    """The trial count from which the top cause is the true one, to the end; None if never."""
    first = None
    for count in range(1, len(run) + 1):
        cause = top_cause(run, factors, count)
        ok = cause is not None and truth(cause)
        first = (first or count) if ok else None
    return first


def verdict(
    run: Run, factors: list[Factor], truths: tuple[Truth, ...], count: int | None = None
) -> tuple[bool, int]:
    """Whether every planted cause is named and no false one is, and how many are false."""
    causes = run.named(factors, count)
    false = [c for c in causes if not any(truth(c) for truth in truths)]
    named = all(any(truth(c) for c in causes) for truth in truths)
    return named and not false, len(false)


def named_from(run: Run, factors: list[Factor], truths: tuple[Truth, ...]) -> int | None:
    """The trial count from which every planted cause is named and no false one is, to the
    end; None if never."""
    first = None
    for count in range(1, len(run) + 1):
        ok = verdict(run, factors, truths, count)[0]
        first = (first or count) if ok else None
    return first


def judged_record(run: Run, factors: list[Factor]) -> dict[str, Any]:
    """What the ranking code made of one run, for :data:`JUDGED_ENV`: its trials in order,
    and the causes the conclusions name (with what named each) after every trial count."""
    return {
        "trials": [[r.number, r.phase, r.params, r.outcome, r.first_bad_step] for r in run.results],
        "named": [
            [[n.text, *n.evidence] for n in run.named(factors, count)]
            for count in range(1, len(run) + 1)
        ],
    }


def nansearch_run(cfg: SweepConfig, oracle: Oracle, factors: list[Factor], folder: Path) -> Run:
    """The sweep's search and probes, its trials in the order they ran (the probes it runs
    during the search among them), each confirmation and isolation known from the count
    at which its last probe had run."""
    cfg.out = str(folder)
    search = Search(cfg, factors, oracle, storage=optuna.storages.InMemoryStorage())
    order: list[TrialResult] = []
    heard = SweepCallbacks(on_trial=[order.append])
    search.run(heard)
    probes = run_probes(search, heard)
    at = {r.number: n for n, r in enumerate(order, start=1)}

    def done(origin: int | None, phases: tuple[str, ...]) -> int:
        own = [at[r.number] for r in order if r.phase in phases and r.origin == origin]
        return max([at.get(origin, 0), *own])

    return Run(
        order,
        [(done(c.trial, ("confirm",)), c) for c in probes.confirmations],
        [(done(i.trial, ("confirm", "isolate")), i) for i in probes.isolations],
    )


def baseline_run(
    cfg: SweepConfig, oracle: Oracle, factors: list[Factor], sampler, trials: int
) -> Run:
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
    return Run(results)


def measured(truth: Truth, oracle: Oracle, factors: list[Factor]) -> Truth:
    """A truth ready to judge: a range cause's edge measured on the oracle's runs."""
    return truth.measure(oracle, factors) if isinstance(truth, Edge) else truth


@dataclass
class Setting:
    """One scenario made ready in this process: its sweep file, factors, truths and the
    oracle that trains each configuration once, shared by every seed run here."""

    scenario: Scenario
    sweep: Path
    factors: list[Factor]
    oracle: Oracle
    truths: tuple[Truth, ...]
    folder: Path

    @classmethod
    def make(cls, scenario: Scenario, folder: Path, shared: Path | None = None) -> Setting:
        sweep = scenario.write(folder)
        base = load_config(sweep, ["tracking.wandb=off", f"out={folder}", f"trials={BUDGETS[-1]}"])
        factors, _ = prepare(base)
        oracle = Oracle(base, factors, shared / scenario.name if shared else None)
        if oracle.shared is not None:
            oracle.shared.mkdir(parents=True, exist_ok=True)
        truths = tuple(measured(t, oracle, factors) for t in scenario.causes)
        return cls(scenario, sweep, factors, oracle, truths, folder)

    @property
    def truth(self) -> Truth | None:
        return self.truths[0] if self.scenario.truth is not None else None

    def config(self, *overrides: str) -> SweepConfig:
        return load_config(self.sweep, ["tracking.wandb=off", f"out={self.folder}", *overrides])

    def judged(self, run: Run, count: int | None = None) -> bool:
        if self.truth is not None:
            cause = top_cause(run, self.factors, count)
            return cause is not None and self.truth(cause)
        return verdict(run, self.factors, self.truths, count)[0]


def seed_rows(setting: Setting, seed: int, record: bool) -> dict[str, Any]:
    """Every strategy's run of one seed, judged: the trials to the answer, the false causes
    at the end, which budgets were right, and (``record``) every trial and conclusion."""
    factors, name = setting.factors, setting.scenario.name
    out: dict[str, Any] = {}
    for strategy in ("nansearch", "random", "tpe"):
        judged: dict[str, Any] = {"seed": seed}
        if strategy == "nansearch":
            runs = {
                budget: nansearch_run(
                    setting.config(
                        f"study={name}-{seed}-{budget}", f"trials={budget}", f"seed={seed}"
                    ),
                    setting.oracle,
                    factors,
                    setting.folder,
                )
                for budget in BUDGETS
            }
            full = runs[BUDGETS[-1]]
            right = {b: setting.judged(runs[b]) for b in BUDGETS}
            if record:
                judged.update({f"budget_{b}": judged_record(runs[b], factors) for b in BUDGETS})
        else:
            sampler = (
                optuna.samplers.RandomSampler(seed=seed)
                if strategy == "random"
                else optuna.samplers.TPESampler(seed=seed)
            )
            full = baseline_run(
                setting.config(f"trials={BUDGETS[-1]}"),
                setting.oracle,
                factors,
                sampler,
                BUDGETS[-1],
            )
            right = {b: setting.judged(full, b) for b in BUDGETS}
            if record:
                judged.update(judged_record(full, factors))
        result = {
            "trials_to_first": (
                right_from(full, factors, setting.truth) if setting.truth is not None else None
            ),
            "trials_to_all": named_from(full, factors, setting.truths),
            "false_causes_at_end": verdict(full, factors, setting.truths)[1],
            "trials_run": len(full),
        }
        judged["verdict"] = result
        out[strategy] = {**result, "right": right, "judged": judged if record else None}
    return out


_SETTINGS: dict[str, Setting] = {}  # this process's scenarios, made ready once


def _seed_task(
    task: tuple[str, int, bool, str | None],
) -> tuple[str, int, dict[str, Any], dict[str, Any]]:
    """One (scenario, seed) in a worker process: its rows, and what its oracle has trained."""
    name, seed, record, shared = task
    if name not in _SETTINGS:
        quiet()
        torch.set_num_threads(int(os.environ.get(THREADS_ENV, "1")))  # a worker: as asked
        folder = Path(tempfile.mkdtemp(prefix=f"nansearch-bench-{name}-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _SETTINGS[name] = Setting.make(
            next(s for s in SCENARIOS + PLANTED if s.name == name),
            folder,
            Path(shared) if shared else None,
        )
    setting = _SETTINGS[name]
    before = (setting.oracle.trained, setting.oracle.seconds)
    rows = seed_rows(setting, seed, record)
    trained: dict[str, Any] = {
        "configurations_trained": setting.oracle.trained - before[0],
        "training_seconds": setting.oracle.seconds - before[1],
    }
    edges = [
        t.describe([f.name for f in setting.factors]) for t in setting.truths if isinstance(t, Edge)
    ]
    if edges:
        trained["measured_edges"] = edges
    return name, seed, rows, trained


def scenario_data(
    scenario: Scenario, per_seed: list[dict[str, Any]], trained: list[dict[str, Any]]
) -> dict[str, Any]:
    """The seeds' rows of one scenario gathered, in seed order, as the table reads them."""
    out: dict[str, Any] = {"answer": scenario.answer, "strategies": {}}
    edges = next((t["measured_edges"] for t in trained if "measured_edges" in t), None)
    if edges:
        out["measured_edges"] = edges
    judged: dict[str, list[dict[str, Any]]] = {}
    for strategy in ("nansearch", "random", "tpe"):
        rows = [seed[strategy] for seed in per_seed]
        out["strategies"][strategy] = {
            "trials_to_first": [r["trials_to_first"] for r in rows] if scenario.truth else [],
            "trials_to_all": [r["trials_to_all"] for r in rows],
            "false_causes_at_end": [r["false_causes_at_end"] for r in rows],
            "right": {b: sum(r["right"][b] for r in rows) for b in BUDGETS},
            "trials_run": [r["trials_run"] for r in rows],
        }
        if rows and rows[0]["judged"] is not None:
            judged[strategy] = [r["judged"] for r in rows]
    if judged:
        out["judged"] = judged
    out["configurations_trained"] = sum(t["configurations_trained"] for t in trained)
    out["training_seconds"] = sum(t["training_seconds"] for t in trained)
    return out


def median_first(firsts: list[int | None], cap: int = BUDGETS[-1] + 1) -> float:
    return statistics.median(cap if f is None else f for f in firsts)


def median_all(values: list[int | None]) -> float:
    """The median trials to every planted cause, a run that never got there as the budget."""
    return statistics.median(BUDGETS[-1] if v is None else v for v in values)


def shown(value: float) -> str:
    return f">{BUDGETS[-1]}" if value > BUDGETS[-1] else f"{value:g}"


def chosen() -> list[Scenario]:
    """The scenarios to run: ``NANSEARCH_SCENARIOS`` (names, comma-separated), or all."""
    names = [n for n in os.environ.get(SCENARIOS_ENV, "").split(",") if n]
    every = SCENARIOS + PLANTED
    unknown = [n for n in names if n not in {s.name for s in every}]
    if unknown:
        raise SystemExit(
            f"{SCENARIOS_ENV}: no scenario {', '.join(unknown)}; "
            f"scenarios: {', '.join(s.name for s in every)}"
        )
    by_name = {s.name: s for s in every}
    return [by_name[n] for n in names] if names else every


def spread(values: list[int | None]) -> str:
    known = [v for v in values if v is not None]
    text = f"{min(known)}-{max(known)}" if known else "-"
    never_ = sum(v is None for v in values)
    return text + (f", {never_} never" if never_ else "")


def progress(scenario: Scenario, data: dict[str, Any]) -> None:
    """One line per scenario as it ends, on stderr: a long run shows where it is."""
    key = "trials_to_first" if scenario.truth is not None else "trials_to_all"
    parts = [
        f"{name} {s[key]} false {sum(s['false_causes_at_end'])}"
        for name, s in data["strategies"].items()
    ]
    print(f"{scenario.name}: " + "; ".join(parts), file=sys.stderr, flush=True)


def quiet() -> None:
    from nansearch.startup import quiet_libraries

    quiet_libraries()  # a worker process's too
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("nansearch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_seeds(scenarios: list[Scenario], seeds: int, jobs: int) -> dict[str, Any]:
    """Every scenario's seeds, in this process (one oracle per scenario, shared by its
    seeds) or in ``jobs`` worker processes (one oracle per scenario in each worker: the
    same outcomes, each configuration trained at seed 0 wherever it is first asked for)."""
    record = bool(os.environ.get(JUDGED_ENV))
    shared = os.environ.get(OUTCOMES_ENV) or None
    if shared:
        Path(shared).mkdir(parents=True, exist_ok=True)
    elif jobs > 1:
        shared = tempfile.mkdtemp(prefix="nansearch-bench-outcomes-")
        atexit.register(shutil.rmtree, shared, ignore_errors=True)
    tasks = [(s.name, seed, record, shared) for s in scenarios for seed in range(seeds)]
    if jobs > 1:  # seed by seed: a scenario's first seed trains most of what the others look up
        tasks.sort(key=lambda task: task[1])
    results: dict[str, dict[int, tuple[dict[str, Any], dict[str, Any]]]] = {}
    details: dict[str, Any] = {}

    def take(name: str, seed: int, rows: dict[str, Any], trained: dict[str, Any]) -> None:
        results.setdefault(name, {})[seed] = (rows, trained)
        with PARTIAL.open("a") as out:  # a run stopped before its end keeps what it did
            kept = {k: {**v, "judged": None} for k, v in rows.items()}
            out.write(json.dumps({"scenario": name, "seed": seed, "rows": kept, **trained}) + "\n")
        if len(results[name]) == seeds:
            scenario = next(s for s in scenarios if s.name == name)
            done = [results[name][k] for k in range(seeds)]
            details[name] = scenario_data(scenario, [r for r, _ in done], [t for _, t in done])
            progress(scenario, details[name])

    if jobs <= 1:
        for task in tasks:
            take(*_seed_task(task))
    else:
        import multiprocessing

        # a fresh interpreter per worker: torch's threads do not survive a fork
        pool = multiprocessing.get_context("spawn").Pool(jobs)
        try:
            for item in pool.imap_unordered(_seed_task, tasks):
                take(*item)
        except BaseException:
            pool.terminate()
            pool.join()
            raise
        pool.close()  # the workers end on their own, removing their folders
        pool.join()
    return {s.name: details[s.name] for s in scenarios}


def run() -> str:
    seeds = int(os.environ.get(SEEDS_ENV, "0")) or (3 if quick() else 10)
    jobs = int(os.environ.get(JOBS_ENV, "1"))
    quiet()
    demo_ready()
    start = time.perf_counter()
    scenarios = chosen()
    RESULTS.mkdir(parents=True, exist_ok=True)
    PARTIAL.unlink(missing_ok=True)
    details = run_seeds(scenarios, seeds, jobs)
    judged = {name: data.pop("judged", None) for name, data in details.items()}
    env = environment()
    lines = [
        "Strategies: trials until the true cause is ranked first for good (single causes),",
        f"  or until every planted cause is named and no false one is (the others); {seeds} seeds",
        f"  {describe(env)}{'; quick run' if quick() else ''}",
        f"  {'scenario':<16}{'strategy':<11}{'trials (median, range)':<26}"
        + "".join(f"{'@' + str(b):>7}" for b in BUDGETS)
        + f"{'trials run':>12}{'false':>7}",
    ]
    verdicts: list[tuple[str, float | None, bool]] = []
    for scenario in scenarios:
        name, data = scenario.name, details[scenario.name]
        single = scenario.truth is not None
        key = "trials_to_first" if single else "trials_to_all"
        for strategy, s in data["strategies"].items():
            values = s[key]
            at = "".join(f"{s['right'][b]:>4}/{seeds:<2}" for b in BUDGETS)
            used = statistics.median(s["trials_run"])
            false = sum(s["false_causes_at_end"])
            head = name if strategy == "nansearch" else ""
            median = median_first(values) if single else median_all(values)
            lines.append(
                f"  {head:<16}{strategy:<11}{shown(median) + ' (' + spread(values) + ')':<26}"
                f"{at}{used:>10g}{false:>7}"
            )
        ours_s, theirs_s = data["strategies"]["nansearch"], data["strategies"]["random"]
        if single:
            ours, theirs = median_first(ours_s[key]), median_first(theirs_s[key])
            target, word = 1.0, "no worse than today"
        else:
            ours, theirs = median_all(ours_s[key]), median_all(theirs_s[key])
            target, word = TARGET, "a third"
        all_seeds = ours_s["right"][BUDGETS[-1]] == seeds
        if scenario.causes:
            ratio = ours / theirs
            verdicts.append((name, ratio, all_seeds))
            lines.append(
                f"  {'':<16}nansearch / random: {ratio:.2f} (target <= {target:.2f}, {word}: "
                f"{'holds' if ratio <= target else 'FAILS'}); right at {BUDGETS[-1]} in every "
                f"seed: {'yes' if all_seeds else 'NO'}; answer: {data['answer']}"
            )
        else:
            clean = sum(f == 0 for f in ours_s["false_causes_at_end"])
            verdicts.append((name, None, clean == seeds))
            lines.append(
                f"  {'':<16}nansearch names no cause in {clean}/{seeds} seeds (target "
                f"{seeds}/{seeds}: {'holds' if clean == seeds else 'FAILS'})"
            )
    lines += [
        "  'trials run': what a 100-trial budget spent (nansearch stops once settled); 'false':",
        "  causes named that were not planted, at the end of each run, summed over the seeds.",
        "  A run that never gets there counts as the budget (100) in the medians of the",
        "  planted scenarios and as >100 in those of the single causes.",
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
    judged_path = os.environ.get(JUDGED_ENV)
    if judged_path:
        every = {
            name: {"answer": d["answer"], "seeds": seeds, "strategies": judged[name]}
            for name, d in details.items()
        }
        Path(judged_path).write_text(json.dumps(every, indent=1, sort_keys=True) + "\n")
        lines.append(f"  every seed's judged results written to {judged_path}")
    return "\n".join(lines)
