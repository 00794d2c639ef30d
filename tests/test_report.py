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

import jinja2
import pytest

from nansearch.analysis.ranking import Bins, FactorTable, factor_table
from nansearch.cli.main import main as cli_main
from nansearch.cli.report import report
from nansearch.cli.sweep import sweep
from nansearch.config import NansearchError
from nansearch.diagnose.rerun import rerun_study
from nansearch.report import page as report_page
from nansearch.report import sections as report_sections
from nansearch.report.page import environment
from nansearch.report.sections import leveler
from tests.conftest import DEMO, demo_overrides

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT = 60  # seconds without a word from chromium
HOSTILE = '<img src=x onerror="document.title=1"><script>window.bad=1</script>'
WIDTH = 1400  # the window the page must fit, tables included


@pytest.fixture(scope="module")
def swept(tmp_path_factory, demo_cache) -> Path:
    """A real demo sweep large enough for causes, confirmations and isolations, and a real
    `nansearch rerun` of it (tracking off), shared by the tests of this module."""
    out = tmp_path_factory.mktemp("swept")
    cwd = os.getcwd()
    os.chdir(out)
    try:
        sweep(DEMO, demo_overrides(trials=40, steps=3, out=str(out)))
        rerun_study(out / "t", top=3, seeds=0)
    finally:
        os.chdir(cwd)
    return out / "t"


@pytest.fixture
def study(swept, tmp_path) -> Path:
    """A copy of the swept study in this test's folder."""
    study = tmp_path / "runs" / "t"
    shutil.copytree(swept, study)
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
            width=WIDTH,
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
            clip={"x": 0, "y": 0, "width": WIDTH, "height": size["height"], "scale": 1},
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


# What the page says, read back in the browser: each element's text and layout.
PAGE_FACTS = """(() => {
  const text = (el) => el ? el.innerText : null;
  const links = [...document.querySelectorAll('a[href^="#"]')].map(a => a.getAttribute('href'));
  const svgText = (root) => [...root.querySelectorAll('svg text')].map(t => {
    const box = t.getBBox();
    return {text: t.textContent, x: box.x};
  });
  return {
    width: document.documentElement.scrollWidth,
    images: document.images.length,
    scripts: document.scripts.length,
    bad: window.bad === undefined ? null : window.bad,
    title: document.title,
    conclusions: [...document.querySelectorAll('ol.conclusions > li')].map(li => ({
      id: li.id,
      links: [...li.querySelectorAll(':scope > a')].map(a => a.getAttribute('href')),
      own: text(li),
      reruns: [...li.querySelectorAll('article.rerun')].map(a => a.id),
    })),
    cards: [...document.querySelectorAll('article.rerun')].map(a => ({
      id: a.id, svgs: a.querySelectorAll('svg').length, labels: svgText(a),
    })),
    broken: links.filter(h => !document.getElementById(h.slice(1))),
    ranking: text(document.querySelector('#ranking')),
    headers: [...document.querySelectorAll('table.ranking th')].map(th => th.innerText),
    minimal: text(document.querySelector('#minimal-causes')),
    trialsHead: [...document.querySelectorAll('table.trials th')].map(th => th.innerText),
    probeCells: [...document.querySelectorAll('table.trials tr[id^="trial-"]')].map(
      tr => [tr.id, tr.cells[1].innerText, tr.cells[2].innerText]),
    firstBad: text(document.querySelector('#first-bad-step')),
    firstBadSvgs: document.querySelectorAll('#first-bad-step svg').length,
    curves: document.getElementById('curves') !== null,
    header: text(document.querySelector('header')),
    body: document.body.innerText,
  };
})()"""


