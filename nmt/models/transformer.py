"""The Transformer (Vaswani et al. 2017), written against the model contract in ``nmt.models``.

Three attentions, as in the lecture: encoder self-attention (q, k, v from the encoder), masked decoder
self-attention (q, k, v from the decoder; the causal mask hides the answer), and encoder-decoder
attention (q from the decoder, k and v from the encoder). Each sublayer is wrapped in a residual
connection and LayerNorm, either post-norm ``LN(x + f(x))`` (the original) or pre-norm
``x + f(LN(x))`` (more stable on small data; Nguyen & Salazar 2019).

Incremental decoding keeps, per layer, the self-attention keys/values of all previous target
positions and the encoder-decoder keys/values (computed once) in the batch-first state dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.models.dropout import Dropout
from nmt.models.multihead import MultiHeadAttention
from nmt.models.output import ModelOutput, step_log_probs
from nmt.multisource import merge_rows, segments, source_index, source_rows
from nmt.vocab import PAD_ID


COMBINE = ("flat", "serial", "hierarchical", "gated")


@dataclass
class TransformerConfig:
    """Shape of a Transformer. The defaults are the 3+3-layer, d_model 256 model for Multi30k."""

    encoder_layers: int = 3  # number of encoder layers
    decoder_layers: int = 3  # number of decoder layers
    d_model: int = 256  # width of every residual stream
    heads: int = 4  # attention heads per attention (d_model must be divisible by heads)
    ff_size: int = 1024  # hidden size of the position-wise feed-forward block
    dropout: float = 0.1  # dropout on sublayer outputs and embeddings
    activation_dropout: float = 0.0  # dropout inside the feed-forward block, after the ReLU
    attention_dropout: float = 0.0  # dropout on attention weights (training only)
    pre_norm: bool = True  # True: x + f(LN(x)) (stable); False: LN(x + f(x)) (original)
    scale_embeddings: bool = True  # multiply embeddings by sqrt(d_model) before adding positions
    tie_embeddings: bool = True  # one matrix for source, target and output (joint vocabulary)
    vocab_size: int = 8000  # filled in from the SentencePiece model at training time
    sources: int = 1  # source sentences per example: filled in from the prepared data (nmt.multisource)
    # how the decoder reads several sources (Libovický et al. 2018): flat = one attention over all of them;
    # serial = one encoder-decoder attention sublayer per source, one after another; hierarchical = one
    # attention per source, then a second attention over the N contexts; gated = source 1 as usual, the
    # others hierarchically, mixed by a gate (HAN, Miculicich et al. 2018: for document context)
    combine: str = "flat"  # flat | serial | hierarchical | gated

    def __post_init__(self):
        if self.combine not in COMBINE:
            raise ValueError(f"model.combine must be one of {', '.join(COMBINE)}, got {self.combine!r}")
        sizes = ("encoder_layers", "decoder_layers", "d_model", "heads", "ff_size", "vocab_size", "sources")
        for k in sizes:
            if getattr(self, k) < 1:
                raise ValueError(f"model.{k} must be >= 1, got {getattr(self, k)!r}")
        if self.d_model % self.heads:
            raise ValueError(f"model.heads ({self.heads}) must divide model.d_model ({self.d_model})")
        for k in ("dropout", "activation_dropout", "attention_dropout"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"model.{k} must be in [0, 1), got {getattr(self, k)!r}")


def sinusoidal_positions(length: int, dim: int, start: int = 0, device=None) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) for positions ``start ..
    start + length - 1``. Returns ``(length, dim)``. Computed where it is used (a decoding step needs
    one row), so the model holds no buffer: no length limit, and nothing outside the state dict."""
    pos = torch.arange(start, start + length, dtype=torch.float32, device=device).unsqueeze(1)  # (L, 1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class FeedForward(nn.Sequential):
    """``FFN(x) = W2 dropout(relu(W1 x + b1)) + b2`` (the inner dropout is ``activation_dropout``)."""

    def __init__(self, d_model: int, ff_size: int, dropout: float):
        super().__init__(nn.Linear(d_model, ff_size), nn.ReLU(), Dropout(dropout), nn.Linear(ff_size, d_model))


