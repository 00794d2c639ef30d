"""report.html: built from a real sweep's files, opened in headless Chromium."""

from __future__ import annotations

import base64
import json
import math
import os
import random
import re
import select
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from nansearch.analysis.ranking import Bins
from nansearch.cli.main import main as cli_main
from nansearch.cli.report import report
from nansearch.cli.sweep import sweep
from nansearch.config import NansearchError
from nansearch.report.sections import leveler
from tests.conftest import DEMO, demo_overrides

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT = 60  # seconds without a word from chromium
HOSTILE = '<img src=x onerror="document.title=1"><script>window.bad=1</script>'

CONCLUSIONS = [
    {"text": "dtype=fp16 alone is sufficient: 4/4 runs NaN, fixed by any other dtype"},
    {"text": f"checkpoint {HOSTILE} is suspicious"},
]
AUDIT = {
    "findings": [
        {
            "severity": "error",
            "check": "checkpoint-prefix",
            "subject": "checkpoint=blip2-full",
            "found": "every key starts with language_model.",
            "why": "loaded into OPTForCausalLM, no weight matches: all are newly initialized",
            "fix": "load the language-only OPT checkpoint",
        },
        {
            "severity": "info",
            "check": "dtype",
            "subject": HOSTILE,
            "found": "fp32 weights",
            "why": "-",
            "fix": "-",
        },
    ]
}
RERUN = {
    "trial": 3,
    "params": {"dtype": "fp16", "lr": 0.3},
    "diagnosis": "step 1: parameters of model.decoder.layers.0.fc1 became NaN in the "
    "optimizer update: Adam eps 1e-8 is 0 in fp16",
    "reproduced": True,
    "seed_rate": {"nan": 3, "total": 3},
    "first_bad_step": 1,
    "stage": "optimizer",
    "module": "model.decoder.layers.0.fc1",
    "trail": [
        {"module": "model.decoder.layers.0.self_attn", "absmax": 12.5},
        {"module": "model.decoder.layers.0.fc1", "absmax": 65504.0},
    ],
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, demo_cache) -> Path:
    """One real small sweep (tracking off), shared by the tests of this module."""
    out = tmp_path_factory.mktemp("swept")
    cwd = os.getcwd()
    os.chdir(out)
    try:
        sweep(DEMO, demo_overrides(trials=8, steps=3, out=str(out)))
    finally:
        os.chdir(cwd)
    return out / "t"


