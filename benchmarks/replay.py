"""Replay a recorded study's ranking: ranking.json rebuilt from the study's files, no training.

``python -m benchmarks.replay STUDY_DIR OUT_DIR`` reads ``config.yaml``, ``trials.jsonl``
and the confirmations and isolations of ``ranking.json`` in ``STUDY_DIR`` and writes
``OUT_DIR/ranking.json`` as the sweep writes it before its fixes (the ranking, what the
probe shares left unspent, the runs at risk). Run it on two trees and ``cmp`` the two
files to show that a change leaves the ranking as it was; a study written by the same
tree replays to the sections of its own ranking.json that come before ``ignored`` and
``fixes``.

Beside it go what the sweep shows from a ranking: ``report.html`` and ``summary.txt``
(the table and conclusions the command line prints), for the replayed ranking and, in
``OUT_DIR/recorded/``, for the study's own ranking.json as it is, with its fixes and
ignored factors. ``cmp`` each pair to compare the report and the printed conclusions.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any


def replay(study_dir: Path, out_dir: Path) -> Path:
    from nansearch.config import config_from_yaml
    from nansearch.factors import build_factors
    from nansearch.search.confirm import Confirmation
    from nansearch.search.isolate import Isolation
    from nansearch.search.prober import Probes
    from nansearch.search.records import read_trials
    from nansearch.search.sweep import write_ranking

    cfg = config_from_yaml((study_dir / "config.yaml").read_text(), str(study_dir / "config.yaml"))
    recorded: dict[str, Any] = json.loads((study_dir / "ranking.json").read_text())
    probes = Probes(
        confirmations=[
            # built from its fields, so that the replay runs on trees without from_json too
            Confirmation(c["trial"], c["params"], list(c["rerun_trials"]), c["nan"] - 1)
            for c in recorded.get("confirmations") or []
        ],
        isolations=[Isolation.from_json(i) for i in recorded.get("minimal_causes") or []],
        unspent=recorded.get("unspent"),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    results = read_trials(study_dir / "trials.jsonl")
    write_ranking(cfg, build_factors(cfg), results, out_dir, probes, recorded.get("settled"))
    shown(study_dir, out_dir)
    (out_dir / "recorded").mkdir(exist_ok=True)
    shutil.copyfile(study_dir / "ranking.json", out_dir / "recorded" / "ranking.json")
    shown(study_dir, out_dir / "recorded")
    return out_dir / "ranking.json"


def shown(study_dir: Path, out_dir: Path) -> None:
    """``report.html`` and ``summary.txt`` from ``out_dir/ranking.json`` and the study's
    other files (its trials, audit, reruns and config, copied beside it)."""
    from nansearch.cli.sweep import print_outcome
    from nansearch.report.page import write_report
    from nansearch.search.sweep import SweepOutcome

    for name in ("trials.jsonl", "audit.json", "config.yaml"):
        if (study_dir / name).is_file():
            shutil.copyfile(study_dir / name, out_dir / name)
    if (study_dir / "reruns").is_dir():
        shutil.copytree(study_dir / "reruns", out_dir / "reruns", dirs_exist_ok=True)
    write_report(out_dir)
    ranking = json.loads((out_dir / "ranking.json").read_text())
    outcome = SweepOutcome(Path(study_dir.name), [], ranking, settled=ranking.get("settled"))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        print_outcome(outcome, 0.0)
    (out_dir / "summary.txt").write_text(text.getvalue())


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.replay STUDY_DIR OUT_DIR", file=sys.stderr)
        return 2
    print(replay(Path(argv[0]), Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
