"""Each level does what it claims, on the real demo checkpoints."""

import math

import pytest
import torch

from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import TrialRunner, make_optimizer
from tests.conftest import DEMO

BASE = {"checkpoint": "opt-lm", "dtype": "fp32", "lr": 1e-3, "init": "pretrained", "batch": "clean"}


@pytest.fixture(scope="module")
def runner():
    cfg = load_config(
        DEMO,
        [
            "factors.batch.levels=[clean,labels-all-ignored,truncated-answers,padded-row,"
            "nan-input,vocab-edge-ids,long-sequence,out-of-range-ids]"
        ],
    )
    return TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))


def setup_for(runner, **change):
    return runner.prepare({**BASE, **change}, seed=0)


@pytest.mark.parametrize(
    "level,param_dtype,autocast,scaler",
    [
        ("fp32", torch.float32, None, False),
        ("bf16", torch.bfloat16, None, False),
        ("fp16", torch.float16, None, False),
        ("amp-fp16", torch.float32, torch.float16, True),
        ("amp-bf16", torch.float32, torch.bfloat16, False),
    ],
)
def test_dtype_levels(runner, level, param_dtype, autocast, scaler):
    setup = setup_for(runner, dtype=level)
    assert {p.dtype for p in setup.model.parameters()} == {param_dtype}
    assert (setup.autocast_dtype, setup.grad_scaler) == (autocast, scaler)


def test_amp_runs_the_forward_under_autocast(runner):
    result = runner.run({**BASE, "dtype": "amp-fp16"}, seed=0, steps=1)
    assert result.compute_dtype == "float16"
    assert runner.run({**BASE, "dtype": "amp-bf16"}, seed=0, steps=1).compute_dtype == "bfloat16"


def test_lr_reaches_the_optimizer(runner):
    setup = setup_for(runner, lr=3.5e-2)
    optimizer = make_optimizer(setup.model.parameters(), setup.lr, runner.cfg.optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3.5e-2)
    assert optimizer.param_groups[0]["eps"] == 1e-8


def test_blip2_checkpoint_into_opt_class_misses_every_weight(runner):
    setup = setup_for(runner, checkpoint="blip2-full")
    names = {n for n, _ in setup.model.named_parameters()}
    assert names <= set(setup.loaded.missing_keys)
    assert setup_for(runner).loaded.missing_keys == []


def test_init_levels(runner):
    pretrained = setup_for(runner).model.model.decoder.layers[0].fc1.weight
    reinit = setup_for(runner, init="reinit-normal").model.model.decoder.layers[0].fc1.weight
    assert not torch.equal(pretrained, reinit)
    assert reinit.std().item() == pytest.approx(0.02, rel=0.05)
    assert reinit.mean().abs().item() < 0.002
    # uninitialized-missing: nothing is missing from the matching checkpoint ...
    same = setup_for(runner, init="uninitialized-missing").model.model.decoder.layers[0].fc1.weight
    assert torch.equal(pretrained, same)
    # ... and every missing weight of the wrong checkpoint holds raw bit patterns
    wrong = setup_for(runner, checkpoint="blip2-full", init="uninitialized-missing").model
    weight = wrong.model.decoder.layers[0].fc1.weight
    assert not torch.isfinite(weight).all()
    assert weight.abs()[torch.isfinite(weight)].max() > 1e30
    again = setup_for(runner, checkpoint="blip2-full", init="uninitialized-missing").model
    assert torch.equal(
        weight.view(torch.int32), again.model.decoder.layers[0].fc1.weight.view(torch.int32)
    )


def test_batch_levels(runner):
    clean = setup_for(runner).batch
    assert (clean["labels"] != -100).all() and clean["attention_mask"].all()
    assert (setup_for(runner, batch="labels-all-ignored").batch["labels"] == -100).all()
    padded = setup_for(runner, batch="padded-row").batch
    assert (padded["attention_mask"][0] == 0).all() and padded["attention_mask"][1:].all()
    assert (padded["labels"][0] == -100).all()
    vocab = runner.target.vocab_size(setup_for(runner).model)
    edge = setup_for(runner, batch="vocab-edge-ids").batch["input_ids"]
    assert edge.max().item() == vocab - 1 and edge.max().item() > clean["input_ids"].max().item()
    long = setup_for(runner, batch="long-sequence").batch["input_ids"]
    assert long.shape[1] == setup_for(runner).model.config.max_position_embeddings
    assert setup_for(runner, batch="out-of-range-ids").batch["input_ids"].max().item() == vocab


def test_truncated_answers_leave_no_label_for_half_the_seeds(runner):
    seeds = range(200)
    labels = [
        runner.prepare({**BASE, "batch": "truncated-answers"}, seed).batch["labels"]
        for seed in seeds
    ]
    half = labels[0].shape[1] // 2
    assert all((row[:half] == -100).all() for batch in labels for row in batch)  # the prompts
    # every other row keeps its whole answer
    kept = [row[half:] for batch in labels for row in batch if (row[half:] != -100).any()]
    assert kept and all((row != -100).all() for row in kept)
    empty = sum(bool((batch == -100).all()) for batch in labels)
    assert 80 <= empty <= 120  # binomial(200, 1/2): 4 standard deviations either side
    # seed 0's batch lost every answer, seed 1's did not: the loss is 0/0 or a number
    assert runner.run({**BASE, "batch": "truncated-answers"}, seed=0, steps=1).outcome == (
        "nonfinite-loss"
    )
    finite = runner.run({**BASE, "batch": "truncated-answers"}, seed=1, steps=1)
    assert finite.outcome == "finite" and 0 < finite.loss[0] < 20


def test_nan_input_needs_a_float_input(runner):
    result = runner.run({**BASE, "batch": "nan-input"}, seed=0)
    assert result.outcome == "error"
    assert "needs a float input such as pixel_values" in result.error


def test_out_of_range_ids_is_an_error_not_a_nan(runner):
    result = runner.run({**BASE, "batch": "out-of-range-ids"}, seed=0)
    assert result.outcome == "error" and result.error.startswith("IndexError")
    assert result.score is None


def test_labels_all_ignored_makes_the_loss_nan(runner):
    result = runner.run({**BASE, "batch": "labels-all-ignored"}, seed=0)
    assert (result.outcome, result.first_bad_step) == ("nonfinite-loss", 0)
    assert math.isfinite(result.logit_absmax[0])


def test_the_dtype_levels_and_limits_are_torch_s_own():
    import torch

    from nansearch.config import DTYPES
    from nansearch.dtypes import FP16_MAX, LEVELS, LIMITS
    from nansearch.factors.dtype import DTYPE_LEVELS

    assert FP16_MAX == 65504.0
    for name, limit in LIMITS.items():
        assert limit == float(torch.finfo(getattr(torch, name)).max), name
    assert tuple(DTYPE_LEVELS) == tuple(LEVELS) == DTYPES
    assert DTYPE_LEVELS["amp-fp16"] == (torch.float32, torch.float16, True)
    assert DTYPE_LEVELS["bf16"] == (torch.bfloat16, None, False)
    assert LEVELS["amp-bf16"].compute == "bfloat16" and LEVELS["fp16"].compute == "float16"
