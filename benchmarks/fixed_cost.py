"""Fixed cost per trial against the training time of a 50-step demo trial.

What every trial pays besides its steps: the checkpoint copy and the factors that shape
it (``TrialRunner.prepare``), the optimizer, and its W&B run, offline. A sweep hands
the run to the tracker's own thread (``nansearch.tracking.background.Background``), which writes
it while the next trial trains: the trial pays the hand-over, and the target applies
to these. A second row writes the run in line instead (started, its 50 steps of history
logged, finished, as ``WandbTracker.log_trial`` does), which is what the trial would
pay with no spare core for that thread. What a worker pays once: the process, its
imports, the config, reading each checkpoint, the study, warming up the first step;
measured as the wall time of a one-trial, one-step ``nansearch sweep`` and shown spread
over the demo's trial budget, since a worker lives across trials. The whole sweep,
process included, has its own target in ``sweep_floor``.

The trial is the demo's fastest: ``opt-lm`` in fp32 on the clean batch, so the fixed
costs weigh the most; the half-precision levels are several times slower per step on a
CPU.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import (
    DEMO,
    bare_train,
    demo_ready,
    isolated_env,
    quick,
    ratio_row,
    report,
    run_command,
    summarize,
    timed,
    tracking_note,
    wandb_inside,
    worker_start,
)
from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.tracking.tracker import Background, WandbTracker
from nansearch.trial.runner import TrialResult, TrialRunner, make_optimizer

TARGET = 0.10
STEPS = 50
TRIAL = {
    "checkpoint": "opt-lm",
    "dtype": "fp32",
    "lr": 1e-3,
    "init": "pretrained",
    "batch": "clean",
}


def import_floor(folder: Path) -> float:
    """Wall seconds of a process that only imports torch and the demo's model class."""
    code = "import torch, transformers; from transformers import OPTForCausalLM"
    return run_command([sys.executable, "-c", code], isolated_env(folder), folder)


def trial_result(number: int) -> TrialResult:
    """A finished 50-step trial as the tracker receives it."""
    result = TrialResult(params=dict(TRIAL), seed=number, steps=STEPS, number=number)
    result.loss = [2.0] * STEPS
    result.logit_absmax = [9.0] * STEPS
    result.grad_norm = [1.0] * STEPS
    result.score = 0.1
    return result


def trackers(folder: Path) -> tuple[WandbTracker, Background]:
    """W&B offline as a sweep tracks it (runs handed to the tracker's thread), and as
    the same tracker writes a run in line."""
    cfg = load_config(DEMO, ["study=bench", "tracking.wandb=offline", f"out={folder}"])
    inline = WandbTracker("offline", cfg.study_dir)
    inline.start(cfg)
    background = Background(WandbTracker("offline", cfg.study_dir))
    background.start(cfg)
    return inline, background


def wandb_runs(inline: WandbTracker, background: Background, number: int) -> tuple[float, float]:
    """Seconds one trial's W&B run costs the trial: handed over, and written in line."""
    handed = timed(lambda: background.log_trial(trial_result(number)))
    background.wait()  # the thread writes the run outside both clocks
    written = timed(lambda: inline.log_trial(trial_result(number)))
    return handed, written


def run() -> str:
    rounds = 3 if quick() else 7
    demo_ready()
    cfg = load_config(DEMO, ["tracking.wandb=off"])
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    device = runner.device
    parts: dict[str, list[float]] = {
        key: [] for key in ("copy", "optimizer", "wandb", "wandb_inline", "train", "worker")
    }
    with tempfile.TemporaryDirectory() as tmp, wandb_inside(Path(tmp)):
        folder = Path(tmp)
        inline, background = trackers(folder)
        wandb_runs(inline, background, -1)  # the first run also starts W&B's service
        runner.run(TRIAL, seed=0, steps=2)  # reads the checkpoint, warms up the kernels
        for i in range(rounds):
            with torch.random.fork_rng():
                torch.manual_seed(i)
                start = time.perf_counter()
                setup = runner.prepare(TRIAL, seed=i)
                parts["copy"].append(time.perf_counter() - start)
                params = [p for p in setup.model.parameters() if p.requires_grad]
                parts["optimizer"].append(
                    timed(lambda p=params, s=setup: make_optimizer(p, s.lr, cfg.optimizer))
                )
                parts["train"].append(
                    timed(lambda s=setup: bare_train(s, STEPS, device, cfg.optimizer))
                )
            handed, written = wandb_runs(inline, background, i)
            parts["wandb"].append(handed)
            parts["wandb_inline"].append(written)
            parts["worker"].append(worker_start(folder, f"start{i}"))
        background.close()
        floor_s = import_floor(folder)
    budget = load_config(DEMO).trials

    def share(*keys: str, every: int = 1) -> list[float]:
        """Per round: the parts named, over that round's training time."""
        columns = zip(*(parts[k] for k in keys), parts["train"], strict=True)
        return [sum(values[:-1]) / every / values[-1] for values in columns]

    each = ("copy", "optimizer", "wandb")
    amortized = share("worker", every=budget)
    rows = [
        ratio_row("checkpoint copy + factors", share("copy")),
        ratio_row("optimizer build", share("optimizer")),
        ratio_row("W&B run, handed to the tracker's thread", share("wandb")),
        ratio_row("W&B run, written in line (offline)", share("wandb_inline")),
        ratio_row("fixed cost of every trial", share(*each), TARGET),
        ratio_row(
            "the same, W&B run written in line", share("copy", "optimizer", "wandb_inline"), TARGET
        ),
        ratio_row(f"worker start, spread over {budget} trials", amortized),
        ratio_row(
            "both together",
            [a + b for a, b in zip(share(*each), amortized, strict=True)],
        ),
    ]
    median = {key: summarize(values)[0] for key, values in parts.items()}
    notes = [
        f"denominator: {STEPS} steps of the demo trial {TRIAL} as a bare loop, "
        f"median {median['train']:.3f} s",
        f"every trial: copy + factors {1000 * median['copy']:.1f} ms, optimizer "
        f"{1000 * median['optimizer']:.2f} ms, W&B run handed over "
        f"{1000 * median['wandb']:.2f} ms (written by the thread meanwhile, "
        f"{1000 * median['wandb_inline']:.1f} ms in line)",
        f"worker start, once per worker: {median['worker']:.2f} s (a 1-trial, 1-step sweep "
        f"in a fresh process), of which {floor_s:.2f} s is a bare process importing torch "
        f"and transformers; spread over the demo's budget of {budget} trials",
        tracking_note(),
    ]
    details = {"seconds": parts, "import_floor": floor_s}
    title = "Fixed cost per trial vs a 50-step demo trial"
    return report("fixed_cost", title, rows, notes, details)
