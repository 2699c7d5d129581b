"""Multiple sources: the packed layout, per-source and hierarchical attention, the three ways a
Transformer combines sources (and the LSTM's flat one), prepare/translate with TAB-joined sources,
and a toy that needs both sources."""

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_transformer
from nmt.attention import attend_per_source, mix_sources, side_by_side
from nmt.config import load_config
from nmt.data import ParallelIds
from nmt.errors import NmtError
from nmt.models import build_model
from nmt.models.lstm import LSTMConfig
from nmt.multisource import merge_rows, pack_sources, source_rows, split_fields
from nmt.prepare import PrepareOptions, prepare
from nmt.search import beam_search
from nmt.train import Trainer
from nmt.translate import SearchOptions, Translator
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID, Vocab
from nmt_cli.main import app

COMBINE = ["flat", "serial", "hierarchical", "gated"]


def two_source_batch(seed: int = 0):
    """Three examples of two sources of different lengths (one source of row 2 is missing: EOS only)."""
    g = random.Random(seed)
    seqs = [[[g.randrange(4, 40) for _ in range(n)] + [EOS_ID] for n in lens] for lens in ((5, 2), (1, 6), (3, 0))]
    tgt = torch.randint(4, 40, (3, 5), generator=torch.Generator().manual_seed(seed))
    tgt[:, 0] = BOS_ID
    return seqs, pack_sources(seqs, 2), tgt


def test_packed_layout_round_trips():
    seqs, src, _ = two_source_batch()
    assert src.shape == (3, 2 * 7)  # the longest source (6 + EOS) sets both segments' width
    assert src[0, :6].tolist() == seqs[0][0] and src[0, 7:10].tolist() == seqs[0][1]
    assert (src[0, 10:] == PAD_ID).all() and src[2, 7:].tolist() == [EOS_ID] + [PAD_ID] * 6
    rows = source_rows(src, 2)  # (B*N, S'): row 2b + i is source i of example b
    assert rows.shape == (6, 7) and rows[3, :7].tolist() == seqs[1][1]
    assert torch.equal(merge_rows(rows, 2), src)
    assert split_fields("a b\tc", 2) == ["a b", "c"] and split_fields("a\tb", 1) == ["a\tb"]
    with pytest.raises(NmtError, match="line 4: 1 TAB-separated source.*reads 2"):
        split_fields("only one", 2, "line 4")


def test_per_source_rows_sum_to_one_and_beta_mixes_them():
    torch.manual_seed(0)
    scores, values = torch.randn(2, 3, 3, 8), torch.randn(2, 3, 8, 5)  # (B, H, T, N*S'), N = 2, S' = 4
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 2:4] = False
    mask[1, 4:] = False  # example 1: source 2 missing altogether
    contexts, weights = attend_per_source(scores, values, mask, 2)  # (B, H, N, T, Dv), (B, H, N, T, S')
    assert contexts.shape == (2, 3, 2, 3, 5) and weights.shape == (2, 3, 2, 3, 4)
    sums = weights.sum(-1)
    assert torch.allclose(sums[0], torch.ones_like(sums[0])) and torch.allclose(sums[1, :, 0], torch.ones(3, 3))
    assert (weights[1, :, 1] == 0).all() and torch.isfinite(contexts).all()  # missing source: 0, no NaN
    assert (weights[0, :, 0, :, 2:] == 0).all()
    present = mask.view(2, 1, 1, 2, 4).any(-1)
    flat, beta = mix_sources(weights, torch.randn(2, 3, 3, 2), present)
    assert torch.allclose(flat.sum(-1), torch.ones(2, 3, 3)) and torch.allclose(beta.sum(-1), torch.ones(2, 3, 3))
    assert (beta[1, ..., 1] == 0).all()  # beta of the missing source is exactly 0
    assert torch.allclose(flat @ values, (beta.transpose(-1, -2)[..., None] * contexts).sum(-3), atol=1e-6)
    assert torch.equal(side_by_side(weights)[..., :4], weights[:, :, 0])


@pytest.mark.parametrize("combine", COMBINE)
def test_transformer_combinations(combine):
    """Each source's rows of the attention sum to 1 (flat and hierarchical: all of them together);
    step-by-step decoding gives the teacher-forced log-probabilities."""
    torch.manual_seed(0)
    m = tiny_transformer(sources=2, combine=combine).eval()
    seqs, src, tgt = two_source_batch()
    out = m(src, tgt, need_attention=True)
    a = out.attention  # (B, L, H, T, S)
    assert a.shape == (3, 2, 4, 5, 14)
    real = src != PAD_ID
    assert (a[~real[:, None, None, None, :].expand_as(a)] == 0).all()
    sums = a.view(3, 2, 4, 5, 2, 7).sum(-1)  # per source
    if combine == "serial":
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    else:
        assert torch.allclose(sums.sum(-1), torch.ones(3, 2, 4, 5), atol=1e-5)
    if combine in ("hierarchical", "gated"):  # example 2's source 2 is missing (EOS alone): none of the mass
        assert (sums[2, ..., 1] == 0).all() and (sums[:2] > 0).all()
    state = m.init_state(m.encode(src))
    steps = []
    for t in range(tgt.shape[1]):
        logp, state, _ = m.step(tgt[:, t], state)
        steps.append(logp)
    assert torch.allclose(torch.stack(steps, 1), torch.log_softmax(out.logits, -1), atol=1e-5)


