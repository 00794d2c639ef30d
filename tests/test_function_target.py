"""``target.kind: function``: the user's own loop is the trial, judged like a built-in one."""

import json
import math

import pytest
import torch

from nansearch.cli.sweep import sweep
from nansearch.config import load_config
from nansearch.diagnose.diagnostics import Diagnostics
from nansearch.diagnose.rerun import rerun_study
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import TrialRunner
from tests.conftest import DEMO, REPO, demo_overrides

OWN_LOOP = REPO / "examples" / "own_loop.py"
OWN_SWEEP = str(REPO / "sweeps" / "own_loop.yaml")
BASE = {"checkpoint": "opt-lm", "dtype": "fp32", "lr": 1e-3, "init": "pretrained", "batch": "clean"}
KEYS = ("outcome", "first_bad_step", "loss", "logit_absmax", "grad_norm", "skipped_steps", "score")


def runner_for(fn: str | None, steps: int = 6) -> TrialRunner:
    over = [f"steps={steps}"]
    if fn:
        over += ["target.kind=function", f"target.fn={fn}"]
    cfg = load_config(DEMO, over)
    return TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))


def trail(result) -> str:
    data = result.to_json()
    return json.dumps({key: data[key] for key in KEYS})


@pytest.fixture(scope="module")
def builtin(demo_cache):
    return runner_for(None)


def write_fn(tmp_path, body: str) -> str:
    path = tmp_path / "loop.py"
    path.write_text("import torch\nimport torch.nn.functional as F\n\n" + body)
    return f"{path}:train"


@pytest.mark.parametrize("fn", ["train", "train_watched"])
@pytest.mark.parametrize(
    "params",
    [
        BASE,
        {**BASE, "dtype": "fp16"},  # Adam's eps is 0 in fp16: NaN parameters at step 0
        {**BASE, "checkpoint": "blip2-full", "init": "uninitialized-missing"},
        {**BASE, "batch": "labels-all-ignored"},  # mean cross-entropy over no label: 0/0
        {**BASE, "dtype": "amp-fp16", "lr": 0.05},  # the GradScaler skips overflowing steps
    ],
    ids=["fp32", "fp16", "uninitialized", "labels-ignored", "amp-fp16"],
)
def test_the_example_loop_gives_the_builtin_trials_outcome_and_trail(builtin, fn, params):
    expected = builtin.run(params, seed=3)
    got = runner_for(f"{OWN_LOOP}:{fn}").run(params, seed=3)
    assert got.error is None
    assert trail(got) == trail(expected)
    assert got.compute_dtype == expected.compute_dtype
    if params is BASE:
        assert got.outcome == "finite" and len(got.loss) == 6 and got.loss[-1] < got.loss[0]


def test_an_amp_fp16_overflow_at_a_high_lr_ends_the_trial_at_the_same_step(builtin):
    hot = {**BASE, "dtype": "amp-fp16", "lr": 1.0}
    expected = runner_for(None, steps=8).run(hot, seed=0)
    got = runner_for(f"{OWN_LOOP}:train_watched", steps=8).run(hot, seed=0)
    assert expected.outcome == "nonfinite-logits" and expected.skipped_steps > 0
    assert trail(got) == trail(expected)


def test_a_loss_computed_outside_the_model_is_found_by_the_watch(tmp_path):
    fn = write_fn(
        tmp_path,
        """
def train(trial):
    model = trial.load()
    optimizer = torch.optim.SGD(model.parameters(), lr=trial.lr)
    batch = trial.batch()
    labels = batch.pop("labels")
    trial.watch(model, optimizer)
    for _ in range(trial.steps):
        optimizer.zero_grad()
        logits = model(**batch).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        loss.backward()
        optimizer.step()
""",
    )
    backward = torch.Tensor.backward
    runner = runner_for(fn, steps=4)
    finite = runner.run(BASE, seed=0)
    assert finite.outcome == "finite" and len(finite.loss) == 4
    assert all(0 < v < 20 for v in finite.loss) and finite.loss[-1] < finite.loss[0]
    ignored = runner.run({**BASE, "batch": "labels-all-ignored"}, seed=0)
    assert (ignored.outcome, ignored.first_bad_step) == ("nonfinite-loss", 0)
    assert torch.Tensor.backward is backward  # the watch put it back


def test_a_loop_that_catches_every_exception_still_ends_at_the_first_nan(tmp_path):
    fn = write_fn(
        tmp_path,
        """
def train(trial):
    model = trial.load()
    optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr)
    batch = trial.batch()
    for _ in range(trial.steps):
        optimizer.zero_grad()
        out = model(**batch)
        out.loss.backward()
        optimizer.step()
        try:
            trial.step(logits=out.logits, loss=out.loss)
        except Exception:
            pass
""",
    )
    result = runner_for(fn).run({**BASE, "dtype": "fp16"}, seed=0)
    assert (result.outcome, result.first_bad_step) == ("nonfinite-params", 0)
    assert len(result.loss) == 1


