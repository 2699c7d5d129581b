from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nmt_cli.common import guard


def info(checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file (best.pt, last.pt).")]) -> None:
    """Describe a checkpoint: model kind, parameters, config, vocabulary, step, valid BLEU.

    \b
        nmt info runs/de-en/best.pt
    """
    from nmt.checkpoint import load_checkpoint
    from nmt.vocab import Vocab

    with guard():
        ckpt = load_checkpoint(checkpoint)
        unique = {t.untyped_storage().data_ptr(): t.numel() for t in ckpt["weights"].values()}  # tied = once
        params = sum(unique.values())
        meta = ckpt.get("meta", {})
        lines = [
            f"file:           {checkpoint}",
            f"format:         {ckpt['format_version']} (nmt {meta.get('toolkit_version', '?')})",
            f"model:          {ckpt['kind']}, {params:,} parameters",
            f"vocabulary:     {len(Vocab(ckpt['spm_model'].numpy().tobytes()))} SentencePiece pieces",
            f"step:           {meta.get('step')} (epoch {meta.get('update_epoch', _one_based(meta.get('epoch')))})",
            f"valid BLEU:     {_bleu(meta)}",
            f"training state: {'yes (resumable)' if 'training' in ckpt else 'no'}",
            "model config:   " + json.dumps(ckpt["model_config"]),
        ]
        if meta.get("context"):  # a document-context model (nmt prepare --context K)
            lines.insert(3, f"context:        the {meta['context']} previous sentence(s) of each line's document")
        if meta.get("averaged_from"):  # nmt average
            steps = [str(s) for s in meta.get("averaged_steps", []) if s is not None]
            lines.insert(3, f"averaged:       {len(meta['averaged_from'])} checkpoints"
                            + (f" (updates {', '.join(steps)})" if steps else ""))
        elif meta.get("ema"):  # train.ema
            lines.insert(3, f"weights:        exponential moving average (train.ema {meta['ema']})")
        if meta.get("direction") == "reverse":  # the target->source model of a train.agreement run
            lines.insert(3, "direction:      reverse (target -> source, trained with train.agreement)")
        typer.echo("\n".join(lines))


def _one_based(epoch):
    """Checkpoints before ``update_epoch`` keep only the 0-based index of the epoch being read;
    progress and metrics.jsonl count from 1."""
    return epoch + 1 if isinstance(epoch, int) else epoch


def _bleu(meta: dict) -> str:
    """This checkpoint's valid BLEU and the run's best so far; "none" where there is none (an
    average, a run without valid data: training keeps -1 before its first validation)."""
    now, best = meta.get("valid_bleu"), meta.get("best_valid_bleu")
    best = best if isinstance(best, (int, float)) and best >= 0 else None
    if now is None:
        return "none (not validated)" + (f"; the run's best: {best}" if best is not None else "")
    return f"{now}" + (f" (best {best})" if best is not None else "")
