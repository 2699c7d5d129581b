from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nmt_cli.common import err, guard


def sources_in(split: str):
    """The type of a split's ``--SPLIT-src`` option (repeatable: one file per source)."""
    return Annotated[Optional[list[Path]], typer.Option(
        exists=True, dir_okay=False, readable=True, metavar="FILE",
        help=f"{split} source file; give it once per source for a multi-source corpus.")]


def target_in(split: str):
    """The type of a split's ``--SPLIT-tgt`` option."""
    return Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, readable=True, metavar="FILE",
                                                  help=f"{split} target file.")]


TrainSrc, TrainTgt = sources_in("Training"), target_in("Training")
ValidSrc, ValidTgt = sources_in("Validation (optional)"), target_in("Validation")
TestSrc, TestTgt = sources_in("Test (optional)"), target_in("Test")


def prepare(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the vocabulary and id caches.")],
    corpus: Annotated[Optional[str], typer.Option(help="A named corpus from data/, e.g. multi30k (uses $NMT_DATA_HOME).")] = None,
    src_lang: Annotated[Optional[list[str]], typer.Option(
        help="Source language code (with --corpus), e.g. de; repeat it for several sources (--src-lang de --src-lang fr).")] = None,
    tgt_lang: Annotated[Optional[str], typer.Option(help="Target language code (with --corpus), e.g. en.")] = None,
    train_src: TrainSrc = None,
    train_tgt: TrainTgt = None,
    valid_src: ValidSrc = None,
    valid_tgt: ValidTgt = None,
    test_src: TestSrc = None,
    test_tgt: TestTgt = None,
    vocab_size: Annotated[int, typer.Option(min=16, help="Joint SentencePiece vocabulary size.")] = 8000,
    model_type: Annotated[str, typer.Option(help="SentencePiece model: unigram or bpe.")] = "unigram",
    max_words: Annotated[int, typer.Option(min=1, help="Drop training pairs with more words on a side.")] = 100,
    max_ratio: Annotated[float, typer.Option(min=1.0, help="Drop training pairs whose length ratio exceeds this.")] = 9.0,
    train_align: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, readable=True,
        help="Pharaoh word alignments of the training pairs (i-j, 0-based source-target, one line per pair; "
             "fast_align/eflomal output) for train.guided_alignment.")] = None,
    context: Annotated[int, typer.Option(min=0, help="Document context: read each line with the K lines before it in "
                                                     "its document (needs a docs file per split).")] = 0,
    train_docs: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, readable=True,
        help="With --context: the training line (from 1) where each document starts, one per line.")] = None,
    valid_docs: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, readable=True, help="With --context: the same for the valid lines.")] = None,
    test_docs: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, readable=True, help="With --context: the same for the test lines.")] = None,
) -> None:
    """Clean parallel text and train one joint SentencePiece model; cache the encoded ids.

    Either name a corpus (resolved from $NMT_DATA_HOME, else downloaded):

    \b
        nmt prepare --corpus multi30k --src-lang de --tgt-lang en -o prepared/de-en

    or give files (valid/test are optional):

    \b
        nmt prepare --train-src train.de --train-tgt train.en --valid-src val.de --valid-tgt val.en -o prepared/de-en

    Several sources make a multi-source corpus (each source file once per split, in the same order):

    \b
        nmt prepare --corpus multi30k --src-lang de --src-lang fr --tgt-lang en -o prepared/de+fr-en

    Document context (each line with the previous line of its document as a second source):

    \b
        nmt prepare --train-src talks.de --train-tgt talks.en --train-docs talks.docs --context 1 -o prepared/ctx
    """
    from nmt.corpora import check_languages, corpus_file
    from nmt.errors import NmtError
    from nmt.prepare import PrepareOptions, prepare as run

    with guard():
        src_langs = src_lang or ["src"]
        langs = (*src_langs, tgt_lang or "tgt")
        files = {"--train-src": train_src, "--train-tgt": train_tgt, "--valid-src": valid_src,
                 "--valid-tgt": valid_tgt, "--test-src": test_src, "--test-tgt": test_tgt}
        if corpus:
            if given := [option for option, path in files.items() if path]:
                raise NmtError(f"give --corpus or files, not both (--corpus {corpus} with {', '.join(given)})")
            if not (src_lang and tgt_lang):
                raise NmtError("--corpus needs --src-lang and --tgt-lang")
            if tgt_lang in src_lang:
                raise NmtError(f"--src-lang and --tgt-lang are both {tgt_lang!r}; give two languages of {corpus}")
            if len(set(src_lang)) != len(src_lang):
                raise NmtError(f"--src-lang names a language twice ({', '.join(src_lang)})")
            check_languages(corpus, *src_lang, tgt_lang)  # before anything is downloaded
            pair = lambda split: (*(corpus_file(corpus, split, lang) for lang in src_lang),
                                  corpus_file(corpus, split, tgt_lang))
            train, valid, test = pair("train"), pair("valid"), pair("test")
        else:
            if not (train_src and train_tgt):
                raise NmtError("give --corpus NAME or both --train-src and --train-tgt")
            for split in ("valid", "test"):
                if bool(files[f"--{split}-src"]) != bool(files[f"--{split}-tgt"]):
                    raise NmtError(f"--{split}-src and --{split}-tgt go together: give both or neither")
                if files[f"--{split}-src"] and len(files[f"--{split}-src"]) != len(train_src):
                    raise NmtError(f"--{split}-src is given {len(files[f'--{split}-src'])} time(s) but --train-src "
                                   f"{len(train_src)}: every split needs the same sources")
            if src_lang and len(src_lang) != len(train_src):
                raise NmtError(f"--src-lang is given {len(src_lang)} time(s) but --train-src {len(train_src)}")
            train = (*train_src, train_tgt)
            valid = (*valid_src, valid_tgt) if valid_src else None
            test = (*test_src, test_tgt) if test_src else None
        options = PrepareOptions(vocab_size=vocab_size, model_type=model_type, max_words=max_words, max_ratio=max_ratio)
        run(out, train, valid, test, langs, options, log=err, train_align=train_align, context=context,
            docs={"train": train_docs, "valid": valid_docs, "test": test_docs})
