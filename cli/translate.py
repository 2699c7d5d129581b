from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from nmt_cli import common
from nmt_cli.common import err, guard


def translate(
    ctx: typer.Context,
    model: Annotated[list[Path], typer.Option("--model", "-m", exists=True, dir_okay=False, readable=True,
                                              help="Checkpoint (best.pt); give it more than once for an ensemble.")],
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Input file (default or -: stdin).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (default or -: stdout).")] = None,
    beam: Annotated[int, typer.Option(min=1, help="Beam size (1 = greedy).")] = 5,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="At most this many sentences per decoding batch "
                                                                  "[default: 128 on a CPU, 1000 on a GPU].")] = None,
    batch_tokens: Annotated[Optional[int], typer.Option(min=0, help="At most beam (--sample: n-best) x sentences x "
                                                                    "longest source per batch too (bounds the search's "
                                                                    "memory; 0 = no limit) "
                                                                    "[default: 5000 on a CPU, 50000 on a GPU].")] = None,
    length_penalty: Annotated[float, typer.Option(help="GNMT length penalty alpha (0 = none).")] = 0.6,
    coverage_penalty: Annotated[float, typer.Option(help="GNMT coverage penalty beta (0 = off).")] = 0.0,
    max_len_a: Annotated[float, typer.Option(min=0, help="Output length limit: a * source length + b.")] = 1.5,
    max_len_b: Annotated[int, typer.Option(min=0, help="Output length limit: a * source length + b.")] = 10,
    n_best: Annotated[int, typer.Option(min=1, help="Print the n best: text<TAB>score, repeated, on one line.")] = 1,
    workers: Annotated[int, typer.Option(min=0, help="Batches searched at once, each on its own thread sharing the "
                                                     "CPU threads (0 = auto: 2 on a CPU with >= 2 threads; "
                                                     "always 1 on a GPU).")] = 0,
    chunk_lines: Annotated[int, typer.Option(min=1, help="Lines read and translated at a time.")] = 1000,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    quantize: Annotated[str, typer.Option(help="int8: dynamic int8 weights for faster CPU decoding; none.")] = "none",
    amp: Annotated[str, typer.Option(help="bf16 or fp16: autocast while decoding (fp16: CUDA only; bf16 on a "
                                          "CPU without native bf16 is emulated and slow); none.")] = "none",
    attention: Annotated[Optional[Path], typer.Option(help="Write attention heatmaps (SVG) and index.html here.")] = None,
    encoder_attention: Annotated[bool, typer.Option(help="With --attention: also draw encoder self-attention.")] = False,
    alignments: Annotated[Optional[str], typer.Option(help="Pharaoh word alignments to FILE, or '-' for a TAB column.")] = None,
    attention_stats: Annotated[Optional[Path], typer.Option(help="Attention statistics as JSON lines to this file.")] = None,
    align_layer: Annotated[Optional[int], typer.Option(
        help="Layer whose attention gives alignments/stats (-1 = last; default: the one trained with "
             "train.guided_alignment, else -1).")] = None,
    align_heads: Annotated[Optional[str], typer.Option(
        help="Heads to average for alignments, e.g. 0,2 (default: the guided head in its layer, else all).")] = None,
    docs: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, readable=True,
        help="Context models: the input line (from 1) where each document starts, one per line (default: "
             "documents are separated by empty lines).")] = None,
    sample: Annotated[bool, typer.Option(help="Draw --n-best samples per line from the model instead of searching "
                                              "(e.g. for back-translation).")] = False,
    sample_topk: Annotated[int, typer.Option(min=0, help="With --sample: only from the k most probable tokens "
                                                         "(0 = all).")] = 0,
    sample_topp: Annotated[float, typer.Option(min=0.0, max=1.0, help="With --sample: only from the smallest set "
                                                                      "of tokens holding this probability (0 = all).")] = 0.0,
    temperature: Annotated[float, typer.Option(help="With --sample: divides the log-probabilities (< 1 sharper, "
                                                    "> 1 flatter; > 0).")] = 1.0,
    seed: Annotated[int, typer.Option(min=-(2**63), max=2**63 - 1,
                                      help="With --sample: the seed; with a line's number it decides the line's "
                                           "samples, whatever the batching.")] = 0,
) -> None:
    """Translate text, one output line per input line, in order (stdin -> stdout by default).

    \b
        echo 'Ein Hund läuft.' | nmt translate -m runs/de-en/best.pt
        nmt translate -m best.pt -i test.de -o test.en --beam 5
        nmt translate -m best.pt -i test.de --n-best 3
        nmt translate -m best.pt -i test.de --quantize int8      # faster on CPU; see bench/decode.py
        nmt translate -m best.pt -i few.de --attention pics/ --alignments few.align --attention-stats stats.jsonl
        nmt translate -m context.pt -i talks.de --docs talks.docs  # a document-context model (nmt prepare --context)
        nmt translate -m best.pt -i mono.en --sample --sample-topk 10  # sampled back-translations
    """
    import torch

    from nmt.context import checkpoint_window
    from nmt.device import pick_device
    from nmt.ensemble import ensemble_head_source, load_models
    from nmt.errors import NmtError
    from nmt.guided import default_heads
    from nmt.translate import SearchOptions, Translator, for_decoding, read_chunks

    with guard():
        input, output = (None if path is not None and str(path) == "-" else path for path in (input, output))
        _check_paths(model, input, output, attention_stats, alignments, attention)
        _check_sampling(ctx, sample)
        if not (math.isfinite(temperature) and temperature > 0):
            raise NmtError(f"--temperature must be a finite number > 0, got {temperature}")
        if n_best > beam and not sample:
            err(f"warning: --n-best {n_best} is more than --beam {beam}: "
                f"{'one hypothesis' if beam == 1 else f'{beam} hypotheses'} per line")
        dev = pick_device(device)
        net, vocab, ckpts = load_models(model)
        ckpt = ckpts[0]
        align_layer, align_heads = default_heads(ensemble_head_source(net, ckpts, dev), align_layer, align_heads)
        net = for_decoding(net, quantize, dev)
        opts = SearchOptions(beam=beam, alpha=length_penalty, max_len_a=max_len_a, max_len_b=max_len_b,
                             n_best=n_best if sample else min(n_best, beam), batch_size=batch_size,
                             batch_tokens=batch_tokens, coverage_penalty=coverage_penalty, amp=amp, workers=workers,
                             sample=sample, sample_topk=sample_topk, sample_topp=sample_topp, temperature=temperature,
                             seed=seed)
        tr = Translator(net.to(dev), vocab, opts, device=dev, warn=err)
        if tr.sources > 1 and (alignments or attention_stats):
            raise NmtError(f"--{'alignments' if alignments else 'attention-stats'} names the words of one source; "
                           f"this model reads {tr.sources} (--attention DIR draws its pictures)")
        window = checkpoint_window(ckpt, docs)
        report = _report(vocab, attention, encoder_attention, alignments, attention_stats, align_layer, align_heads,
                         net, dev)
        src, out = _open_io(input, output)
        done = written = 0  # lines read and searched so far, lines whose output is written
        try:
            with torch.inference_mode(), common.terminate_as_interrupt():
                for lines in read_chunks(src, chunk_lines, err):
                    if window is not None:  # each line with the sentences before it in its document
                        lines = window.add(lines, done)
                    hyps = tr.hypotheses(lines, need_attention=report.wanted, first_line=done + 1)
                    done += len(lines)
                    texts = [tr.format_nbest(h) if n_best > 1 else (vocab.decode(h[0].tokens) if h else "") for h in hyps]
                    if report.wanted:
                        aligned = report.add(lines, hyps)
                        if alignments == "-":
                            texts = [f"{t}\t{a}" for t, a in zip(texts, aligned)]
                    out.write("".join(t + "\n" for t in texts))
                    out.flush()
                    written += len(texts)
            page = report.close()
            if page:
                err(f"attention pictures: {page}")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (guard then says so and exits 130 / 143)
            if output is not None:
                err(f"nmt: {output} holds the translations of the first {written:,} input lines only")
            raise
        finally:
            for f in (report.alignments, report.stats, src if input else None, out if output else None):
                if f is not None and f is not sys.stdout:
                    f.close()
        common.SKIP_TEARDOWN["on"] = True  # all written and closed: the process may end at once (main.run)


