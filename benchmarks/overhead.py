"""Step overhead: the trial runner's training loop against the same steps as a bare loop.

Both sides train a fresh copy of the same checkpoint, shaped by the trial's factors
(``TrialRunner.prepare``, not timed), on the same batch for the same steps, from the same
seed. The bare side is a plain PyTorch loop; the instrumented side is the runner's
``train`` with its detection on (the max |logit|, loss, gradient and parameter norms,
read back to the host together once per step) and no tracking. Both clocks include
moving the model to the device and building the optimizer. The two alternate, round
after round; the figure is the median of the per-round ratios.

CPU: fp32, an OPT of about 10M parameters. With one torch thread (the benchmarks'
default) the clock is the process's CPU time, which holds within a few percent on a
shared machine; with more, wall time.
GPU, when there is one: fp16 autocast with a GradScaler, an OPT of about 100M
parameters, at least 50 steps, in wall time (the bare loop waits for the device at its
end; the runner waits once per step, which is what is measured).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._common import Row, alternate, bare_train, quick, ratio_row, report, summarize
from nansearch.config import load_config
from nansearch.factors import TrialSetup, build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import TrialResult, TrialRunner, train

TARGET = 1.05
# OPT sizes: 10.3M and 98M parameters (embeddings tied to the output layer)
CPU_MODEL = dict(vocab_size=8192, hidden_size=384, num_hidden_layers=4, ffn_dim=1536)
GPU_MODEL = dict(vocab_size=16384, hidden_size=768, num_hidden_layers=12, ffn_dim=3072)


def build_checkpoint(folder: Path, size: dict[str, int], positions: int) -> int:
    """Save a seeded OPT of ``size`` with ``save_pretrained``; its parameter count."""
    from transformers import OPTForCausalLM

    from nansearch.demo import opt_config

    config = opt_config(
        **size,
        num_attention_heads=size["hidden_size"] // 64,
        word_embed_proj_dim=size["hidden_size"],
        max_position_embeddings=positions,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = OPTForCausalLM(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


@dataclass
class Case:
    device: str
    size: dict[str, int]
    dtype: str
    steps: int
    rounds: int
    batch: tuple[int, int]  # rows, tokens per row
    clock: Callable[[], float] = time.perf_counter


def measure(case: Case) -> tuple[Row, dict]:
    batch_size, seq_len = case.batch
    with tempfile.TemporaryDirectory() as tmp:
        count = build_checkpoint(Path(tmp) / "opt", case.size, positions=seq_len)
        cfg = load_config(
            None,
            [
                f"factors.checkpoint.levels.bench={Path(tmp) / 'opt'}",
                "target.model_class=OPTForCausalLM",
                f"target.batch_size={batch_size}",
                f"target.seq_len={seq_len}",
                f"device={case.device}",
                "tracking.wandb=off",
            ],
        )
        runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
        params = {
            "checkpoint": "bench",
            "dtype": case.dtype,
            "lr": 1e-4,
            "init": "pretrained",
            "batch": "clean",
        }
        forked = [runner.device.index or 0] if runner.device.type == "cuda" else []

        def prepared() -> TrialSetup:
            with torch.random.fork_rng(devices=forked):
                torch.manual_seed(0)
                return runner.prepare(params, seed=0)

        def bare() -> float:
            setup = prepared()
            start = case.clock()
            bare_train(setup, case.steps, runner.device, cfg.optimizer)
            return case.clock() - start

        def instrumented() -> float:
            setup, result = prepared(), TrialResult(params, seed=0, steps=case.steps)
            start = case.clock()
            train(setup, result, case.steps, cfg.optimizer, runner.device)
            seconds = case.clock() - start
            if result.outcome != "finite" or len(result.loss) != case.steps:
                raise RuntimeError(f"the benchmark trial must stay finite: {result.outcome}")
            return seconds

        alternate(bare, instrumented, 2)  # warm-up: first-call costs on both sides
        pairs = alternate(bare, instrumented, case.rounds)
    bare_s = summarize([b for b, _ in pairs])[0]
    run_s = summarize([x for _, x in pairs])[0]
    clock = "CPU time" if case.clock is time.process_time else "wall time"
    note = (
        f"per step: bare {1000 * bare_s / case.steps:.1f} ms, runner "
        f"{1000 * run_s / case.steps:.1f} ms ({clock}); batch {batch_size}x{seq_len}; "
        f"{case.rounds} rounds"
    )
    name = f"{case.device} {case.dtype}, OPT {count / 1e6:.1f}M params, {case.steps} steps"
    row = ratio_row(name, [x / b for b, x in pairs], TARGET, note)
    return row, {"params": count, "clock": clock, "pairs_seconds": pairs}


def run() -> str:
    short = quick()
    single = torch.get_num_threads() == 1
    clock = time.process_time if single else time.perf_counter
    cpu = Case("cpu", CPU_MODEL, "fp32", 5, 6 if short else 16, (8, 64), clock)
    rows, details = [], {}
    row, details["cpu"] = measure(cpu)
    rows.append(row)
    if torch.cuda.is_available():
        gpu = Case("cuda", GPU_MODEL, "amp-fp16", 60, 3 if short else 7, (16, 512))
        row, details["gpu"] = measure(gpu)
        rows.append(row)
    else:
        rows.append(
            Row(
                "cuda amp-fp16, OPT ~100M params, 60 steps",
                None,
                TARGET,
                note="no CUDA device on this machine",
            )
        )
    notes = [
        "ratio: the runner's train loop (detection on, tracking off) / the same steps as a",
        "bare PyTorch loop, on fresh copies of the same model and batch; median of rounds",
    ]
    return report("overhead", "Step overhead: trial runner vs bare loop", rows, notes, details)
