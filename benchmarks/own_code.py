"""Your own training code as the trial: what watching it costs, and what a script trial costs.

- ``watch``: the example own loop (``examples/own_loop.py``'s loop: zero_grad, forward,
  backward, AdamW step) with ``trial.watch(model, optimizer)`` against the same loop
  unwatched, on fresh copies of the same 10M-parameter OPT and batch as the ``overhead``
  suite, alternated round after round, CPU time with one thread.
- ``inject``: a plain script's training loop run as ``python -m nansearch.inject``
  (torch's global hooks, the per-step check) against the same script run plainly; the
  script times its own steps (after the model is loaded), so the figure is per step.
- ``command``: a command trial (``examples/train.py``, forked from the sweep's process, or
  a fresh interpreter) against the same configuration as a function trial
  (``examples/own_loop.py``), end to end in CPU time, the trial's process and its child
  together (one torch thread each); the difference is the command trial's fixed cost.
  Judged over the demo: the configurations its sweep's cover queues (every pair of levels
  of ``sweeps/demo.yaml``'s factors, 26 of them), each run once a side per round, a NaN
  run ending at its first bad step on both; shown on the demo's fastest configuration
  (opt-lm, fp32, clean), where the fixed cost weighs most, and where it is judged.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from optuna.distributions import CategoricalDistribution

from benchmarks._common import (
    DEMO,
    DIE_WITH_PARENT,
    REPO,
    Row,
    alternate,
    demo_ready,
    quick,
    ratio_row,
    report,
    summarize,
)
from benchmarks.overhead import CPU_MODEL, build_checkpoint
from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.search import pairwise
from nansearch.search.plan import plan
from nansearch.targets import build_target
from nansearch.trial.api import Trial
from nansearch.trial.runner import TrialResult, TrialRunner

WATCH_TARGET = 1.05
FIXED_TARGET_S = 0.5
END_TO_END_TARGET = 1.3
PARAMS = {
    "checkpoint": "bench",
    "dtype": "fp32",
    "lr": 1e-4,
    "init": "pretrained",
    "batch": "clean",
}

SCRIPT = """
import json, sys, time
import torch
from transformers import OPTForCausalLM

model = OPTForCausalLM.from_pretrained(sys.argv[1]).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
g = torch.Generator().manual_seed(0)
ids = 4 + torch.randint(0, 256, (8, 64), generator=g)
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
steps = int(sys.argv[2])
for step in range(steps + 2):
    if step == 2:  # the first steps warm up, on both sides
        start = time.process_time()
    optimizer.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    optimizer.step()
