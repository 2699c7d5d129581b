"""One search for every model: greedy and batched beam search over the model contract.

Both functions see a model only through ``encode / init_state / step``, :func:`reorder` and
:func:`reorder_beams` (see :mod:`nmt.models`: state entries named ``src_*`` are per sentence), so a
new model needs no change here. Beam search is batched over
sentences and beams, keeps finished hypotheses in place (a finished beam can only be extended by
EOS at no cost), follows back-pointers with tensor gathers, and drops a sentence from the batch
as soon as its best ``n_best`` hypotheses are finished.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.models import reorder, reorder_beams
from nmt.vocab import BOS_ID, EOS_ID


@dataclass
class Hypothesis:
    """One output: ids without BOS/EOS, its score, and the attention ``(T+1, L, H, S)`` (EOS row
    included, source padding removed) when it was asked for."""

    tokens: list[int]
    score: float
    attention: Tensor | None = None


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT length penalty (Wu et al. 2016): ``lp(Y) = ((5 + |Y|) / 6) ** alpha``.

    A hypothesis is ranked by ``log P(Y|X) / lp(Y)``; alpha = 0 ranks by raw log-probability.
    """
    return ((5.0 + length.float()) / 6.0) ** alpha


def coverage_penalty(coverage: Tensor, src_mask: Tensor, beta: float) -> Tensor:
    """GNMT coverage penalty (Wu et al. 2016): ``beta * sum_i log(min(sum_t a_t,i, 1))``.

    coverage ``(..., S)`` is the attention summed over the output steps so far, src_mask ``(..., S)``
    True = real source position. Source positions never attended are floored at 1e-3 (log = -6.9)
    instead of -inf. Returns ``(...)``, <= 0; a hypothesis is ranked by ``log P / lp + cp``. Beam
    search leaves the attention of the step that emits EOS out of the coverage.
    """
    clipped = coverage.clamp(min=1e-3, max=1.0).log()
    return beta * (clipped * src_mask).sum(-1)


def max_lengths(src_mask: Tensor, a: float, b: int) -> Tensor:
    """The longest output allowed per sentence: ``a * |source| + b`` tokens (EOS included). ``(B,)``."""
    return (src_mask.sum(1).float() * a + b).long().clamp(min=1)


@torch.inference_mode()
def greedy_search(
    model, src: Tensor, max_len_a: float = 1.5, max_len_b: int = 10, need_attention: bool = False
) -> list[list[Hypothesis]]:
    """Pick the most probable token at every step. src ``(B, S)``; one hypothesis per sentence."""
    return beam_search(model, src, beam=1, max_len_a=max_len_a, max_len_b=max_len_b, alpha=0.0,
                       need_attention=need_attention)


