"""Learning-rate schedules as pure functions of the update number (1-based)."""

from __future__ import annotations

import math


def inverse_sqrt(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` updates, then ``peak * sqrt(warmup / step)``
    (fairseq's inverse_sqrt)."""
    step = max(step, 1)
    if step < warmup:
        return peak * step / warmup
    return peak * math.sqrt(warmup / step)


def noam(step: int, peak: float, warmup: int, d_model: int = 512) -> float:
    """Vaswani et al. 2017: ``d^-0.5 * min(step^-0.5, step * warmup^-1.5)``, rescaled so its
    maximum (at ``step = warmup``) equals ``peak``. Same shape as :func:`inverse_sqrt`."""
    step = max(step, 1)
    raw = d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
    return peak * raw / (d_model**-0.5 * warmup**-0.5)


def constant(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then constant."""
    return peak * min(1.0, max(step, 1) / max(warmup, 1))


SCHEDULES = {"inverse_sqrt": inverse_sqrt, "noam": noam, "constant": constant, "plateau": constant}
