from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nmt_cli.common import guard


def attention(
    sentence: Annotated[str, typer.Argument(help="One source sentence (a multi-source model's sources TAB-separated).")],
    model: Annotated[Path, typer.Option("--model", "-m", exists=True, dir_okay=False, readable=True, help="Checkpoint.")],
    beam: Annotated[int, typer.Option(min=1, help="Beam size.")] = 5,
    layer: Annotated[Optional[int], typer.Option(
        help="Layer to show (-1 = last; default: the one trained with train.guided_alignment, else -1).")] = None,
    heads: Annotated[Optional[str], typer.Option(
        help="Heads to average, e.g. 0,2 (default: the guided head in its layer, else all).")] = None,
) -> None:
    """Translate one sentence and show its attention in the terminal (space = 0, █ = 1).

    \b
        nmt attention -m runs/de-en/best.pt "Ein Hund läuft über die Wiese."
    """
    from nmt.alignment import select_heads
    from nmt.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt.errors import NmtError
    from nmt.guided import default_heads
    from nmt.multisource import num_sources
    from nmt.report import attention_shape, check_heads, parse_heads, source_labels
    from nmt.translate import SearchOptions, Translator
    from nmt.visualize import terminal_heatmap

    with guard():
        if not sentence.strip():
            raise NmtError("the sentence is empty: give one to translate")
        ckpt = load_checkpoint(model)
        net, vocab = model_from_checkpoint(ckpt)
        layer, heads = default_heads(ckpt, layer, heads)
        head_list = parse_heads(heads, "--heads")
        check_heads(attention_shape(net, "cpu"), layer, head_list, "--layer", "--heads")
        hyps = Translator(net, vocab, SearchOptions(beam=beam)).hypotheses([sentence], need_attention=True)[0]
        if not hyps:
            typer.echo("")
            return
        h = hyps[0]
        src = source_labels(vocab, sentence, num_sources(net), h.attention.shape[-1])
        typer.echo(vocab.decode(h.tokens))
        typer.echo(terminal_heatmap(select_heads(h.attention, layer, head_list), src, vocab.pieces(h.tokens) + ["</s>"]))
