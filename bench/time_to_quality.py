"""Time to quality and decoding speed, side by side with OpenNMT-py (and JoeyNMT), in one run.

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python bench/time_to_quality.py --onmt ~/venvs/onmt --minutes 20 60

For each toolkit in turn (ours, then OpenNMT-py 3.5.1; install steps in ``side_by_side.py``), train
the Transformer of ``configs/transformer.toml`` on the same SentencePiece pieces for the largest of
``--minutes``, keeping a snapshot at every mark; then, for each snapshot, test_2016_flickr BLEU with
beam 5, and for the last one the whole-process decoding speed (greedy and beam 5, each toolkit's
default batch size; median of ``--repeats`` runs, the toolkits interleaved) and peak RSS.
``--reuse WORK`` decodes the snapshots of an earlier run again without training.

Clocks: ours stops itself at ``train.max_minutes``, which counts from its first update and includes
its validations (500 sentences, beam 5, every 400 updates); its snapshot is ``best.pt`` (chosen on
valid BLEU). OpenNMT-py's clock starts at its "Start training loop" line; it validates never, saves a
checkpoint every 50 updates, and its snapshot is the last checkpoint written before the mark.
Both learning rates follow the same curve (linear warm-up to 1e-3 over 800 updates, then 1/sqrt).
OpenNMT-py reads pre-cut pieces, ours raw text: its decoding times exclude SentencePiece, ours include it.

``--concurrent`` trains ours and OpenNMT-py at the same time, each on its own CPU core with one
thread (``taskset``, ``OMP_NUM_THREADS=1``; its data-loader processes share its core), so that
``--minutes 20 60`` takes about 65 minutes instead of 2 h 10 (89 with ``--joey``): each toolkit
then has one core for its minutes, not the whole machine, so its updates and BLEU are those of a
one-core budget (ours validates every 200 updates instead of 400 there); both see the same hour of
the machine (its speed drifts by 10-15% from hour to hour here). JoeyNMT then trains alone on one
core. Decoding always runs on the whole machine, one process at a time.

``--joey VENV`` adds JoeyNMT 2.3.0 for the smallest mark only (same shape, pieces, batch tokens and
learning-rate curve; its clock starts at its "EPOCH 1" line; it checkpoints only when it validates, so
it validates greedily every 20 updates on 20 sentences, a few seconds each). Its decoding speed is that
of its snapshot, compared with our last, timed on the decodings that give its BLEU (one run each: a
beam-5 pass takes it over 3 minutes); it reads the pieces on stdin, like OpenNMT-py without SentencePiece.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_measured, table, write_json  # noqa: E402
from side_by_side import export_pieces, joey_config, onmt_config  # noqa: E402

# OpenNMT-py's noam is d^-0.5 * min(step^-0.5, step * warmup^-1.5): the same curve as ours when scaled
# so that its peak (at step = warmup) is our peak learning rate.
PEAK_LR, WARMUP, D_MODEL = 1e-3, 800, 256
ONMT_TTQ = f"""decay_method: noam
learning_rate: {PEAK_LR / (D_MODEL**-0.5 * WARMUP**-0.5):.6f}
warmup_steps: {WARMUP}
param_init: 0.0
param_init_glorot: true
normalization: tokens
save_checkpoint_steps: 50
keep_checkpoint: 3
"""


def bleu(hyps: list[str], ref: Path) -> float:
    from nmt.evaluate import score
    from nmt.prepare import read_lines

    return score(hyps, read_lines(ref))["bleu"]["score"]


# --concurrent: set when one toolkit's training fails, so that the other's stops too instead of
# running to its last mark before the error shows
ABORT = threading.Event()


def _aborted(name: str) -> RuntimeError:
    return RuntimeError(f"{name}: stopped, the other training failed")


def pinned(cmd: list[str], core: int | None) -> tuple[list[str], dict]:
    """``cmd`` and its environment, run on CPU ``core`` alone with one intra-op thread (its child
    processes inherit both); unchanged for ``None``, the whole machine."""
    if core is None:
        return cmd, dict(os.environ)
    return ["taskset", "-c", str(core), *cmd], dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def train_ours(data: Path, work: Path, marks: list[float], core: int | None = None) -> dict[float, Path]:
    """Train ours for max(marks) minutes; copy best.pt at every earlier mark (by its own elapsed clock).
    On one ``core`` it validates every 200 updates instead of 400 (it makes half as many updates), so
    that an early mark's best.pt is not the first validation's."""
    out = work / "ours"
    cmd = [sys.executable, "-m", "nmt_cli.main", "train", "-c", "configs/transformer.toml", "-o", str(out),
           "--set", f'data.dir="{data}"', "--set", f"train.max_minutes={max(marks)}"]
    if core is not None:
        cmd += ["--set", "train.threads=1", "--set", "train.valid_every=200"]
    cmd, env = pinned(cmd, core)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    snaps, pending = {}, sorted(marks)[:-1]
    try:
        while proc.poll() is None:
            if ABORT.wait(5):
                raise _aborted("nmt train")
            if pending and (out / "metrics.jsonl").exists():
                lines = (out / "metrics.jsonl").read_text().splitlines()
                elapsed = json.loads(lines[-1])["elapsed_s"] if lines else 0.0
                if elapsed >= pending[0] * 60 and (out / "best.pt").exists():
                    mark = pending.pop(0)
                    snaps[mark] = Path(shutil.copy(out / "best.pt", work / f"ours-{mark}min.pt"))
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"nmt train failed ({proc.returncode})")
    snaps[max(marks)] = out / "best.pt"
    return snaps


def train_onmt(venv: Path, work: Path, marks: list[float], core: int | None = None) -> dict[float, Path]:
    """Train OpenNMT-py; at each mark after its training loop starts, keep its last complete checkpoint."""
    cfg = onmt_config("transformer", work, 10**7, 3000)
    cfg.write_text(cfg.read_text() + ONMT_TTQ)
    if not (work / "vocab.txt").exists():
        cmd, env = pinned([str(venv / "bin/onmt_build_vocab"), "-config", str(cfg), "-n_sample", "-1"], core)
        subprocess.run(cmd, check=True, capture_output=True, env=env)
    return _train_until(
        pinned([str(venv / "bin/onmt_train"), "-config", str(cfg)], core), work / "onmt-train.log",
        "Start training loop", "OpenNMT-py", marks,
        lambda mark: Path(shutil.copy(_last_complete(work), work / f"onmt-{mark}min.pt")))


def train_joey(venv: Path, work: Path, marks: list[float], core: int | None = None) -> dict[float, Path]:
    """Train JoeyNMT 2.3.0 (same shape, pieces, batch tokens and learning-rate curve); at each mark
    after its training loop starts ("EPOCH 1"), keep its latest checkpoint. It checkpoints only when
    it validates, so it validates every 20 updates on 20 sentences (greedy) and keeps every checkpoint."""
    cfg = joey_config("transformer", work, 10**7, 3000)
    for split in ("src", "tgt"):  # a small dev set: Joey's validation is cheap and only there to save
        lines = (work / f"valid.{split}").read_text().splitlines()[:20]
        (work / f"joey-dev.{split}").write_text("\n".join(lines) + "\n")
    # JoeyNMT floors the rate at learning_rate_min (default 1e-4, above ours for the first 80 updates)
    cfg.write_text(_edit(cfg.read_text(), (f"dev: {work}/valid", f"dev: {work}/joey-dev"),
                         ("validation_freq: 1000000", "validation_freq: 20\n  keep_best_ckpts: -1\n  learning_rate_min: 1.0e-7"),
                         (f"model_dir: {work}/joey-transformer", f"model_dir: {work}/joey-ttq")))
    latest = work / "joey-ttq" / "latest.ckpt"  # a symlink, moved after each checkpoint is written

    def take(mark: float) -> Path:
        for _ in range(10):  # JoeyNMT moves the link by unlink + symlink: missing for an instant
            if latest.exists():
                return Path(shutil.copy(latest.resolve(), work / f"joey-{mark}min.ckpt"))
            time.sleep(0.5)
        raise RuntimeError("JoeyNMT wrote no checkpoint before the mark")

    snaps = _train_until(pinned([str(venv / "bin/python"), "-m", "joeynmt", "train", str(cfg), "--skip-test"], core),
                         work / "joey-train.log", "EPOCH 1", "JoeyNMT", marks, take)
    for ckpt in (work / "joey-ttq").glob("*.ckpt"):  # one 100 MB file per validation
        ckpt.unlink()
    return snaps


def _edit(text: str, *changes: tuple[str, str]) -> str:
    """``text`` with each ``(old, new)`` replaced; raises if an ``old`` is missing (a config that
    silently kept its old value would measure something else)."""
    for old, new in changes:
        if old not in text:
            raise RuntimeError(f"config edit failed: {old!r} not found")
        text = text.replace(old, new)
    return text


def _train_until(command: tuple[list[str], dict], log: Path, start_line: str, name: str, marks: list[float],
                 take) -> dict[float, Path]:
    """Run a toolkit's training ``(command, environment)`` (output copied to ``log``); its clock starts at
    the first line containing ``start_line``. At each mark (minutes) keep ``take(mark)``, its snapshot;
    then kill its process group (data-loader processes too). Raises if it stops early or does not start
    in 10 minutes."""
    cmd, env = command
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env)
    started = threading.Event()

    def watch() -> None:
        with open(log, "w", buffering=1) as f:  # line-buffered: the log can be followed while it trains
            for line in proc.stdout:
                f.write(line)
                if start_line in line:
                    started.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deadline, snaps = time.time() + 600, {}
    try:
        while not started.wait(1.0):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{name} did not start training; see {log}")
            if ABORT.is_set():
                raise _aborted(name)
        t0 = time.time()
        for mark in sorted(marks):
            if ABORT.wait(max(0.0, t0 + mark * 60 - time.time())):
                raise _aborted(name)
            if proc.poll() is not None:
                raise RuntimeError(f"{name} stopped early; see {log}")
            snaps[mark] = take(mark)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        watcher.join(timeout=10)  # the log is complete when this returns
    return snaps


def _last_complete(work: Path) -> Path:
    """The newest ``transformer_step_N.pt`` that is not being written (unchanged for a second)."""
    ckpts = sorted(work.glob("transformer_step_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not ckpts:
        raise RuntimeError("OpenNMT-py wrote no checkpoint before the mark")
    size = ckpts[-1].stat().st_size
    time.sleep(1.0)
    if ckpts[-1].stat().st_size == size or len(ckpts) == 1:
        return ckpts[-1]
    return ckpts[-2]


def decode_ours(model: Path, src: Path, beam: int, quantize: str = "none") -> tuple[float, list[str], float]:
    wall, out, _, rss = run_measured([sys.executable, "-m", "nmt_cli.main", "translate", "-m", str(model), "-i",
                                      str(src), "--beam", str(beam), "--quantize", quantize])
    return wall, out.splitlines(), rss


def decode_onmt(venv: Path, model: Path, pieces: Path, beam: int, work: Path) -> tuple[float, list[str], float]:
    import sentencepiece as spm

    out = work / f"onmt-hyp-{beam}.txt"
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    wall, _, _, rss = run_measured([str(venv / "bin/onmt_translate"), "-model", str(model), "-src", str(pieces),
                                    "-output", str(out), "-beam_size", str(beam)], env=env)
    sp = spm.SentencePieceProcessor(model_file=str(work / "spm.model"))
    return wall, [sp.decode_pieces(l.split()) for l in out.read_text().splitlines()], rss


def decode_joey(venv: Path, model: Path, pieces: Path, beam: int, work: Path) -> tuple[float, list[str], float]:
    """JoeyNMT's ``translate`` reads the pieces on stdin (its default test batch: 64 sentences)."""
    import sentencepiece as spm

    cfg = _edit((work / "joey-transformer.yaml").read_text(), ("beam_size: 5", f"beam_size: {beam}\n  load_model: {model}"))
    path = work / f"joey-decode-{beam}.yaml"
    path.write_text(cfg)
    wall, out, _, rss = run_measured([str(venv / "bin/python"), "-m", "joeynmt", "translate", str(path)], stdin=pieces)
    sp = spm.SentencePieceProcessor(model_file=str(work / "spm.model"))
    return wall, [sp.decode_pieces(l.split()) for l in out.splitlines()], rss


