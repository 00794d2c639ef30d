"""The batch audit: each batch level, built by the batch factor itself, checked before a step.

The batch of a level comes from the level's own transformation of the target's clean
batch, on the first checkpoint level that loads (vocabulary size and positions come
from its model). Levels receive that loaded model itself, not a copy: a level changes
the batch, never the model.

| check                      | finds                                                        |
|----------------------------|--------------------------------------------------------------|
| `batch.labels-ignored`     | no label is counted (every one is -100, or only the first of each row) |
| `batch.masked-row`         | rows whose attention mask is all zero                        |
| `batch.id-range`           | ids (or labels) negative or not below the vocabulary size    |
| `batch.nonfinite-input`    | NaN or Inf in a float input                                  |
| `batch.fp16-overflow`      | float inputs past fp16's maximum, when the sweep runs fp16   |
| `batch.constant-feature`   | constant features that a normalization divides by zero       |
| `batch.too-long`           | sequences longer than the model's positions                  |
| `batch.not-applicable`     | a level that cannot apply to this target                     |
| `batch.unreadable`         | a level that fails to build (a batch file that cannot be read) |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nansearch.audit._base import Finding
from nansearch.config import NansearchError, SweepConfig
from nansearch.dtypes import FP16_MAX
from nansearch.factors import Factor, LevelNotApplicable, TrialSetup
from nansearch.factors.batch import no_counted_label
from nansearch.targets._base import Loaded
from nansearch.trial.runner import TrialRunner

IGNORE = -100


@dataclass
class Limits:
    """What the model accepts: its vocabulary and positions (None where it does not say)."""

    vocab: int | None
    positions: int | None
    fp16: bool  # the sweep casts float inputs to fp16 in some trials


def audit_batches(cfg: SweepConfig, factors: list[Factor], runner: TrialRunner) -> list[Finding]:
    factor = next((f for f in factors if f.name == "batch"), None)
    loaded = _first_loadable(cfg, runner)
    if factor is None or loaded is None:
        return []  # the checkpoint audit says why nothing loaded
    model = loaded.model
    limits = Limits(
        vocab=runner.target.vocab_size(model),
        positions=runner.target.max_positions(model),
        fp16=bool({"fp16", "amp-fp16"} & set(cfg.factors.dtype.levels)),
    )
    findings: list[Finding] = []
    for level in factor.levels or []:
        subject = f"batch={level}"
        try:
            batch = level_batch(runner, factor, loaded, level, seed=cfg.seed * 100_003)
        except LevelNotApplicable as exc:
            findings.append(_not_applicable(subject, exc))
            continue
        except (NansearchError, OSError, ValueError) as exc:
            findings.append(_unreadable(subject, exc))
            continue
        findings += inspect_batch(subject, batch, limits)
    return findings


def _first_loadable(cfg: SweepConfig, runner: TrialRunner) -> Loaded | None:
    for level, name in cfg.factors.checkpoint.levels.items():
        try:
            return runner.cache.peek(name, level)
        except Exception:  # reported by the checkpoint audit
            continue
    return None


def level_batch(
    runner: TrialRunner, factor: Factor, loaded: Loaded, level: str, seed: int
) -> dict[str, torch.Tensor]:
    """The batch a trial of ``level`` trains on, made by the factor's own transformation."""
    generator = torch.Generator().manual_seed(seed)
    own = None if loaded.batch is None else {k: v.clone() for k, v in loaded.batch.items()}
    shared = Loaded(
        model=loaded.model,
        checkpoint=loaded.checkpoint,
        missing_keys=loaded.missing_keys,
        batch=own,
    )
    setup = TrialSetup(target=runner.target, cache=runner.cache, generator=generator, loaded=shared)
    setup.batch = own if own is not None else runner.target.make_batch(loaded.model, generator)
    factor.apply(setup, level)
    return setup.batch


def inspect_batch(subject: str, batch: dict[str, torch.Tensor], limits: Limits) -> list[Finding]:
    """Every finding about one batch."""
    checks = (
        _labels(subject, batch),
        _masked_rows(subject, batch),
        _id_range(subject, batch, limits.vocab),
        _nonfinite(subject, batch),
        _fp16_overflow(subject, batch) if limits.fp16 else None,
        _constant(subject, batch),
        _too_long(subject, batch, limits.positions),
    )
    return [finding for finding in checks if finding is not None]


