"""The user's unmodified training script as the trial, W&B-Sweeps-style.

Each trial starts ``python -m nansearch.inject <program> <args>`` in its own process,
with the trial's values in the command line (``target.args``, a template such as
``--hparams ${config} --seed ${seed}``), in environment variables (``target.env``)
and in a per-trial copy of the script's own YAML/JSON config (``target.config``, with
``target.keys`` naming the dotted key each value is written to). Inside the process,
:mod:`nansearch.inject` watches every optimizer step with torch's global hooks and
writes each step to a report file; this module reads it back into the trial's result.

Fallbacks for what the hooks cannot see: ``target.nan_pattern``, a regex over the
script's output (EasyEdit prints ``NAN in logits!!!``), and ``target.nan_exit_codes``.
A process that dies (a signal, an exception, out of memory) or runs past
``trial_timeout`` (:mod:`nansearch.trial.limit`) is an ``error`` trial with the tail of
its output, never a NaN.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from nansearch.config.schema import SweepConfig, TargetConfig, to_yaml
from nansearch.errors import NansearchError
from nansearch.targets.causal_lm import CausalLMTarget
from nansearch.trial import limit as time_limit

if TYPE_CHECKING:
    from nansearch.factors.checkpoint import CheckpointFactor
    from nansearch.factors.init import InitFactor
    from nansearch.trial.runner import StepObserver, TrialResult, TrialRunner

TAIL = 2000  # characters of a failed process's output kept in the trial's error
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class CommandTarget(CausalLMTarget):
    name = "command"
    owns_loop = True
    owns_time_limit = True

    def __init__(self, cfg: TargetConfig):
        super().__init__(cfg)
        self.limit: float | None = None  # the running trial's time limit, from the runner
        self.pattern = re.compile(cfg.nan_pattern) if cfg.nan_pattern else None

    def values(self, runner: TrialRunner, params: dict[str, Any], seed: int, steps: int):
        """What the templates and keys can name: every factor's value and a few more."""
        from nansearch.factors.dtype import DTYPE_LEVELS
        from nansearch.targets.loading import resolve_checkpoint

        values: dict[str, Any] = dict(params)
        checkpoint = next((f for f in runner.factors if f.name == "checkpoint"), None)
        if checkpoint is not None and "checkpoint" in params:
            values["checkpoint_level"] = params["checkpoint"]
            paths = cast("CheckpointFactor", checkpoint).paths
            values["checkpoint"] = resolve_checkpoint(paths[params["checkpoint"]])
        param_dtype, autocast_dtype, _ = DTYPE_LEVELS[params.get("dtype", "fp32")]
        values["param_dtype"] = str(param_dtype).removeprefix("torch.")
        values["autocast_dtype"] = str(autocast_dtype or "none").removeprefix("torch.")
        values.update(seed=seed, steps=steps)
        return values

    def run_trial(
        self,
        runner: TrialRunner,
        params: dict[str, Any],
        seed: int,
        steps: int,
        result: TrialResult,
        observer: StepObserver | None = None,
    ) -> None:
        """Run the script once for this trial, writing what it did into ``result``."""
        diagnostics: Any = observer  # a rerun's Diagnostics, read through its own fields
        values = self.values(runner, params, seed, steps)
        self.limit = runner.time_limit
        result.compute_dtype = (
            values["autocast_dtype"]
            if values["autocast_dtype"] != "none"
            else values["param_dtype"]
        )
        with tempfile.TemporaryDirectory(prefix="nansearch-trial-") as tmp:
            folder = Path(tmp)
            if self.cfg.config:
                values["config"] = str(self._write_config(folder, values))
            report = folder / "report.jsonl"
            settings = {
                "report": str(report),
                "steps": steps,
                "min_loss_scale": runner.cfg.optimizer.min_loss_scale,
                "params": params,
                "seed": seed,
            }
            sweep = runner.cfg if self._levels_inside(runner, params) else None
            if observer is not None and hasattr(observer, "load_json"):
                settings["diagnose"] = {
                    "op_step": diagnostics.op_step,
                    "anomaly_step": diagnostics.anomaly_step,
                    "trail": diagnostics.trail.maxlen,
                }
            code, output, timed_out = self._start(values, settings, runner, sweep)
            rows = _read_report(report)
        self._judge(result, rows, code, output, timed_out)
        last = rows[-1] if rows and "end" in rows[-1] else {}
        if observer is not None and last.get("diagnostics"):
            diagnostics.load_json(last["diagnostics"])

    # -- inside -----------------------------------------------------------------------

    @staticmethod
    def _levels_inside(runner: TrialRunner, params: dict[str, Any]) -> bool:
        """Whether the script's process has levels to apply (init, batch, registered ones)."""
        for factor in runner.factors:
            value = params.get(factor.name)
            if factor.name == "init":
                if cast("InitFactor", factor).schemes[cast(str, value)].scheme != "pretrained":
                    return True
            elif factor.name == "batch":
                if value != "clean":
                    return True
            elif factor.name not in ("checkpoint", "dtype", "lr"):
                return True
        return False

    def _write_config(self, folder: Path, values: dict[str, Any]) -> Path:
        from omegaconf import OmegaConf

        source = Path(cast(str, self.cfg.config))  # written only when it is set
        data = OmegaConf.load(source)
        for name, dotted in self.cfg.keys.items():
            OmegaConf.update(data, dotted, values[name], merge=False)
        copy = folder / source.name
        if source.suffix == ".json":
            copy.write_text(json.dumps(OmegaConf.to_container(data), indent=2))
        else:
            copy.write_text(OmegaConf.to_yaml(data))
        return copy

    def _start(
        self,
        values: dict[str, Any],
        settings: dict[str, Any],
        runner: TrialRunner,
        sweep: SweepConfig | None,
    ) -> tuple[int, str, bool]:
        """Run the script to its end or its time limit: (status, output, timed out).

        By default the process is a fork of this one, which has imported torch and
        transformers already (a fresh interpreter pays about 3 s for them per trial);
        ``target.start: spawn`` or CUDA already in use here start a fresh interpreter.
        """
        try:
            args = shlex.split(string.Template(self.cfg.args).substitute(values))
            env_values = {
                key: string.Template(str(text)).substitute(values)
                for key, text in self.cfg.env.items()
            }
        except (KeyError, ValueError) as exc:
            raise NansearchError(f"target.args/target.env: cannot fill in {exc}") from None
        # ``sweep``: the settings the child builds the factors from, when it has levels to
        # apply; a forked copy holds them, a fresh interpreter reads them as text (reading
        # them back takes 0.1 to 0.2 s)
        fork = self._can_fork()
        if sweep is not None and not fork:
            settings = {**settings, "sweep": to_yaml(sweep)}
        extra = {
            **wandb_env(runner.cfg),
            **env_values,
            "NANSEARCH_INJECT": json.dumps(settings),
        }
        output = Path(settings["report"]).with_name("output.log")
        program = cast(str, self.cfg.program)  # the config's checks require it
        if fork:
            code, timed_out = self._fork([program, *args], extra, output, sweep)
        else:
            code, timed_out = self._spawn([program, *args], extra, output)
        return code, output.read_text(errors="replace") if output.is_file() else "", timed_out

    def _can_fork(self) -> bool:
        import torch

        return (
            self.cfg.start == "fork"
            and hasattr(os, "fork")
            and hasattr(os, "pidfd_open")
            and not torch.cuda.is_initialized()  # CUDA does not survive a fork
        )

    def _spawn(self, argv: list[str], extra: dict[str, str], output: Path) -> tuple[int, bool]:
        """A fresh interpreter: it imports torch and transformers itself."""
        import torch

        # the sweep's threads setting, unless target.env says otherwise
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), **extra}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        with output.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "nansearch.inject", *argv],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: a time limit ends it all
            )
            try:
                process.wait(timeout=self.limit)
                return process.returncode, False
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return process.returncode, True
            except KeyboardInterrupt:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise

    def _fork(
        self, argv: list[str], extra: dict[str, str], output: Path, sweep: SweepConfig | None
    ) -> tuple[int, bool]:
        """A copy of this process, which has torch and transformers loaded already; it
        applies the levels of ``sweep``, the settings it holds, when given."""
        import select

        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            status = 1
            try:
                os.setsid()
                import torch

                # The parent's OpenMP threads do not survive fork: a parallel region in the
                # copy would wait forever for them. On one thread torch never enters one.
                torch.set_num_threads(1)
                sink = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(sink, 1)
                os.dup2(sink, 2)
                # whatever this process's sys.stdout was (a test runner's capture), the
                # script prints into its output file
                sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False)  # type: ignore[misc]  # noqa: SIM115
                sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False)  # type: ignore[misc]  # noqa: SIM115
                import faulthandler

                faulthandler.enable(sys.stderr, all_threads=False)  # a crash's stack, in its output
                os.environ.update(extra)
                from nansearch.inject import main

                main(argv, sweep)
                status = 0
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        pidfd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], self.limit)
            timed_out = not ready
            if timed_out:
                os.killpg(pid, signal.SIGKILL)
        except KeyboardInterrupt:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        finally:
            os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), timed_out

    def _judge(
        self,
        result: TrialResult,
        rows: list[dict[str, Any]],
        code: int,
        output: str,
        timed_out: bool,
    ) -> None:
        steps = [row for row in rows if "step" in row and "end" not in row]
        for row in steps:
            result.loss.append(float(row["loss"]))
            result.logit_absmax.append(float(row["logit_absmax"]))
            result.grad_norm.append(float(row["grad_norm"]))
            result.skipped_steps = int(row.get("skipped", 0))
        last = rows[-1] if rows and "end" in rows[-1] else None
        if last is not None and last.get("compute_dtype") and result.compute_dtype == "float32":
            result.compute_dtype = last["compute_dtype"]  # the weights the script really loaded
        tail = _tail(output)
        if last is not None and last["end"] == "nonfinite":
            result.outcome, result.first_bad_step = last["outcome"], int(last["step"])
            return
        if timed_out:
            raise NansearchError(
                f"{self.cfg.program}: {time_limit.timed_out(self.limit or 0)} after {len(steps)} "
                f"steps; ended. Its output ended with:\n{tail}"
            )
        if self.cfg.nan_exit_codes and code in self.cfg.nan_exit_codes:
            result.outcome, result.first_bad_step = "nonfinite-logits", len(steps)
            return
        if code != 0:
            died = (
                f"was killed by {signal.Signals(-code).name}"
                if code < 0 and -code in signal.Signals._value2member_map_
                else f"exited with status {code}"
            )
            raise NansearchError(
                f"{self.cfg.program} {died} after {len(steps)} steps. "
                f"Its output ended with:\n{tail}"
            )
        if self.pattern is not None and self.pattern.search(output):
            # the hooks saw no NaN, so the step is the last one they saw, or the first
            result.outcome, result.first_bad_step = "nonfinite-logits", max(0, len(steps) - 1)
            return
        if not steps:
            seen = (last or {}).get("seen", {})
            names = {"logits": "logits", "loss": "a loss", "update": "an optimizer step"}
            missing = [names[k] for k in names if not seen.get(k)] or list(names.values())
            raise NansearchError(
                f"{self.cfg.program} ended without a training step nansearch could see: it "
                f"never saw {', '.join(missing)}. nansearch watches torch.nn.Module forwards "
                "and torch.optim optimizers' step(); a script that trains some other way "
                "can report NaN through target.nan_pattern or target.nan_exit_codes. "
                f"Its output ended with:\n{tail}"
            )


