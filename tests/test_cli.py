"""The CLI through Typer's CliRunner, end to end on a few hundred real Multi30k lines."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from nmt_cli.main import app

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.mark.parametrize("command", [[], ["prepare"], ["train"], ["translate"], ["evaluate"], ["info"], ["quickstart"],
                                     ["attention"]])
def test_help(command):
    r = invoke(*command, "--help")
    assert r.exit_code == 0 and "Usage" in r.output


def test_version():
    from nmt import __version__

    r = invoke("--version")
    assert r.exit_code == 0 and r.output == f"nmt {__version__}\n"


def test_prepare_line_count_mismatch(tmp_path):
    (tmp_path / "a").write_text("x\ny\n")
    (tmp_path / "b").write_text("x\n")
    r = invoke("prepare", "--train-src", tmp_path / "a", "--train-tgt", tmp_path / "b", "-o", tmp_path / "out")
    assert r.exit_code == 1
    assert "has 2 lines but" in r.output and "has 1" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("args, message", [
    (["--corpus", "multi30k", "--src-lang", "de", "--tgt-lang", "en", "--train-src", "{a}", "--train-tgt", "{b}"],
     "give --corpus or files, not both (--corpus multi30k with --train-src, --train-tgt)"),
    (["--train-src", "{a}", "--train-tgt", "{b}", "--valid-src", "{a}"],
     "--valid-src and --valid-tgt go together: give both or neither"),
    (["--train-src", "{a}", "--train-tgt", "{b}", "--test-tgt", "{b}"],
     "--test-src and --test-tgt go together: give both or neither"),
    (["--corpus", "multi30k", "--src-lang", "de", "--tgt-lang", "de"], "--src-lang and --tgt-lang are both 'de'"),
    (["--corpus", "multi30k", "--src-lang", "de", "--tgt-lang", "ja"], "corpus multi30k has no language 'ja'"),
])
def test_prepare_rejects_what_it_would_ignore(tmp_path, monkeypatch, args, message):
    """Nothing given is silently ignored, and a wrong language fails before any download (the
    data home points at an empty folder and a download would fail with another message)."""
    monkeypatch.setenv("NMT_DATA_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("NMT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a").write_text("ein hund\n")
    (tmp_path / "b").write_text("a dog\n")
    r = invoke("prepare", *[a.format(a=tmp_path / "a", b=tmp_path / "b") for a in args], "-o", tmp_path / "out")
    assert r.exit_code == 1 and message in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_prepare_reports_counts_and_cleans(tmp_path, multi30k_small):
    src = multi30k_small["train.de"].read_text().splitlines()
    tgt = multi30k_small["train.en"].read_text().splitlines()
    (tmp_path / "s").write_text("\n".join(src + ["", "a\tb  c", "one"]) + "\n")
    (tmp_path / "t").write_text("\n".join(tgt + ["x", "d e", "1 2 3 4 5 6 7 8 9 10"]) + "\n")
    r = invoke("prepare", "--train-src", tmp_path / "s", "--train-tgt", tmp_path / "t", "-o", tmp_path / "out",
               "--vocab-size", 300)
    assert r.exit_code == 0, r.output
    assert "kept 301" in r.output and "1 empty" in r.output and "1 ratio" in r.output
    summary = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert summary["vocab_size"] == 300 and summary["train"]["kept"] == 301


def test_vocab_too_large_is_a_clear_error(tmp_path):
    (tmp_path / "a").write_text("ein hund\n")
    (tmp_path / "b").write_text("a dog\n")
    r = invoke("prepare", "--train-src", tmp_path / "a", "--train-tgt", tmp_path / "b", "-o", tmp_path / "o")
    assert r.exit_code == 1 and "vocab" in r.output.lower() and "Traceback" not in r.output


def test_train_translate_evaluate_end_to_end(tmp_path, prepared_small):
    run = tmp_path / "run"
    r = invoke("train", "-d", prepared_small, "-o", run, "--set", "model.d_model=32", "--set", "model.heads=2",
               "--set", "model.ff_size=64", "--set", "model.encoder_layers=1", "--set", "model.decoder_layers=1",
               "--set", "train.max_steps=4", "--set", "train.valid_every=2", "--set", "train.batch_tokens=500",
               "--set", "train.valid_beam=2", "--set", "train.threads=1")
    assert r.exit_code == 0, r.output
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "valid"] == [2, 4]

    r = invoke("translate", "-m", run / "best.pt", input="Ein Hund läuft.\n\n   \nZwei Männer.\n")
    assert r.exit_code == 0, r.output
    out = r.stdout.split("\n")
    assert len(out) == 5 and out[1] == "" and out[2] == "" and out[4] == ""

    src = prepared_small / "test.src"
    hyp = tmp_path / "hyp.txt"
    r = invoke("translate", "-m", run / "best.pt", "-i", src, "-o", hyp, "--beam", 2)
    assert r.exit_code == 0, r.output
    assert len(hyp.read_text().split("\n")) == len(src.read_text().split("\n"))

    r = invoke("translate", "-m", run / "best.pt", "--n-best", 2, "--beam", 2, input="Ein Hund.\n")
    fields = r.stdout.rstrip("\n").split("\t")
    assert len(fields) == 4 and float(fields[1]) >= float(fields[3])

    r = invoke("info", run / "best.pt")
    assert r.exit_code == 0 and "transformer" in r.output and "parameters" in r.output
    assert {x["epoch"] for x in lines} == {1} and "(epoch 1)" in r.output  # counted from 1, as in metrics.jsonl

    # evaluate -m searches as translate does with the same options
    knobs = ["--beam", 2, "--length-penalty", 0.0, "--coverage-penalty", 0.5]
    r = invoke("translate", "-m", run / "best.pt", "-i", src, "-o", hyp, *knobs)
    assert r.exit_code == 0, r.output
    ref = prepared_small / "test.ref"
    direct = json.loads(invoke("evaluate", "-m", run / "best.pt", "--src", src, "--ref", ref, "--json", *knobs).stdout)
    assert direct == json.loads(invoke("evaluate", "--hyp", hyp, "--ref", ref, "--json").stdout)
    r = invoke("evaluate", "--hyp", hyp, "--ref", ref, "--beam", 3, "--coverage-penalty", 0.2)
    assert r.exit_code == 1 and "--beam, --coverage-penalty only apply with --model" in r.output


def test_evaluate_matches_sacrebleu_cli(tmp_path, prepared_small):
    ref = prepared_small / "test.ref"
    lines = ref.read_text().splitlines()
    hyp = tmp_path / "hyp"
    hyp.write_text("\n".join(l.replace("a", "the", 1) if i % 3 else l[::-1] for i, l in enumerate(lines)) + "\n")
    r = invoke("evaluate", "--hyp", hyp, "--ref", ref, "--json")
    assert r.exit_code == 0, r.output
    ours = json.loads(r.stdout)
    cli = json.loads(subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", "bleu", "chrf",
                                     "-w", "2"], capture_output=True, text=True, check=True).stdout)
    assert ours["bleu"] == {"score": cli[0]["score"], "signature": cli[0]["signature"]}
    assert ours["chrf"] == {"score": cli[1]["score"], "signature": cli[1]["signature"]}
    assert 0 < ours["bleu"]["score"] < 100


def test_evaluate_line_mismatch(tmp_path):
    (tmp_path / "h").write_text("a\nb\n")
    (tmp_path / "r").write_text("a\n")
    r = invoke("evaluate", "--hyp", tmp_path / "h", "--ref", tmp_path / "r")
    assert r.exit_code == 1 and "hypotheses have 2 lines but references have 1" in r.output
    (tmp_path / "m.pt").write_bytes(b"not read: the line counts are compared first")
    r = invoke("evaluate", "-m", tmp_path / "m.pt", "--src", tmp_path / "h", "--ref", tmp_path / "r")
    assert r.exit_code == 1 and r.output == "nmt: error: --src has 2 lines but --ref has 1; they must match\n"


def test_unknown_config_key_lists_valid_keys(tmp_path, prepared_small):
    r = invoke("train", "-d", prepared_small, "-o", tmp_path / "r", "--set", "train.learning_rate=1")
    assert r.exit_code == 1 and "unknown key train.learning_rate" in r.output and "batch_tokens" in r.output
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nkind = "transformer"\nd_model = "big"\n')
    r = invoke("train", "-c", cfg, "-o", tmp_path / "r")
    assert r.exit_code == 1 and "model.d_model: expected an integer" in r.output


def test_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    r = invoke("translate", "-m", bad, input="x\n")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "bad.pt" in r.output


def test_empty_corpus_and_missing_file(tmp_path):
    (tmp_path / "a").write_text("\n\n")
    (tmp_path / "b").write_text("\n\n")
    r = invoke("prepare", "--train-src", tmp_path / "a", "--train-tgt", tmp_path / "b", "-o", tmp_path / "o")
    assert r.exit_code == 1 and "no usable training pairs" in r.output
    r = invoke("prepare", "--train-src", tmp_path / "missing", "--train-tgt", tmp_path / "b", "-o", tmp_path / "o")
    assert r.exit_code != 0 and "does not exist" in r.output
    r = invoke("train", "-d", tmp_path / "nowhere", "-o", tmp_path / "r")
    assert r.exit_code == 1 and "run `nmt prepare` first" in r.output


LSTM_SWITCHES = [
    ["model.score=\"dot\"", "model.attention_position=\"after\"", "model.input_feeding=true"],
    ["model.score=\"general\"", "model.separate_values=true", "model.heads=4"],
    ["model.score=\"mlp\"", "model.attention_position=\"before\"", "model.input_feeding=false"],
    ["model.score=\"scaled_dot\"", "model.attention_position=\"before\"", "model.heads=4", "model.separate_values=true"],
    ["model.coverage=true", "model.location_filters=2", "model.copy=true", "train.coverage_loss=0.5"],
    ["model.local=\"p\"", "model.score=\"mlp\""],
    ["model.monotonic=true", "model.monotonic_chunk=2"],
    ["model.hard=\"reinforce\"", "model.heads=2"],
    ["model.hard=\"exact\""],
]


@pytest.mark.parametrize("switches", LSTM_SWITCHES, ids=lambda s: "+".join(x.split("=")[0][6:] + "=" + x.split("=")[1].strip('"') for x in s))
def test_lstm_switches_train_translate_evaluate(tmp_path, prepared_small, switches):
    run = tmp_path / "run"
    sets = ['model.kind="lstm"', "model.embed_size=16", "model.hidden_size=16", "model.encoder_layers=1",
            "model.decoder_layers=1", "train.max_steps=2", "train.valid_every=2", "train.batch_tokens=400",
            "train.valid_beam=2", "train.valid_max_sentences=5", "train.threads=1", *switches]
    r = invoke("train", "-d", prepared_small, "-o", run, *[a for s in sets for a in ("--set", s)])
    assert r.exit_code == 0, r.output
    r = invoke("translate", "-m", run / "best.pt", "--beam", 3, "--attention", tmp_path / "pics",
               input="Ein Hund läuft.\n\nZwei Männer.\n")
    assert r.exit_code == 0 and r.stdout.count("\n") == 3 and r.stdout.split("\n")[1] == ""
    assert "<svg" in (tmp_path / "pics" / "index.html").read_text()  # the attention pictures of this switch
    r = invoke("evaluate", "-m", run / "best.pt", "--src", prepared_small / "test.src", "--ref",
               prepared_small / "test.ref", "--beam", 2, "--json")
    assert r.exit_code == 0, r.output
    assert "bleu" in json.loads(r.stdout)


def test_translate_quantize_int8(trained_small):
    lines = "Ein Hund läuft.\n\nZwei Männer sitzen auf einer Bank.\n"
    r = invoke("translate", "-m", trained_small / "best.pt", "--quantize", "int8", "--device", "cpu", input=lines)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("\n") == 3 and r.stdout.split("\n")[1] == ""
    r = invoke("translate", "-m", trained_small / "best.pt", "--quantize", "int4", input=lines)
    assert r.exit_code != 0 and "valid: none, int8" in r.output


def test_translate_amp(trained_small):
    lines = "Ein Hund läuft.\n\nZwei Männer sitzen auf einer Bank.\n"
    r = invoke("translate", "-m", trained_small / "best.pt", "--amp", "bf16", "--device", "cpu", input=lines)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("\n") == 3 and r.stdout.split("\n")[1] == "" and r.stdout.split("\n")[0]
    for args, message in [(["--amp", "fp16"], "--amp fp16 needs CUDA"),
                          (["--amp", "fp8"], "unknown --amp 'fp8'; valid: none, bf16, fp16"),
                          (["--amp", "bf16", "--quantize", "int8"], "--amp bf16 cannot run int8 layers")]:
        r = invoke("translate", "-m", trained_small / "best.pt", *args, "--device", "cpu", input=lines)
        assert r.exit_code == 1 and r.stdout == "" and message in r.output, r.output


def test_translator_searches_under_autocast(trained_small):
    """``SearchOptions.amp`` reaches the model: its products run in bf16 during the search, and
    nowhere else (the scores are fp32, :func:`test_search_scores_stay_fp32_under_autocast`)."""
    import torch

    from nmt.checkpoint import load_checkpoint, model_from_checkpoint
    from nmt.translate import SearchOptions, Translator

    model, vocab = model_from_checkpoint(load_checkpoint(trained_small / "best.pt"))
    seen = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    lines = ["Ein Hund läuft.", "", "Zwei Männer sitzen auf einer Bank."]
    for amp, dtype in [("none", torch.float32), ("bf16", torch.bfloat16)]:
        seen.clear()
        # one sentence per batch, two workers: autocast is thread-local and must be set in each thread
        opts = SearchOptions(beam=2, amp=amp, batch_tokens=1, workers=2)
        out = Translator(model, vocab, opts, warn=lambda m: None).translate(lines)
        assert len(out) == 3 and out[1] == "" and out[0]
        assert seen and set(seen) == {dtype}


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_search_scores_stay_fp32_under_autocast(kind):
    """Beam scores add up log-probabilities over many steps: the models return them in fp32 even
    when the step itself runs under bf16 autocast (``nmt translate --amp bf16``)."""
    import torch

    from conftest import tiny_transformer
    from nmt.models import build_model
    from nmt.models.lstm import LSTMConfig

    from nmt.device import cpu_has_native_bf16

    if kind == "lstm" and not cpu_has_native_bf16():
        pytest.skip("oneDNN has no bf16 LSTM kernel on a CPU without native bf16 (test_lstm_bf16_on_such_a_cpu)")
    torch.manual_seed(0)
    m = (tiny_transformer() if kind == "transformer" else
         build_model("lstm", LSTMConfig(vocab_size=40, embed_size=16, hidden_size=16, encoder_layers=1))).eval()
    src = torch.randint(4, 40, (3, 7))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = m.init_state(m.encode(src))
        logp = m.step(torch.full((3,), 1), state)[0]  # (B, V)
    assert logp.dtype == torch.float32 and logp.shape == (3, 40)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(3), atol=1e-4)


def test_lstm_bf16_on_such_a_cpu(prepared_small, tmp_path, monkeypatch):
    """Without native bf16 oneDNN has no bf16 LSTM: training and decoding say so in one line
    (instead of oneDNN's "could not create a primitive descriptor" mid-run)."""
    import torch

    import nmt.device
    from nmt.errors import NmtError
    from nmt.models import build_model
    from nmt.models.lstm import LSTMConfig
    from nmt.translate import SearchOptions, Translator

    monkeypatch.setattr(nmt.device, "cpu_has_native_bf16", lambda: False)
    r = invoke("train", "-o", tmp_path / "run", "--set", f'data.dir="{prepared_small}"', "--set", 'model.kind="lstm"',
               "--set", 'train.amp="bf16"', "--set", "train.max_steps=1", "--set", 'train.device="cpu"')
    assert r.exit_code == 1 and "train.amp bf16 cannot run an LSTM on this CPU" in r.output, r.output
    assert not (tmp_path / "run" / "last.pt").exists()
    m = build_model("lstm", LSTMConfig(vocab_size=40, embed_size=16, hidden_size=16, encoder_layers=1))
    with pytest.raises(NmtError, match="--amp bf16 cannot run an LSTM"):
        Translator(m, None, SearchOptions(amp="bf16"), device=torch.device("cpu"))


def test_quantize_int8_replaces_linear_and_lstm_layers():
    import copy

    import torch

    from nmt.models import build_model
    from nmt.models.lstm import LSTMConfig
    from nmt.translate import quantize

    m = build_model("lstm", LSTMConfig(vocab_size=40, embed_size=16, hidden_size=16, tie_embeddings=False)).eval()
    q = quantize(copy.deepcopy(m), "int8", "cpu")  # in place: quantise a copy to compare with the float model
    kinds = {f"{type(x).__module__}.{type(x).__name__}" for x in q.modules()}
    assert {"torch.ao.nn.quantized.dynamic.modules.linear.Linear",
            "torch.ao.nn.quantized.dynamic.modules.rnn.LSTM"} <= kinds
    src = torch.randint(4, 40, (2, 5))
    with torch.inference_mode():
        a, b = m.step(torch.full((2,), 2), m.init_state(m.encode(src)))[0], q.step(torch.full((2,), 2),
                                                                                  q.init_state(q.encode(src)))[0]
    assert 0 < (a - b).abs().max() < 0.1  # int8 weights: close to the float model, not equal


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_quantize_int8_reaches_a_tied_output_layer(kind):
    import copy

    import torch

    from nmt.models import build_model, model_config_class, untie_output
    from nmt.translate import quantize

    cfg = model_config_class(kind)(vocab_size=40, **({"embed_size": 16, "hidden_size": 16} if kind == "lstm" else
                                                     {"d_model": 16, "heads": 2, "ff_size": 32}), tie_embeddings=True)
    m = build_model(kind, cfg).eval()
    src, bos = torch.randint(4, 40, (2, 5)), torch.full((2,), 2)
    with torch.inference_mode():
        ref = m.step(bos, m.init_state(m.encode(src)))[0]
        u = untie_output(copy.deepcopy(m))
        torch.testing.assert_close(u.step(bos, u.init_state(u.encode(src)))[0], ref)  # untying keeps the logits
        q = quantize(copy.deepcopy(m), "int8", "cpu")
        assert type(q.output).__module__ == "torch.ao.nn.quantized.dynamic.modules.linear"
        assert 0 < (q.step(bos, q.init_state(q.encode(src)))[0] - ref).abs().max() < 0.1


def test_translate_batch_tokens_changes_batches_not_output(trained_small, multi30k_small):
    src = multi30k_small["test_2016_flickr.de"]
    outs = [invoke("translate", "-m", trained_small / "best.pt", "-i", src, "--beam", 3, "--batch-tokens", n)
            for n in (0, 1, 200)]  # no limit; one sentence per batch (below the beam); a few per batch
    assert all(r.exit_code == 0 for r in outs), outs[0].output
    assert outs[0].stdout == outs[1].stdout == outs[2].stdout
    assert outs[0].stdout.count("\n") == len(open(src, encoding="utf-8").read().splitlines())


def test_translate_workers_change_threads_not_output(trained_small, multi30k_small):
    """Batches searched side by side on 1, 2 or 3 threads: the same lines, and torch's thread count
    is as it was afterwards."""
    import torch

    src, threads = multi30k_small["test_2016_flickr.de"], torch.get_num_threads()
    outs = [invoke("translate", "-m", trained_small / "best.pt", "-i", src, "--beam", 3, "--batch-tokens", 200,
                   "--workers", n) for n in (1, 2, 3)]
    assert all(r.exit_code == 0 for r in outs), outs[0].output
    assert outs[0].stdout == outs[1].stdout == outs[2].stdout
    assert outs[0].stdout.count("\n") == len(open(src, encoding="utf-8").read().splitlines())
    assert torch.get_num_threads() == threads


def test_one_malloc_arena_for_decoding_commands_only(trained_small, multi30k_small, monkeypatch):
    """The decoding commands share one malloc arena among their search threads; the others keep glibc's."""
    import nmt.memory

    calls = []
    monkeypatch.setattr(nmt.memory, "keep_freed_memory", lambda one_arena=False: calls.append(one_arena))
    assert invoke("translate", "-m", trained_small / "best.pt", "--beam", 1, input="Ein Hund.\n").exit_code == 0
    assert invoke("info", trained_small / "best.pt").exit_code == 0
    assert calls == [True, False]


def test_console_script_skips_teardown_and_loses_nothing(trained_small, multi30k_small, tmp_path):
    """The real entry point (``main.run``) ends a successful ``nmt translate`` with ``os._exit`` (an
    atexit marker never prints): every line still arrives, on stdout and in ``-o``, with status 0; a
    failure exits the usual way (the marker prints)."""
    src, model = multi30k_small["test_2016_flickr.de"], trained_small / "best.pt"
    ref = invoke("translate", "-m", model, "-i", src, "--beam", 2)  # CliRunner: the normal exit path
    entry = ("import atexit, sys; atexit.register(lambda: print('TEARDOWN', file=sys.stderr)); "
             "sys.argv = ['nmt', *sys.argv[1:]]; from nmt_cli.main import run; run()")
    cmd = [sys.executable, "-c", entry, "translate", "-m", str(model), "-i", str(src), "--beam", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout == ref.stdout and "TEARDOWN" not in r.stderr
    assert ref.stdout.count("\n") == len(open(src, encoding="utf-8").read().splitlines())
    r = subprocess.run([*cmd, "-o", str(tmp_path / "out.en")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (tmp_path / "out.en").read_text(encoding="utf-8") == ref.stdout
    r = subprocess.run([*cmd, "--quantize", "int4"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("nmt: error: unknown --quantize") and "TEARDOWN" in r.stderr
    assert r.stdout == ""


def test_translate_dash_is_stdin_and_stdout(trained_small, tmp_path):
    """``-i -`` and ``-o -`` as in fairseq and Marian; --n-best above --beam warns; a missing or
    folder input is one line, exit 1."""
    model = trained_small / "best.pt"
    plain = invoke("translate", "-m", model, "--beam", 2, input="Ein Hund.\nZwei.\n")
    dashed = invoke("translate", "-m", model, "--beam", 2, "-i", "-", "-o", "-", input="Ein Hund.\nZwei.\n")
    assert plain.exit_code == dashed.exit_code == 0 and plain.stdout == dashed.stdout and not os.path.exists("-")
    r = invoke("translate", "-m", model, "--beam", 2, "--n-best", 3, input="Ein Hund.\n")
    assert r.exit_code == 0 and "warning: --n-best 3 is more than --beam 2" in r.stderr
    assert len(r.stdout.rstrip("\n").split("\t")) == 4  # two hypotheses: text, score, text, score
    for path, message in ((tmp_path / "nope", "no such file"), (tmp_path, "is a folder")):
        r = invoke("translate", "-m", model, "-i", path)
        assert r.exit_code == 1 and r.output == f"nmt: error: --input {path}: {message}\n"
