"""The config audit: settings that make NaN likely before any weight is read.

| check                     | finds                                                     |
|---------------------------|-----------------------------------------------------------|
| `config.fp16-adam-eps`    | pure fp16 with an Adam-family eps that is 0 in fp16       |
| `config.fp16-no-scaler`   | pure fp16, which runs without a loss scaler               |
| `config.lr-range`         | a learning rate far outside the optimizer's usual range   |
| `config.bf16-unsupported` | bf16 asked for on a GPU without bf16                      |
| `config.factor-unused`    | a command target's script that no template or key passes a searched factor to |
"""

from __future__ import annotations

import torch

from nansearch.audit._base import Finding
from nansearch.config import SweepConfig
from nansearch.dtypes import FP16_MAX

ADAM_FAMILY = ("adam", "adamw")
# the learning rates each optimizer is usually run with, from fine-tuning to pre-training
USUAL_LR = {"adam": (1e-6, 1e-2), "adamw": (1e-6, 1e-2), "sgd": (1e-4, 1.0)}
FAR = 10.0  # "far outside": more than this factor beyond the usual range


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: every CPU torch runs on, some GPUs."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return True


def audit_config(cfg: SweepConfig, device: torch.device) -> list[Finding]:
    levels = list(cfg.factors.dtype.levels)
    return [
        *_fp16_adam_eps(cfg, levels),
        *_fp16_no_scaler(levels),
        *_lr_range(cfg),
        *_bf16_hardware(levels, _device_name(device), bf16_supported(device)),
        *_factor_unused(cfg),
    ]


# what carries each factor to a script: its own name, or a value derived from it
CARRIERS = {
    "checkpoint": ("checkpoint", "checkpoint_level"),
    "dtype": ("dtype", "param_dtype", "autocast_dtype"),
}
APPLIED_INSIDE = ("init", "batch")  # nansearch.inject applies these levels itself


def _searched(cfg: SweepConfig) -> list[str]:
    """The factors whose value changes from trial to trial."""
    counts = {
        "checkpoint": len(cfg.factors.checkpoint.levels),
        "dtype": len(cfg.factors.dtype.levels),
        "lr": 2 if cfg.factors.lr.low < cfg.factors.lr.high else 1,
        **{name: len(levels) for name, levels in cfg.factors.extra.items()},
    }
    return [name for name, count in counts.items() if count > 1]


def _factor_unused(cfg: SweepConfig) -> list[Finding]:
    """A searched factor no template or config key hands to a command target's script."""
    target = cfg.target
    if target.kind != "command":
        return []
    texts = [target.args, *target.env.values()]
    findings = []
    for name in _searched(cfg):
        carriers = CARRIERS.get(name, (name,))
        named = any(c in target.keys for c in carriers) or any(
            f"${{{c}}}" in text or f"${c}" in text for c in carriers for text in texts
        )
        if named or name in APPLIED_INSIDE:
            continue
        findings.append(
            Finding(
                severity="warning",
                check="config.factor-unused",
                subject=name,
                found=(
                    f"the sweep searches {name}, but neither target.args, target.env nor "
                    f"target.keys passes it (as {' or '.join(carriers)}) to {target.program}"
                ),
                why=(
                    f"Every level of {name} runs the same script with the same settings, so "
                    f"its NaN rate says nothing about {name}, and trials spent on it are lost."
                ),
                fix=(
                    f"Pass it: add ${{{carriers[0]}}} to target.args, or map it to the key of "
                    f"the script's config file that sets it under target.keys; or stop "
                    f"searching {name}."
                ),
            )
        )
    return findings


