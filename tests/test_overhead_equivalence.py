"""The runner's cheap detection finds what a plain loop checking every tensor finds.

The runner learns that a step went non-finite from a few reductions read back to the
host together, once per step (the max |logit|, the loss, the gradient and parameter
norms, and the loss scale under amp-fp16). Here a plain loop written out with the
obvious checks (``torch.isfinite`` on the logits, the loss, every gradient and every
parameter, each read on its own) trains the same trial; on CPU both must agree on the
outcome, the first bad step, the skipped steps, the score, and every per-step loss and
max |logit| bit for bit.
"""

import json
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from nansearch.config import OptimizerConfig, load_config
from nansearch.factors import TrialSetup, build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import TrialResult, TrialRunner, instability_score, train
from tests.conftest import DEMO, demo_overrides

STEPS = 16  # amp-fp16 at lr 1 goes NaN by step 5 to 7, by the CPU's kernels
SMALL = ["target.batch_size=2", "target.seq_len=16"]  # fp16 math is slow on a CPU
BASE = {"checkpoint": "opt-lm", "dtype": "fp32", "lr": 1e-3, "init": "pretrained", "batch": "clean"}

NONE = range(1)
# name: (trial values, sweep overrides, the outcome its mechanism gives, steps skipped)
CASES = {
    "fp32-finite": ({}, (), "finite", NONE),
    "fp16-adam-eps": ({"dtype": "fp16"}, (), "nonfinite-params", NONE),
    "labels-all-ignored": ({"batch": "labels-all-ignored"}, (), "nonfinite-loss", NONE),
    "blip2-full-uninitialized-missing": (
        {"checkpoint": "blip2-full", "init": "uninitialized-missing"},
        (),
        "nonfinite-logits",
        NONE,
    ),
    # the GradScaler skips the first overflowing steps (3 to 5 halvings of the scale,
    # by the CPU's kernels), then an update at lr 1 makes the forward overflow
    "amp-fp16-high-lr": ({"dtype": "amp-fp16", "lr": 1.0}, (), "nonfinite-logits", range(1, 10)),
    # a loss-scale floor at the initial scale makes the first overflow a failure
    "amp-fp16-scale-floor": (
        {"dtype": "amp-fp16", "lr": 1.0},
        ("optimizer.min_loss_scale=65536",),
        "nonfinite-grad",
        NONE,
    ),
}

_runners: dict[tuple[str, ...], TrialRunner] = {}


def runner_for(overrides: tuple[str, ...]) -> TrialRunner:
    if overrides not in _runners:
        cfg = load_config(DEMO, [f"steps={STEPS}", "device=cpu", *SMALL, *overrides])
        _runners[overrides] = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    return _runners[overrides]


