"""Side by side with OpenNMT-py (and JoeyNMT): training throughput at the same shape, on the same pieces, interleaved.

    python -m venv ~/venvs/onmt && ~/venvs/onmt/bin/pip install torch==2.13.0
    ~/venvs/onmt/bin/pip install --no-deps opennmt-py==3.5.1
    ~/venvs/onmt/bin/pip install configargparse tensorboard pyyaml six "pyonmttok>=1.37,<2" rapidfuzz \\
        pyahocorasick spacy fasttext-wheel waitress flask sentencepiece regex sacrebleu
    python -m venv ~/venvs/joey && ~/venvs/joey/bin/pip install torch==2.13.0          # optional: JoeyNMT
    ~/venvs/joey/bin/pip install joeynmt==2.3.0 importlib_metadata sentencepiece==0.2.0
    python bench/side_by_side.py --onmt ~/venvs/onmt --joey ~/venvs/joey --data prepared/de-en --updates 150

Both toolkits train on the same SentencePiece pieces of Multi30k (ours from ``prepared/``, OpenNMT-py
from those ids written out as piece text), the same model shape (``configs/transformer.toml``,
``configs/lstm-luong.toml``), the same tokens per batch (``batch_type: tokens``, sentences x longest
side, as ours; JoeyNMT counts the same way but does not sort by length) and Adam, for ``--updates`` updates each, in the order ours, theirs, ours, theirs.
Throughput is each toolkit's own report of target tokens/s (median over the reports after the
first); peak RSS is that of the whole process tree, start-up included. Prints ours / theirs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_measured, table, usable_amps, write_json  # noqa: E402

ONMT_SHAPES = {
    "transformer": """encoder_type: transformer
decoder_type: transformer
enc_layers: 3
dec_layers: 3
heads: 4
hidden_size: 256
word_vec_size: 256
transformer_ff: 1024
dropout: [0.2]
attention_dropout: [0.0]
position_encoding: true
share_embeddings: true
share_decoder_embeddings: true
""",
    "lstm": """encoder_type: brnn
decoder_type: rnn
rnn_type: LSTM
enc_layers: 2
dec_layers: 2
hidden_size: 256
word_vec_size: 256
global_attention: general
input_feed: 1
bridge: true
dropout: [0.3]
share_embeddings: true
share_decoder_embeddings: true
""",
}
OURS = {"transformer": "configs/transformer.toml", "lstm": "configs/lstm-luong.toml"}
_JOEY_TRANSFORMER = """    type: transformer
    num_layers: 3
    num_heads: 4
    embeddings: {embedding_dim: 256, scale: true}
    hidden_size: 256
    ff_size: 1024
    dropout: 0.2
    layer_norm: pre
"""
JOEY_SHAPES = {
    "transformer": "  tied_embeddings: true\n  tied_softmax: true\n  encoder:\n" + _JOEY_TRANSFORMER
                   + "  decoder:\n" + _JOEY_TRANSFORMER,
    "lstm": """  tied_embeddings: true
  tied_softmax: true
  encoder:
    type: recurrent
    rnn_type: lstm
    num_layers: 2
    bidirectional: true
    embeddings: {embedding_dim: 256}
    hidden_size: 128
    dropout: 0.3
  decoder:
    type: recurrent
    rnn_type: lstm
    num_layers: 2
    embeddings: {embedding_dim: 256}
    hidden_size: 256
    attention: luong
    input_feeding: true
    init_hidden: bridge
    dropout: 0.3
""",
}


def export_pieces(data: Path, work: Path) -> None:
    """Write train/valid as space-separated SentencePiece pieces (the ids ours trains on)."""
    import sentencepiece as spm

    from nmt.data import ParallelIds

    sp = spm.SentencePieceProcessor(model_file=str(data / "spm.model"))
    for split in ("train", "valid"):
        ids = ParallelIds.load(data / f"{split}.ids.pt")
        for side, name in ((ids.srcs[0], "src"), (ids.tgt, "tgt")):
            off, flat = side["offsets"].tolist(), side["ids"].tolist()
            lines = (" ".join(sp.id_to_piece(i) for i in flat[a:b]) for a, b in zip(off[:-1], off[1:]))
            (work / f"{split}.{name}").write_text("\n".join(lines) + "\n")


def onmt_config(model: str, work: Path, updates: int, batch_tokens: int) -> Path:
    cfg = f"""save_data: {work}/onmt
