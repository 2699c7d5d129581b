"""Bad input and odd set-ups: one clear line, a non-zero exit, nothing lost."""

import os
import shutil
import stat

import pytest
import torch
from typer.testing import CliRunner

from nmt.config import TrainConfig, load_config
from nmt.errors import NmtError
from nmt.models.transformer import TransformerConfig
from nmt_cli.main import app

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_output_is_the_input_file(trained_small, tmp_path):
    src = tmp_path / "in.de"
    src.write_text("Ein Hund läuft.\nZwei Männer.\n")
    r = invoke("translate", "-m", trained_small / "best.pt", "-i", src, "-o", src)
    assert r.exit_code == 1 and "is the same file as --input" in r.output and r.output.count("\n") == 1
    r = invoke("translate", "-m", trained_small / "best.pt", "-i", src, "--alignments", src)
    assert r.exit_code == 1 and "--alignments" in r.output and "same file as --input" in r.output
    r = invoke("translate", "-m", trained_small / "best.pt", "-i", src, "-o", tmp_path / "o", "--attention-stats",
               tmp_path / "o")
    assert r.exit_code == 1 and "--attention-stats" in r.output and "same file as --output" in r.output
    assert src.read_text() == "Ein Hund läuft.\nZwei Männer.\n" and not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", ["--output", "--alignments", "--attention-stats"])
def test_output_is_the_checkpoint(trained_small, tmp_path, option):
    model = tmp_path / "m.pt"
    shutil.copy(trained_small / "best.pt", model)
    before = model.read_bytes()
    (tmp_path / "sub").mkdir()
    r = invoke("translate", "-m", model, option, tmp_path / "sub" / ".." / "m.pt", input="Ein Hund.\n")
    assert r.exit_code == 1 and f"{option} " in r.output and "same file as --model" in r.output
    assert r.output.count("\n") == 1 and model.read_bytes() == before


def test_output_in_a_missing_folder(trained_small, tmp_path):
    r = invoke("translate", "-m", trained_small / "best.pt", "-o", tmp_path / "no" / "out.en", input="x\n")
    assert r.exit_code == 1 and "--output" in r.output and "cannot write" in r.output
    r = invoke("translate", "-m", trained_small / "best.pt", "--attention-stats", tmp_path / "no" / "s", input="x\n")
    assert r.exit_code == 1 and "--attention-stats" in r.output


@pytest.mark.parametrize("option, value, message", [
    ("--align-layer", "1", "has 1 layer(s)"),  # trained_small has one decoder layer
    ("--align-layer", "-2", "has 1 layer(s)"),
    ("--align-heads", "0,2", "--align-heads 2: the model's attention has 2 head(s)"),
])
def test_alignment_layer_and_heads_checked_before_any_output(trained_small, option, value, message):
    r = invoke("translate", "-m", trained_small / "best.pt", "--alignments", "-", option, value, input="Ein Hund.\n")
    assert r.exit_code == 1 and message in r.output and r.output.count("\n") == 1  # the error line only, no output
    r = invoke("translate", "-m", trained_small / "best.pt", "--alignments", "-", "--align-layer", "-1",
               "--align-heads", "1", input="Ein Hund.\n")
    assert r.exit_code == 0 and r.stdout.count("\n") == 1 and "\t" in r.stdout