def test_gated_combination_with_the_gate_shut_is_the_sentence_level_model():
    """HAN's acceptance: a gate forced to 1 (and source 1's embedding 0) gives exactly the model of
    source 1 alone, with the same weights; a context the gate lets in changes the output."""
    torch.manual_seed(0)
    gated = tiny_transformer(sources=2, combine="gated").eval()
    single = tiny_transformer().eval()
    missing = single.load_state_dict(gated.state_dict(), strict=False)
    assert set(missing.missing_keys) == set() and all(k.startswith(("source_embed", "decoder.")) for k in
                                                        missing.unexpected_keys)
    with torch.no_grad():
        gated.source_embed.weight[0] = 0.0
        for layer in gated.decoder:
            layer.gate.weight.zero_()
            layer.gate.bias.fill_(50.0)  # sigmoid(50) is 1.0 in float32
    seqs, src, tgt = two_source_batch()
    alone = pack_sources([[example[0]] for example in seqs], 1)
    assert torch.allclose(gated(src, tgt).logits, single(alone, tgt).logits, atol=1e-5)
    with torch.no_grad():
        for layer in gated.decoder:
            layer.gate.bias.fill_(0.0)
    assert not torch.allclose(gated(src, tgt).logits[:2], single(alone, tgt).logits[:2], atol=1e-3)


@pytest.mark.parametrize("combine", COMBINE)
def test_padding_of_the_other_examples_changes_nothing(combine):
    """An example's output does not depend on how wide the batch made its segments."""
    torch.manual_seed(0)
    m = tiny_transformer(sources=2, combine=combine).eval()
    seqs, src, tgt = two_source_batch()
    alone = m(pack_sources(seqs[:1], 2), tgt[:1]).logits
    assert torch.allclose(m(src, tgt).logits[:1], alone, atol=1e-5)


def test_the_decoder_reads_both_sources():
    torch.manual_seed(0)
    for combine in COMBINE:
        m = tiny_transformer(sources=2, combine=combine).eval()
        seqs, src, tgt = two_source_batch()
        changed = [[seqs[0][0], [7, 8, EOS_ID]], [[9, EOS_ID], seqs[0][1]]]
        base = m(pack_sources(seqs[:1], 2), tgt[:1]).logits
        for example in changed:
            assert not torch.allclose(m(pack_sources([example], 2), tgt[:1]).logits, base, atol=1e-4), combine


@pytest.mark.parametrize("combine", COMBINE)
def test_beam_search_alone_equals_in_a_batch(combine):
    torch.manual_seed(1)
    m = tiny_transformer(sources=2, combine=combine).eval()
    seqs, src, _ = two_source_batch(1)
    batch = beam_search(m, src, beam=3, need_attention=True, n_best=2)
    for i in range(3):
        alone = beam_search(m, pack_sources([seqs[i]], 2), beam=3, need_attention=True, n_best=2)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batch[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batch[i]], abs=1e-4)
        # the attention keeps the real positions only: both sources with their EOS
        assert batch[i][0].attention.shape[-1] == sum(map(len, seqs[i]))
        assert torch.allclose(alone[0].attention, batch[i][0].attention, atol=1e-5)


def test_lstm_reads_several_sources_flat():
    torch.manual_seed(0)
    c = LSTMConfig(embed_size=16, hidden_size=16, encoder_layers=1, decoder_layers=1, vocab_size=40, dropout=0.0,
                   sources=2, heads=2, coverage=True)
    m = build_model("lstm", c).eval()
    seqs, src, tgt = two_source_batch()
    out = m(src, tgt, need_attention=True)  # attention (B, 1, heads, T, S)
    assert torch.allclose(out.attention.sum(-1), torch.ones(3, 1, 2, 5), atol=1e-5)
    state, steps = m.init_state(m.encode(src)), []
    for t in range(tgt.shape[1]):
        logp, state, _ = m.step(tgt[:, t], state)
        steps.append(logp)
    assert torch.allclose(torch.stack(steps, 1), torch.log_softmax(out.logits, -1), atol=1e-5)
    assert torch.allclose(m(pack_sources(seqs[:1], 2), tgt[:1]).logits, out.logits[:1], atol=1e-5)
    with pytest.raises(ValueError, match="need a single source"):
        LSTMConfig(sources=2, local="p")