src_vocab: {work}/vocab.txt
share_vocab: true
src_vocab_size: 9000
tgt_vocab_size: 9000
overwrite: true
data:
  corpus_1:
    path_src: {work}/train.src
    path_tgt: {work}/train.tgt
  valid:
    path_src: {work}/valid.src
    path_tgt: {work}/valid.tgt
save_model: {work}/{model}
save_checkpoint_steps: 1000000
valid_steps: 1000000
train_steps: {updates}
report_every: 10
seed: 1
batch_type: tokens
batch_size: {batch_tokens}
valid_batch_size: 2000
accum_count: [1]
optim: adam
adam_beta2: 0.998
learning_rate: 0.001
warmup_steps: 800
decay_method: rsqrt
label_smoothing: 0.1
max_grad_norm: 1.0
model_dtype: fp32
""" + ONMT_SHAPES[model]
    path = work / f"{model}.yaml"
    path.write_text(cfg)
    return path


def measured(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd``; returns (stdout + stderr, peak RSS of its process tree in MiB)."""
    _, out, err, peak = run_measured(cmd)
    return out + err, peak


def run_onmt(venv: Path, model: str, work: Path, updates: int, batch_tokens: int) -> dict:
    cfg = onmt_config(model, work, updates, batch_tokens)
    if not (work / "vocab.txt").exists():
        subprocess.run([str(venv / "bin/onmt_build_vocab"), "-config", str(cfg), "-n_sample", "-1"], check=True,
                       capture_output=True)
    out, peak = measured([str(venv / "bin/onmt_train"), "-config", str(cfg)])
    speeds = [float(x) for x in re.findall(r"\d+/\s*(\d+) tok/s", out)]
    if len(speeds) < 2:
        raise RuntimeError(f"no tok/s reports in OpenNMT-py's log:\n{out[-2000:]}")
    return {"toolkit": "OpenNMT-py 3.5.1", "model": model, "precision": "fp32", "tgt_tok_s": statistics.median(speeds[1:]),
            "peak_rss_mb": peak, "reports": len(speeds)}


def run_ours(model: str, data: Path, work: Path, updates: int, batch_tokens: int, amp: str = "none") -> dict:
    out = work / f"ours-{model}-{amp}"
    sets = [f'data.dir="{data}"', f'train.amp="{amp}"', f"train.max_steps={updates}", "train.max_minutes=0", "train.valid_every=1000000",
            "train.save_every=0", "train.valid_beam=1", "train.valid_max_sentences=20",
            f"train.batch_tokens={batch_tokens}", "train.log_every=10"]
    cmd = [sys.executable, "-m", "nmt_cli.main", "train", "-c", OURS[model], "-o", str(out)]
    _, peak = measured(cmd + [a for s in sets for a in ("--set", s)])
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tgt_tok_s"] for r in records if r["kind"] == "train"]
    return {"toolkit": "nmt", "model": model, "precision": "fp32" if amp == "none" else amp,
            "tgt_tok_s": statistics.median(speeds[1:]),
            "peak_rss_mb": peak, "reports": len(speeds)}


