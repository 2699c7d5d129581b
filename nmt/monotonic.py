"""Monotonic attention (Raffel et al. 2017) and its chunkwise extension MoChA (Chiu & Raffel 2018).

At each output step the decoder scans the source left to right from where it stopped last time and
stops at the first position whose "choose" probability ``p_ts = sigmoid(e_ts)`` is >= 0.5; it
attends to that position only (or to nothing if it never stops). The attended position never moves
backwards, which suits near-monotone pairs (transliteration, speech, similar word order) and not
pairs with long reorderings.

Training cannot backpropagate through that discrete scan, so it uses the *expected* alignment:

    alpha_ts = p_ts * sum_{k<=s} alpha_{t-1,k} * prod_{l=k}^{s-1} (1 - p_tl)

computed in parallel over s. Raffel et al. (2017, eq. 14) divide by a cumulative product,

    alpha_t = p_t * cumprod_excl(1 - p_t) * cumsum(alpha_{t-1} / cumprod_excl(1 - p_t)),

which divides zero by zero once some p reaches 1 (sigmoid saturates at 1.0 for energies above ~17
in fp32, ~6 in bf16) and gives alpha = 0 after it. Here the products come from differences of a
cumulative sum of logs, ``prod_{l=k}^{s-1} (1 - p_l) = exp(L_s - L_k)`` with
``L_s = sum_{l<s} log(1 - p_l)``, as an ``(S, S)`` matrix per row: never a division, never above 1.

MoChA then spreads each stopping position s over a chunk of the w positions ending at s with a
softmax of chunk energies u: ``beta_tj = sum_{k=j}^{j+w-1} alpha_tk exp(u_tj) / sum_{l=k-w+1}^{k} exp(u_tl)``.
Shapes: (B, N, S) = batch, heads, source positions; masks True = real position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def expected_alignment(p: Tensor, prev: Tensor, mask: Tensor) -> Tensor:
    """The parallel expected alignment. p, prev ``(B, N, S)``, mask ``(B, S)`` -> alpha ``(B, N, S)``.

    ``alpha_s = p_s * sum_{k<=s} prev_k * exp(L_s - L_k)`` (see the module docstring); 1 - p is
    floored at 1e-30 before the log, so a product through a p of 1 is 0 up to 1e-30. Costs
    ``O(S^2)`` per row and step (the division form: ``O(S)``); computed in fp32 under autocast.
    """
    with torch.autocast(p.device.type, enabled=False):
        return _expected_alignment(p.float(), prev.float(), mask)


def _expected_alignment(p: Tensor, prev: Tensor, mask: Tensor) -> Tensor:
    p = p * mask[:, None]
    logs = torch.log((1 - p).clamp(min=1e-30))  # (B, N, S)
    cum = torch.cumsum(logs, -1) - logs  # L_s = sum_{l<s} log(1 - p_l), exclusive
    s = p.shape[-1]
    upper = torch.ones(s, s, dtype=torch.bool, device=p.device).triu()  # [k, s]: k <= s
    decay = (cum[..., None, :] - cum[..., :, None]).masked_fill(~upper, float("-inf")).exp()  # (B, N, S_k, S_s)
    return p * (prev[..., None, :] @ decay).squeeze(-2)


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