def test_config_refuses_an_unknown_combination():
    with pytest.raises(ValueError, match="model.combine must be one of flat, serial, hierarchical"):
        tiny_transformer(sources=2, combine="parallel")


# -- files: prepare, train, translate ----------------------------------------------------------

LETTERS = ["ka", "lo", "mi", "tun", "ser", "bi", "do", "fa"]
INDEX = ["one", "two", "three", "four", "five"]


def pick_example(rng: random.Random) -> tuple[str, str, str]:
    """Source 1 names positions, source 2 holds words; the target is source 2's words at those
    positions (the attention map's "pick" toy): neither source alone says it."""
    words = [rng.choice(LETTERS) for _ in range(rng.randint(3, 5))]
    picks = [rng.randrange(len(words)) for _ in range(rng.randint(1, 3))]
    return " ".join(INDEX[p] for p in picks), " ".join(words), " ".join(words[p].upper() for p in picks)


def write_columns(folder, name: str, rows) -> list:
    paths = [folder / f"{name}.{k}" for k in ("a", "b", "t")]
    for path, column in zip(paths, zip(*rows)):
        path.write_text("\n".join(column) + "\n")
    return paths


@pytest.fixture(scope="module")
def pick(tmp_path_factory):
    d = tmp_path_factory.mktemp("pick")
    rng = random.Random(0)
    train = write_columns(d, "train", [pick_example(rng) for _ in range(1000)])
    valid = write_columns(d, "valid", [pick_example(rng) for _ in range(20)])
    prepare(d / "prep", tuple(train), tuple(valid), langs=("idx", "words", "out"),
            options=PrepareOptions(vocab_size=50), log=lambda m: None)
    return d, d / "prep"


def test_prepare_writes_both_sources(pick, tmp_path):
    d, prepared = pick
    summary = json.loads((prepared / "prepare.json").read_text())
    assert summary["sources"] == 2 and summary["langs"] == ["idx", "words", "out"]
    first = (d / "valid.a").read_text().split("\n")[0], (d / "valid.b").read_text().split("\n")[0]
    assert (prepared / "valid.src").read_text().split("\n")[0] == "\t".join(first)
    data = ParallelIds.load(prepared / "train.ids.pt")
    batch = data.collate([0, 1])
    width = batch.src.shape[1] // 2
    assert data.sources == 2 and batch.src.shape[1] == int(data.src_len[[0, 1]].max())
    assert (batch.src.view(2, 2, width)[:, :, -1] == EOS_ID).any() and (batch.src == EOS_ID).sum() == 4  # one EOS per source
    # a training example is dropped when any of its sources fails the filters
    (tmp_path / "a").write_text("one\n\ntwo\n")
    (tmp_path / "b").write_text("ka lo\nmi\nfa\n")
    (tmp_path / "t").write_text("KA\nMI\nFA\n")
    s = prepare(tmp_path / "p", (tmp_path / "a", tmp_path / "b", tmp_path / "t"), options=PrepareOptions(vocab_size=17),
                log=lambda m: None)
    assert s["train"] == {"kept": 2, "dropped": {"empty": 1}}


TINY = ["model.d_model=32", "model.heads=2", "model.ff_size=64", "model.encoder_layers=1", "model.decoder_layers=2",
        "model.dropout=0.0", "train.batch_tokens=600", "train.threads=1", "train.log_every=100", "train.warmup=30",
        "train.lr=3e-3", "train.valid_every=100000"]


def test_serial_model_learns_the_pick_toy_and_needs_both_sources(pick):
    """1,200 updates of a 2-layer, d_model 32 Transformer: the sources are filled in from the
    data, and greedy decoding gets >= 90% of new examples exactly right; with either source
    missing (an empty field) it gets few: the answer needs both."""
    d, prepared = pick
    cfg = load_config(None, [f'data.dir="{prepared}"', *TINY, "train.max_steps=1200", 'model.combine="serial"'])
    trainer = Trainer(cfg, d / "run", log=lambda m: None)
    trainer.run()
    assert trainer.model.config.sources == 2
    rng = random.Random(99)
    test = [pick_example(rng) for _ in range(100)]
    tr = Translator(trainer.model.eval(), Vocab((prepared / "spm.model").read_bytes()), SearchOptions(beam=1))

    def exact(lines):
        return sum(out == t for out, (*_, t) in zip(tr.translate(lines), test)) / len(test)

    assert exact([f"{a}\t{b}" for a, b, _ in test]) >= 0.9
    assert exact([f"\t{b}" for _, b, _ in test]) <= 0.4  # without the positions: a guess
    assert exact([f"{a}\t" for a, _, _ in test]) <= 0.05  # without the words: nothing to copy


