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
