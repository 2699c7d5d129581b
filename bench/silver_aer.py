"""AER of attention against silver word alignments of Multi30k test2016 (no gold ones exist here).

    python bench/silver_aer.py --runs runs/plain runs/agree      # each run folder's last.pt (+ last.reverse.pt)

The silver links come from a small fast_align-style aligner (Dyer et al. 2013: IBM model 1 with a
diagonal prior, a fixed tension, 5 EM iterations, lower-cased whitespace words), trained on the
training and test text in both directions; sure = the two directions' intersection, possible =
their union. It stands in for eflomal, which is not among the dependencies, and it is weak: the
diagonal alignment alone scores an AER of about 0.37 against it, so read differences between runs,
not absolute values. For each run, the teacher-forced attention on the test pairs (pieces merged to
words, argmax per target word) is scored for head 0 of the last layer and for the mean over the heads
of each of the last two layers (the last alone for an LSTM or a one-layer decoder); a run with
``last.reverse.pt`` (``train.agreement``) adds its reverse model and the intersection of the two
directions.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def diagonal_prior(m: int, n: int, tension: float = 4.0, null: float = 0.08) -> np.ndarray:
    """``(m, n + 1)``: p(a_i = j) for source word i over NULL (column 0) and the n target words."""
    i = (np.arange(m)[:, None] + 1) / m
    j = (np.arange(n)[None, :] + 1) / n
    p = np.exp(-tension * np.abs(i - j))
    return np.concatenate([np.full((m, 1), null), p / p.sum(1, keepdims=True) * (1 - null)], 1)


def train_aligner(f_side: list[list[str]], e_side: list[list[str]], iterations: int = 5):
    """EM for p(f | e); returns ``align(f_words, e_words) -> {(i_f, j_e)}`` (argmax, NULL dropped)."""
    probs: dict = {}
    for _ in range(iterations):
        counts, totals = collections.defaultdict(float), collections.defaultdict(float)
        for f, e in zip(f_side, e_side):
            if not f or not e:
                continue
            e0 = [None, *e]
            post = np.array([[probs.get((a, b), 1e-2) for b in e0] for a in f]) * diagonal_prior(len(f), len(e))
            post /= post.sum(1, keepdims=True)
            for x, a in enumerate(f):
                for y, b in enumerate(e0):
                    counts[(a, b)] += post[x, y]
                    totals[b] += post[x, y]
        probs = {k: v / totals[k[1]] for k, v in counts.items()}

    def align(f: list[str], e: list[str]) -> set[tuple[int, int]]:
        if not f or not e:
            return set()
        post = np.array([[probs.get((a, b), 1e-9) for b in [None, *e]] for a in f]) * diagonal_prior(len(f), len(e))
        return {(x, int(b) - 1) for x, b in enumerate(post.argmax(1)) if b > 0}

    return align


def silver(data: Path, raw: Path) -> list[tuple[set, set]]:
    """(sure, possible) links (source word, target word) of every test pair."""
    words = lambda path: [line.lower().split() for line in path.read_text(encoding="utf-8").splitlines()]
    test_src, test_tgt = words(data / "test.src"), words(data / "test.ref")
    src, tgt = words(raw / "train.de") + test_src, words(raw / "train.en") + test_tgt
    forward, backward = train_aligner(src, tgt), train_aligner(tgt, src)
    out = []
    for s, t in zip(test_src, test_tgt):
        a, b = forward(s, t), {(i, j) for j, i in backward(t, s)}
        out.append((a & b, a | b))
    return out


def attention_layers(model, vocab) -> int:
    """How many layers of attention ``model`` reports (an LSTM or a one-layer decoder: 1)."""
    import torch

    from nmt.vocab import BOS_ID, EOS_ID

    with torch.inference_mode():
        out = model.eval()(torch.tensor([vocab.encode(["a"])[0] + [EOS_ID]]), torch.tensor([[BOS_ID]]),
                           need_attention=True)
    return out.attention.shape[1]  # (B, L, H, T, S)


def head_links(model, vocab, src: str, tgt: str, layer: int, head: int | None) -> set[tuple[int, int]] | None:
    """Argmax word links (source, target) of one head (None: the layer's mean), teacher-forced;
    None when SentencePiece's words are not the whitespace words."""
    import torch

    from nmt.alignment import merge_to_words
    from nmt.vocab import BOS_ID, EOS_ID

    si, ti = vocab.encode([src])[0], vocab.encode([tgt])[0]
    with torch.inference_mode():
        out = model(torch.tensor([si + [EOS_ID]]), torch.tensor([[BOS_ID] + ti]), need_attention=True)
    a = out.attention[0, layer]  # (H, T, S)
    w = merge_to_words((a[head] if head is not None else a.mean(0))[: len(ti), : len(si)], vocab.pieces(si),
                       vocab.pieces(ti))  # (Tw, Sw)
    if w.shape != (len(tgt.split()), len(src.split())):
        return None
    return {(int(w[j].argmax()), j) for j in range(w.shape[0])}


def main() -> int:
    import os

    from nmt.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt.guided import aer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run folders (last.pt, and last.reverse.pt if any)")
    ap.add_argument("--data", default="prepared/de-en")
    ap.add_argument("--raw", default=os.path.join(os.environ.get("NMT_DATA_HOME", "../shared/data"), "multi30k", "raw"))
    args = ap.parse_args()
    data = Path(args.data)
    links = silver(data, Path(args.raw))
    pairs = list(zip((data / "test.src").read_text().splitlines(), (data / "test.ref").read_text().splitlines()))
    diagonal = [aer({(min(len(s.split()) - 1, round(j * len(s.split()) / len(t.split()))), j)
                     for j in range(len(t.split()))}, *gold) for (s, t), gold in zip(pairs, links)]
    print(f"silver: {sum(len(s) for s, _ in links)} sure / {sum(len(p) for _, p in links)} possible links; "
          f"diagonal alignment AER {sum(diagonal) / len(diagonal):.3f}")
    for run in map(Path, args.runs):
        forward, vocab = model_from_checkpoint(load_checkpoint(run / "last.pt"))
        reverse = (model_from_checkpoint(load_checkpoint(run / "last.reverse.pt"))[0]
                   if (run / "last.reverse.pt").exists() else None)
        views = [(-1, 0), (-1, None)] + ([(-2, None)] if attention_layers(forward, vocab) > 1 else [])
        for layer, head in views:
            scores = collections.defaultdict(list)
            for (s, t), gold in zip(pairs, links):
                f = head_links(forward.eval(), vocab, s, t, layer, head)
                if f is None:
                    continue
                scores["forward"].append(aer(f, *gold))
                if reverse is not None:
                    r = {(i, j) for j, i in head_links(reverse.eval(), vocab, t, s, layer, head) or set()}
                    scores["reverse"].append(aer(r, *gold))
                    scores["intersection"].append(aer(f & r, *gold))
            where = f"layer {layer}, " + (f"head {head}" if head is not None else "mean of heads")
            print(f"{run}: {where}: " + ", ".join(f"{k} AER {sum(v) / len(v):.3f}" for k, v in scores.items())
                  + f" ({len(scores['forward'])} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
