import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nmt.attention import SCORES, attend, make_score


@pytest.mark.parametrize("name", list(SCORES))
def test_score_shapes_mask_and_rows(name):
    torch.manual_seed(0)
    dq = dk = 8
    score = make_score(name, dq, dk, hidden=6)
    q, k, v = torch.randn(2, 3, dq), torch.randn(2, 5, dk, requires_grad=True), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    e = score(q, score.prepare_keys(k))
    assert e.shape == (2, 3, 5)
    ctx, w = attend(e, v, mask)
    assert ctx.shape == (2, 3, 4) and w.shape == (2, 3, 5)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3), atol=1e-6)
    assert (w[1, :, 2:] == 0).all()
    assert torch.allclose(ctx, torch.einsum("bts,bsd->btd", w, v), atol=1e-6)
    ctx.sum().backward()
    assert k.grad is not None and k.grad.abs().sum() > 0


def test_reference_formulas():
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 4), torch.randn(1, 3, 4)
    assert torch.allclose(make_score("dot", 4, 4)(q, k), q @ k.transpose(1, 2))
    assert torch.allclose(make_score("scaled_dot", 4, 4)(q, k), q @ k.transpose(1, 2) / 2.0)
    g = make_score("general", 4, 4)
    assert torch.allclose(g(q, g.prepare_keys(k)), q @ g.W.weight @ k.transpose(1, 2), atol=1e-6)
    m = make_score("mlp", 4, 4, hidden=5)
    ref = torch.stack([torch.stack([m.v(torch.tanh(m.W(q[0, t]) + m.U(k[0, s]))).squeeze() for s in range(3)]) for t in range(2)])
    assert torch.allclose(m(q, m.prepare_keys(k))[0], ref, atol=1e-6)


def test_dot_needs_equal_sizes_general_and_mlp_do_not():
    with pytest.raises(ValueError, match="same size"):
        make_score("dot", 4, 6)
    for name in ("general", "mlp"):
        s = make_score(name, 4, 6)
        assert s(torch.randn(1, 2, 4), s.prepare_keys(torch.randn(1, 3, 6))).shape == (1, 2, 3)


def test_unknown_score_lists_valid():
    with pytest.raises(ValueError, match="valid: dot, general, mlp, scaled_dot"):
        make_score("cosine", 4, 4)


def test_scaled_dot_equals_torch_sdpa():
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]], dtype=torch.bool)
    ctx, _ = attend(make_score("scaled_dot", 8, 8)(q, k), v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, :])
    assert torch.allclose(ctx, ref, atol=1e-5)


def test_fully_masked_row_gives_zeros_not_nan():
    ctx, w = attend(torch.randn(1, 2, 3), torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool))
    assert not torch.isnan(ctx).any() and (w == 0).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(0, 5), st.integers(0, 10_000))
def test_padding_invariance(real, pads, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(1, 2, 4, generator=g), torch.randn(1, real, 4, generator=g), torch.randn(1, real, 3, generator=g)
    ctx, _ = attend(q @ k.transpose(1, 2), v)
    kp = torch.cat([k, torch.randn(1, pads, 4, generator=g)], 1)
    vp = torch.cat([v, torch.randn(1, pads, 3, generator=g)], 1)
    mask = torch.arange(real + pads)[None] < real
    ctx2, _ = attend(q @ kp.transpose(1, 2), vp, mask)
    assert torch.allclose(ctx, ctx2, atol=1e-6)


def test_scaling_keeps_softmax_out_of_saturation():
    """Unscaled dot saturates as d grows; scaled dot stays roughly flat (the lecture's reason for sqrt(d))."""
    torch.manual_seed(3)
    maxw = {"dot": [], "scaled_dot": []}
    for d in (16, 64, 256, 1024):
        q, k = torch.randn(200, 1, d), torch.randn(200, 50, d)
        for name in maxw:
            _, w = attend(make_score(name, d, d)(q, k), torch.zeros(200, 50, 1))
            maxw[name].append(float(w.max(-1).values.mean()))
    assert all(a < b for a, b in zip(maxw["dot"], maxw["dot"][1:])) and maxw["dot"][-1] > 0.8
    assert max(maxw["scaled_dot"]) - min(maxw["scaled_dot"]) < 0.1
