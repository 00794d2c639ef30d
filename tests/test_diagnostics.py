"""Diagnostics on real small models where the birthplace of the NaN is known by construction."""

import textwrap

import pytest
import torch

from nansearch.config import load_config
from nansearch.demo import blip2_around
from nansearch.diagnose.diagnostics import Diagnostics
from nansearch.diagnose.rerun import rerun_trial
from nansearch.search.sweep import prepare
from nansearch.trial.runner import TrialResult
from tests.conftest import CUSTOM, DEMO, REPO
from tests.small_models import small_opt

OPT = {"checkpoint": "opt-lm", "dtype": "fp32", "lr": 1e-3, "init": "pretrained", "batch": "clean"}
TINY_GPT = {"checkpoint": "fresh", "dtype": "fp32", "lr": 1e-3, "init": "pretrained"}
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)

# A metric head that writes the pairwise distance out with sqrt: sqrt(0) on the diagonal
# is finite forward, and its gradient there is inf, which times the zero difference is NaN.
METRIC_TARGET = """
import torch
import torch.nn.functional as F
from torch import nn


class DistanceClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8)

    def forward(self, x, labels):
        z = self.embed(x)
        dist = (z[:, None] - z[None]).pow(2).sum(-1).sqrt()
        return {"logits": -dist, "loss": F.cross_entropy(-dist, labels)}


def build(checkpoint, options):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DistanceClassifier()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    return model, {"x": x, "labels": torch.arange(4)}
"""


def runner_for(path, overrides):
    _, runner = prepare(load_config(path, overrides))
    return runner


def rerun(runner, params, steps):
    """A rerun's record for a configuration: the same two passes ``nansearch rerun`` makes."""
    trial = TrialResult(params=params, seed=0, steps=steps, number=0)
    return rerun_trial(runner, trial, seeds=0)


def no_hooks_left(model):
    return all(not getattr(m, name) for m in model.modules() for name in HOOK_DICTS)


@pytest.fixture(scope="module")
def demo():
    return runner_for(DEMO, ["steps=2"])


@pytest.fixture(scope="module")
def tiny_gpt():
    return runner_for(CUSTOM, [f"target.fn={REPO}/sweeps/custom_target.py:build"])


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_fully_masked_row_is_born_in_the_attention_block(tiny_gpt, dtype):
    record = rerun(tiny_gpt, {**TINY_GPT, "dtype": dtype, "batch": "padded-row"}, steps=2)
    assert (record.stage, record.module, record.first_bad_step) == (
        "forward",
        "blocks.0",
        0,
    )
    assert record.diagnosis == (
        "step 0: first non-finite output in blocks.0 (Block): a row of the attention mask is all zero"
    )
    born = record.findings["forward"]
    assert born["rows"] == [0] and born["output_inf"] == 0
    assert born["dtype"] == {"fp32": "float32", "fp16": "float16"}[dtype]
    # op by op: the softmax over the all -inf row made the NaN, inside blocks.0
    assert (record.op["op"], record.op["module"], record.op["made"]) == (
        "softmax",
        "blocks.0",
        "nan",
    )
    assert record.op["input_neginf"]
    assert [t["module"] for t in record.trail] == ["tok", "pos", "blocks.0.ln1", "blocks.0.qkv"]


def test_uninitialized_missing_weights_are_traced_to_the_checkpoint(demo):
    params = {**OPT, "checkpoint": "blip2-full", "init": "uninitialized-missing"}
    record = rerun(demo, params, steps=2)
    assert (record.stage, record.first_bad_step) == ("forward", 0)
    assert "non-finite values" in record.diagnosis
    assert "the checkpoint did not hold them (37 of the model's weights" in record.diagnosis
    # the audit's fix for a wrapped checkpoint, not only "check the model class"
    assert "never loaded): the audit's fix: Load the language-only checkpoint" in (record.diagnosis)
    assert "strip 'language_model.' from the checkpoint's keys" in record.diagnosis


