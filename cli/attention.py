from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nmt_cli.common import guard


def attention(
    sentence: Annotated[str, typer.Argument(help="One source sentence.")],
    model: Annotated[Path, typer.Option("--model", "-m", exists=True, dir_okay=False, readable=True, help="Checkpoint.")],
    beam: Annotated[int, typer.Option(min=1, help="Beam size.")] = 5,
    layer: Annotated[int, typer.Option(help="Layer to show (-1 = last); heads are averaged.")] = -1,
) -> None:
    """Translate one sentence and show its attention in the terminal (space = 0, █ = 1).

    \b
        nmt attention -m runs/de-en/best.pt "Ein Hund läuft über die Wiese."
    """
    from nmt.alignment import select_heads
    from nmt.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt.report import attention_shape, check_heads
    from nmt.translate import SearchOptions, Translator
    from nmt.visualize import terminal_heatmap

    with guard():
        net, vocab = model_from_checkpoint(load_checkpoint(model))
        check_heads(attention_shape(net, "cpu"), layer, None, "--layer")
        hyps = Translator(net, vocab, SearchOptions(beam=beam)).hypotheses([sentence], need_attention=True)[0]
        if not hyps:
            typer.echo("")
            return
        h = hyps[0]
        src = vocab.pieces(vocab.encode([sentence])[0])[: h.attention.shape[-1] - 1] + ["</s>"]
        typer.echo(vocab.decode(h.tokens))
        typer.echo(terminal_heatmap(select_heads(h.attention, layer), src, vocab.pieces(h.tokens) + ["</s>"]))
