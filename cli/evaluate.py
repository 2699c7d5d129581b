from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from nmt_cli.common import guard

File = Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, readable=True)]


def evaluate(
    ref: Annotated[Path, typer.Option("--ref", "-r", exists=True, dir_okay=False, readable=True, help="Reference file.")],
    hyp: Annotated[Optional[Path], typer.Option("--hyp", exists=True, dir_okay=False, readable=True,
                                                help="Hypotheses to score (one per line).")] = None,
    model: Annotated[Optional[list[Path]], typer.Option(
        "--model", "-m", exists=True, dir_okay=False, readable=True,
        help="Translate --src with this checkpoint (more than once: an ensemble), then score.")] = None,
    src: Annotated[Optional[Path], typer.Option("--src", exists=True, dir_okay=False, readable=True,
                                                help="Source file (with --model).")] = None,
    beam: Annotated[Optional[int], typer.Option(min=1, help="With --model: beam size [default: 5].")] = None,
    length_penalty: Annotated[Optional[float], typer.Option(
        help="With --model: GNMT length penalty alpha, 0 = none [default: 0.6].")] = None,
    coverage_penalty: Annotated[Optional[float], typer.Option(
        help="With --model: GNMT coverage penalty beta, 0 = off [default: 0].")] = None,
    docs: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, readable=True,
        help="With a context model: the --src line (from 1) where each document starts.")] = None,
    ter: Annotated[bool, typer.Option(help="Also compute TER.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Score translations with sacreBLEU (BLEU and chrF, with signatures).

    \b
        nmt evaluate --hyp out.en --ref test.en
        nmt evaluate -m runs/de-en/best.pt --src test.de --ref test.en --json
    """
    from nmt.errors import NmtError
    from nmt.evaluate import score
    from nmt.prepare import read_lines

    with guard():
        if (hyp is None) == (not model):
            raise NmtError("give either --hyp FILE, or --model CKPT with --src FILE")
        refs = read_lines(ref)  # once: --ref may be a pipe
        if not refs:
            raise NmtError(f"--ref {ref}: is empty, nothing to score")
        search = {"--beam": beam, "--length-penalty": length_penalty, "--coverage-penalty": coverage_penalty}
        if hyp is not None:
            if docs is not None:
                search["--docs"] = docs
            if src is not None:
                search["--src"] = src
            if given := [option for option, value in search.items() if value is not None]:
                raise NmtError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --model "
                               "(--hyp is scored as it is)")
            hyps = read_lines(hyp)
        else:
            if src is None:
                raise NmtError("--model needs --src (the source text to translate)")
            from nmt.context import checkpoint_window
            from nmt.device import pick_device
            from nmt.ensemble import load_models
            from nmt.translate import SearchOptions, Translator, for_decoding

            sources = read_lines(src)
            if len(sources) != len(refs):  # before translating them all
                raise NmtError(f"--src has {len(sources)} lines but --ref has {len(refs)}; they must match")
            dev = pick_device(device)
            net, vocab, ckpts = load_models(model)
            if window := checkpoint_window(ckpts[0], docs, len(sources)):
                sources = window.add(sources, 0)
            given = dict(beam=beam, alpha=length_penalty, coverage_penalty=coverage_penalty)
            opts = SearchOptions(**{k: v for k, v in given.items() if v is not None})  # the rest: its defaults
            hyps = Translator(for_decoding(net, "none", dev), vocab, opts, device=dev).translate(sources)
        result = score(hyps, refs, ("bleu", "chrf", "ter") if ter else ("bleu", "chrf"))
        if as_json:
            typer.echo(json.dumps({k: {"score": v["score"], "signature": v["signature"]} for k, v in result.items()}))
        else:
            for v in result.values():
                typer.echo(f"{v['text']}\n  signature: {v['signature']}")
