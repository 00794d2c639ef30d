"""``target.kind: command``: an unmodified script as the trial, watched from inside its process."""

import json
import socket
import textwrap
from pathlib import Path

import pytest
import torch

from nansearch.cli.sweep import sweep
from nansearch.config import ConfigError, load_config
from nansearch.diagnose.diagnostics import Diagnostics
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.tracking.tracker import end_session
from nansearch.trial.runner import TrialRunner
from tests.conftest import REPO, demo_overrides
from tests.test_tracking import inspect as inspect_run

SCRIPT_SWEEP = str(REPO / "sweeps" / "script.yaml")
BASE = {"checkpoint": "opt-lm", "dtype": "fp32", "lr": 1e-3, "init": "pretrained", "batch": "clean"}
EXAMPLE = [
    f"target.program={REPO}/examples/train.py",
    f"target.config={REPO}/examples/train.yaml",
]


def runner_for(overrides: list[str] = (), steps: int = 4, sweep_file: str = SCRIPT_SWEEP):
    extra = EXAMPLE if sweep_file == SCRIPT_SWEEP else []
    cfg = load_config(sweep_file, [f"steps={steps}", *extra, *overrides])
    return TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))


def script(tmp_path, body: str, overrides: list[str] = (), name: str = "job.py") -> TrialRunner:
    """A runner for a script of the test's own, with no config file."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    sweep_file = tmp_path / f"{name}.yaml"
    sweep_file.write_text(
        f"""
include: [{REPO}/configs/opt-target.yaml]
target: {{kind: command, program: {path}, nan_pattern: "NAN in logits!!!"}}
factors:
  checkpoint: {{levels: {{opt-lm: "demo:opt-lm"}}}}
