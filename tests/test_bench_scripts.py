"""The benchmark scripts run against the current library (tiny model, tiny corpus): an API change
that breaks one fails here instead of in an hour-long benchmark run. Their figures are not checked,
only that each runs, writes its JSON and agrees with itself (e.g. the CLI's lines equal the in-process ones)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_decode_benchmark(trained_small, prepared_small, tmp_path):
    out = tmp_path / "decode.json"
    bench("decode.py", "-m", str(trained_small / "best.pt"), "--src", str(prepared_small / "test.src"),
          "--ref", str(prepared_small / "test.ref"), "--beams", "1", "2", "--out", str(out))
    rows = json.loads(out.read_text())["results"]["rows"]
    assert [r["beam"] for r in rows] == [1, 2]
    for r in rows:
        assert r["sentences"] == r["cli_same_lines"] == 40
        assert r["pure_sent_s"] > 0 and r["whole_sent_s"] > 0 and r["peak_rss_mb"] > 0 and 0 <= r["bleu"] <= 100


def test_quality_benchmark(trained_small, prepared_small, tmp_path):
    out = tmp_path / "quality.json"
    bench("quality.py", "-m", str(trained_small / "best.pt"), "--src", str(prepared_small / "test.src"),
          "--ref", str(prepared_small / "test.ref"), "--beam", "2", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["beam"] == 2 and 0 <= result["bleu"] <= 100
    for rate in ("repetition", "under_translation", "copy_rate"):
        assert 0 <= result[rate] <= 1


def test_train_throughput_benchmark(prepared_small, tmp_path):
    out = tmp_path / "train.json"
    small = "model.d_model=32,model.heads=2,model.ff_size=64,model.encoder_layers=1,model.decoder_layers=1"
    bench("train_throughput.py", "--data", str(prepared_small), "--models", "transformer", "--amp", "none",
          "--warmup", "1", "--updates", "2", "--batch-tokens", "600", "--threads", "1", "--variant", small,
          "--out", str(out))
    (row,) = json.loads(out.read_text())["results"]
    assert row["updates"] == 2 and row["batch_tokens"] == 600 and row["threads"] == 1
    assert row["tgt_tok_s"] > 0 and row["train_gflop_s"] > 0 and 0 < row["mfu"]


def test_rss_growth_benchmark(prepared_small, tmp_path):
    """bench/rss_growth.py: the resident set every --every updates, batches cycling over epochs."""
    out = tmp_path / "rss.json"
    tiny = ["model.d_model=32", "model.heads=2", "model.ff_size=64", "model.encoder_layers=1",
            "model.decoder_layers=1", "train.batch_tokens=600", "train.threads=1"]
    bench("rss_growth.py", "--data", str(prepared_small), "--amp", "none", "--updates", "7", "--every", "3",
          "--out", str(out), *(a for s in tiny for a in ("--set", s)))
    result = json.loads(out.read_text())["results"]
    assert [r["update"] for r in result["curves"]["transformer/none"]] == [3, 6]
    (row,) = result["rows"]
    assert (row["first_update"], row["last_update"]) == (3, 6) and 0 < row["first_rss_mb"] <= row["peak_rss_mb"]


def test_amp_quality_benchmark(prepared_small, tmp_path):
    """bench/amp_quality.sh: fp32 and bf16 runs of equal steps, each scored on the test set."""
    import os

    tiny = "model.d_model=32 model.heads=2 model.ff_size=64 model.encoder_layers=1 model.decoder_layers=1"
    env = dict(os.environ, DATA=str(prepared_small), STEPS="3", WORK=str(tmp_path), SETS=tiny, DEVICE="cpu")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "amp_quality.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "amp_quality.json").read_text())
    assert [(r["amp"], r["steps"]) for r in rows] == [("none", 3), ("bf16", 3)]
    for r in rows:
        assert 0 <= r["test_bleu"] <= 100 and 0 <= r["test_chrf"] <= 100 and r["valid_bleu"] is not None
    assert "test BLEU bf16 - fp32:" in proc.stdout


def test_loss_speed_benchmark(tmp_path):
    out = tmp_path / "loss.json"
    bench("loss_speed.py", "--rows", "64", "--vocab", "300", "--dim", "16", "--dtypes", "float32", "--repeats", "1",
          "--out", str(out))
    assert json.loads(out.read_text())["results"]


def test_output_loss_ab_benchmark(prepared_small, tmp_path):
    out = tmp_path / "ab.json"
    proc = bench("output_loss_ab.py", "--model", "transformer", "--data", str(prepared_small), "--rounds", "2",
                 "--updates", "1", "--out", str(out))
    result = json.loads(out.read_text())["results"]
    assert {k: len(v) for k, v in result["rounds"].items()} == {"chunked": 2, "logits": 2}
    assert "median target tokens/s" in proc.stdout


def test_ablation_benchmark(prepared_small, tmp_path):
    """Two rows of the attention-family grid: a trained one and a decode-only one sharing its model."""
    out = tmp_path / "family.json"
    bench("ablation.py", "--data", str(prepared_small), "--grid", "family", "--only", "baseline", "coverage-penalty",
          "--minutes", "0.05", "--jobs", "1", "--runs", str(tmp_path / "runs"), "--out", str(out))
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]["rows"]}
    assert set(rows) == {"baseline", "coverage-penalty"}
    assert rows["baseline"]["params"] == rows["coverage-penalty"]["params"] > 0  # one model, two searches
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["general-after-True-1"]


def test_silver_aer_benchmark(trained_small, prepared_small, multi30k_small):
    proc = bench("silver_aer.py", "--runs", str(trained_small), "--data", str(prepared_small),
                 "--raw", str(multi30k_small["train.de"].parent))
    assert "diagonal alignment AER" in proc.stdout
    assert proc.stdout.count("forward AER") == 2  # the last layer's head 0 and mean of heads (one layer only)
