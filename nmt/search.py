"""One search for every model: greedy and batched beam search over the model contract.

Both functions see a model only through ``encode / init_state / step``, :func:`reorder` and
:func:`reorder_beams` (see :mod:`nmt.models`: state entries named ``src_*`` are per sentence), so a
new model needs no change here. Beam search is batched over
sentences and beams, runs its first step on one row per sentence (the ``k`` beams are still one
hypothesis there), moves a hypothesis that ends out of the beam (every row the model computes
extends a live hypothesis), follows back-pointers with tensor gathers, and drops a sentence from
the batch as soon as its best ``n_best`` hypotheses are finished.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.models import reorder, reorder_beams
from nmt.multisource import num_sources
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID

NEVER_OUTPUT = [PAD_ID, BOS_ID]  # tokens a search never emits (a model may give them a little mass: label smoothing)


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


def max_lengths(src_mask: Tensor, a: float, b: int, sources: int = 1) -> Tensor:
    """The longest output allowed per sentence: ``a * |source| + b`` tokens (EOS included). ``(B,)``.
    With N sources side by side in ``src_mask`` (:mod:`nmt.multisource`), |source| is the longest of them."""
    length = src_mask.view(src_mask.shape[0], sources, -1).sum(-1).amax(-1)  # (B,)
    return (length.float() * a + b).long().clamp(min=1)


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
    counting EOS. Every step ranks the candidate extensions of each sentence's ``k`` beams; a
    candidate ending in EOS that ranks among the ``k`` best is finished: it leaves the beam for
    the sentence's list of finished hypotheses, and the ``k`` best candidates that do not end
    become the next beams (fairseq's scheme), so no row of the batch is spent on a finished
    hypothesis. A sentence is done when its ``n_best``-th finished score is at least its best live
    beam's, or at its length limit, where every beam must end. With alpha = beta = 0 that stop is
    exact (a live beam's score can only fall); with a length or coverage penalty a live beam could
    still overtake, and stopping there is the usual approximation (OpenNMT-py stops when the best
    candidate ends). A sentence gets fewer than ``n_best`` hypotheses only when fewer than that
    many can end (e.g. a length limit of one token). The coverage penalty (beta > 0) works with
    any model whose ``step`` returns non-negative attention (averaged over layers and heads); the
    attention of the step that emits EOS does not count as coverage (EOS translates no source
    word). With ``beam = 1`` and beta = 0 this is exactly greedy search.

    The first step runs on one row per sentence: before it every beam would be BOS with score 0,
    so ``k`` rows would compute the same thing (CTranslate2 does the same). Its ``k`` best
    extensions become the ``k`` beams, and the state is copied out to ``k`` rows per sentence
    then (the ``src_*`` entries too, unless the model shares them: ``shares_source_rows``).
    """
    n_best = min(n_best, beam)
    enc = model.encode(src)
    src_mask = enc["src_mask"]  # (B, S)
    limit = max_lengths(src_mask, max_len_a, max_len_b, num_sources(model))  # (B,)
    real = src_mask.cpu() if need_attention else None  # (B, S): the positions a hypothesis's attention keeps
    n, k, dev = src.shape[0], beam, src.device
    shared = getattr(model, "shares_source_rows", False) and k > 1  # src_* entries: one row per sentence
    state = model.init_state(enc)  # one row per sentence until the first step has made the k beams
    ids = torch.arange(n, device=dev)  # original sentence index of each live row
    scores = torch.zeros(n, 1, device=dev)  # raw log P of each beam: (n, kk), kk = 1 beam, then k
    best_done = torch.full((n, n_best), float("-inf"), device=dev)  # the n_best finished ranks so far
    tokens = torch.full((n,), BOS_ID, dtype=torch.long, device=dev)
    history = torch.zeros(n, 1, 0, dtype=torch.long, device=dev)  # (n, kk, t)
    attn_hist: Tensor | None = None  # (n, k, t, L, H, S)
    coverage = torch.zeros(n, 1, src.shape[1], device=dev) if beta > 0 else None  # (n, kk, S)
    found: list[list[Hypothesis]] = [[] for _ in range(src.shape[0])]  # per sentence, its n_best so far
    arange_n = torch.arange(n, device=dev)[:, None]

    for t in range(int(limit.max())):
        logp, state, attn = model.step(tokens, state, need_attention or beta > 0)
        logp[:, NEVER_OUTPUT] = float("-inf")  # (rows, V): PAD and BOS are never an output token
        kk = scores.shape[1]  # beams per sentence in the state: 1 at the first step, then k
        logp = logp.view(n, kk, -1)  # (n, kk, V)
        at_limit = t + 1 >= limit[ids]  # (n,)
        cand, cand_tok, ranked, new_cov = _candidates(logp, k, scores, t + 1, at_limit, alpha, coverage, attn,
                                                      src_mask[ids], beta)
        del logp  # (rows, V): gone before the next step makes its own
        # the 2k best candidates hold at least k that do not end (a beam has one EOS candidate; at
        # the first step there are only k + 1)
        top_rank, top = ranked.view(n, -1).topk(min(2 * k, kk * (k + 1)), dim=1)  # (n, <= 2k), best first
        top_tok = cand_tok.view(n, -1).gather(1, top)
        ends = (top_tok == EOS_ID) & torch.isfinite(top_rank)
        ends[:, k:] = False  # only candidates among the k best finish (greedy for k = 1)
        step_attn = attn.view(n, kk, 1, *attn.shape[1:]) if need_attention else None  # (n, kk, 1, L, H, S)
        if ends.any():
            best_done = _finish(found, ends, top, top_rank, cand_tok.shape[-1], ids, history, step_attn,
                                attn_hist, best_done, real)
        live = (top_tok == EOS_ID).to(torch.uint8).argsort(dim=1, stable=True)[:, :k]  # (n, k): first k not ending
        top, top_rank = top.gather(1, live), top_rank.gather(1, live)
        parent, tok = top // cand_tok.shape[-1], cand_tok.view(n, -1).gather(1, top)
        scores = cand.view(n, -1).gather(1, top)
        if coverage is not None:
            coverage = new_cov.gather(1, parent[..., None].expand(-1, -1, coverage.shape[-1]))
        history = torch.cat([history.gather(1, parent[..., None].expand(-1, -1, t)), tok[..., None]], dim=2)
        if need_attention:
            a = step_attn[arange_n, parent]
            attn_hist = a if attn_hist is None else torch.cat([attn_hist[arange_n, parent], a], 2)
        rows = (arange_n * kk + parent).view(-1)  # back-pointers, flat: (n * k,)
        done = at_limit | (best_done[:, -1] >= top_rank[:, 0])  # (n,)
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        kept = None
        if keep.numel() < n:  # drop finished sentences from the batch
            kept = keep if shared else (keep[:, None] * kk + torch.arange(kk, device=dev)).view(-1)  # their rows
            ids, scores, best_done, history, coverage, attn_hist, tok = _select(
                keep, ids, scores, best_done, history, coverage, attn_hist, tok)
            rows = rows.view(n, k)[keep].view(-1)
            n = keep.numel()
            arange_n = torch.arange(n, device=dev)[:, None]
        if kk < k and not shared:  # after the first step: src_* entries too, one row per sentence -> k
            state = reorder(state, rows)
        else:
            state = reorder_beams(state, rows, kept)
        tokens = tok.view(-1)
    return found  # every sentence ends by its length limit


