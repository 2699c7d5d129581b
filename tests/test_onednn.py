"""fp32 linear layers through oneDNN for CPU decoding (nmt.onednn)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import random_batch, tiny_transformer
from nmt.onednn import (MAX_ROWS, OneDnnLinear, matmul_nt, matmul_tn, onednn_linear, onednn_usable, padded_rows,
                        prepack, use_onednn)
from nmt.search import beam_search
from test_lstm import tiny_lstm

needs_onednn = pytest.mark.skipif(not onednn_usable(), reason="oneDNN's linear operator is not usable here")


def test_padded_rows_examples():
    assert [padded_rows(m) for m in (1, 63, 64, 65, 640, 1023, 1024, 1025, 2048, 2049)] == \
        [64, 64, 64, 128, 640, 1024, 1024, 1152, 2048, 2304]


@given(st.integers(1, 1 << 20))
def test_padded_rows_wastes_little(m):
    p = padded_rows(m)
    assert p % 64 == 0 and m <= p < m + max(64, m / 8)


def test_padded_rows_gives_few_shapes():
    # 16 multiples of 64 up to 1,024, then 8 sizes per power of two: 16 + 8 * 6 up to 65,536 rows
    assert len({padded_rows(m) for m in range(1, (1 << 16) + 1)}) == 16 + 8 * 6


@needs_onednn
def test_products_of_more_rows_take_the_usual_path():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    fast = use_onednn(nn.Sequential(copy.deepcopy(layer)))[0]
    with torch.inference_mode():
        x = torch.randn(MAX_ROWS + 1, 16)
        assert torch.equal(fast(x), F.linear(x, layer.weight, layer.bias))  # the same kernel: bit for bit
        x = torch.randn(3, MAX_ROWS // 3, 16)
        torch.testing.assert_close(fast(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("shape,bias", [((5, 16), True), ((3, 7, 16), False), ((1, 16), True), ((130, 16), True)])
def test_onednn_linear_matches_f_linear(shape, bias):
    torch.manual_seed(0)
    x, w = torch.randn(*shape), torch.randn(24, 16)
    b = torch.randn(24) if bias else None
    y = onednn_linear(x, w, b)
    assert y.shape == (*shape[:-1], 24)
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("make", [tiny_transformer, tiny_lstm], ids=["transformer", "lstm"])
def test_a_converted_model_searches_as_before(make):
    torch.manual_seed(0)
    plain = make().eval()
    fast = use_onednn(copy.deepcopy(plain))
    assert not any(type(m) is nn.Linear for m in fast.modules())
    assert any(isinstance(m, OneDnnLinear) for m in fast.modules())
    assert fast.output.weight is fast.embed.weight  # the tied output layer shares the matrix, no copy
    src, _ = random_batch()
    a, b = beam_search(plain, src, beam=3, n_best=3), beam_search(fast, src, beam=3, n_best=3)
    assert [[h.tokens for h in s] for s in a] == [[h.tokens for h in s] for s in b]
    for s, t in zip(a, b):
        for h, g in zip(s, t):
            assert h.score == pytest.approx(g.score, abs=1e-5)


@needs_onednn
@pytest.mark.parametrize("shape,bias,out", [((70, 16), True, 8), ((3, 7, 16), False, 8), ((1100, 16), True, 8),
                                             ((70, 16), True, 40), ((3, 7, 16), False, 40)])  # out > in: (x^T dy)^T
def test_training_gradients_match_a_float64_linear(shape, bias, out):
    torch.manual_seed(0)
    layer = nn.Linear(16, out, bias=bias)
    fast = use_onednn(nn.Sequential(copy.deepcopy(layer)))[0]
    x = torch.randn(*shape, requires_grad=True)
    y = fast(x)
    assert y.grad_fn is not None and "OneDnn" in type(y.grad_fn).__name__  # oneDNN's products, with gradients
    upstream = torch.randn(y.shape)
    (y * upstream).sum().backward()
    x64 = x.detach().double().requires_grad_()
    w64 = layer.weight.detach().double().requires_grad_()
    b64 = layer.bias.detach().double().requires_grad_() if bias else None
    y64 = F.linear(x64, w64, b64)
    (y64 * upstream.double()).sum().backward()
    close = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y.double(), y64, **close)
    torch.testing.assert_close(x.grad.double(), x64.grad, **close)
    torch.testing.assert_close(fast.weight.grad.double(), w64.grad, **close)
    if bias:
        torch.testing.assert_close(fast.bias.grad.double(), b64.grad, **close)


@needs_onednn
def test_a_frozen_weight_gets_no_gradient():
    fast = use_onednn(nn.Sequential(nn.Linear(16, 8)))[0].requires_grad_(False)
    x = torch.randn(70, 16, requires_grad=True)
    fast(x).sum().backward()
    assert fast.weight.grad is None and fast.bias.grad is None
    torch.testing.assert_close(x.grad, fast.weight.detach().sum(0).expand(70, 16), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_autocast_still_decides_the_precision():
    fast = use_onednn(nn.Sequential(nn.Linear(16, 8)))[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(torch.randn(4, 16, requires_grad=True)).dtype == torch.bfloat16
        with torch.inference_mode():
            assert fast(torch.randn(4, 16)).dtype == torch.bfloat16


@needs_onednn
def test_bf16_training_pads_the_rows_and_gives_autocasts_gradients():
    torch.manual_seed(0)
    layer = nn.Linear(16, 40)
    fast = use_onednn(nn.Sequential(copy.deepcopy(layer)))[0]
    x = torch.randn(3, 23, 16)  # 69 rows: padded to 128 for the product
    upstream = torch.randn(3, 23, 40)
    grads = []
    for module in (layer, fast):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(xi)
        assert y.dtype == torch.bfloat16 and y.shape == (3, 23, 40)
        with FlopCounterMode(display=False) as counter, torch.autocast("cpu", dtype=torch.bfloat16):
            module(xi)
        assert counter.get_total_flops() == 2 * (69 if module is layer else 128) * 16 * 40
        (y.float() * upstream).sum().backward()
        grads.append((y.detach(), xi.grad, module.weight.grad, module.bias.grad))
    for plain, padded in zip(*grads):
        assert padded.dtype == plain.dtype
        torch.testing.assert_close(padded.float(), plain.float(), rtol=2e-2, atol=2e-2)


@needs_onednn
def test_matmul_nt_is_a_times_b_transposed(monkeypatch):
    torch.manual_seed(0)
    a, b = torch.randn(70, 16), torch.randn(8, 16)
    torch.testing.assert_close(matmul_nt(a, b), a @ b.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(matmul_nt(a, b.t().contiguous().t()), a @ b.t(), rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("NMT_ONEDNN", "0")
    assert torch.equal(matmul_nt(a, b), a @ b.t())  # torch's own product


@needs_onednn
@pytest.mark.parametrize("m,n,k", [(70, 8, 16), (70, 40, 16), (64, 16, 16), (1100, 24, 8)])
def test_matmul_tn_is_a_transposed_times_b(monkeypatch, m, n, k):
    torch.manual_seed(0)
    a, b = torch.randn(m, n), torch.randn(m, k)
    got = matmul_tn(a, b)
    assert got.shape == (n, k)
    torch.testing.assert_close(got.double(), a.double().t() @ b.double(), rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("NMT_ONEDNN", "0")
    assert torch.equal(matmul_tn(a, b), a.t() @ b)  # torch's own product


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_cpu_products_pad_their_rows(dtype):
    """torch's bf16/fp16 CPU products are oneDNN primitives, one kept per shape: the loss's products
    go in with padded_rows rows (70 -> 128), so a long bf16 run does not keep one per row count."""
    torch.manual_seed(0)
    a, b, g = torch.randn(70, 16), torch.randn(8, 16), torch.randn(70, 8)
    lo = [x.to(dtype) for x in (a, b, g)]
    with FlopCounterMode(display=False) as counter:
        nt, tn = matmul_nt(lo[0], lo[1]), matmul_tn(lo[2], lo[0])
    assert counter.get_total_flops() == 2 * 128 * 16 * 8 * 2
    assert nt.dtype == tn.dtype == dtype and nt.shape == (70, 8) and tn.shape == (8, 16)
    torch.testing.assert_close(nt.float(), a @ b.t(), rtol=3e-2, atol=5e-2)
    torch.testing.assert_close(tn.float(), g.t() @ a, rtol=3e-2, atol=2e-1)


@needs_onednn
def test_a_prepacked_weight_gives_the_same_products(monkeypatch):
    torch.manual_seed(0)
    w = torch.randn(40, 16)
    packed, packed_t = prepack(w, 64), prepack(w.t(), 64)
    assert packed.is_mkldnn and packed.shape == w.shape and packed_t.shape == (16, 40)
    for rows in (64, 70, 3):  # the row count is only a hint
        a, g = torch.randn(rows, 16), torch.randn(rows, 40)
        torch.testing.assert_close(matmul_nt(a, packed), a @ w.t(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(matmul_nt(g, packed_t), g @ w, rtol=1e-5, atol=1e-5)
    assert prepack(w.double(), 64).dtype == torch.float64 and not prepack(w.double(), 64).is_mkldnn
    monkeypatch.setenv("NMT_ONEDNN", "0")
    assert prepack(w, 64) is w  # nothing to pack: torch's products take the matrix as it is


@needs_onednn
def test_a_training_model_keeps_its_state_dict_and_tied_output():
    from nmt.models.transformer import Transformer

    m = use_onednn(tiny_transformer(), untie=False)
    assert m.output is None and set(m.state_dict()) == set(tiny_transformer().state_dict())
    assert isinstance(m, Transformer)


def test_nmt_onednn_0_leaves_the_model_alone(monkeypatch):
    monkeypatch.setenv("NMT_ONEDNN", "0")
    assert not onednn_usable()
    m = use_onednn(tiny_transformer())
    assert m.output is None and all(type(x) is not OneDnnLinear for x in m.modules())


@needs_onednn
def test_for_decoding_quantises_first_and_converts_only_what_stays_float():
    from nmt.translate import for_decoding

    m = for_decoding(tiny_lstm(), "int8", "cpu")
    kinds = {type(x).__name__ for x in m.modules()}
    assert "OneDnnLinear" not in kinds and "Linear" in kinds  # the int8 layers (torch.ao's Linear)
    src, _ = random_batch()
    assert len(beam_search(m, src, beam=2)) == src.shape[0]
