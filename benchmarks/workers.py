"""Trial throughput with several workers sharing one study, against one worker.

The same sweep (every trial finite, so each runs all its steps) runs with 1 and with 2
worker processes on the CPU, and, when a GPU is visible, with 1 and 4 workers sharing
it. Throughput is trials per second from the first trial taken to the last one recorded,
read from the study, so process start-up is left out (each worker's first trial still
reads the checkpoint); the wall time, start-up included, is shown beside it. Rounds alternate the settings, and the
table gives the ratio to one worker measured in the same round.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna

from nansearch.config import load_config
from nansearch.search.storage import open_storage
from nansearch.search.sweep import run_sweep

ROUNDS = 2
SWEEP = """
study: {study}
out: {out}
trials: {trials}
steps: {steps}
device: {device}
tracking: {{wandb: "off"}}
target: {{kind: causal-lm, model_class: OPTForCausalLM, batch_size: 8, seq_len: 32}}
factors:
  checkpoint: {{levels: {{opt-lm: "demo:opt-lm"}}}}
  dtype: {{levels: [fp32]}}
  lr: {{low: 1.0e-4, high: 1.0e-3}}
  batch: {{levels: [clean]}}
"""


@dataclass(frozen=True)
class Setting:
    label: str
    workers: int
    threads: int | None = None  # torch threads of a one-worker sweep; None: torch's default


@dataclass
class Measure:
    trials_per_s: float
    wall_s: float


@contextmanager
def quiet():
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        root.setLevel(level)
        hf_logging.enable_progress_bar()


@contextmanager
def torch_threads(count: int | None):
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def one_gpu():
    """Workers all pinned to the first visible GPU, sharing it."""
    from nansearch.search.workers import visible_gpus

    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpus("cuda")[0]
    try:
        yield
    finally:
        if before is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def measure(folder: Path, setting: Setting, device: str, trials: int, steps: int) -> Measure:
    study = f"w{setting.workers}-{device}-{time.monotonic_ns()}"
    path = folder / f"{study}.yaml"
    path.write_text(
        SWEEP.format(study=study, out=folder, trials=trials, steps=steps, device=device)
    )
    cfg = load_config(path, [f"workers={setting.workers}"])
    start = time.perf_counter()
    with torch_threads(setting.threads):
        outcome = run_sweep(cfg)
    wall = time.perf_counter() - start
    if not outcome.complete:
        raise RuntimeError(f"{study}: {len(outcome.results)} of {trials} trials recorded")
    timed = optuna.load_study(study_name=study, storage=open_storage(None, outcome.study_dir))
    done = timed.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    return Measure(len(done) / (last - first).total_seconds(), wall)


def compare(device: str, settings: list[Setting], trials: int, steps: int) -> list[str]:
    """One row per setting, its throughput as a ratio to the first's in the same round."""
    rounds: dict[Setting, list[Measure]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory(prefix="nansearch-bench-workers-") as tmp, quiet():
        for _ in range(ROUNDS):
            for setting in settings:
                rounds[setting].append(measure(Path(tmp), setting, device, trials, steps))
    base = rounds[settings[0]]
    rows = []
    for setting in settings:
        ratios = [
            m.trials_per_s / b.trials_per_s for b, m in zip(base, rounds[setting], strict=True)
        ]
        rate = statistics.median(m.trials_per_s for m in rounds[setting])
        wall = statistics.median(m.wall_s for m in rounds[setting])
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        rows.append(f"{device:<6} {setting.label:<26} {rate:>9.2f} {wall:>8.1f}  {ratio}")
    return rows


def threads(count: int) -> str:
    return f"{count} thread{'s' if count > 1 else ''}"


def run() -> str:
    import torch

    from nansearch.search.workers import cpu_cores

    trials, steps = 8, 20
    cores = cpu_cores()
    lines = [
        "workers: trial throughput sharing one study (journal storage), "
        f"{trials} trials x {steps} steps, median of {ROUNDS} rounds",
        f"{'device':<6} {'setting':<26} {'trials/s':>9} {'wall s':>8}  ratio to the first row",
    ]
    lines += compare(
        "cpu",
        [
            Setting(f"1 worker ({threads(torch.get_num_threads())})", 1),
            Setting("1 worker (1 thread)", 1, threads=1),
            Setting(f"2 workers ({threads(max(1, cores // 2))} each)", 2),
        ],
        trials,
        steps,
    )
    if torch.cuda.is_available():
        with one_gpu():
            lines += compare(
                "cuda", [Setting("1 worker", 1), Setting("4 workers on one GPU", 4)], trials, steps
            )
    else:
        lines.append("cuda   not measured: no GPU visible (1 vs 4 workers sharing one GPU)")
    lines.append(f"cpu cores: {cores}; 1-minute load average at the end: {os.getloadavg()[0]:.1f}")
    return "\n".join(lines)
