from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from nmt_cli.common import err, guard


def translate(
    model: Annotated[Path, typer.Option("--model", "-m", exists=True, dir_okay=False, readable=True, help="Checkpoint (best.pt).")],
    input: Annotated[Optional[Path], typer.Option("--input", "-i", exists=True, dir_okay=False, readable=True,
                                                  help="Input file (default: stdin).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (default: stdout).")] = None,
    beam: Annotated[int, typer.Option(min=1, help="Beam size (1 = greedy).")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="Sentences per decoding batch.")] = 128,
    length_penalty: Annotated[float, typer.Option(help="GNMT length penalty alpha (0 = none).")] = 0.6,
    max_len_a: Annotated[float, typer.Option(help="Output length limit: a * source length + b.")] = 1.5,
    max_len_b: Annotated[int, typer.Option(help="Output length limit: a * source length + b.")] = 10,
    n_best: Annotated[int, typer.Option(min=1, help="Print the n best: text<TAB>score, repeated, on one line.")] = 1,
    chunk_lines: Annotated[int, typer.Option(min=1, help="Lines read and translated at a time.")] = 1000,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Translate text, one output line per input line, in order (stdin -> stdout by default).

        echo 'Ein Hund läuft.' | nmt translate -m runs/de-en/best.pt
        nmt translate -m best.pt -i test.de -o test.en --beam 5
        nmt translate -m best.pt -i test.de --n-best 3
    """
    import torch

    from nmt.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt.train import pick_device
    from nmt.translate import SearchOptions, Translator, read_chunks

    with guard():
        dev = pick_device(device)
        net, vocab = model_from_checkpoint(load_checkpoint(model))
        opts = SearchOptions(beam=beam, alpha=length_penalty, max_len_a=max_len_a, max_len_b=max_len_b,
                             n_best=min(n_best, beam), batch_size=batch_size)
        tr = Translator(net.to(dev), vocab, opts, device=dev, warn=err)
        src = open(input, "rb") if input else sys.stdin.buffer
        out = open(output, "w", encoding="utf-8", newline="\n") if output else sys.stdout
        try:
            with torch.inference_mode():
                for lines in read_chunks(src, chunk_lines, err):
                    hyps = tr.hypotheses(lines)
                    if n_best > 1:
                        out.write("".join(tr.format_nbest(h) + "\n" for h in hyps))
                    else:
                        out.write("".join((vocab.decode(h[0].tokens) if h else "") + "\n" for h in hyps))
                    out.flush()
        finally:
            if input:
                src.close()
            if output:
                out.close()
