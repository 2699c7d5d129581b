"""Monotonic attention (Raffel et al. 2017) and its chunkwise extension MoChA (Chiu & Raffel 2018).

At each output step the decoder scans the source left to right from where it stopped last time and
stops at the first position whose "choose" probability ``p_ts = sigmoid(e_ts)`` is >= 0.5; it
attends to that position only (or to nothing if it never stops). The attended position never moves
backwards, which suits near-monotone pairs (transliteration, speech, similar word order) and not
pairs with long reorderings.

Training cannot backpropagate through that discrete scan, so it uses the *expected* alignment:

    alpha_ts = p_ts * sum_{k<=s} alpha_{t-1,k} * prod_{l=k}^{s-1} (1 - p_tl)

computed in parallel over s with cumulative products and sums (Raffel et al. 2017, eq. 14):

    alpha_t = p_t * cumprod_excl(1 - p_t) * cumsum(alpha_{t-1} / cumprod_excl(1 - p_t))

MoChA then spreads each stopping position s over a chunk of the w positions ending at s with a
softmax of chunk energies u: ``beta_tj = sum_{k=j}^{j+w-1} alpha_tk exp(u_tj) / sum_{l=k-w+1}^{k} exp(u_tl)``.
Shapes: (B, N, S) = batch, heads, source positions; masks True = real position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def exclusive_cumprod(x: Tensor) -> Tensor:
    """``out_s = prod_{l<s} x_l`` along the last axis (out_0 = 1)."""
    return torch.cumprod(torch.cat([torch.ones_like(x[..., :1]), x[..., :-1]], -1), -1)


def expected_alignment(p: Tensor, prev: Tensor, mask: Tensor) -> Tensor:
    """The parallel expected alignment. p, prev ``(B, N, S)``, mask ``(B, S)`` -> alpha ``(B, N, S)``."""
    p = p * mask[:, None]
    cp = exclusive_cumprod(1 - p)
    return p * cp * torch.cumsum(prev / cp.clamp(min=1e-10), -1)


def expected_alignment_recursive(p: Tensor, prev: Tensor, mask: Tensor) -> Tensor:
    """The same by the recursion ``q_s = (1 - p_{s-1}) q_{s-1} + alpha_{t-1,s}``, ``alpha_s = p_s q_s``
    (Raffel et al. 2017, eqs. 10-11); a slow reference for tests."""
    p = p * mask[:, None]
    q = torch.zeros_like(p[..., 0])
    out = []
    for s in range(p.shape[-1]):
        q = (1 - p[..., s - 1]) * q + prev[..., s] if s else prev[..., 0]
        out.append(p[..., s] * q)
    return torch.stack(out, -1)


def hard_alignment(p: Tensor, position: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Test-time scan: from ``position`` ``(B, N)`` on, stop at the first real s with p >= 0.5.

    Returns the one-hot alignment ``(B, N, S)`` (all zeros where it never stops) and the new position
    (unchanged where it never stops), so positions never decrease.
    """
    s = p.shape[-1]
    idx = torch.arange(s, device=p.device)
    stop = (p >= 0.5) & mask[:, None] & (idx >= position[..., None])  # (B, N, S)
    found = stop.any(-1)
    first = torch.where(stop, idx, s).min(-1).values.clamp(max=s - 1)  # (B, N)
    alpha = F.one_hot(first, s).to(p.dtype) * found[..., None]
    return alpha, torch.where(found, first, position)


def _moving_sum(x: Tensor, back: int, forward: int) -> Tensor:
    """``out_s = sum_{l = s - back}^{s + forward} x_l`` along the last axis (zeros outside)."""
    b, n, s = x.shape
    padded = F.pad(x.reshape(b * n, 1, s), (back, forward))
    return F.conv1d(padded, x.new_ones(1, 1, back + forward + 1)).view(b, n, s)


def chunkwise(alpha: Tensor, energies: Tensor, mask: Tensor, width: int) -> Tensor:
    """MoChA: spread alpha ``(B, N, S)`` over chunks of ``width`` positions with softmax(energies)."""
    u = energies.masked_fill(~mask[:, None], -1e4)
    exp_u = torch.exp(u - u.max(-1, keepdim=True).values) * mask[:, None]
    denom = _moving_sum(exp_u, width - 1, 0).clamp(min=1e-10)
    return exp_u * _moving_sum(alpha / denom, 0, width - 1)
