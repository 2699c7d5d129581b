"""Quality of one checkpoint on a test set: BLEU/chrF plus the attention-failure rates of the lecture.

    python bench/quality.py -m runs/x/best.pt --src prepared/de-en/test.src --ref prepared/de-en/test.ref
    python bench/quality.py -m runs/x/best.pt --src ... --ref ... --coverage-penalty 0.2 --json out.json

Rates (all on whitespace words, so they do not depend on the SentencePiece model):

- ``repetition``: share of outputs with an n-gram (n = 2) that occurs at least twice in the output
  and more often than in the reference (a repeated n-gram absent from the reference).
- ``under_translation``: share of source words that receive less than ``--threshold`` of total
  attention summed over all output steps (pieces merged to words; heads averaged; EOS excluded).
- ``copy_rate``: of the source words that appear verbatim in the reference (names, numbers:
  ``Hockey``, ``5``), the share that also appear in the output. Sentence-initial words are skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def has_repetition(hyp: str, ref: str, n: int = 2) -> bool:
    """Whether ``hyp`` repeats an n-gram more often than ``ref`` contains it (and at least twice)."""
    def grams(ws):
        return Counter(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))

    h, r = grams(words(hyp)), grams(words(ref))
    return any(c >= 2 and c > r[g] for g, c in h.items())


def copy_candidates(src: str, ref: str) -> list[str]:
    """Source words (not sentence-initial, alphanumeric) that the reference contains verbatim."""
    ref_words = set(re.findall(r"\w+", ref))
    return [w for w in re.findall(r"\w+", src)[1:] if w in ref_words and (w[0].isupper() or w.isdigit())]


def under_translated(attention, src_pieces: list[str], tgt_pieces: list[str], threshold: float) -> tuple[int, int]:
    """(source words under ``threshold`` of received attention, source words) for one sentence.

    ``attention``: (T+1, L, H, S+1) as collected by the search; last layer, heads averaged.
    """
    from nmt.alignment import merge_to_words, select_heads

    chosen = select_heads(attention, -1, None)[:-1, :-1]  # (T, S) without EOS
    if chosen.shape[0] == 0:
        return len(src_pieces), len(src_pieces)
    received = merge_to_words(chosen, src_pieces, tgt_pieces).sum(0)  # (source words,)
    return int((received < threshold).sum()), int(received.numel())


def measure(model_path: str, src_path: str, ref_path: str, beam: int, coverage_penalty: float,
            threshold: float) -> dict:
    import torch

    from nmt.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt.evaluate import score
    from nmt.prepare import read_lines
    from nmt.translate import SearchOptions, Translator, clean_line

    model, vocab = model_from_checkpoint(load_checkpoint(Path(model_path)))
    src, refs = read_lines(Path(src_path)), read_lines(Path(ref_path))
    translator = Translator(model, vocab, SearchOptions(beam=beam, coverage_penalty=coverage_penalty))
    start = time.perf_counter()
    with torch.inference_mode():
        hyps = translator.hypotheses(src, need_attention=True)
    seconds = time.perf_counter() - start
    outputs = [vocab.decode(h[0].tokens) if h else "" for h in hyps]
    under = total = 0
    for line, h in zip(src, hyps):
        if not h:
            continue
        src_ids = vocab.encode([clean_line(line)])[0][: h[0].attention.shape[-1] - 1]
        u, t = under_translated(h[0].attention, vocab.pieces(src_ids), vocab.pieces(h[0].tokens), threshold)
        under, total = under + u, total + t
    cands = [(w, out) for s, r, out in zip(src, refs, outputs) for w in copy_candidates(s, r)]
    scores = score(outputs, refs)
    return {"bleu": scores["bleu"]["score"], "chrf": scores["chrf"]["score"],
            "repetition": sum(has_repetition(h, r) for h, r in zip(outputs, refs)) / len(refs),
            "under_translation": under / max(total, 1),
            "copy_rate": sum(w in re.findall(r"\w+", out) for w, out in cands) / max(len(cands), 1),
            "copy_candidates": len(cands), "decode_s": round(seconds, 1), "beam": beam,
            "coverage_penalty": coverage_penalty, "signature": scores["bleu"]["signature"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--coverage-penalty", type=float, default=0.0)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    result = measure(args.model, args.src, args.ref, args.beam, args.coverage_penalty, args.threshold)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
