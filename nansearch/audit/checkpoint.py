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
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nansearch.audit._base import Finding
from nansearch.config import SweepConfig
from nansearch.targets._base import Loaded
from nansearch.targets.loading import (
    CheckpointError,
    StoredTensor,
    resolve_checkpoint,
    stored_config,
    stored_tensors,
)
from nansearch.trial.runner import TrialRunner

FP16_LEVELS = ("fp16", "amp-fp16")
FP16_MAX = torch.finfo(torch.float16).max
NEAR_FP16 = FP16_MAX / 16  # one product with an activation of 16 away from inf
PREFIX_DEPTH = 3  # wrapper prefixes tried: up to three dotted parts, e.g. "a.b.c."
NESTED_CONFIGS = ("text_config", "language_config", "llm_config", "decoder")


@dataclass
class Checkpoint:
    """One checkpoint level as loaded, with what its own files say."""

    level: str
    loaded: Loaded
    stored: dict[str, StoredTensor] | None  # None: not a local file or folder
    config: dict[str, Any] | None

    @property
    def subject(self) -> str:
        return f"checkpoint={self.level}"

    @property
    def cls(self) -> str:
        return type(self.loaded.model).__name__

    @property
    def model_type(self) -> str | None:
        """The class's own kind of model (a loaded config keeps the checkpoint's ``model_type``)."""
        config_class = getattr(type(self.loaded.model), "config_class", None)
        return getattr(config_class, "model_type", None) or None


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


# --- keys: missing, unexpected, mismatched; wrapped and foreign checkpoints ---------------


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by every name it has (tied ones under each name)."""
    return {
        **dict(model.named_buffers(remove_duplicate=False)),
        **dict(model.named_parameters(remove_duplicate=False)),
    }


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list({id(t): t for t in tensors}.values())


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _prefixes(keys: set[str]) -> set[str]:
    found = set()
    for key in keys:
        parts = key.split(".")
        for depth in range(1, min(PREFIX_DEPTH, len(parts) - 1) + 1):
            found.add(".".join(parts[:depth]) + ".")
    return found


def _wrapping(missing: set[str], stored: set[str]) -> tuple[str, str, set[str]] | None:
    """How the checkpoint's names differ from the class's by a prefix, if they do.

    Returns ``("strip", prefix, matched)`` when checkpoint keys carry a prefix the class
    lacks, or ``("add", prefix, matched)`` when the class expects one the checkpoint lacks;
    ``matched`` are the missing keys that would then load. None unless that explains at
    least half of what is missing.
    """
    best: tuple[str, str, set[str]] | None = None
    for prefix in sorted(_prefixes(stored)):
        matched = {k[len(prefix) :] for k in stored if k.startswith(prefix)} & missing
        if matched and (best is None or len(matched) > len(best[2])):
            best = ("strip", prefix, matched)
    for prefix in sorted(_prefixes(missing)):
        matched = {k for k in missing if k.startswith(prefix) and k[len(prefix) :] in stored}
        if matched and (best is None or len(matched) > len(best[2])):
            best = ("add", prefix, matched)
    return best if best and 2 * len(best[2]) >= len(missing) else None


def _foreign(ckpt: Checkpoint) -> tuple[str, str] | None:
    """``(architecture, model_type)`` from config.json when it names another kind of model."""
    config = ckpt.config or {}
    stored_type = config.get("model_type")
    if not stored_type or not ckpt.model_type or stored_type == ckpt.model_type:
        return None
    architecture = ", ".join(config.get("architectures") or []) or stored_type
    return architecture, stored_type


# The heads a run can ask for: a transformers auto-mapping of that task, and its name.
HEADS = (
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "a causal LM head"),
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "a sequence-to-sequence LM head"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "a masked LM head"),
    ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "an image-text-to-text head"),
)


def _classes(mapping: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for value in mapping.values():
        names.update(value if isinstance(value, (list, tuple)) else [value])
    return names


def _headless(ckpt: Checkpoint) -> tuple[str, str, str] | None:
    """``(architecture, head, what it is)`` when config.json names only classes without
    the head of the class the run loads (an encoder-only ``BertModel`` loaded as a causal
    LM); None when it names one with that head, names none, or names unknown classes."""
    architectures = list((ckpt.config or {}).get("architectures") or [])
    if not architectures or ckpt.cls in architectures:
        return None
    from transformers.models.auto import modeling_auto

    known = set().union(
        *(_classes(getattr(modeling_auto, n)) for n in dir(modeling_auto) if n.endswith("_NAMES"))
    )
    for mapping, head in HEADS:
        task = _classes(getattr(modeling_auto, mapping, {}))
        if ckpt.cls not in task:
            continue
        if any(a in task or a not in known for a in architectures):
            return None
        base = _classes(modeling_auto.MODEL_MAPPING_NAMES)
        what = (
            "a base model with no head" if architectures[0] in base else "a model of another task"
        )
        return ", ".join(architectures), head, what
    return None


def _nested(ckpt: Checkpoint) -> str | None:
    """The key of a sub-config in config.json that describes the class's own kind of model."""
    for key in NESTED_CONFIGS:
        sub = (ckpt.config or {}).get(key)
        if isinstance(sub, dict) and sub.get("model_type") == ckpt.model_type:
            return key
    return None