def test_cli_prepare_train_translate_with_two_sources(tmp_path):
    rng = random.Random(5)
    a, b, t = write_columns(tmp_path, "train", [pick_example(rng) for _ in range(200)])
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", "--train-src", str(a), "--train-src", str(b), "--train-tgt", str(t),
                            "--vocab-size", "45", "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["prepare", "--train-src", str(a), "--train-src", str(b), "--train-tgt", str(t),
                            "--valid-src", str(a), "--valid-tgt", str(t), "-o", str(tmp_path / "q")])
    assert r.exit_code == 1 and "--valid-src is given 1 time(s) but --train-src 2" in r.output
    r = runner.invoke(app, ["train", "-o", str(tmp_path / "run"), "--set", f'data.dir="{tmp_path / "p"}"', *sum(
        (["--set", s] for s in TINY + ["train.max_steps=5", 'model.combine="hierarchical"']), [])])
    assert r.exit_code == 0, r.output
    model = str(tmp_path / "run" / "last.pt")
    r = runner.invoke(app, ["translate", "-m", model, "--beam", "2"], input="one\tka lo\n\n\tmi\n")
    assert r.exit_code == 0, r.output
    assert len(r.stdout.split("\n")) == 4 and r.stdout.split("\n")[1] == ""
    r = runner.invoke(app, ["translate", "-m", model, "--chunk-lines", "1"], input="one\tka\ntwo three\n")
    assert r.exit_code == 1 and "input line 2: 1 TAB-separated source(s), but the model reads 2" in r.output
    assert len(r.stdout.split("\n")) == 2  # line 1's answer was written before line 2 failed
    r = runner.invoke(app, ["translate", "-m", model, "--alignments", "-"], input="one\tka\n")
    assert r.exit_code == 1 and "--alignments names the words of one source" in r.output
    r = runner.invoke(app, ["translate", "-m", model, "--attention", str(tmp_path / "pics"), "--encoder-attention"],
                      input="one two\tka lo mi\n")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pics" / "index.html").exists()
    r = runner.invoke(app, ["attention", "-m", model, "one\tka lo"])
    assert r.exit_code == 0 and "</s>" in r.output, r.output


def test_output_length_limit_follows_the_longest_source():
    from nmt.search import max_lengths

    mask = pack_sources([[[5, 6, 7, EOS_ID], [8, EOS_ID]], [[EOS_ID], [EOS_ID]]], 2) != PAD_ID
    assert max_lengths(mask, 1.5, 10, sources=2).tolist() == [16, 11]
    assert max_lengths(mask, 1.5, 10).tolist() == [19, 13]  # read as one source: 6 and 2 positions


def test_source_dropout_leaves_sources_out_but_never_all():
    from nmt.multisource import drop_sources

    seqs = [[[5, 6, EOS_ID], [7, EOS_ID]]] * 200
    src = pack_sources(seqs, 2)
    out = drop_sources(src, 2, 0.4, torch.Generator().manual_seed(0))
    assert torch.equal(out, drop_sources(src, 2, 0.4, torch.Generator().manual_seed(0)))  # a function of the seed
    segments = out.view(200, 2, 3)
    missing = (segments == torch.tensor([EOS_ID, PAD_ID, PAD_ID])).all(-1)  # (B, N)
    kept = (segments == src.view(200, 2, 3)).all(-1)
    assert (missing | kept).all() and not missing.all(1).any()
    assert 0.2 < missing.float().mean() < 0.45  # p = 0.4, less the examples that would have lost both
    assert torch.equal(drop_sources(src, 2, 0.0, torch.Generator().manual_seed(0)), src)


def test_source_dropout_trains_and_needs_several_sources(pick, tmp_path):
    _, prepared = pick
    cfg = load_config(None, [f'data.dir="{prepared}"', *TINY, "train.max_steps=3", "train.source_dropout=0.5"])
    Trainer(cfg, tmp_path / "run", log=lambda m: None).run()
    single = tmp_path / "single"
    prepare(single, (prepared / "valid.ref", prepared / "valid.ref"), options=PrepareOptions(vocab_size=20),
            log=lambda m: None)
    with pytest.raises(NmtError, match="train.source_dropout leaves out one of several sources"):
        Trainer(load_config(None, [f'data.dir="{single}"', *TINY, "train.source_dropout=0.5"]), tmp_path / "b")
    with pytest.raises(NmtError, match="train.agreement trains a target->source model, which needs one source"):
        Trainer(load_config(None, [f'data.dir="{prepared}"', *TINY, "train.agreement=1.0"]), tmp_path / "c")
