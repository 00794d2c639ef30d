"""A Hugging Face causal language model, loaded the way the user's code loads it."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from nansearch.config.schema import TargetConfig
from nansearch.corpus import corpus_batch
from nansearch.errors import NansearchError
from nansearch.targets._base import Loaded, Target
from nansearch.targets.loading import from_pretrained


def model_class(name: str):
    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise NansearchError(
            f"target.model_class={name!r}: not a transformers model class "
            "(for example AutoModelForCausalLM or OPTForCausalLM)"
        )
    return cls


class CausalLMTarget(Target):
    name = "causal-lm"

    def __init__(self, cfg: TargetConfig):
        self.cfg = cfg
        self.cls = model_class(cfg.model_class)

    def load(self, checkpoint: str) -> Loaded:
        kwargs: dict[str, Any] = {"dtype": torch.float32}
        if self.cfg.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if self.cfg.attn_implementation:
            kwargs["attn_implementation"] = self.cfg.attn_implementation
        model, info = from_pretrained(self.cls, checkpoint, **kwargs)
        return Loaded.from_info(model, checkpoint, info)

    def make_batch(
        self, model: nn.Module, generator: torch.Generator, seq_len: int | None = None
    ) -> dict[str, torch.Tensor]:
        vocab = self.vocab_size(model) or 260
        ids = corpus_batch(generator, self.cfg.batch_size, seq_len or self.cfg.seq_len, vocab)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": ids.clone(),
        }

    def lengthen(self, model, batch, length, generator):
        return self.make_batch(model, generator, seq_len=length)
