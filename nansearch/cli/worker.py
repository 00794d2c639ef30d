"""``nansearch worker STUDY --storage URL``: join a study that a sweep started elsewhere.

The sweep stored its resolved configuration in the study, so a worker needs only the
storage URL and the study's name. Its trials come out of the study's shared budget.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from nansearch.cli.sweep import exit_code, print_outcome
from nansearch.config import NansearchError, SweepConfig, load_config
from nansearch.search.storage import open_storage, shown, stored_config
from nansearch.search.study import SweepCallbacks
from nansearch.search.sweep import SweepOutcome, run_sweep
from nansearch.trial.runner import TrialResult

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "worker", help="join a study that nansearch sweep started, sharing its trial budget"
    )
    parser.add_argument("study", help="the study's name, as the sweep gave it")
    parser.add_argument(
        "--storage",
        required=True,
        metavar="URL",
        help="the sweep's storage, e.g. postgresql://user@host/db",
    )
    parser.add_argument(
        "--out", default="runs", help="where this machine writes the study folder (default runs)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes on this machine, one per GPU round-robin (default 1)",
    )
    parser.add_argument(
        "--sweep",
        metavar="FILE",
        help="this machine's copy of the sweep file: the worker refuses a stored config "
        "whose code (target, plugins) differs from it",
    )
    parser.add_argument(
        "--trust-stored-config",
        action="store_true",
        help="run the stored config's code even where it differs from --sweep",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads of each worker here (default: the study's threads setting)",
    )
    parser.set_defaults(func=main)


def trial_line(result: TrialResult) -> None:
    where = "" if result.first_bad_step is None else f" at step {result.first_bad_step}"
    print(
        f"trial {result.number}: {result.outcome}{where} ({result.seconds:.1f}s)", file=sys.stderr
    )


def must_exist(storage: str) -> None:
    """A worker joins a study that exists: a file storage it names must be there already,
    or opening it would create an empty one under a mistyped name."""
    if storage.startswith("sqlite:///"):
        path = storage.removeprefix("sqlite:///")
    elif storage.startswith("journal:") or storage.endswith((".log", ".jsonl")):
        path = storage.removeprefix("journal:")
    else:
        return
    if path and path != ":memory:" and not Path(path).is_file():
        raise NansearchError(
            f"--storage {storage}: no such file {path}; a worker joins a study that "
            "nansearch sweep started, so give the storage that sweep used"
        )


# the settings that name code a worker imports or runs: a database writer could change them
CODE_KEYS = (
    "target.kind",
    "target.fn",
    "target.program",
    "target.args",
    "target.env",
    "target.model_class",
    "target.trust_remote_code",
    "plugins",
)


def code_of(cfg: SweepConfig) -> dict[str, object]:
    values: dict[str, object] = {}
    for key in CODE_KEYS:
        value: object = cfg
        for part in key.split("."):
            value = getattr(value, part)
        values[key] = value
    return values


def check_code(cfg: SweepConfig, sweep_file: str, where: str, trust: bool) -> None:
    """Refuse a stored config whose code differs from this machine's copy of the sweep
    file, unless the user trusts the stored one."""
    local = code_of(load_config(sweep_file))
    stored = code_of(cfg)
    changed = [f"{k}: {stored[k]!r} in {where}, {local[k]!r} in {sweep_file}"
               for k in CODE_KEYS if stored[k] != local[k]]  # fmt: skip
    if not changed:
        return
    if trust:
        log.warning(
            "running the stored config's code (--trust-stored-config): %s", "; ".join(changed)
        )
        return
    raise NansearchError(
        "the study's stored config names other code than your sweep file: "
        + "; ".join(changed)
        + ". Whoever can write the storage chose it; check it, then pass "
        "--trust-stored-config to run it, or join with the sweep file the study was started from"
    )


def worker(
    study: str,
    storage: str,
    out: str = "runs",
    workers: int = 1,
    callbacks: SweepCallbacks | None = None,
    threads: int | None = None,
    sweep_file: str | None = None,
    trust_stored_config: bool = False,
) -> SweepOutcome:
    """Run trials of ``study`` in ``storage`` until its budget is met; returns the outcome.
    With ``sweep_file``, the stored config's code must match that file's (see
    :func:`check_code`)."""
    where = shown(storage)
    must_exist(storage)
    overrides = [f"out={out}", f"workers={workers}"]
    if threads is not None:
        overrides.append(f"threads={threads}")
    cfg = stored_config(open_storage(storage, Path(out)), study, where, overrides)
    cfg.storage = storage  # as this machine reaches it; the study's heartbeat settings stay
    if sweep_file is not None:
        check_code(cfg, sweep_file, where, trust_stored_config)
    # the stored config names code this machine imports: say which, before it does
    code = [f"target.kind={cfg.target.kind}"]
    if cfg.target.fn:
        code.append(f"target.fn={cfg.target.fn}")
    code += [f"plugin {plugin}" for plugin in cfg.plugins]
    log.info("study %r in %s runs %s", study, where, ", ".join(code))
    return run_sweep(cfg, callbacks=callbacks, join=True)


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    outcome = worker(
        args.study,
        args.storage,
        args.out,
        args.workers,
        SweepCallbacks(on_trial=[trial_line]),
        args.threads,
        args.sweep,
        args.trust_stored_config,
    )
    print_outcome(outcome, time.perf_counter() - start)
    print(
        f"{outcome.ran_here} trial(s) ran here; the study has {outcome.queued_done} of {outcome.budget}"
    )
    return exit_code(outcome)