def test_a_function_that_reports_nothing_is_an_error_naming_what_was_missing(tmp_path):
    fn = write_fn(tmp_path, "def train(trial):\n    trial.load()\n")
    result = runner_for(fn).run(BASE, seed=0)
    assert result.outcome == "error" and result.score is None
    assert "reported no step" in result.error and "logits" in result.error
    assert "trial.watch(model, optimizer)" in result.error


def test_a_function_that_raises_is_an_error_with_its_traceback(tmp_path):
    fn = write_fn(tmp_path, "def train(trial):\n    raise RuntimeError('my loader broke')\n")
    result = runner_for(fn).run(BASE, seed=0)
    assert result.outcome == "error" and "my loader broke" in result.error
    assert "loop.py" in result.error


def test_a_function_target_that_does_not_exist_is_one_clear_error(tmp_path):
    from nansearch.config import NansearchError

    with pytest.raises(NansearchError, match=r"target\.fn=.*no function 'nope'"):
        runner_for(f"{OWN_LOOP}:nope")
    with pytest.raises(NansearchError, match="function target needs"):
        load_config(DEMO, ["target.kind=function"])


def test_a_rerun_of_a_function_trial_names_the_module_and_the_optimizer_state(builtin):
    runner = runner_for(f"{OWN_LOOP}:train_watched")
    with Diagnostics() as diag:
        params = {**BASE, "checkpoint": "blip2-full", "init": "uninitialized-missing"}
        result = runner.run(params, 0, observer=diag)
    assert result.outcome == "nonfinite-logits"
    assert diag.forward is not None and diag.forward.step == 0
    assert diag.forward.module.startswith("model.") and diag.forward.born
    with Diagnostics() as diag:
        result = runner_for(f"{OWN_LOOP}:train").run({**BASE, "dtype": "fp16"}, 0, observer=diag)
    assert result.outcome == "nonfinite-params"
    assert diag.update is not None and diag.update.eps_in_dtype == 0.0


def test_a_sweep_of_the_own_loop_example_records_and_reruns_its_trials(tmp_path):
    over = demo_overrides(trials=10, steps=3, **{"target.fn": f"{OWN_LOOP}:train"})
    outcome = sweep(OWN_SWEEP, over)
    lines = [json.loads(x) for x in (tmp_path / "runs/t/trials.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and outcome.ranking["trials"] == 10
    assert "ignored" not in outcome.ranking  # the example reads every factor it is given
    assert not [line for line in lines if line["outcome"] == "error"]
    fp16 = [line for line in lines if line["params"]["dtype"] == "fp16"]
    assert fp16 and all(line["outcome"].startswith("nonfinite-") for line in fp16)
    assert all(math.isfinite(line["score"]) for line in lines)
    reruns = rerun_study(tmp_path / "runs" / "t", top=1, seeds=1)
    record = reruns.records[0]
    assert record.reproduced and record.first_bad_step is not None


def test_the_trial_helpers_apply_each_level_to_the_users_objects(builtin, tmp_path):
    seen = {}
    fn = write_fn(
        tmp_path,
        """
SEEN = {}

def train(trial):
    model = trial.load()
    SEEN.update(dtype=next(model.parameters()).dtype, training=model.training)
    batch = trial.batch({"input_ids": torch.arange(8).view(2, 4) + 4,
                         "attention_mask": torch.ones(2, 4, dtype=torch.long),
                         "labels": torch.arange(8).view(2, 4) + 4})
    SEEN.update(labels=batch["labels"].tolist(), checkpoint=trial.checkpoint, lr=trial.lr)
    with trial.autocast():
        SEEN["autocast"] = torch.is_autocast_enabled("cpu")
    optimizer = trial.optimizer(model.parameters())
    SEEN["eps"] = optimizer.param_groups[0]["eps"]
    out = model(**batch)
    trial.update(out.loss, optimizer)
    trial.step(logits=out.logits, loss=out.loss)
""",
    )
    runner = runner_for(fn, steps=1)
    params = {**BASE, "dtype": "amp-bf16", "batch": "labels-all-ignored", "lr": 0.25}
    runner.run(params, seed=0)
    import sys

    seen = sys.modules["nansearch_user_loop"].SEEN
    assert seen["dtype"] == torch.float32 and seen["training"]
    assert seen["labels"] == [[-100] * 4] * 2
    assert seen["autocast"] and seen["lr"] == 0.25 and seen["eps"] == 1e-8
    assert seen["checkpoint"].endswith("opt-lm")