def evaluate(name: str, snaps: dict[float, Path], decode, ref: Path, timed: bool = False) -> list[dict]:
    """test BLEU of every snapshot with beam 5 (and greedy for the last); ``timed``: the last one's
    whole-process sentences/s and peak RSS from those same decodings (one run each)."""
    rows = []
    n = len(ref.read_text().splitlines())
    for mark, ckpt in sorted(snaps.items()):
        row = {"toolkit": name, "minutes": mark}
        for beam in (5, 1) if mark == max(snaps) else (5,):
            wall, hyps, rss = decode(ckpt, beam)
            if len(hyps) != n:
                raise RuntimeError(f"{name} wrote {len(hyps)} lines for {n} inputs")
            key = "beam5" if beam == 5 else "greedy"
            row[f"bleu_{key}"] = bleu(hyps, ref)
            if timed and mark == max(snaps):
                row[f"{key}_sent_s"], row[f"{key}_rss_mb"] = n / wall, rss
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def decode_speed(runs: list, n: int, repeats: int) -> None:
    """Whole-process sentences/s (median of ``repeats``, the toolkits interleaved) and peak RSS (the
    largest) of each toolkit's last snapshot, greedy and beam 5, added to its last row. ``runs``:
    (row, decode function, checkpoint) per toolkit."""
    for beam, key in ((5, "beam5"), (1, "greedy")):
        walls, rss = {id(r): [] for r, _, _ in runs}, {id(r): 0.0 for r, _, _ in runs}
        for _ in range(repeats):
            for row, decode, ckpt in runs:
                wall, _, peak = decode(ckpt, beam)
                walls[id(row)].append(wall)
                rss[id(row)] = max(rss[id(row)], peak)
        for row, _, _ in runs:
            row[f"{key}_sent_s"], row[f"{key}_rss_mb"] = n / statistics.median(walls[id(row)]), rss[id(row)]


