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
missing source, encoded as EOS alone. ``hierarchical`` gives it beta = 0; ``flat`` and ``serial``
read it as a one-token sentence that the model learns to discount (no NaN either way). How the
decoder reads the sentences is ``model.combine``: ``gated`` is HAN-NMT's (the sentence's own
attention, the previous sentences' two-level attention, mixed by a gate), ``hierarchical`` HAN's two
levels with the sentence among the candidates of the sentence-level softmax, ``serial`` one
encoder-decoder sublayer per sentence, ``flat`` one attention over all of their words (the
attention counterpart of concatenation).

Documents are given by a docs file: the line number (counted from 1) of the first line of each
document, one per line, ascending, the first being 1 (HAN-NMT's ``-doc`` files list the same starts
counted from 0). Without a docs file, documents are separated by empty lines.
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
            hint = " (0-based starts, as HAN-NMT's .doc files: add 1 to each)" if start == 0 else ""
            raise NmtError(f"{path}:{number}: the first document starts at line {start}, not 1{hint}")
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
    (empty fields where the document has fewer); an empty line stays ``""``. ``starts``: 0-based
    document starts (None: documents end at empty lines). TABs inside a line become spaces."""
    return ContextWindow(k, starts).add(lines, 0)


class ContextWindow:
    """The K previous lines of the current document, carried from one chunk of input to the next
    (``nmt translate`` reads its input in chunks).

    Documents end at the listed starts when there are any; without them, at empty lines (a stream
    of documents separated by blank lines). An empty line is answered with an empty line, so it
    stays ``""`` (no sources); inside a document given by starts it is an empty sentence, and an
    empty field of the next lines' context."""

    def __init__(self, k: int, starts: list[int] | None = None):
        self.k, self.starts = k, None if starts is None else set(starts)
        self.history: list[str] = []  # the current document's previous lines, nearest last

    def add(self, lines: list[str], first: int) -> list[str]:
        """``lines`` (0-based line ``first`` onwards) -> their TAB-joined source lines."""
        out = []
        for i, line in enumerate(lines, first):
            line = line.replace(SEPARATOR, " ")
            empty = not line.strip()
            if (i in self.starts) if self.starts is not None else empty:
                self.history = []
            previous = self.history[::-1][: self.k]
            out.append("" if empty else SEPARATOR.join([line, *previous, *[""] * (self.k - len(previous))]))
            if not empty or self.starts is not None:
                self.history = (self.history + ["" if empty else line])[-self.k :]
        return out


def checkpoint_window(ckpt: dict, docs: Path | None, lines: int | None = None) -> ContextWindow | None:
    """The window a checkpoint's model needs over its input: one of ``meta["context"]`` previous
    sentences for a document-context model (documents from ``docs``, else separated by empty
    lines; ``lines``: the input's length when known), None for any other model (where ``docs`` is
    an error)."""
    k = ckpt.get("meta", {}).get("context", 0)
    if not k:
        if docs is not None:
            raise NmtError("--docs: this model reads no document context (nmt prepare --context K makes one)")
        return None
    return ContextWindow(k, read_doc_starts(docs, lines) if docs is not None else None)