def test_verbose_raises_the_error_itself(tmp_path):
    (tmp_path / "bad.pt").write_text("x")
    r = runner.invoke(app, ["-v", "info", str(tmp_path / "bad.pt")])
    assert r.exit_code != 0 and isinstance(r.exception, NmtError)
    r = runner.invoke(app, ["info", str(tmp_path / "bad.pt")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit) and "nmt: error:" in r.output


def test_unexpected_exception_is_one_line(trained_small, monkeypatch):
    import nmt.translate

    def boom(*a, **k):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(nmt.translate.Translator, "hypotheses", boom)
    r = invoke("translate", "-m", trained_small / "best.pt", input="x\n")
    assert r.exit_code == 1 and r.output == (
        "nmt: internal error: RuntimeError: something broke (run with --verbose for the traceback)\n")
    r = invoke("-v", "translate", "-m", trained_small / "best.pt", input="x\n")
    assert isinstance(r.exception, RuntimeError)


@pytest.mark.parametrize("override, message", [
    ("train.valid_every=0", "train.valid_every must be >= 1"),
    ("train.accumulate=0", "train.accumulate must be >= 1"),
    ("train.valid_beam=0", "train.valid_beam must be >= 1"),
    ("train.warmup=0", "train.warmup must be >= 1 for the inverse_sqrt schedule"),
    ("train.schedule=\"cosine\"", "unknown train.schedule 'cosine'; valid: inverse_sqrt"),
    ("train.amp=\"fp8\"", "unknown train.amp 'fp8'"),
    ("train.label_smoothing=1.0", "train.label_smoothing must be in [0, 1)"),
    ("model.heads=3", "model.heads (3) must divide model.d_model (256)"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
])
def test_config_values_are_checked(override, message, tmp_path):
    with pytest.raises(NmtError, match=None) as e:
        load_config(None, [override])
    assert message in str(e.value)
    r = invoke("train", "-o", tmp_path / "r", "--set", override)
    assert r.exit_code == 1 and message in r.output and r.output.count("\n") == 1


def test_config_defaults_and_edge_values_are_valid():
    TrainConfig(), TransformerConfig()
    assert TrainConfig(warmup=0, schedule="constant").warmup == 0


def test_mismatched_checkpoint_is_a_clear_error(trained_small, tmp_path):
    from nmt.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(trained_small / "best.pt")
    ckpt["model_config"] = {**ckpt["model_config"], "ff_size": 128}
    with pytest.raises(NmtError, match="does not match this version of nmt's models: Error"):
        model_from_checkpoint(ckpt)
    ckpt["model_config"] = {**ckpt["model_config"], "no_such_field": 1}
    with pytest.raises(NmtError, match="does not match"):
        model_from_checkpoint(ckpt)


def test_checkpoint_is_readable_by_others(trained_small):
    mode = stat.S_IMODE(os.stat(trained_small / "best.pt").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def _train_cfg(data, *extra):
    return load_config(None, [f'data.dir="{data}"', "model.d_model=32", "model.heads=2", "model.ff_size=64",
                              "model.encoder_layers=1", "model.decoder_layers=1", "train.batch_tokens=600",
                              "train.threads=1", *extra])


def test_training_without_valid_data_writes_best(prepared_small, tmp_path):
    from nmt.train import Trainer

    data = tmp_path / "data"
    data.mkdir()
    for name in ("spm.model", "train.ids.pt"):
        shutil.copy(prepared_small / name, data / name)
    logs = []
    result = Trainer(_train_cfg(data, "train.max_steps=4", "train.valid_every=2", "train.patience=1"),
                     tmp_path / "run", log=logs.append).run()
    assert result["reason"] == "max_steps" and result["step"] == 4  # patience 1 never stops it
    assert (tmp_path / "run" / "best.pt").exists() and "best.pt is the latest" in logs[-1]
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=False)["meta"]["step"] == 4


def test_too_few_batches_for_accumulate_is_an_error(prepared_small, tmp_path):
    from nmt.train import Trainer

    with pytest.raises(NmtError, match="train.accumulate is 1000"):
        Trainer(_train_cfg(prepared_small, "train.accumulate=1000", "train.max_minutes=0.1"),
                tmp_path / "run", log=lambda m: None).run()


def test_data_path_with_quotes_reaches_the_config(tmp_path):
    odd = tmp_path / "bob's \"data\""
    odd.mkdir()
    r = invoke("train", "-d", odd, "-o", tmp_path / "r")
    assert r.exit_code == 1 and f"{odd}: no spm.model here" in r.output


def test_quickstart_reuses_only_a_finished_prepare_of_the_same_pair(tmp_path):
    import json

    from nmt_cli.quickstart import _prepared_langs

    assert _prepared_langs(tmp_path) is None  # nothing there
    (tmp_path / "train.ids.pt").write_bytes(b"")  # an interrupted prepare leaves no prepare.json
    assert _prepared_langs(tmp_path) is None
    (tmp_path / "prepare.json").write_text(json.dumps({"langs": ["de", "en"]}))
    assert _prepared_langs(tmp_path) == ["de", "en"]
    (tmp_path / "prepare.json").write_text("{not json")
    assert _prepared_langs(tmp_path) is None


def test_attention_command_checks_its_layer(trained_small):
    r = invoke("attention", "-m", trained_small / "best.pt", "--layer", "3", "Ein Hund.")
    assert r.exit_code == 1 and "--layer 3: the model's attention has 1 layer(s)" in r.output
    r = invoke("attention", "-m", trained_small / "best.pt", "--layer", "0", "Ein Hund.")
    assert r.exit_code == 0 and r.output.count("\n") >= 3


def test_environment_errors_are_not_internal_errors(trained_small, monkeypatch):
    import nmt.translate

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nmt.translate.Translator, "hypotheses", full)
    r = invoke("translate", "-m", trained_small / "best.pt", input="x\n")
    assert r.exit_code == 1 and r.output == "nmt: error: [Errno 28] No space left on device\n"


def test_unknown_device_is_a_config_error():
    with pytest.raises(NmtError, match="unknown train.device 'gpu'"):
        load_config(None, ['train.device="gpu"'])
    assert load_config(None, ['train.device="cuda:1"']).train.device == "cuda:1"


def test_json_config_must_be_a_table(tmp_path):
    """A run's config.json loads like a TOML config; anything but a table of sections is one line."""
    good = tmp_path / "config.json"
    good.write_text('{"model": {"kind": "transformer", "heads": 2, "d_model": 32}, "train": {"adam_betas": [0.9, 0.98]}}')
    cfg = load_config(good)
    assert cfg.model.heads == 2 and cfg.train.adam_betas == (0.9, 0.98)
    for text, message in (("[1, 2]", "not list"), ("{", "not valid JSON")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(NmtError, match=message):
            load_config(tmp_path / "bad.json")


def test_prepare_again_leaves_no_split_of_the_earlier_one(multi30k_small, tmp_path):
    """A second prepare into the same folder without valid/test removes the first one's files,
    which would not match its vocabulary."""
    f, out = multi30k_small, tmp_path / "p"
    r = invoke("prepare", "--train-src", f["train.de"], "--train-tgt", f["train.en"], "--valid-src", f["val.de"],
               "--valid-tgt", f["val.en"], "--test-src", f["val.de"], "--test-tgt", f["val.en"], "-o", out,
               "--vocab-size", 300)
    assert r.exit_code == 0 and (out / "valid.ids.pt").exists() and (out / "test.ref").exists()
    r = invoke("prepare", "--train-src", f["train.de"], "--train-tgt", f["train.en"], "-o", out, "--vocab-size", 250)
    assert r.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["prepare.json", "spm.model", "train.ids.pt"]


def test_prepare_empty_files_and_a_file_in_the_way(multi30k_small, tmp_path):
    f, empty = multi30k_small, tmp_path / "empty"
    empty.write_text("")
    r = invoke("prepare", "--train-src", empty, "--train-tgt", empty, "-o", tmp_path / "a")
    assert r.exit_code == 1 and "the training file is empty" in r.output
    r = invoke("prepare", "--train-src", f["train.de"], "--train-tgt", f["train.en"], "--test-src", empty,
               "--test-tgt", empty, "-o", tmp_path / "b", "--vocab-size", 300)
    assert r.exit_code == 1 and "the test file is empty" in r.output and not (tmp_path / "b").exists()
    r = invoke("prepare", "--train-src", f["train.de"], "--train-tgt", f["train.en"], "-o", empty)
    assert r.exit_code == 1 and "exists and is not a folder" in r.output and "read" not in r.output
    r = invoke("quickstart", "--src-lang", "de", "--tgt-lang", "de", "-o", tmp_path / "q")
    assert r.exit_code == 1 and "both 'de'" in r.output and not (tmp_path / "q").exists()


def test_average_refuses_to_write_over_an_input(trained_small, tmp_path):
    a = tmp_path / "a.pt"
    shutil.copy(trained_small / "best.pt", a)
    before = a.read_bytes()
    r = invoke("average", a, trained_small / "last.pt", "-o", a)
    assert r.exit_code == 1 and "is the same file as the input" in r.output and a.read_bytes() == before


def test_attention_folder_is_checked_before_any_output(trained_small, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep\n")
    r = invoke("translate", "-m", trained_small / "best.pt", "--attention", f, input="Ein Hund.\n")
    assert r.exit_code == 1 and "--attention" in r.output and "not a folder" in r.output
    assert r.stdout == "" and f.read_text() == "keep\n"  # refused before any translation


def test_options_that_mean_nothing_are_refused(trained_small, tmp_path):
    r = invoke("translate", "-m", trained_small / "best.pt", "--max-len-a", -1, input="Ein Hund.\n")
    assert r.exit_code == 2 and "--max-len-a" in r.output
    hyp = tmp_path / "h"
    hyp.write_text("a dog\n")
    r = invoke("evaluate", "--hyp", hyp, "--src", hyp, "--ref", hyp)
    assert r.exit_code == 1 and "--src only applies with --model" in r.output
    r = invoke("attention", "-m", trained_small / "best.pt", " ")
    assert r.exit_code == 1 and "the sentence is empty" in r.output


def test_info_without_validation_says_so(trained_small, tmp_path):
    avg = tmp_path / "avg.pt"
    assert invoke("average", trained_small / "best.pt", "-o", avg).exit_code == 0
    r = invoke("info", avg)
    assert r.exit_code == 0 and "valid BLEU:     none (not validated); the run's best: " in r.output
    assert "None" not in r.output and "-1.0" not in r.output


@pytest.mark.parametrize("how, status, said", [("ctrl-c", 130, "nmt: interrupted"), ("sigterm", 143, "nmt: terminated")])
def test_interrupted_translation_says_how_much_the_output_holds(trained_small, tmp_path, monkeypatch, how, status, said):
    """Ctrl-C or SIGTERM while translating into a file: exit 130 / 143 and a line naming how many
    lines it holds; SIGTERM's handler is put back afterwards."""
    import os
    import signal

    from nmt.translate import Translator

    calls = {"n": 0}
    search = Translator.hypotheses

    def interrupted(self, lines, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            if how == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # handled at once, in this (the main) thread
        return search(self, lines, **kw)

    monkeypatch.setattr(Translator, "hypotheses", interrupted)
    out, before = tmp_path / "out.en", signal.getsignal(signal.SIGTERM)
    r = invoke("translate", "-m", trained_small / "best.pt", "-o", out, "--chunk-lines", 2,
               input="Ein Hund.\nZwei Männer.\nEine Frau.\nEin Kind.\nEin Haus.\n")
    assert r.exit_code == status and f"{out} holds the translations of the first 4 input lines only" in r.output
    assert said in r.output and len(out.read_text().splitlines()) == 4
    assert signal.getsignal(signal.SIGTERM) is before


def test_evaluate_an_empty_reference(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("")
    r = invoke("evaluate", "--hyp", empty, "--ref", empty)
    assert r.exit_code == 1 and "is empty, nothing to score" in r.output and "internal" not in r.output
