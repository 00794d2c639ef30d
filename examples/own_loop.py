"""Your own training loop as nansearch's trial: the Python API, Optuna-style.

``sweeps/own_loop.yaml`` names ``examples/own_loop.py:train``. nansearch calls it once per
trial with a :class:`nansearch.Trial` that carries the trial's factor values (checkpoint,
dtype, learning rate, init, batch) and helpers that apply them to your objects. What a
plain transformers loop changes to run under nansearch is marked ``# nansearch``.

``train`` reports each step with ``trial.step``; ``train_watched`` keeps its loop as it was,
with its own GradScaler, and lets ``trial.watch`` observe every optimizer step.
"""

from __future__ import annotations

import torch
from transformers import OPTForCausalLM


def train(trial) -> None:
    model = trial.load(OPTForCausalLM)  # nansearch: checkpoint level, init level, dtype
    optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr, weight_decay=0.0)
    batch = trial.batch()  # nansearch: the batch level, on the trial's device
    for _ in range(trial.steps):
        optimizer.zero_grad(set_to_none=True)
        with trial.autocast():  # nansearch: autocast under amp-fp16 and amp-bf16
            out = model(**batch)
        trial.update(out.loss, optimizer)  # nansearch: backward and step (GradScaler)
        trial.step(logits=out.logits, loss=out.loss)  # nansearch: report the step


def train_watched(trial) -> None:
    model = trial.load(OPTForCausalLM)  # nansearch
    optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr, weight_decay=0.0)
    batch = trial.batch()  # nansearch
    scaler = torch.amp.GradScaler(trial.device.type, enabled=trial.scaler is not None)
    trial.watch(model, optimizer, scaler)  # nansearch: the only other change
    while True:  # nansearch ends the loop after trial.steps steps, or at the first NaN
        optimizer.zero_grad(set_to_none=True)
        with trial.autocast():
            out = model(**batch)
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
