"""``nmt prepare``: clean parallel text, train one joint SentencePiece model, cache the ids.

Output folder::

    spm.model                 the joint SentencePiece model (also copied into every checkpoint)
    prepare.json              languages, options, counts kept/dropped per reason, vocab size
    train.ids.pt              encoded training pairs (compact: flat int16/int32 + offsets)
    train.align.pt            (with --train-align) their gold links between pieces (nmt.guided)
    valid.ids.pt, valid.src, valid.ref     (when given) ids + cleaned text for BLEU
    test.ids.pt,  test.src,  test.ref      (when given)
    valid.docs, test.docs     (with --context) where each document starts (nmt.context)

Several source files (``--train-src`` given N times, or ``--src-lang de --src-lang fr``) make a
multi-source corpus (:mod:`nmt.multisource`): a training example is kept only if each of its
sources passes the filters against the target, the SentencePiece model learns from every source
and the target, and ``valid.src``/``test.src`` hold the N sources of a line joined by TABs.

``context = K`` (``--context K`` with a docs file per split) makes a document-context corpus
(:mod:`nmt.context`): each source line becomes K + 1 sources, the line and the K before it in its
document; only the line itself is filtered against the target, and the SentencePiece model learns
from the lines, not again from their copies as context.

Only the training pairs are filtered (length and ratio); valid/test lines are whitespace-normalised
but never dropped, so references stay aligned with their sources.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nmt.context import with_context
from nmt.errors import NmtError
from nmt.multisource import SEPARATOR
from nmt.paths import check_out_folder, make_folder
from nmt.vocab import Vocab, train_sentencepiece

_SPACE = re.compile(r"\s+")


@dataclass
class PrepareOptions:
    vocab_size: int = 8000  # joint SentencePiece vocabulary size
    model_type: str = "unigram"  # unigram | bpe
    max_words: int = 100  # drop training pairs with more words than this on either side
    max_ratio: float = 9.0  # drop training pairs whose word-count ratio exceeds this (Moses' default)
    character_coverage: float = 1.0


def normalise(line: str) -> str:
    """Strip, and collapse every run of whitespace (TABs included) into one space."""
    return _SPACE.sub(" ", line).strip()


def read_lines(path: Path) -> list[str]:
    """Read a UTF-8 text file (BOM and CRLF tolerated, invalid bytes replaced)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NmtError(f"{path}: file not found") from None
    except OSError as e:
        raise NmtError(f"{path}: cannot read ({e.strerror})") from None
    text = data.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:  # an empty file has no lines (not one empty line)
        return []
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def read_parallel(*paths: Path) -> tuple[list[str], ...]:
    """Read files that must have the same number of lines (sources..., target); normalise every line."""
    texts = [read_lines(p) for p in paths]
    for path, text in zip(paths[1:], texts[1:]):
        if len(text) != len(texts[0]):
            raise NmtError(f"{paths[0]} has {len(texts[0])} lines but {path} has {len(text)}; parallel files must "
                           "match line by line")
    return tuple([normalise(x) for x in text] for text in texts)


def read_sources(*paths: Path) -> tuple[list[str], list[str]]:
    """Files ``(source_1, ..., source_N, target)`` -> source lines (the N sources of a line joined
    by TABs, :mod:`nmt.multisource`) and target lines."""
    *sources, tgt = read_parallel(*paths)
    return [SEPARATOR.join(fields) for fields in zip(*sources)], tgt


