"""W&B tracking: real runs written offline and read back from disk; the W&B Report
built against a local stand-in for the W&B server's GraphQL endpoint."""

from __future__ import annotations

import http.server
import json
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import wandb

from nansearch.cli.main import main as cli_main
from nansearch.cli.sweep import sweep, tracking_lines
from nansearch.config import load_config
from nansearch.diagnose.record import RerunRecord
from nansearch.tracking.tracker import (
    Background,
    FinishedStudy,
    Tracker,
    WandbTracker,
    end_session,
    make_tracker,
    resolve_mode,
)
from nansearch.tracking.wandb_report import build_report
from nansearch.trial.runner import TrialResult
from tests.conftest import DEMO, demo_overrides

WANDB = str(Path(sys.executable).parent / "wandb")
FAKE_KEY = "k" * 40


@pytest.fixture(autouse=True)
def fresh_wandb_session():
    """W&B reads its environment once per session: each test starts and ends its own."""
    end_session()
    yield
    end_session()


def inspect(run_dir: Path) -> dict:
    """A run read back from its .wandb file: the summary view plus the run record."""
    summary = subprocess.run(
        [WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(summary.stdout)
    records = subprocess.run(
        [WANDB, "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [json.loads(line) for line in records.stdout.splitlines() if line.strip()]
    data["run"] = next(line["run"] for line in lines if line["type"] == "run")
    data["records"] = lines
    return data


def offline_runs(study_dir: Path) -> list[dict]:
    return [inspect(d) for d in sorted((study_dir / "wandb").glob("offline-run-*"))]


def test_offline_sweep_logs_each_trial_and_an_analysis_run(tmp_path):
    mine = wandb.init(project="mine", dir=str(tmp_path / "mine"), mode="offline")
    outcome = sweep(DEMO, demo_overrides(trials=5, steps=3, **{"tracking.wandb": "offline"}))
    study = tmp_path / "runs" / "t"
    trials = {
        line["number"]: line
        for line in map(json.loads, (study / "trials.jsonl").read_text().splitlines())
    }
    runs = offline_runs(study)
    by_type = {}
    for run in runs:
        by_type.setdefault(run["run"]["job_type"], []).append(run)
    assert sorted(by_type) == ["analysis", "trial"]
    assert len(by_type["trial"]) == 5 and len(by_type["analysis"]) == 1
    assert {run["run"]["run_group"] for run in runs} == {"t"}
    assert {run["project"] for run in runs} == {"nansearch"}

    for run in by_type["trial"]:
        trial = trials[run["summary"]["trial"]]
        assert run["name"] == f"trial-{trial['number']}"
        assert {k: run["config"][k] for k in trial["params"]} == trial["params"]
        # facts of the run, not parameters: Parameter Importance must not rank them
        assert "trial" not in run["config"] and "seed" not in run["config"]
        assert run["summary"]["seed"] == trial["seed"]
        assert run["config"]["target"] == "causal-lm OPTForCausalLM"
        summary = run["summary"]
        assert summary["outcome"] == trial["outcome"]
        assert run["tags"] == [trial["outcome"]]
        assert summary["score"] == pytest.approx(trial["score"])
        assert summary["nan"] == int(trial["outcome"].startswith("nonfinite"))
        if summary["nan"]:
            assert summary["first_bad_step"] == trial["first_bad_step"]
            assert summary["nonfinite_in"] == trial["outcome"].removeprefix("nonfinite-")
        history = [r["history"]["item"] for r in run["records"] if r["type"] == "history"]
        assert len(history) == len(trial["loss"])  # one row per step the trial ran
        assert {"loss", "logit_absmax", "grad_norm", "nonfinite/logits"} <= set(history[0])
        if trial["outcome"] == "nonfinite-logits":
            assert history[-1]["nonfinite/logits"] == 1

    (analysis,) = by_type["analysis"]
    assert analysis["name"] == "t-analysis"
    assert analysis["summary"]["ranking"]["_type"] == "table-file"
    assert analysis["summary"]["trials"]["nrows"] == 5
    assert analysis["summary"]["study/nan"] == outcome.ranking["nan"]
    run_dir = next((study / "wandb").glob(f"offline-run-*-{analysis['run_id']}"))
    table = json.loads((run_dir / "files" / analysis["summary"]["ranking"]["path"]).read_text())
    ranking = json.loads((study / "ranking.json").read_text())
    expected = [
        (f["name"], row["value"], row["nan"]) for f in ranking["factors"] for row in f["levels"]
    ]
    cols = table["columns"]
    got = [
        (r[cols.index("factor")], r[cols.index("level")], r[cols.index("nan")])
        for r in table["data"]
    ]
    assert got == expected
    for factor in ranking["factors"]:
        assert f"nan_rate/{factor['name']}_table" in analysis["summary"]
    artifacts = [r["artifact"] for r in analysis["records"] if r["type"] == "artifact"]
    (artifact,) = [a for a in artifacts if a["type"] == "report" and a["name"] == "report-t"]
    # what `wandb sync` of the study folder needs is in the study folder, not W&B's staging
    (entry,) = artifact["manifest"]["contents"]
    kept = Path(entry["local_path"])
    assert kept.is_relative_to(study.resolve())
    assert kept.read_bytes() == (study / "report.html").read_bytes()

    # the caller's own run stayed the global one, untouched by the sweep's runs
    assert wandb.run is mine
    mine.log({"after_sweep": 1})  # a finished run would refuse this
    mine.finish()
    (own,) = [inspect(d) for d in (tmp_path / "mine" / "wandb").glob("offline-run-*")]
    assert own["summary"]["after_sweep"] == 1 and own["project"] == "mine"
    assert not (tmp_path / "wandb").exists()  # the runs went into the study folder
    assert outcome.tracking["mode"] == "offline"
    assert outcome.tracking["sync"] == "wandb sync runs/t/wandb"
    assert "upload them with: wandb sync runs/t/wandb" in "\n".join(
        tracking_lines(outcome.tracking)
    )


def test_unreachable_wandb_online_never_stops_the_sweep(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    with caplog.at_level(logging.WARNING, logger="nansearch.tracking.wandb_tracker"):
        outcome = sweep(DEMO, demo_overrides(trials=4, steps=2, **{"tracking.wandb": "online"}))
    study = tmp_path / "runs" / "t"
    lines = (study / "trials.jsonl").read_text().splitlines()
    assert [json.loads(line)["number"] for line in lines] == [0, 1, 2, 3]
    assert json.loads((study / "ranking.json").read_text())["trials"] == 4
    assert (study / "report.html").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("trial 0 failed online" in w and "offline" in w for w in warnings), warnings
    # after the first failure the study went on offline: nothing is missing from W&B either
    runs = offline_runs(study)
    assert sorted(r["summary"]["trial"] for r in runs if r["run"]["job_type"] == "trial") == [
        0,
        1,
        2,
        3,
    ]
    assert outcome.tracking["mode"] == "offline" and outcome.tracking["failures"] == 1
    assert outcome.tracking["sync"] == "wandb sync runs/t/wandb"


def test_a_rerun_is_logged_with_its_trial_and_diagnosis(tmp_path):
    cfg = load_config(DEMO, ["study=s", "out=runs"])
    tracker = make_tracker(cfg, cfg.study_dir)
    assert tracker.mode == "offline"  # no credentials in the tests
    tracker.start(cfg)
    tracker.log_rerun(
        RerunRecord.from_json(
            {
                "trial": 7,
                "params": {"dtype": "fp16", "lr": 0.3},
                "diagnosis": "step 1: parameters became NaN in the optimizer update",
                "reproduced": True,
                "seed_rate": {"nan": 3, "total": 3},
                "first_bad_step": 1,
                "stage": "optimizer",
                "module": "model.decoder.layers.0.fc1",
                "trail": [{"module": "model.decoder.layers.0", "absmax": 310.5}],
            }
        )
    )
    tracker.close()
    (run,) = offline_runs(tmp_path / "runs" / "s")
    assert run["run"]["job_type"] == "rerun" and run["run"]["run_group"] == "s"
    assert run["config"] == {"trial": 7, "dtype": "fp16", "lr": 0.3}
    summary = run["summary"]
    assert summary["diagnosis"].startswith("step 1: parameters became NaN")
    assert summary["reproduced"] is True and summary["stage"] == "optimizer"
    assert summary["seed_rate"] == {"nan": 3, "total": 3}
    assert summary["module"] == "model.decoder.layers.0.fc1"
    assert summary["trail"]["nrows"] == 1
    assert "reproduced" in run["tags"]


def test_default_mode_follows_the_credentials(tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode(None) == "offline"  # no key, no netrc
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert resolve_mode(None) == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode(None) == "online"
    assert resolve_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None) == "off"
    monkeypatch.delenv("WANDB_API_KEY")
    online = load_config(DEMO, ["tracking.wandb=online"])
    assert make_tracker(online, tmp_path).mode == "offline"  # rather than a login prompt
    cfg = load_config(DEMO, ["tracking.wandb=off"])
    tracker = make_tracker(cfg, tmp_path)
    assert type(tracker) is Tracker and tracker.finish_study(FinishedStudy({}, [], tmp_path)) == {}


# -- the W&B Report, against a stand-in for the server's GraphQL endpoint -----------------


class FakeWandbServer(http.server.ThreadingHTTPServer):
    """Answers the GraphQL operations a report save makes; records every request."""

    def __init__(self, fail: set[str] = frozenset()):
        super().__init__(("127.0.0.1", 0), FakeWandbHandler)
        self.fail = fail
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def operation(self, name: str) -> list[dict]:
        return [r for r in self.requests if r.get("operationName") == name]


class FakeWandbHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/graphql":
            return self.reply({})  # telemetry
        request = json.loads(body)
        query = request.get("query", "")
        name = query.split("(")[0].split("{")[0].split()[-1]
        request["operationName"] = name
        self.server.requests.append(request)
        if name in self.server.fail:
            return self.reply({"errors": [{"message": f"{name}: permission denied"}]})
        variables = request.get("variables") or {}
        project = {"id": "UHJvamVjdDox", "name": "nansearch", "entityName": "alice"}
        data = {
            "Viewer": {
                "viewer": {
                    "id": "VXNlcjox",
                    "entity": "alice",
                    "username": "alice",
                    "email": "alice@example.com",
                    "flags": "{}",
                    "teams": {"edges": []},
                }
            },
            "ProjectInternalId": {"project": {"id": "UHJvamVjdDox", "internalId": "p-1"}},
            "GetProjects": {
                "models": {"edges": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}
            },
            "CreateProject": {
                "result": {
                    "project": {**project, "description": "", "access": "PRIVATE", "views": "{}"},
                    "model": {**project, "description": "", "access": "PRIVATE", "views": "{}"},
                    "inserted": True,
                }
            },
            "upsertView": {
                "upsertView": {
                    "view": {
                        "id": "VmlldzoxMjM0",
                        "name": variables.get("name"),
                        "displayName": variables.get("displayName"),
                        "description": variables.get("description"),
                        "type": "runs",
                        "spec": variables.get("spec"),
                        "project": project,
                        "createdAt": "2026-01-01T00:00:00",
                        "updatedAt": "2026-01-01T00:00:00",
                        "user": {"id": "1", "username": "alice", "name": "alice"},
                    },
                    "inserted": True,
                }
            },
        }.get(name, {})
        self.reply({"data": data})

    def reply(self, payload: dict) -> None:
        out = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def wandb_server(monkeypatch, request):
    server = FakeWandbServer(fail=getattr(request, "param", frozenset()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    end_session()
    yield server
    end_session()
    server.shutdown()
    server.server_close()


RANKING = {
    "study": "t",
    "trials": 12,
    "nan": 5,
    "finite": 7,
    "errors": 0,
    "factors": [
        {"name": "dtype", "kind": "categorical", "effect": 1.0, "p_value": 0.01, "levels": []},
        {"name": "lr", "kind": "range", "effect": 0.4, "p_value": 0.2, "levels": []},
        {"name": "batch", "kind": "categorical", "effect": 0.2, "p_value": 0.5, "levels": []},
    ],
    "conclusions": [{"text": "dtype=fp16 alone is sufficient: 4/4 runs NaN"}],
}


def test_report_is_saved_with_the_study_panels(wandb_server):
    url = build_report(entity="alice", project="nansearch", study="t", ranking=RANKING)
    assert url == f"{wandb_server.url}/alice/nansearch/reports/nansearch-t--VmlldzoxMjM0"
    (save,) = wandb_server.operation("upsertView")
    variables = save["variables"]
    assert variables["entityName"] == "alice" and variables["projectName"] == "nansearch"
    assert variables["displayName"] == "nansearch t"
    spec = json.loads(variables["spec"])
    text = json.dumps(spec)
    assert "dtype=fp16 alone is sufficient: 4/4 runs NaN" in text

    grids = [b for b in spec["blocks"] if b["type"] == "panel-grid"]
    trial_set = grids[0]["metadata"]["runSets"][0]
    filters = {f["key"]["name"]: f["value"] for f in trial_set["filters"]["filters"]}
    # the NaN-rate bars count what report.html and ranking.json count: cover and focus
    assert filters == {"group": "t", "jobType": "trial", "phase": ["cover", "focus", "search"]}
    assert "confirmation and isolation probes are left out" in text
    panels = {p["viewType"]: [] for p in grids[0]["metadata"]["panelBankSectionConfig"]["panels"]}
    for panel in grids[0]["metadata"]["panelBankSectionConfig"]["panels"]:
        panels[panel["viewType"]].append(panel["config"])
    (parallel,) = panels["Parallel Coordinates Plot"]
    assert [c["accessor"] for c in parallel["columns"]] == [
        "config:dtype.value",
        "config:lr.value",
        "config:batch.value",
        "summary:score",
    ]
    assert panels["Parameter Importance"][0]["targetKey"] == "score"
    bars = panels["Bar Chart"]  # NaN rate per level: the mean of the runs' 0/1 `nan`
    assert [(b["groupBy"], b["metrics"], b["groupAgg"]) for b in bars] == [
        ("dtype.value", ["nan"], "mean"),
        ("batch.value", ["nan"], "mean"),
    ]
    analysis_set = grids[1]["metadata"]["runSets"][0]
    assert {f["value"] for f in analysis_set["filters"]["filters"]} == {"t", "analysis"}
    assert '"trials"' in json.dumps(grids[1]) and '"ranking"' in json.dumps(grids[1])
    rerun_set = grids[2]["metadata"]["runSets"][0]  # a panel for the reruns
    assert {f["value"] for f in rerun_set["filters"]["filters"]} == {"t", "rerun"}
    kinds = {p["viewType"] for p in grids[2]["metadata"]["panelBankSectionConfig"]["panels"]}
    assert "Run Comparer" in kinds and '"trail"' in json.dumps(grids[2])


@pytest.mark.parametrize("wandb_server", [{"upsertView"}], indirect=True)
def test_a_report_that_cannot_be_saved_is_a_warning(wandb_server, tmp_path, caplog):
    cfg = load_config(DEMO, ["study=t", "tracking.entity=alice"])
    tracker = WandbTracker("online", tmp_path)
    tracker.start(cfg)
    with caplog.at_level(logging.WARNING, logger="nansearch.tracking.wandb_tracker"):
        assert tracker.publish_report(RANKING) is None
    assert "report could not be saved" in caplog.text and "permission denied" in caplog.text
    assert tracker.failures == 1


# -- trial runs off the training path ---------------------------------------------------


class HeldTracker(Tracker):
    """Records the trials it is given; each waits until the test lets it through."""

    mode = "offline"

    def __init__(self, fail_on: int | None = None):
        self.go = threading.Event()
        self.logged: list[int] = []
        self.fail_on = fail_on
        self.closed = False

    def log_trial(self, result):
        self.go.wait()
        if result.number == self.fail_on:
            raise RuntimeError("W&B fell over")
        self.logged.append(result.number)

    def finish_study(self, study):
        return {"logged_before_analysis": list(self.logged)}

    def close(self):
        self.closed = True


def results(*numbers: int) -> list[TrialResult]:
    return [TrialResult(params={}, seed=n, steps=1, number=n) for n in numbers]


def test_background_runs_never_hold_up_the_search_and_all_land_in_order(tmp_path, caplog):
    inner = HeldTracker(fail_on=1)
    tracker = Background(inner)
    tracker.start(load_config(DEMO, ["study=t"]))
    for result in results(0, 1, 2, 3):
        tracker.log_trial(result)  # returns while W&B is still held
    assert inner.logged == []
    inner.go.set()
    with caplog.at_level(logging.ERROR, logger="nansearch.tracking.background"):
        info = tracker.finish_study(FinishedStudy({}, [], tmp_path))
    assert info == {"logged_before_analysis": [0, 2, 3]}  # a failed run stops nothing
    assert "trial 1 could not be logged" in caplog.text
    tracker.close()
    assert inner.closed and tracker.thread is None


def test_the_ledger_names_the_recorded_trials_a_resumed_study_still_has_to_log(tmp_path):
    cfg = load_config(DEMO, ["study=t", "out=runs"])
    fresh = WandbTracker("offline", cfg.study_dir)
    fresh.start(cfg)
    assert fresh.unlogged(results(0, 1)) == []  # a new study: nothing recorded before
    (cfg.study_dir / "wandb-trials.txt").write_text("0\n2\n")
    resumed = WandbTracker("offline", cfg.study_dir)
    resumed.start(cfg)
    assert [r.number for r in resumed.unlogged(results(0, 1, 2, 3))] == [1, 3]


def test_a_resumed_sweep_logs_the_runs_a_killed_one_left_queued(tmp_path):
    offline = {"tracking.wandb": "offline"}
    sweep(DEMO, demo_overrides(trials=3, steps=2, **offline))
    study = tmp_path / "runs" / "t"
    ledger = study / "wandb-trials.txt"
    assert sorted(ledger.read_text().split()) == ["0", "1", "2"]
    # as a kill leaves it: trial 2 recorded in the study, its W&B run never written
    (run_dir,) = [d for d in (study / "wandb").glob("offline-run-*") if trial_of(d) == 2]
    shutil.rmtree(run_dir)
    ledger.write_text("0\n1\n")
    sweep(DEMO, demo_overrides(trials=4, steps=2, **offline), resume=True)
    trials = [r["summary"]["trial"] for r in offline_runs(study) if r["run"]["job_type"] == "trial"]
    assert sorted(trials) == [0, 1, 2, 3]
    assert sorted(ledger.read_text().split()) == ["0", "1", "2", "3"]


def trial_of(run_dir: Path) -> int | None:
    return inspect(run_dir)["summary"].get("trial")


def test_a_rerun_logs_a_new_report_version_and_the_study_folder_syncs_alone(tmp_path):
    sweep(DEMO, demo_overrides(trials=4, steps=3, **{"tracking.wandb": "offline"}))
    study = tmp_path / "runs" / "t"
    before = (study / "report.html").read_bytes()
    end_session()
    assert cli_main(["rerun", "t", "--out", "runs", "--top", "1", "--seeds", "0"]) == 0
    after = (study / "report.html").read_bytes()
    assert after != before  # the diagnosis is on the page now

    def report_artifacts(job_type):
        (run,) = [r for r in offline_runs(study) if r["run"]["job_type"] == job_type]
        (artifact,) = [
            r["artifact"]
            for r in run["records"]
            if r["type"] == "artifact" and r["artifact"]["name"] == "report-t"
        ]
        (entry,) = artifact["manifest"]["contents"]
        return artifact, Path(entry["local_path"])

    first, first_file = report_artifacts("analysis")
    second, second_file = report_artifacts("report")
    assert first["digest"] != second["digest"]  # two versions of one artifact
    assert first_file.read_bytes() == before and second_file.read_bytes() == after
    assert first_file.is_relative_to(study.resolve()) and second_file.is_relative_to(
        study.resolve()
    )

    # a copy of the study folder alone holds every run for `wandb sync`
    copy = shutil.copytree(study, tmp_path / "elsewhere" / "t")
    shutil.rmtree(tmp_path / "wandb-home" / "data", ignore_errors=True)  # W&B's staging
    dry = subprocess.run(
        [WANDB, "sync", "--dry-run", str(copy / "wandb")],
        capture_output=True,
        text=True,
        check=True,
    )
    runs = sorted((copy / "wandb").glob("offline-run-*"))
    assert len(runs) == 4 + 1 + 1 + 1  # trials, analysis, rerun, report
    listed = dry.stdout + dry.stderr
    assert f"Would sync {len(runs)} run(s)" in listed
    for run in runs:
        assert run.name.rsplit("-", 1)[1] in listed
