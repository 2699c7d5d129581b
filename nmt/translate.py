"""Translating text: a :class:`Translator` for lists of lines, and a streaming line reader/writer.

Guarantees: exactly one output line per input line, in input order. An empty or whitespace-only
line gives an empty line; invalid UTF-8 is decoded with replacement characters; a line longer
than ``max_src_tokens`` pieces is truncated (with one warning); control characters and TABs
inside a line are treated as spaces. Output is written and flushed chunk by chunk. A model of N > 1
sources reads the N sources of a line separated by TABs (:mod:`nmt.multisource`); another number
of fields is a one-line error naming the line.
"""

from __future__ import annotations

import io
import re
import select
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO, Callable, Iterator

import torch

from nmt.device import amp_warning, autocast, check_amp
from nmt.multisource import num_sources, pack_sources, split_fields
from nmt.search import Hypothesis, beam_search
from nmt.vocab import EOS_ID

_SPACE = re.compile(r"[\s\x00-\x1f\x7f]+")


def clean_line(line: str) -> str:
    """Control characters and any whitespace run -> one space; stripped."""
    return _SPACE.sub(" ", line).strip()


@dataclass
class SearchOptions:
    beam: int = 5
    alpha: float = 0.6  # GNMT length penalty exponent
    max_len_a: float = 1.5  # output length limit = a * source length + b
    max_len_b: int = 10
    n_best: int = 1
    coverage_penalty: float = 0.0  # GNMT beta (0 = off)
    batch_size: int | None = None  # at most this many sentences per decoding batch (None: the device's, BATCH_LIMITS)
    batch_tokens: int | None = None  # and at most this many hypotheses x longest source (0 = no limit; None: as above)
    max_src_tokens: int = 250  # longer inputs are truncated (with a warning)
    workers: int = 0  # batches searched at once, one thread each (0 = auto: 2 on a CPU with >= 2 threads; GPU: 1)
    amp: str = "none"  # bf16 | fp16: autocast while searching (fp16 CUDA only; CPU bf16 is slow without native bf16)
    sample: bool = False  # draw n_best samples per line instead of searching (nmt.sampling; beam and alpha unused)
    sample_topk: int = 0  # sampling: only from the k most probable tokens (0 = all)
    sample_topp: float = 0.0  # sampling: only from the nucleus holding this probability (0 = all)
    temperature: float = 1.0  # sampling: divides the log-probabilities (< 1 sharper, > 1 flatter)
    seed: int = 0  # sampling: with the line number, decides every draw (the same output in any batch)


QUANTIZE = ("none", "int8")

# Decoding batch limits by device type: (sentences, hypotheses x longest source). On a CPU larger
# batches buy little and cost memory (two workers, beam 5, 1,000 sentences: 10,000 tokens took 0.98x
# the time of 5,000 at +6-15% peak RSS). On a GPU the CPU's batches leave it waiting on kernel
# launches: H200, the 1,000 test sentences, decoding only, greedy / beam 5: 982 / 620 sentences/s at
# (128, 5,000), 4,941 / 2,263 at (1,000, 50,000) with 621 / 475 MB of GPU memory, 5,811 / 3,604 in
# one batch with 621 / 920 MB (docs/performance.md). The token cap bounds the beam-search state of
# larger models (it grows with hypotheses x length x layers x d_model).
BATCH_LIMITS = {"cpu": (128, 5_000), "cuda": (1_000, 50_000)}


def batch_limits(opt: SearchOptions, device: torch.device) -> tuple[int, int]:
    """``(sentences, tokens)`` per decoding batch: the options' own where given, else the device
    type's from :data:`BATCH_LIMITS` (the CPU's for other devices)."""
    size, tokens = BATCH_LIMITS.get(device.type, BATCH_LIMITS["cpu"])
    return (size if opt.batch_size is None else opt.batch_size,
            tokens if opt.batch_tokens is None else opt.batch_tokens)