def plain_loop(setup: TrialSetup, steps: int, opt_cfg: OptimizerConfig) -> TrialResult:
    """The trial as a plain loop that checks every tensor, one read at a time."""
    model = setup.model
    model.train()
    pure = setup.autocast_dtype is None
    batch = {
        key: value.to(setup.param_dtype) if value.is_floating_point() and pure else value
        for key, value in setup.batch.items()
    }
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=setup.lr, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay
    )
    scaler = torch.amp.GradScaler("cpu") if setup.grad_scaler else None
    autocast = (
        torch.autocast("cpu", dtype=setup.autocast_dtype) if setup.autocast_dtype else nullcontext()
    )
    compute = str(setup.autocast_dtype or setup.param_dtype).removeprefix("torch.")
    result = TrialResult(params={}, seed=0, steps=steps, compute_dtype=compute)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(**batch)
        scale = scaler.get_scale() if scaler else None
        (scaler.scale(out.loss) if scaler else out.loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        grads_finite = all(bool(torch.isfinite(g).all()) for g in grads)
        norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        result.loss.append(out.loss.item())
        result.logit_absmax.append(out.logits.abs().max().item())
        result.grad_norm.append(torch.linalg.vector_norm(norms).item())

        bad = None
        if not bool(torch.isfinite(out.logits).all()):
            bad = "nonfinite-logits"
        elif not bool(torch.isfinite(out.loss)):
            bad = "nonfinite-loss"
        elif not grads_finite:
            if scaler is None or scale <= opt_cfg.min_loss_scale:
                bad = "nonfinite-grad"
            else:
                result.skipped_steps += 1
        if bad is None and not all(bool(torch.isfinite(p).all()) for p in params):
            bad = "nonfinite-params"
        if bad:
            result.outcome, result.first_bad_step = bad, step
            break
    result.score = instability_score(result)
    return result


def same(a: list[float], b: list[float]) -> bool:
    """Equal lists of floats, NaN equal to NaN."""
    if len(a) != len(b):
        return False
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_runner_and_plain_loop_agree(name):
    values, overrides, expected, skipped = CASES[name]
    runner = runner_for(overrides)
    params = {**BASE, **values}
    got = runner.run(params, seed=5)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        want = plain_loop(runner.prepare(params, seed=5), STEPS, runner.cfg.optimizer)

    assert got.outcome == want.outcome == expected, got.error
    assert got.first_bad_step == want.first_bad_step
    assert got.skipped_steps == want.skipped_steps and got.skipped_steps in skipped
    assert got.score == want.score
    assert same(got.loss, want.loss)
    assert same(got.logit_absmax, want.logit_absmax)
    for a, b in zip(got.grad_norm, want.grad_norm, strict=True):
        assert math.isclose(a, b, rel_tol=1e-5) or not (math.isfinite(a) or math.isfinite(b))


def test_benchmark_bare_loop_trains_exactly_what_the_runner_trains():
    from benchmarks._common import bare_train

    runner = runner_for(())
    params = {**BASE, "lr": 1e-2}
    trained = []
    for loop in ("runner", "bare"):
        with torch.random.fork_rng():
            torch.manual_seed(3)
            setup = runner.prepare(params, seed=3)
            if loop == "runner":
                train(setup, TrialResult(params, 3, 4), 4, runner.cfg.optimizer, runner.device)
            else:
                bare_train(setup, 4, runner.device, runner.cfg.optimizer)
            trained.append(setup.model.state_dict())
    assert trained[0].keys() == trained[1].keys()
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    first = runner.prepare(params, seed=3).model.state_dict()
    assert not all(torch.equal(first[k], trained[0][k]) for k in first)


def sweep_trials(study: str) -> list[dict]:
    """A study's trials as ``trials.jsonl`` holds them, less their clock."""
    lines = (Path("runs") / study / "trials.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_a_sweep_with_w_and_b_on_its_thread_records_what_a_bare_one_records():
    """What makes a whole sweep cheaper leaves its trials alone: the command line (imports
    uncollected, the collector frozen) with its W&B runs written by the tracker's thread
    records the trials a sweep without W&B records, outcome, first bad step, score and
    per-step trail, with the same trials chosen by the sampler after the cover."""
    from nansearch.cli.main import main
    from nansearch.cli.sweep import sweep

    small = demo_overrides(trials=8, steps=3) + SMALL
    # as in a fresh process: the weights a checkpoint lacks are initialized when it is
    # first read, from torch's global generator
    torch.manual_seed(0)
    sweep(DEMO, [*small, "study=bare"])
    torch.manual_seed(0)
    assert main(["sweep", DEMO, *small, "study=tracked", "tracking.wandb=offline"]) == 0
    bare, tracked = sweep_trials("bare"), sweep_trials("tracked")
    assert [t["number"] for t in tracked] == list(range(8))
    assert tracked == bare
    assert {t["outcome"] for t in bare} & {"nonfinite-params", "nonfinite-loss"}
    runs = list((Path("runs") / "tracked" / "wandb").glob("offline-run-*"))
    assert len(runs) == 8 + 1  # every trial's run and the analysis run
