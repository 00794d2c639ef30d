"""What the benchmarks share: the machine, alternated timing, the ratio table, result files.

Every figure is a ratio against a baseline measured in the same run. Timings on a
shared machine are noisy: the two sides alternate, the rounds repeat, and the table
shows the median ratio with the lowest and highest round, the cores, the torch threads
and the load, and says when other work was sharing the cores.

Results go to ``bench-results/<suite>.json``; when a file from a previous run is there,
the table shows its figure next to the new one before replacing it.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nansearch.config import OptimizerConfig
from nansearch.factors import TrialSetup
from nansearch.trial.runner import make_optimizer, on_device

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "sweeps" / "demo.yaml"
RESULTS = Path("bench-results")
QUICK_ENV = "NANSEARCH_BENCH_QUICK"
THREADS_ENV = "NANSEARCH_BENCH_THREADS"


def quick() -> bool:
    """Whether ``python -m benchmarks --quick`` asked for the short version."""
    return os.environ.get(QUICK_ENV) == "1"


def threads() -> int:
    """Torch threads per process (``--threads``, default 1), here and in every child."""
    return int(os.environ.get(THREADS_ENV, "1"))


def tracking_available() -> bool:
    """Whether this build of nansearch has W&B tracking (``nansearch.tracking.tracker``)."""
    import importlib.util

    return importlib.util.find_spec("nansearch.tracking.tracker") is not None


def wandb_mode() -> str:
    """The ``tracking.wandb`` value the benchmarks run sweeps with."""
    return "offline" if tracking_available() else "off"


def tracking_note() -> str:
    if tracking_available():
        return "tracking: W&B offline (tracking.wandb=offline)"
    return "tracking: this build has no nansearch.tracking.tracker; measured with tracking off"


@dataclass
class Row:
    """One measured ratio (lower is better) and the target it should meet."""

    name: str
    value: float | None  # None: not measured on this machine
    target: float | None = None  # the row holds when value <= target
    spread: tuple[float, float] | None = None  # lowest and highest round
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "not measured"
        if self.target is None:
            return ""
        return "holds" if self.value <= self.target else "FAILS"


def environment() -> dict[str, Any]:
    """Cores, threads and load: what a reader needs to weigh the figures."""
    cuda = torch.cuda.is_available()
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        # load averages as the suite ends: over its last minute and last five
        "load_1min": round(os.getloadavg()[0], 2),
        "load_5min": round(os.getloadavg()[1], 2),
    }


def describe(env: dict[str, Any]) -> str:
    return (
        f"{env['usable_cores']} usable of {env['cores']} cores, "
        f"torch threads {env['torch_threads']}, torch {env['torch']}, {env['device']}, "
        f"load average {env['load_1min']} (1 min), {env['load_5min']} (5 min)"
    )


def alternate(
    bare: Callable[[], float], instrumented: Callable[[], float], rounds: int
) -> list[tuple[float, float]]:
    """``(bare, instrumented)`` seconds per round; the side that goes first alternates.

    Each callable runs its side once and returns the seconds it measured, so that
    setup it should not be charged for stays outside its clock.
    """
    pairs = []
    for i in range(rounds):
        if i % 2 == 0:
            b = bare()
            x = instrumented()
        else:
            x = instrumented()
            b = bare()
        pairs.append((b, x))
    return pairs


def summarize(values: list[float]) -> tuple[float, tuple[float, float]]:
    """The median and the (lowest, highest)."""
    return statistics.median(values), (min(values), max(values))


def ratio_row(name: str, ratios: list[float], target: float | None = None, note: str = "") -> Row:
    """A row for the median of ``ratios``, with their spread."""
    value, spread = summarize(ratios)
    return Row(name, value, target, spread, note)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare_train(
    setup: TrialSetup, steps: int, device: torch.device, opt_cfg: OptimizerConfig
) -> None:
    """The trial's steps as a plain PyTorch loop: the same model, batch, optimizer and
    precision as the trial runner, with no check and no read back to the host."""
    model, batch = on_device(setup, device)
    optimizer = make_optimizer(
        [p for p in model.parameters() if p.requires_grad], setup.lr, opt_cfg
    )
    scaler = torch.amp.GradScaler(device.type) if setup.grad_scaler else None
    autocast = (
        torch.autocast(device.type, dtype=setup.autocast_dtype)
        if setup.autocast_dtype
        else nullcontext()
    )
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            _, loss = setup.target.forward(model, batch)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wandb_env(folder: Path) -> dict[str, str]:
    """W&B offline, with every file it writes inside ``folder``."""
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for key, sub in [
        ("WANDB_DIR", "wandb"),
        ("WANDB_CACHE_DIR", "wandb/cache"),
        ("WANDB_DATA_DIR", "wandb/data"),
        ("WANDB_CONFIG_DIR", "wandb/config"),
    ]:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(folder / sub)
    return env


@contextmanager
def wandb_inside(folder: Path) -> Iterator[None]:
    """W&B in this process writes inside ``folder`` until the block ends."""
    saved = dict(os.environ)
    os.environ.update(wandb_env(folder))
    os.environ.pop("WANDB_API_KEY", None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _parent_death_signal() -> Callable[[], None] | None:
    """``preexec_fn`` for the benchmarks' children: the kernel sends the child SIGKILL when
    the benchmark's process ends, however it ends (a kill, a crash, Ctrl-C), so a killed
    benchmark leaves no ``nansearch sweep`` running on. Linux only; elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the fork
    pr_set_pdeathsig = 1

    def die_with_parent() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return die_with_parent