def quantize(model, mode: str, device):
    """``int8``: dynamic quantisation for CPU decoding (Linear and LSTM weights stored as int8,
    activations quantised on the fly per batch); ``none`` leaves the model as it is. A tied output
    layer gets its own copy of the embedding matrix first (:func:`nmt.models.untie_output`), so the
    vocabulary projection, a quarter of beam-search time in float, is quantised as well. Its BLEU
    cost is measured by ``bench/decode.py --quantize int8``."""
    from nmt.errors import NmtError

    if mode not in QUANTIZE:
        raise NmtError(f"unknown --quantize {mode!r}; valid: {', '.join(QUANTIZE)}")
    if mode == "none":
        return model
    if torch.device(device).type != "cpu":
        raise NmtError("--quantize int8 is for CPU decoding (dynamic int8 has no GPU kernels); use --device cpu")
    import warnings

    from torch.ao.quantization import quantize_dynamic

    from nmt.models import untie_output

    untie_output(model)
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8, inplace=True)


def for_decoding(model, quantize_mode: str, device):
    """The model as decoding runs it: on ``device``, quantised as ``quantize_mode`` asks
    (:func:`quantize`), and on a CPU its fp32 linear layers through oneDNN (:mod:`nmt.onednn`;
    beam 5 on the 2-core AMD EPYC, 1,000 sentences, a whole ``nmt translate``: 5.3 s against 7.0 s
    with MKL's fp32 products, the same output)."""
    model = quantize(model.to(device), quantize_mode, device)
    if torch.device(device).type == "cpu":
        from nmt.onednn import use_onednn

        use_onednn(model)
    return model


def length_batches(lengths: list[int], max_sentences: int, max_tokens: int = 0) -> list[list[int]]:
    """Cut positions ``0..n-1`` of length-sorted ``lengths`` into consecutive batches of at most
    ``max_sentences`` sentences and (when ``max_tokens`` > 0) at most ``max_tokens`` tokens counted
    as sentences x longest: long sentences come in smaller batches, which bounds the memory of
    beam search (its state grows with hypotheses x length). A single sentence always fits."""
    batches, start = [], 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and end - start < max_sentences and \
                (not max_tokens or (end + 1 - start) * lengths[end] <= max_tokens):
            end += 1
        batches.append(list(range(start, end)))
        start = end
    return batches


def decode_workers(requested: int, device: torch.device, threads: int) -> int:
    """How many batches to search at once. On a CPU, ``requested`` > 0 is taken as it is and 0
    (auto) means 2 when torch has at least 2 intra-op ``threads``, else 1; on a GPU always 1 (one
    stream, and the attention-kernel choice there is a process-wide setting). On a CPU a search
    step is a few large products (which use every thread) between many small operations and Python
    (which use one): two searches side by side, each on half the threads, keep both cores busy
    (beam 5 on 2 cores: +22-36% sentences/s decoding only, +13-15% for a whole ``nmt translate``,
    the same 1,000 lines; ``bench/decode.py --workers``). A product on fewer threads may round
    differently in the last bits, so a score can differ slightly from one worker's on all threads."""
    if device.type != "cpu":
        return 1
    if requested > 0:
        return requested
    return 2 if threads >= 2 else 1


_THREADS = threading.Lock()  # map_in_threads changes torch's process-wide thread count: one caller at a time


