import subprocess
import sys

import pytest

from nansearch.config import ConfigError, NansearchError, load_config
from tests.conftest import DEMO, REPO


def test_demo_loads_with_includes():
    cfg = load_config(DEMO)
    assert cfg.target.model_class == "OPTForCausalLM"
    assert set(cfg.factors.checkpoint.levels) == {"opt-lm", "blip2-full"}
    assert "fp16" in cfg.factors.dtype.levels
    assert set(cfg.factors.init.levels) == {"pretrained", "reinit-normal", "uninitialized-missing"}


def test_overrides_beat_the_file():
    cfg = load_config(DEMO, ["trials=7", "steps=3", "factors.lr.high=0.5"])
    assert (cfg.trials, cfg.steps, cfg.factors.lr.high) == (7, 3, 0.5)


def test_every_bad_key_is_named_in_one_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "trials: many\nbogus: 1\n"
        "factors:\n  dtype: {levels: [fp32, fp8]}\n"
        "  init:\n    levels:\n      big: {scheme: normal, sdt: 1.0}\n"
        "  checkpoint: {levels: {opt-2.7b: /nowhere}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad, ["tracking.wandb=maybe"])
    text = str(info.value)
    assert "trials='many'" in text
    assert "bogus: unknown key (valid keys here: study, out, trials" in text
    assert (
        "factors.init.levels.big.sdt: unknown key (valid keys here: scheme, std, pattern)" in text
    )
    assert (
        "'fp8' is not a dtype level; valid levels are fp32, bf16, fp16, amp-fp16, amp-bf16" in text
    )
    assert "tracking.wandb='maybe': valid values are offline, online, off" in text
    assert len(info.value.problems) == 5


def test_level_names_may_contain_dots(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("factors:\n  checkpoint:\n    levels: {opt-2.7b: facebook/opt-2.7b}\n")
    assert load_config(sweep).factors.checkpoint.levels == {"opt-2.7b": "facebook/opt-2.7b"}


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(NansearchError, match=r"nope.yaml: no such sweep file"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_bad_values_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nansearch",
            "sweep",
            DEMO,
            "trials=0",
            "factors.dtype.levels=[fp64]",
            "out=" + str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "trials=0: must be at least 1" in proc.stderr
    assert "'fp64' is not a dtype level" in proc.stderr
    assert not (tmp_path / "demo").exists()


def test_valid_kinds_and_schemes_are_those_the_registries_hold():
    from nansearch.factors.init import SCHEMES
    from nansearch.targets import TARGETS, register_target

    with pytest.raises(ConfigError) as info:
        load_config(DEMO, ["target.kind=mine", "factors.init.levels.zero.scheme=zeros"])
    text = str(info.value)
    assert f"target.kind='mine': valid values are {', '.join(TARGETS)}" in text
    assert "command" in TARGETS and "command" in text
    assert (
        f"factors.init.levels.zero.scheme='zeros': valid schemes are {', '.join(SCHEMES)}" in text
    )
    register_target("mine", TARGETS["causal-lm"])
    try:
        assert load_config(DEMO, ["target.kind=mine"]).target.kind == "mine"
    finally:
        del TARGETS["mine"]
