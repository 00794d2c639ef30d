"""Small transformers models the tests build and save as checkpoints: one layer, 32 wide."""

from __future__ import annotations

import torch
from transformers import BertConfig, OPTConfig, OPTForCausalLM

SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 64,
}


def small_opt() -> OPTForCausalLM:
    """A one-layer OPT of 300 tokens, its weights drawn from seed 0 without touching
    torch's global random state."""
    config = OPTConfig(vocab_size=300, ffn_dim=64, word_embed_proj_dim=32, **SMALL)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return OPTForCausalLM(config)


def small_bert_config(**extra: object) -> BertConfig:
    """A one-layer BERT of 128 tokens; ``extra`` sets more of its config."""
    return BertConfig(vocab_size=128, intermediate_size=64, **SMALL, **extra)
