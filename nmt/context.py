"""Document context: a sentence is translated with the K sentences before it in its document.

Sentence-level NMT cannot know what "it" refers to when the noun is in the previous sentence.
Document-level models read that context too (Tiedemann & Scherrer 2017, DiscoMT: the previous
sentence concatenated; Wang et al. 2017, EMNLP: cross-sentence context; Miculicich et al. 2018,
EMNLP: hierarchical attention networks, word-level attention within each previous sentence, then
sentence-level attention across them, after Yang et al. 2016's HAN).

Here a context model is a multi-source model (:mod:`nmt.multisource`) whose sources are the
sentence itself and the K previous sentences, nearest first::

    fields = [x_i, x_{i-1}, ..., x_{i-K}]        (TAB-joined in text)

A previous sentence from another document, or before the first line, is an empty field: a
missing source, encoded as EOS alone, which every combination gives weight 0 (no NaN). How the
decoder reads the sentences is ``model.combine``: ``hierarchical`` is HAN's two levels (per
sentence, then a softmax over the sentences' contexts; the current sentence is one of them, where
HAN adds it through a gate), ``serial`` one encoder-decoder sublayer per sentence, ``flat`` one
attention over all of their words (the attention counterpart of concatenation).

Documents are given by a docs file: the line number (counted from 1) of the first line of each
document, one per line, ascending, the first being 1 (HAN-NMT's ``-doc`` file lists the same
starts). In ``nmt translate`` an empty input line also ends a document.
"""

from __future__ import annotations

from pathlib import Path

from nmt.errors import NmtError
from nmt.multisource import SEPARATOR


def read_doc_starts(path: Path, lines: int | None) -> list[int]:
    """The 0-based first line of each document from a docs file (1-based numbers, ascending, the
    first 1, none past ``lines``; None: a stream of unknown length). Every fault is a one-line
    error naming the docs file's line."""
    from nmt.prepare import read_lines

    starts: list[int] = []
    for number, text in enumerate(read_lines(path), 1):
        text = text.strip()
        if not text:
            continue
        if not (text.isascii() and text.isdigit()):
            raise NmtError(f"{path}:{number}: {text!r} is not a line number (a docs file lists the line, from 1, "
                           "where each document starts)")
        start = int(text)
        if not starts and start != 1:
            raise NmtError(f"{path}:{number}: the first document starts at line {start}, not 1")
        if starts and start <= starts[-1] + 1:
            raise NmtError(f"{path}:{number}: line {start} does not come after line {starts[-1] + 1}; "
                           "document starts must ascend")
        if lines is not None and start > lines:
            raise NmtError(f"{path}:{number}: line {start} is past the {lines} lines of the text")
        starts.append(start - 1)
    if not starts and lines != 0:
        raise NmtError(f"{path}: lists no document starts")
    return starts


def with_context(lines: list[str], starts: list[int] | None, k: int) -> list[str]:
    """Each line joined by TABs with the ``k`` lines before it in its document, nearest first
    (empty fields where the document has fewer). ``starts``: 0-based document starts (None: the
    whole text is one document). TABs inside a line become spaces."""
    window = ContextWindow(k, starts)
    return window.add(lines, 0)


class ContextWindow:
    """The K previous lines of the current document, carried from one chunk of input to the next
    (``nmt translate`` reads its input in chunks). A document ends at a listed start and at an
    empty line; an empty line stays empty (no sources at all: it is answered with an empty line)."""

    def __init__(self, k: int, starts: list[int] | None = None):
        self.k, self.starts = k, set(starts or ())
        self.history: list[str] = []  # the current document's previous lines, nearest last

    def add(self, lines: list[str], first: int) -> list[str]:
        """``lines`` (0-based line ``first`` onwards) -> their TAB-joined source lines."""
        out = []
        for i, line in enumerate(lines, first):
            line = line.replace(SEPARATOR, " ")
            if i in self.starts or not line.strip():
                self.history = []
            if not line.strip():
                out.append("")
                continue
            previous = self.history[::-1][: self.k]
            out.append(SEPARATOR.join([line, *previous, *[""] * (self.k - len(previous))]))
            self.history = (self.history + [line])[-self.k :] if self.k else []
        return out


def checkpoint_window(ckpt: dict, docs: Path | None) -> ContextWindow | None:
    """The window a checkpoint's model needs over its input: one of ``meta["context"]`` previous
    sentences for a document-context model (documents from ``docs`` and empty lines), None for
    any other model (where ``docs`` is an error)."""
    k = ckpt.get("meta", {}).get("context", 0)
    if not k:
        if docs is not None:
            raise NmtError("--docs: this model reads no document context (nmt prepare --context K makes one)")
        return None
    return ContextWindow(k, read_doc_starts(docs, None) if docs is not None else None)
