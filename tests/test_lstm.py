"""The LSTM model over every combination of its attention switches."""

import itertools

import pytest
import torch

from conftest import incremental_log_probs, random_batch
from nmt.models import build_model
from nmt.models.lstm import LSTMConfig
from nmt.search import beam_search, greedy_search

COMBOS = list(itertools.product(["dot", "general", "mlp", "scaled_dot"], ["after", "before"], [True, False],
                                [False, True], [1, 4]))


def tiny_lstm(**kw) -> torch.nn.Module:
    cfg = dict(vocab_size=40, embed_size=16, hidden_size=16, encoder_layers=1, decoder_layers=2, dropout=0.0)
    cfg.update(kw)
    return build_model("lstm", LSTMConfig(**cfg))


@pytest.mark.parametrize("score,position,feeding,separate,heads", COMBOS)
def test_every_switch_combination(score, position, feeding, separate, heads):
    torch.manual_seed(0)
    m = tiny_lstm(score=score, attention_position=position, input_feeding=feeding, separate_values=separate,
                  heads=heads).eval()
    src, tgt = random_batch()
    logits, attn, *_ = m(src, tgt, need_attention=True)
    assert logits.shape == (3, 6, 40) and attn.shape == (3, 1, heads, 6, 7)
    assert (attn[1, ..., -2:] == 0).all()  # padding gets no weight
    assert torch.allclose(attn.sum(-1), torch.ones(3, 1, heads, 6), atol=1e-5)
    assert torch.allclose(incremental_log_probs(m, src, tgt), torch.log_softmax(logits, -1), atol=1e-5)
    m.train()
    m.zero_grad()
    m(src, tgt)[0].sum().backward()
    assert m.encoder.weight_ih_l0.grad.abs().sum() > 0  # gradients reach the encoder
    hyps = beam_search(m.eval(), src, beam=3, max_len_b=4)
    assert len(hyps) == 3 and all(len(h) == 1 for h in hyps)


def test_placement_gradients():
    """before: the query is s_{t-1}, so a_t does not depend on y_{t-1}; after: it does.
    input feeding: the next LSTM input sees h~_{t-1}; without it, not."""
    src, _ = random_batch(vocab_size=30)  # source ids < 30, so row 35 of the embedding is the target's alone
    for position, depends in (("before", False), ("after", True)):
        m = tiny_lstm(attention_position=position, input_feeding=False).eval()
        state = m.init_state(m.encode(src))
        emb = m.embed.weight
        _, _, a = m.step(torch.full((3,), 35), state, need_attention=True)
        g = torch.autograd.grad(a[:, 0, 0, 0].sum(), emb, allow_unused=True)[0]
        assert (g is not None and g[35].abs().sum() > 0) == depends
    for feeding in (True, False):
        m = tiny_lstm(input_feeding=feeding).eval()
        state = m.init_state(m.encode(src))
        feed = torch.randn(3, 16, requires_grad=True)
        _, new, _ = m.step(torch.full((3,), 5), {**state, "feed": feed})
        g = torch.autograd.grad(new["h"].sum(), feed, allow_unused=True)[0]
        assert (g is not None and g.abs().sum() > 0) == feeding


def test_keys_projected_once_per_sentence():
    m = tiny_lstm(score="general").eval()
    calls = []
    m.attention.scores[0].W.register_forward_hook(lambda *a: calls.append(1))
    greedy_search(m, random_batch()[0], max_len_b=5)
    assert len(calls) == 1


def test_zero_bridge_and_invalid_configs():
    m = tiny_lstm(bridge="zero")
    state = m.init_state(m.encode(random_batch()[0]))
    assert (state["h"] == 0).all()
    with pytest.raises(ValueError, match="score"):
        LSTMConfig(score="cosine")
    with pytest.raises(ValueError, match="embed_size == hidden_size"):
        LSTMConfig(embed_size=8, hidden_size=16)


@pytest.mark.parametrize("key, value, message", [
    ("location_filters", -1, "model.location_filters must be >= 0"),
    ("monotonic_chunk", -2, "model.monotonic_chunk must be >= 0"),
    ("attention_hidden", -5, "model.attention_hidden must be >= 0"),
    ("monotonic_noise", -1.0, "model.monotonic_noise must be >= 0"),
    ("hard_entropy", -1.0, "model.hard_entropy must be >= 0"),
    ("heads", 0, "model.heads must be >= 1"),
    ("monotonic_chunk", 3, "model.monotonic_chunk needs model.monotonic = true"),  # else silently unused
])
def test_out_of_range_family_settings_fail_in_the_config(key, value, message):
    """Before any tensor is built (they used to fail as negative tensor dimensions mid-build)."""
    with pytest.raises(ValueError, match=message):
        LSTMConfig(**{key: value})
