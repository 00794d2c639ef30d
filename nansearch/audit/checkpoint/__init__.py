"""The checkpoint audit: every checkpoint level, loaded into the target's class as the run does.

It reads two things: what the load reported (missing, unexpected and shape-mismatched
keys) on the model the trials will copy, and the checkpoint's own files (tensor names
and dtypes from the weight files' headers, and ``config.json``) to say why.

| check                       | finds                                                          |
|-----------------------------|----------------------------------------------------------------|
| `checkpoint.unreadable`     | missing, truncated, corrupt or unsafe files                    |
| `checkpoint.wrapped`        | the weights are there under a prefix (`language_model.`, `module.`) |
| `checkpoint.foreign`        | `config.json` names another architecture, or a class without the head the run needs |
| `checkpoint.missing`        | weights the checkpoint lacks, newly initialized                |
| `checkpoint.unexpected`     | tensors of the checkpoint the class does not use               |
| `checkpoint.mismatched`     | tensors whose shape does not fit the class (the load stops)   |
| `checkpoint.nonfinite`      | NaN or Inf weights                                             |
| `checkpoint.fp16-range`     | weights past (error) or near (warning) fp16's maximum, when the sweep runs fp16 |
| `checkpoint.stored-dtype`   | bf16-stored weights that the sweep runs in fp16                |
| `checkpoint.untied`         | weights the config ties that are separate tensors              |
| `target.build-failed`       | a custom target's function raised as it built a level          |
"""

from __future__ import annotations

from nansearch.audit._base import Finding
from nansearch.audit.checkpoint._loaded import FP16_LEVELS, Checkpoint
from nansearch.audit.checkpoint.keys import _foreign, _headless, _keys
from nansearch.audit.checkpoint.values import _stored_dtype, _ties, _values
from nansearch.config import SweepConfig
from nansearch.targets.custom import TargetBuildError
from nansearch.targets.loading import (
    CheckpointError,
    resolve_checkpoint,
    stored_config,
    stored_tensors,
)
from nansearch.trial.runner import TrialRunner


def audit_checkpoints(cfg: SweepConfig, runner: TrialRunner) -> list[Finding]:
    fp16_levels = [d for d in cfg.factors.dtype.levels if d in FP16_LEVELS]
    findings: list[Finding] = []
    checkpoints: list[Checkpoint] = []
    for level, name in cfg.factors.checkpoint.levels.items():
        try:
            loaded = runner.cache.peek(name, level)
            path = resolve_checkpoint(name) if cfg.target.kind != "custom" else name
            checkpoints.append(Checkpoint(level, loaded, stored_tensors(path), stored_config(path)))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a user's target.fn fails in its own ways
            findings.append(_unreadable(level, exc))
    clean = [
        c.level
        for c in checkpoints
        if not c.loaded.missing_keys and not _foreign(c) and not _headless(c)
    ]
    for ckpt in checkpoints:
        findings += _keys(ckpt, clean)
        findings += _values(ckpt, fp16_levels)
        findings += _stored_dtype(ckpt, fp16_levels)
        findings += _ties(ckpt)
    return findings


def _unreadable(level: str, exc: Exception) -> Finding:
    if isinstance(exc, CheckpointError) and not exc.level:
        exc = exc.at_level(level)
    if isinstance(exc, CheckpointError) and exc.mismatched:
        return Finding(
            severity="error",
            check="checkpoint.mismatched",
            subject=f"checkpoint={level}",
            found=f"{exc}; the load stops here, as it would in your run",
            why=(
                "The checkpoint was saved with another config than the class is built from. "
                "Loading it anyway (ignore_mismatched_sizes=True) newly initializes those "
                "tensors, which NAN_CAUSES rows 5 and 10 turn into NaN."
            ),
            fix=(
                "Load the checkpoint with the config it was saved with (vocabulary size, "
                "hidden size), or resize the model first (resize_token_embeddings)."
            ),
        )
    if isinstance(exc, TargetBuildError):
        return Finding(
            severity="error",
            check="target.build-failed",
            subject=f"checkpoint={level}",
            found=f"factors.checkpoint.levels.{level}: {exc}",
            why=(
                "The target's own function failed before any training: every trial of this "
                "level ends as an error before its first step, so the sweep learns nothing "
                "about it; the other levels go on."
            ),
            fix=(
                f"Call {exc.function}({exc.checkpoint!r}, options) from {exc.file} yourself and "
                "fix what raises; each trial of the level records the traceback in trials.jsonl."
            ),
        )
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, CheckpointError):
        message = f"factors.checkpoint.levels.{level}: {type(exc).__name__}: {message}"
    return Finding(
        severity="error",
        check="checkpoint.unreadable",
        subject=f"checkpoint={level}",
        found=message,
        why=(
            "Every trial of this level ends as an error before its first step, so the sweep "
            "learns nothing about it; the other levels go on."
        ),
        fix=(
            "Point the level at the right folder, or save or download the checkpoint again "
            "(model.save_pretrained writes safetensors). A torch pickle that would run code "
            "is refused on purpose: convert a copy you trust to safetensors."
        ),
    )
