"""The ``threads`` setting: the demo sweep on 1 torch thread (the default) against more.

The sweep is the demo, ``nansearch sweep sweeps/demo.yaml threads=N``, in a process of
its own with W&B off, timed from process start to exit, with its CPU time (user and
system, every thread) beside it. Each setting runs twice: on an otherwise idle machine,
and beside a busy neighbour, a process multiplying matrices on as many torch threads as
the machine has cores (another training job on the same machine). Settings alternate in
each round; each figure is a ratio to ``threads=1`` measured in the same round and the
same condition, so above 1 is slower than the default.

The trials must not change with the thread count: the table says whether every trial's
outcome and first bad step matched ``threads=1``'s. (``--quick``: 8 trials, one round.)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks._common import (
    DEMO,
    DIE_WITH_PARENT,
    Row,
    demo_ready,
    isolated_env,
    nansearch_command,
    quick,
    ratio_row,
    report,
)
from nansearch.search.workers import cpu_cores

NEIGHBOUR = """
import os
import torch
torch.set_num_threads({threads})
a = torch.randn(512, 512)
parent = os.getppid()
while os.getppid() == parent:  # ends with the benchmark, however it ends
    a = torch.tanh(a @ a)
"""


@contextmanager
def busy_neighbour(threads: int):
    """A process that keeps ``threads`` cores busy with matrix products until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", NEIGHBOUR.format(threads=threads)],
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        preexec_fn=DIE_WITH_PARENT,
    )
    time.sleep(3)  # torch imported and spinning before the sweep starts
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sweep(
    folder: Path, study: str, threads: int, trials: int, steps: int | None = None
) -> tuple[float, float, list]:
    """Wall and CPU seconds of the demo sweep at ``threads``, and what its trials did."""
    cmd = nansearch_command(
        "sweep",
        str(DEMO),
        f"study={study}",
        f"trials={trials}",
        f"threads={threads}",
        f"out={folder / 'runs'}",
        "tracking.wandb=off",
        *([f"steps={steps}"] if steps else []),
    )
    env = isolated_env(folder)
    env.pop("OMP_NUM_THREADS")  # the setting alone decides
    cpu = children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, cwd=folder, capture_output=True, text=True, preexec_fn=DIE_WITH_PARENT
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = (folder / "runs" / study / "trials.jsonl").read_text().splitlines()
    done = [json.loads(line) for line in lines]
    kept = [(t["number"], t["params"], t["outcome"], t["first_bad_step"]) for t in done]
    return wall, children_cpu() - cpu, kept


def run() -> str:
    demo_ready()
    return compare(*((8, 1) if quick() else (60, 2)))


def compare(trials: int, rounds: int, steps: int | None = None) -> str:
    """The table: ``rounds`` rounds of the demo's first ``trials`` trials per setting."""
    cores = cpu_cores()
    settings = sorted({1, 2, cores})
    rows: list[Row] = []
    notes: list[str] = []
    details: dict = {}
    same, reference = True, None
    with tempfile.TemporaryDirectory(prefix="nansearch-bench-threads-") as tmp:
        folder = Path(tmp)
        for condition in ("idle", "busy neighbour"):
            measured: dict[int, list[tuple[float, float]]] = {t: [] for t in settings}
            for r in range(rounds):
                order = settings if r % 2 == 0 else settings[::-1]
                with busy_neighbour(cores) if condition != "idle" else _nothing():
                    for t in order:
                        study = f"t{t}-{condition.split()[0]}-{r}"
                        wall, cpu, kept = sweep(folder, study, t, trials, steps)
                        measured[t].append((wall, cpu))
                        reference = kept if reference is None else reference
                        same = same and kept == reference
            base = measured[1]
            for t in settings:
                label = f"threads={t}"
                walls = [w / b[0] for (w, _), b in zip(measured[t], base, strict=True)]
                cpus = [c / b[1] for (_, c), b in zip(measured[t], base, strict=True)]
                if t != 1:
                    rows.append(ratio_row(f"{condition}: {label}, wall time vs threads=1", walls))
                    rows.append(ratio_row(f"{condition}: {label}, CPU time vs threads=1", cpus))
            one_wall = sorted(w for w, _ in base)[len(base) // 2]
            one_cpu = sorted(c for _, c in base)[len(base) // 2]
            notes.append(
                f"{condition}: threads=1 took {one_wall:.1f} s wall, {one_cpu:.1f} s CPU "
                f"(median of {rounds})"
            )
            details[condition] = {str(t): measured[t] for t in settings}
    notes.append(
        f"the demo, {trials} trials, {cores} usable cores; the busy neighbour multiplies "
        f"512x512 matrices on {cores} torch threads"
    )
    notes.append(
        "every trial's outcome and first bad step the same in every sweep: "
        + ("yes" if same else "NO")
    )
    return report(
        "threads", "threads: the demo sweep on N torch threads vs 1", rows, notes, details
    )


@contextmanager
def _nothing():
    yield
