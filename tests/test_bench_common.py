"""The benchmarks' table and result files: targets judged, previous runs compared."""

import json

from benchmarks._common import Row, alternate, report


def test_report_judges_each_row_and_writes_the_results_file(tmp_path):
    rows = [
        Row("step", 1.02, 1.05, (1.0, 1.04)),
        Row("sweep", 1.3, 1.15),
        Row("gpu", None, 1.05, note="no CUDA device"),
        Row("part", 0.01),
    ]
    text = report("suite", "Title", rows, ["a note"], {"raw": [1, 2]})
    lines = {line.split()[0]: line for line in text.splitlines()[3:7]}
    assert "holds" in lines["step"] and "1.000-1.040" in lines["step"]
    assert "FAILS" in lines["sweep"] and "<= 1.15" in lines["sweep"]
    assert "not measured" in lines["gpu"] and "no CUDA device" in text
    assert "torch threads" in text.splitlines()[1] and "a note" in text

    record = json.loads((tmp_path / "bench-results" / "suite.json").read_text())
    assert [r["verdict"] for r in record["rows"]] == ["holds", "FAILS", "not measured", ""]
    assert record["details"] == {"raw": [1, 2]}
    assert {"cores", "torch_threads", "load_1min"} <= set(record["environment"])


def test_a_second_run_shows_the_previous_figures():
    report("suite", "Title", [Row("step", 1.02, 1.05)], [])
    text = report("suite", "Title", [Row("step", 1.04, 1.05), Row("new", 2.0)], [])
    step = next(line for line in text.splitlines() if line.strip().startswith("step"))
    new = next(line for line in text.splitlines() if line.strip().startswith("new"))
    assert step.split()[1] == "1.040" and step.split()[-1] == "1.020"
    assert new.split()[-1] == "-"
    assert "previous run" in text


def test_alternate_switches_which_side_goes_first():
    order = []

    def side(name):
        return lambda: order.append(name) or 1.0

    pairs = alternate(side("bare"), side("instrumented"), 3)
    assert order == ["bare", "instrumented", "instrumented", "bare", "bare", "instrumented"]
    assert pairs == [(1.0, 1.0)] * 3
