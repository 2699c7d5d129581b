"""What a model's teacher-forced ``forward`` returns."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class ModelOutput(NamedTuple):
    """``logits (B, T, V)``; ``attention (B, L, H, T, S)`` when asked (else None); ``aux_loss``: a
    scalar on the scale of a summed token NLL that training adds to the loss (a mechanism's own
    objective, e.g. the REINFORCE surrogate of hard attention), None when the model has none."""

    logits: Tensor
    attention: Tensor | None = None
    aux_loss: Tensor | None = None
