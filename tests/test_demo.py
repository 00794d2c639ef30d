"""The demo checkpoints: built the same on any thread count, hashed, checked on every use."""

import functools
import json
import logging
import shutil

import torch

from nansearch import demo


def test_the_build_records_each_weight_files_hash(demo_cache):
    root = demo.cache_root()
    record = json.loads((root / demo.BUILD_FILE).read_text())
    assert (record["version"], record["threads"]) == (demo.VERSION, 1)
    assert record["torch"] == torch.__version__
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert 0 < record["final_loss"] < 2  # trained: the untrained model's loss is ln(512) = 6.2
    for name in demo.NAMES:
        assert record["sha256"][name] == demo.sha256(root / name / demo.WEIGHTS)


def test_a_changed_weight_file_is_found_and_logged(demo_cache, tmp_path, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(demo.cache_root(), copy)
    caplog.set_level(logging.INFO, logger="nansearch.demo")
    assert demo.verified(copy)
    expected = json.loads((copy / demo.BUILD_FILE).read_text())["sha256"]["opt-lm"]
    assert f"demo checkpoint opt-lm: {copy / 'opt-lm' / demo.WEIGHTS} sha256 {expected}" in (
        caplog.text
    )
    weights = copy / "opt-lm" / demo.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    caplog.clear()
    assert not demo.verified(copy)
    assert f"demo checkpoint opt-lm: {weights} has SHA-256" in caplog.text
    assert "rebuilding" in caplog.text
    (copy / demo.BUILD_FILE).unlink()
    assert not demo.verified(copy)  # an unfinished build has no record


def test_a_changed_cache_is_rebuilt_to_the_same_bytes(tmp_path, monkeypatch, caplog):
    # a short build (4 steps), twice in one process: the second rebuild of a changed file
    monkeypatch.setenv("NANSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "train_opt", functools.partial(demo.train_opt, steps=4))
    torch.set_num_threads(2)
    folder = demo.demo_checkpoint("opt-lm")
    assert torch.get_num_threads() == 2  # the build's one thread is given back
    built = json.loads((folder.parent / demo.BUILD_FILE).read_text())["sha256"]
    weights = folder / demo.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    caplog.set_level(logging.INFO, logger="nansearch.demo")
    assert demo.demo_checkpoint("opt-lm") == folder
    assert "rebuilding" in caplog.text
    assert demo.sha256(weights) == built["opt-lm"]  # the same bytes as the first build
    assert not any(p.name.startswith(".") for p in folder.parent.parent.iterdir())


def test_the_build_runs_on_one_thread_deterministically_and_restores_both():
    torch.set_num_threads(2)
    with demo.reproducible():
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 2
    assert not torch.are_deterministic_algorithms_enabled()
