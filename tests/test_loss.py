"""The fused label-smoothed cross-entropy equals PyTorch's, value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from nmt.loss import label_smoothed_nll
from nmt.vocab import PAD_ID


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_cross_entropy(eps, dtype):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 7, 11, generator=g)).to(dtype).requires_grad_()
    target = torch.randint(1, 11, (4, 7), generator=g)
    target[0, 3:] = PAD_ID
    target[2, 5:] = PAD_ID
    loss, nll = label_smoothed_nll(logits, target, eps)
    loss.backward()
    ours = logits.grad.clone()
    logits.grad = None
    ref = F.cross_entropy(logits.float().reshape(-1, 11), target.reshape(-1), ignore_index=PAD_ID,
                          label_smoothing=eps, reduction="sum")
    ref.backward()
    ref_nll = F.cross_entropy(logits.float().reshape(-1, 11), target.reshape(-1), ignore_index=PAD_ID,
                              reduction="sum")
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert loss.item() == pytest.approx(ref.item(), rel=tol)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=tol)
    assert not nll.requires_grad
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), logits.grad.float(), rtol=tol, atol=tol)
    assert ours[0, 3:].abs().sum() == 0  # padding rows get no gradient


def test_extreme_logits_stay_finite():
    """A confident wrong row (gold logit 200 below the best) gives a large finite loss, not inf/nan."""
    logits = torch.zeros(1, 2, 5)
    logits[0, :, 0] = 200.0
    logits.requires_grad_()
    target = torch.tensor([[3, 0]])
    target[0, 1] = 3
    loss, nll = label_smoothed_nll(logits, target, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and nll.item() == pytest.approx(400.0)
    assert torch.isfinite(logits.grad).all()


def test_a_second_backward_raises_instead_of_a_wrong_gradient():
    """The backward edits the saved softmax in place; autograd's version check catches a reuse."""
    logits = torch.randn(2, 3, 7, requires_grad=True)
    loss, _ = label_smoothed_nll(logits, torch.randint(1, 7, (2, 3)), 0.1)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()
