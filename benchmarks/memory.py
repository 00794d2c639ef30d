"""Memory: a worker's resident memory does not grow over 200 trials.

A ``nansearch sweep`` of 200 short demo trials runs in a process of its own, W&B offline
when this build tracks. This process polls it: the trials done (lines of
``trials.jsonl``) and the worker's current (VmRSS) and peak (VmHWM) resident memory from
``/proc/<pid>/status``.

- Resident memory between trials: for each trial, the lowest reading while it ran (the
  previous trial's model is gone, the next one not yet built); the median over trials
  21-30 against trials 191-200.
- Peak: the high-water mark after trial 100 against after trial 200. The peak is set by
  the largest configuration, which the first 20 trials may not have met yet; by trial
  100 the cover phase has run every level many times.

The threshold, 5%, sits far below any leak worth finding and above the noise. Keeping
the demo model's weights (1.8 MB) from each trial would add over 300 MB, about 70% of
the worker; 5% of the worker over the last 100 trials is about 230 kB a trial, an
eighth of those weights. What grows legitimately is the study's record of its trials
(a few kB each) and allocator slack.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    DEMO,
    DIE_WITH_PARENT,
    Row,
    demo_ready,
    isolated_env,
    nansearch_command,
    quick,
    report,
    tracking_note,
    wandb_mode,
)

TARGET = 1.05


def status(pid: int) -> dict[str, int] | None:
    """VmRSS and VmHWM of ``pid`` in bytes; None once it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values if len(values) == 2 else None


def watch(folder: Path, trials: int, steps: int) -> list[tuple[int, int, int]]:
    """Run the sweep; ``(trials done, VmRSS, VmHWM)`` at every poll."""
    cmd = nansearch_command(
        "sweep",
        str(DEMO),
        "study=memory",
        f"trials={trials}",
        f"steps={steps}",
        "out=runs",
        "factors.dtype.levels=[fp32,bf16,amp-bf16]",
        # every one of the trials a queued one: no stop once settled, no probes
        "search.patience=0",
        "search.confirm=0",
        "search.isolate=0",
        f"tracking.wandb={wandb_mode()}",
    )
    trials_file = folder / "runs" / "memory" / "trials.jsonl"
    samples = []
    log = folder / "stderr.log"
    with (
        log.open("wb") as err,
        subprocess.Popen(
            cmd,
            env=isolated_env(folder),
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=DIE_WITH_PARENT,
        ) as proc,
    ):
        done = 0
        while proc.poll() is None and done < trials:
            time.sleep(0.02)
            if trials_file.exists():
                done = trials_file.read_bytes().count(b"\n")
            memory = status(proc.pid)
            if memory:
                samples.append((done, memory["VmRSS"], memory["VmHWM"]))
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the memory sweep failed ({proc.returncode}):\n{tail}")
    return samples


def between_trials(samples: list[tuple[int, int, int]], first: int, last: int) -> float:
    """Median over trials ``first``..``last`` of the lowest reading while each ran."""
    lows = [low for done, (low, _) in by_trial(samples).items() if first <= done + 1 <= last]
    return statistics.median(lows)


def by_trial(samples: list[tuple[int, int, int]]) -> dict[int, list[int]]:
    """Trials done -> [lowest VmRSS, VmHWM] over the polls while that many were done."""
    table: dict[int, list[int]] = {}
    for done, rss, hwm in samples:
        low, high = table.get(done, [rss, hwm])
        table[done] = [min(low, rss), max(high, hwm)]
    return table


def peak_after(samples: list[tuple[int, int, int]], trials: int) -> int:
    return min(hwm for done, _, hwm in samples if done >= trials)


def run() -> str:
    trials, steps = (100, 1) if quick() else (200, 3)
    demo_ready()
    with tempfile.TemporaryDirectory() as tmp:
        samples = watch(Path(tmp), trials, steps)
    early = between_trials(samples, 21, 30)
    late = between_trials(samples, trials - 9, trials)
    peak_mid, peak_end = peak_after(samples, trials // 2), peak_after(samples, trials)
    mb = 1 << 20
    rows = [
        Row(
            f"memory between trials, {trials - 9}-{trials} / 21-30",
            late / early,
            TARGET,
            note=f"{early / mb:.0f} MB -> {late / mb:.0f} MB",
        ),
        Row(
            f"peak memory, after trial {trials} / after {trials // 2}",
            peak_end / peak_mid,
            TARGET,
            note=f"{peak_mid / mb:.0f} MB -> {peak_end / mb:.0f} MB",
        ),
    ]
    curve = {n: between_trials(samples, n - 9, n) / mb for n in range(20, trials + 1, trials // 10)}
    notes = [
        f"{trials} demo trials of {steps} step(s) in one worker, dtype fp32, bf16, amp-bf16 "
        "(the levels that are fast on a CPU); every checkpoint, init and batch level",
        "MB between trials, by trial: " + ", ".join(f"{n}: {v:.0f}" for n, v in curve.items()),
        tracking_note(),
    ]
    details = {"by_trials_done": by_trial(samples)}
    return report("memory", f"Worker memory over {trials} trials", rows, notes, details)
