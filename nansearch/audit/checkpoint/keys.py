"""The checkpoint's keys: missing, unexpected, mismatched; wrapped and foreign checkpoints."""

from __future__ import annotations

from typing import Any

from nansearch.audit._base import Finding
from nansearch.audit.checkpoint._loaded import (
    NESTED_CONFIGS,
    PREFIX_DEPTH,
    Checkpoint,
    _count,
    _sample,
    _tensors,
    _unique,
)


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
