"""A factor the user's code never reads: every level runs the same steps, and the sweep
says so, naming the factor and how it was passed."""

import json
import textwrap
from pathlib import Path

import pytest

from nansearch.cli.main import main
from nansearch.search.ignored import same_trail
from nansearch.trial.runner import TrialResult
from tests.conftest import REPO, demo_overrides
from tests.test_tracking import offline_runs

# A script with its own model and loop. It takes --lr and --dtype; READS_DTYPE decides
# whether it does anything with the second.
SCRIPT = """
import argparse
import torch

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--dtype", required=True)
args = parser.parse_args()
dtype = getattr(torch, args.dtype) if READS_DTYPE else torch.float32
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5))
model.to(dtype)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
x, y = torch.randn(64, 8, dtype=dtype), torch.randint(0, 5, (64,))
for step in range(100):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    optimizer.step()
"""


def sweep_file(tmp_path, reads_dtype: bool) -> str:
    name = "reads" if reads_dtype else "ignores"
    program = tmp_path / f"{name}.py"
    program.write_text(textwrap.dedent(SCRIPT.replace("READS_DTYPE", str(reads_dtype))))
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
include: [{REPO}/configs/opt-target.yaml]
target:
  kind: command
  program: {program}
  args: --lr ${{lr}} --dtype ${{param_dtype}}
factors:
  checkpoint: {{levels: {{opt-lm: "demo:opt-lm"}}}}
  init: {{levels: {{pretrained: {{scheme: pretrained}}}}}}
  batch: {{levels: [clean]}}
  dtype: {{levels: [fp32, bf16]}}
  lr: {{low: 0.001, high: 0.5}}
"""
    )
    return str(path)


def run(tmp_path, capsys, reads_dtype: bool, study: str) -> tuple[dict, str, str]:
    overrides = demo_overrides(study=study, trials=4, steps=4)
    assert main(["sweep", sweep_file(tmp_path, reads_dtype), *overrides]) == 0
    printed = capsys.readouterr().out
    ranking = json.loads((tmp_path / "runs" / study / "ranking.json").read_text())
    report = (tmp_path / "runs" / study / "report.html").read_text()
    return ranking, printed, report


def test_a_script_that_ignores_a_factor_it_is_given_is_named_once(tmp_path, capsys, demo_cache):
    ranking, printed, report = run(tmp_path, capsys, reads_dtype=False, study="ignores")
    assert ranking["outcomes"] == {"finite": 4}, ranking["outcomes"]
    (item,) = ranking["ignored"]
    assert item["factor"] == "dtype" and item["changed_by"] == ["lr"]
    assert item["passed_as"].startswith("${param_dtype} in target.args")
    assert item["levels"] == [{"fp32": "bf16", "bf16": "fp32"}[item["value"]]]
    assert "dtype is very likely never read by" in item["text"]
    assert "ignores.py" in item["text"] and "while lr changed them" in item["text"]
    # the terminal says it once, plainly
    assert printed.count("dtype is very likely never read") == 1
    assert f"warning: {item['text']}" in printed
    assert "Ignored factors" in report and "dtype is very likely never read" in report


def test_a_script_that_reads_every_factor_gets_no_warning(tmp_path, capsys, demo_cache):
    ranking, printed, report = run(tmp_path, capsys, reads_dtype=True, study="reads")
    assert ranking["outcomes"] == {"finite": 4}, ranking["outcomes"]
    assert "ignored" not in ranking
    assert "never read" not in printed and "Ignored factors" not in report


FUNCTION = """
import torch


def train(trial):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5))
    model.to(trial.param_dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # not trial.lr
    x, y = torch.randn(64, 8, dtype=trial.param_dtype), torch.randint(0, 5, (64,))
    for _ in range(trial.steps):
        optimizer.zero_grad()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        trial.step(logits=logits, loss=loss, model=model)
"""


def test_a_function_that_ignores_the_trials_learning_rate_is_named(tmp_path, capsys, demo_cache):
    (tmp_path / "loop.py").write_text(FUNCTION)
    path = tmp_path / "loop.yaml"
    text = Path(sweep_file(tmp_path, True)).read_text()
    path.write_text(
        text.replace(f"kind: command\n  program: {tmp_path}/reads.py", "kind: function").replace(
            "args: --lr ${lr} --dtype ${param_dtype}", f"fn: {tmp_path}/loop.py:train"
        )
    )
    overrides = demo_overrides(study="fn", trials=4, steps=4, **{"tracking.wandb": "offline"})
    assert main(["sweep", str(path), *overrides]) == 0
    printed = capsys.readouterr().out
    ranking = json.loads((tmp_path / "runs" / "fn" / "ranking.json").read_text())
    assert ranking["outcomes"] == {"finite": 4}, ranking["outcomes"]
    (item,) = ranking["ignored"]
    assert (item["factor"], item["changed_by"]) == ("lr", ["dtype"])
    assert item["passed_as"] == "trial.lr or trial.optimizer()"
    assert f"lr is very likely never read by target.fn={tmp_path}/loop.py:train" in item["text"]
    assert printed.count("lr is very likely never read") == 1
    # the W&B analysis run, read back from its offline file, records the same finding
    (analysis,) = [
        run
        for run in offline_runs(tmp_path / "runs" / "fn")
        if run["run"]["job_type"] == "analysis"
    ]
    assert analysis["summary"]["study/ignored"] == ["lr"]
    run_dir = next((tmp_path / "runs" / "fn" / "wandb").glob(f"*-{analysis['run_id']}"))
    table = json.loads((run_dir / "files" / analysis["summary"]["ignored"]["path"]).read_text())
    (row,) = [dict(zip(table["columns"], data, strict=True)) for data in table["data"]]
    assert (row["factor"], row["changed_by"], row["text"]) == ("lr", "dtype", item["text"])
    assert row["passed_as"] == item["passed_as"]


def steps(loss: list[float]) -> TrialResult:
    n = len(loss)
    return TrialResult({}, 0, n, loss=loss, logit_absmax=[1.0] * n, grad_norm=[2.0] * n)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ([1.0, 0.5], [1.0, 0.5], True),
        ([1.0, 0.5], [1.0, 0.5 * (1 + 1e-9)], True),  # rounding, not a change
        ([1.0, 0.5], [1.0, 0.5001], False),
        ([1.0, float("nan")], [1.0, float("nan")], True),
        ([1.0, 0.5], [1.0, float("nan")], False),
        ([1.0, 0.5], [1.0, 0.5, 0.4], False),
    ],
)
def test_two_trails_are_the_same_only_to_within_rounding(a, b, same):
    assert same_trail(steps(a), steps(b)) is same