def _candidates(logp, k, scores, length, at_limit, alpha, coverage, attn, src_mask, beta):
    """Each beam's ``k + 1`` best extensions (beam size ``k``). logp ``(n, kk, V)`` and scores
    ``(n, kk)`` (raw log P so far) for the ``kk`` beams in the state (1 at the first step, then k),
    ``length`` the new length (EOS counted), at_limit ``(n,)``: those beams may only end.

    Returns ``cand`` (raw log P), ``cand_tok`` and ``ranked`` (the search's ranking score), each
    ``(n, kk, k + 1)``, and the coverage after this step ``(n, kk, S)`` (None without beta). A
    vocabulary smaller than ``k + 1`` is padded with candidates of score -inf.

    Ranking adds a per-beam constant to log p and divides by a length penalty that is the same for
    all (every live beam has the same length), and the coverage penalty is per beam too, so each
    beam's ``k + 1`` best tokens are its only candidates (k that do not end, whether or not EOS is
    among them): one pass over ``(n, kk, V)``, then everything on ``(n, kk, k + 1)``. With coverage,
    EOS gets the penalty of the old coverage (never above the others': attention >= 0), so the
    ``k`` best others are still among each beam's ``k + 1`` best tokens.
    """
    n, kk, v = logp.shape
    width = k + 1
    cand_lp, cand_tok = topk_last(logp, min(width, v))  # (n, kk, width)
    if v < width:  # a vocabulary smaller than k + 1: the missing candidates can never be chosen
        pad = (0, width - v)
        cand_lp, cand_tok = F.pad(cand_lp, pad, value=float("-inf")), F.pad(cand_tok, pad, value=PAD_ID)
    forced = torch.full_like(cand_lp, float("-inf"))
    forced[..., 0] = logp[..., EOS_ID]
    cand_lp = torch.where(at_limit[:, None, None], forced, cand_lp)
    cand_tok = torch.where(at_limit[:, None, None], EOS_ID, cand_tok)
    cand = scores[..., None] + cand_lp  # (n, kk, k + 1)
    ranked = cand / float(length_penalty(torch.tensor(length), alpha))  # the same for every live beam
    new_cov = None
    if coverage is not None:
        # The attention of this step counts for every token but EOS: EOS translates no source
        # word, and its (often diffuse) attention would lift every uncovered position off the
        # floor, rewarding hypotheses that stop.
        new_cov = coverage + attn.float().mean((1, 2)).view(n, kk, -1)  # (n, kk, S)
        mask = src_mask[:, None]
        ranked = ranked + torch.where(cand_tok == EOS_ID, coverage_penalty(coverage, mask, beta)[..., None],
                                      coverage_penalty(new_cov, mask, beta)[..., None])
    return cand, cand_tok, ranked, new_cov


