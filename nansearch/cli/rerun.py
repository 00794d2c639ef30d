"""``nansearch rerun [STUDY] [--top K | --trial N ...] [--seeds S]``: diagnose failing trials."""

from __future__ import annotations

import argparse
from pathlib import Path

from nansearch.diagnose.rerun import RecordCallback, RerunOutcome, latest_study, rerun_study

DEFAULT_TOP = 3
DEFAULT_SEEDS = 5


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "rerun", help="rerun the worst trials of a study with diagnostics that locate the NaN"
    )
    parser.add_argument(
        "study", nargs="?", help="the study's name (default: the latest study under --out)"
    )
    parser.add_argument("--out", default="runs", help="where study folders are (default runs)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--top",
        type=int,
        default=DEFAULT_TOP,
        metavar="K",
        help=f"rerun K failing trials, one per conclusion first (default {DEFAULT_TOP})",
    )
    chosen.add_argument(
        "--trial", type=int, nargs="+", metavar="N", dest="trials", help="rerun these trials"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=DEFAULT_SEEDS,
        metavar="S",
        help=f"fresh seeds per trial, for how often it fails (default {DEFAULT_SEEDS})",
    )
    parser.set_defaults(func=main)


def rerun(
    study: str | None,
    out: str = "runs",
    top: int = DEFAULT_TOP,
    trials: list[int] | None = None,
    seeds: int = DEFAULT_SEEDS,
    on_record: RecordCallback | None = None,
) -> RerunOutcome:
    root = Path(out)
    return rerun_study(
        root / (study or latest_study(root)),
        top=top,
        numbers=trials,
        seeds=seeds,
        on_record=on_record,
    )


def main(args: argparse.Namespace) -> int:
    from nansearch.config import load_config
    from nansearch.report.page import write_report
    from nansearch.tracking.tracker import make_tracker

    root = Path(args.out)
    study_dir = root / (args.study or latest_study(root))
    if not (study_dir / "config.yaml").is_file():  # rerun names what is there instead
        rerun(args.study, args.out, args.top, args.trials, args.seeds)
    cfg = load_config(study_dir / "config.yaml")
    tracker = make_tracker(cfg, study_dir)
    tracker.start(cfg)
    try:
        outcome = rerun(
            study_dir.name, args.out, args.top, args.trials, args.seeds, on_record=tracker.log_rerun
        )
        write_report(study_dir)  # the report shows the diagnoses
        if outcome.records:
            tracker.log_report(study_dir, cfg.study)  # a new version of its W&B artifact
    finally:
        tracker.close()
    if not outcome.records:
        print(f"study {outcome.study_dir}: no failing trial to rerun")
        return 0
    for record, path in zip(outcome.records, outcome.files, strict=True):
        params = " ".join(f"{k}={_short(v)}" for k, v in record.params.items())
        rate = record.seed_rate
        same = "reproduced" if record.reproduced else "did NOT reproduce"
        print(f"trial {record.trial}  {params}")
        if record.serves is not None:
            print(f"  serves conclusion {record.serves['conclusion']}: {record.serves['rule']}")
        print(f"  {record.diagnosis}")
        print(f"  {same} with seed {record.seed}; NaN in {rate['nan']}/{rate['total']} fresh seeds")
        print(f"  {path}")
    return 0


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
