"""Several worker processes on one machine, sharing one study through its storage.

Each worker is a fresh interpreter (the "spawn" start method: forking a process that
holds torch state is unsafe). It rebuilds the configuration, the factors and the runner
itself, so it reads each checkpoint once, and takes trials from the study's queue like
a worker on any other machine. Workers are pinned to the visible GPUs round-robin
through ``CUDA_VISIBLE_DEVICES``; each runs torch on ``threads`` CPU threads (default 1),
so that their thread pools do not fight.

The parent starts them, tells its callbacks of every trial the study records, and
fails and requeues the running trial of a worker that died. A worker whose trial runs
past its time limit and a grace without ending it (stopped with SIGSTOP, stuck in
native code) is killed, its trial recorded as an ``error`` that timed out, and a new
worker takes its place (:mod:`nansearch.trial.limit`). A Ctrl-C or SIGTERM
reaches the parent, which asks the workers to stop once their running trials are
recorded; a second one stops them at once, and their trials go back in the queue.
Workers die with their parent, so a killed sweep leaves none running unwatched.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from nansearch.config import NansearchError, SweepConfig, config_from_yaml, to_yaml
from nansearch.jsonl import DISK_ERRNOS, disk_error
from nansearch.search import optuna_internals as private
from nansearch.search import queue as trial_queue
from nansearch.search.interrupt import stop_on_interrupt
from nansearch.search.queue import LIMIT_ATTR, ORIGIN_ATTR, OWNER_ATTR, PHASE_ATTR, RESULT_ATTR
from nansearch.search.study import (
    POLL_SECONDS,
    Search,
    Stop,
    SweepCallbacks,
    append_trial,
    recorded,
    trial_limit,
)
from nansearch.startup import quick_exit, quiet_libraries
from nansearch.trial.limit import grace, timed_out
from nansearch.trial.runner import TrialResult, pick_device

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
EXIT_ORPHANED = 3
PR_SET_PDEATHSIG = 1
LINGER_SECONDS = 30.0  # a worker still alive this long after the queue is done is stuck


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process is given; everything else it builds for itself."""

    index: int
    config: str  # the resolved configuration, as YAML
    gpu: str | None  # its CUDA_VISIBLE_DEVICES; None leaves the variable as it is
    threads: int  # torch CPU threads
    sampler_seed: int
    log_level: int
    parent: int = 0  # the pid of the process that started it: it dies with it


