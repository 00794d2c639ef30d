"""A custom target: your own model and batch, plugged into nansearch by file path.

``sweeps/custom.yaml`` names this function as ``target.fn: sweeps/custom_target.py:build``.
nansearch calls ``build(checkpoint, options)`` once per checkpoint and process, and
expects ``(model, batch)``: a float32 ``torch.nn.Module`` and a dict of tensors such that
``model(**batch)`` returns the logits (or an object or dict with ``logits`` and ``loss``).

The model here is a tiny GPT whose attention masks padding the way much hand-written
attention does: ``masked_fill(mask == 0, -inf)`` then softmax. A row that is all padding
is then all -inf, and softmax computes 0/0 = NaN (NAN_CAUSES row 6), which the
``padded-row`` batch level finds.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        allowed = causal & attention_mask[:, None, None, :].bool()
        scores = scores.masked_fill(~allowed, float("-inf"))
        y = F.softmax(scores, dim=-1) @ v
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(
        self, vocab: int = 128, dim: int = 64, layers: int = 2, heads: int = 4, positions: int = 64
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(positions, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids, attention_mask, labels=None):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok(input_ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x, attention_mask)
        logits = self.head(self.ln(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return {"logits": logits, "loss": loss}


def build(checkpoint: str, options: dict) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Load ``checkpoint`` (a .safetensors file) when it exists, else a fresh seeded model."""
    generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
    with torch.random.fork_rng():
        torch.manual_seed(int(options.get("seed", 0)))
        model = TinyGPT()
    if checkpoint != "fresh" and Path(checkpoint).is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(checkpoint))
    ids = torch.randint(0, 128, (int(options.get("batch_size", 4)), 32), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    return model, batch