"""
    )
    return runner_for(overrides, sweep_file=str(sweep_file))


@pytest.fixture(scope="module")
def example(demo_cache):
    return runner_for()


@pytest.mark.parametrize(
    ("params", "outcome"),
    [
        (BASE, "finite"),
        ({**BASE, "dtype": "fp16"}, "nonfinite-params"),  # Adam's eps is 0 in fp16
        ({**BASE, "checkpoint": "blip2-full", "init": "uninitialized-missing"}, "nonfinite-logits"),
        ({**BASE, "batch": "labels-all-ignored"}, "nonfinite-loss"),
        # the GradScaler skips every optimizer step from the first: its update is the step
        (
            {
                **BASE,
                "checkpoint": "blip2-full",
                "init": "uninitialized-missing",
                "dtype": "amp-fp16",
            },
            "nonfinite-logits",
        ),
    ],
    ids=["fp32", "fp16", "uninitialized", "labels-ignored", "scaler-skips-from-the-first"],
)
def test_the_unmodified_example_script_meets_each_demo_cause(example, params, outcome):
    result = example.run(params, seed=0)
    assert result.outcome == outcome, result.error
    if outcome == "finite":
        assert len(result.loss) == 4 and result.first_bad_step is None and result.score < 1
    else:
        assert result.first_bad_step == 0 and result.score == 2.0 and len(result.loss) == 1


def test_a_trial_forked_after_the_parent_ran_on_several_threads_finishes(demo_cache):
    """The parent's OpenMP pool is gone in the forked copy; the copy must not wait on it."""
    runner = runner_for(["trial_timeout=120"])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(256, 1024)
        assert torch.isfinite(torch.nn.functional.layer_norm(x @ x.T, (256,))).all()
        result = runner.run(BASE, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert result.outcome == "finite", result.error
    assert len(result.loss) == 4


@pytest.mark.parametrize(
    "levels",
    [{}, {"init": "reinit-normal", "batch": "padded-row"}],
    ids=["the-scripts-own", "levels-applied-inside"],
)
def test_the_same_trial_started_fresh_gives_the_same_trail(example, levels):
    """A forked copy runs on one thread; a fresh one takes the sweep's threads, here one too.
    A forked copy applies the levels from the sweep's settings it holds, a fresh one from
    their text: the same run."""
    params = {**BASE, "lr": 0.05, **levels}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        forked = example.run(params, seed=1)
        fresh = runner_for(["target.start=spawn"]).run(params, seed=1)
    finally:
        torch.set_num_threads(threads)
    assert forked.outcome == fresh.outcome == "finite"
    assert forked.loss == fresh.loss and forked.grad_norm == fresh.grad_norm


def test_a_rerun_of_a_script_trial_names_the_module_in_the_scripts_model(example):
    params = {**BASE, "checkpoint": "blip2-full", "init": "uninitialized-missing"}
    with Diagnostics() as diag:
        result = example.run(params, seed=0, observer=diag)
    assert result.outcome == "nonfinite-logits"
    assert diag.forward is not None and diag.forward.born and diag.forward.step == 0
    assert diag.forward.module.startswith("model.decoder")
    with Diagnostics() as diag:
        result = example.run({**BASE, "batch": "labels-all-ignored"}, seed=0, observer=diag)
    assert result.outcome == "nonfinite-loss"
    assert diag.loss is not None and diag.loss.labels_counted == 0 and diag.loss.labels_total > 0


def test_a_child_that_segfaults_is_an_error_and_the_next_trial_runs(tmp_path):
    runner = script(
        tmp_path,
        """
        import os, signal
        print("about to crash", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
        """,
    )
    result = runner.run(BASE, seed=0)
    assert result.outcome == "error" and result.score is None
    assert "SIGSEGV" in result.error and "about to crash" in result.error
    assert runner_for().run(BASE, seed=0).outcome == "finite"


def test_a_child_that_hangs_is_ended_at_its_time_limit(tmp_path):
    body = "import time\nprint('waiting', flush=True)\ntime.sleep(600)\n"
    result = script(tmp_path, body, ["trial_timeout=2"]).run(BASE, seed=0)
    assert result.outcome == "error" and "timed out after 2 s (trial_timeout)" in result.error
    assert "waiting" in result.error and result.seconds < 60


def test_a_script_that_never_steps_an_optimizer_is_told_what_was_not_seen(tmp_path):
    runner = script(
        tmp_path,
        """
        import torch
        model = torch.nn.Linear(4, 3)
        print(model(torch.ones(2, 4)).sum().item())
        """,
    )
    result = runner.run(BASE, seed=0)
    assert result.outcome == "error"
    assert "never saw a loss, an optimizer step" in result.error


def test_the_output_pattern_and_the_exit_status_catch_a_nan_the_hooks_cannot_see(tmp_path):
    body = textwrap.dedent(
        """
        import sys
        import numpy as np
        with np.errstate(invalid="ignore"):
            value = np.float32(np.inf) - np.float32(np.inf)  # inf - inf is NaN in numpy too
        if value != value:
            print("NAN in logits!!!")
            sys.exit(3)
        """
    )
    by_pattern = script(tmp_path, body).run(BASE, seed=0)
    assert by_pattern.outcome == "error" and "status 3" in by_pattern.error
    by_status = script(tmp_path, body, ["target.nan_exit_codes=[3]"]).run(BASE, seed=0)
    assert (by_status.outcome, by_status.first_bad_step) == ("nonfinite-logits", 0)
    printed = script(tmp_path, "print('NAN in logits!!!')\n", name="printer.py")
    by_output = printed.run(BASE, seed=0)
    assert by_output.outcome == "nonfinite-logits"


def test_bad_command_targets_are_one_error_naming_each_key(tmp_path):
    hparams = tmp_path / "hp.yaml"
    hparams.write_text("model: {name: x}\nlr: 0.1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(
            SCRIPT_SWEEP,
            [
                "target.program=no/such/train.py",
                "target.args=--lr ${lr} --warmup ${warmup}",
                f"target.config={hparams}",
                "target.keys={checkpoint: model.path, lr: lr}",
            ],
        )
    message = str(caught.value)
    assert "target.program='no/such/train.py': no such file" in message
    assert "${warmup} is not a factor or value" in message and "valid names are" in message
    assert "target.keys.checkpoint='model.path': no key model.path" in message
    assert "name ${config} in target.args" in message


def test_a_sweep_of_the_script_records_every_trial(tmp_path):
    outcome = sweep(SCRIPT_SWEEP, demo_overrides(trials=8, steps=3) + EXAMPLE)
    lines = [json.loads(x) for x in (tmp_path / "runs/t/trials.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and outcome.ranking["trials"] == 8
    assert not [line for line in lines if line["outcome"] == "error"]
    assert "ignored" not in outcome.ranking  # the script reads every factor it is given
    assert any(line["outcome"] != "finite" for line in lines)


def test_the_audit_warns_of_a_searched_factor_the_script_never_receives(tmp_path):
    from nansearch.audit.config import audit_config

    cfg = load_config(SCRIPT_SWEEP, [*EXAMPLE, "target.keys={checkpoint: name}"])
    cfg.target.keys = {"checkpoint": "name"}  # the sweep file's keys, less dtype and lr
    found = {f.subject: f for f in audit_config(cfg, torch.device("cpu"))}
    assert found["dtype"].check == "config.factor-unused" and found["dtype"].severity == "warning"
    assert "param_dtype" in found["dtype"].found and "lr" in found
    assert "checkpoint" not in found and "batch" not in found and "init" not in found
    full = load_config(SCRIPT_SWEEP, EXAMPLE)
    assert not [f for f in audit_config(full, torch.device("cpu")) if f.check.endswith("unused")]


WANDB_SCRIPT = """
import sys
import torch
import wandb

wandb.init(config={"width": 8})
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
if sys.argv[1] == "labels-all-ignored":
    y[:] = -100  # cross-entropy's mean over no counted label is 0/0
for step in range(100):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    wandb.log({"loss": loss.item()})
    optimizer.step()
"""


def wandb_runs(folder: Path) -> list[dict]:
    """Each offline run under ``folder``, read back from its .wandb file, with its losses."""
    runs = []
    for run_dir in sorted(folder.glob("offline-run-*")):
        run = inspect_run(run_dir)
        history = [r["history"]["item"] for r in run["records"] if r["type"] == "history"]
        run["history"] = [item["loss"] for item in history if "loss" in item]
        runs.append(run)
    return runs


def test_a_script_that_calls_wandb_init_joins_the_studys_runs(tmp_path, monkeypatch):
    """W&B's own variables put the script's run in the study's group, job type, project and
    folder, in the study's mode: with no WANDB_MODE and no credentials W&B would otherwise
    stop the script at its login."""
    import wandb

    # the caller's own run: a forked trial inherits it, and must leave it as it is
    mine = wandb.init(project="mine", dir=str(tmp_path / "mine"), mode="offline")
    monkeypatch.delenv("WANDB_MODE")
    study = ["tracking.wandb=offline", "study=s", "target.args=${batch}"]
    forked = script(tmp_path, WANDB_SCRIPT, study)
    finite = forked.run(BASE, seed=0)
    nan = forked.run({**BASE, "batch": "labels-all-ignored"}, seed=0)
    plain = WANDB_SCRIPT.replace('wandb.init(config={"width": 8})', "").replace("wandb.log", "dict")
    assert script(tmp_path, plain, study, name="plain.py").run(BASE, seed=0).outcome == "finite"
    assert wandb.run is mine
    mine.log({"after_trials": 1})  # a finished run would refuse this
    mine.finish()
    end_session()  # the next test's W&B reads its environment afresh
    (own,) = wandb_runs(tmp_path / "mine" / "wandb")
    assert own["summary"]["after_trials"] == 1 and own["state"] == "finished"
    fresh = script(tmp_path, WANDB_SCRIPT, [*study, "target.start=spawn"]).run(BASE, seed=0)
    assert finite.outcome == fresh.outcome == "finite", finite.error or fresh.error
    assert (nan.outcome, nan.first_bad_step) == ("nonfinite-loss", 0), nan.error

    runs = wandb_runs(tmp_path / "runs" / "s" / "wandb")
    assert len(runs) == 3
    for run in runs:
        assert (run["run"]["run_group"], run["run"]["job_type"]) == ("s", "trial")
        assert run["project"] == "nansearch" and run["config"] == {"width": 8}
    by_end = sorted(runs, key=lambda run: run["summary"]["nansearch/end"])
    steps_done = [run for run in by_end if run["summary"]["nansearch/end"] == "steps"]
    (failed,) = [run for run in by_end if run["summary"]["nansearch/end"] == "nonfinite-loss"]
    # finished before the process ended: every step it logged is in its history
    assert [run["history"] for run in steps_done] == [finite.loss, fresh.loss]
    assert [run["state"] for run in steps_done] == ["finished", "finished"]
    assert failed["state"] == "failed" and failed["summary"]["nansearch/first_bad_step"] == 0
    assert failed["history"] == ["NaN"]  # the step the trial ended at, logged before its end

    off = script(tmp_path, WANDB_SCRIPT, ["tracking.wandb=off", "study=q", "target.args=${batch}"])
    assert off.run(BASE, seed=0).outcome == "finite"
    assert len(list((tmp_path / "runs").rglob("*.wandb"))) == 3  # tracking off: disabled


def test_a_script_written_for_torchrun_runs_as_a_one_process_trial(tmp_path):
    """What a launcher gives its process, target.env gives it: the script sets up its
    process group from the variables and trains under DistributedDataParallel, watched."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    body = """
    import sys
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")  # from RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    if sys.argv[1] == "labels-all-ignored":
        y[:] = -100  # cross-entropy's mean over no counted label is 0/0
    for step in range(100):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    """
    launcher = (
        f'target.env={{RANK: "0", LOCAL_RANK: "0", WORLD_SIZE: "1", '
        f'MASTER_ADDR: 127.0.0.1, MASTER_PORT: "{port}"}}'
    )
    runner = script(tmp_path, body, [launcher, "target.args=${batch}"])
    finite = runner.run(BASE, seed=0)
    assert finite.outcome == "finite" and len(finite.loss) == 4, finite.error
    nan = runner.run({**BASE, "batch": "labels-all-ignored"}, seed=0)
    assert (nan.outcome, nan.first_bad_step) == ("nonfinite-loss", 0), nan.error