def read_page(path: Path, tmp_path: Path, shot: Path | None = None) -> tuple[dict, list]:
    with tempfile.TemporaryDirectory(dir=tmp_path) as profile:
        browser = Chromium(Path(profile))
        try:
            browser.open(path)
            facts = browser.evaluate(PAGE_FACTS)
            problems = browser.problems()
            if shot is not None:
                browser.screenshot(shot)
        finally:
            browser.close()
    return facts, problems


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (.ci/run installs Debian's)")
def test_report_renders_in_headless_chromium(study, tmp_path):
    path = report("t", out=str(tmp_path / "runs"))
    assert path == study / "report.html"
    ranking = json.loads((study / "ranking.json").read_text())
    reruns = [json.loads(p.read_text()) for p in sorted((study / "reruns").glob("*.json"))]
    trials = [json.loads(line) for line in (study / "trials.jsonl").read_text().splitlines()]
    with tempfile.TemporaryDirectory(dir=tmp_path) as profile:
        browser = Chromium(Path(profile))
        try:
            # the harness sees errors: a page that throws and logs one is caught
            broken = tmp_path / "broken.html"
            broken.write_text("<script>console.error('bad'); missing();</script>")
            browser.open(broken)
            assert len(browser.problems()) == 2, browser.problems()
        finally:
            browser.close()
    shot = tmp_path / "report.png"
    page, problems = read_page(path, tmp_path, shot)
    assert problems == []
    assert page["width"] <= WIDTH  # every table fits a 1400 px window
    assert page["broken"] == []  # every in-page link has its target

    # conclusions: the real ones, trial numbers linked to the trials' rows
    conclusions = ranking["conclusions"]
    assert [c["id"] for c in page["conclusions"]] == [
        f"conclusion-{i}" for i in range(1, len(conclusions) + 1)
    ]
    for item, shown in zip(conclusions, page["conclusions"], strict=True):
        assert item["text"] in shown["own"]
    for item, shown in zip(conclusions, page["conclusions"], strict=True):
        named = re.findall(r"\btrials? (\d+(?:, \d+)*)", item["text"])
        numbers = [n for group in named for n in group.split(", ")]
        assert shown["links"] == [f"#trial-{n}" for n in numbers]
    assert "Reruns of trial" not in page["body"]
    if ranking["confirmations"]:
        assert "Confirmation of trial" in page["body"]

    # each rerun sits under the conclusion it serves, with its diagnosis
    assert len(reruns) == 3
    placed = {r: c["id"] for c in page["conclusions"] for r in c["reruns"]}
    for record in reruns:
        serves = record["serves"]
        card = f"rerun-{record['trial']}"
        if serves is not None:
            assert placed[card] == f"conclusion-{serves['conclusion']}"
        assert record["diagnosis"] in page["body"]
    # the magnitude chart only where the NaN was born in the forward pass, its labels whole
    cards = {c["id"]: c for c in page["cards"]}
    for record in reruns:
        card = cards[f"rerun-{record['trial']}"]
        drawn = record["stage"] == "forward" and bool(record["trail"])
        assert card["svgs"] == int(drawn), record["stage"]
        if drawn:
            modules = {t["module"] for t in record["trail"]}
            shown = [t for t in card["labels"] if t["text"] in modules]
            assert len(shown) == len(record["trail"])
            assert all(t["x"] >= 0 for t in card["labels"])  # nothing cut off at the left

    # the ranking: alone counts and the per-level p-value, and what the tables count
    assert {"alone", "level effect", "p"} <= set(page["headers"])
    for factor in ranking["factors"]:
        for row in factor["levels"]:
            alone = row["alone"]
            assert f"{row['value']}\t{row['nan']} / {row['total']}" in page["ranking"]
            assert f"{alone['nan']} / {alone['total']}" in page["ranking"]
    assert "cover and focus trials only" in page["ranking"]
    assert "conclusions count every run" in page["ranking"]

    # minimal causes as sentences and small tables, never flattened dictionaries
    for iso in ranking["minimal_causes"]:
        assert (
            f"From trial {iso['trial']} against passing trial {iso['reference_trial']}"
            in (page["minimal"])
        )
    assert "failing_values=" not in page["body"] and "op==" not in page["body"]

    # the trials table says which trial each probe probes
    assert "probes" in page["trialsHead"]
    rows = {row[0]: row for row in page["probeCells"]}
    for trial in trials:
        row = rows[f"trial-{trial['number']}"]
        assert row[2] == ("" if trial.get("origin") is None else str(trial["origin"]))

    # charts that would show nothing say what they would show, or are not drawn
    steps = {t["first_bad_step"] for t in trials if t["outcome"].startswith("nonfinite")}
    if len(steps) <= 1:
        assert page["firstBadSvgs"] == 0 and "no spread to plot" in page["firstBad"]
    else:
        assert page["firstBadSvgs"] == 1
    longest = max(len(t["loss"]) for t in trials if t["outcome"].startswith("nonfinite"))
    assert page["curves"] == (longest >= 2)

    # the phases line counts what ran
    phases = ranking["phases"]
    assert sum(phases.values()) == ranking["trials"] == len(trials)
    assert ", ".join(f"{k} {v}" for k, v in phases.items()) in page["header"]

    assert shot.stat().st_size > 20_000
    if os.environ.get("NANSEARCH_TEST_ARTIFACTS"):
        keep = Path(os.environ["NANSEARCH_TEST_ARTIFACTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "report.png")


def hostile_study(study: Path) -> None:
    """User strings that would run as markup: in a level, a conclusion, a finding, a rerun."""
    ranking = json.loads((study / "ranking.json").read_text())
    ranking["factors"][0]["levels"][0]["value"] = HOSTILE
    ranking["conclusions"][0]["text"] += f" checkpoint {HOSTILE} is suspicious (trial 0)"
    ranking["study"] = "<b>t</b>"
    (study / "ranking.json").write_text(json.dumps(ranking))
    audit = json.loads((study / "audit.json").read_text())
    audit["findings"][0]["subject"] = HOSTILE
    (study / "audit.json").write_text(json.dumps(audit))
    rerun = next((study / "reruns").glob("*.json"))
    record = json.loads(rerun.read_text())
    record["diagnosis"] = HOSTILE
    rerun.write_text(json.dumps(record))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (.ci/run installs Debian's)")
def test_user_strings_are_shown_never_run(study, tmp_path):
    hostile_study(study)
    path = report("t", out=str(study.parent))
    page, problems = read_page(path, tmp_path)
    assert problems == []
    assert [page["images"], page["scripts"], page["bad"], page["title"]] == [
        0,
        0,
        None,
        "nansearch: <b>t</b>",
    ]
    assert page["body"].count(HOSTILE) >= 4
    assert f"checkpoint {HOSTILE} is suspicious (trial 0)" in page["conclusions"][0]["own"]


def test_report_is_self_contained_and_escapes_user_strings(study):
    hostile_study(study)
    html = report("t", out=str(study.parent)).read_text()
    assert "<script" not in html and "<img" not in html
    assert "&lt;img src=x onerror=&#34;document.title=1&#34;&gt;" in html
    assert "<title>nansearch: &lt;b&gt;t&lt;/b&gt;</title>" in html
    assert '<a href="#trial-0">0</a>' in html  # linked after escaping, not before
    # nothing to fetch: every link is an anchor on the page or inline data
    assert re.findall(r'<[^>]+\s(?:src|href)="(?!#|data:)', html) == []
    assert "url(" not in html and "@import" not in html


def test_the_page_comes_from_autoescaping_templates():
    env = environment()
    assert env.autoescape is True
    assert isinstance(env.undefined(), jinja2.StrictUndefined)
    assert {"page.html", "sections/conclusions.html", "sections/ranking.html"} <= set(
        env.list_templates()
    )
    modules = [Path(report_page.__file__), *Path(report_sections.__file__).parent.glob("*.py")]
    assert len(modules) > 2
    source = "".join(path.read_text() for path in modules)
    assert "escape(" not in source.replace("str(escape(str(text)))", "")  # no hand escaping


def test_sections_appear_only_for_the_files_present(swept, study):
    # the sweep's folder without the audit, the reruns and the optional ranking keys
    bare_dir = swept.parent / "bare"
    shutil.copytree(swept, bare_dir, ignore=shutil.ignore_patterns("audit.json", "reruns"))
    ranking = json.loads((bare_dir / "ranking.json").read_text())
    for key in ("conclusions", "importance", "interactions", "minimal_causes"):
        ranking.pop(key, None)
    (bare_dir / "ranking.json").write_text(json.dumps(ranking))
    bare = report("bare", out=str(swept.parent)).read_text()
    full = report("t", out=str(study.parent)).read_text()
    full_ranking = json.loads((study / "ranking.json").read_text())
    for anchor in ("conclusions", "importance", "interactions", "minimal-causes", "audit"):
        assert f'id="{anchor}"' not in bare
        key = {"minimal-causes": "minimal_causes"}.get(anchor, anchor)
        assert (f'id="{anchor}"' in full) == (anchor == "audit" or bool(full_ranking.get(key)))
    assert 'class="rerun"' not in bare and 'class="rerun"' in full
    for anchor in ("ranking", "rates", "pairs", "first-bad-step", "trials", "config"):
        assert f'id="{anchor}"' in bare
    trials = [json.loads(line) for line in (swept / "trials.jsonl").read_text().splitlines()]
    for dtype in {t["params"]["dtype"] for t in trials}:
        these = [t for t in trials if t["params"]["dtype"] == dtype]
        nan = sum(t["outcome"].startswith("nonfinite") for t in these)
        assert f"{nan}/{len(these)} NaN" in bare  # first bad step by dtype, per row


def test_range_levels_match_the_ranking_bins():
    bins = Bins.log_spaced(1e-4, 1.0)
    factor = FactorTable.from_json(
        json.loads(json.dumps(factor_table([], "lr", bins, []).to_json()))
    )
    assert factor.kind == "range" and [r.value for r in factor.levels] == bins.labels()
    assert factor.edges == list(bins.edges)  # stored, not parsed back from the labels
    level = leveler(factor)
    rng = random.Random(0)
    values = [10 ** rng.uniform(-4, 0) for _ in range(200)] + list(bins.edges)
    for value in values:
        assert level(value) == bins.label(bins.index(value)), value
    assert level("fp16") is None and math.isclose(bins.edges[-1], 1.0)
    # bins that are not log-spaced between their ends, which their labels alone would
    # not give back
    close = Bins((1.0e-3, 1.2e-3, 1.4e-3))
    table = factor_table([], "lr", close, [])
    assert leveler(table)(1.3e-3) == close.label(1) and leveler(table)(1.1e-3) == close.label(0)
    # a table with no edges stored (a ranking.json from before they were) maps nothing
    factor.edges = None
    assert leveler(factor)(0.5) is None


def test_report_command_names_the_studies_it_knows(study, capsys):
    with pytest.raises(NansearchError, match=r"no study 'nope' under runs/ \(studies there: t\)"):
        report("nope", out="runs")
    assert cli_main(["report", "nope", "--out", "runs"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert cli_main(["report", "t", "--out", "runs"]) == 0
    assert capsys.readouterr().out.strip() == str(Path("runs/t/report.html"))
