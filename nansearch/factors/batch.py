"""The batch factor: the clean batch, or a real perturbation of it.

| level                | what it does                                                  | NAN_CAUSES |
|----------------------|---------------------------------------------------------------|------------|
| `clean`              | the target's own batch                                        |            |
| `labels-all-ignored` | every label is -100: mean cross-entropy over no token is 0/0  | row 7      |
| `truncated-answers`  | prompts unlabelled; each row's answer truncated away by chance: no label left, 0/0, for half the seeds | row 7 |
| `padded-row`         | the first row is all padding: its attention mask is all zero  | row 6      |
| `nan-input`          | a patch of NaN in every float input (pixel values)            | row 8      |
| `vocab-edge-ids`     | half of each row uses the last ids of the vocabulary, rows the data never trained |  |
| `long-sequence`      | rows as long as the model's positions allow                   |            |
| `out-of-range-ids`   | one id equal to the vocabulary size (an error, not a NaN)     |            |

Levels named under ``factors.batch.files`` replace the batch with the tensors of a
``.safetensors`` file (or a ``.pt`` file read with ``weights_only=True``).

``factors.batch.skip_empty_labels: true`` skips every step whose batch, after its level,
has no counted label, the guard a training loop puts before its step
(``if not (labels != -100).any(): continue``); the run records the steps it skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from nansearch.config.schema import BatchFactor as BatchConfig
from nansearch.errors import NansearchError
from nansearch.factors._base import CategoricalFactor, LevelFn, LevelNotApplicable, TrialSetup

SKIP_STEP = "skip_step"  # TrialSetup.extra: why the loop skips each step of this batch


IGNORE = -100


def no_counted_label(labels: torch.Tensor | None) -> str | None:
    """Why a batch's labels leave mean cross-entropy nothing to count, or None if they do
    not: every one ignored, or only the first of each row, which a causal LM's shift by one
    drops."""
    if labels is None or labels.is_floating_point() or labels.numel() == 0:
        return None
    counted = labels != IGNORE
    if not counted.any():
        return f"every one of the {labels.numel()} labels is {IGNORE} (ignored)"
    if labels.dim() >= 2 and labels.shape[-1] > 1 and not counted[..., 1:].any():
        return (
            "only the first position of each row has a label; a causal LM shifts labels by "
            "one, so none is counted"
        )
    return None


def _batch(setup: TrialSetup) -> dict[str, torch.Tensor]:
    """The batch a level changes: the runner builds the target's batch before the batch
    stage, so there is always one by then."""
    if setup.batch is None:
        raise NansearchError("a batch level ran before the target's batch was built")
    return setup.batch


def _clean(setup: TrialSetup) -> None:
    pass


def _labels_all_ignored(setup: TrialSetup) -> None:
    batch = _batch(setup)
    batch["labels"] = torch.full_like(batch["labels"], -100)


def _truncated_answers(setup: TrialSetup) -> None:
    """Fine-tuning labels only the answer: the first half of each row (the prompt) is -100.

    A row whose prompt filled the length limit lost its answer to truncation: all its
    labels are -100. Each row loses it with probability ``2 ** (-1 / rows)``, drawn from
    the trial's seeded generator, so the whole batch is left without a label, and its
    mean loss is 0/0, for half the seeds: a flaky failure whose rate is set by the data
    the seed draws, not by rounding.
    """
    batch = _batch(setup)
    labels = batch.get("labels")
    if labels is None or labels.dim() != 2:
        raise LevelNotApplicable(
            "batch level 'truncated-answers' needs token labels of shape (rows, positions); "
            f"this target's batch has {', '.join(batch)}"
        )
    rows, length = labels.shape
    labels[:, : length // 2] = -100
    truncated = torch.rand(rows, generator=setup.generator) < 2 ** (-1 / rows)
    labels[truncated] = -100


def _padded_row(setup: TrialSetup) -> None:
    batch = _batch(setup)
    config = getattr(setup.model, "config", None)
    config = getattr(config, "text_config", None) or config
    pad = getattr(config, "pad_token_id", None)
    batch["attention_mask"][0] = 0
    if pad is not None:
        batch["input_ids"][0] = pad
    if "labels" in batch:
        batch["labels"][0] = -100


def _nan_input(setup: TrialSetup) -> None:
    batch = _batch(setup)
    floats = [k for k, v in batch.items() if v.is_floating_point()]
    if not floats:
        raise LevelNotApplicable(
            "batch level 'nan-input' needs a float input such as pixel_values; "
            f"this target's batch has only {', '.join(batch)}"
        )
    for key in floats:
        value = batch[key]
        patch = value[0].view(-1)
        patch[: max(1, patch.numel() // 16)] = float("nan")


def _reserved_ids(setup: TrialSetup) -> set[int]:
    """Ids with a role besides text, such as BLIP-2's image token, that a level must not move."""
    config = getattr(setup.model, "config", None)
    return {
        value
        for key in ("image_token_id", "image_token_index")
        if isinstance(value := getattr(config, key, None), int)
    }