def map_in_threads(fn: Callable, items: list, workers: int) -> list:
    """``[fn(x) for x in items]``, on ``min(workers, len(items))`` threads. While they run, torch's
    intra-op threads are shared out among them (``total // workers`` each; set back afterwards), and
    another caller waits (the thread count is process-wide). The items are started last first
    (length-sorted batches: the longest first, so that no thread is left with a long batch at the
    end). Thread-local torch modes (autocast, inference mode) do not reach the threads: ``fn`` sets
    its own. On Ctrl-C the items not started are dropped and the running ones are not waited for."""
    workers = min(workers, len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    with _THREADS:
        total = torch.get_num_threads()
        torch.set_num_threads(max(1, total // workers))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="nmt-search")
        finished = False
        try:
            out = list(pool.map(fn, items[::-1]))[::-1]
            finished = True
            return out
        finally:
            pool.shutdown(wait=finished, cancel_futures=True)
            torch.set_num_threads(total)


def search_batch(model, opt: SearchOptions, device: torch.device, items: list[tuple[list[list[int]], int]],
                 need_attention: bool) -> list[list[Hypothesis]]:
    """Beam search (or sampling, ``opt.sample``) over one batch: per sentence the id sequences of
    its N sources, padded into ``(B, N * S')`` (:func:`nmt.multisource.pack_sources`), and its line
    number (the key of its samples), under the options' autocast, which is thread-local and so is
    set here, in the thread that searches."""
    seqs = [s for s, _ in items]
    src = pack_sources(seqs, len(seqs[0]))  # (B, S)
    with autocast(device, opt.amp, "--amp"):
        if opt.sample:
            from nmt.sampling import sample_search

            return sample_search(model, src.to(device), torch.tensor([n for _, n in items]), opt.n_best,
                                 opt.temperature, opt.sample_topk, opt.sample_topp, opt.seed, opt.max_len_a,
                                 opt.max_len_b, need_attention)
        return beam_search(model, src.to(device), opt.beam, opt.max_len_a, opt.max_len_b, opt.alpha, opt.n_best,
                           need_attention, opt.coverage_penalty)


def search_in_halves(search: Callable[[list], list], seqs: list,
                     warn: Callable[[], None] = lambda: None) -> list:
    """``search(seqs)``; when that runs out of (GPU) memory, each half of ``seqs`` on its own, down
    to one sentence, whose failure is a one-line error. The results are in ``seqs``' order either way."""
    from nmt.errors import NmtError

    try:
        return search(seqs)
    except torch.OutOfMemoryError:
        if len(seqs) == 1:
            raise NmtError("out of memory on a single sentence; try --device cpu, or a smaller --beam (--n-best with --sample)") from None
    warn()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = len(seqs) // 2
    return search_in_halves(search, seqs[:half], warn) + search_in_halves(search, seqs[half:], warn)


class Translator:
    """Holds a model, its vocabulary and search options; translates lists of lines."""

    def __init__(self, model, vocab, options: SearchOptions = SearchOptions(), device="cpu",
                 warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
        self.model, self.vocab, self.opt, self.device, self.warn = model, vocab, options, torch.device(device), warn
        self.sources = num_sources(model)
        self._warned: set[str] = set()  # the warnings given once already
        autocast(self.device, options.amp, "--amp")  # an unknown or unusable --amp fails here, before any input
        check_amp(model, self.device, options.amp, "--amp")
        if (warning := amp_warning(self.device, options.amp, "--amp")) is not None:
            warn(warning)

    def _encode(self, lines: list[list[str]]) -> list[list[list[int]]]:
        """Per line its sources' ids, each truncated to ``max_src_tokens`` and ending in EOS."""
        ids = iter(self.vocab.encode([field for fields in lines for field in fields]))
        out = []
        for fields in lines:
            out.append([])
            for seq in (next(ids) for _ in fields):
                if len(seq) > self.opt.max_src_tokens:
                    self._warn_once(f"warning: input lines longer than {self.opt.max_src_tokens} pieces are truncated")
                    seq = seq[: self.opt.max_src_tokens]
                out[-1].append(seq + [EOS_ID])
        return out

    def sources_of(self, lines: list[str], first_line: int = 1) -> list[list[str]]:
        """Per line its cleaned sources: one, or the model's N TAB-separated ones (a wrong number
        is an error naming the line, counted from ``first_line``); ``[]`` for an empty line."""
        out = []
        for number, line in enumerate(lines, first_line):
            if not clean_line(line):
                out.append([])
            else:
                out.append([clean_line(f) for f in split_fields(line, self.sources, f"input line {number}")])
        return out

    def hypotheses(self, lines: list[str], need_attention: bool = False, first_line: int = 1) -> list[list[Hypothesis]]:
        """The n-best hypotheses per line (an empty list for an empty line), in input order.
        ``first_line``: the number of ``lines[0]`` in the whole input, for error messages."""
        cleaned = self.sources_of(lines, first_line)
        todo = [i for i, x in enumerate(cleaned) if x]
        results: list[list[Hypothesis]] = [[] for _ in lines]
        if not todo:
            return results
        ids = self._encode([cleaned[i] for i in todo])
        lengths = [len(ids[j]) * max(map(len, ids[j])) for j in range(len(todo))]  # N x the longest source
        order = sorted(range(len(todo)), key=lambda j: lengths[j])
        self.model.eval()
        size, tokens = batch_limits(self.opt, self.device)
        rows = self.opt.n_best if self.opt.sample else self.opt.beam  # hypotheses per sentence
        budget = max(1, tokens // rows) if tokens else 0  # sentences x longest
        batches = [[order[i] for i in chunk] for chunk in length_batches([lengths[j] for j in order], size, budget)]

        workers = decode_workers(self.opt.workers, self.device, torch.get_num_threads())
        search = partial(search_in_halves, partial(search_batch, self.model, self.opt, self.device,
                                                   need_attention=need_attention),
                         warn=partial(self._warn_once, "warning: out of memory on a decoding batch: searching it in "
                                                       "halves (a lower --batch-tokens avoids the retries)"))
        items = [[(ids[j], first_line + todo[j]) for j in chunk] for chunk in batches]  # (sources, line number)
        found = map_in_threads(search, items, workers)
        for chunk, out in zip(batches, found):
            for row, j in enumerate(chunk):
                results[todo[j]] = out[row]
        return results

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.warn(message)

    def translate(self, lines: list[str]) -> list[str]:
        """One detokenised translation per line (empty for empty input)."""
        return [self.vocab.decode(h[0].tokens) if h else "" for h in self.hypotheses(lines)]

    def format_nbest(self, hyps: list[Hypothesis]) -> str:
        """``text<TAB>score`` for each of the n best, TAB-joined on one line."""
        return "\t".join(f"{self.vocab.decode(h.tokens)}\t{h.score:.4f}" for h in hyps)


def read_chunks(stream: BinaryIO, max_lines: int, warn: Callable[[str], None]) -> Iterator[list[str]]:
    """Yield lists of decoded lines from a binary stream, as soon as they are available.

    A chunk ends at ``max_lines`` lines or when no more input is ready right now, so that an
    interactive producer gets each answer without closing its end. Handles CRLF, a UTF-8 BOM,
    invalid UTF-8 (replaced, one warning) and a last line without a newline.
    """
    buf, lines, first, warned = b"", [], True, False
    read = getattr(stream, "read1", stream.read)  # read1: what is there now, without waiting for more

    def decode(raw: bytes) -> str:
        nonlocal first, warned
        if first:
            first = False
            raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
        text = raw.decode("utf-8", errors="replace")
        if "\ufffd" in text and not warned and b"\xef\xbf\xbd" not in raw:
            warn("warning: input has invalid UTF-8; bad bytes were replaced")
            warned = True
        return text[:-1] if text.endswith("\r") else text

    while True:
        if lines and not _readable(stream):  # nothing more right now: answer what we have
            yield lines
            lines = []
            continue
        data = read(1 << 16)  # blocks only when nothing is pending
        if not data:  # end of input
            if buf:
                lines.append(decode(buf))
            while lines:
                yield lines[:max_lines]
                lines = lines[max_lines:]
            return
        *complete, buf = (buf + data).split(b"\n")
        lines.extend(decode(x) for x in complete)
        while len(lines) >= max_lines:
            yield lines[:max_lines]
            lines = lines[max_lines:]


def _readable(stream: BinaryIO) -> bool:
    """Whether more input is ready now (always true for files and in-memory streams)."""
    try:
        return bool(select.select([stream.fileno()], [], [], 0)[0])
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return True