def joey_config(model: str, work: Path, updates: int, batch_tokens: int) -> Path:
    """JoeyNMT 2.3 reads the same piece files at word level, with the SentencePiece vocabulary."""
    import sentencepiece as spm

    vocab = work / "joey-vocab.txt"
    if not vocab.exists():
        sp = spm.SentencePieceProcessor(model_file=str(work / "spm.model"))
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_control(i) and not sp.is_unknown(i)]
        vocab.write_text("\n".join(pieces) + "\n")
    side = "{lang: %s, level: word, lowercase: false, normalize: false, max_length: 250, voc_file: %s, tokenizer_type: basic}"
    cfg = f"""name: sbs-{model}
joeynmt_version: 2.3.0
model_dir: {work}/joey-{model}
use_cuda: false
data:
  train: {work}/train
  dev: {work}/valid
  dataset_type: plain
  src: {side % ("src", vocab)}
  trg: {side % ("tgt", vocab)}
testing:
  beam_size: 5
  alpha: 0.6
training:
  random_seed: 1
  optimizer: adam
  adam_betas: [0.9, 0.998]
  learning_rate: 0.001
  scheduling: warmupinversesquareroot
  learning_rate_warmup: 800
  label_smoothing: 0.1
  clip_grad_norm: 1.0
  normalization: tokens
  batch_size: {batch_tokens}
  batch_type: token
  updates: {updates}
  epochs: 100
  validation_freq: 1000000
  logging_freq: 10
  overwrite: true
  shuffle: true
  use_cuda: false
model:
  initializer: xavier_uniform
""" + JOEY_SHAPES[model]
    path = work / f"joey-{model}.yaml"
    path.write_text(cfg)
    return path


def run_joey(venv: Path, model: str, work: Path, updates: int, batch_tokens: int) -> dict:
    cfg = joey_config(model, work, updates, batch_tokens)
    out, peak = measured([str(venv / "bin/python"), "-m", "joeynmt", "train", str(cfg), "--skip-test"])
    speeds = [float(x) for x in re.findall(r"Tokens per Sec:\s+(\d+)", out)]
    if len(speeds) < 2:
        raise RuntimeError(f"no tokens/s reports in JoeyNMT's log:\n{out[-2000:]}")
    return {"toolkit": "JoeyNMT 2.3.0", "model": model, "precision": "fp32", "tgt_tok_s": statistics.median(speeds[1:]),
            "peak_rss_mb": peak, "reports": len(speeds)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onmt", type=Path, required=True, help="virtual environment with opennmt-py 3.5.1")
    ap.add_argument("--joey", type=Path, help="virtual environment with joeynmt 2.3.0 (optional)")
    ap.add_argument("--data", type=Path, default=Path("prepared/de-en"))
    ap.add_argument("--models", nargs="+", default=["transformer", "lstm"], choices=list(OURS))
    ap.add_argument("--updates", type=int, default=150)
    ap.add_argument("--batch-tokens", type=int, default=3000)
    ap.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16"],
                    help="our precisions (bf16: CPU autocast), each against the others' fp32")
    ap.add_argument("--out", default="bench/results/side_by_side.json")
    args = ap.parse_args()
    args.amp = usable_amps(args.amp)
    if not args.amp:
        ap.error("nothing to measure: add --amp none")
    work = Path(tempfile.mkdtemp(prefix="nmt-sbs-"))
    export_pieces(args.data, work)
    shutil.copy(args.data / "spm.model", work / "spm.model")
    rows, ratios = [], []
    for model in args.models:
        ours = [run_ours(model, args.data.resolve(), work, args.updates, args.batch_tokens, amp) for amp in args.amp]
        others = [run_onmt(args.onmt, model, work, args.updates, args.batch_tokens)]
        if args.joey:
            others.append(run_joey(args.joey, model, work, args.updates, args.batch_tokens))
        rows += [*ours, *others]
        for mine in ours:
            for theirs in others:
                ratios.append({"model": model, "ours": mine["precision"], "versus": f"{theirs['toolkit']} fp32",
                               "tok_s_ratio": mine["tgt_tok_s"] / theirs["tgt_tok_s"],
                               "rss_ratio": mine["peak_rss_mb"] / theirs["peak_rss_mb"]})
        print(json.dumps(rows[-len(ours) - len(others):]), file=sys.stderr, flush=True)
    print(table(rows, ["toolkit", "model", "precision", "tgt_tok_s", "peak_rss_mb", "reports"]))
    print(table(ratios, ["model", "ours", "versus", "tok_s_ratio", "rss_ratio"]))
    write_json(args.out, {"updates": args.updates, "batch_tokens": args.batch_tokens, "rows": rows, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
