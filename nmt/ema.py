"""Exponential moving average of the weights (Polyak & Juditsky 1992): ``train.ema``.

After every update, ``avg <- decay * avg + (1 - decay) * theta``. The average is what validation
scores and what best.pt/last.pt hold as their weights; the raw weights that training goes on
from are kept in the training state. Marian calls it exponential smoothing (on in its Transformer
presets), OpenNMT-py ``average_decay``, fairseq ``--ema-decay``.

The decay warms up as in TensorFlow's ``ExponentialMovingAverage(num_updates=...)``:
``min(decay, (1 + step) / (10 + step))``, so the average forgets the random initialisation early
on (0.18 after update 1, 0.9 after update 80) and averages over about the last ``step / 9``
updates until ``decay`` takes over (from step ``(10 decay - 1) / (1 - decay)``: 8,990 for 0.999).
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(step: int, decay: float) -> float:
    """The decay applied after update ``step`` (counted from 1): ``min(decay, (1 + step) / (10 + step))``."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * model`` for every floating-point parameter and
    buffer; other buffers (counters) are copied. Both modules have the same structure, tied
    parameters included (a tied matrix is one parameter, updated once)."""
    pairs = [*zip(average.parameters(), model.parameters()), *zip(average.buffers(), model.buffers())]
    floats = [(a, m) for a, m in pairs if a.is_floating_point()]
    if floats:
        torch._foreach_lerp_([a for a, _ in floats], [m.detach() for _, m in floats], 1.0 - decay)
    for a, m in pairs:
        if not a.is_floating_point():
            a.copy_(m)
