"""Sampling instead of search (``nmt translate --sample``): each output token is drawn from the
model's distribution, optionally sharpened or flattened by a temperature and cut to the ``k`` most
probable tokens (top-k, Fan et al. 2018) or to the smallest set holding probability ``p``
(nucleus, Holtzman et al. 2020). Sampled back-translations train better than beam ones (Edunov
et al. 2018); OpenNMT-py (``-random_sampling_topk/topp/temp``), fairseq (``--sampling``) and
Marian (``--output-sampling``) offer the same.

The draws are reproducible line by line: the random numbers come from a counter-based generator
(splitmix64 over ``(seed, line number, draw, step)``, one number per row and step) instead of a stateful one, so a
line's samples depend only on the seed, its number in the input, and the model, never on its
batch, the number of search threads or how the input arrived in chunks. A token is drawn by
inverting the cumulative distribution with one uniform number per row: the first token whose
cumulative probability exceeds ``U`` (a token of probability 0 is never drawn).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nmt.models import reorder
from nmt.multisource import num_sources
from nmt.search import NEVER_OUTPUT, Hypothesis, max_lengths
from nmt.vocab import BOS_ID, EOS_ID

def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _M1, _M2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """Steele et al.'s splitmix64 step on int64 tensors (wrapping arithmetic): add the golden
    gamma, then the bijective finaliser. Here it hashes counters (Salmon et al. 2011's
    counter-based idea); its statistics are checked by tests/test_sampling.py, not by BigCrush."""
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def counter_uniform(keys: Tensor) -> Tensor:
    """One uniform number in (0, 1) per int64 key, float64, a pure function of it:
    ``splitmix64(key)``, top 53 bits. ``(R,)`` -> ``(R,)``."""
    return (_shr(splitmix64(keys), 11).double() + 0.5) * 2.0 ** -53


def step_keys(seed: int, lines: Tensor, draws: Tensor, step: int) -> Tensor:
    """One int64 key per row from ``(seed, line, draw, step)``, each mixed in turn. ``(R,)``."""
    z = splitmix64(torch.full_like(lines, seed)) + lines
    z = splitmix64(z) + draws
    return splitmix64(z) + step


def filter_log_probs(log_probs: Tensor, topk: int = 0, topp: float = 0.0, temperature: float = 1.0) -> Tensor:
    """``log_probs (R, V)`` divided by ``temperature``, then everything outside the ``topk`` most
    probable tokens (0 = no cut) and outside the nucleus (the smallest set of most probable tokens
    whose tempered probability reaches ``topp``; 0 = no cut) set to -inf. Unnormalised
    (:func:`draw` normalises)."""
    x = log_probs.float() / temperature
    x[:, NEVER_OUTPUT] = float("-inf")  # PAD and BOS are never output (as in beam search)
    if topk and topk < x.shape[-1]:
        kth = x.topk(topk, -1).values[:, -1:]  # (R, 1)
        x = x.masked_fill(x < kth, float("-inf"))
    if topp:
        sorted_x, order = x.sort(-1, descending=True)
        probs = torch.softmax(sorted_x, -1)
        before = probs.cumsum(-1) - probs  # the mass of the tokens ranked above each one
        drop = torch.zeros_like(x, dtype=torch.bool).scatter(-1, order, before >= topp)
        x = x.masked_fill(drop, float("-inf"))
    return x


def draw(x: Tensor, u: Tensor) -> Tensor:
    """One token per row of the unnormalised log-probabilities ``x (R, V)`` (-inf = excluded) for
    the uniform numbers ``u (R,)`` in [0, 1): the first token whose cumulative probability exceeds
    ``u``. A row with nothing left (all -inf) gets its largest entry's index."""
    p = torch.softmax(x.double(), -1)  # (R, V); NaN for an all -inf row
    cdf = p.cumsum(-1)
    total = cdf[:, -1:]  # (R, 1): 1 up to rounding
    target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=x.shape[-1] - 1)
    nothing = ~torch.isfinite(x).any(-1)
    return torch.where(nothing, x.argmax(-1), tokens)


@torch.inference_mode()
def sample_search(model, src: Tensor, lines: Tensor, n: int = 1, temperature: float = 1.0, topk: int = 0,
                  topp: float = 0.0, seed: int = 0, max_len_a: float = 1.5, max_len_b: int = 10,
                  need_attention: bool = False) -> list[list[Hypothesis]]:
    """``n`` samples for each sentence of ``src (B, S)``, the sentences numbered ``lines (B,)``
    (their line numbers in the input: the draws' key). A sample ends at EOS or at the length limit
    (``a * |source| + b`` tokens, EOS included, as in beam search). Each hypothesis's score is its
    log-probability under the model itself (no temperature, no cut); a sentence's samples come
    sorted by it, best first."""
    b, dev = src.shape[0], src.device
    rows = torch.arange(b * n, device=dev)
    sent, draws = rows // n, rows % n  # each row's sentence and draw
    enc = {k: v.repeat_interleave(n, 0) for k, v in model.encode(src).items()}  # encoded once, rows (R, ...)
    limit = max_lengths(enc["src_mask"], max_len_a, max_len_b, num_sources(model))  # (R,)
    real = enc["src_mask"].cpu() if need_attention else None
    state = model.init_state(enc)
    live = rows.clone()  # the original row of each live row
    tokens = torch.full((b * n,), BOS_ID, dtype=torch.long, device=dev)
    history = torch.zeros(b * n, 0, dtype=torch.long, device=dev)
    scores = torch.zeros(b * n, device=dev)
    attn_hist: Tensor | None = None
    found: list[list[Hypothesis]] = [[] for _ in range(b)]
    row_lines = lines.to(dev).long()[sent]
    for step in range(int(limit.max())):
        logp, state, attn = model.step(tokens, state, need_attention=need_attention)  # (R', V)
        x = filter_log_probs(logp, topk, topp, temperature)
        u = counter_uniform(step_keys(seed, row_lines[live], draws[live], step))  # (R',)
        tokens = draw(x, u)  # (R',)
        tokens = torch.where(history.shape[1] + 1 >= limit[live], torch.full_like(tokens, EOS_ID), tokens)
        scores = scores + logp.float().gather(1, tokens[:, None]).squeeze(1)
        history = torch.cat([history, tokens[:, None]], 1)
        if need_attention:
            step_attn = attn.float().cpu()[:, None]  # (R', 1, L, H, S)
            attn_hist = step_attn if attn_hist is None else torch.cat([attn_hist, step_attn], 1)
        ended = tokens == EOS_ID
        if ended.any():
            for i in ended.nonzero().squeeze(1).tolist():
                r = int(live[i])
                a = attn_hist[i][..., real[r]] if need_attention else None
                found[r // n].append(Hypothesis(history[i, :-1].tolist(), float(scores[i]), a))
            keep = (~ended).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            state = reorder(state, keep)
            live, tokens, history, scores = live[keep], tokens[keep], history[keep], scores[keep]
            if attn_hist is not None:
                attn_hist = attn_hist[keep.cpu()]
    return [sorted(h, key=lambda h: -h.score) for h in found]
