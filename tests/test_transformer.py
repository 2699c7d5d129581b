import pytest
import torch

from conftest import random_batch, tiny_transformer
from nmt.models.transformer import sinusoidal_positions


@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("tied", [True, False])
def test_incremental_equals_teacher_forcing(pre_norm, tied):
    torch.manual_seed(0)
    m = tiny_transformer(pre_norm=pre_norm, tie_embeddings=tied).eval()
    src, tgt = random_batch()
    logits, attn, *_ = m(src, tgt, need_attention=True)  # attn (B, L, H, T, S)
    state = m.init_state(m.encode(src))
    lps, atts = [], []
    for t in range(tgt.shape[1]):
        lp, state, a = m.step(tgt[:, t], state, need_attention=True)
        lps.append(lp)
        atts.append(a)
    assert torch.allclose(torch.stack(lps, 1), torch.log_softmax(logits, -1), atol=1e-5)
    assert torch.allclose(torch.stack(atts, 3), attn, atol=1e-5)
    assert attn.shape == (3, 2, 4, 6, 7)


def test_padding_gets_no_attention_and_rows_sum_to_one():
    m = tiny_transformer().eval()
    src, tgt = random_batch()
    attn = m(src, tgt, need_attention=True).attention
    assert (attn[1, ..., -2:] == 0).all()
    assert torch.allclose(attn.sum(-1), torch.ones_like(attn.sum(-1)), atol=1e-5)


def test_causal_mask_future_tokens_do_not_change_the_past():
    m = tiny_transformer().eval()
    src, tgt = random_batch()
    a = m(src, tgt).logits
    tgt2 = tgt.clone()
    tgt2[:, 4:] = 5
    b = m(src, tgt2).logits
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-5) and not torch.allclose(a[:, 4:], b[:, 4:])


def test_empty_source_gives_no_nan():
    m = tiny_transformer().eval()
    src = torch.zeros(2, 4, dtype=torch.long)
    src[0, :2] = torch.tensor([7, 3])
    lp, _, a = m.step(torch.full((2,), 2), m.init_state(m.encode(src)), need_attention=True)
    assert not torch.isnan(lp).any() and (a[1] == 0).all()


def test_tied_embeddings_share_storage():
    m = tiny_transformer(tie_embeddings=True)
    assert m.embed.weight.data_ptr() == m.tgt_embed.weight.data_ptr() and m.output is None
    assert tiny_transformer(tie_embeddings=False).output is not None


def test_positions():
    pe = sinusoidal_positions(50, 16)
    assert pe.abs().max() <= 1 and len({tuple(r.tolist()) for r in pe}) == 50
    assert torch.equal(pe, sinusoidal_positions(50, 16))
    assert torch.equal(sinusoidal_positions(10, 16, start=40), pe[40:])  # a decoding step's rows
    assert sinusoidal_positions(1, 16, start=5000).isfinite().all()  # no length limit


def test_gradients_reach_the_encoder():
    m = tiny_transformer()
    src, tgt = random_batch()
    logits = m(src, tgt).logits
    logits.sum().backward()
    assert m.encoder[0].attn.q_proj.weight.grad.abs().sum() > 0


def test_post_norm_with_zero_sublayers_is_layernorm_pre_norm_is_identity():
    from nmt.models.transformer import Sublayer

    x = torch.randn(2, 3, 8)
    pre, post = Sublayer(8, 0.0, True), Sublayer(8, 0.0, False)
    assert torch.equal(pre.out(x, torch.zeros_like(x)), x)
    assert torch.allclose(post.out(x, torch.zeros_like(x)), torch.nn.functional.layer_norm(x, (8,)), atol=1e-5)


def test_incremental_without_weights_equals_teacher_forcing():
    """The decoding step's own attention path (one query, no weights asked) against the fused kernel."""
    torch.manual_seed(0)
    m = tiny_transformer().eval()
    src, tgt = random_batch()
    logits = m(src, tgt).logits
    state = m.init_state(m.encode(src))
    lps = []
    for t in range(tgt.shape[1]):
        lp, state, _ = m.step(tgt[:, t], state)
        lps.append(lp)
    torch.testing.assert_close(torch.stack(lps, 1), torch.log_softmax(logits, -1), atol=1e-5, rtol=1e-5)


def test_incremental_in_inference_mode_equals_teacher_forcing():
    """As beam search runs it (inference mode: the log-softmax written over the logits)."""
    from conftest import incremental_log_probs

    torch.manual_seed(0)
    m = tiny_transformer().eval()
    src, tgt = random_batch()
    with torch.inference_mode():
        ref = torch.log_softmax(m(src, tgt).logits, -1)
        torch.testing.assert_close(incremental_log_probs(m, src, tgt), ref, atol=1e-5, rtol=1e-5)


