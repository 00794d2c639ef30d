"""``nansearch sweep SWEEP.yaml [key=value ...]``: audit, search, rank, report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from nansearch.analysis.conclusions import error_line, first_error
from nansearch.analysis.ranking import format_table
from nansearch.analysis.warning import format_at_risk
from nansearch.audit import format_findings
from nansearch.config import load_config
from nansearch.jsonl import DISK_ERRNOS, WriteError, disk_error
from nansearch.search.fix import format_conclusions
from nansearch.search.ignored import format_ignored
from nansearch.search.lease import LeaseLost
from nansearch.search.reconnect import StorageLost
from nansearch.search.study import SweepCallbacks
from nansearch.search.sweep import SweepOutcome, run_sweep
from nansearch.trial.runner import TrialResult

DEFAULT_SWEEP = "sweeps/demo.yaml"


def add_sweep_file(parser: argparse.ArgumentParser) -> None:
    """The sweep file and its dotted overrides, as every command that reads one takes them."""
    parser.add_argument(
        "sweep_file",
        nargs="?",
        default=DEFAULT_SWEEP,
        help=f"the sweep file (default {DEFAULT_SWEEP})",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. trials=20 factors.lr.high=1.0",
    )


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="search the suspected causes and rank them")
    add_sweep_file(parser)
    parser.add_argument(
        "--resume", action="store_true", help="continue an existing study up to its trial budget"
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes on this machine, one per GPU round-robin (same as workers=N)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads of each worker (same as threads=N; default 1)",
    )
    parser.set_defaults(func=main)


class Progress:
    """A progress bar: trials done, NaN so far, time left."""

    def __init__(self):
        self.nan = 0
        self.bar = None

    def start(self, done: int, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=done,
            unit="trial",
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
        )

    def __call__(self, result: TrialResult) -> None:
        self.nan += result.is_nan
        self.bar.set_postfix_str(f"NaN {self.nan}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def show_audit(audit) -> None:
    """The audit's findings, printed before the progress bar starts."""
    print(format_findings(audit), flush=True)
    print(flush=True)


def sweep(
    sweep_file: str,
    overrides: list[str],
    resume: bool = False,
    workers: int | None = None,
    threads: int | None = None,
) -> SweepOutcome:
    if workers is not None:
        overrides = [*overrides, f"workers={workers}"]
    if threads is not None:
        overrides = [*overrides, f"threads={threads}"]
    cfg = load_config(sweep_file, overrides)
    progress = Progress()
    callbacks = SweepCallbacks(on_start=[progress.start], on_trial=[progress])
    try:
        return run_sweep(cfg, resume=resume, callbacks=callbacks, on_audit=show_audit)
    finally:
        progress.close()


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    again = shlex.join(["nansearch", "sweep", args.sweep_file, *args.overrides, "--resume"])
    try:
        outcome = sweep(args.sweep_file, args.overrides, args.resume, args.workers, args.threads)
    except (OSError, WriteError) as exc:
        if isinstance(exc, OSError) and exc.errno not in DISK_ERRNOS:
            raise
        error = exc if isinstance(exc, WriteError) else disk_error(exc)
        raise WriteError(
            f"{error}; every trial recorded before it is kept. Free some space, then: {again}"
        ) from None
    except StorageLost as exc:
        raise StorageLost(f"{exc}. Once it is reachable again: {again}") from None
    except LeaseLost as exc:
        raise LeaseLost(
            f"{exc}. Every trial recorded before it is kept; once that sweep has ended: {again}"
        ) from None
    print_outcome(outcome, time.perf_counter() - start)
    if not outcome.complete:
        print(
            f"{outcome.queued_done} of {outcome.budget} queued trials recorded; to go on: {again}"
        )
    if all_errored(outcome):
        first = first_error(outcome.results)
        print(
            f"nansearch: every one of the {len(outcome.results)} trials ended in an error, so the "
            f"sweep found nothing about NaN; the first, trial {first.number}: "
            f"{error_line(first)}; each trial's error is in "
            f"{outcome.files.get('trials', outcome.study_dir / 'trials.jsonl')}",
            file=sys.stderr,
        )
    return exit_code(outcome)


def all_errored(outcome: SweepOutcome) -> bool:
    return bool(outcome.results) and all(r.outcome == "error" for r in outcome.results)


def exit_code(outcome: SweepOutcome) -> int:
    """0 when it ran to its end; 128 + the signal when one stopped it (130 for Ctrl-C); 1 when
    every trial ended in an error."""
    if outcome.interrupted:
        return 128 + outcome.interrupted
    return 1 if all_errored(outcome) else 0


def print_outcome(outcome: SweepOutcome, seconds: float) -> None:
    print()
    if outcome.settled:
        print(
            f"settled after {outcome.settled['after']} cover and focus trials: "
            f"{outcome.settled['causes']}"
        )
    print(format_table(outcome.ranking))
    if outcome.ranking.get("ignored"):
        print()
        print(format_ignored(outcome.ranking["ignored"]))
    if outcome.ranking.get("conclusions"):
        print()
        print("conclusions")
        print(format_conclusions(outcome.ranking))
    if outcome.ranking.get("at_risk"):
        print()
        print(format_at_risk(outcome.ranking["at_risk"]))
    print()
    print(f"study {outcome.study_dir} ({seconds:.0f}s)")
    for name, path in outcome.files.items():
        print(f"  {name:<9} {path}")
    for line in tracking_lines(outcome.tracking):
        print(line)


def tracking_lines(info: dict) -> list[str]:
    """Where the W&B runs are: the report URL online, the sync command offline."""
    lines = []
    if info.get("report_url"):
        lines.append(f"W&B report: {info['report_url']}")
    if info.get("runs_url"):
        lines.append(f"W&B runs:   {info['runs_url']}")
    if info.get("sync"):
        lines.append(f"W&B runs are offline; upload them with: {info['sync']}")
    if info.get("failures"):
        lines.append(f"W&B failed {info['failures']} time(s); see the warnings above")
    return lines