class Sublayer(nn.Module):
    """Residual + LayerNorm around a sublayer, pre- or post-norm."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm, self.drop, self.pre_norm = nn.LayerNorm(d_model), Dropout(dropout), pre_norm

    def inp(self, x: Tensor) -> Tensor:
        """What the sublayer reads: ``LN(x)`` in pre-norm, ``x`` in post-norm."""
        return self.norm(x) if self.pre_norm else x

    def out(self, x: Tensor, y: Tensor) -> Tensor:
        """Combine the residual ``x`` with the sublayer output ``y``."""
        return x + self.drop(y) if self.pre_norm else self.norm(x + self.drop(y))


class EncoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.attn = MultiHeadAttention(c.d_model, c.heads, c.attention_dropout)
        self.ff = FeedForward(c.d_model, c.ff_size, c.activation_dropout)
        self.s1, self.s2 = (Sublayer(c.d_model, c.dropout, c.pre_norm) for _ in range(2))

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x ``(B, S, D)``, mask ``(B, S)`` -> ``(B, S, D)``, self-attention ``(B, H, S, S)``."""
        h = self.s1.inp(x)
        y, w = self.attn(h, *self.attn.project_kv(h), mask=mask, need_weights=need_weights)
        x = self.s1.out(x, y)
        return self.s2.out(x, self.ff(self.s2.inp(x))), w