def _fp16_adam_eps(cfg: SweepConfig, levels: list[str]) -> list[Finding]:
    opt = cfg.optimizer
    if "fp16" not in levels or opt.name not in ADAM_FAMILY:
        return []
    in_fp16 = torch.tensor(opt.eps, dtype=torch.float16).item()
    if in_fp16 != 0:
        return []
    return [
        Finding(
            severity="error",
            check="config.fp16-adam-eps",
            subject="dtype=fp16",
            found=(
                f"optimizer.name={opt.name} with optimizer.eps={opt.eps:g} on pure fp16 weights: "
                f"the optimizer state is fp16 too, where eps rounds to {in_fp16:g} (fp16's "
                f"smallest value is {2.0**-24:.1e})"
            ),
            why=(
                "Adam divides each update by sqrt(v) + eps. Once a gradient, and so v, is 0 "
                "or underflows in fp16, that is 0/0 = NaN in the weights after the first "
                "step (NAN_CAUSES row 2; Lightning-AI/litgpt#291)."
            ),
            fix=(
                "Keep weights and optimizer state in fp32 and compute in half: amp-fp16 "
                "(with a GradScaler) or amp-bf16. If the weights must be fp16, set "
                "optimizer.eps to a value fp16 holds, such as 1e-4."
            ),
        )
    ]


def _fp16_no_scaler(levels: list[str]) -> list[Finding]:
    if "fp16" not in levels:
        return []
    return [
        Finding(
            severity="warning",
            check="config.fp16-no-scaler",
            subject="dtype=fp16",
            found="dtype level fp16 trains pure fp16 weights without a loss scaler",
            why=(
                f"Without a scaler, gradients below fp16's {2.0**-24:.1e} flush to 0 and a "
                f"gradient past {FP16_MAX:.0f} is inf; the step that follows is applied "
                "rather than skipped, and inf in the weights becomes NaN (NAN_CAUSES rows "
                "2 and 4)."
            ),
            fix=(
                "Train with amp-fp16, which keeps fp32 master weights and skips overflowing "
                "steps with torch.amp.GradScaler, or with bf16, whose range needs no scaler."
            ),
        )
    ]


def _lr_range(cfg: SweepConfig) -> list[Finding]:
    name, lr = cfg.optimizer.name, cfg.factors.lr
    low, high = USUAL_LR.get(name, USUAL_LR["adamw"])
    if lr.high > FAR * high:
        whole = lr.low > FAR * high
        return [
            Finding(
                severity="warning" if whole else "info",
                check="config.lr-range",
                subject="lr",
                found=(
                    f"factors.lr {'is' if whole else 'reaches'} {lr.low:g} to {lr.high:g} with "
                    f"{name}, whose usual range is {low:g} to {high:g}; "
                    + (
                        "every trial runs far above it"
                        if whole
                        else f"trials above {FAR * high:g} run far above it"
                    )
                ),
                why=(
                    "Steps that large make the loss diverge: activations and logits grow "
                    "until they overflow, first in fp16, and overflows repeat until a loss "
                    "scaler reaches its floor (NAN_CAUSES row 4)."
                ),
                fix=(
                    f"If your own run uses such a rate, bring it into {low:g} to {high:g}, or add "
                    "warm-up and gradient clipping. In the sweep, keep the high end only if "
                    "the learning rate is one of your suspects."
                ),
            )
        ]
    if lr.high < low / FAR:
        return [
            Finding(
                severity="info",
                check="config.lr-range",
                subject="lr",
                found=(
                    f"factors.lr is {lr.low:g} to {lr.high:g} with {name}, far below its "
                    f"usual {low:g} to {high:g}"
                ),
                why=(
                    "At such rates the weights barely move in a short trial, so a cause that "
                    "needs training to show (divergence, overflow) cannot show."
                ),
                fix=f"Search a range that overlaps {low:g} to {high:g}.",
            )
        ]
    return []


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def _bf16_hardware(levels: list[str], device: str, supported: bool) -> list[Finding]:
    if supported:
        return []
    return [
        Finding(
            severity="error",
            check="config.bf16-unsupported",
            subject=f"dtype={level}",
            found=f"dtype level {level} on {device}, which has no native bf16",
            why=(
                "Without hardware bf16 its kernels are emulated or missing: trials either "
                "fail with an error or run slowly with numerics unlike your run on bf16 "
                "hardware, so their outcome says little."
            ),
            fix=(
                "Drop bf16 and amp-bf16 from factors.dtype.levels on this GPU and use "
                "amp-fp16, or run the sweep on a GPU with bf16 (Ampere or newer)."
            ),
        )
        for level in levels
        if level in ("bf16", "amp-bf16")
    ]