def _keys(ckpt: Checkpoint, clean: list[str]) -> list[Finding]:
    loaded, tensors = ckpt.loaded, _tensors(ckpt.loaded.model)
    every = _unique(list(tensors.values()))
    missing = _unique([tensors[k] for k in loaded.missing_keys if k in tensors])
    share = sum(t.numel() for t in missing) / max(1, sum(t.numel() for t in every))
    names = [k for k in loaded.missing_keys if k in tensors]
    found_missing = (
        f"loaded as {ckpt.cls}, {len(names)} of its {len(tensors)} weights are missing "
        f"({share:.0%} of {_count(sum(t.numel() for t in every))} parameters) and were newly "
        "initialized"
    )
    foreign = _foreign(ckpt)
    wrapping = (
        _wrapping(set(loaded.missing_keys), set(ckpt.stored))
        if loaded.missing_keys and ckpt.stored
        else None
    )
    headless = None if foreign else _headless(ckpt)
    findings = []
    if wrapping or foreign or headless:
        findings.append(_wrapped(ckpt, found_missing, wrapping, foreign, clean, headless))
    elif missing:
        findings.append(
            Finding(
                severity="error" if share >= 0.5 else "warning",
                check="checkpoint.missing",
                subject=ckpt.subject,
                found=f"{found_missing}: {_sample(loaded.missing_keys)}",
                why=(
                    "Missing weights start from a fresh init, not from training; a loading "
                    "path that leaves them uninitialized, or initializes them in half "
                    "precision, gives NaN at the first step (NAN_CAUSES row 10)."
                ),
                fix=(
                    "Load a checkpoint that has these weights. If they are a new head you "
                    "mean to train, initialize them explicitly in fp32 before casting."
                ),
            )
        )
    if loaded.unexpected_keys and not (wrapping or foreign or headless):
        findings.append(
            Finding(
                severity="info",
                check="checkpoint.unexpected",
                subject=ckpt.subject,
                found=(
                    f"{len(loaded.unexpected_keys)} tensors of the checkpoint are not used by "
                    f"{ckpt.cls}: {_sample(loaded.unexpected_keys)}"
                ),
                why=(
                    "Harmless by itself (a head or tower this class lacks), but a sign that "
                    "the checkpoint was saved from another model than the one the run builds."
                ),
                fix=f"Check that the checkpoint was saved from a {ckpt.cls}.",
            )
        )
    return findings


