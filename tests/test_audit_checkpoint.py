"""Each checkpoint check on real checkpoints of the demo's OPT, made the way users make them."""

import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertLMHeadModel,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    OPTForCausalLM,
)

from nansearch.audit.checkpoint import audit_checkpoints
from nansearch.config import load_config
from nansearch.demo import demo_checkpoint
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import TrialResult, TrialRunner, train
from tests.conftest import DEMO
from tests.small_models import small_bert_config

BASE = {"checkpoint": "opt-lm", "dtype": "fp32", "lr": 1e-3, "init": "pretrained", "batch": "clean"}


def audit(levels: dict, dtypes=("fp32", "fp16", "amp-fp16"), runner=None):
    cfg = load_config(DEMO, [f"factors.dtype.levels=[{','.join(dtypes)}]"])
    cfg.factors.checkpoint.levels = {name: str(path) for name, path in levels.items()}
    runner = runner or TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    findings = audit_checkpoints(cfg, runner)
    return {(f.subject.removeprefix("checkpoint="), f.check): f for f in findings}


def opt_state() -> dict[str, torch.Tensor]:
    return load_file(demo_checkpoint("opt-lm") / "model.safetensors")


def write(folder, state) -> str:
    """A checkpoint folder: the demo OPT's config.json and ``state`` as safetensors."""
    folder.mkdir()
    shutil.copy(demo_checkpoint("opt-lm") / "config.json", folder)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        folder / "model.safetensors",
        {"format": "pt"},
    )
    return str(folder)


def trained(tmp_path, name, optimizer, lr, dtype="fp32"):
    """The demo OPT after one real training step, saved as a user saves a checkpoint."""
    cfg = load_config(DEMO, [f"optimizer.name={optimizer}"])
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    setup = runner.prepare({**BASE, "dtype": dtype, "lr": lr}, seed=0)
    result = TrialResult(params={}, seed=0, steps=1)
    train(setup, result, 1, cfg.optimizer, torch.device("cpu"))
    setup.model.float().save_pretrained(tmp_path / name)
    return tmp_path / name, result


def test_module_prefix_from_ddp_is_a_wrapped_checkpoint_with_the_prefix_to_strip(tmp_path):
    folder = write(tmp_path / "ddp", {f"module.{k}": v for k, v in opt_state().items()})
    found = audit({"ddp": folder})
    assert list(found) == [("ddp", "checkpoint.wrapped")]
    finding = found["ddp", "checkpoint.wrapped"]
    assert "all 37 missing weights are in the checkpoint under 'module.'" in finding.found
    assert "config.json names" not in finding.found  # same architecture, only renamed
    assert "k.removeprefix('module.')" in finding.fix and "DistributedDataParallel" in finding.fix


def test_a_checkpoint_of_another_architecture_is_foreign(tmp_path):
    config = GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=512, n_positions=128)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    found = audit({"gpt2": tmp_path / "gpt2"}, dtypes=("fp32",))
    finding = found["gpt2", "checkpoint.foreign"]
    assert finding.severity == "error"
    assert "config.json names GPT2LMHeadModel (model_type gpt2)" in finding.found
    assert "expects model_type opt" in finding.found
    assert "load this one with its own class GPT2LMHeadModel" in finding.fix


def test_an_encoder_without_an_lm_head_loaded_as_a_causal_lm_is_foreign(tmp_path):
    config = small_bert_config()
    BertModel(config).save_pretrained(tmp_path / "bert")
    cfg = load_config(
        DEMO, ["factors.dtype.levels=[fp32]", "target.model_class=AutoModelForCausalLM"]
    )
    cfg.factors.checkpoint.levels = {"bert": str(tmp_path / "bert")}
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    found = {f.check: f for f in audit_checkpoints(cfg, runner)}
    assert list(found) == ["checkpoint.foreign"]  # no longer a bare checkpoint.missing
    finding = found["checkpoint.foreign"]
    assert finding.severity == "error"
    assert (
        "config.json names BertModel, a base model with no head, while BertLMHeadModel "
        "needs a causal LM head: the checkpoint was saved without it (cls.predictions."
    ) in finding.found
    assert "load this one with its own class BertModel" in finding.fix
    # the same checkpoint saved with its LM head is not foreign
    BertLMHeadModel(small_bert_config(is_decoder=True)).save_pretrained(tmp_path / "bert-lm")
    cfg.factors.checkpoint.levels = {"bert-lm": str(tmp_path / "bert-lm")}
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    assert [f.check for f in audit_checkpoints(cfg, runner)] == []