def visible_gpus(device: str) -> list[str]:
    """The GPUs workers may be pinned to, as CUDA_VISIBLE_DEVICES entries."""
    if device == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and not d.strip().startswith("-")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan(cfg: SweepConfig, count: int, seed: int) -> list[WorkerSpec]:
    """``count`` workers: GPUs dealt round-robin, ``cfg.threads`` each, one sampler seed each."""
    if count < 1:
        raise ValueError(f"count={count}: need at least one worker")
    gpus = visible_gpus(cfg.device)
    threads = cfg.threads
    if not gpus and threads * count > cpu_cores():
        log.warning(
            "threads=%d x %d workers = %d torch threads on %d CPU cores: they will wait for "
            "one another; threads=%d fits",
            threads,
            count,
            threads * count,
            cpu_cores(),
            max(1, cpu_cores() // count),
        )
    config = to_yaml(cfg)
    level = logging.getLogger().getEffectiveLevel()
    return [
        WorkerSpec(
            i, config, gpus[i % len(gpus)] if gpus else None, threads, seed + i, level, os.getpid()
        )
        for i in range(count)
    ]


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` dies, however it dies (SIGKILL included): a
    worker left alone would go on taking trials that nobody watches.

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``);
    elsewhere a thread looks every second whether the parent is still there.
    """
    import ctypes
    import threading

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        armed = False
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(EXIT_ORPHANED)
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Either:
    """Stop when the parent says so, or when this worker is sent SIGTERM."""

    def __init__(self, parent: Stop):
        self.parent, self.own = parent, False

    def set(self, signum=None, frame=None) -> None:
        self.own = True

    def is_set(self) -> bool:
        return self.own or self.parent.is_set()


def work(spec: WorkerSpec, stop: Stop) -> None:
    """A worker process: take and run the study's trials until none are left or ``stop``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into `stop`
    if spec.parent:
        die_with_parent(spec.parent)
    stop = Either(stop)
    signal.signal(signal.SIGTERM, stop.set)  # finish the running trial, then exit
    if spec.gpu is not None:  # before anything initializes CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = spec.gpu
    quick_exit()
    quiet_libraries(spec.log_level)
    import torch

    from nansearch.search.prepare import prepare, trial_callbacks

    torch.set_num_threads(spec.threads)
    try:
        cfg = config_from_yaml(spec.config, f"worker {spec.index}")
        factors, runner = prepare(cfg)
        search = Search(cfg, factors, runner, join=True, sampler_seed=spec.sampler_seed)
        search.run(trial_callbacks(cfg), stop)
    except NansearchError as exc:
        log.error("worker %d: %s", spec.index, exc)
        raise SystemExit(EXIT_USER_ERROR) from None
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        log.error("worker %d: %s", spec.index, disk_error(exc))
        raise SystemExit(EXIT_USER_ERROR) from None


def prebuild(cfg: SweepConfig) -> None:
    """Build what workers would otherwise all build at once: the demo checkpoints."""
    from nansearch.targets.loading import DEMO_PREFIX, resolve_checkpoint

    for checkpoint in cfg.factors.checkpoint.levels.values():
        if checkpoint.startswith(DEMO_PREFIX):
            resolve_checkpoint(checkpoint)


def run_workers(
    search: Search, callbacks: SweepCallbacks, count: int, seed: int
) -> tuple[int, int]:
    """Run ``count`` worker processes on ``search``'s study until its budget is met.

    Worker *i* seeds its sampler with ``seed + i``. Returns how many trials they ran
    and the signal (Ctrl-C's SIGINT, SIGTERM) that stopped them early, or 0.
    """
    pick_device(search.cfg.device)  # device=cuda without a GPU fails here, not in each worker
    prebuild(search.cfg)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    specs = plan(search.cfg, count, seed)
    processes: list[multiprocessing.process.BaseProcess] = []

    def start(spec: WorkerSpec) -> int:
        """Start a worker; its pid."""
        process = context.Process(
            target=work, args=(spec, stop), name=f"nansearch-worker-{spec.index}"
        )
        process.start()
        processes.append(process)
        pid = process.pid
        assert pid is not None  # started
        log.info(
            "worker %d: pid %d, gpu %s, %d threads",
            spec.index,
            pid,
            spec.gpu or "none",
            spec.threads,
        )
        return pid

    seen = {r.number for r in recorded(search.study) if r.number is not None}
    exited: set[int] = set()
    watch = Watch(search)
    with stop_on_interrupt() as interrupt:
        try:
            spec_of: dict[int, WorkerSpec] = {}
            for spec in specs:
                spec_of[start(spec)] = spec
            callbacks.start(len(seen), search.plan.total)
            while True:
                if interrupt.is_set():
                    stop.set()
                running = [p for p in processes if p.is_alive()]  # also reaps the exited
                for process in list(processes):
                    pid, code = process.pid, process.exitcode
                    if code is not None and pid is not None and pid not in exited:
                        exited.add(pid)
                        died(search, process.name, pid, code)
                for pid in watch.stuck(running, interrupt.is_set()):
                    exited.add(pid)
                    if not interrupt.is_set() and not watch.queue_done:
                        spec = spec_of[pid]
                        spec = dataclasses.replace(spec, sampler_seed=spec.sampler_seed + 7919)
                        spec_of[start(spec)] = spec
                report(search, callbacks, seen)
                if not any(p.is_alive() for p in processes):
                    break
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now; their trials go back
            started = [p for p in processes if p.pid is not None]
            for process in started:
                process.kill()
            for process in started:
                process.join()
            trial_queue.fail_orphans(search.study, pids_of(started))
            raise
    report(search, callbacks, seen)
    if all(p.exitcode == EXIT_USER_ERROR for p in processes):
        raise NansearchError("every worker stopped with an error (see above)")
    return trial_queue.ran_by(search.study, pids_of(processes)), interrupt.signum


def pids_of(processes: Sequence[multiprocessing.process.BaseProcess]) -> list[int]:
    """The process ids of those of ``processes`` that were started."""
    return [pid for p in processes if (pid := p.pid) is not None]


class Watch:
    """Finds this machine's workers that no longer answer: one whose running trial is
    past its time limit and a grace, and one still alive well after the queue is done
    (its trial was failed as stale by the heartbeat meanwhile). Each is killed; the
    trial of the first is recorded as an ``error`` that timed out."""

    def __init__(self, search: Search):
        self.search = search
        self.host = socket.gethostname()
        self.done_since: float | None = None
        self.queue_done = False

    def stuck(
        self, running: list[multiprocessing.process.BaseProcess], stopping: bool
    ) -> list[int]:
        """The pids of the workers killed now."""
        by_pid = {pid: p for p in running if (pid := p.pid) is not None}
        found: list[int] = []
        now = datetime.datetime.now()
        study = self.search.study
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial.user_attrs.get(OWNER_ATTR, {})
            pid = owner.get("pid") if owner.get("host") == self.host else None
            process = by_pid.get(pid) if isinstance(pid, int) else None
            if process is None or not isinstance(pid, int) or trial.datetime_start is None:
                continue
            limit = trial.user_attrs.get(LIMIT_ATTR) or trial_limit(self.search.cfg, study)
            if limit is None:
                continue
            elapsed = (now - trial.datetime_start).total_seconds()
            if elapsed > limit + grace(limit):
                kill(process)
                time_out(self.search, trial, limit, elapsed, process.name, pid)
                found.append(pid)
                by_pid.pop(pid)
        if stopping:
            return found
        tally = trial_queue.tally(study)
        self.queue_done = tally.done >= self.search.budget and tally.running == 0
        if not self.queue_done:
            self.done_since = None
            return found
        self.done_since = self.done_since or time.monotonic()
        if time.monotonic() - self.done_since > LINGER_SECONDS:
            for pid, process in by_pid.items():
                log.warning(
                    "%s (pid %d) did not end %.0f s after the queue was done; killed",
                    process.name,
                    pid,
                    LINGER_SECONDS,
                )
                kill(process)
                found.append(pid)
        return found


def kill(process: multiprocessing.process.BaseProcess) -> None:
    process.kill()  # SIGKILL ends a stopped process too
    process.join()


def time_out(
    search: Search,
    trial: FrozenTrial,
    limit: float,
    elapsed: float,
    name: str,
    pid: int,
) -> None:
    """Record the running trial of a worker killed past its time limit as an ``error``."""
    result = TrialResult(
        params=dict(trial.params),
        seed=search.cfg.seed * 100_003 + trial.number,
        steps=search.cfg.steps,
        outcome="error",
        error=f"{timed_out(limit)}: its worker (pid {pid}) did not answer and was killed",
        seconds=elapsed,
        number=trial.number,
        phase=trial.user_attrs.get(PHASE_ATTR, "focus"),
        origin=trial.user_attrs.get(ORIGIN_ATTR),
    )
    storage, trial_id = private.storage(search.study), private.trial_id(trial)
    try:
        storage.set_trial_user_attr(trial_id, "outcome", result.outcome)
        storage.set_trial_user_attr(trial_id, RESULT_ATTR, result.to_json())
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:  # it ended just before it was killed
        return
    append_trial(result, search.dir / "trials.jsonl")
    log.warning(
        "trial %d %s: %s (pid %d) did not answer; killed, and a new worker takes its place",
        trial.number,
        timed_out(limit),
        name,
        pid,
    )


def died(search: Search, name: str, pid: int, exitcode: int) -> None:
    """A worker exited: when it did not end cleanly, its running trial goes back in the queue."""
    if exitcode == 0:
        return
    how = f"signal {-exitcode}" if exitcode < 0 else f"exit {exitcode}"
    lost = trial_queue.fail_orphans(search.study, [pid])
    log.warning("%s (pid %d) stopped with %s; %d running trial(s) requeued", name, pid, how, lost)


def report(search: Search, callbacks: SweepCallbacks, seen: set[int]) -> None:
    """Tell ``callbacks`` of the trials recorded since the last look."""
    for trial in search.study.get_trials(deepcopy=False, states=trial_queue.FINISHED):
        if trial.number not in seen and RESULT_ATTR in trial.user_attrs:
            seen.add(trial.number)
            callbacks.trial(TrialResult.from_json(trial.user_attrs[RESULT_ATTR]))
