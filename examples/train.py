"""A plain training script that knows nothing of nansearch, in the style of EasyEdit's
trainers: an argparse command line, a YAML hparams file, ``from_pretrained(name,
torch_dtype=...)``, its own optimizer and loop, and a ``NAN in logits!!!`` print when it
sees one. ``sweeps/script.yaml`` searches it unchanged:

    python examples/train.py --hparams examples/train.yaml
    nansearch sweep sweeps/script.yaml
"""

from __future__ import annotations

import argparse

import torch
import transformers
import yaml


def batches(generator: torch.Generator, batch_size: int, length: int, vocab: int):
    """Token rows of a small learnable corpus: arithmetic progressions over 256 ids."""
    while True:
        start = torch.randint(0, 256, (batch_size, 1), generator=generator)
        stride = torch.randint(1, 8, (batch_size, 1), generator=generator)
        ids = 4 + (start + stride * torch.arange(length)) % min(256, vocab - 4)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hparams", required=True, help="the YAML hyperparameters file")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    with open(args.hparams) as fh:
        hparams = yaml.safe_load(fh)
    seed = hparams["seed"] if args.seed is None else args.seed
    torch.manual_seed(seed)

    cls = getattr(transformers, hparams["model_class"])
    model = cls.from_pretrained(
        hparams["name"], torch_dtype=getattr(torch, hparams["dtype"]), attn_implementation="eager"
    )
    device = torch.device(hparams["device"])
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(hparams["lr"]), weight_decay=0.0)
    amp = None if hparams["amp"] == "none" else getattr(torch, hparams["amp"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    generator = torch.Generator().manual_seed(seed)
    data = batches(generator, hparams["batch_size"], hparams["max_length"], model.config.vocab_size)

    for step in range(hparams["max_steps"]):
        batch = {k: v.to(device) for k, v in next(data).items()}
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(**batch)
        if torch.isnan(out.logits).any():
            print("NAN in logits!!!")
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step % 20 == 0:
            print(f"step {step} loss {out.loss.item():.4f}")


if __name__ == "__main__":
    main()