def test_nan_weights_left_by_a_pure_fp16_adam_step_are_found(tmp_path):
    folder, result = trained(tmp_path, "fp16-adam", "adamw", 1e-3, dtype="fp16")
    assert result.outcome == "nonfinite-params"  # the real mechanism, NAN_CAUSES row 2
    finding = audit({"after-fp16": folder})["after-fp16", "checkpoint.nonfinite"]
    assert finding.severity == "error"
    assert "0 of them newly initialized" in finding.found


def test_weights_past_and_near_the_fp16_range_matter_only_when_the_sweep_runs_fp16(tmp_path):
    # One SGD step moves a weight by lr x its gradient; the demo's largest gradients are
    # 0.05 to 0.08 (depending on the CPU's kernels, which build the demo), so lr 1e7 puts
    # the largest weights 8x past 65504 and others near it, and lr 2e5 puts the largest
    # 2.5x above "near" (65504 / 16) and 4x below 65504.
    past, result = trained(tmp_path, "sgd-1e7", "sgd", 1e7)
    near, _ = trained(tmp_path, "sgd-2e5", "sgd", 2e5)
    assert result.outcome == "finite"  # in fp32 the weights are large but finite
    found = audit({"past": past, "near": near})
    assert found["past", "checkpoint.fp16-range"].severity == "error"
    assert "weight tensors are past and" in found["past", "checkpoint.fp16-range"].found
    assert found["near", "checkpoint.fp16-range"].severity == "warning"
    near_found = found["near", "checkpoint.fp16-range"].found
    assert "weight tensors are near fp16's maximum 65504" in near_found
    assert "the sweep runs fp16, amp-fp16" in near_found
    assert audit({"past": past, "near": near}, dtypes=("fp32", "bf16")) == {}


def test_bf16_stored_weights_run_in_fp16(tmp_path):
    OPTForCausalLM.from_pretrained(demo_checkpoint("opt-lm"), dtype=torch.bfloat16).save_pretrained(
        tmp_path / "bf16"
    )
    found = audit({"bf16": tmp_path / "bf16"})
    finding = found["bf16", "checkpoint.stored-dtype"]
    assert finding.severity == "warning"
    assert "stored in bfloat16 (36 of 36 float tensors)" in finding.found
    assert audit({"bf16": tmp_path / "bf16"}, dtypes=("fp32", "bf16", "amp-bf16")) == {}


def test_a_separately_saved_head_under_a_tying_config_is_untied(tmp_path):
    state = opt_state()
    state["lm_head.weight"] = state["model.decoder.embed_tokens.weight"] * 1.5
    cfg = load_config(DEMO)
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    found = audit({"head": write(tmp_path / "head", state)}, runner=runner)
    finding = found["head", "checkpoint.untied"]
    assert (
        "lm_head.weight and model.decoder.embed_tokens.weight (different values)" in finding.found
    )
    model = runner.cache.peek(str(tmp_path / "head")).model
    assert model.lm_head.weight is not model.model.decoder.embed_tokens.weight


def test_missing_and_mismatched_weights(tmp_path):
    state = opt_state()
    dropped = {k: v for k, v in state.items() if "final_layer_norm" not in k or "layers" in k}
    resized = dict(state, **{"model.decoder.final_layer_norm.weight": torch.ones(64)})
    found = audit(
        {
            "dropped": write(tmp_path / "dropped", dropped),
            "resized": write(tmp_path / "resized", resized),
        }
    )
    missing = found["dropped", "checkpoint.missing"]
    assert missing.severity == "warning"  # 256 of ~480k parameters
    assert "2 of its 37 weights are missing (0% of" in missing.found
    assert "model.decoder.final_layer_norm.bias" in missing.found
    mismatched = found["resized", "checkpoint.mismatched"]
    assert mismatched.severity == "error"
    assert (
        "model.decoder.final_layer_norm.weight [64] where the class has [128]" in mismatched.found
    )
    assert "factors.checkpoint.levels.resized" in mismatched.found


def test_the_blip2_checkpoint_in_its_own_class_has_no_finding():
    cfg = load_config(DEMO, ["target.kind=blip2"])
    cfg.factors.checkpoint.levels = {"blip2-full": "demo:blip2-full"}
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    assert audit_checkpoints(cfg, runner) == []
