"""Weight averaging: the moving average during training (train.ema), the snapshots it keeps
(train.keep_checkpoints) and checkpoint averaging (nmt average)."""

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nmt.average import average_checkpoints, average_weights
from nmt.checkpoint import atomic_save, load_checkpoint
from nmt.config import load_config
from nmt.ema import ema_decay, ema_update
from nmt.errors import NmtError
from nmt.train import Trainer
from nmt_cli.main import app
from test_robust import TINY


def test_ema_decay_warms_up_then_holds():
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(80, 0.999) == pytest.approx(0.9)
    assert ema_decay(800, 0.999) == pytest.approx(801 / 810)
    assert ema_decay(8991, 0.999) == pytest.approx(0.999) and ema_decay(10**6, 0.999) == 0.999
    assert ema_decay(5, 0.5) == pytest.approx(0.4) and ema_decay(20, 0.5) == 0.5


def test_ema_update_is_the_lerp_and_copies_integer_buffers():
    avg, model = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        avg.weight.fill_(1.0)
        model.weight.fill_(3.0)
        model.running_mean.fill_(2.0)
    model.num_batches_tracked += 7
    ema_update(avg, model, 0.75)
    assert torch.equal(avg.weight, torch.full((3,), 1.5))  # 0.75 * 1 + 0.25 * 3
    assert torch.equal(avg.running_mean, torch.full((3,), 0.5))  # 0.75 * 0 + 0.25 * 2
    assert int(avg.num_batches_tracked) == 7 and torch.equal(model.weight, torch.full((3,), 3.0))


def run(prepared, out, extra, resume=False) -> Trainer:
    cfg = load_config(None, [f'data.dir="{prepared}"', *TINY, "train.valid_every=2", "train.save_every=0", *extra])
    trainer = Trainer(cfg, out, resume=resume, log=lambda m: None)
    trainer.run()
    return trainer


def test_ema_checkpoints_hold_the_average_and_resume_exactly(prepared_small, tmp_path):
    plain = run(prepared_small, tmp_path / "plain", ["train.max_steps=6"])
    a = run(prepared_small, tmp_path / "a", ["train.max_steps=6", "train.ema=0.9"])
    # the average does not touch training: the raw weights are the plain run's, bit for bit
    last = load_checkpoint(tmp_path / "a" / "last.pt")
    raw = last["training"]["raw"]
    assert all(raw[k].equal(v) for k, v in plain.model.state_dict().items())
    assert all(last["weights"][k].equal(v) for k, v in a.average.state_dict().items())
    assert not all(last["weights"][k].equal(raw[k]) for k in raw)
    assert last["meta"]["ema"] == 0.9
    # resumed after 2 updates: the same raw weights and the same average
    run(prepared_small, tmp_path / "b", ["train.max_steps=2", "train.ema=0.9"])
    b = run(prepared_small, tmp_path / "b", ["train.max_steps=6", "train.ema=0.9"], resume=True)
    assert all(v.equal(a.model.state_dict()[k]) for k, v in b.model.state_dict().items())
    assert all(v.equal(a.average.state_dict()[k]) for k, v in b.average.state_dict().items())
    # validation scored the average: best.pt of the run is an averaged model, and info says so
    out = CliRunner().invoke(app, ["info", str(tmp_path / "a" / "best.pt")])
    assert "weights:        exponential moving average (train.ema 0.9)" in out.stdout
    # going on without train.ema continues from the raw weights
    c = Trainer(load_config(None, [f'data.dir="{prepared_small}"', *TINY, "train.max_steps=7"]), tmp_path / "a",
                resume=True, log=lambda m: None)
    assert c.average is None and all(v.equal(raw[k]) for k, v in c.model.state_dict().items())


def test_ema_by_hand_over_three_updates(prepared_small, tmp_path):
    snapshots = []
    cfg = load_config(None, [f'data.dir="{prepared_small}"', *TINY, "train.max_steps=3", "train.ema=0.5"])
    trainer = Trainer(cfg, tmp_path / "a", log=lambda m: None)
    update = trainer.update

    def recording(batches):
        result = update(batches)
        snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return result

    trainer.update = recording
    trainer.run()
    # the average starts from the initial weights (the same seed builds the same model)
    expected = {k: v.clone() for k, v in Trainer(cfg, tmp_path / "init", log=lambda m: None).model.state_dict().items()}
    for step, weights in enumerate(snapshots, start=1):
        d = min(0.5, (1 + step) / (10 + step))
        expected = {k: d * expected[k] + (1 - d) * weights[k] if v.is_floating_point() else weights[k]
                    for k, v in expected.items()}
    for k, v in trainer.average.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)