DIE_WITH_PARENT = _parent_death_signal()


def isolated_env(folder: Path) -> dict[str, str]:
    """Environment for a ``nansearch`` child: W&B offline and its files inside ``folder``."""
    env = {**os.environ, **wandb_env(folder), "TQDM_DISABLE": "1"}
    env["OMP_NUM_THREADS"] = str(threads())
    env.pop("WANDB_API_KEY", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def nansearch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nansearch", *args]


def run_command(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    """Run ``cmd`` to completion; its wall time in seconds. A failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, preexec_fn=DIE_WITH_PARENT
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def worker_start(folder: Path, study: str) -> float:
    """Wall seconds of a one-trial, one-step demo sweep in a fresh process: what a worker
    pays once (process, imports, config, checkpoint reads, the study, the first step)."""
    cmd = nansearch_command(
        "sweep",
        str(DEMO),
        f"study={study}",
        "trials=1",
        "steps=1",
        f"out={folder / 'runs'}",
        f"tracking.wandb={wandb_mode()}",
    )
    return run_command(cmd, isolated_env(folder), folder)


def demo_ready() -> None:
    """Build the demo checkpoints now, so no benchmark times their one-time build."""
    from nansearch.demo import NAMES, demo_checkpoint

    for name in NAMES:
        demo_checkpoint(name)


def report(
    suite: str,
    title: str,
    rows: list[Row],
    notes: list[str],
    details: dict[str, Any] | None = None,
) -> str:
    """The suite's table, compared with the previous run's file, which it then replaces."""
    env = environment()
    path = RESULTS / f"{suite}.json"
    previous = _previous(path)
    lines = [title, f"  {describe(env)}{'; quick run' if quick() else ''}"]
    width = max(len(r.name) for r in rows) + 2
    lines.append(
        f"  {'measure':<{width}}{'ratio':>7}  {'spread':<13} {'target':<8} {'verdict':<13}"
        f"{'previous':>8}"
    )
    for row in rows:
        value = "-" if row.value is None else f"{row.value:.3f}"
        spread = "" if row.spread is None else f"{row.spread[0]:.3f}-{row.spread[1]:.3f}"
        target = "" if row.target is None else f"<= {row.target:g}"
        before = previous.get(row.name)
        before = "-" if before is None else f"{before:.3f}"
        lines.append(
            f"  {row.name:<{width}}{value:>7}  {spread:<13} {target:<8} {row.verdict:<13}"
            f"{before:>8}"
        )
        if row.note:
            lines.append(f"  {'':<{width}}  {row.note}")
    lines += [f"  {note}" for note in notes]
    if max(env["load_1min"], env["load_5min"]) > env["usable_cores"] + 0.5:
        lines.append(
            f"  busy machine (load above {env['usable_cores']} cores): timings are noisy; "
            "compare with a run on an idle machine"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "suite": suite,
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": quick(),
        "environment": env,
        "rows": [{**asdict(r), "verdict": r.verdict} for r in rows],
        "notes": notes,
        "details": details or {},
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    was = f"; previous run {previous['_when']} in the last column" if previous else ""
    lines.append(f"  written to {path}{was}")
    return "\n".join(lines)


def _previous(path: Path) -> dict[str, Any]:
    """Row name -> value from an earlier results file, with its date under ``_when``."""
    try:
        record = json.loads(path.read_text())
        values = {row["name"]: row["value"] for row in record["rows"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {**values, "_when": record.get("when", "?")}
