"""A training run's folder: an earlier run is refused, replaced (--overwrite) or continued
(--resume), and a resumed run at its limit trains nothing."""

import json

from typer.testing import CliRunner

from nmt_cli.main import app

runner = CliRunner()
TINY = ["model.d_model=32", "model.heads=2", "model.ff_size=64", "model.encoder_layers=1", "model.decoder_layers=1",
        "train.batch_tokens=500", "train.valid_beam=1", "train.threads=1", "train.max_minutes=0"]


def train(data, out, *extra):
    sets = [a for s in TINY + list(extra) for a in ("--set", s)]
    return runner.invoke(app, ["train", "-d", str(data), "-o", str(out), *sets])


def steps(run) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_folder_with_a_run_is_refused_overwritten_or_resumed(prepared_small, tmp_path):
    run = tmp_path / "run"
    r = train(prepared_small, run, "train.max_steps=2", "train.valid_every=1", "train.keep_checkpoints=5",
              "train.log_every=1")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in run.glob("step-*.pt")) == ["step-1.pt", "step-2.pt"]
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    r = train(prepared_small, run, "train.max_steps=1")  # neither --resume nor --overwrite
    assert r.exit_code == 1 and "holds a run already" in r.output and "--overwrite" in r.output
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing touched

    r = runner.invoke(app, ["train", "-o", str(run), "--resume", "--overwrite"])
    assert r.exit_code == 1 and "give one" in r.output

    r = runner.invoke(app, ["train", "-o", str(run), "--resume"])  # at its max_steps already
    assert r.exit_code == 0 and "nothing to do" in r.output and "reached train.max_steps (update 2" in r.output
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # not one update more, no file rewritten

    r = runner.invoke(app, ["train", "-d", str(prepared_small), "-o", str(run), "--overwrite",
                            *[a for s in TINY + ["train.max_steps=1", "train.valid_every=1", "train.log_every=1"]
                              for a in ("--set", s)]])
    assert r.exit_code == 0, r.output
    assert steps(run) == [1, 1]  # this run's train and valid lines only
    assert not list(run.glob("step-*.pt"))  # the old run's snapshots are gone, none mixed into nmt average


def test_resume_at_other_limits_trains_nothing(prepared_small, tmp_path):
    run = tmp_path / "run"
    assert train(prepared_small, run, "train.max_epochs=1", "train.valid_every=1000").exit_code == 0
    lines = steps(run)
    r = runner.invoke(app, ["train", "-o", str(run), "--resume"])
    assert r.exit_code == 0 and "nothing to do" in r.output and "max_epochs" in r.output
    assert steps(run) == lines  # not validated again either
    r = runner.invoke(app, ["train", "-o", str(run), "--resume", "--set", "train.max_epochs=2"])
    assert r.exit_code == 0 and "nothing to do" not in r.output and max(steps(run)) > max(lines)


def test_train_into_a_file_is_refused_before_anything(prepared_small, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me\n")
    r = train(prepared_small, f)
    assert r.exit_code == 1 and "exists and is not a folder" in r.output and f.read_text() == "keep me\n"


def test_ids_beyond_the_vocabulary_are_refused(prepared_small, tmp_path):
    """A prepared folder mixing two preparations (ids of a larger vocabulary) fails before training."""
    import shutil

    import torch

    data = tmp_path / "data"
    shutil.copytree(prepared_small, data)
    packed = torch.load(data / "valid.ids.pt", weights_only=True)
    packed["tgt"]["ids"][0] = 5000
    torch.save(packed, data / "valid.ids.pt")
    r = train(data, tmp_path / "run", "train.max_steps=1")
    assert r.exit_code == 1 and "valid.ids.pt: has piece ids up to 5000" in r.output
    assert not (tmp_path / "run").exists()


def test_a_run_that_stopped_before_its_first_checkpoint_starts_over(prepared_small, tmp_path):
    """metrics.jsonl alone (a run killed or failed before saving) is not a run to refuse: training
    again starts over; a folder with best.pt but no last.pt (train.keep_last=false) has nothing
    to resume, and both messages say --overwrite."""
    run = tmp_path / "run"
    r = train(prepared_small, run, "train.accumulate=100000", "train.max_steps=1")  # fails at once
    assert r.exit_code == 1 and "train.accumulate" in r.output
    assert (run / "metrics.jsonl").exists() and not list(run.glob("*.pt"))
    r = train(prepared_small, run, "train.max_steps=1", "train.valid_every=1", "train.keep_last=false")
    assert r.exit_code == 0, r.output
    assert (run / "best.pt").exists() and not (run / "last.pt").exists()
    r = train(prepared_small, run, "train.max_steps=1")
    assert r.exit_code == 1 and "no last.pt to resume from: start over with --overwrite" in r.output
    r = runner.invoke(app, ["train", "-o", str(run), "--resume"])
    assert r.exit_code == 1 and "nothing to resume" in r.output and "with --overwrite" in r.output


def test_resume_after_early_stopping_or_the_time_limit_trains_nothing(prepared_small, tmp_path):
    from nmt.checkpoint import atomic_save, load_checkpoint

    run = tmp_path / "run"
    assert train(prepared_small, run, "train.max_steps=2", "train.valid_every=1").exit_code == 0
    ckpt = load_checkpoint(run / "last.pt", mmap=False)
    ckpt["training"]["bad_validations"] = 3
    atomic_save(ckpt, run / "last.pt")
    r = runner.invoke(app, ["train", "-o", str(run), "--resume", "--set", "train.max_steps=10", "--set",
                            "train.patience=3"])
    assert r.exit_code == 0 and "nothing to do" in r.output and "raise train.patience" in r.output
    ckpt["training"]["elapsed"] = 120.0
    ckpt["training"]["bad_validations"] = 0
    atomic_save(ckpt, run / "last.pt")
    r = runner.invoke(app, ["train", "-o", str(run), "--resume", "--set", "train.max_steps=10", "--set",
                            "train.max_minutes=2"])
    assert r.exit_code == 0 and "nothing to do" in r.output and "max_minutes" in r.output


def test_building_a_trainer_deletes_nothing(prepared_small, tmp_path):
    """The library starts a new run's folder afresh when the run starts, not when it is built."""
    from nmt.config import load_config
    from nmt.train import Trainer

    run = tmp_path / "run"
    assert train(prepared_small, run, "train.max_steps=1", "train.valid_every=1").exit_code == 0
    before = sorted(p.name for p in run.iterdir())
    cfg = load_config(None, [f'data.dir="{prepared_small}"', *TINY, "train.max_steps=1"])
    Trainer(cfg, run, log=lambda m: None)
    assert sorted(p.name for p in run.iterdir()) == before
