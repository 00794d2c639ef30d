"""Loading is safe: bad checkpoints are refused with errors naming the file and the level."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from nansearch.cli.sweep import sweep
from nansearch.config import load_config
from nansearch.demo import demo_checkpoint
from nansearch.factors import build_factors
from nansearch.targets import CheckpointError, build_target
from nansearch.targets.loading import read_header
from nansearch.trial.runner import TrialRunner
from tests.conftest import CUSTOM, DEMO, REPO, demo_overrides


def truncated_copy(tmp_path):
    """The demo's language-only OPT, its safetensors file cut in half as a broken download."""
    folder = tmp_path / "opt-truncated"
    shutil.copytree(demo_checkpoint("opt-lm"), folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return folder


class RunsCode:
    """Unpickling this calls ``open(marker, "w")``: code that runs on load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_that_runs_code(tmp_path):
    """A checkpoint folder whose pytorch_model.bin creates a marker file when unpickled."""
    folder = tmp_path / "opt-pickle"
    folder.mkdir()
    shutil.copy(demo_checkpoint("opt-lm") / "config.json", folder)
    state = load_file(demo_checkpoint("opt-lm") / "model.safetensors")
    marker = tmp_path / "code-ran"
    torch.save({**state, "payload": RunsCode(marker)}, folder / "pytorch_model.bin")
    return folder, marker


@pytest.fixture(scope="module")
def runner():
    cfg = load_config(DEMO)
    return TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))


def test_truncated_safetensors_is_refused_naming_the_file_and_level(tmp_path, runner):
    folder = truncated_copy(tmp_path)
    with pytest.raises(CheckpointError) as caught:
        runner.cache.get(str(folder), level="broken")
    message = str(caught.value)
    assert message.startswith("factors.checkpoint.levels.broken: ")
    assert str(folder / "model.safetensors") in message
    assert "truncated or corrupt safetensors file" in message
    # the failure is kept: the next trial of the level fails the same way without a reread
    with pytest.raises(CheckpointError, match=r"levels\.broken"):
        runner.cache.get(str(folder), level="broken")
    assert runner.cache.get("demo:opt-lm", level="opt-lm").missing_keys == []


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, runner):
    folder, marker = pickle_that_runs_code(tmp_path)
    # the payload is real: an unrestricted unpickling runs it
    probe = tmp_path / "probe.bin"
    torch.save(RunsCode(tmp_path / "probe-ran"), probe)
    torch.load(probe, weights_only=False).close()
    assert (tmp_path / "probe-ran").exists()

    with pytest.raises(CheckpointError) as caught:
        runner.cache.get(str(folder), level="pickled")
    message = str(caught.value)
    assert message.startswith(f"factors.checkpoint.levels.pickled: {folder / 'pytorch_model.bin'}")
    assert "refused" in message and "would run code" in message
    assert "convert it to safetensors" in message
    with pytest.raises(CheckpointError, match="refused"):
        read_header(folder / "pytorch_model.bin")
    assert not marker.exists()


def test_a_plain_weights_pickle_still_loads(tmp_path, runner):
    folder = tmp_path / "opt-bin"
    folder.mkdir()
    shutil.copy(demo_checkpoint("opt-lm") / "config.json", folder)
    state = load_file(demo_checkpoint("opt-lm") / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    loaded = runner.cache.get(str(folder), level="bin")
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    embed = loaded.model.model.decoder.embed_tokens.weight
    assert torch.equal(embed, state["model.decoder.embed_tokens.weight"])


def test_missing_folder_is_named(tmp_path, runner):
    with pytest.raises(CheckpointError, match=r"levels\.gone: .*nowhere: no such file or folder"):
        runner.cache.get(str(tmp_path / "nowhere"), level="gone")


def test_a_sweep_records_the_broken_level_as_error_trials_and_goes_on(tmp_path):
    folder = truncated_copy(tmp_path)
    outcome = sweep(
        DEMO,
        demo_overrides(
            trials=6,
            steps=1,
            **{
                "factors.checkpoint.levels.broken": str(folder),
                "factors.dtype.levels": "[fp32]",
                "factors.batch.levels": "[clean]",
                "factors.init.levels": "{pretrained: {scheme: pretrained}}",
                "factors.lr.high": 1e-3,
                "search.cover": 6,
            },
        ),
    )
    by_level = {}
    for result in outcome.results:
        by_level.setdefault(result.params["checkpoint"], []).append(result)
    assert {r.outcome for r in by_level["opt-lm"]} == {"finite"}
    assert {r.outcome for r in by_level["broken"]} == {"error"}
    assert all(
        "factors.checkpoint.levels.broken" in r.error and "model.safetensors" in r.error
        for r in by_level["broken"]
    )
    audit = json.loads((tmp_path / "runs/t/audit.json").read_text())
    reported = [f for f in audit["findings"] if f["subject"] == "checkpoint=broken"]
    assert [f["check"] for f in reported] == ["checkpoint.unreadable"]
    assert "truncated" in reported[0]["found"]
    assert not [f for f in audit["findings"] if f["subject"] == "checkpoint=opt-lm"]


def test_a_custom_target_whose_build_raises_is_reported_as_a_failed_build(tmp_path):
    # a weight file of another shape than the example's TinyGPT: its build's load_state_dict
    # raises, which is the target's own code failing, not an unreadable checkpoint
    other = tmp_path / "other.safetensors"
    save_file({"tok.weight": torch.zeros(7, 5)}, str(other))
    outcome = sweep(
        CUSTOM,
        [
            "out=runs",
            "study=t",
            "trials=4",
            "steps=1",
            "tracking.wandb=off",
            "factors.dtype.levels=[fp32]",
            "factors.batch.levels=[clean]",
            f"factors.checkpoint.levels.other={other}",
            "search.cover=4",
            f"target.fn={REPO}/sweeps/custom_target.py:build",
        ],
    )
    audit = json.loads((tmp_path / "runs/t/audit.json").read_text())
    reported = [f for f in audit["findings"] if f["subject"] == "checkpoint=other"]
    assert [f["check"] for f in reported] == ["target.build-failed"]
    found = reported[0]["found"]
    assert "sweeps/custom_target.py" in found and "build()" in found
    assert "raised RuntimeError: Error(s) in loading state_dict for TinyGPT" in found
    assert "\n" not in found
    assert not [f for f in audit["findings"] if f["subject"] == "checkpoint=fresh"]
    broken = [r for r in outcome.results if r.params["checkpoint"] == "other"]
    assert broken and all(r.outcome == "error" for r in broken)
    # each trial names the failed build and the line of the user's file it passed through
    assert all(
        "TargetBuildError" in r.error
        and "RuntimeError" in r.error
        and "custom_target.py:" in r.error
        for r in broken
    ), [r.error for r in broken]
