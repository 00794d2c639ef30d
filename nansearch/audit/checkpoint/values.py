"""The checkpoint's values: non-finite weights, the fp16 range, the stored dtype, ties."""

from __future__ import annotations

from collections import Counter

import torch

from nansearch.audit._base import Finding
from nansearch.audit.checkpoint._loaded import (
    NEAR_FP16,
    Checkpoint,
    _sample,
    _tensors,
)
from nansearch.dtypes import FP16_MAX


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
