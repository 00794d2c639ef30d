"""The built-in BLIP-2 target on a real BLIP-2 checkpoint."""

import pytest
import torch

from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import TrialRunner

BASE = {"checkpoint": "blip2", "dtype": "fp32", "lr": 1e-3, "init": "pretrained", "batch": "clean"}


@pytest.fixture(scope="module")
def runner():
    cfg = load_config(
        None,
        [
            "target.kind=blip2",
            "target.batch_size=2",
            "target.seq_len=8",
            "steps=2",
            "factors.checkpoint.levels.blip2=demo:blip2-full",
            "factors.batch.levels=[clean,nan-input,vocab-edge-ids,long-sequence]",
        ],
    )
    return TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))


def test_vqa_batch_carries_pixels_and_image_tokens(runner):
    setup = runner.prepare(BASE, seed=0)
    batch, config = setup.batch, setup.model.config
    assert batch["pixel_values"].shape == (
        2,
        3,
        config.vision_config.image_size,
        config.vision_config.image_size,
    )
    image = batch["input_ids"] == config.image_token_id
    assert (image.sum(1) == config.num_query_tokens).all()
    assert (batch["labels"][image] == -100).all()


def test_clean_blip2_trial_is_finite(runner):
    result = runner.run(BASE, seed=0)
    assert result.outcome == "finite" and len(result.loss) == 2


def test_nan_pixels_give_nan_logits_at_step_0(runner):
    setup = runner.prepare({**BASE, "batch": "nan-input"}, seed=0)
    assert torch.isnan(setup.batch["pixel_values"]).any()
    assert not torch.isnan(setup.batch["pixel_values"][1:]).any()
    result = runner.run({**BASE, "batch": "nan-input"}, seed=0)
    assert (result.outcome, result.first_bad_step) == ("nonfinite-logits", 0)


def test_vocab_edge_ids_leave_the_image_tokens_alone(runner):
    setup = runner.prepare({**BASE, "batch": "vocab-edge-ids"}, seed=0)
    config = setup.model.config
    ids = setup.batch["input_ids"]
    assert ((ids == config.image_token_id).sum(1) == config.num_query_tokens).all()
    text = ids[ids != config.image_token_id]
    assert text.max().item() == config.text_config.vocab_size - 2
    assert runner.run({**BASE, "batch": "vocab-edge-ids"}, seed=0).outcome == "finite"


def test_long_sequence_fills_the_language_model_positions(runner):
    setup = runner.prepare({**BASE, "batch": "long-sequence"}, seed=0)
    assert (
        setup.batch["input_ids"].shape[1] == setup.model.config.text_config.max_position_embeddings
    )