def test_keep_checkpoints_keeps_the_newest_snapshots_without_training_state(prepared_small, tmp_path):
    run(prepared_small, tmp_path / "a", ["train.max_steps=10", "train.keep_checkpoints=2"])
    names = sorted(p.name for p in (tmp_path / "a").glob("step-*.pt"))
    assert names == ["step-10.pt", "step-8.pt"]
    snap = load_checkpoint(tmp_path / "a" / "step-10.pt")
    last = load_checkpoint(tmp_path / "a" / "last.pt")
    assert "training" not in snap and snap["meta"]["step"] == 10
    assert all(snap["weights"][k].equal(v) for k, v in last["weights"].items())
    r = CliRunner().invoke(app, ["translate", "-m", str(tmp_path / "a" / "step-8.pt")], input="ein Hund .\n")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1, r.output


def test_average_weights_is_the_mean_and_keeps_tied_tensors_tied():
    shared = torch.tensor([1.0, 2.0])
    a = {"emb": shared, "out": shared, "n": torch.tensor(3)}
    other = torch.tensor([3.0, 6.0])
    b = {"emb": other, "out": other, "n": torch.tensor(5)}
    mean = average_weights([a, b])
    assert torch.equal(mean["emb"], torch.tensor([2.0, 4.0])) and mean["emb"] is mean["out"]
    assert int(mean["n"]) == 5
    half = average_weights([{"x": torch.tensor([1.0], dtype=torch.bfloat16)}, {"x": torch.tensor([2.0], dtype=torch.bfloat16)}])
    assert half["x"].dtype == torch.bfloat16 and float(half["x"]) == 1.5


def test_nmt_average_cli_and_its_refusals(trained_small, tmp_path):
    best, last = trained_small / "best.pt", trained_small / "last.pt"
    out = tmp_path / "avg.pt"
    r = CliRunner().invoke(app, ["average", str(best), str(last), "-o", str(out)])
    assert r.exit_code == 0 and "averaged 2 checkpoint(s)" in r.stderr, r.output
    avg, b, la = (load_checkpoint(p) for p in (out, best, last))
    assert "training" not in avg and avg["meta"]["averaged_from"] == [str(best), str(last)]
    for k, v in avg["weights"].items():
        torch.testing.assert_close(v, (b["weights"][k] + la["weights"][k]) / 2)
    r = CliRunner().invoke(app, ["translate", "-m", str(out)], input="ein Hund .\nzwei\n")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2
    info = CliRunner().invoke(app, ["info", str(out)])
    assert "averaged:       2 checkpoints" in info.stdout
    # another model shape, another direction, nothing to average: one line each, nothing written
    other = dict(la, model_config={**la["model_config"], "d_model": 64})
    atomic_save(other, tmp_path / "other.pt")
    reverse = dict(la, meta={**la["meta"], "direction": "reverse"})
    atomic_save(reverse, tmp_path / "reverse.pt")
    for bad, message in ((tmp_path / "other.pt", "model.d_model is 64, the first's 32"),
                         (tmp_path / "reverse.pt", "a model of the other direction")):
        r = CliRunner().invoke(app, ["average", str(best), str(bad), "-o", str(tmp_path / "bad.pt")])
        assert r.exit_code == 1 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.output
        assert not (tmp_path / "bad.pt").exists()
    r = CliRunner().invoke(app, ["average", str(best), str(best), "-o", str(tmp_path / "bad.pt")])
    assert r.exit_code == 1 and "given twice" in r.stderr and not (tmp_path / "bad.pt").exists()
    # another dropout (a resume may change it) averages
    atomic_save(dict(la, model_config={**la["model_config"], "dropout": 0.3}), tmp_path / "dropout.pt")
    r = CliRunner().invoke(app, ["average", str(best), str(tmp_path / "dropout.pt"), "-o", str(tmp_path / "d.pt")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["average", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "bad.pt")])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    with pytest.raises(NmtError, match="no checkpoints to average"):
        average_checkpoints([])


def test_ema_must_be_below_one(prepared_small):
    with pytest.raises(NmtError, match=r"train.ema must be in \[0, 1\)"):
        load_config(None, [f'data.dir="{prepared_small}"', "train.ema=1.0"])
    with pytest.raises(NmtError, match="train.keep_checkpoints must be >= 0"):
        load_config(None, [f'data.dir="{prepared_small}"', "train.keep_checkpoints=-1"])


def test_the_reverse_model_of_agreement_is_saved_raw(prepared_small, tmp_path):
    run(prepared_small, tmp_path / "a", ["train.max_steps=2", "train.ema=0.9", "train.agreement=0.5"])
    reverse = load_checkpoint(tmp_path / "a" / "last.reverse.pt")
    assert reverse["meta"]["ema"] == 0.0 and reverse["meta"]["direction"] == "reverse"
    info = CliRunner().invoke(app, ["info", str(tmp_path / "a" / "last.reverse.pt")])
    assert "moving average" not in info.stdout
