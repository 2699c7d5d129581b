"""Decoding speed and quality on a test set: sentences/s and target tokens/s, greedy and beam 5.

    python bench/decode.py -m runs/tf60/best.pt --src prepared/de-en/test.src --ref prepared/de-en/test.ref

Two timings per setting, both on ``--device`` (default cpu): the whole process (``nmt translate``
as a user runs it, start-up and model loading included; its peak RSS from the OS) and pure
decoding (in this process, model already loaded, ``Translator.translate`` over all lines).
BLEU/chrF of the output with sacreBLEU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_measured, table, usable_amps, write_json  # noqa: E402


def whole_process(model: str, src: str, beam: int, batch_size: int | None, batch_tokens: int | None,
                  quantize: str, device: str, amp: str, workers: int) -> tuple[float, list[str], float]:
    """Run ``nmt translate`` once: seconds, output lines, and that process's own peak RSS in MiB.
    A batch limit of None is left to ``nmt translate``'s default for the device."""
    limits = [] if batch_size is None else ["--batch-size", str(batch_size)]
    limits += [] if batch_tokens is None else ["--batch-tokens", str(batch_tokens)]
    seconds, out, _, rss = run_measured([sys.executable, "-m", "nmt_cli.main", "translate", "-m", model, "-i", src,
                                         "--beam", str(beam), *limits, "--quantize", quantize, "--device", device,
                                         "--amp", amp, "--workers", str(workers)])
    return seconds, out.splitlines(), rss


def measure(model, vocab, src: list[str], ref: list[str], beam: int, amp: str, device, args) -> dict:
    """One row: pure decoding in this process, then the whole ``nmt translate`` process, same settings."""
    import torch

    from nmt.evaluate import score
    from nmt.translate import SearchOptions, Translator, batch_limits, decode_workers

    opts = SearchOptions(beam=beam, batch_size=args.batch_size, batch_tokens=args.batch_tokens, amp=amp,
                         workers=args.workers)
    tr = Translator(model, vocab, opts, device=device)
    size, cap = batch_limits(opts, device)
    cuda = device.type == "cuda"
    with torch.inference_mode():
        tr.translate(src[:size])  # warm-up: first-call set-up (CUDA context and kernels, allocator)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        hyps = tr.translate(src)
        if cuda:
            torch.cuda.synchronize(device)
        pure = time.perf_counter() - t0
    whole, hyps_cli, rss = whole_process(args.model, args.src, beam, args.batch_size, args.batch_tokens,
                                         args.quantize, str(device), amp, args.workers)
    same = sum(a == b for a, b in zip(hyps_cli, hyps))
    assert len(hyps_cli) == len(hyps) and (same == len(hyps) or cuda), "CLI and in-process translations differ"
    tokens = sum(len(x) for x in vocab.encode(hyps)) + len(hyps)  # pieces + EOS
    s = score(hyps, ref)
    workers = decode_workers(args.workers, device, torch.get_num_threads())
    row = {"beam": beam, "workers": workers, "device": str(device), "quantize": args.quantize, "amp": amp,
           "batch_size": size, "batch_tokens": cap, "sentences": len(src),
           "pure_sent_s": len(src) / pure, "pure_tok_s": tokens / pure, "whole_sent_s": len(src) / whole,
           "whole_s": whole, "peak_rss_mb": rss, "cli_same_lines": same, "bleu": s["bleu"]["score"],
           "chrf": s["chrf"]["score"], "signature": s["bleu"]["signature"]}
    if cuda:
        row["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--beams", nargs="+", type=int, default=[1, 5])
    ap.add_argument("--batch-size", type=int, default=None, help="as nmt translate's (default: the device's)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="as nmt translate's (0 = no cap; default: the device's)")
    ap.add_argument("--workers", type=int, default=0, help="as nmt translate's (0 = auto)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto, for both timings")
    ap.add_argument("--quantize", default="none", help="none | int8 (dynamic int8, CPU)")
    ap.add_argument("--amp", nargs="+", default=["none"], help="none | bf16 | fp16 autocast while decoding (each one a row)")
    ap.add_argument("--out", default="bench/results/decode.json")
    args = ap.parse_args()

    from nmt.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt.prepare import read_lines
    from nmt.device import pick_device
    from nmt.translate import for_decoding

    from nmt.memory import keep_freed_memory

    keep_freed_memory(one_arena=True)  # as nmt translate does
    src, ref = read_lines(Path(args.src)), read_lines(Path(args.ref))
    model, vocab = model_from_checkpoint(load_checkpoint(Path(args.model)))
    device = pick_device(args.device)
    model = for_decoding(model, args.quantize, device)
    rows = []
    amps = args.amp if device.type == "cuda" else usable_amps(args.amp, cuda=False)
    if not amps:
        ap.error("nothing to measure: add --amp none")
    for amp in amps:
        for beam in args.beams:
            rows.append(measure(model, vocab, src, ref, beam, amp, device, args))
            print(rows[-1], file=sys.stderr)
    columns = ["beam", "workers", "device", "quantize", "amp", "batch_size", "batch_tokens", "sentences",
               "pure_sent_s", "pure_tok_s", "whole_sent_s", "whole_s", "peak_rss_mb", "cli_same_lines", "bleu", "chrf"]
    print(table(rows, columns + (["peak_gpu_mem_mb"] if device.type == "cuda" else [])))
    write_json(args.out, {"model": args.model, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
