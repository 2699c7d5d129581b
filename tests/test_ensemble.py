"""Ensembles: the mixture's arithmetic, the model contract (incremental = teacher-forced, beam 1 =
greedy, batching), mixed kinds, and `nmt translate / evaluate -m A -m B`."""

import pytest
import torch
from typer.testing import CliRunner

from conftest import incremental_log_probs, random_batch, tiny_transformer
from nmt.checkpoint import atomic_save, load_checkpoint, make_checkpoint
from nmt.ensemble import Ensemble, mean_attention, mean_probs
from nmt.models import build_model, untie_output
from nmt.models.lstm import LSTMConfig
from nmt.search import beam_search, greedy_search
from nmt_cli.main import app


def tiny_lstm(vocab_size: int = 40):
    return build_model("lstm", LSTMConfig(vocab_size=vocab_size, embed_size=16, hidden_size=16, encoder_layers=1))


def members(seed: int = 0):
    torch.manual_seed(seed)
    return tiny_transformer().eval(), tiny_transformer(d_model=16, heads=2).eval(), tiny_lstm().eval()


def test_mean_probs_is_the_log_of_the_mean_probability():
    a = torch.log_softmax(torch.randn(3, 7), -1)
    b = torch.log_softmax(torch.randn(3, 7), -1)
    torch.testing.assert_close(mean_probs([a, b]), ((a.exp() + b.exp()) / 2).log())
    assert mean_probs([a]) is a
    torch.testing.assert_close(mean_probs([a, a]), a)
    # attention: equal shapes averaged as they are, else each over layers and heads first
    x, y = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    torch.testing.assert_close(mean_attention([x, y]), (x + y) / 2)
    z = torch.rand(2, 1, 1, 5)
    torch.testing.assert_close(mean_attention([x, z]), (x.mean((1, 2), keepdim=True) + z) / 2)
    assert mean_attention([x, None]) is None


def test_a_step_is_the_mixture_of_the_members_steps():
    ms = members()
    ens = Ensemble(list(ms)).eval()
    src, tgt = random_batch()
    with torch.inference_mode():
        got = incremental_log_probs(ens, src, tgt)  # (B, T, V)
        each = [incremental_log_probs(m, src, tgt) for m in ms]
        forced = torch.log_softmax(ens(src, tgt).logits, -1)
    expected = torch.stack([e.exp() for e in each]).mean(0).log()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # incremental decoding equals teacher forcing, as the contract asks
    torch.testing.assert_close(got, forced, rtol=1e-4, atol=1e-4)


def test_an_ensemble_of_one_model_twice_searches_like_the_model():
    torch.manual_seed(0)
    m = tiny_transformer().eval()
    src, _ = random_batch(b=4)
    alone, twice = beam_search(m, src, beam=3), beam_search(Ensemble([m, m]), src, beam=3)
    assert [h[0].tokens for h in alone] == [h[0].tokens for h in twice]
    assert [h[0].score for h in alone] == pytest.approx([h[0].score for h in twice], abs=1e-4)


def test_mixed_kinds_beam_one_is_greedy_and_batching_changes_nothing():
    ens = Ensemble(list(members(1))).eval()
    assert not ens.shares_source_rows  # the LSTM takes its src_* rows per beam
    assert Ensemble([tiny_transformer(), tiny_transformer()]).shares_source_rows
    src, _ = random_batch(b=3)
    assert [h[0].tokens for h in greedy_search(ens, src)] == \
        [h[0].tokens for h in beam_search(ens, src, beam=1, alpha=0.0)]
    together = beam_search(ens, src, beam=3, need_attention=True)
    alone = [beam_search(ens, src[i : i + 1, : int((src[i] != 0).sum())], beam=3)[0] for i in range(3)]
    assert [h[0].tokens for h in together] == [h[0].tokens for h in alone]
    assert [h[0].score for h in together] == pytest.approx([h[0].score for h in alone], abs=1e-4)
    attn = together[0][0].attention  # (T+1, 1, 1, S): the members' mean over layers and heads
    assert attn.shape[1:3] == (1, 1) and torch.allclose(attn.sum(-1), torch.ones_like(attn.sum(-1)), atol=1e-5)


def test_untie_output_reaches_every_member():
    torch.manual_seed(0)
    ens = Ensemble([tiny_transformer(tie_embeddings=True), tiny_transformer(tie_embeddings=True)]).eval()
    src, tgt = random_batch()
    before = ens(src, tgt).logits
    untie_output(ens)
    assert all(m.output is not None for m in ens.members)
    torch.testing.assert_close(ens(src, tgt).logits, before)


@pytest.fixture()
def checkpoints(trained_small, tmp_path):
    """best.pt and last.pt of one run, an LSTM with the same SentencePiece model, and a copy of
    last.pt with another SentencePiece model."""
    last = load_checkpoint(trained_small / "last.pt")
    torch.manual_seed(0)
    lstm = tiny_lstm(last["model_config"]["vocab_size"]).eval()
    atomic_save(make_checkpoint(lstm, "lstm", last["spm_model"].numpy().tobytes(), {}), tmp_path / "lstm.pt")
    spm = last["spm_model"].clone()
    spm[-1] ^= 1
    atomic_save({**last, "spm_model": spm}, tmp_path / "other.pt")
    return {"best": trained_small / "best.pt", "last": trained_small / "last.pt", "lstm": tmp_path / "lstm.pt",
            "other": tmp_path / "other.pt"}


def test_translate_and_evaluate_with_an_ensemble(checkpoints, multi30k_small, tmp_path):
    c = checkpoints
    text = "ein Hund läuft .\n\nzwei Männer\n"
    for extra in ([], ["--quantize", "int8"], ["--beam", "1"], ["--n-best", "2"]):
        r = CliRunner().invoke(app, ["translate", "-m", str(c["best"]), "-m", str(c["lstm"]), *extra], input=text)
        assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3 and r.stdout.splitlines()[1] == "", r.output
        if extra == ["--n-best", "2"]:  # text<TAB>score twice per line
            assert r.stdout.splitlines()[0].count("\t") == 3
    src, ref = multi30k_small["test_2016_flickr.de"], multi30k_small["test_2016_flickr.en"]
    r = CliRunner().invoke(app, ["evaluate", "-m", str(c["best"]), "-m", str(c["last"]), "--src", str(src),
                                 "--ref", str(ref), "--json"])
    assert r.exit_code == 0 and '"bleu"' in r.stdout, r.output


def test_an_ensemble_needs_one_vocabulary(checkpoints):
    r = CliRunner().invoke(app, ["translate", "-m", str(checkpoints["last"]), "-m", str(checkpoints["other"])],
                           input="ein Hund\n")
    assert r.exit_code == 1 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "has another SentencePiece model than" in r.stderr and "an ensemble needs one vocabulary" in r.stderr


def test_a_model_given_twice_is_refused(checkpoints):
    r = CliRunner().invoke(app, ["translate", "-m", str(checkpoints["last"]), "-m", str(checkpoints["last"])],
                           input="ein Hund\n")
    assert r.exit_code == 1 and "given twice" in r.stderr and r.stdout == ""
