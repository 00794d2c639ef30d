"""A whole sweep against its floor: the bare training time of the same trials.

The sweep is the demo, ``nansearch sweep sweeps/demo.yaml``, in a process of its own
with W&B offline, timed from process start to exit: imports, checkpoint reads, the
study, every trial, the ranking and the files it writes. Its floor is the training
those trials did: each trial's model and batch as its factors shaped them, trained by
a bare loop for as many steps as the trial ran (to its first bad step when it stopped
there), timed in this process after a warm-up. Sweep and floor alternate over the
rounds.

The target row runs the demo's 60 trials at 50 steps each (``steps=50``), a sweep
bound by its training as a user's sweep is: ``make sweep`` runs 20 steps, and then most
of its trials stop at their first or second step, so its 60 trials hold only about 14 s
of training, against which the process start alone (importing torch and transformers,
about 3 s) is a fifth. That sweep, as ``make sweep`` runs it, has its own row, one round
and no target. (``--quick``: 20 trials of 10 steps, one round, the target row only.)

A row takes out the worker start, which a sweep pays once whatever its length (a
one-trial, one-step sweep, timed in each round), and the notes say how much training a
sweep needs for the whole ratio to meet the target.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import (
    DEMO,
    bare_train,
    demo_ready,
    isolated_env,
    nansearch_command,
    quick,
    ratio_row,
    report,
    run_command,
    summarize,
    tracking_note,
    wandb_mode,
    worker_start,
)
from nansearch.config import SweepConfig, load_config
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import TrialRunner

TARGET = 1.15


def sweep(folder: Path, study: str, overrides: list[str]) -> tuple[float, list[dict]]:
    """Wall seconds of the sweep, and its trials as ``trials.jsonl`` records them."""
    cmd = nansearch_command("sweep", str(DEMO), f"study={study}", *overrides)
    seconds = run_command(cmd, isolated_env(folder), folder)
    lines = (folder / "runs" / study / "trials.jsonl").read_text().splitlines()
    return seconds, [json.loads(line) for line in lines]


def floor(runner: TrialRunner, cfg: SweepConfig, trials: list[dict], most: int = 0) -> float:
    """Seconds of bare training for the steps ``trials`` ran (at ``most`` each, if set)."""
    total = 0.0
    for trial in trials:
        steps = len(trial["loss"]) if trial["outcome"] != "error" else 1
        steps = min(steps, most) if most else steps
        with torch.random.fork_rng():
            torch.manual_seed(trial["seed"])
            setup = runner.prepare(trial["params"], trial["seed"])
            start = time.perf_counter()
            with contextlib.suppress(Exception):  # the trial raised too, at its first step
                bare_train(setup, steps, runner.device, cfg.optimizer)
            total += time.perf_counter() - start
    return total


STEPS = 50  # per trial in the target row's sweep


def measure(trials: int, steps: int, rounds: int, start: bool = True) -> list[dict[str, float]]:
    """Per round: the sweep's wall seconds, its trials' own seconds, the bare training of
    the same trials and (with ``start``) the worker start; sweep and floor alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        overrides = [
            f"trials={trials}",
            f"steps={steps}",
            "out=runs",
            f"tracking.wandb={wandb_mode()}",
        ]
        cfg = load_config(DEMO, overrides)
        runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
        seen, recorded = [], []
        for i in range(rounds):
            if i % 2 == 0:
                wall, recorded = sweep(folder, f"floor{i}", overrides)
                if i == 0:
                    floor(runner, cfg, recorded, most=1)  # warm-up: every dtype and shape
                bare = floor(runner, cfg, recorded)
            else:
                bare = floor(runner, cfg, recorded)
                wall, recorded = sweep(folder, f"floor{i}", overrides)
            ran = sum(len(t["loss"]) for t in recorded)
            nan = sum(t["outcome"].startswith("nonfinite") for t in recorded)
            inside = sum(t["seconds"] for t in recorded)
            seen.append({"bare": bare, "wall": wall, "trials": inside, "steps": ran, "nan": nan})
            if start:
                seen[-1]["start"] = worker_start(folder, f"start{i}")
    return seen


def run() -> str:
    demo = load_config(DEMO)  # in full, the sweep `make sweep` runs
    trials, steps, rounds = (20, 10, 1) if quick() else (demo.trials, STEPS, 2)
    demo_ready()
    seen = measure(trials, steps, rounds)
    median = {key: summarize([r[key] for r in seen])[0] for key in seen[0]}
    steady = [(r["wall"] - r["start"]) / r["bare"] for r in seen]
    rows = [
        ratio_row(
            f"demo sweep, {trials} trials x {steps} steps, wall / bare training",
            [r["wall"] / r["bare"] for r in seen],
            TARGET,
        ),
        ratio_row("the same less the worker start", steady),
    ]
    notes = [
        f"sweep wall {median['wall']:.1f} s, of which its trials {median['trials']:.1f} s "
        f"(copy, factors and steps, by their own clock); bare training of the same {trials} "
        f"trials {median['bare']:.1f} s ({seen[-1]['steps']} steps; {seen[-1]['nan']} trials "
        "stopped at a non-finite value)",
        f"worker start {median['start']:.1f} s (a 1-trial, 1-step sweep), paid once: "
        + break_even(median["start"], summarize(steady)[0]),
    ]
    details = {"rounds_seconds": seen, "trials": trials, "steps": steps}
    if not quick():
        short = measure(demo.trials, demo.steps, 1, start=False)
        rows.append(
            ratio_row(
                f"make sweep as is, {demo.trials} trials x {demo.steps} steps, no target",
                [r["wall"] / r["bare"] for r in short],
            )
        )
        notes.append(
            f"make sweep as is: wall {short[0]['wall']:.1f} s, bare training "
            f"{short[0]['bare']:.1f} s ({short[0]['steps']} steps), one round"
        )
        details["make_sweep_seconds"] = short
    notes.append(f"{rounds} round(s), sweep and floor alternating; {tracking_note()}")
    title = "Whole sweep vs bare training of its trials"
    return report("sweep_floor", title, rows, notes, details)


def break_even(start: float, steady: float) -> str:
    """How much training a sweep needs for its whole ratio to meet the target."""
    if steady >= TARGET:
        return "the trials alone already exceed the target"
    return (
        f"a sweep of {start / (TARGET - steady):.0f} s of training or more meets {TARGET} with it"
    )
