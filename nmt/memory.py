"""Keep freed CPU memory in the process (glibc): large tensors then reuse pages instead of faulting in new ones.

glibc serves allocations above ``M_MMAP_THRESHOLD`` (at most 32 MB by default) with a fresh ``mmap``
and unmaps them on free, so every training step that makes a (tokens x vocabulary) tensor pays for
page faults on tens of megabytes. Raising the threshold and the trim threshold lets the heap keep
and reuse that memory. On a 2-core Intel CPU (recorded as measured with ``bench/train_throughput.py``,
which did not make this call then; how that run made it is not recorded): Transformer 2,047 ->
2,451 target tokens/s (+20%), LSTM 3,147 -> 3,322 (+6%), for 80-270 MB more peak RSS. On the 2-core AMD EPYC, with the script
now calling it as ``nmt train`` does and ``NMT_KEEP_FREED_MEMORY=0`` for the other side, two
alternating rounds: Transformer 1,678 / 1,903 -> 1,891 / 2,075 (+9-13%), peak RSS the same.
For the decoding commands also one malloc arena for all threads: the search threads
(``SearchOptions.workers``) then share the memory kept instead of each keeping its own (beam 5 with
two workers, 1,000 sentences: peak RSS 499-542 -> 466-475 MB). Training keeps glibc's arenas (one
arena gave 1,798-2,146 against 2,021-2,159 Transformer tokens/s in three alternating runs: not
clearly free).
Off with ``NMT_KEEP_FREED_MEMORY=0``; a no-op off Linux or without glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8


def keep_freed_memory(one_arena: bool = False) -> bool:
    """Tune glibc's malloc for large, short-lived tensors (and with ``one_arena`` let every thread
    allocate from the same arena); True when it took effect. Call it before any thread starts."""
    if sys.platform != "linux" or os.environ.get("NMT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    options = [(_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1), (_M_TOP_PAD, 256 << 20)]
    if one_arena:
        options.append((_M_ARENA_MAX, 1))
    return all(mallopt(option, value) == 1 for option, value in options)