def test_a_trial_that_holds_two_causes_names_both(demo):
    params = {
        **OPT,
        "checkpoint": "blip2-full",
        "init": "uninitialized-missing",
        "batch": "labels-all-ignored",
    }
    holds = [
        {
            "conclusion": 2,
            "kind": "cause",
            "rule": "checkpoint=blip2-full with init=uninitialized-missing",
        },
        {"conclusion": 3, "kind": "cause", "rule": "batch=labels-all-ignored"},
    ]
    trial = TrialResult(params=params, seed=0, steps=2, number=5)
    record = rerun_trial(demo, trial, seeds=0, holds=holds)
    assert record.stage == "forward"  # the uninitialized weights fail before the loss
    assert record.diagnosis.endswith(
        "; the trial holds 2 of the study's causes, checkpoint=blip2-full with "
        "init=uninitialized-missing (conclusion 2) and batch=labels-all-ignored "
        "(conclusion 3): this is where the first NaN of any of them was born"
    )
    alone = rerun_trial(demo, trial, seeds=0, holds=holds[:1])
    assert "holds" not in alone.diagnosis


def test_a_bias_past_fp16s_range_is_named_with_its_channel(tmp_path):
    model = small_opt()
    with torch.no_grad():
        model.model.decoder.layers[0].fc2.bias[17] = 9e4  # beyond fp16's 65504
    model.save_pretrained(tmp_path / "big-bias")
    runner = runner_for(
        DEMO,
        [
            "target.batch_size=2",
            "target.seq_len=8",
            f"factors.checkpoint.levels.big-bias={tmp_path / 'big-bias'}",
        ],
    )
    record = rerun(runner, {**OPT, "checkpoint": "big-bias", "dtype": "amp-fp16"}, steps=1)
    assert (record.stage, record.module, record.first_bad_step) == (
        "forward",
        "model.decoder.layers.0.fc2",
        0,
    )
    operands = {o["name"]: o for o in record.op["operands"]}
    assert set(operands) == {"input", "weight", "bias"}
    assert operands["bias"]["absmax"] == 9e4 and operands["bias"]["channel"] == 17
    assert operands["input"]["absmax"] < 100 and operands["weight"]["absmax"] < 10
    assert record.diagnosis.startswith(
        "step 0: first non-finite output in model.decoder.layers.0.fc2 (Linear): linear "
        "overflowed float16 (max 65504): its bias holds 9e+04 at channel 17, past float16's "
        "range (input up to "
    )
    born = record.findings["forward"]
    assert (born["weight_peak"], born["weight_channel"]) == ("bias", 17)


def test_pure_fp16_adam_update_is_named_with_its_eps(demo):
    record = rerun(demo, {**OPT, "dtype": "fp16"}, steps=2)
    assert (record.stage, record.outcome, record.first_bad_step) == (
        "optimizer",
        "nonfinite-params",
        0,
    )
    assert record.diagnosis.startswith("step 0: parameters of model.decoder.embed_tokens")
    assert record.diagnosis.endswith(
        "became NaN in the optimizer update: AdamW eps 1e-08 is 0 in float16"
    )
    update = record.findings["update"]
    assert update["eps_in_dtype"] == 0.0 and update["dtype"] == "float16"
    assert not update["nonfinite_grad"]  # the gradients were finite; the update was not
    assert 0 < update["zero_second_moment"] <= update["nonfinite_values"]


def test_nan_pixels_are_traced_to_the_vision_models_first_module(tmp_path):
    blip2_around(small_opt()).save_pretrained(tmp_path / "blip2")
    runner = runner_for(
        DEMO,
        [
            "target.kind=blip2",
            "target.batch_size=2",
            "target.seq_len=8",
            f"factors.checkpoint.levels.tiny={tmp_path / 'blip2'}",
            "factors.batch.levels=[clean,nan-input]",
        ],
    )
    record = rerun(runner, {**OPT, "checkpoint": "tiny", "batch": "nan-input"}, steps=2)
    assert (record.stage, record.first_bad_step) == ("forward", 0)
    assert record.module.startswith("vision_model.embeddings.")
    assert record.diagnosis.startswith(
        "step 0: the batch holds non-finite values in pixel_values (192 NaN of 6144 values); "
        "the first module to receive them is vision_model.embeddings."
    )
    # nothing was born: the NaN came in with the batch
    assert "forward" not in record.findings and record.op is None