def test_step_takes_the_state_over_and_changes_no_tensor():
    """``step`` pops each layer's old self-attention cache from the dict it is given (freed while the
    grown one is built) but changes no tensor in place: a copy of the dict gives the same step."""
    torch.manual_seed(0)
    m = tiny_transformer().eval()
    src, tgt = random_batch()
    _, state, _ = m.step(tgt[:, 0], m.init_state(m.encode(src)))
    before = {k: v.clone() for k, v in state.items()}
    kept = dict(state)
    lp_copy, new_copy, _ = m.step(tgt[:, 1], dict(state))
    lp, new, _ = m.step(tgt[:, 1], state)
    assert not any(k.startswith("self_") for k in state) and set(new) == set(kept)  # taken over
    assert all(torch.equal(kept[k], before[k]) for k in before)  # the old tensors are as they were
    assert torch.equal(lp, lp_copy) and all(torch.equal(new[k], new_copy[k]) for k in new)
    assert new["self_k0"].shape[2] == 2 and int(new["step"][0]) == 2


def test_bf16_autocast_training_step_on_cpu():
    """Under CPU bf16 autocast the attention runs in fp32 inside (its bf16 backward is slow): same
    forward as fp32 up to bf16 rounding, finite gradients for every parameter."""
    torch.manual_seed(0)
    m = tiny_transformer()
    src, tgt = random_batch()
    m.eval()
    ref = m(src, tgt).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(src, tgt).logits
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(src, tgt).logits.float().logsumexp(-1).sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("beam", [2, 5])
def test_beams_sharing_source_rows_change_nothing(beam):
    """Beam search keeps the cross-attention keys/values once per sentence (shares_source_rows):
    same hypotheses, scores and attention as with one copy per beam, sentences dropping out included."""
    from nmt.search import beam_search

    torch.manual_seed(3)
    m = tiny_transformer().eval()
    src = torch.cat([random_batch(b=4, s=9, seed=1)[0], random_batch(b=3, s=9, seed=2)[0]])  # (7, 9)
    shared = beam_search(m, src, beam=beam, n_best=2, need_attention=True, max_len_b=6)
    m.shares_source_rows = False
    copied = beam_search(m, src, beam=beam, n_best=2, need_attention=True, max_len_b=6)
    for a, b in zip(shared, copied):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        for ha, hb in zip(a, b):
            assert ha.score == pytest.approx(hb.score, abs=1e-5)
            assert torch.allclose(ha.attention, hb.attention, atol=1e-5)
    assert len({len(h[0].tokens) for h in shared}) > 1  # sentences ended at different steps


def test_grouped_cross_attention_equals_per_row():
    from nmt.models.multihead import MultiHeadAttention

    torch.manual_seed(0)
    att = MultiHeadAttention(32, 4).eval()
    x = torch.randn(6, 1, 32)  # 3 sentences x 2 beams, one query each
    memory = torch.randn(3, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    k, v = att.project_kv(memory)  # (3, H, 5, Dh)
    grouped, w_grouped = att(x, k, v, mask=mask, need_weights=True)
    rows = torch.arange(3).repeat_interleave(2)
    per_row, w_per_row = att(x, k[rows], v[rows], mask=mask[rows], need_weights=True)
    assert torch.allclose(grouped, per_row, atol=1e-6) and torch.allclose(w_grouped, w_per_row, atol=1e-6)
    assert torch.allclose(att(x, k, v, mask=mask)[0], per_row, atol=1e-6)  # the path without weights
    x2 = torch.randn(6, 2, 32)  # two queries per row: the fused kernel's path, grouped
    assert torch.allclose(att(x2, k, v, mask=mask)[0], att(x2, k[rows], v[rows], mask=mask[rows])[0], atol=1e-5)
    with pytest.raises(ValueError, match="cannot share"):
        att(torch.randn(5, 1, 32), k, v, mask=mask)


def test_step_log_probs_in_place_on_cpu_and_differentiable_otherwise():
    from nmt.models.output import step_log_probs

    torch.manual_seed(0)
    x = torch.randn(5, 300)
    ref = torch.log_softmax(x, -1)
    with torch.inference_mode():
        y = x.clone()
        out = step_log_probs(y)
        assert torch.equal(out, ref) and out.data_ptr() == y.data_ptr()  # written over the logits, bit for bit
        half = x.bfloat16()
        assert step_log_probs(half).dtype == torch.float32 and torch.equal(half, x.bfloat16())  # a new fp32 tensor
    w = x.clone().requires_grad_()
    out = step_log_probs(w)
    out[:, 0].sum().backward()
    assert torch.equal(out, ref) and torch.equal(w, x) and w.grad is not None