def _rows(indices: torch.Tensor, total: int) -> str:
    shown = ", ".join(str(i) for i in indices[:5].tolist())
    more = f" and {len(indices) - 5} more" if len(indices) > 5 else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more} of {total}"


def _labels(subject: str, batch: dict[str, torch.Tensor]) -> Finding | None:
    found = no_counted_label(batch.get("labels"))
    if found is None:
        return None
    return Finding(
        severity="error",
        check="batch.labels-ignored",
        subject=subject,
        found=found,
        why=(
            "Mean cross-entropy over zero counted tokens is 0/0 = NaN (NAN_CAUSES row 7; "
            "pytorch/pytorch#70348)."
        ),
        fix=(
            f"Skip batches with no counted label (check (labels != {IGNORE}).any() before the "
            "step; factors.batch.skip_empty_labels=true does so in the sweep), or sum the "
            "loss and divide by max(count, 1)."
        ),
    )


def _masked_rows(subject: str, batch: dict[str, torch.Tensor]) -> Finding | None:
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return None
    empty = (mask == 0).all(dim=1).nonzero().flatten()
    if len(empty) == 0:
        return None
    return Finding(
        severity="warning",
        check="batch.masked-row",
        subject=subject,
        found=(
            f"{_rows(empty, mask.shape[0])} {'has' if len(empty) == 1 else 'have'} an all-zero "
            "attention mask"
        ),
        why=(
            "Softmax over a row whose scores are all masked with -inf is 0/0 = NaN "
            "(NAN_CAUSES row 6; pytorch/pytorch#24816). transformers' eager attention masks "
            "with the dtype's minimum and stays finite; hand-written attention and some "
            "fused kernels do not."
        ),
        fix=(
            "Drop fully padded rows from the batch, or mask with torch.finfo(dtype).min "
            "instead of -inf."
        ),
    )


def _id_range(subject: str, batch: dict[str, torch.Tensor], vocab: int | None) -> Finding | None:
    problems = []
    for key, value in batch.items():
        if value.is_floating_point() or value.dtype == torch.bool or value.numel() == 0:
            continue
        if key.endswith("input_ids"):
            ids = value
        elif key == "labels":
            ids = value[value != IGNORE]
            if ids.numel() == 0:
                continue
        else:
            continue
        negative = int((ids < 0).sum())
        high = int((ids >= vocab).sum()) if vocab is not None else 0
        if negative:
            problems.append(f"{key} has {negative} negative id(s) (min {int(ids.min())})")
        if high:
            problems.append(
                f"{key} has {high} id(s) >= the vocabulary size {vocab} (max {int(ids.max())})"
            )
    if not problems:
        return None
    return Finding(
        severity="error",
        check="batch.id-range",
        subject=subject,
        found="; ".join(problems),
        why=(
            "An id outside the embedding table is an index error on the CPU and a device-side "
            "assert on CUDA: not a NaN, but no trial with this batch can finish, and kernels "
            "that skip the check read memory outside the table."
        ),
        fix=(
            "Use the tokenizer that belongs to the model (len(tokenizer) <= vocab_size), "
            "resize the embeddings after adding tokens (model.resize_token_embeddings), and "
            f"pad with pad_token_id, marking ignored labels with {IGNORE} only in labels."
        ),
    )


def _floats(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if v.is_floating_point() and v.numel()}


def _nonfinite(subject: str, batch: dict[str, torch.Tensor]) -> Finding | None:
    problems = []
    for key, value in _floats(batch).items():
        nan, inf = int(value.isnan().sum()), int(value.isinf().sum())
        if nan or inf:
            rows = (~torch.isfinite(value)).flatten(1).any(dim=1).nonzero().flatten()
            problems.append(
                f"{key} holds {nan} NaN and {inf} Inf values ({_rows(rows, len(value))})"
            )
    if not problems:
        return None
    return Finding(
        severity="error",
        check="batch.nonfinite-input",
        subject=subject,
        found="; ".join(problems),
        why=(
            "A NaN in the input reaches every activation it touches: NaN logits at the first "
            "forward (NAN_CAUSES row 8; prs-eth/Marigold#111)."
        ),
        fix=(
            "Find the sample in the data pipeline (torch.isfinite(x).all() per sample) and "
            "drop or repair it; corrupt images and divisions in preprocessing are the usual "
            "source."
        ),
    )