def test_a_diverging_learning_rate_names_the_op_that_overflowed_fp16(demo):
    # One AdamW step at lr 6 grows the projections ~100x; fp16 autocast overflows in the
    # next step's attention scores. The edge is near lr 2.5 (finite there on some CPUs'
    # kernels); the scores grow as lr**4, so at 6 they are 30x past it. The projections
    # themselves stay 15x under fp16's maximum, so the scores are the first to overflow.
    record = rerun(demo, {**OPT, "dtype": "amp-fp16", "lr": 6.0}, steps=2)
    assert (record.stage, record.outcome, record.first_bad_step) == (
        "forward",
        "nonfinite-logits",
        1,
    )
    assert record.module == "model.decoder.layers.0.self_attn"
    assert record.op["module"] == record.module and record.op["made"] == "inf"
    assert record.diagnosis.startswith(
        "step 1: first non-finite output in model.decoder.layers.0.self_attn (OPTAttention): "
        "matmul overflowed float16 (max 65504) on inputs up to "
    )
    # the trail shows the projections' outputs grown far beyond the layer norm's
    trail = {t["module"]: t["absmax"] for t in record.trail}
    norm = trail["model.decoder.layers.0.self_attn_layer_norm"]
    assert norm < 40
    assert all(trail[f"model.decoder.layers.0.self_attn.{p}_proj"] > 30 * norm for p in "qkv")


def test_a_nan_gradient_is_named_by_anomaly_mode(tmp_path):
    (tmp_path / "metric.py").write_text(textwrap.dedent(METRIC_TARGET))
    runner = runner_for(
        None,
        [
            "target.kind=custom",
            f"target.fn={tmp_path / 'metric.py'}:build",
            "factors.checkpoint.levels.fresh=fresh",
            "factors.dtype.levels=[fp32]",
        ],
    )
    record = rerun(runner, {**TINY_GPT, "batch": "clean"}, steps=2)
    assert (record.stage, record.outcome, record.first_bad_step) == (
        "backward",
        "nonfinite-grad",
        0,
    )
    assert record.module == "embed"
    assert record.diagnosis == (
        "step 0: the gradient went NaN in PowBackward0, with a finite forward pass and loss; "
        "the forward code that made it: `dist = (z[:, None] - z[None]).pow(2).sum(-1).sqrt()` "
        "(metric.py:14)"
    )
    assert not torch.is_anomaly_enabled()


def test_labels_all_ignored_is_a_loss_stage_nan(tiny_gpt):
    record = rerun(tiny_gpt, {**TINY_GPT, "batch": "labels-all-ignored"}, steps=2)
    assert (record.stage, record.module) == ("loss", None)
    assert record.diagnosis == (
        "step 0: the loss is NaN with finite logits: every label is ignored (-100)"
    )


def test_no_hook_is_left_on_the_model_after_a_rerun(tiny_gpt):
    params = {**TINY_GPT, "batch": "padded-row"}
    with Diagnostics(op_step=0, anomaly_step=1) as diag:
        result = tiny_gpt.run(params, seed=0, steps=2, observer=diag)
        assert not no_hooks_left(diag.model)
    assert result.outcome == "nonfinite-logits" and diag.forward.module == "blocks.0"
    assert no_hooks_left(diag.model)
    assert not torch.is_anomaly_enabled()


def test_hooks_go_even_when_the_forward_raises(tiny_gpt):
    model = tiny_gpt.prepare({**TINY_GPT, "batch": "clean"}, seed=0).model
    with pytest.raises(IndexError), Diagnostics(model, op_step=0) as diag:
        diag.before_forward(0)
        model(input_ids=torch.tensor([[500]]), attention_mask=torch.ones(1, 1))
    assert no_hooks_left(model)
    assert (
        model(input_ids=torch.tensor([[5]]), attention_mask=torch.ones(1, 1))["logits"]
        .isfinite()
        .all()
    )


def test_watching_any_model_directly(tiny_gpt):
    setup = tiny_gpt.prepare({**TINY_GPT, "batch": "padded-row"}, seed=0)
    with Diagnostics(setup.model, trail=2) as diag:
        setup.model(**setup.batch)
    assert (diag.forward.module, diag.forward.cls, diag.forward.rows) == ("blocks.0", "Block", [0])
    assert len(diag.trail) == 2  # bounded: only the last two modules before the birth
    assert no_hooks_left(setup.model)


def test_diagnostics_leave_the_run_unchanged(tiny_gpt):
    params = {**TINY_GPT, "lr": 3e-3, "batch": "clean"}
    plain = tiny_gpt.run(params, seed=1, steps=3)
    with Diagnostics(op_step=1) as diag:
        watched = tiny_gpt.run(params, seed=1, steps=3, observer=diag)
    assert plain.outcome == watched.outcome == "finite"
    assert plain.loss == watched.loss and plain.grad_norm == watched.grad_norm
    assert diag.forward is None and diag.op is None and diag.update is None