def _sample(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _with_tied(ckpt: Checkpoint, matched: set[str]) -> set[str]:
    """``matched`` and the missing keys tied to one of them (the same tensor)."""
    tensors = _tensors(ckpt.loaded.model)
    ids = {id(tensors[k]) for k in matched if k in tensors}
    return matched | {k for k in ckpt.loaded.missing_keys if k in tensors and id(tensors[k]) in ids}


def _wrapped(
    ckpt: Checkpoint,
    found_missing: str,
    wrapping: tuple[str, str, set[str]] | None,
    foreign: tuple[str, str] | None,
    clean: list[str],
    headless: tuple[str, str, str] | None = None,
) -> Finding:
    parts = [found_missing]
    if headless:
        missing = ckpt.loaded.missing_keys
        parts.append(
            f"config.json names {headless[0]}, {headless[2]}, while {ckpt.cls} needs "
            f"{headless[1]}: the checkpoint was saved without it"
            + (f" ({_sample(missing)} are that head)" if missing else "")
        )
    if foreign:
        parts.append(
            f"config.json names {foreign[0]} (model_type {foreign[1]}), while {ckpt.cls} "
            f"expects model_type {ckpt.model_type}"
        )
    if wrapping:
        action, prefix, matched = wrapping
        missing = ckpt.loaded.missing_keys
        found = _with_tied(ckpt, matched)
        count = "all" if len(found) == len(missing) else f"{len(found)} of the"
        parts.append(
            f"{count} {len(missing)} missing weights are in the checkpoint under '{prefix}' "
            "(counting tied ones) and would load once it is stripped"
            if action == "strip"
            else f"{count} {len(missing)} missing weights are in the checkpoint without the "
            f"'{prefix}' the class expects (counting tied ones)"
        )
    if ckpt.loaded.unexpected_keys:
        parts.append(f"{len(ckpt.loaded.unexpected_keys)} checkpoint tensors went unused")

    fixes = []
    nested = _nested(ckpt)
    if foreign and (nested or (wrapping and wrapping[0] == "strip")):
        fixes.append(
            f"Load the language-only checkpoint instead: the {ckpt.model_type} model alone, as "
            "facebook/opt-2.7b is for Salesforce/blip2-opt-2.7b"
            + (f" (this sweep's level {', '.join(clean)} is one)" if clean else "")
            + f", or load this one with {foreign[0].split(', ')[0]}"
        )
    elif foreign:
        fixes.append(
            f"Load a checkpoint saved from a {ckpt.model_type} model, or load this one with "
            f"its own class {foreign[0].split(', ')[0]}"
        )
    elif headless:
        fixes.append(
            f"Load a checkpoint saved with {headless[1]} (a {ckpt.cls}), or load this one "
            f"with its own class {headless[0].split(', ')[0]} and train a head on it, "
            "initialized in fp32"
        )
    if wrapping and wrapping[0] == "strip":
        prefix = wrapping[1]
        fixes.append(
            f"{'or ' if fixes else ''}strip '{prefix}' from the checkpoint's keys and save it "
            f"again: {{k.removeprefix('{prefix}'): v for k, v in state.items() if "
            f"k.startswith('{prefix}')}}"
            + (
                " ('module.' is added by DistributedDataParallel, '_orig_mod.' by torch.compile)"
                if not foreign
                else ""
            )
        )
    elif wrapping:
        fixes.append(
            f"{'or ' if fixes else ''}add '{wrapping[1]}' to the checkpoint's keys and save "
            "it again"
        )
    return Finding(
        severity="error",
        check="checkpoint.wrapped" if wrapping else "checkpoint.foreign",
        subject=ckpt.subject,
        found="; ".join(parts),
        why=(
            f"{ckpt.cls} does not find its weights under the names it expects, so the run "
            "trains freshly initialized weights instead of the checkpoint. Loading paths "
            "that leave missing weights uninitialized, or initialize them in half precision, "
            "turn that into NaN logits at the first step (NAN_CAUSES rows 1 and 10; "
            "zjunlp/EasyEdit#526, a full BLIP-2 checkpoint loaded as OPTForCausalLM)."
        ),
        fix="; ".join(fixes) + ".",
    )


# --- values: non-finite, fp16 range, stored dtype, ties ------------------------------------


def _values(ckpt: Checkpoint, fp16_levels: list[str]) -> list[Finding]:
    names: dict[int, str] = {}
    tensors: dict[int, torch.Tensor] = {}
    for name, tensor in _tensors(ckpt.loaded.model).items():
        if tensor.is_floating_point() and tensor.numel() and id(tensor) not in tensors:
            names[id(tensor)], tensors[id(tensor)] = name, tensor
    if not tensors:
        return []
    with torch.no_grad():
        absmax = torch.stack([t.detach().abs().amax().float() for t in tensors.values()]).tolist()
    peaks = dict(zip(tensors, absmax, strict=True))
    findings = []
    bad = [key for key, peak in peaks.items() if not peak < float("inf")]
    if bad:
        values = sum(int((~torch.isfinite(tensors[k])).sum()) for k in bad)
        missing = set(ckpt.loaded.missing_keys)
        in_missing = sum(names[k] in missing for k in bad)
        findings.append(
            Finding(
                severity="error",
                check="checkpoint.nonfinite",
                subject=ckpt.subject,
                found=(
                    f"{len(bad)} weight tensors hold NaN or Inf ({values} values; "
                    f"{in_missing} of them newly initialized): {_sample([names[k] for k in bad])}"
                ),
                why="A NaN or Inf weight makes every logit that depends on it NaN at step 0.",
                fix=(
                    "Go back to the last checkpoint saved before the values went non-finite; "
                    "if only newly initialized weights are affected, the loading path left "
                    "them uninitialized: load a checkpoint that has them."
                ),
            )
        )
    if not fp16_levels:
        return findings
    finite = {k: p for k, p in peaks.items() if p < float("inf")}
    past = sorted((k for k, p in finite.items() if p > FP16_MAX), key=lambda k: -finite[k])
    near = sorted(
        (k for k, p in finite.items() if NEAR_FP16 < p <= FP16_MAX), key=lambda k: -finite[k]
    )
    if not (past or near):
        return findings
    top = (past or near)[0]
    counts = [f"{len(past)} weight tensors are past"] if past else []
    counts += [f"{len(near)}{'' if past else ' weight tensors are'} near"] if near else []
    findings.append(
        Finding(
            severity="error" if past else "warning",
            check="checkpoint.fp16-range",
            subject=ckpt.subject,
            found=(
                f"{' and '.join(counts)} fp16's maximum {FP16_MAX:.0f} "
                f"(largest |w| = {finite[top]:.4g} in {names[top]}), and the sweep runs "
                f"{', '.join(fp16_levels)}"
            ),
            why=(
                "In fp16, pure or under autocast, such a weight is inf or its products "
                "pass 65504: inf, then NaN (NAN_CAUSES row 3)."
            ),
            fix=(
                "Run this checkpoint in bf16, amp-bf16 or fp32, or keep the modules that "
                "hold these weights in fp32."
            ),
        )
    )
    return findings


def _stored_dtype(ckpt: Checkpoint, fp16_levels: list[str]) -> list[Finding]:
    if not ckpt.stored or not fp16_levels:
        return []
    floats = Counter(t.dtype for t in ckpt.stored.values() if t.dtype.startswith(("float", "bf")))
    if not floats:
        return []
    dtype, count = floats.most_common(1)[0]
    if dtype != "bfloat16":
        return []
    return [
        Finding(
            severity="warning",
            check="checkpoint.stored-dtype",
            subject=ckpt.subject,
            found=(
                f"stored in bfloat16 ({count} of {sum(floats.values())} float tensors), and the "
                f"sweep runs it in {', '.join(fp16_levels)}"
            ),
            why=(
                "Weights trained in bf16 never had to keep activations inside fp16's range: "
                "values bf16 held pass 65504 in fp16 and become inf, then NaN (NAN_CAUSES "
                "row 3: T5, Qwen2, Falcon)."
            ),
            fix=(
                "Run it in bf16, amp-bf16 or fp32; if it must be fp16, keep the feed-forward "
                "and attention outputs in fp32."
            ),
        )
    ]


def _ties(ckpt: Checkpoint) -> list[Finding]:
    model = ckpt.loaded.model
    expand = getattr(model, "get_expanded_tied_weights_keys", None)
    if expand is None:
        return []
    tensors = _tensors(model)
    untied = [
        (target, source)
        for target, source in expand(all_submodels=True).items()
        if target in tensors and source in tensors and tensors[target] is not tensors[source]
    ]
    if not untied:
        return []
    target, source = untied[0]
    same = torch.equal(tensors[target], tensors[source])
    return [
        Finding(
            severity="warning",
            check="checkpoint.untied",
            subject=ckpt.subject,
            found=(
                f"the config ties {len(untied)} weight(s) that are separate tensors: {target} "
                f"and {source} ({'equal' if same else 'different'} values)"
            ),
            why=(
                "The model shares one matrix between its input embedding and output head; "
                "two matrices mean one was not trained with the other (the checkpoint stored "
                "both with different values, or load_state_dict(assign=True) replaced one). "
                "Logits from a head that does not match the embeddings start far off, and the "
                "large early losses and gradients are where half-precision runs overflow."
            ),
            fix=(
                "If the head really is separate, set tie_word_embeddings to false in "
                "config.json; otherwise call model.tie_weights() after loading, or save the "
                "checkpoint again from a model whose weights are tied."
            ),
        )
    ]