def ratio(a: dict, b: dict) -> dict:
    """Ours ÷ theirs for two result rows: the BLEU difference when both are the same minute's snapshot,
    and the speed and RSS ratios where both rows have them."""
    r = {"ours": a["toolkit"], "theirs": b["toolkit"], "minutes": f"{a['minutes']:g} / {b['minutes']:g}"}
    if a["minutes"] == b["minutes"]:
        r["bleu_beam5_diff"] = a["bleu_beam5"] - b["bleu_beam5"]
    return r | {f"{k}_ratio": a[k] / b[k] for k in ("beam5_sent_s", "greedy_sent_s", "beam5_rss_mb") if k in a and k in b}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onmt", type=Path, required=True, help="virtual environment with opennmt-py 3.5.1")
    ap.add_argument("--joey", type=Path, help="virtual environment with joeynmt 2.3.0 (optional; trained for the "
                                             "smallest of --minutes only, about 20 minutes plus 4 per decoding)")
    ap.add_argument("--data", type=Path, default=Path("prepared/de-en"))
    ap.add_argument("--minutes", nargs="+", type=float, default=[20.0])
    ap.add_argument("--repeats", type=int, default=3, help="decoding speed: median of this many runs")
    ap.add_argument("--reuse", type=Path, help="the work folder of an earlier run (give the same --minutes): decode its "
                                              "snapshots again, no training (JoeyNMT trains if its snapshot is missing)")
    ap.add_argument("--int8", action="store_true", help="also decode our last snapshot with --quantize int8")
    ap.add_argument("--concurrent", action="store_true", help="train ours and OpenNMT-py at the same time, one CPU "
                                                              "core each (JoeyNMT after them, on one core)")
    ap.add_argument("--out", default="bench/results/time_to_quality.json")
    args = ap.parse_args()
    data = args.data.resolve()
    work = args.reuse or Path(tempfile.mkdtemp(prefix="nmt-ttq-"))
    if not args.reuse:
        export_pieces(data, work)
        shutil.copy(data / "spm.model", work / "spm.model")
    src, ref = data / "test.src", data / "test.ref"
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(data / "spm.model"))
    pieces = work / "test.pieces"
    pieces.write_text("".join(" ".join(sp.encode(l, out_type=str)) + "\n" for l in src.read_text().splitlines()))

    if args.reuse:
        last = max(args.minutes)
        ours_snaps = {m: work / (f"ours-{m}min.pt" if m != last else "ours/best.pt") for m in args.minutes}
        onmt_snaps = {m: work / f"onmt-{m}min.pt" for m in args.minutes}
    elif args.concurrent:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            ap.error("--concurrent needs two CPU cores")
        with ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(train_ours, data, work, args.minutes, cores[0]),
                    pool.submit(train_onmt, args.onmt, work, args.minutes, cores[1])]
            for job in as_completed(jobs):
                if job.exception() is not None:  # the first failure stops the other
                    ABORT.set()
            ours_snaps, onmt_snaps = (job.result() for job in jobs)
    else:
        ours_snaps = train_ours(data, work, args.minutes)
        onmt_snaps = train_onmt(args.onmt, work, args.minutes)
    dec_ours = lambda m, b: decode_ours(m, src, b)  # noqa: E731
    dec_onmt = lambda m, b: decode_onmt(args.onmt, m, pieces, b, work)  # noqa: E731
    joey_rows = []
    if args.joey:
        first = min(args.minutes)
        joey_snaps = {first: work / f"joey-{first}min.ckpt"}
        if not joey_snaps[first].exists():
            joey_snaps = train_joey(args.joey, work, [first], sorted(os.sched_getaffinity(0))[0] if args.concurrent else None)
        dec_joey = lambda m, b: decode_joey(args.joey, m, pieces, b, work)  # noqa: E731
        joey_rows = evaluate("JoeyNMT 2.3.0", joey_snaps, dec_joey, ref, timed=True)
    ours, theirs = evaluate("nmt", ours_snaps, dec_ours, ref), evaluate("OpenNMT-py 3.5.1", onmt_snaps, dec_onmt, ref)
    last = max(args.minutes)
    runs = [(ours[-1], dec_ours, ours_snaps[last]), (theirs[-1], dec_onmt, onmt_snaps[last])]
    int8 = []
    if args.int8:
        dec_int8 = lambda m, b: decode_ours(m, src, b, "int8")  # noqa: E731
        int8 = evaluate("nmt --quantize int8", {last: ours_snaps[last]}, dec_int8, ref)
        runs.insert(1, (int8[0], dec_int8, ours_snaps[last]))
    decode_speed(runs, len(ref.read_text().splitlines()), args.repeats)
    cols = ["toolkit", "minutes", "bleu_beam5", "bleu_greedy", "beam5_sent_s", "greedy_sent_s", "beam5_rss_mb",
            "greedy_rss_mb"]
    rows = ours + int8 + theirs + joey_rows
    print(table(rows, cols))
    pairs = [*zip(ours, theirs), *((r, theirs[-1]) for r in int8)]
    if joey_rows:  # its snapshot is the first mark: BLEU against ours there, speed against our last
        pairs += [(r, joey_rows[0]) for r in ours + int8 if r["minutes"] == joey_rows[0]["minutes"] or r is ours[-1]]
    ratios = [ratio(a, b) for a, b in pairs]
    print(table(ratios, ["ours", "theirs", "minutes", "bleu_beam5_diff", "beam5_sent_s_ratio", "greedy_sent_s_ratio",
                         "beam5_rss_mb_ratio"]))
    write_json(args.out, {"minutes": args.minutes, "cores_per_toolkit": 1 if args.concurrent else len(os.sched_getaffinity(0)),
                          "rows": rows, "ratios": ratios, "work": str(work)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
