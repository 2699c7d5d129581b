"""Ensembles: several models of one vocabulary decoded as one (``nmt translate -m a.pt -m b.pt``).

Each step's distribution is the mean of the members' probabilities,
``log p(y) = logsumexp_i(log p_i(y)) - log N`` (fairseq's ``EnsembleModel``; OpenNMT-py averages
the log-probabilities instead). :class:`Ensemble` implements the model contract of
:mod:`nmt.models` by running every member's ``encode / init_state / step`` on its own part of
the state, so beam search, greedy search and the attention reports need nothing new. The
members may differ in kind and shape (a Transformer with an LSTM); they must share the
SentencePiece model, the number of sources and the document context.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from nmt.errors import NmtError
from nmt.models.output import ModelOutput


def _name(i: int, key: str) -> str:
    """Member ``i``'s entry ``key`` in the ensemble's dicts; a per-sentence (``src_*``) entry stays
    ``src_*`` so that :func:`nmt.models.reorder_beams` still leaves it in place."""
    return f"src_{i}.{key}" if key.startswith("src_") else f"{i}.{key}"


def mean_probs(log_probs: list[Tensor]) -> Tensor:
    """``log(mean_i exp(lp_i))`` over N tensors of the same shape ``(..., V)``: the mixture's log-probabilities."""
    if len(log_probs) == 1:
        return log_probs[0]
    return torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(log_probs))


def mean_attention(attn: list[Tensor | None]) -> Tensor | None:
    """The members' attention ``(B, L, H, ..., S)`` averaged: as it is when every member has the
    same layers and heads, else each member's mean over layers and heads first (L = H = 1)."""
    if any(a is None for a in attn):
        return None
    if len({a.shape for a in attn}) > 1:
        attn = [a.float().mean((1, 2), keepdim=True) for a in attn]
    return torch.stack([a.float() for a in attn]).mean(0)


class Ensemble(nn.Module):
    """N models as one under the model contract. ``config`` is the first member's (the search reads
    its ``sources``); ``shares_source_rows`` holds when it holds for every member."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.config = members[0].config
        self.shares_source_rows = all(getattr(m, "shares_source_rows", False) for m in members)

    def _part(self, i: int, d: dict[str, Tensor]) -> dict[str, Tensor]:
        """Member ``i``'s entries of ``d``, under their own names, taken out of ``d``."""
        prefixes = (f"{i}.", f"src_{i}.")
        mine = [k for k in d if k.startswith(prefixes)]
        return {k.split(".", 1)[1]: d.pop(k) for k in mine}

    def encode(self, src: Tensor, need_attention: bool = False) -> dict[str, Tensor]:
        """Every member's encoding, namespaced; ``memory`` / ``src_mask`` (and ``self_attn``, for
        ``--encoder-attention``) are the first member's."""
        encs = [m.encode(src, need_attention=need_attention) for m in self.members]
        out = {_name(i, k): v for i, enc in enumerate(encs) for k, v in enc.items()}
        out.update({k: encs[0][k] for k in ("memory", "src_mask", "self_attn") if k in encs[0]})
        return out

    def init_state(self, enc: dict[str, Tensor]) -> dict[str, Tensor]:
        enc = dict(enc)
        states = [m.init_state(self._part(i, enc)) for i, m in enumerate(self.members)]
        return {_name(i, k): v for i, state in enumerate(states) for k, v in state.items()}

    def step(self, tokens: Tensor, state: dict[str, Tensor], need_attention: bool = False):
        """tokens ``(B,)`` -> the mixture's log-probabilities ``(B, V)``, the members' new states,
        and the mean attention (:func:`mean_attention`)."""
        log_probs, attention, new = [], [], {}
        for i, m in enumerate(self.members):
            lp, st, attn = m.step(tokens, self._part(i, state), need_attention=need_attention)
            log_probs.append(lp)
            attention.append(attn)
            new.update({_name(i, k): v for k, v in st.items()})
        return mean_probs(log_probs), new, mean_attention(attention) if need_attention else None

    def forward(self, src: Tensor, tgt_in: Tensor, need_attention: bool = False, targets: Tensor | None = None,
                project: bool = True) -> ModelOutput:
        """Teacher forcing: ``logits (B, T, V)`` are the mixture's log-probabilities (for inference;
        an ensemble is not trained as one)."""
        outs = [m(src, tgt_in, need_attention=need_attention, targets=targets) for m in self.members]
        logits = mean_probs([torch.log_softmax(o.logits.float(), -1) for o in outs])
        return ModelOutput(logits, mean_attention([o.attention for o in outs]) if need_attention else None)


def load_models(paths: list[Path]) -> tuple[nn.Module, object, list[dict]]:
    """Load one checkpoint (its model) or several (an :class:`Ensemble`). Returns
    ``(model, vocab, checkpoints)``; a file given twice, or checkpoints that cannot be ensembled
    with the first, are a one-line error naming the file and the difference."""
    from nmt.checkpoint import load_checkpoints, model_from_checkpoint

    ckpts = load_checkpoints(paths, "each model of an ensemble counts once")
    first = ckpts[0]
    for path, ckpt in zip(paths[1:], ckpts[1:]):
        if not torch.equal(ckpt["spm_model"], first["spm_model"]):
            raise NmtError(f"{path}: has another SentencePiece model than {paths[0]}; an ensemble needs one vocabulary")
        for what, get in (("sources", lambda c: c["model_config"].get("sources", 1)),
                          ("document context", lambda c: (c.get("meta") or {}).get("context", 0)),
                          ("direction", lambda c: (c.get("meta") or {}).get("direction", "forward"))):
            if get(ckpt) != get(first):
                raise NmtError(f"{path}: {what} {get(ckpt)!r} differs from {paths[0]}'s {get(first)!r}; "
                               "an ensemble's models must read the same input")
    models = [model_from_checkpoint(c) for c in ckpts]
    vocab = models[0][1]
    if len(models) == 1:
        return models[0][0], vocab, ckpts
    return Ensemble([m for m, _ in models]).eval(), vocab, ckpts


def ensemble_head_source(model: nn.Module, ckpts: list[dict], device) -> dict:
    """The checkpoint whose trained alignment head (guided alignment, agreement) sets the default
    ``--align-layer`` / ``--align-heads``: the model's own; for an ensemble the first member's
    only when every member trained the same head and has the same attention shape (else the
    mean attention has no such head to read: ``{}``, the last layer's mean over heads)."""
    from nmt.guided import guided_head
    from nmt.report import attention_shape

    if len(ckpts) == 1:
        return ckpts[0]
    same_head = len({guided_head(c) for c in ckpts}) == 1
    if same_head and len({attention_shape(m, device) for m in model.members}) == 1:
        return ckpts[0]
    return {}
