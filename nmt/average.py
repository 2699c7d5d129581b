"""Checkpoint averaging: ``nmt average`` (Vaswani et al. 2017 average the last 5 or 20 checkpoints).

The element-wise mean of the weights of N checkpoints of one model: the same kind, model config
and SentencePiece model, usually the last snapshots of one run (``train.keep_checkpoints``). The
result is a checkpoint like any other, without training state (it cannot be resumed); integer
buffers, if a model has any, are the last checkpoint's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nmt.checkpoint import load_checkpoints
from nmt.config import model_differences
from nmt.errors import NmtError


def _mismatch(first: dict, other: dict) -> str | None:
    """Why ``other`` cannot be averaged with ``first``, or None."""
    if other["kind"] != first["kind"]:
        return f"a {other['kind']} model, the first is a {first['kind']}"
    _, diff = model_differences(first["model_config"], other["model_config"])  # dropout may differ (a resume's)
    if diff:
        k = diff[0]
        return f"model.{k} is {other['model_config'].get(k)!r}, the first's {first['model_config'].get(k)!r}"
    if not torch.equal(other["spm_model"], first["spm_model"]):
        return "another SentencePiece model than the first's"
    if other["weights"].keys() != first["weights"].keys():
        return "other weights than the first's"
    meta, first_meta = other.get("meta") or {}, first.get("meta") or {}
    if meta.get("direction") != first_meta.get("direction"):
        return "a model of the other direction (best.reverse.pt and best.pt do not mix)"
    if meta.get("context", 0) != first_meta.get("context", 0):
        return f"document context {meta.get('context', 0)}, the first's {first_meta.get('context', 0)}"
    return None


def average_weights(weights: list[dict]) -> dict:
    """The element-wise mean of N state dicts with the same keys and shapes, in float64 and cast
        back to each tensor's dtype; non-float tensors are the last dict's. Keys whose tensors share
    storage in the last dict (tied embeddings) share the result."""
    out, done = {}, {}  # tensors that share storage (tied embeddings) stay shared
    for key, last in weights[-1].items():
        where = (last.untyped_storage().data_ptr(), last.storage_offset(), tuple(last.shape), last.stride())
        if where in done:
            out[key] = done[where]
        elif last.is_floating_point():
            total = torch.zeros(last.shape, dtype=torch.float64)
            for w in weights:
                total += w[key].to(torch.float64)
            out[key] = (total / len(weights)).to(last.dtype)
        else:
            out[key] = last.clone()
        done[where] = out[key]
    return out


def average_checkpoints(paths: list[Path]) -> dict:
    """Load ``paths`` (each checked like ``nmt translate`` does) and return one checkpoint with
    their mean weights and the last one's config and vocabulary; a mismatch is an NmtError naming
    the file and the difference."""
    if not paths:
        raise NmtError("no checkpoints to average")
    ckpts = load_checkpoints(paths, "each checkpoint counts once in the mean")
    for path, ckpt in zip(paths[1:], ckpts[1:]):
        if (why := _mismatch(ckpts[0], ckpt)) is not None:
            raise NmtError(f"{path}: cannot be averaged with {paths[0]}: {why}")
        for key, t in ckpt["weights"].items():
            if t.shape != ckpts[0]["weights"][key].shape:
                raise NmtError(f"{path}: cannot be averaged with {paths[0]}: {key} has shape "
                               f"{tuple(t.shape)}, the first's {tuple(ckpts[0]['weights'][key].shape)}")
    last = ckpts[-1]
    meta = {**(last.get("meta") or {}), "averaged_from": [str(p) for p in paths],
            "averaged_steps": [(c.get("meta") or {}).get("step") for c in ckpts], "valid_bleu": None}
    return {**{k: v for k, v in last.items() if k != "training"},
            "weights": average_weights([c["weights"] for c in ckpts]), "meta": meta}
