"""The audit's concrete fixes, as changes to a failing configuration.

| audit check            | the change verified                                              |
|------------------------|------------------------------------------------------------------|
| `config.fp16-adam-eps` | `optimizer.eps=1e-4`                                             |
| `config.lr-range`      | `lr` at the top of the optimizer's usual range                   |
| `checkpoint.wrapped`   | the checkpoint's weights under the prefix, stripped of it and saved in the study folder, loaded as a checkpoint level of their own |
| `batch.labels-ignored` | `factors.batch.skip_empty_labels=true`: a step whose batch has no counted label is skipped |

A finding applies to a conclusion when its subject is a value the conclusion names
(`dtype=fp16`, `checkpoint=blip2-full`), or the factor of a range it names (`lr`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Remedy:
    """One audit fix as a change: factor values and dotted config keys, how it reads where
    those say it badly, and what must be written before it can run."""

    values: dict[str, Any]
    label: str = ""
    writes: dict[str, Any] | None = None  # {"strip": {"level", "checkpoint", "to"}}


@dataclass
class Context:
    """What the audit's fixes need to know of the sweep."""

    optimizer: str = "adamw"
    study_dir: Path | None = None  # where written fixes go (``fixes/``)
    checkpoints: dict[str, str] = field(default_factory=dict)  # level -> checkpoint
    owns_loop: bool = False  # the user's own code runs each step: no step of ours to skip


def _larger_eps(finding: dict[str, Any], failing: dict[str, Any], ctx: Context) -> Remedy | None:
    return Remedy({"optimizer.eps": 1e-4})


def _usual_lr(finding: dict[str, Any], failing: dict[str, Any], ctx: Context) -> Remedy | None:
    """The top of the optimizer's usual range, for a failing rate above it."""
    from nansearch.audit.config import USUAL_LR

    high = USUAL_LR.get(ctx.optimizer, USUAL_LR["adamw"])[1]
    lr = failing.get("lr")
    return Remedy({"lr": high}) if isinstance(lr, float) and lr > high else None


def stripped_level(level: str) -> str:
    """The checkpoint level of ``level``'s stripped copy (no dot: overrides split on dots)."""
    return level.replace(".", "-") + "-stripped"


def _strip(finding: dict[str, Any], failing: dict[str, Any], ctx: Context) -> Remedy | None:
    """A copy of the wrapped checkpoint with the prefix stripped, as a new level."""
    level = failing.get("checkpoint")
    if ctx.study_dir is None or level not in ctx.checkpoints:
        return None
    if finding.get("subject") != f"checkpoint={level}":
        return None
    name = stripped_level(str(level))
    # named as the study folder is, beside the study's config.yaml in the rerun line; a
    # relative one starts with ./ so that, missing, it is not taken for a hub id
    folder = ctx.study_dir / "fixes" / name
    where = str(folder) if folder.is_absolute() else f"./{folder}"
    return Remedy(
        {f"factors.checkpoint.levels.{name}": where, "checkpoint": name},
        label=f"checkpoint={name} ({level} with its wrapper prefix stripped from its keys)",
        writes={"strip": {"level": level, "checkpoint": ctx.checkpoints[level], "to": where}},
    )


def _skip_empty(finding: dict[str, Any], failing: dict[str, Any], ctx: Context) -> Remedy | None:
    if ctx.owns_loop:
        return None
    return Remedy({"factors.batch.skip_empty_labels": True})


Make = Callable[[dict[str, Any], dict[str, Any], Context], Remedy | None]
# the audit's concrete fixes: check id -> the change that applies it to a failing
# configuration (None where it does not apply to that one)
AUDIT_FIXES: dict[str, Make] = {
    "config.fp16-adam-eps": _larger_eps,
    "config.lr-range": _usual_lr,
    "checkpoint.wrapped": _strip,
    "batch.labels-ignored": _skip_empty,
}


def audit_remedies(
    item: dict[str, Any],
    audit: dict[str, Any] | None,
    failing: dict[str, Any] | None = None,
    ctx: Context | None = None,
) -> list[Remedy]:
    """The audit's concrete fixes for the values this conclusion names, each as it
    applies to the ``failing`` configuration."""
    conditions = item.get("conditions") or []
    subjects = {f"{c['factor']}={c['value']}" for c in conditions}
    subjects |= {c["factor"] for c in conditions if c.get("op") != "="}
    iso = item.get("isolation") or {}
    subjects |= {f"{k}={v}" for k, v in (iso.get("minimal") or {}).items()}
    out: list[Remedy] = []
    for finding in (audit or {}).get("findings") or []:
        make = AUDIT_FIXES.get(finding.get("check"))
        if make is None or finding.get("subject") not in subjects:
            continue
        remedy = make(finding, failing or {}, ctx or Context())
        if remedy and all(remedy.values != r.values for r in out):
            out.append(remedy)
    return out


def audit_changes(
    item: dict[str, Any],
    audit: dict[str, Any] | None,
    failing: dict[str, Any] | None = None,
    optimizer: str = "adamw",
) -> list[dict[str, Any]]:
    """The changes alone of :func:`audit_remedies`."""
    ctx = Context(optimizer=optimizer)
    return [r.values for r in audit_remedies(item, audit, failing, ctx)]


def write_stripped(spec: dict[str, Any], runner: Any) -> str:
    """Write the stripped copy ``spec`` names, from the checkpoint as ``runner`` loads it;
    returns the prefix stripped."""
    from nansearch.audit.checkpoint.strip import strip_prefix, wrapped_prefix
    from nansearch.config import NansearchError

    loaded = runner.cache.peek(spec["checkpoint"], spec["level"])
    prefix = wrapped_prefix(loaded, spec["checkpoint"])
    if prefix is None:
        raise NansearchError(
            f"checkpoint={spec['level']}: its missing weights are under no prefix to strip"
        )
    config_class = getattr(type(loaded.model), "config_class", None)
    model_type = getattr(config_class, "model_type", None) or None
    strip_prefix(spec["checkpoint"], prefix, Path(spec["to"]), model_type)
    return prefix