print(json.dumps({"seconds": time.process_time() - start}))
"""


def own_loop(model, optimizer, batch, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        optimizer.step()


def watch_row(folder: Path, rounds: int, steps: int) -> tuple[Row, dict]:
    count = build_checkpoint(folder / "opt", CPU_MODEL, positions=64)
    cfg = load_config(
        None,
        [
            f"factors.checkpoint.levels.bench={folder / 'opt'}",
            "target.model_class=OPTForCausalLM",
            "target.batch_size=8",
            "target.seq_len=64",
            "device=cpu",
            "tracking.wandb=off",
        ],
    )
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))

    def trial() -> Trial:
        return Trial(
            params=PARAMS,
            seed=0,
            steps=steps + 1,  # never ends the loop: both sides run the same steps
            factors=runner.factors,
            target=runner.target,
            cache=runner.cache,
            device=runner.device,
            result=TrialResult(PARAMS, seed=0, steps=steps + 1),
        )

    def side(watched: bool) -> float:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            t = trial()
            model = t.load()
            batch = t.batch()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        if watched:
            t.watch(model, optimizer)
        start = time.process_time()
        own_loop(model, optimizer, batch, steps)
        seconds = time.process_time() - start
        t.close()
        if watched and (len(t.check.result.loss) != steps or t.check.ended is not None):
            raise RuntimeError("the watched benchmark loop must stay finite and be seen")
        return seconds

    alternate(lambda: side(False), lambda: side(True), 2)
    return watched_vs_bare(
        f"watch: trial.watch vs the same loop unwatched, OPT {count / 1e6:.1f}M, {steps} steps",
        side,
        rounds,
        lambda bare_s, watched_s: (
            f"per step: unwatched {1000 * bare_s / steps:.1f} ms, watched "
            f"{1000 * watched_s / steps:.1f} ms (CPU time); batch 8x64; {rounds} rounds"
        ),
    )


def inject_row(folder: Path, rounds: int, steps: int) -> tuple[Row, dict]:
    script = folder / "plain_train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env["NANSEARCH_INJECT"] = json.dumps({"report": str(folder / "report.jsonl"), "steps": 10**9})
    args = [str(script), str(folder / "opt"), str(steps)]

    def side(watched: bool) -> float:
        prefix = [sys.executable, "-m", "nansearch.inject"] if watched else [sys.executable]
        done = subprocess.run(
            prefix + args,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=folder,
            preexec_fn=DIE_WITH_PARENT,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]

    return watched_vs_bare(
        f"inject: python -m nansearch.inject script.py vs python script.py, {steps} steps",
        side,
        rounds,
        lambda bare_s, watched_s: (
            f"per step: plain {1000 * bare_s / steps:.1f} ms, injected "
            f"{1000 * watched_s / steps:.1f} ms (CPU time, the script's own clock); {rounds} rounds"
        ),
    )


def watched_vs_bare(
    name: str, side: Callable[[bool], float], rounds: int, note: Callable[[float, float], str]
) -> tuple[Row, dict]:
    """``rounds`` alternated runs of ``side`` unwatched and watched, as a ratio row; ``note``
    words the median seconds of each side."""
    pairs = alternate(lambda: side(False), lambda: side(True), rounds)
    bare_s, watched_s = (summarize([p[i] for p in pairs])[0] for i in (0, 1))
    ratios = [w / b for b, w in pairs]
    return ratio_row(name, ratios, WATCH_TARGET, note(bare_s, watched_s)), {"pairs": pairs}


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended: a trial's whole cost,
    which a busy machine stretches in wall time but not in CPU time."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def demo_configurations(short: bool) -> list[dict[str, Any]]:
    """The configurations the demo sweep's cover queues (``sweeps/demo.yaml``'s factors and
    seed: every pair of levels); ``short``: its first ones, up to every level of each
    factor (:func:`every_level`)."""
    cfg = load_config(DEMO, ["tracking.wandb=off"])
    factors = build_factors(cfg)
    rows = pairwise.cover_plan(factors, plan(cfg, factors).cover, cfg.seed)
    return every_level(rows, factors) if short else rows


def every_level(rows: list[dict[str, Any]], factors: list[Any]) -> list[dict[str, Any]]:
    """The first of ``rows`` that together hold every level of every categorical factor (a
    range has no levels to hold); all of them when they never do."""
    missing = {
        (f.name, level)
        for f in factors
        if isinstance(f.distribution(), CategoricalDistribution)
        for level in f.distribution().choices
    }
    for count, row in enumerate(rows, 1):
        missing -= set(row.items())
        if not missing:
            return rows[:count]
    return rows


def command_rows(
    rounds: int, steps: int, demo: list[dict[str, Any]], demo_rounds: int
) -> tuple[list[Row], dict]:
    demo_ready()
    params = {**PARAMS, "checkpoint": "opt-lm"}
    runners = {}
    for name, overrides in [
        ("function", ["target.kind=function", f"target.fn={REPO}/examples/own_loop.py:train"]),
        (
            "fork",
            [
                f"target.program={REPO}/examples/train.py",
                f"target.config={REPO}/examples/train.yaml",
            ],
        ),
        (
            "spawn",
            [
                f"target.program={REPO}/examples/train.py",
                f"target.config={REPO}/examples/train.yaml",
                "target.start=spawn",
            ],
        ),
    ]:
        sweep = REPO / "sweeps" / ("own_loop.yaml" if name == "function" else "script.yaml")
        cfg = load_config(sweep, [f"steps={steps}", "tracking.wandb=off", *overrides])
        runners[name] = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))

    def run(name: str, config: dict[str, Any]) -> tuple[float, TrialResult]:
        start = cpu_seconds()
        result = runners[name].run(config, seed=0)
        return cpu_seconds() - start, result

    def timed(name: str) -> float:
        seconds, result = run(name, params)
        if result.outcome != "finite" or len(result.loss) != steps:
            raise RuntimeError(f"{name}: the benchmark trial must stay finite: {result.error}")
        return seconds

    for name in runners:
        timed(name)  # reads the checkpoint, warms up
    demo_judged, demo_details = demo_row(run, demo, demo_rounds, steps)
    fork_pairs = alternate(lambda: timed("function"), lambda: timed("fork"), rounds)
    spawn_pairs = alternate(lambda: timed("function"), lambda: timed("spawn"), max(2, rounds // 2))
    function_s = summarize([f for f, _ in fork_pairs])[0]
    rows = [demo_judged]
    for label, pairs in [("fork (default)", fork_pairs), ("spawn", spawn_pairs)]:
        command_s = summarize([c for _, c in pairs])[0]
        fixed = summarize([c - f for f, c in pairs])
        rows.append(
            ratio_row(
                f"command trial, {label}, vs function trial: the demo's fastest configuration, "
                f"{steps} steps (its worst case)",
                [c / f for f, c in pairs],
                None,
                f"end to end: function {function_s:.2f} s, command {command_s:.2f} s; fixed cost "
                f"per command trial {fixed[0]:.2f} s ({fixed[1][0]:.2f}-{fixed[1][1]:.2f})",
            )
        )
        if pairs is fork_pairs:
            rows.append(
                Row(
                    "fixed cost per command trial (s, command less function): the demo's fastest",
                    fixed[0],
                    FIXED_TARGET_S,
                    fixed[1],
                    f"{len(pairs)} rounds",
                )
            )
    return rows, {"demo": demo_details, "fork": fork_pairs, "spawn": spawn_pairs}


def demo_row(
    run: Callable[[str, dict[str, Any]], tuple[float, TrialResult]],
    demo: list[dict[str, Any]],
    rounds: int,
    steps: int,
) -> tuple[Row, dict]:
    """Each of ``demo``'s configurations as a function trial and as a forked command trial,
    the side that goes first alternating; the ratio of the two sides' summed CPU time per
    round. The two must agree on each configuration's outcome, finite or NaN; the row names
    those that do not."""
    sums, records, differ = [], [], {}
    for n in range(rounds):
        totals = {"function": 0.0, "fork": 0.0}
        for i, config in enumerate(demo):
            outcomes = {}
            for name in ("function", "fork") if (i + n) % 2 == 0 else ("fork", "function"):
                seconds, result = run(name, config)
                totals[name] += seconds
                outcomes[name] = "NaN" if result.is_nan else result.outcome
                records.append(
                    {
                        "round": n,
                        "config": config,
                        "side": name,
                        "seconds": seconds,
                        "outcome": result.outcome,
                        "steps": len(result.loss),
                    }
                )
            if outcomes["function"] != outcomes["fork"]:
                differ[i] = outcomes
        sums.append((totals["function"], totals["fork"]))
    fixed = summarize([(c - f) / len(demo) for f, c in sums])
    ended = sum(r["outcome"] != "finite" for r in records[: 2 * len(demo)] if r["side"] == "fork")
    disagree = (
        "; outcomes differ: "
        + ", ".join(
            f"{'/'.join(str(v) for k, v in demo[i].items() if k != 'lr')} (function "
            f"{o['function']}, command {o['fork']})"
            for i, o in differ.items()
        )
        if differ
        else "; every configuration's outcome the same on both sides"
    )
    function_s, command_s = (summarize([s[k] for s in sums])[0] for k in (0, 1))
    row = ratio_row(
        f"command trial vs function trial end to end over the demo: its cover's "
        f"{len(demo)} configurations, {steps} steps or to the first NaN",
        [c / f for f, c in sums],
        END_TO_END_TARGET,
        f"summed: function {function_s:.1f} s, command {command_s:.1f} s; {ended} of "
        f"{len(demo)} end early, not finite; fixed cost per command trial {fixed[0]:.2f} s "
        f"({fixed[1][0]:.2f}-{fixed[1][1]:.2f}); rounds: {rounds}{disagree}",
    )
    return row, {"sums": sums, "runs": records}


def run() -> str:
    short = quick()
    rows, details = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        row, details["watch"] = watch_row(folder, 4 if short else 12, 5)
        rows.append(row)
        # each round starts both scripts afresh, and one process of the same script can
        # fault several times as many pages a step as the next (10% of its step time):
        # as many rounds as the watch row, so that the median holds still
        row, details["inject"] = inject_row(folder, 3 if short else 12, 5)
        rows.append(row)
    command, details["command"] = command_rows(
        3 if short else 8, 20, demo_configurations(short), 1 if short else 2
    )
    rows += command
    notes = [
        "ratio: watched / unwatched per step (watch, inject); command / function trial end",
        "to end (command; over the demo, their summed time); the fixed cost in seconds;",
        "median of alternated rounds, lowest and highest in brackets",
    ]
    return report(
        "own_code", "Your own code as the trial: watch and start costs", rows, notes, details
    )