def topk_last(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``x.topk(k, dim=-1)`` (values and indices, best first) over a wide last dimension ``V``.

    On a CPU, when ``V`` splits into chunks of 64-256 columns, in two passes: the ``k`` largest
    values lie in the ``k`` chunks with the largest maxima (a chunk holding one of them has a
    maximum at least the ``k``-th largest, and at most ``k`` chunks hold them), so top-k runs on
    ``k * chunk`` values per row after one maximum per chunk. torch's CPU top-k copies every row
    into (value, index) pairs, about 2 ns a value; a chunked maximum takes 0.3 (one thread,
    (640, 8000), k = 6: 11.5 -> 4 ms). Ties may come in another order than ``x.topk``'s. Elsewhere
    (a GPU, a narrow or unsplittable ``V``) it is ``x.topk``.
    """
    v = x.shape[-1]
    chunk = next((c for c in (100, 128, 125, 80, 160, 64, 200, 250, 256) if v % c == 0), 0)
    if x.device.type != "cpu" or not chunk or v < 8 * k * chunk:
        return x.topk(k, dim=-1)
    rows = x.reshape(-1, v // chunk, chunk)  # (R, V / chunk, chunk)
    best = rows.amax(-1).topk(k, dim=-1).indices  # (R, k): the chunks with the largest maxima
    r = torch.arange(rows.shape[0], device=x.device)[:, None]
    values, pos = rows[r, best].view(rows.shape[0], k * chunk).topk(k, dim=-1)  # (R, k)
    indices = best.gather(1, pos // chunk) * chunk + pos % chunk
    return values.view(*x.shape[:-1], k), indices.view(*x.shape[:-1], k)


def _finish(found, ends, top, top_rank, width, ids, history, step_attn, attn_hist, best_done, real) -> Tensor:
    """Record this step's finished hypotheses and return the new ``best_done``.

    ends ``(n, c)`` marks the candidates that finish (c = 2k, or k + 1 at the first step), top /
    top_rank ``(n, c)`` their flat index into ``(kk, width)`` and their rank, ids ``(n,)`` the live
    sentences' indices, history ``(n, kk, t)``, step_attn ``(n, kk, 1, L, H, S)`` and attn_hist
    ``(n, kk, t, L, H, S)`` (None without attention), best_done ``(n, n_best)``. Each sentence
    keeps its ``n_best`` best, best first; tokens and scores come to Python in one transfer, the
    attention in one CPU copy, and only over the real source positions (``real (B, S)``, on the CPU:
    with several sources, the PAD inside the segments goes too).
    """
    n_best = best_done.shape[1]
    who, col = ends.nonzero(as_tuple=True)  # (m,) sentence rows, positions among the k best
    parent = top[who, col] // width
    attention = None
    if step_attn is not None:
        a = step_attn[who, parent]
        attention = (a if attn_hist is None else torch.cat([attn_hist[who, parent], a], 1)).float().cpu()
    for i, (sid, toks, score) in enumerate(zip(ids[who].tolist(), history[who, parent].tolist(),
                                              top_rank[who, col].tolist())):
        att = attention[i][..., real[sid]] if attention is not None else None
        found[sid] = sorted([*found[sid], Hypothesis(toks, score, att)], key=lambda h: -h.score)[:n_best]
    return torch.cat([best_done, top_rank.masked_fill(~ends, float("-inf"))], 1).topk(n_best, 1).values


def _select(keep: Tensor, *xs: Tensor | None) -> tuple:
    """The rows ``keep`` of each per-sentence tensor (None stays None)."""
    return tuple(None if x is None else x[keep] for x in xs)
