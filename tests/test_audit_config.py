"""Each config check, and the demo's OPT showing the mechanism it names."""

import pytest
import torch

from nansearch.audit.config import _bf16_hardware, audit_config, bf16_supported
from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import TrialRunner
from tests.conftest import DEMO

CPU = torch.device("cpu")
BASE = {"checkpoint": "opt-lm", "dtype": "fp16", "lr": 1e-3, "init": "pretrained", "batch": "clean"}


def checks(*overrides):
    cfg = load_config(DEMO, list(overrides))
    return {(f.subject, f.check): f for f in audit_config(cfg, CPU)}


def run(*overrides):
    cfg = load_config(DEMO, ["steps=2", *overrides])
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    return runner.run(BASE, seed=0)


def test_pure_fp16_adam_eps_that_rounds_to_zero():
    finding = checks()["dtype=fp16", "config.fp16-adam-eps"]
    assert finding.severity == "error"
    assert "optimizer.eps=1e-08" in finding.found and "rounds to 0" in finding.found
    # the mechanism on the demo's OPT is tested in test_runner: NaN weights at step 0;
    # the fix it names, an eps that fp16 holds, keeps the same run finite
    assert ("dtype=fp16", "config.fp16-adam-eps") not in checks("optimizer.eps=1e-4")
    assert run("optimizer.eps=1e-4").outcome == "finite"
    # not an Adam, or no pure fp16: nothing to say
    assert ("dtype=fp16", "config.fp16-adam-eps") not in checks("optimizer.name=sgd")
    assert not checks("factors.dtype.levels=[fp32,amp-fp16]", "factors.lr.high=1e-2")


def test_pure_fp16_runs_without_a_loss_scaler():
    finding = checks("optimizer.eps=1e-4")["dtype=fp16", "config.fp16-no-scaler"]
    assert finding.severity == "warning" and "amp-fp16" in finding.fix


@pytest.mark.parametrize(
    "optimizer,low,high,severity",
    [
        ("adamw", 1e-4, 1.0, "info"),  # the demo: part of the range is far above
        ("adamw", 2.0, 5.0, "warning"),  # every trial is
        ("adam", 1e-10, 1e-8, "info"),  # far below: nothing trains
        ("sgd", 1e-3, 0.5, None),  # usual for SGD
        ("adamw", 1e-5, 1e-2, None),
    ],
)
def test_learning_rate_far_outside_the_usual_range(optimizer, low, high, severity):
    found = checks(
        f"optimizer.name={optimizer}", f"factors.lr.low={low}", f"factors.lr.high={high}"
    )
    finding = found.get(("lr", "config.lr-range"))
    assert (finding and finding.severity) == severity or (finding is None and severity is None)


def test_a_learning_rate_far_above_the_range_diverges_on_a_real_model():
    cfg = load_config(DEMO, ["steps=2"])
    runner = TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))
    # one AdamW step at lr 6 grows the attention scores far past fp16's range (lr 2 is
    # the edge: finite on some CPUs' kernels); lr 1e-3 barely moves them
    hot = {**BASE, "dtype": "amp-fp16", "lr": 6.0}
    result = runner.run(hot, seed=0)
    assert (result.outcome, result.first_bad_step) == ("nonfinite-logits", 1)  # after one update
    assert runner.run({**hot, "lr": 1e-3}, seed=0).outcome == "finite"


def test_bf16_on_hardware_without_it():
    assert bf16_supported(CPU)
    assert not [f for f in checks().values() if f.check == "config.bf16-unsupported"]
    found = _bf16_hardware(["fp32", "bf16", "amp-bf16"], "Tesla V100-SXM2-16GB", supported=False)
    assert [(f.subject, f.severity) for f in found] == [
        ("dtype=bf16", "error"),
        ("dtype=amp-bf16", "error"),
    ]
    assert "on Tesla V100-SXM2-16GB, which has no native bf16" in found[0].found
    assert _bf16_hardware(["bf16"], "NVIDIA H100", supported=True) == []