class DecoderLayer(nn.Module):
    """Self-attention, encoder-decoder attention, feed-forward. With N > 1 sources and
    ``combine = "serial"`` the encoder-decoder sublayer is N sublayers, source 1's first, each with
    its own parameters and reading only its source's segment (Libovický et al. 2018's serial
    combination; Marian's multi-transformer): ``cross_attn``/``s2`` for source 1, ``more_cross``/
    ``more_s2`` for the others. With ``combine = "gated"`` source 1 has its own attention
    ``cross_attn`` (its context c_t) and sources 2..N a hierarchical one ``context_attn`` (d_t), mixed
    by HAN's gate (Miculicich et al. 2018) ``lambda_t = sigmoid(W_g [c_t; d_t] + b_g)``,
    ``lambda_t * c_t + (1 - lambda_t) * d_t``; lambda_t = 1 where sources 2..N are all missing."""

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(c.d_model, c.heads, c.attention_dropout)
        self.gated = c.sources if c.combine == "gated" and c.sources > 1 else 0  # the sources of a gated layer
        self.cross_attn = MultiHeadAttention(c.d_model, c.heads, c.attention_dropout, 1 if self.gated else c.sources,
                                             hierarchical=c.combine == "hierarchical")
        self.ff = FeedForward(c.d_model, c.ff_size, c.activation_dropout)
        self.s1, self.s2, self.s3 = (Sublayer(c.d_model, c.dropout, c.pre_norm) for _ in range(3))
        serial = c.combine == "serial" and c.sources > 1
        self.sources = c.sources if serial else 1  # the number of encoder-decoder sublayers
        self.more_cross = nn.ModuleList(MultiHeadAttention(c.d_model, c.heads, c.attention_dropout)
                                        for _ in range(self.sources - 1))
        self.more_s2 = nn.ModuleList(Sublayer(c.d_model, c.dropout, c.pre_norm) for _ in range(self.sources - 1))
        if self.gated:  # cross_attn reads source 1 alone, context_attn the others
            self.context_attn = MultiHeadAttention(c.d_model, c.heads, c.attention_dropout, c.sources - 1,
                                                   hierarchical=c.sources > 2)
            self.gate = nn.Linear(2 * c.d_model, c.d_model)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder-decoder keys and values of the memory ``(B, S, D)``: ``(B, H, S, Dh)`` each
        (serial: each source's segment projected by its own sublayer, laid side by side)."""
        if self.gated:  # source 1's segment by cross_attn, the others' by context_attn
            width = memory.shape[1] // self.gated
            kv = [self.cross_attn.project_kv(memory[:, :width]), self.context_attn.project_kv(memory[:, width:])]
            return torch.cat([k for k, _ in kv], dim=2), torch.cat([v for _, v in kv], dim=2)
        if self.sources == 1:
            return self.cross_attn.project_kv(memory)
        kv = [attn.project_kv(m) for attn, m in zip([self.cross_attn, *self.more_cross], segments(memory, self.sources, 1))]
        return torch.cat([k for k, _ in kv], dim=2), torch.cat([v for _, v in kv], dim=2)

    def cross(self, x: Tensor, cross_kv: tuple[Tensor, Tensor], src_mask: Tensor,
              need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """The encoder-decoder sublayer(s): x ``(B, T, D)`` -> ``(B, T, D)``, weights ``(B, H, T, S)``
        (serial: each source's weights in its segment, each row of a segment summing to 1)."""
        if self.gated:
            return self.gated_cross(x, cross_kv, src_mask, need_weights)
        if self.sources == 1:
            y, w = self.cross_attn(self.s2.inp(x), *cross_kv, mask=src_mask, need_weights=need_weights)
            return self.s2.out(x, y), w
        n, weights = self.sources, []
        parts = zip([self.cross_attn, *self.more_cross], [self.s2, *self.more_s2], segments(cross_kv[0], n, 2),
                    segments(cross_kv[1], n, 2), segments(src_mask, n, 1))
        for attn, sub, k, v, mask in parts:
            y, w = attn(sub.inp(x), k, v, mask=mask, need_weights=need_weights)
            x = sub.out(x, y)
            weights.append(w)
        return x, torch.cat(weights, dim=-1) if need_weights else None

    def gated_cross(self, x: Tensor, cross_kv: tuple[Tensor, Tensor], src_mask: Tensor,
                    need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """HAN's gated combination (see the class): x ``(B, T, D)`` -> ``(B, T, D)``; the weights
        ``(B, H, T, S)`` are source 1's times the mean gate and the others' times one minus it, so
        that each row sums to 1. ``src_mask`` may have B/g rows (beams sharing source rows)."""
        h, (k, v), width = self.s2.inp(x), cross_kv, src_mask.shape[1] // self.gated
        c, wc = self.cross_attn(h, k[:, :, :width], v[:, :, :width], mask=src_mask[:, :width],
                                need_weights=need_weights)  # (B, T, D), (B, H, T, S')
        d, wd = self.context_attn(h, k[:, :, width:], v[:, :, width:], mask=src_mask[:, width:],
                                  need_weights=need_weights)  # (B, T, D), (B, H, T, (N-1) S')
        lam = torch.sigmoid(self.gate(torch.cat([c, d], -1)))  # (B, T, D)
        context = src_mask[:, width:].reshape(src_mask.shape[0], self.gated - 1, width).sum(-1) > 1  # (B', N-1)
        has = context.any(-1).repeat_interleave(x.shape[0] // src_mask.shape[0])  # (B,): any source 2..N with content
        lam = torch.where(has[:, None, None], lam, torch.ones_like(lam))
        y = lam * c + (1 - lam) * d
        weights = None
        if need_weights:
            share = lam.mean(-1)[:, None, :, None].to(wc.dtype)  # (B, 1, T, 1)
            weights = torch.cat([wc * share, wd * (1 - share)], dim=-1)
        return self.s2.out(x, y), weights

    def forward(
        self,
        x: Tensor,
        cross_kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
        cache: tuple[Tensor, Tensor] | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor]]:
        """x ``(B, T, D)`` -> ``(B, T, D)``, cross-attention ``(B, H, T, S)``, self keys/values.

        Without ``cache`` (training) x attends to itself under the causal mask. With ``cache``
        (incremental decoding, T = 1) the new position's keys/values are appended to the cached
        ones ``(B, H, t, Dh)`` and the grown cache is returned.
        """
        h = self.s1.inp(x)
        k, v = self.self_attn.project_kv(h)  # (B, H, T, Dh)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        y, _ = self.self_attn(h, k, v, causal=cache is None)
        x, w = self.cross(self.s1.out(x, y), cross_kv, src_mask, need_weights)
        return self.s3.out(x, self.ff(self.s3.inp(x))), w, (k, v)


def block_diagonal(weights: Tensor, n: int) -> Tensor:
    """Per-row self-attention ``(B*N, L, H, S', S')`` -> ``(B, L, H, N*S', N*S')``, source i's in block i."""
    if n == 1:
        return weights
    bn, l, h, w, _ = weights.shape
    out = weights.new_zeros(bn // n, l, h, n * w, n * w)
    for i, block in enumerate(weights.view(bn // n, n, l, h, w, w).unbind(1)):
        out[..., i * w : (i + 1) * w, i * w : (i + 1) * w] = block
    return out


class Transformer(nn.Module):
    """Encoder-decoder Transformer implementing ``encode / init_state / step / forward``."""

    shares_source_rows = True  # step takes src_* entries with one row per sentence (see nmt.models)

    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.config = c
        d = c.d_model
        self.embed = nn.Embedding(c.vocab_size, d, padding_idx=PAD_ID)
        nn.init.normal_(self.embed.weight, 0.0, d**-0.5)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()
        self.tgt_embed = self.embed if c.tie_embeddings else nn.Embedding(c.vocab_size, d, padding_idx=PAD_ID)
        self.output = None if c.tie_embeddings else nn.Linear(d, c.vocab_size, bias=False)
        self.emb_scale = math.sqrt(d) if c.scale_embeddings else 1.0
        self.drop = Dropout(c.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        self.enc_norm = nn.LayerNorm(d) if c.pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(d) if c.pre_norm else nn.Identity()
        # several sources share the encoder; a learned vector per source, added to its embeddings,
        # tells them apart (the positions of every source start at 0)
        self.source_embed = nn.Embedding(c.sources, d) if c.sources > 1 else None

    # -- helpers -------------------------------------------------------------------------------
    def _embed(self, emb: nn.Embedding, tokens: Tensor, start: int = 0, extra: Tensor | None = None) -> Tensor:
        x = emb(tokens) * self.emb_scale  # (B, T, D)
        x = x + sinusoidal_positions(tokens.shape[1], self.config.d_model, start, tokens.device).to(x.dtype)
        if extra is not None:  # (B, D): the same vector at every position of a row
            x = x + extra[:, None].to(x.dtype)
        return self.drop(x)  # (B, T, D)

    def _logits(self, h: Tensor) -> Tensor:
        return F.linear(h, self.embed.weight) if self.output is None else self.output(h)

    def _output_weight(self) -> Tensor:
        return self.embed.weight if self.output is None else self.output.weight  # (V, D)

    # -- the contract ----------------------------------------------------------------------------
    def encode(self, src: Tensor, need_attention: bool = False) -> dict[str, Tensor]:
        """src ``(B, S)`` ids -> ``{"memory": (B, S, D), "src_mask": (B, S)}`` (+ ``"self_attn"``
        ``(B, L, H, S, S)`` when ``need_attention``). With N sources, src holds N segments side by
        side (:mod:`nmt.multisource`): each is encoded on its own row and the memory keeps the layout;
        the self-attention is then block-diagonal (a source never attends to another)."""
        n = self.config.sources
        rows = source_rows(src, n)  # (B*N, S')
        mask = rows != PAD_ID  # (B*N, S')
        extra = None if self.source_embed is None else self.source_embed(source_index(rows.shape[0], n, src.device))
        x = self._embed(self.embed, rows, extra=extra)
        weights = []
        for layer in self.encoder:
            x, w = layer(x, mask, need_weights=need_attention)
            weights.append(w)
        enc = {"memory": merge_rows(self.enc_norm(x), n), "src_mask": merge_rows(mask, n)}  # (B, S, D), (B, S)
        if need_attention:
            enc["self_attn"] = block_diagonal(torch.stack(weights, dim=1), n)  # (B, L, H, S, S)
        return enc

    def init_state(self, enc: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batch-first decoder state: the source mask, per layer the cross-attention keys/values
        ``(B, H, S, Dh)`` and an empty self-attention cache ``(B, H, 0, Dh)``, and the step ``(B,)``."""
        memory = enc["memory"]
        b, h = memory.shape[0], self.config.heads
        state = {"src_mask": enc["src_mask"], "step": memory.new_zeros(b, dtype=torch.long)}
        empty = memory.new_zeros(b, h, 0, self.config.d_model // h)
        for i, layer in enumerate(self.decoder):
            state[f"src_k{i}"], state[f"src_v{i}"] = layer.project_memory(memory)
            state[f"self_k{i}"], state[f"self_v{i}"] = empty, empty
        return state

    def step(
        self, tokens: Tensor, state: dict[str, Tensor], need_attention: bool = False
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        """One target token per sentence: tokens ``(B,)`` -> log-probs ``(B, V)``, the new state,
        and (if asked) cross-attention ``(B, L, H, S)`` over layers and heads."""
        t = int(state["step"][0]) if state["step"].numel() else 0
        x = self._embed(self.tgt_embed, tokens[:, None], start=t)  # (B, 1, D)
        new, weights = {}, []
        for i, layer in enumerate(self.decoder):
            cross = (state[f"src_k{i}"], state[f"src_v{i}"])
            cache = (state.pop(f"self_k{i}"), state.pop(f"self_v{i}"))  # taken over (see nmt.models)
            x, w, (new[f"self_k{i}"], new[f"self_v{i}"]) = layer(x, cross, state["src_mask"], cache, need_attention)
            del cache  # this layer's old keys/values go now unless the caller kept them: ~1x the cache at the peak
            weights.append(w)
        new = {**state, **new, "step": state["step"] + 1}
        logp = step_log_probs(self._logits(self.dec_norm(x[:, 0])))  # (B, V)
        attn = torch.stack(weights, dim=1)[:, :, :, 0] if need_attention else None  # (B, L, H, S)
        return logp, new, attn

    def forward(
        self, src: Tensor, tgt_in: Tensor, need_attention: bool = False, targets: Tensor | None = None,
        project: bool = True,
    ) -> ModelOutput:
        """Teacher forcing: src ``(B, S)``, tgt_in ``(B, T)`` (BOS + target) -> logits ``(B, T, V)``
        (with ``project=False``: ``projection = (hidden (B, T, D), weight (V, D))`` instead) and, if
        asked, cross-attention ``(B, L, H, T, S)``; no auxiliary loss (``targets`` unused)."""
        enc = self.encode(src)
        x = self._embed(self.tgt_embed, tgt_in)
        weights = []
        for layer in self.decoder:
            cross = layer.project_memory(enc["memory"])
            x, w, _ = layer(x, cross, enc["src_mask"], need_weights=need_attention)
            weights.append(w)
        attn = torch.stack(weights, dim=1) if need_attention else None
        h = self.dec_norm(x)  # (B, T, D)
        if not project:
            return ModelOutput(None, attn, projection=(h, self._output_weight()))
        return ModelOutput(self._logits(h), attn)
