"""The audit's fix for a wrapped checkpoint, done: a copy with the prefix stripped.

A full BLIP-2 checkpoint keeps its OPT under ``language_model.``; loaded as
``OPTForCausalLM``, none of its names match and every weight is newly initialized
(``checkpoint.wrapped``). The fix the audit names is what a user does by hand: keep the
tensors under the prefix, strip it from their names, and save them with the config of
the model they belong to (BLIP-2's ``text_config``) as a checkpoint of their own, in
safetensors, that ``from_pretrained`` reads like any other.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nansearch.audit.checkpoint._loaded import NESTED_CONFIGS
from nansearch.audit.checkpoint.keys import _wrapping
from nansearch.config import NansearchError
from nansearch.targets._base import Loaded
from nansearch.targets.loading import (
    resolve_checkpoint,
    stored_config,
    stored_tensors,
    weight_files,
)


def wrapped_prefix(loaded: Loaded, checkpoint: str) -> str | None:
    """The prefix the audit would tell the user to strip from ``checkpoint``'s keys, or
    None when its missing weights are not there under a prefix."""
    path = resolve_checkpoint(checkpoint)
    stored = stored_tensors(path) if Path(path).exists() else None
    if not loaded.missing_keys or not stored:
        return None
    wrapping = _wrapping(set(loaded.missing_keys), set(stored))
    return wrapping[1] if wrapping and wrapping[0] == "strip" else None


def _read(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def own_config(config: dict, model_type: str | None) -> dict:
    """The config of the model under the prefix: the nested one of the class's own kind
    (BLIP-2's ``text_config`` for OPT), else the checkpoint's own."""
    for key in NESTED_CONFIGS:
        sub = config.get(key)
        if isinstance(sub, dict) and (model_type is None or sub.get("model_type") == model_type):
            return dict(sub)
    return dict(config)


def strip_prefix(checkpoint: str, prefix: str, dest: Path, model_type: str | None) -> Path:
    """Write ``checkpoint``'s tensors under ``prefix``, renamed without it, and the config
    of the model they belong to, to the folder ``dest``; returns ``dest``."""
    source = Path(resolve_checkpoint(checkpoint))
    files = weight_files(source) if source.is_dir() else [source] if source.is_file() else []
    if not files:
        raise NansearchError(f"{checkpoint}: no local weight file to strip '{prefix}' from")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(
            {k.removeprefix(prefix): v for k, v in _read(file).items() if k.startswith(prefix)}
        )
    if not state:
        raise NansearchError(f"{checkpoint}: no tensor under '{prefix}'")
    config = own_config(stored_config(source) or {}, model_type) if source.is_dir() else {}
    dest.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    # tensors that share storage in the file are saved as copies, as safetensors needs
    tensors = {k: v.contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    if config:
        (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dest
