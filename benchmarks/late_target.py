"""A target whose NaN comes late: a small token MLP with residual blocks and no normalization.

``benchmarks/warning.py`` trains it with nansearch's own runner. Without a norm, nothing
holds the residual stream back: on its one fixed batch the loss keeps pushing the
margins up, the weights grow with every optimizer step and the logits with them, until
under float16 they pass 65504 (a slowly growing residual); plain SGD a little above its
stable learning rate oscillates with a growing amplitude until it overflows (SGD near
its edge). Both are real training dynamics, nothing is written into a tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualMLP(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 32, blocks: int = 2, out: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
            for _ in range(blocks)
        )
        self.head = nn.Linear(dim, out)

    def forward(self, input_ids, attention_mask=None, labels=None, targets=None):
        x = self.tok(input_ids)
        for block in self.blocks:
            x = x + block(x)  # no norm: the residual stream is free to grow
        logits = self.head(x)
        loss = None
        if targets is not None:  # regression toward unnormalized targets
            loss = F.mse_loss(logits.float(), targets)
        elif labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1)
            )
        return {"logits": logits, "loss": loss}


def build(checkpoint: str, options: dict) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A fresh seeded model and one fixed batch of random tokens."""
    seed = int(options.get("seed", 0))
    scale = float(options.get("target_scale", 0))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ResidualMLP(blocks=int(options.get("blocks", 2)), out=4 if scale else 64)
    ids = torch.randint(0, 64, (int(options.get("batch_size", 8)), 16), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if scale:  # targets in the units a user's data came in, never normalized
        batch["targets"] = scale * torch.rand(ids.shape[0], 16, 4, generator=generator)
    else:
        batch["labels"] = ids.clone()
    return model, batch