def _check_sampling(ctx: typer.Context, sample: bool) -> None:
    """Nothing given is ignored: the search's options have no effect on sampling, nor sampling's
    without ``--sample``."""
    from nmt.errors import NmtError

    def given(names):  # (typer may bring its own click: compare the source by name)
        return [f"--{n.replace('_', '-')}" for n in names if ctx.get_parameter_source(n).name != "DEFAULT"]

    if sample and (search := given(("beam", "length_penalty", "coverage_penalty"))):
        raise NmtError(f"{', '.join(search)} {'is a beam-search option' if len(search) == 1 else 'are beam-search options'}"
                       ", which --sample does not use")
    if not sample and (sampling := given(("sample_topk", "sample_topp", "temperature", "seed"))):
        raise NmtError(f"{', '.join(sampling)} only appl{'ies' if len(sampling) == 1 else 'y'} with --sample")


def _check_paths(models: list[Path], input: Path | None, output: Path | None, stats: Path | None, alignments: str | None,
                 pictures: Path | None) -> None:
    """Everything about the files that can fail, checked before any of them is opened (an output
    opened for writing is emptied): the input, closed standard streams, ``-`` where it means
    nothing, and outputs that are an input or each other. ``-`` for input / output is already None."""
    from nmt.errors import NmtError

    if input is not None:
        if not input.exists() or input.is_dir():  # a pipe (-i <(zcat x.gz), /dev/stdin) is fine
            raise NmtError(f"--input {input}: {'is a folder' if input.is_dir() else 'no such file'}")
        if not os.access(input, os.R_OK):
            raise NmtError(f"--input {input}: not readable")
    elif sys.stdin is None:
        raise NmtError("standard input is closed; give --input FILE")
    if output is None and sys.stdout is None:
        raise NmtError("standard output is closed; give --output FILE")
    for option, path in (("--attention-stats", stats), ("--attention", pictures)):
        if path is not None and str(path) == "-":
            raise NmtError(f"{option} -: give a file or folder name (standard output holds the translations)")
    if pictures is not None:  # written at the end, after every translation: checked now
        from nmt.paths import check_out_folder

        check_out_folder(pictures, "--attention")
    _check_distinct({**{f"--model {m}": m for m in models}, "--input": input},
                    {"--output": output, "--attention-stats": stats,
                     "--alignments": None if alignments in (None, "-") else Path(alignments)})


