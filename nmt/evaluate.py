"""Scoring with sacreBLEU's Python API: BLEU and chrF (TER optional), with their signatures."""

from __future__ import annotations

from nmt.errors import NmtError


def score(hyps: list[str], refs: list[str], metrics: tuple[str, ...] = ("bleu", "chrf")) -> dict:
    """Corpus scores of ``hyps`` against one reference each; identical to the sacrebleu CLI defaults.

    Returns ``{"bleu": {"score", "signature", "text"}, "chrf": {...}}``.
    """
    from sacrebleu.metrics import BLEU, CHRF, TER

    if len(hyps) != len(refs):
        raise NmtError(f"hypotheses have {len(hyps)} lines but references have {len(refs)}; they must match")
    classes = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
    out = {}
    for name in metrics:
        metric = classes[name]()
        result = metric.corpus_score(hyps, [refs])
        out[name] = {"score": round(result.score, 2 if name != "ter" else 2), "signature": str(metric.get_signature()),
                     "text": str(result)}
    return out


def bleu(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU (sacreBLEU defaults: 13a tokenisation, cased)."""
    from sacrebleu.metrics import BLEU

    return BLEU().corpus_score(hyps, [refs]).score
