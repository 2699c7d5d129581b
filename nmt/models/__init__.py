"""The model contract and the model registry.

Every model implements the same four methods, so one search and one training loop serve all:

``encode(src) -> enc``
    src ``(B, S)`` token ids (``PAD_ID`` padded). Returns a dict of batch-first tensors with at least
    ``"memory"`` ``(B, S, D)`` and ``"src_mask"`` ``(B, S)`` bool (True = real token).
``init_state(enc) -> state``
    The decoder state before the first target token: a dict of tensors, each with the batch on
    dimension 0. Because it is batch-first, :func:`reorder` serves beam search for every model.
    Entries named ``src_*`` depend on the source sentence only (the source mask, attention keys and
    values of the memory): every beam of a sentence holds the same rows, so :func:`reorder_beams`
    leaves them in place when beams are reordered within their sentences. A model whose ``step``
    also takes them with one row per sentence (``B / beam`` rows; query row i reads row
    ``i // beam``) says so with a class attribute ``shares_source_rows = True``, and beam search
    then keeps one copy of them per sentence instead of one per beam.
``step(tokens, state, need_attention=False) -> (log_probs, state, attention)``
    One target token per sentence, tokens ``(B,)``. Returns log-probabilities ``(B, V)``, the new
    state, and, when asked, the encoder-decoder attention of this step ``(B, L, H, S)`` (layers x
    heads x source positions; an LSTM has L = 1). The log-probabilities are the caller's (the
    search edits them in place; a model must not keep them). ``step`` takes the state it is given over: it may
    remove entries from that dict (the Transformer pops each layer's self-attention cache, so the
    old cache is freed while the grown one is built instead of both living to the end of the
    step), but never changes a tensor in place; a caller that needs the old state again passes
    ``dict(state)``.
``forward(src, tgt_in, need_attention=False, targets=None, project=True) -> ModelOutput``
    Teacher forcing over a whole target: tgt_in ``(B, T)`` starts with BOS. Returns logits
    ``(B, T, V)``, when asked the attention ``(B, L, H, T, S)``, and an auxiliary loss that training
    adds to the NLL (None for most models; hard attention's REINFORCE surrogate needs the
    ``targets (B, T)``). With ``project=False`` a model whose logits are one linear map of a hidden
    state may return ``projection = (hidden, weight)`` instead of logits, for the loss to multiply
    in chunks (:func:`nmt.loss.output_loss`). In eval mode, feeding ``tgt_in`` through ``step`` one
    token at a time gives the same log-probabilities.

The registry below is the only place that knows the model classes.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from nmt.models.lstm import LSTMConfig, LSTMModel
from nmt.models.output import ModelOutput  # noqa: F401  (re-exported: the forward contract)
from nmt.models.transformer import Transformer, TransformerConfig

MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "transformer": (TransformerConfig, Transformer),
    "lstm": (LSTMConfig, LSTMModel),
}


def model_config_class(kind: str) -> type:
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(MODELS)}")
    return MODELS[kind][0]


def build_model(kind: str, config) -> nn.Module:
    """Build a model of ``kind`` from its config dataclass (or a plain dict of its fields)."""
    config_cls, model_cls = MODELS[kind] if kind in MODELS else (model_config_class(kind), None)
    if isinstance(config, dict):
        config = config_cls(**config)
    return model_cls(config)


def untie_output(model: nn.Module, copy: bool = True) -> nn.Module:
    """Give a model whose output layer is tied to its embedding matrix (``model.output is None``,
    logits = h E^T) its own ``nn.Linear`` holding a copy of E (``copy=False``: E itself, shared), so
    that module-level transforms for decoding (dynamic int8, :mod:`nmt.onednn`) reach the largest
    matrix too; every such model inside ``model`` (the members of an ensemble) likewise. Same logits;
    for inference only (training would update two copies apart). Every model reads ``model.output``
    when it is set."""
    for m in [m for m in model.modules() if getattr(m, "output", False) is None and hasattr(m, "embed")]:
        weight = m.embed.weight  # (V, D)
        m.output = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        m.output.weight = nn.Parameter(weight.detach().clone(), requires_grad=False) if copy else weight
    return model


def model_config_dict(model: nn.Module) -> dict:
    return dataclasses.asdict(model.config)


def reorder(state: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    """Select/reorder the batch rows of a decoder state: ``state[k][index]`` for every tensor.

    index ``(B',)`` long. Used by beam search to follow back-pointers and to drop finished
    sentences; it works for every model because every state tensor is batch-first.
    """
    return {k: v.index_select(0, index) for k, v in state.items()}


def reorder_beams(state: dict[str, Tensor], index: Tensor, kept: Tensor | None = None) -> dict[str, Tensor]:
    """:func:`reorder` for beam search, whose back-pointers ``index (B',)`` stay within a sentence:
    the ``src_*`` entries (the same for all beams of a sentence) are not copied, only selected with
    ``kept`` when sentences were dropped: the rows of the sentences still in the batch ``(B',)``,
    or those sentences ``(B' / beam,)`` when the entries hold one row per sentence. Like ``step``
    it takes ``state`` over (emptying the dict entry by entry, so that each old tensor can be freed
    as soon as its copy exists); pass ``dict(state)`` to keep it."""
    out = {}
    for k in list(state):  # entry by entry, each taken out of ``state``: its old tensor can go at once
        v = state.pop(k)
        out[k] = (v if kept is None else v.index_select(0, kept)) if k.startswith("src_") else v.index_select(0, index)
    return out