def _check_distinct(inputs: dict, outputs: dict) -> None:
    """Before anything is opened: no output file may be an input (the checkpoint or the text) or
    another output (opening it for writing would empty it, or two streams would interleave in it)."""
    from nmt.errors import NmtError

    seen = {path.resolve(): option for option, path in inputs.items() if path is not None}
    for option, path in outputs.items():
        if path is None:
            continue
        key = path.resolve()
        if key in seen:
            raise NmtError(f"{option} {path} is the same file as {seen[key]}; give each its own file")
        seen[key] = option


def _open_io(input: Path | None, output: Path | None):
    """The input (bytes) and output (UTF-8 text) streams (checked by :func:`_check_paths`; the
    input opened first, so that an input that fails still empties no output)."""
    src = _open_read(input) if input else sys.stdin.buffer
    out = _open_write(output, "--output") if output else sys.stdout
    if not output and hasattr(sys.stdout, "reconfigure"):
        try:  # UTF-8 whatever the locale (the input is read as UTF-8 too); never a crash mid-stream
            sys.stdout.reconfigure(encoding="utf-8", errors="replace")
        except (ValueError, OSError):
            pass
    return src, out


def _open_read(path: Path):
    from nmt.errors import NmtError

    try:
        return open(path, "rb")
    except OSError as e:
        raise NmtError(f"--input {path}: cannot read ({e.strerror})") from None


def _open_write(path: Path, option: str):
    from nmt.errors import NmtError

    try:
        return open(path, "w", encoding="utf-8", newline="\n")
    except OSError as e:
        raise NmtError(f"{option} {path}: cannot write ({e.strerror})") from None


def _report(vocab, pictures, encoder, alignments, stats, layer, heads, model, device):
    from nmt.errors import NmtError
    from nmt.multisource import num_sources
    from nmt.report import AttentionReport, attention_shape, check_heads, encoder_self_attention, parse_heads

    head_list = parse_heads(heads)
    if alignments or stats or pictures:
        check_heads(attention_shape(model, device), layer, head_list)
    encoder_attention = encoder_self_attention(model, vocab, device) if encoder else None
    if encoder and not pictures:
        raise NmtError("--encoder-attention draws pictures: it needs --attention DIR")
    if encoder_attention is not None and encoder_attention("\t".join("." * num_sources(model))) is None:
        raise NmtError("--encoder-attention: this model's encoder has no self-attention (an LSTM encoder); "
                       "leave the option out")
    align_file = None if alignments in (None, "-") else _open_write(Path(alignments), "--alignments")
    return AttentionReport(
        vocab, picture_dir=pictures, alignments=align_file,
        stats=_open_write(stats, "--attention-stats") if stats else None,
        layer=layer, heads=head_list, encoder_attention=encoder_attention,
        inline_alignments=alignments == "-", sources=num_sources(model),
    )
