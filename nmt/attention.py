"""Attention: one pure function that masks, normalises and mixes, plus the score functions.

Every attention in the toolkit follows the same three steps (Bahdanau et al. 2015, Luong et al. 2015):

    e_ts  = score(q_t, k_s)                      # how well query t matches key s
    a_ts  = softmax_s(e_ts)  over unmasked s     # the attention weights, each row sums to 1
    c_t   = sum_s a_ts v_s                       # the context: a weighted sum of the values

Keys and values may differ (``K != V``, ``D_k != D_v`` allowed). The score functions below differ
only in ``score``; :func:`attend` does the rest. Keys are projected once per source sentence by
``prepare_keys`` and the result is kept by the caller (in the decoder state), never on the module.

Mask convention everywhere in this package: a boolean tensor, ``True`` = a real position that
may be attended, ``False`` = padding (or the future, for causal masks).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def attend(scores: Tensor, values: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Masked softmax over the last axis of ``scores``, then the weighted sum of ``values``.

    Args:
        scores: ``(..., T, S)`` unnormalised scores, T queries against S keys.
        values: ``(..., S, Dv)`` one value vector per key.
        mask: boolean, broadcastable to ``scores``; ``True`` = may attend. A ``(B, S)`` key mask
            is broadcast over the query axis (and any head axis) automatically.

    Returns:
        context ``(..., T, Dv)`` and weights ``(..., T, S)``. Masked positions get exactly 0;
        a row whose keys are all masked (an empty source) gets all-zero weights, never NaN.
    """
    if mask is not None:
        if mask.dim() == 2 and scores.dim() > 2:  # (B, S) key mask -> (B, 1.., 1, S)
            mask = mask.view(mask.shape[0], *([1] * (scores.dim() - 2)), mask.shape[1])
        scores = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
        weights = torch.softmax(scores, dim=-1) * mask  # fully masked rows -> 0, not NaN
    else:
        weights = torch.softmax(scores.float(), dim=-1)
    weights = weights.to(values.dtype)
    return weights @ values, weights  # (..., T, Dv), (..., T, S)


class DotScore(nn.Module):
    """Dot product (Luong et al. 2015, "dot"): ``score(q, k) = q . k``. Needs ``D_q == D_k``."""

    def __init__(self, query_dim: int, key_dim: int, hidden: int | None = None):
        super().__init__()
        if query_dim != key_dim:
            raise ValueError(
                f"dot score needs query and key of the same size, got {query_dim} and {key_dim}; "
                "use 'general' or 'mlp' for different sizes"
            )

    def prepare_keys(self, keys: Tensor) -> Tensor:
        """``(B, S, Dk)`` -> ``(B, S, Dk)``: nothing to precompute."""
        return keys

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        """query ``(B, T, Dq)``, prepared keys ``(B, S, Dk)`` -> scores ``(B, T, S)``."""
        return query @ keys.transpose(-1, -2)


class ScaledDotScore(DotScore):
    """Scaled dot product (Vaswani et al. 2017): ``score(q, k) = q . k / sqrt(D_k)``.

    If q and k have i.i.d. unit-variance components, q . k has variance D_k; dividing by sqrt(D_k)
    keeps the softmax out of saturation as the dimension grows.
    """

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        return query @ keys.transpose(-1, -2) / math.sqrt(keys.shape[-1])


class GeneralScore(nn.Module):
    """Bilinear (Luong et al. 2015, "general"): ``score(q, k) = q^T W k``.

    ``W k`` is computed once per sentence in :meth:`prepare_keys`, so each step costs one dot product.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden: int | None = None):
        super().__init__()
        self.W = nn.Linear(key_dim, query_dim, bias=False)

    def prepare_keys(self, keys: Tensor) -> Tensor:
        """``(B, S, Dk)`` -> ``W k``: ``(B, S, Dq)``."""
        return self.W(keys)

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        return query @ keys.transpose(-1, -2)  # (B, T, S)


class MLPScore(nn.Module):
    """Additive / MLP (Bahdanau et al. 2015): ``score(q, k) = v^T tanh(W q + U k)``.

    ``U k`` is computed once per sentence in :meth:`prepare_keys`; ``extra`` lets a caller add a
    further term inside the tanh (e.g. a coverage feature) without changing this class.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or query_dim
        self.W = nn.Linear(query_dim, hidden, bias=False)
        self.U = nn.Linear(key_dim, hidden, bias=True)
        self.v = nn.Linear(hidden, 1, bias=False)

    def prepare_keys(self, keys: Tensor) -> Tensor:
        """``(B, S, Dk)`` -> ``U k``: ``(B, S, hidden)``."""
        return self.U(keys)

    def forward(self, query: Tensor, keys: Tensor, extra: Tensor | None = None) -> Tensor:
        h = self.W(query).unsqueeze(2) + keys.unsqueeze(1)  # (B, T, S, hidden)
        if extra is not None:
            h = h + extra
        return self.v(torch.tanh(h)).squeeze(-1)  # (B, T, S)


