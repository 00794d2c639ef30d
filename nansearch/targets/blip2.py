"""A BLIP-2 style image+text model, trained on a VQA-style batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Blip2ForConditionalGeneration

from nansearch.config.schema import TargetConfig
from nansearch.corpus import corpus_batch
from nansearch.targets._base import Loaded, Target
from nansearch.targets.loading import from_pretrained


class Blip2Target(Target):
    name = "blip2"

    def __init__(self, cfg: TargetConfig):
        self.cfg = cfg

    def load(self, checkpoint: str) -> Loaded:
        kwargs: dict[str, Any] = {"dtype": torch.float32}
        if self.cfg.attn_implementation:
            kwargs["attn_implementation"] = self.cfg.attn_implementation
        model, info = from_pretrained(Blip2ForConditionalGeneration, checkpoint, **kwargs)
        return Loaded.from_info(model, checkpoint, info)

    def make_batch(
        self, model: nn.Module, generator: torch.Generator, seq_len: int | None = None
    ) -> dict[str, torch.Tensor]:
        config: Any = model.config  # a PretrainedConfig; nn.Module types attributes as tensors
        vision = config.vision_config
        size = vision.image_size
        pixels = torch.randn(self.cfg.batch_size, 3, size, size, generator=generator)
        vocab = self.vocab_size(model) or 260
        # question and answer tokens after the image's query tokens
        ids = corpus_batch(generator, self.cfg.batch_size, seq_len or self.cfg.seq_len, vocab)
        image_token = getattr(config, "image_token_id", None) or getattr(
            config, "image_token_index", None
        )
        n_query = config.num_query_tokens
        if image_token is not None:
            prefix = torch.full((ids.shape[0], n_query), image_token, dtype=ids.dtype)
            ids = torch.cat([prefix, ids], dim=1)
        labels = ids.clone()
        if image_token is not None:
            labels[:, :n_query] = -100
        return {
            "pixel_values": pixels,
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": labels,
        }

    def lengthen(self, model, batch, length, generator):
        # the image's query tokens take their share of the language model's positions
        return self.make_batch(model, generator, seq_len=length - model.config.num_query_tokens)
