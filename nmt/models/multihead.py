"""Multi-head scaled dot-product attention (Vaswani et al. 2017), the Transformer's one attention module.

``MultiHeadAttention`` holds only the projections; keys and values are projected once by
``project_kv`` and kept by the caller (the decoder state caches them), so the module is stateless.
The core operation is :func:`nmt.attention.attend` or torch's fused kernel (:func:`fused_attention`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from nmt.attention import attend, attend_per_source, mix_sources

# On CUDA, the cuDNN SDPA kernel builds (and caches, in host memory) a graph for every new
# (B, H, T, S) shape: with length-bucketed NMT batches, whose shapes rarely repeat, bf16 training
# ran 6-15x slower than fp32 and host memory grew without bound on an H100. The flash and
# memory-efficient kernels have no per-shape set-up, so cuDNN is left out (bench/sdpa_shapes.py).
_CUDA_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float) -> Tensor:
    """``softmax(q k^T / sqrt(Dh) + mask) v`` by a fused kernel. q ``(B, H, T, Dh)``, k/v ``(B, H, S, Dh)``,
    mask bool broadcastable to ``(B, H, T, S)`` (True = attend). Returns ``(B, H, T, Dh)``."""
    if q.is_cuda:
        with sdpa_kernel(_CUDA_SDPA):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    if q.dtype != torch.float32:  # CPU bf16: its fused backward took 50-61 ms against 21-26 in fp32 (B 100, H 4, T 30)
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """``(B, T, D)`` -> ``(B, H, T, D/H)``."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, T, Dh)`` -> ``(B, T, H*Dh)``."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with H heads: ``softmax(Q K^T / sqrt(d_h)) V`` per head.

    The module holds only parameters; keys and values are projected by :meth:`project_kv` and
    kept by the caller (the decoder state caches them). Uses torch's fused
    ``scaled_dot_product_attention`` unless the weights are asked for (then the same math runs
    through :func:`nmt.attention.attend` and the per-head weights come back) or it is one query
    per sentence on a CPU (a decoding step), where the two plain matmuls of ``attend`` are faster.

    ``sources = N > 1`` with ``hierarchical``: the keys are N source segments side by side
    (:mod:`nmt.multisource`), and each head attends within each source, then over the N contexts
    (:meth:`over_sources`; Libovický & Helcl 2017).
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, sources: int = 1, hierarchical: bool = False):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.heads, self.dropout, self.sources = heads, dropout, sources
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.beta_proj = nn.Linear(d_model, d_model, bias=False) if hierarchical and sources > 1 else None

    def over_sources(self, q: Tensor, scores: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Hierarchical attention over N sources, per head: ``a^n_t = softmax_s`` of the scores
        within source n, contexts ``c^n_t = sum_s a^n_ts v_s``, then
        ``beta_tn = softmax_n(q_t . W_beta c^n_t / sqrt(Dh))`` (W_beta acts on the heads' contexts
        together), over the sources with content: a source that is its EOS alone (missing) gets
        beta = 0. q ``(B, H, T, Dh)``, scores ``(B, H, T, S)``, v ``(B, H, S, Dh)``, mask ``(B, S)``
        -> the context ``sum_n beta_tn c^n_t`` ``(B, H, T, Dh)`` and the weights ``beta_tn a^n_ts``
        ``(B, H, T, S)``, each row summing to 1 (0 where every source is missing)."""
        n = self.sources
        contexts, per_source = attend_per_source(scores, v, mask, n)  # (B, H, N, T, Dh), (B, H, N, T, S')
        b, h, _, t, dh = contexts.shape
        merged = contexts.permute(0, 2, 3, 1, 4).reshape(b, n, t, h * dh)  # (B, N, T, D)
        keys = self.beta_proj(merged).view(b, n, t, h, dh).permute(0, 3, 1, 2, 4)  # (B, H, N, T, Dh)
        beta_scores = (keys * q.unsqueeze(2)).sum(-1).transpose(-1, -2) / math.sqrt(dh)  # (B, H, T, N)
        # a source with content: more than its EOS (an empty field, a missing source or a previous
        # sentence that does not exist, is EOS alone and gets beta = 0)
        present = None if mask is None else mask.view(b, 1, 1, n, -1).sum(-1) > 1  # (B, 1, 1, N)
        weights, beta = mix_sources(per_source, beta_scores, present)  # (B, H, T, S), (B, H, T, N)
        return (beta.transpose(-1, -2).unsqueeze(-1) * contexts).sum(2), weights  # (B, H, T, Dh)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, S, D)`` -> keys, values, each ``(B, H, S, D/H)``."""
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(
        self,
        x: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from queries ``x (B, T, D)`` to cached keys/values ``(B', H, S, Dh)``.

        ``B' = B``, or ``B / g`` when g consecutive query rows (the beams of a sentence) share one
        row of keys, values and ``mask``: their queries are then stacked as ``g * T`` queries of that
        row, one ``(g*T, S)`` product per row instead of g ``(T, S)`` ones over g copies.

        ``mask``: bool ``(B, S)`` key mask, True = real. ``causal``: query t sees keys <= t
        (training-time decoder self-attention; needs T == S). Returns ``(B, T, D)`` and, if
        ``need_weights``, the weights ``(B, H, T, S)``.
        """
        q = split_heads(self.q_proj(x), self.heads)  # (B, H, T, Dh)
        b, h, t, dh = q.shape
        if k.shape[0] == 0 or b % k.shape[0]:
            raise ValueError(f"{b} query rows cannot share {k.shape[0]} rows of keys/values")
        g = b // k.shape[0]  # > 1: the g query rows of each beam share one row of keys/values
        if g > 1:
            q = q.view(-1, g, h, t, dh).transpose(1, 2).reshape(-1, h, g * t, dh)  # (B/g, H, g*T, Dh)
        p = self.dropout if self.training else 0.0
        key_mask = mask  # (B, S)
        if mask is not None:
            mask = mask[:, None, None, :]  # (B, 1, 1, S)
        if causal:  # (training-time self-attention: g == 1)
            tq, sk = q.shape[2], k.shape[2]
            future = torch.ones(tq, sk, dtype=torch.bool, device=x.device).tril(sk - tq)
            mask = future if mask is None else mask & future
        # One query per sentence on a CPU (a decoding step): two small matmuls beat the fused
        # kernel's per-call set-up.
        if self.beta_proj is not None:  # over several sources: always the explicit path
            out, weights = self.over_sources(q, q @ k.transpose(-1, -2) / math.sqrt(dh), v, key_mask)
            if p:  # dropout on the weights over all positions: the context again from them
                out = F.dropout(weights, p) @ v
        elif not need_weights and (q.is_cuda or t > 1):
            out, weights = fused_attention(q, k, v, mask, p), None
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (B, H, T, S)
            out, weights = attend(scores, v, mask)
            if p:
                out = F.dropout(weights, p) @ v
        if g > 1:  # back to one row per query: (B/g, H, g*T, .) -> (B, H, T, .)
            out = out.view(-1, h, g, t, dh).transpose(1, 2).reshape(b, h, t, dh)
            if need_weights:
                weights = weights.view(-1, h, g, t, weights.shape[-1]).transpose(1, 2).reshape(b, h, t, -1)
        return self.out_proj(merge_heads(out)), weights if need_weights else None