def clean_pairs(src: list[str], tgt: list[str], max_words: int, max_ratio: float, first_only: bool = False
                ) -> tuple[list[int], Counter]:
    """Indices of the pairs to keep and a count of dropped pairs per reason (with several
    TAB-joined sources, each source against the target; ``first_only``: the first source only,
    as for document context, where the others may be empty)."""
    keep, dropped = [], Counter()
    for i, (s, t) in enumerate(zip(src, tgt)):
        nt, reason = len(t.split()), None
        for ns in (len(field.split()) for field in s.split(SEPARATOR)[: 1 if first_only else None]):
            if ns == 0 or nt == 0:
                reason = "empty"
            elif ns > max_words or nt > max_words:
                reason = reason or "too_long"
            elif max(ns, nt) / min(ns, nt) > max_ratio:
                reason = reason or "ratio"
        if reason:
            dropped[reason] += 1
        else:
            keep.append(i)
    return keep, dropped


def pack(seqs: list[list[int]], vocab_size: int) -> dict[str, torch.Tensor]:
    """Id lists -> ``{"ids": flat (N,), "offsets": (n+1,)}``; int16 when the vocabulary allows."""
    dtype = torch.int16 if vocab_size <= 32767 else torch.int32
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    offsets = torch.zeros(len(seqs) + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    flat = torch.tensor([i for s in seqs for i in s], dtype=dtype)
    return {"ids": flat, "offsets": offsets}


def encode_split(vocab: Vocab, src: list[str], tgt: list[str], sources: int = 1, context: int = 0) -> dict:
    """``{"src": packed ids, "tgt": packed ids}``; with N > 1 TAB-joined sources, ``"src"`` is the
    first source and ``"more_src"`` the list of the others (and ``"context"`` K when the others are
    the K previous sentences, :mod:`nmt.context`)."""
    fields = [line.split(SEPARATOR) for line in src] if sources > 1 else [[line] for line in src]
    fields = [f + [""] * (sources - len(f)) for f in fields]  # an empty line of a context corpus: "" alone
    packed = [pack(vocab.encode([f[i] for f in fields]), len(vocab)) for i in range(sources)]
    out = {"src": packed[0], "tgt": pack(vocab.encode(tgt), len(vocab))}
    if sources > 1:
        out["more_src"] = packed[1:]
    if context:
        out["context"] = context
    return out


def _document_starts(context: int, sources: int, docs: dict, splits: dict, lines: dict[str, int]
                     ) -> dict[str, list[int]]:
    """Before anything is trained: context takes one source file and a docs file for every split
    given (``splits``: name -> its files, or None), each checked against its text's number of lines
    (``lines``, by split: the texts are read already). Returns each split's 0-based document starts
    (nothing without context)."""
    for name, path in docs.items():
        if path and not context:
            raise NmtError(f"--{name}-docs lists documents for --context K; give --context too")
        if path and not splits.get(name):
            raise NmtError(f"--{name}-docs is given without --{name}-src")
    if not context:
        return {}
    if context < 0:
        raise NmtError(f"--context must be >= 0, got {context}")
    if sources > 1:
        raise NmtError("--context K adds the K previous sentences as sources: give one source file")
    from nmt.context import read_doc_starts

    starts = {}
    for name, files in splits.items():
        if not files:
            continue
        if not docs.get(name):
            raise NmtError(f"--context {context} needs --{name}-docs: the line number (from 1) where each "
                           "document starts, one per line")
        starts[name] = read_doc_starts(docs[name], lines[name])
    return starts


_OTHER_SPACE = re.compile(r"[^\S \t]")  # whitespace other than space and TAB (NBSP, thin space, ...)


def _alignment_lines(path: Path, train: tuple[Path, Path], src: list[str], tgt: list[str]
                     ) -> list[list[tuple[int, int]] | None]:
    """The Pharaoh links of every training pair, checked before anything is trained: one line per
    pair, well formed, naming only words the pair has (an error names the line). A pair whose raw
    text has whitespace other than spaces and TABs gets None: an aligner may not have split its
    words there as ``str.split`` does, so its word numbers could be shifted."""
    from nmt.guided import read_pharaoh

    lines = read_lines(path)
    if len(lines) != len(src):
        raise NmtError(f"{path} has {len(lines)} lines but the training files have {len(src)}; "
                       "--train-align needs one Pharaoh line per training pair")
    raw_src, raw_tgt = read_lines(train[0]), read_lines(train[1])
    out: list[list[tuple[int, int]] | None] = []
    for number, (line, s, t) in enumerate(zip(lines, src, tgt), 1):
        try:
            links = read_pharaoh(line)
        except ValueError as e:
            raise NmtError(f"{path}:{number}: {e}") from None
        words = (len(s.split()), len(t.split()))
        if bad := next(((i, j) for i, j in links if i >= words[0] or j >= words[1]), None):
            raise NmtError(f"{path}:{number}: link {bad[0]}-{bad[1]} names a word past the pair's {words[0]} source / "
                           f"{words[1]} target words (links are source-target, counted from 0; a reversed file "
                           "would have them target-source)")
        ambiguous = _OTHER_SPACE.search(raw_src[number - 1]) or _OTHER_SPACE.search(raw_tgt[number - 1])
        out.append(None if ambiguous else links)
    return out


def _piece_alignments(links: list[list[tuple[int, int]]], texts: tuple[list[str], list[str]], vocab: Vocab,
                      encoded: dict) -> tuple[dict, int]:
    """Word links of the kept pairs -> packed piece links (:mod:`nmt.guided`), and the number of
    pairs left without links: those with unusual whitespace (None) and those where SentencePiece's
    words (a piece starting with ▁ starts one) are not the line's whitespace words."""
    from nmt.alignment import word_groups
    from nmt.guided import pack_links, piece_links

    def groups(side: dict, i: int) -> list[list[int]]:
        a, b = int(side["offsets"][i]), int(side["offsets"][i + 1])
        return word_groups(vocab.pieces(side["ids"][a:b].tolist()))

    per_pair, skipped = [], 0
    for i, pair_links in enumerate(links):
        src_groups, tgt_groups = groups(encoded["src"], i), groups(encoded["tgt"], i)
        if pair_links is None or \
                (len(src_groups), len(tgt_groups)) != (len(texts[0][i].split()), len(texts[1][i].split())):
            per_pair.append([])
            skipped += 1
        else:
            per_pair.append(piece_links(pair_links, src_groups, tgt_groups))
    return pack_links(per_pair), skipped


def _read_splits(train: tuple[Path, ...], others: dict[str, tuple[Path, ...] | None]) -> tuple[tuple, dict]:
    """The training split's (sources, targets) and each other split given, by name; an empty one
    is an error (before anything is trained)."""
    splits = {"training": read_sources(*train),
              **{name: read_sources(*files) for name, files in others.items() if files}}
    if empty := next((name for name, (s, _) in splits.items() if not s), None):
        raise NmtError(f"{(train if empty == 'training' else others[empty])[0]}: the {empty} file is empty")
    return splits.pop("training"), splits


def prepare(
    out_dir: Path,
    train: tuple[Path, ...],
    valid: tuple[Path, ...] | None = None,
    test: tuple[Path, ...] | None = None,
    langs: tuple[str, ...] = ("src", "tgt"),
    options: PrepareOptions = PrepareOptions(),
    log=print,
    train_align: Path | None = None,
    context: int = 0,
    docs: dict[str, Path | None] | None = None,
) -> dict:
    """Run the whole preparation; returns the summary also written to ``prepare.json``.
    ``train``/``valid``/``test``: the files ``(source_1, ..., source_N, target)`` (N = 1 usually).
    ``train_align``: Pharaoh word alignments of the training pairs, one line per pair.
    ``context``: K previous sentences per line (:mod:`nmt.context`), with ``docs[split]`` the docs
    file of each split given."""
    if options.model_type not in ("unigram", "bpe"):
        raise NmtError(f"unknown SentencePiece model type {options.model_type!r}; valid: unigram, bpe")
    check_out_folder(out_dir, "-o")
    sources = len(train) - 1
    if sources < 1 or any(split is not None and len(split) != len(train) for split in (valid, test)):
        raise NmtError("every split needs the same source files and one target file")
    if train_align and (sources > 1 or context):
        raise NmtError("--train-align needs a single source without context (word links name one source's words)")
    (src, tgt), split_lines = _read_splits(train, {"valid": valid, "test": test})
    starts = _document_starts(context, sources, docs or {}, {"train": train, "valid": valid, "test": test},
                              {"train": len(src), **{name: len(s) for name, (s, _) in split_lines.items()}})
    align_links = _alignment_lines(train_align, train, src, tgt) if train_align else None
    src = with_context(src, starts.get("train"), context) if context else src
    keep, dropped = clean_pairs(src, tgt, options.max_words, options.max_ratio, first_only=context > 0)
    if not keep:
        raise NmtError(f"{train[0]}: no usable training pairs after cleaning (all {len(src)} dropped)")
    src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
    log(f"train: read {len(keep) + sum(dropped.values())} pairs, kept {len(keep)}, dropped "
        + (", ".join(f"{n} {why}" for why, n in sorted(dropped.items())) or "none"))
    try:
        pieces_text = ([line.split(SEPARATOR)[0] for line in src] if context else
                       [field for line in src for field in line.split(SEPARATOR)] if sources > 1 else src)
        model_bytes = train_sentencepiece(pieces_text + tgt, options.vocab_size, options.model_type, options.character_coverage)
    except ValueError as e:
        raise NmtError(f"{train[0]}: {e}; lower --vocab-size") from None
    make_folder(out_dir, "-o")
    (out_dir / "prepare.json").unlink(missing_ok=True)  # written last: its presence marks a finished prepare
    (out_dir / "spm.model").write_bytes(model_bytes)
    vocab = Vocab(model_bytes)
    sources += context
    encoded = encode_split(vocab, src, tgt, sources, context)
    torch.save(encoded, out_dir / "train.ids.pt")
    summary = {"langs": list(langs), "sources": sources, "context": context, "options": asdict(options),
               "vocab_size": len(vocab), "train": {"kept": len(keep), "dropped": dict(dropped)}}
    (out_dir / "train.align.pt").unlink(missing_ok=True)  # an old one would not match these pairs
    if align_links is not None:
        packed, skipped = _piece_alignments([align_links[i] for i in keep], (src, tgt), vocab, encoded)
        torch.save(packed, out_dir / "train.align.pt")
        summary["train"]["aligned"] = len(keep) - skipped
        log(f"train alignments: {len(keep) - skipped} pairs, {len(packed['links'])} piece links"
            + (f" ({skipped} pairs get none: whitespace other than spaces/TABs, or words SentencePiece split "
               "differently)" if skipped else ""))
    for name, pair in (("valid", valid), ("test", test)):
        if pair is None:  # files of an earlier preparation of this folder would not match this one
            for suffix in ("src", "ref", "ids.pt", "docs"):
                (out_dir / f"{name}.{suffix}").unlink(missing_ok=True)
            continue
        s, t = split_lines[name]
        (out_dir / f"{name}.src").write_text("".join(x + "\n" for x in s), encoding="utf-8")
        (out_dir / f"{name}.docs").unlink(missing_ok=True)
        if context:  # the text stays one sentence per line; its documents go beside it
            (out_dir / f"{name}.docs").write_text("".join(f"{i + 1}\n" for i in starts[name]), encoding="utf-8")
            s = with_context(s, starts[name], context)
        (out_dir / f"{name}.ref").write_text("".join(x + "\n" for x in t), encoding="utf-8")
        torch.save(encode_split(vocab, s, t, sources, context), out_dir / f"{name}.ids.pt")
        summary[name] = {"lines": len(s)}
        log(f"{name}: {len(s)} pairs (not filtered)")
    (out_dir / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"vocabulary: {len(vocab)} pieces ({options.model_type}) -> {out_dir / 'spm.model'}")
    return summary
