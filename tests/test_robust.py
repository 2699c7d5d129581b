"""Crash safety, exact resume, interrupts and torchrun/DDP on CPU (gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt.checkpoint import load_checkpoint
from nmt.config import load_config
from nmt.train import Trainer
from nmt_cli.main import app

TINY = ["model.d_model=32", "model.heads=2", "model.ff_size=64", "model.encoder_layers=1", "model.decoder_layers=1",
        "train.batch_tokens=300", "train.threads=1", "train.log_every=1", "train.valid_beam=1",
        "train.valid_max_sentences=5", "train.warmup=4"]


def train_losses(prepared, out, extra, resume=False) -> list[float]:
    cfg = load_config(None, [f'data.dir="{prepared}"', *TINY, *extra])
    Trainer(cfg, out, resume=resume, log=lambda m: None).run()
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def losses(records) -> dict[int, float]:
    """Train loss by step; a step logged twice (a resume that restarted from scratch and appended
    to metrics.jsonl, or a second rank logging) fails here."""
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps)), steps
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def test_stop_and_resume_gives_the_same_losses(tmp_path, prepared_small):
    full = losses(train_losses(prepared_small, tmp_path / "a", ["train.max_steps=12", "train.valid_every=100"]))
    train_losses(prepared_small, tmp_path / "b", ["train.max_steps=5", "train.valid_every=100"])
    resumed = losses(train_losses(prepared_small, tmp_path / "b", ["train.max_steps=12", "train.valid_every=100"],
                                  resume=True))
    assert sorted(full) == sorted(resumed) == list(range(1, 13))
    for step in full:
        assert abs(full[step] - resumed[step]) <= 1e-6, step


def test_resume_across_an_epoch_boundary(tmp_path, prepared_small):
    """300 pairs at 300 tokens per batch is ~25 batches: 40 updates cross into epoch 2."""
    full = losses(train_losses(prepared_small, tmp_path / "a", ["train.max_steps=40", "train.valid_every=100"]))
    train_losses(prepared_small, tmp_path / "b", ["train.max_steps=30", "train.valid_every=100"])
    resumed = losses(train_losses(prepared_small, tmp_path / "b", ["train.max_steps=40", "train.valid_every=100"],
                                  resume=True))
    assert all(abs(full[s] - resumed[s]) <= 1e-6 for s in full)


def test_resume_without_last_is_an_error(tmp_path, prepared_small):
    from nmt.errors import NmtError

    with pytest.raises(NmtError, match="nothing to resume"):
        Trainer(load_config(None, [f'data.dir="{prepared_small}"', *TINY]), tmp_path / "x", resume=True)


def test_resume_continues_with_the_runs_own_config(tmp_path, prepared_small):
    """``nmt train -o RUN --resume`` needs no config: RUN/config.json holds the run's settings (the
    ``--set`` ones included); a model that does not fit the checkpoint fails in one line, naming
    the settings that differ; settings that keep the weights (dropout) apply with a note."""
    from typer.testing import CliRunner

    from nmt_cli.main import app

    out = tmp_path / "run"
    train_losses(prepared_small, out, ["train.max_steps=2", "train.valid_every=100"])
    invoke = lambda *a: CliRunner().invoke(app, ["train", "-o", str(out), "--resume", *a])
    r = invoke("--set", "train.max_steps=3")
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out / "last.pt")["meta"]["step"] == 3
    r = invoke("-c", str(Path(__file__).parents[1] / "configs/transformer.toml"), "-d", str(prepared_small), "--set", "train.max_steps=4")
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "model.d_model 32 in the checkpoint, 256 now" in r.output and "config.json" in r.output
    r = invoke("--set", "model.heads=4", "--set", "train.max_steps=4")  # the weights would load, meaning else
    assert r.exit_code == 1 and "model.heads 2 in the checkpoint, 4 now" in r.output, r.output
    r = invoke("--set", "model.dropout=0.3", "--set", "train.max_steps=4")
    assert r.exit_code == 0 and "model.dropout 0.1 in the checkpoint, 0.3 now" in r.output, r.output
    assert load_checkpoint(out / "last.pt")["meta"]["step"] == 4
    assert json.loads((out / "config.json").read_text())["data"]["dir"] == str(prepared_small.resolve())
    r = CliRunner().invoke(app, ["train", "-o", str(tmp_path / "elsewhere"), "--resume"])
    assert r.exit_code == 1 and "config.json not found: nothing to resume there" in r.output, r.output


def test_fp16_on_a_cpu_fails_before_anything_is_built(tmp_path, monkeypatch):
    """No data is read and no model built (the data folder does not even exist) and no torch
    warning is printed: one line, at once."""
    import warnings

    from nmt.errors import NmtError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(None, [f'data.dir="{tmp_path / "missing"}"', 'train.amp="fp16"', 'train.device="cpu"'])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NmtError, match="train.amp fp16 needs CUDA"):
            Trainer(cfg, tmp_path / "run", log=lambda m: None)


def test_nan_loss_stops_or_skips(tmp_path, prepared_small, monkeypatch):
    from nmt.errors import NmtError
    import nmt.train

    real = nmt.train.output_loss

    def poisoned(out, target, eps):
        loss, nll = real(out, target, eps)
        return loss * float("nan"), nll

    monkeypatch.setattr(nmt.train, "output_loss", poisoned)
    with pytest.raises(NmtError, match="loss became nan"):
        train_losses(prepared_small, tmp_path / "a", ["train.max_steps=3"])
    assert not (tmp_path / "a" / "best.pt").exists()
    cfg = load_config(None, [f'data.dir="{prepared_small}"', *TINY, "train.max_steps=3", 'train.nan_policy="skip"',
                             "train.max_epochs=1"])
    result = Trainer(cfg, tmp_path / "b", log=lambda m: None).run()
    assert result["step"] == 0


def test_training_puts_the_signal_handlers_back(tmp_path, prepared_small):
    """A program that trains and goes on (a notebook, a script) gets its Ctrl-C back: the handlers
    that turn SIGINT/SIGTERM into "save and stop" last only while the run does, error or not."""
    def mine(signum, frame):
        pass

    before = {s: signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        cfg = load_config(None, [f'data.dir="{prepared_small}"', *TINY, "train.max_steps=2"])
        trainer = Trainer(cfg, tmp_path / "run", log=lambda m: None)
        assert trainer.run()["step"] == 2
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
        failing = Trainer(cfg, tmp_path / "bad", log=lambda m: None)

        def update(group):
            raise RuntimeError("failed inside the loop")

        failing.update = update
        with pytest.raises(RuntimeError, match="failed inside the loop"):
            failing.run()
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "nmt_cli.main", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_sigint_saves_last_and_resume_continues(tmp_path, prepared_small):
    out = tmp_path / "run"
    args = ["train", "-d", prepared_small, "-o", out] + [a for kv in TINY for a in ("--set", kv)] + [
        "--set", "train.max_steps=100000", "--set", "train.valid_every=100000"]
    p = run_cli(args)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.time() < deadline and p.poll() is None, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err  # saved, resumable, not finished: a script sees the interruption
    assert "--resume" in err
    ckpt = load_checkpoint(out / "last.pt")
    step = ckpt["meta"]["step"]
    assert step >= 3
    p = run_cli(args[:-4] + ["--set", f"train.max_steps={step + 2}", "--set", "train.valid_every=100000", "--resume"])
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert load_checkpoint(out / "last.pt")["meta"]["step"] == step + 2
    logged = losses([json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()])
    assert max(logged) == step + 2  # the resumed run went on from `step`, it did not start over


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (0, 130)])
def test_interrupted_training_exits_128_plus_the_signal(monkeypatch, tmp_path, signum, status):
    """A stop on request saves and can resume, but the run did not finish: scripts see 128 + the
    signal (0: a torchrun rank that stopped because another one was asked to)."""
    from typer.testing import CliRunner

    import nmt.train
    from nmt_cli.main import app

    result = {"reason": "interrupted", "step": 3, "best_bleu": -1.0, "signal": int(signum)}
    monkeypatch.setattr(nmt.train, "train", lambda config, out, resume=False: result)
    assert CliRunner().invoke(app, ["train", "-o", str(tmp_path / "r")]).exit_code == status
    result["reason"] = "max_steps"
    assert CliRunner().invoke(app, ["train", "-o", str(tmp_path / "r")]).exit_code == 0


@pytest.mark.parametrize("extra", [[], ["train.agreement=0.5"]], ids=["plain", "agreement"])
def test_torchrun_two_processes_match_one_process(tmp_path, prepared_small, extra):
    """2 gloo ranks x 1 batch == 1 process x 2 accumulated batches (same global batch, no dropout);
    with agreement, two DDP models (the reverse one too) train in step."""
    common = [f'data.dir="{prepared_small}"', *TINY, "model.dropout=0.0", "train.max_steps=4", "train.valid_every=4",
              *extra]
    single = losses(train_losses(prepared_small, tmp_path / "one", [*common[1:], "train.accumulate=2"]))
    sets = [a for kv in common for a in ("--set", kv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nmt_cli.main", "train", "-o", str(tmp_path / "two"), *sets]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    # progress lines left out, so that the ranks' own messages fit beside torchrun's summary
    assert r.returncode == 0, "\n".join(l for l in r.stderr.splitlines() if "upd/s" not in l)[-4000:]
    two = losses([json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()])
    assert sorted(two) == [1, 2, 3, 4]
    for s in two:
        assert abs(two[s] - single[s]) < 1e-4, (s, two[s], single[s])
    assert (tmp_path / "two" / "best.pt").exists()


@pytest.mark.slow
def test_kill_nine_ten_times(prepared_small):
    from pathlib import Path

    script = Path(__file__).parents[1] / "bench" / "kill_resume.py"
    r = subprocess.run([sys.executable, str(script), "--data", str(prepared_small), "--kills", "10"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_early_stopping(tmp_path, prepared_small):
    cfg = load_config(None, [f'data.dir="{prepared_small}"', *TINY, "train.max_steps=20", "train.valid_every=1",
                             "train.patience=2", "train.lr=1e-9"])  # a learning rate too small to improve BLEU
    result = Trainer(cfg, tmp_path, log=lambda m: None).run()
    assert result["reason"] == "early_stopping" and result["step"] == 3


def test_download_path_checks_the_checksum(tmp_path):
    import gzip
    import hashlib

    from nmt.corpora import _download
    from nmt.errors import NmtError

    text = b"ein Hund\n"
    gz = tmp_path / "train.de.gz"
    gz.write_bytes(gzip.compress(text))
    _download(gz.as_uri(), tmp_path / "out" / "train.de", hashlib.sha256(text).hexdigest())
    assert (tmp_path / "out" / "train.de").read_bytes() == text
    with pytest.raises(NmtError, match="checksum mismatch"):
        _download(gz.as_uri(), tmp_path / "out2" / "train.de", "0" * 64)
    assert not (tmp_path / "out2" / "train.de").exists()
    with pytest.raises(NmtError, match="NMT_DATA_HOME"):
        _download((tmp_path / "missing.gz").as_uri(), tmp_path / "x", None)


def test_corpus_resolves_from_data_home(monkeypatch, tmp_path):
    from conftest import SHARED_DATA
    from nmt.corpora import corpus_file

    if not (SHARED_DATA / "multi30k").exists():
        if os.environ.get("NMT_REQUIRE_DATA") == "1":
            pytest.fail(f"no Multi30k mirror at {SHARED_DATA}")
        pytest.skip("no Multi30k mirror")
    monkeypatch.setenv("NMT_DATA_HOME", str(SHARED_DATA))
    monkeypatch.setenv("NMT_CACHE", str(tmp_path))
    assert corpus_file("multi30k", "test", "de", download=False) == SHARED_DATA / "multi30k/raw/test_2016_flickr.de"


def test_keep_freed_memory_is_switchable(monkeypatch):
    from nmt.memory import keep_freed_memory

    monkeypatch.setenv("NMT_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("NMT_KEEP_FREED_MEMORY")
    import platform

    glibc = platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc  # mallopt accepted every setting on glibc; a no-op elsewhere


def test_bf16_on_a_cpu_without_native_bf16_warns_in_the_log(tmp_path, prepared_small, monkeypatch):
    import nmt.device
    from nmt.device import amp_warning

    cpu = torch.device("cpu")
    monkeypatch.setattr(nmt.device, "cpu_has_native_bf16", lambda: True)
    assert amp_warning(cpu, "bf16") is None
    monkeypatch.setattr(nmt.device, "cpu_has_native_bf16", lambda: False)
    assert amp_warning(cpu, "none") is None and amp_warning(torch.device("cuda"), "bf16") is None
    lines = []
    cfg = load_config(None, [f'data.dir="{prepared_small}"', *TINY, "train.max_steps=1", 'train.amp="bf16"',
                             'train.device="cpu"'])
    Trainer(cfg, tmp_path, log=lines.append).run()
    assert [l for l in lines if l.startswith("warning:")] == [amp_warning(cpu, "bf16")]
    assert "slower than fp32" in amp_warning(cpu, "bf16")


def test_torchrun_time_limit_is_agreed(tmp_path, prepared_small):
    """Each rank reads its own clock; the time limit must stop both at the same update (a rank that
    stopped alone used to leave the other waiting in a collective)."""
    sets = [a for kv in [f'data.dir="{prepared_small}"', *TINY, "train.max_minutes=0.05", "train.valid_every=1000"]
            for a in ("--set", kv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nmt_cli.main", "train", "-o", str(tmp_path / "two"), *sets]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reached train.max_minutes" in r.stderr
    assert load_checkpoint(tmp_path / "two" / "last.pt")["meta"]["step"] >= 1


def test_short_runs_log_their_end_and_count_epochs_from_one(tmp_path, prepared_small):
    """A run shorter than train.log_every still logs its last update; after train.max_epochs = 1 the
    final validation and the checkpoint say epoch 1 (not 2: the epoch index is one past the last)."""
    records = train_losses(prepared_small, tmp_path / "a", ["train.max_steps=3", "train.log_every=50"])
    assert [r["step"] for r in records if r["kind"] == "train"] == [3]
    records = train_losses(prepared_small, tmp_path / "b", ["train.max_epochs=1", "train.log_every=1000",
                                                             "train.valid_every=100000"])
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["epoch"] for r in valid] == [1]
    assert [r["epoch"] for r in records if r["kind"] == "train"] == [1]  # its last update, though < log_every
    assert load_checkpoint(tmp_path / "b" / "last.pt")["meta"]["update_epoch"] == 1
    r = CliRunner().invoke(app, ["info", str(tmp_path / "b" / "last.pt")])
    assert r.exit_code == 0 and "(epoch 1)" in r.output, r.output