def _vocab_edge_ids(setup: TrialSetup) -> None:
    vocab = setup.target.vocab_size(setup.model)
    if vocab is None:
        raise LevelNotApplicable(
            "batch level 'vocab-edge-ids' needs a model config with vocab_size"
        )
    reserved = _reserved_ids(setup)
    batch = _batch(setup)
    ids, labels = batch["input_ids"], batch.get("labels")
    text = ~torch.isin(ids, torch.tensor(sorted(reserved), dtype=ids.dtype))
    top = torch.tensor([i for i in range(vocab - 1, -1, -1) if i not in reserved][: ids.shape[1]])
    for row in range(ids.shape[0]):
        positions = text[row].nonzero().squeeze(1)
        positions = positions[len(positions) // 2 :]  # the second half of the text
        ids[row, positions] = top[: len(positions)].to(ids.dtype)
        if labels is not None:
            kept = positions[labels[row, positions] != -100]
            labels[row, kept] = ids[row, kept]


def _long_sequence(setup: TrialSetup) -> None:
    positions = setup.target.max_positions(setup.model)
    batch = _batch(setup)
    current = batch["input_ids"].shape[1]
    length = positions if positions else 4 * current
    setup.batch = setup.target.lengthen(setup.model, batch, length, setup.generator)


def _out_of_range_ids(setup: TrialSetup) -> None:
    vocab = setup.target.vocab_size(setup.model)
    if vocab is None:
        raise LevelNotApplicable("batch level 'out-of-range-ids' needs a config with vocab_size")
    _batch(setup)["input_ids"][0, -1] = vocab


def load_batch_file(path: str) -> dict[str, torch.Tensor]:
    """Tensors from a batch file: safetensors, or a weights-only torch pickle."""
    file = Path(path)
    if not file.is_file():
        raise NansearchError(f"batch file {path}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise NansearchError(f"batch file {path}: cannot be read safely: {exc}") from None
    if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
        raise NansearchError(f"batch file {path}: must hold a dict of tensors")
    return data


class BatchFactor(CategoricalFactor):
    name = "batch"
    stage = "batch"
    LEVELS: ClassVar[dict[str, LevelFn]] = {
        "clean": _clean,
        "labels-all-ignored": _labels_all_ignored,
        "truncated-answers": _truncated_answers,
        "padded-row": _padded_row,
        "nan-input": _nan_input,
        "vocab-edge-ids": _vocab_edge_ids,
        "long-sequence": _long_sequence,
        "out-of-range-ids": _out_of_range_ids,
    }

    def __init__(self, cfg: BatchConfig):
        self.files = dict(cfg.files)
        self.skip_empty_labels = bool(getattr(cfg, "skip_empty_labels", False))
        super().__init__(list(cfg.levels) + [n for n in self.files if n not in cfg.levels])

    def apply(self, setup: TrialSetup, value: str) -> None:
        if value in self.files:
            setup.batch = load_batch_file(self.files[value])
        else:
            super().apply(setup, value)
        if self.skip_empty_labels and setup.batch is not None:
            empty = no_counted_label(setup.batch.get("labels"))
            if empty:
                setup.extra[SKIP_STEP] = empty

    def check(self) -> list[str]:
        problems = []
        for name, path in self.files.items():
            if not Path(path).is_file():
                problems.append(f"factors.batch.files.{name}={path!r}: no such file")
        known = dict(self.LEVELS, **dict.fromkeys(self.files))
        for level in self.chosen:
            if level not in known:
                problems.append(
                    f"factors.batch.levels: {level!r} is not a batch level; valid levels are "
                    f"{', '.join(sorted(known))} (or a name under factors.batch.files)"
                )
        return problems
