"""The threads setting: torch's CPU threads in a sweep and in each worker, reported."""

import pytest
import torch
import yaml

from nansearch.config import ConfigError, load_config
from nansearch.search.study import SweepCallbacks
from nansearch.search.sweep import run_sweep
from nansearch.tracking.tracker import end_session
from tests.conftest import DEMO, demo_overrides
from tests.test_tracking import offline_runs


def test_threads_must_be_a_whole_number_of_at_least_one():
    assert load_config(DEMO).threads == 1
    with pytest.raises(ConfigError, match=r"threads=0: must be at least 1"):
        load_config(DEMO, ["threads=0"])
    with pytest.raises(ConfigError, match=r"threads='two'"):
        load_config(DEMO, ["threads=two"])


def test_a_sweep_trains_on_its_threads_and_records_them(tmp_path):
    torch.set_num_threads(1)
    seen = []
    cfg = load_config(
        DEMO, demo_overrides(trials=3, steps=2, threads=2, **{"tracking.wandb": "offline"})
    )
    end_session()
    try:
        run_sweep(
            cfg, callbacks=SweepCallbacks(on_trial=[lambda r: seen.append(torch.get_num_threads())])
        )
    finally:
        end_session()
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == 1  # given back when the sweep ends
    study = tmp_path / "runs" / "t"
    assert yaml.safe_load((study / "config.yaml").read_text())["threads"] == 2
    (analysis,) = [r for r in offline_runs(study) if r["run"]["job_type"] == "analysis"]
    assert analysis["config"]["threads"] == 2