def wandb_env(cfg: SweepConfig) -> dict[str, str]:
    """W&B's own variables for a script that calls ``wandb.init`` itself: its run joins the
    study's runs (the group, job type ``trial``, the project and entity, the study's folder)
    in the study's mode, instead of starting a run of its own elsewhere or, with no
    credentials, stopping at W&B's login. With tracking off its runs are disabled."""
    from nansearch.tracking.tracker import has_credentials, resolve_mode

    mode = resolve_mode(cfg.tracking.wandb)
    if mode == "online" and not has_credentials():
        mode = "offline"  # as the study's own runs do
    env = {
        "WANDB_MODE": "disabled" if mode == "off" else mode,
        "WANDB_RUN_GROUP": cfg.study,
        "WANDB_JOB_TYPE": "trial",
        "WANDB_PROJECT": cfg.tracking.project,
    }
    if mode != "off":
        cfg.study_dir.mkdir(parents=True, exist_ok=True)
        env["WANDB_DIR"] = str(cfg.study_dir.resolve())
    if cfg.tracking.entity:
        env["WANDB_ENTITY"] = cfg.tracking.entity
    return env


def _tail(output: str) -> str:
    """The end of a process's output, with a crash report's stack cut to its innermost frames
    and without the list of extension modules it ends with."""
    output = re.sub(r"(?m)^Extension modules: .*$\n?", "", output)
    output = re.sub(
        r"((?:^  File .*\n){6})(?:^  File .*\n)+", r"\1  ...\n", output, flags=re.MULTILINE
    )
    return output[-TAIL:]


def _read_report(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line cut short by the process's end
    return rows
