"""Dropout's CPU mask (nmt.models.dropout)."""

from __future__ import annotations

import pytest
import torch

from nmt.models.dropout import LEVELS, Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_the_mask_keeps_each_entry_with_probability_1_minus_p(p):
    torch.manual_seed(0)
    n = 400_000
    keep = keep_mask((n,), round(p * LEVELS))
    assert keep.dtype == torch.bool and keep.shape == (n,)
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * sd
    for lane in range(4):  # each 16-bit lane of the 64-bit draws, alone
        assert abs(keep[lane::4].float().mean().item() - (1 - p)) < 5 * 2 * sd


def test_the_mask_covers_odd_shapes_and_follows_the_seed():
    torch.manual_seed(3)
    a = keep_mask((3, 5, 7), LEVELS // 2)
    torch.manual_seed(3)
    assert a.shape == (3, 5, 7) and torch.equal(a, keep_mask((3, 5, 7), LEVELS // 2))
    assert keep_mask((9,), 0).all() and not keep_mask((9,), LEVELS).any()


def test_survivors_are_scaled_so_the_expectation_is_unchanged():
    torch.manual_seed(0)
    x = torch.rand(1000, 256) + 1.0
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    scale = LEVELS / (LEVELS - round(0.1 * LEVELS))
    torch.testing.assert_close(y[kept], x[kept] * scale)
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.01


def test_the_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    y = dropout(x, 0.25, training=True)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, y.detach() / x.detach())


def test_eval_mode_p_0_and_p_1():
    x = torch.randn(8, 4)
    layer = Dropout(0.5).eval()
    assert layer(x) is x and dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))


def test_bf16_stays_bf16():
    torch.manual_seed(0)
    x = torch.randn(16, 8, dtype=torch.bfloat16)
    y = dropout(x, 0.1, training=True)
    assert y.dtype == torch.bfloat16 and ((y == 0) | (x != 0)).all()
