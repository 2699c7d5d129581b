from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nmt_cli.common import err, guard


def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the prepared data and the run.")] = Path("quickstart"),
    minutes: Annotated[float, typer.Option(min=0.5, help="Training time budget in minutes.")] = 10.0,
    src_lang: Annotated[str, typer.Option(help="Source language of Multi30k (en, de, fr, cs).")] = "de",
    tgt_lang: Annotated[str, typer.Option(help="Target language of Multi30k.")] = "en",
) -> None:
    """The whole job on Multi30k in one command: prepare, train (short budget), evaluate, translate.

        NMT_DATA_HOME=../shared/data nmt quickstart --minutes 10

    Uses $NMT_DATA_HOME/multi30k when set (no network), else downloads Multi30k (~2 MB). Run again,
    it reuses OUT/data and trains OUT/run from scratch.
    """
    from nmt.config import load_config
    from nmt.corpora import check_languages, corpus_file
    from nmt.errors import NmtError
    from nmt.evaluate import score
    from nmt.prepare import prepare, read_lines
    from nmt.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt.train import train
    from nmt.translate import SearchOptions, Translator

    with guard():
        data, run = out / "data", out / "run"
        if src_lang == tgt_lang:
            raise NmtError(f"--src-lang and --tgt-lang are both {src_lang!r}; give two languages of multi30k")
        check_languages("multi30k", src_lang, tgt_lang)  # before anything is downloaded
        pair = lambda split: (corpus_file("multi30k", split, src_lang), corpus_file("multi30k", split, tgt_lang))
        if _prepared_langs(data) != [src_lang, tgt_lang]:  # none yet, another pair, or an interrupted prepare
            err(f"== prepare: Multi30k {src_lang}->{tgt_lang} -> {data}")
            prepare(data, pair("train"), pair("valid"), pair("test"), (src_lang, tgt_lang), log=err)
        else:
            err(f"== prepare: reusing {data} (Multi30k {src_lang}->{tgt_lang})")
        err(f"== train: Transformer for {minutes:g} minute{'' if minutes == 1 else 's'} -> {run}")
        cfg = load_config(None, [f"data.dir={json.dumps(str(data), ensure_ascii=False)}", f"train.max_minutes={minutes}", "train.valid_every=500",
                                 "train.valid_max_sentences=300"])
        train(cfg, run)
        model, vocab = model_from_checkpoint(load_checkpoint(run / "best.pt"))
        tr = Translator(model, vocab, SearchOptions(beam=5), warn=err)
        src, ref = read_lines(data / "test.src"), read_lines(data / "test.ref")
        err(f"== evaluate: test_2016_flickr ({len(src)} sentences, beam 5)")
        result = score(tr.translate(src), ref)
        for v in result.values():
            typer.echo(f"{v['text']}\n  signature: {v['signature']}")
        err("== translate: a few test sentences")
        for s, h in zip(src[:5], tr.translate(src[:5])):
            typer.echo(f"  {s}\n  -> {h}")
        err(f"done. Translate more with: nmt translate -m {run / 'best.pt'} < input.{src_lang}")


def _prepared_langs(data: Path) -> list | None:
    """The language pair of a finished ``nmt prepare`` in ``data`` (prepare.json is written last)."""
    try:
        return json.loads((data / "prepare.json").read_text()).get("langs")
    except (OSError, ValueError, AttributeError):
        return None