SCORES: dict[str, type[nn.Module]] = {
    "dot": DotScore,
    "general": GeneralScore,
    "mlp": MLPScore,
    "scaled_dot": ScaledDotScore,
}


def make_score(name: str, query_dim: int, key_dim: int, hidden: int | None = None) -> nn.Module:
    """Build a score function by name; an unknown name fails with the valid ones."""
    if name not in SCORES:
        raise ValueError(f"unknown attention score {name!r}; valid: {', '.join(SCORES)}")
    return SCORES[name](query_dim, key_dim, hidden)


class RecurrentAttention(nn.Module):
    """Attention of a recurrent decoder over the encoder states, with N heads and optional K != V.

    heads = 1: keys are the encoder states as they are (prepared by the score function once per
    sentence), values are the encoder states too, or ``W_v h`` when ``separate_values``.
    heads = N > 1: each head i has its own projections ``q_i = W_q^i q``, ``k_i = W_k^i h`` and
    (with ``separate_values``) ``v_i = W_v^i h`` (else ``v_i = k_i``), its own score function of size
    D/N; the N contexts are concatenated and projected by ``W_o`` (Vaswani et al. 2017, applied to an
    RNN decoder as in tensor2tensor's ``lstm`` with ``num_heads``).

    The module only holds parameters: :meth:`prepare` returns the per-sentence tensors, which the
    caller keeps in its (batch-first) decoder state; :meth:`forward` is one attention step.
    """

    def __init__(self, score: str, query_dim: int, key_dim: int, heads: int = 1, separate_values: bool = False,
                 hidden: int | None = None, features: int = 0):
        super().__init__()
        if heads > 1 and (query_dim % heads or key_dim % heads):
            raise ValueError(f"heads ({heads}) must divide the query ({query_dim}) and key ({key_dim}) sizes")
        self.heads, self.separate_values = heads, separate_values
        d_head = key_dim // heads
        q_head = query_dim // heads if heads > 1 else query_dim
        self.q_proj = nn.Linear(query_dim, heads * d_head, bias=False) if heads > 1 else None
        self.k_proj = nn.Linear(key_dim, heads * d_head, bias=False) if heads > 1 else None
        self.v_proj = nn.Linear(key_dim, key_dim, bias=False) if separate_values else None
        self.out_proj = nn.Linear(key_dim, key_dim, bias=False) if heads > 1 else None
        q_dim = d_head if heads > 1 else q_head
        self.scores = nn.ModuleList(make_score(score, q_dim, d_head, hidden and hidden // heads) for _ in range(heads))
        # per-position features (coverage, location): inside the tanh for mlp, a learned bias otherwise
        self.additive = score == "mlp"
        width = (hidden // heads if hidden else q_dim) if self.additive else 1
        self.feature_proj = nn.ModuleList(nn.Linear(features, width, bias=False) for _ in range(heads)) if features else None
        self.out_dim = key_dim

    def prepare(self, memory: Tensor) -> dict[str, Tensor]:
        """memory ``(B, S, Dk)`` -> ``{"att_k{i}": prepared keys, "att_v": (B, N, S, Dk/N)}``."""
        b, s, d = memory.shape
        keys = self.k_proj(memory) if self.k_proj is not None else memory
        values = self.v_proj(memory) if self.v_proj is not None else keys
        keys = keys.view(b, s, self.heads, -1)  # (B, S, N, Dh)
        out = {f"att_k{i}": score.prepare_keys(keys[:, :, i]) for i, score in enumerate(self.scores)}
        out["att_v"] = values.view(b, s, self.heads, -1).transpose(1, 2)  # (B, N, S, Dh)
        return out

    def _head_scores(self, i: int, q: Tensor, keys: Tensor, features: Tensor | None) -> Tensor:
        """Scores of head i: q ``(B, 1, Dq)`` -> ``(B, 1, S)``; features ``(B, N, S, F)``."""
        score = self.scores[i]
        if features is None:
            return score(q, keys)
        f = self.feature_proj[i](features[:, i])  # (B, S, hidden) or (B, S, 1)
        if self.additive:
            return score(q, keys, extra=f[:, None])  # v^T tanh(W q + U k + W_f f)
        return score(q, keys) + f.transpose(1, 2)  # score + w_f . f

    def raw_scores(self, query: Tensor, prepared: dict[str, Tensor], features: Tensor | None = None) -> Tensor:
        """Unnormalised scores of every head: query ``(B, Dq)`` -> ``(B, N, 1, S)``."""
        b = query.shape[0]
        q = self.q_proj(query) if self.q_proj is not None else query
        q = q.view(b, self.heads, 1, -1)  # (B, N, 1, Dqh)
        return torch.stack([self._head_scores(i, q[:, i], prepared[f"att_k{i}"], features)
                            for i in range(self.heads)], 1)  # (B, N, 1, S)

    def mix(self, weights: Tensor, prepared: dict[str, Tensor]) -> Tensor:
        """Weights ``(B, N, S)`` -> context ``(B, Dk)``: per head sum_s w_s v_s, concatenated (and projected)."""
        context = (weights[:, :, None] @ prepared["att_v"]).reshape(weights.shape[0], -1)  # (B, N*Dh)
        return self.out_proj(context) if self.out_proj is not None else context

    def forward(self, query: Tensor, prepared: dict[str, Tensor], mask: Tensor, features: Tensor | None = None,
                window: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """query ``(B, Dq)`` -> context ``(B, Dk)`` and weights ``(B, N, S)``.

        features ``(B, N, S, F)``: per-position features entering each head's score (coverage,
        location). window: ``(mask (B, N, S), factor (B, N, S))`` restricts the softmax to a window
        and multiplies the weights by ``factor`` (local attention, Luong et al. 2015).
        """
        scores = self.raw_scores(query, prepared, features)  # (B, N, 1, S)
        if window is None:
            context, weights = attend(scores, prepared["att_v"], mask)  # (B, N, 1, Dh), (B, N, 1, S)
            context = context.reshape(query.shape[0], -1)  # (B, N*Dh)
            return (self.out_proj(context) if self.out_proj is not None else context), weights[:, :, 0]
        _, weights = attend(scores, prepared["att_v"], (mask[:, None] & window[0])[:, :, None])
        weights = weights[:, :, 0] * window[1]  # (B, N, S)
        return self.mix(weights, prepared), weights


# -- multiple sources (nmt.multisource): the keys are N source segments side by side ---------------


def attend_per_source(scores: Tensor, values: Tensor, mask: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
    """:func:`attend` within each of ``n`` source segments: one softmax per source.

    Args:
        scores: ``(..., T, N*S')``, the keys being N segments of S' positions side by side.
        values: ``(..., N*S', Dv)``.
        mask: bool ``(B, N*S')`` key mask (True = real), or None.

    Returns:
        per-source contexts ``c^n_t = sum_s a^n_ts v_s`` ``(..., N, T, Dv)`` and weights
        ``(..., N, T, S')``; each source's row sums to 1 (0 for a source with no real position).
    """
    *lead, t, s = scores.shape
    w = s // n
    per_source = scores.reshape(*lead, t, n, w).transpose(-3, -2)  # (..., N, T, S')
    v = values.reshape(*lead, n, w, values.shape[-1])  # (..., N, S', Dv)
    if mask is not None:  # (B, N*S') -> (B, 1.., N, 1, S')
        mask = mask.reshape(mask.shape[0], *([1] * (len(lead) - 1)), n, 1, w)
    return attend(per_source, v, mask)


def side_by_side(weights: Tensor) -> Tensor:
    """Per-source weights ``(..., N, T, S')`` -> ``(..., T, N*S')``, in the keys' layout."""
    return weights.transpose(-3, -2).flatten(-2)


def mix_sources(weights: Tensor, beta_scores: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Hierarchical combination (Libovický & Helcl 2017): a second attention over the sources.

        beta_t = softmax_n(e_tn),  c_t = sum_n beta_tn c^n_t = sum_n sum_s beta_tn a^n_ts v_s

    so the context is one weighted sum over all positions with weights ``beta_tn a^n_ts``.

    Args:
        weights: per-source weights ``a^n`` ``(..., N, T, S')`` (:func:`attend_per_source`).
        beta_scores: ``e`` ``(..., T, N)``, how well query t matches source n's context.
        present: bool, broadcastable to ``beta_scores``: False = a source without content (no
            real position, or its EOS alone: it gets beta = 0), or None.

    Returns:
        the weights over all positions ``(..., T, N*S')`` (each row sums to 1), and beta ``(..., T, N)``.
    """
    scores = beta_scores.float()
    if present is not None:
        scores = scores.masked_fill(~present, torch.finfo(torch.float32).min)
    beta = torch.softmax(scores, dim=-1)  # (..., T, N)
    beta = (beta if present is None else beta * present).to(weights.dtype)
    return side_by_side(weights * beta.transpose(-1, -2).unsqueeze(-1)), beta