@torch.inference_mode()
def beam_search(
    model,
    src: Tensor,
    beam: int = 5,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    alpha: float = 0.6,
    n_best: int = 1,
    need_attention: bool = False,
    beta: float = 0.0,
) -> list[list[Hypothesis]]:
    """Batched beam search. src ``(B, S)`` -> for each sentence its ``n_best`` hypotheses, best first.

    Scores are ``log P / length_penalty(len, alpha) + coverage_penalty(beta)``, with the length
    counting EOS. The coverage penalty (beta > 0) works with any model whose ``step`` returns
    non-negative attention (averaged over layers and heads); the attention of the step that emits
    EOS does not count as coverage (EOS translates no source word). With ``beam = 1`` and beta = 0
    this is exactly greedy search.
    """
    n_best = min(n_best, beam)
    enc = model.encode(src)
    limit = max_lengths(enc["src_mask"], max_len_a, max_len_b)  # (B,)
    src_len = enc["src_mask"].sum(1).tolist()
    n, k, dev = src.shape[0], beam, src.device
    state = reorder(model.init_state(enc), torch.arange(n, device=dev).repeat_interleave(k))
    ids = torch.arange(n, device=dev)  # original sentence index of each live row
    scores = torch.full((n, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    lengths = torch.zeros(n, k, dtype=torch.long, device=dev)
    finished = torch.zeros(n, k, dtype=torch.bool, device=dev)
    tokens = torch.full((n * k,), BOS_ID, dtype=torch.long, device=dev)
    history = torch.zeros(n, k, 0, dtype=torch.long, device=dev)  # (n, k, t)
    attn_hist: Tensor | None = None  # (n, k, t, L, H, S)
    coverage = torch.zeros(n, k, src.shape[1], device=dev) if beta > 0 else None  # (n, k, S)
    src_mask = enc["src_mask"]
    results: list[list[Hypothesis]] = [[] for _ in range(src.shape[0])]

    for t in range(int(limit.max())):
        logp, state, attn = model.step(tokens, state, need_attention or beta > 0)
        logp = logp.view(n, k, -1)  # (n, k, V)
        # Ranking adds a per-beam constant to log p and divides by a per-beam length penalty (the
        # coverage penalty is per beam too), so each beam's k best tokens are its only candidates:
        # one pass over (n, k, V), then everything on (n, k, width). With coverage, EOS gets the
        # penalty of the old coverage, never above the others' (attention >= 0): one more candidate
        # keeps the k best other tokens whether or not EOS is among them.
        width = min(k + (coverage is not None), logp.shape[-1])
        cand_lp, cand_tok = logp.topk(width, dim=-1)  # (n, k, width)
        # a finished beam is carried on unchanged (EOS at no cost); a beam at its length limit must end
        only_eos = finished | (t + 1 >= limit[ids])[:, None]  # (n, k)
        forced = torch.full_like(cand_lp, float("-inf"))
        forced[..., 0] = torch.where(finished, 0.0, logp[..., EOS_ID])
        cand_lp = torch.where(only_eos[..., None], forced, cand_lp)
        cand_tok = torch.where(only_eos[..., None], EOS_ID, cand_tok)
        cand = scores[..., None] + cand_lp  # (n, k, width)
        new_len = lengths + (~finished).long()  # (n, k)
        ranked = cand / length_penalty(new_len, alpha)[..., None]
        if coverage is not None:
            # The attention of this step counts for every token but EOS: EOS translates no source
            # word, and its (often diffuse) attention would lift every uncovered position off the
            # floor, rewarding hypotheses that stop. A finished beam's coverage stays as it was.
            new_cov = coverage + attn.float().mean((1, 2)).view(n, k, -1)  # (n, k, S)
            mask = src_mask[ids][:, None]
            ends = cand_tok == EOS_ID  # (n, k, width)
            ranked = ranked + torch.where(ends, coverage_penalty(coverage, mask, beta)[..., None],
                                          coverage_penalty(new_cov, mask, beta)[..., None])
        _, top = ranked.view(n, -1).topk(k, dim=1)  # (n, k), sorted best first
        parent, tok = top // cand_lp.shape[-1], cand_tok.view(n, -1).gather(1, top)
        if coverage is not None:
            index = parent[..., None].expand(-1, -1, coverage.shape[-1])
            coverage = torch.where((tok == EOS_ID)[..., None], coverage.gather(1, index), new_cov.gather(1, index))
        scores = cand.view(n, -1).gather(1, top)
        lengths = new_len.gather(1, parent)
        finished = finished.gather(1, parent) | (tok == EOS_ID)
        history = torch.cat([history.gather(1, parent[..., None].expand(-1, -1, t)), tok[..., None]], dim=2)
        rows = (torch.arange(n, device=dev)[:, None] * k + parent).view(-1)  # back-pointers, flat
        if need_attention:
            a = attn.view(n, k, 1, *attn.shape[1:])[torch.arange(n, device=dev)[:, None], parent]
            attn_hist = a if attn_hist is None else torch.cat([attn_hist[torch.arange(n, device=dev)[:, None], parent], a], 2)
        done = finished[:, :n_best].all(1) | (t + 1 >= limit[ids])  # (n,)
        if done.any():
            penalty = coverage_penalty(coverage, src_mask[ids][:, None], beta) if coverage is not None else None
            _collect(results, done, ids, history, scores, lengths, alpha, n_best, attn_hist, src_len, penalty)
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        kept = None
        if keep.numel() < n:  # drop finished sentences from the batch
            kept = (keep[:, None] * k + torch.arange(k, device=dev)).view(-1)  # their rows
            ids, scores, lengths, finished, history = ids[keep], scores[keep], lengths[keep], finished[keep], history[keep]
            coverage = coverage[keep] if coverage is not None else None
            attn_hist = attn_hist[keep] if attn_hist is not None else None
            rows = rows.view(n, k)[keep].view(-1)
            tok = tok[keep]
            n = keep.numel()
        state = reorder_beams(state, rows, kept)
        tokens = tok.view(-1)
    return results


def _collect(results, done, ids, history, scores, lengths, alpha, n_best, attn_hist, src_len, penalty=None) -> None:
    """Move the n-best hypotheses of every finished sentence into ``results`` (one sync per batch)."""
    norm = scores / length_penalty(lengths, alpha)
    if penalty is not None:
        norm = norm + penalty
    for row in done.nonzero().squeeze(1).tolist():
        order = norm[row].argsort(descending=True)[:n_best].tolist()
        sid = int(ids[row])
        for j in order:
            toks = history[row, j, : int(lengths[row, j])].tolist()
            if toks and toks[-1] == EOS_ID:
                toks = toks[:-1]
            att = None
            if attn_hist is not None:
                att = attn_hist[row, j, : int(lengths[row, j]), ..., : src_len[sid]].float().cpu()
            results[sid].append(Hypothesis(toks, float(norm[row, j]), att))