@pytest.fixture
def study(swept, tmp_path) -> Path:
    """A copy of the swept study in this test's folder, with later analyses added."""
    study = tmp_path / "runs" / "t"
    shutil.copytree(swept, study)
    ranking = json.loads((study / "ranking.json").read_text())
    names = [f["name"] for f in ranking["factors"]]
    ranking["conclusions"] = CONCLUSIONS
    ranking["importance"] = {name: round(1 / (i + 1), 3) for i, name in enumerate(names)}
    ranking["interactions"] = [
        {
            "factors": ["dtype", "lr"],
            "values": ["fp16", "0.1..1"],
            "nan": 4,
            "total": 4,
            "rate": 1.0,
        }
    ]
    ranking["minimal_causes"] = [{"trial": 3, "values": {"dtype": "fp16"}, "probes": 4}]
    (study / "ranking.json").write_text(json.dumps(ranking))
    (study / "audit.json").write_text(json.dumps(AUDIT))
    (study / "reruns").mkdir()
    (study / "reruns" / "3.json").write_text(json.dumps(RERUN))
    return study


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, profile: Path):
        to_chrome, self._ours = os.pipe()
        self._theirs, from_chrome = os.pipe()
        # chromium reads commands from its fd 3 and writes replies to its fd 4
        self.proc = subprocess.Popen(
            [
                "bash",  # dash takes single-digit descriptors only
                "-c",
                f'exec "$@" 3<&{to_chrome} 4>&{from_chrome}',
                "bash",
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(to_chrome, from_chrome),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self.buffer = b""
        self.last_id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=self.session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            session=self.session,
            width=1200,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _message(self) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self._theirs], [], [], TIMEOUT)
            if not ready:
                raise TimeoutError(f"chromium sent nothing for {TIMEOUT}s")
            chunk = os.read(self._theirs, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._ours, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def open(self, path: Path) -> None:
        self.events.clear()
        self.send("Page.navigate", session=self.session, url=path.resolve().as_uri())
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._message())

    def evaluate(self, expression: str):
        result = self.send(
            "Runtime.evaluate", session=self.session, expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors and failed loads since the last open()."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"uncaught: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry']['text']}")
        return found

    def screenshot(self, path: Path) -> None:
        size = self.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
        shot = self.send(
            "Page.captureScreenshot",
            session=self.session,
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": 1200, "height": size["height"], "scale": 1},
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._ours)
            os.close(self._theirs)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (.ci/run installs Debian's)")
def test_report_renders_in_headless_chromium(study, tmp_path):
    path = report("t", out=str(tmp_path / "runs"))
    assert path == study / "report.html"
    ranking = json.loads((study / "ranking.json").read_text())
    with tempfile.TemporaryDirectory(dir=tmp_path) as profile:
        browser = Chromium(Path(profile))
        try:
            # the harness sees errors: a page that throws and logs one is caught
            broken = tmp_path / "broken.html"
            broken.write_text("<script>console.error('bad'); missing();</script>")
            browser.open(broken)
            assert len(browser.problems()) == 2, browser.problems()

            browser.open(path)
            text = browser.evaluate("document.body.innerText")
            problems = browser.problems()
            injected = browser.evaluate(
                "[document.images.length, document.scripts.length, window.bad, document.title]"
            )
            shot = tmp_path / "report.png"
            browser.screenshot(shot)
        finally:
            browser.close()
    assert problems == []
    assert injected == [0, 0, None, "nansearch: t"]  # user strings were shown, never run

    conclusions = text.split("Conclusions", 2)[2].split("Ranking")[0]
    assert CONCLUSIONS[0]["text"] in conclusions
    assert f"checkpoint {HOSTILE} is suspicious" in conclusions
    table = text.split("95% interval")[1].split("NaN rate per level")[0]
    for factor in ranking["factors"]:
        assert factor["name"] in table
        for row in factor["levels"]:
            assert f"{row['value']}\t{row['nan']} / {row['total']}" in table
    assert "load the language-only OPT checkpoint" in text
    assert RERUN["diagnosis"] in text and "3/3 NaN" in text
    assert "dtype=fp16 & lr=0.1..1" in text  # the interaction

    assert shot.stat().st_size > 20_000
    if os.environ.get("NANSEARCH_TEST_ARTIFACTS"):
        keep = Path(os.environ["NANSEARCH_TEST_ARTIFACTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "report.png")


def test_report_is_self_contained_and_escapes_user_strings(study):
    ranking = json.loads((study / "ranking.json").read_text())
    ranking["factors"][0]["levels"][0]["value"] = HOSTILE
    ranking["study"] = "<b>t</b>"
    (study / "ranking.json").write_text(json.dumps(ranking))
    html = report("t", out=str(study.parent)).read_text()
    assert "<script" not in html and "<img" not in html
    assert "&lt;img src=x onerror=&quot;document.title=1&quot;&gt;" in html
    assert "<title>nansearch: &lt;b&gt;t&lt;/b&gt;</title>" in html
    # nothing to fetch: every link is an anchor on the page or inline data
    assert re.findall(r'<[^>]+\s(?:src|href)="(?!#|data:)', html) == []
    assert "url(" not in html and "@import" not in html


def test_sections_appear_only_for_the_files_present(swept, study):
    # the sweep's folder without the audit and the optional ranking keys
    bare_dir = swept.parent / "bare"
    shutil.copytree(swept, bare_dir, ignore=shutil.ignore_patterns("audit.json", "reruns"))
    ranking = json.loads((bare_dir / "ranking.json").read_text())
    for key in ("conclusions", "importance", "interactions", "minimal_causes"):
        ranking.pop(key, None)
    (bare_dir / "ranking.json").write_text(json.dumps(ranking))
    bare = report("bare", out=str(swept.parent)).read_text()
    full = report("t", out=str(study.parent)).read_text()
    for anchor in (
        "conclusions",
        "importance",
        "interactions",
        "minimal-causes",
        "audit",
        "reruns",
    ):
        assert f'id="{anchor}"' not in bare
        assert f'id="{anchor}"' in full
    for anchor in ("ranking", "rates", "pairs", "first-bad-step", "trials", "config"):
        assert f'id="{anchor}"' in bare
    trials = [json.loads(line) for line in (swept / "trials.jsonl").read_text().splitlines()]
    for dtype in {t["params"]["dtype"] for t in trials}:
        these = [t for t in trials if t["params"]["dtype"] == dtype]
        nan = sum(t["outcome"].startswith("nonfinite") for t in these)
        assert f"{nan}/{len(these)} NaN" in bare  # first bad step by dtype, per row


def test_range_levels_match_the_ranking_bins():
    bins = Bins.log_spaced(1e-4, 1.0)
    factor = {"kind": "range", "levels": [{"value": label} for label in bins.labels()]}
    level = leveler(factor)
    rng = random.Random(0)
    values = [10 ** rng.uniform(-4, 0) for _ in range(200)] + list(bins.edges)
    for value in values:
        assert level(value) == bins.label(bins.index(value)), value
    assert level("fp16") is None and math.isclose(bins.edges[-1], 1.0)
    # labels that no log-spaced bins produce are left out rather than guessed
    assert leveler({"kind": "range", "levels": [{"value": "a..b"}]})(0.5) is None


def test_report_command_names_the_studies_it_knows(study, capsys):
    with pytest.raises(NansearchError, match=r"no study 'nope' under runs/ \(studies there: t\)"):
        report("nope", out="runs")
    assert cli_main(["report", "nope", "--out", "runs"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert cli_main(["report", "t", "--out", "runs"]) == 0
    assert capsys.readouterr().out.strip() == str(Path("runs/t/report.html"))
