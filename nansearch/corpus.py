"""The demo's training data: token ids from a small learnable corpus.

A data helper with no nansearch imports, so the demo checkpoints and the targets that
train on it both take it from here without importing each other.
"""

from __future__ import annotations

import torch


def corpus_batch(
    generator: torch.Generator, batch_size: int, seq_len: int, vocab: int, offset: int = 4
) -> torch.Tensor:
    """Token ids from a small learnable corpus: arithmetic progressions over 256 ids.

    Ids start at ``offset`` (below it sit the special tokens) and stay under
    ``offset + 256``, so a larger vocabulary keeps rows that the corpus never trains,
    as real checkpoints do.
    """
    span = max(2, min(256, vocab - offset))
    start = torch.randint(0, span, (batch_size, 1), generator=generator)
    stride = torch.randint(1, 8, (batch_size, 1), generator=generator)
    position = torch.arange(seq_len).unsqueeze(0)
    return offset + (start + stride * position) % span
