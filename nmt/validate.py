"""Validation: teacher-forced loss and perplexity on the valid ids, BLEU of beam search on the valid text."""

from __future__ import annotations

import math

import torch

from nmt.data import ParallelIds, make_batches
from nmt.evaluate import bleu
from nmt.loss import fuse_output_projection, output_loss
from nmt.translate import SearchOptions, Translator


@torch.inference_mode()
def valid_loss(model, data: ParallelIds, batch_tokens: int, device) -> tuple[float, float]:
    """Per-token NLL (no smoothing) and perplexity over a whole split."""
    model.eval()
    total, tokens = 0.0, 0
    for idx in make_batches(data.src_len, data.tgt_len, batch_tokens, seed=0, shuffle=False):
        b = data.collate(idx).to(device)
        _, nll = output_loss(model(b.src, b.tgt_in, project=not fuse_output_projection(device)), b.tgt_out, 0.0)
        total += float(nll)
        tokens += b.target_tokens
    nll = total / max(tokens, 1)
    return nll, math.exp(min(nll, 50))


def validate(model, vocab, data: ParallelIds | None, text, tc, device) -> dict:
    """``{"loss", "ppl", "bleu"}`` for whatever the run has (ids and/or text)."""
    out: dict = {}
    if data is not None and len(data):
        loss, ppl = valid_loss(model, data, tc.batch_tokens, device)
        out.update(loss=round(loss, 4), ppl=round(ppl, 3))
    if text is not None:
        src, ref = text
        tr = Translator(model, vocab, SearchOptions(beam=tc.valid_beam), device=device, warn=lambda m: None)
        out["bleu"] = round(bleu(tr.translate(src), ref), 2)
    model.train()
    return out
