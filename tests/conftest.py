"""Shared fixtures: every test writes only inside its temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """The demo checkpoints, built once per test session in a temporary folder, or the
    folder NANSEARCH_TEST_CACHE names (tests/matrix.sh builds one per kernel set)."""
    shared = os.environ.get("NANSEARCH_TEST_CACHE")
    root = Path(shared) if shared else tmp_path_factory.mktemp("nansearch-cache")
    os.environ["NANSEARCH_CACHE"] = str(root)
    from nansearch.demo import demo_checkpoint

    demo_checkpoint("opt-lm")
    return root


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, demo_cache):
    """W&B, the demo cache and the working folder all point inside the test's tmp_path."""
    wandb_root = tmp_path / "wandb-home"
    for key, sub in [
        ("WANDB_DIR", ""),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CONFIG_DIR", "config"),
    ]:
        path = wandb_root / sub
        path.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(key, str(path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NANSEARCH_CACHE", str(demo_cache))
    monkeypatch.chdir(tmp_path)
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    state = torch.random.get_rng_state()
    yield tmp_path
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    torch.random.set_rng_state(state)


# The demo OPT under plain SGD with three factors whose one triple of values goes NaN
# together (tests/test_three_way.py): fp16, weights re-initialized at std 2, a padded row.
THREE_WAY_SWEEP = """include: [{repo}/configs/opt-target.yaml]
optimizer: {{name: sgd}}
factors:
  checkpoint: {{levels: {{opt-lm: 'demo:opt-lm'}}}}
  dtype: {{levels: [fp32, bf16, fp16]}}
  lr: {{low: 1.0e-4, high: 1.0e-2}}
  init: {{levels: {{pretrained: {{scheme: pretrained}}, normal-large: {{scheme: normal, std: 2.0}}}}}}
  batch: {{levels: [clean, padded-row]}}
"""
THREE_WAY_TRIPLE = {"dtype": "fp16", "init": "normal-large", "batch": "padded-row"}


def demo_overrides(study: str = "t", trials: int = 6, steps: int = 4, **extra) -> list[str]:
    """Overrides that turn the demo into a small, fast sweep inside the current folder."""
    items = {
        "study": study,
        "trials": trials,
        "steps": steps,
        "out": "runs",
        "tracking.wandb": "off",
        **extra,
    }
    return [f"{k}={v}" for k, v in items.items()]


DEMO = str(REPO / "sweeps" / "demo.yaml")
CUSTOM = str(REPO / "sweeps" / "custom.yaml")
