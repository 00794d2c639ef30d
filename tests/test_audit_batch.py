"""Each batch check on a real small model: the demo's OPT and its BLIP-2."""

import pytest
import torch
from safetensors.torch import save_file

from nansearch.audit.batch import audit_batches
from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import TrialRunner
from tests.conftest import DEMO

BASE = {"checkpoint": "opt-lm", "dtype": "fp32", "lr": 1e-3, "init": "pretrained", "batch": "clean"}


def write_batch(path, batch):
    save_file({k: v.contiguous() for k, v in batch.items()}, path)
    return str(path)


def findings_by_level(cfg, runner):
    found = {}
    for finding in audit_batches(cfg, runner.factors, runner):
        found.setdefault(finding.subject.removeprefix("batch="), {})[finding.check] = finding
    return found


@pytest.fixture(scope="module")
def opt(tmp_path_factory):
    """The demo OPT with every built-in batch level and three batch files."""
    folder = tmp_path_factory.mktemp("batches")
    plain = load_config(DEMO)
    probe = TrialRunner(plain, build_factors(plain), build_target(plain.target))
    model = probe.cache.peek("demo:opt-lm").model
    make = probe.target.make_batch
    clean = make(model, torch.Generator().manual_seed(0))
    negative = {k: v.clone() for k, v in clean.items()}
    negative["input_ids"][2, 5] = -1
    first_only = {k: v.clone() for k, v in clean.items()}
    first_only["labels"][:, 1:] = -100
    files = {
        "negative-ids": write_batch(folder / "negative.safetensors", negative),
        "first-label-only": write_batch(folder / "first.safetensors", first_only),
        "too-long": write_batch(
            folder / "long.safetensors", make(model, torch.Generator().manual_seed(0), seq_len=200)
        ),
    }
    levels = "[clean,labels-all-ignored,padded-row,out-of-range-ids,long-sequence,vocab-edge-ids,nan-input]"
    overrides = [f"factors.batch.levels={levels}", "steps=1"]
    overrides += [f"factors.batch.files.{name}={path}" for name, path in files.items()]
    cfg = load_config(DEMO, overrides)
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    return runner, findings_by_level(cfg, runner)


def test_clean_and_in_range_levels_have_no_finding(opt):
    _, found = opt
    for level in ("clean", "long-sequence", "vocab-edge-ids"):
        assert level not in found, found.get(level)


def test_every_label_ignored(opt):
    runner, found = opt
    assert list(found["labels-all-ignored"]) == ["batch.labels-ignored"]
    assert (
        "every one of the 256 labels is -100"
        in found["labels-all-ignored"]["batch.labels-ignored"].found
    )
    # only the first label of each row counts: after the causal shift, none does
    shifted = found["first-label-only"]["batch.labels-ignored"]
    assert "a causal LM shifts labels by one, so none is counted" in shifted.found
    result = runner.run({**BASE, "batch": "first-label-only"}, seed=0)
    assert (result.outcome, result.first_bad_step) == ("nonfinite-loss", 0)


def test_a_fully_masked_row(opt):
    _, found = opt
    finding = found["padded-row"]["batch.masked-row"]
    assert finding.severity == "warning"
    assert finding.found == "row 0 of 8 has an all-zero attention mask"


def test_ids_out_of_the_vocabulary(opt):
    runner, found = opt
    high = found["out-of-range-ids"]["batch.id-range"]
    assert "input_ids has 1 id(s) >= the vocabulary size 512 (max 512)" in high.found
    negative = found["negative-ids"]["batch.id-range"]
    assert "input_ids has 1 negative id(s) (min -1)" in negative.found
    result = runner.run({**BASE, "batch": "negative-ids"}, seed=0)
    assert result.outcome == "error" and result.error.startswith("IndexError")


def test_sequences_longer_than_the_positions(opt):
    runner, found = opt
    finding = found["too-long"]["batch.too-long"]
    assert finding.found == "input_ids rows are 200 tokens long; the model has 128 positions"
    assert runner.run({**BASE, "batch": "too-long"}, seed=0).outcome == "error"


def test_a_level_that_cannot_apply_to_a_text_model(opt):
    _, found = opt
    finding = found["nan-input"]["batch.not-applicable"]
    assert "needs a float input such as pixel_values" in finding.found


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    """The demo BLIP-2 in its own class, with NaN, constant and overly bright pixels."""
    folder = tmp_path_factory.mktemp("images")
    plain = load_config(DEMO, ["target.kind=blip2"])
    plain.factors.checkpoint.levels = {"blip2": "demo:blip2-full"}
    probe = TrialRunner(plain, build_factors(plain), build_target(plain.target))
    model = probe.cache.peek("demo:blip2-full").model
    clean = probe.target.make_batch(model, torch.Generator().manual_seed(0))
    constant = {k: v.clone() for k, v in clean.items()}
    constant["pixel_values"][1] = 0.5  # a blank image
    bright = {k: v.clone() for k, v in clean.items()}
    bright["pixel_values"] = bright["pixel_values"] * 1e5  # raw values without normalization
    overrides = [
        "target.kind=blip2",
        "factors.batch.levels=[clean,nan-input]",
        "factors.dtype.levels=[fp32,amp-fp16]",
        "steps=1",
        f"factors.batch.files.blank={write_batch(folder / 'blank.safetensors', constant)}",
        f"factors.batch.files.bright={write_batch(folder / 'bright.safetensors', bright)}",
    ]
    cfg = load_config(DEMO, overrides)
    cfg.factors.checkpoint.levels = {"blip2": "demo:blip2-full"}
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    return runner, findings_by_level(cfg, runner)


BLIP2 = {**BASE, "checkpoint": "blip2"}


def test_blip2_clean_batch_has_no_finding(blip2):
    _, found = blip2
    assert "clean" not in found


def test_nan_pixels(blip2):
    runner, found = blip2
    finding = found["nan-input"]["batch.nonfinite-input"]
    assert "pixel_values holds 192 NaN and 0 Inf values (row 0 of 8)" in finding.found
    assert runner.run({**BLIP2, "batch": "nan-input"}, seed=0).outcome == "nonfinite-logits"


def test_a_constant_image(blip2):
    _, found = blip2
    assert list(found["blank"]) == ["batch.constant-feature"]
    finding = found["blank"]["batch.constant-feature"]
    assert (
        "3 of 24 (sample, channel) planes are constant (e.g. sample 1, channel 0" in finding.found
    )


def test_inputs_past_the_fp16_range(blip2):
    runner, found = blip2
    finding = found["bright"]["batch.fp16-overflow"]
    assert "past fp16's maximum 65504, and the sweep runs fp16" in finding.found
    fp16 = {**BLIP2, "dtype": "amp-fp16"}
    assert runner.run({**fp16, "batch": "bright"}, seed=0).is_nan
    assert runner.run(fp16, seed=0).outcome == "finite"
