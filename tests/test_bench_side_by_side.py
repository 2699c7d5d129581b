"""The side-by-side benchmarks' own plumbing: the pieces the other toolkits train on, and pinning a
training to one core (bench/side_by_side.py, bench/time_to_quality.py; the benchmarks themselves need
the other toolkits and run outside the suite)."""

import sys
from pathlib import Path

import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from side_by_side import export_pieces  # noqa: E402
from time_to_quality import pinned  # noqa: E402


def test_export_pieces_writes_the_ids_ours_trains_on(prepared_small, tmp_path):
    from nmt.data import ParallelIds

    export_pieces(prepared_small, tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(prepared_small / "spm.model"))
    for split in ("train", "valid"):
        ids = ParallelIds.load(prepared_small / f"{split}.ids.pt")
        for side, name in ((ids.srcs[0], "src"), (ids.tgt, "tgt")):
            lines = (tmp_path / f"{split}.{name}").read_text().splitlines()
            off = side["offsets"].tolist()
            assert len(lines) == len(off) - 1 > 0
            for i in (0, len(lines) - 1):
                assert [sp.piece_to_id(p) for p in lines[i].split()] == side["ids"][off[i]:off[i + 1]].tolist()


def test_pinned_runs_on_one_core_with_one_thread():
    cmd, env = pinned(["python", "-c", "pass"], 1)
    assert cmd[:3] == ["taskset", "-c", "1"] and cmd[3:] == ["python", "-c", "pass"]
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    cmd, env = pinned(["python"], None)
    assert cmd == ["python"] and "taskset" not in cmd


def test_a_failed_concurrent_training_stops_the_other(tmp_path):
    """--concurrent: once ABORT is set (the other toolkit's training failed), a training waiting for
    its mark stops at once and its process group is killed."""
    import threading
    import time

    import pytest

    import time_to_quality as ttq

    script = "import time; print('Start training loop', flush=True); time.sleep(120)"
    log, aborted_at = tmp_path / "log", []

    def abort_once_started() -> None:  # the fake training is waiting for its 20-minute mark
        deadline = time.time() + 60
        while time.time() < deadline and not (log.exists() and "Start training loop" in log.read_text()):
            time.sleep(0.05)
        aborted_at.append(time.time())
        ttq.ABORT.set()

    ttq.ABORT.clear()
    threading.Thread(target=abort_once_started, daemon=True).start()
    with pytest.raises(RuntimeError, match="stopped, the other training failed"):
        ttq._train_until(([sys.executable, "-c", script], None), log, "Start training loop", "fake",
                         [20.0], lambda mark: None)
    ttq.ABORT.clear()
    assert time.time() - aborted_at[0] < 10 and "Start training loop" in log.read_text()