def _fp16_overflow(subject: str, batch: dict[str, torch.Tensor]) -> Finding | None:
    problems = []
    for key, value in _floats(batch).items():
        finite = value[torch.isfinite(value)]
        peak = float(finite.abs().max()) if finite.numel() else 0.0
        if peak > FP16_MAX:
            problems.append(f"{key} reaches |x| = {peak:.4g}")
    if not problems:
        return None
    return Finding(
        severity="error",
        check="batch.fp16-overflow",
        subject=subject,
        found=f"{'; '.join(problems)}, past fp16's maximum {FP16_MAX:.0f}, and the sweep runs fp16",
        why="Cast to fp16, these values are inf, and inf in the input is NaN downstream.",
        fix="Normalize the inputs (to roughly unit scale) before they reach the model.",
    )


def _constant(subject: str, batch: dict[str, torch.Tensor]) -> Finding | None:
    problems = []
    for key, value in _floats(batch).items():
        if not torch.isfinite(value).all():
            continue  # reported as non-finite
        if value.dim() >= 3 and value[0, 0].numel() > 1:
            # per sample and channel, as per-image standardization and instance norm see it
            planes = value.flatten(2)
            flat = (planes.amax(-1) == planes.amin(-1)).nonzero()
            if len(flat):
                s, c = flat[0].tolist()
                problems.append(
                    f"{key}: {len(flat)} of {planes.shape[0] * planes.shape[1]} (sample, channel) "
                    f"planes are constant (e.g. sample {s}, channel {c}: every value "
                    f"{float(planes[s, c, 0]):.4g})"
                )
        elif value.dim() == 2 and value.shape[0] > 1:
            # per feature across the batch, as standardizing a column sees it
            flat = (value.amax(0) == value.amin(0)).nonzero().flatten()
            if len(flat):
                problems.append(
                    f"{key}: {len(flat)} of {value.shape[1]} features are constant across the "
                    f"batch (e.g. feature {int(flat[0])})"
                )
    if not problems:
        return None
    return Finding(
        severity="warning",
        check="batch.constant-feature",
        subject=subject,
        found="; ".join(problems),
        why=(
            "A normalization that divides by the standard deviation (per-image "
            "standardization, a norm layer without eps) divides by zero here: NaN "
            "(NAN_CAUSES row 8; SunnerLi/RecycleGAN#1)."
        ),
        fix=(
            "Add an eps to the denominator ((x - mean) / (std + 1e-6)), or drop constant "
            "samples and features from the data."
        ),
    )


def _too_long(
    subject: str, batch: dict[str, torch.Tensor], positions: int | None
) -> Finding | None:
    ids = batch.get("input_ids")
    if ids is None or positions is None or ids.dim() < 2 or ids.shape[-1] <= positions:
        return None
    return Finding(
        severity="error",
        check="batch.too-long",
        subject=subject,
        found=f"input_ids rows are {ids.shape[-1]} tokens long; the model has {positions} positions",
        why=(
            "Learned position tables end there: an index error. Rotary and relative positions "
            "go on, but to positions the model never saw, where attention scores grow past "
            "anything trained and overflow first in fp16."
        ),
        fix=(
            f"Truncate or split sequences to {positions} tokens (tokenizer truncation=True, "
            f"max_length={positions})."
        ),
    )


def _not_applicable(subject: str, exc: LevelNotApplicable) -> Finding:
    return Finding(
        severity="warning",
        check="batch.not-applicable",
        subject=subject,
        found=str(exc),
        why="Every trial of this level ends as an error, so it tells nothing about NaN.",
        fix="Remove the level from factors.batch.levels for this target.",
    )


def _unreadable(subject: str, exc: Exception) -> Finding:
    return Finding(
        severity="error",
        check="batch.unreadable",
        subject=subject,
        found=f"{type(exc).__name__}: {exc}" if not isinstance(exc, NansearchError) else str(exc),
        why="Every trial of this level ends as an error before its first step.",
        fix="Fix the batch file or level named above; the other levels go on.",
    )
