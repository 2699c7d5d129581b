"""The chunked output-layer loss equals the logits path: values, gradients, models, autocast."""

import pytest
import torch
import torch.nn.functional as F

import nmt.loss
from nmt.loss import label_smoothed_nll, linear_label_smoothed_nll, output_loss
from nmt.models import build_model
from nmt.vocab import PAD_ID

V, D = 23, 8


def inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 5, D, generator=g).to(dtype).requires_grad_()
    weight = torch.randn(V, D, generator=g).to(dtype).requires_grad_()
    target = torch.randint(4, V, (3, 5), generator=g)
    target[0, 2:] = PAD_ID
    target[2, 4:] = PAD_ID
    return hidden, weight, target


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
def test_equals_logits_path(eps, chunk_rows, monkeypatch):
    monkeypatch.setattr(nmt.loss, "CHUNK_ELEMENTS", chunk_rows * V)  # 11 real rows: 11, 3 or 1 chunks
    hidden, weight, target = inputs()
    loss, nll = linear_label_smoothed_nll(hidden, weight, target, eps)
    ref_loss, ref_nll = label_smoothed_nll(F.linear(hidden, weight), target, eps)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(nll, ref_nll)
    assert not nll.requires_grad
    ours = grads(3.0 * loss, hidden, weight)
    for a, b in zip(ours, grads(3.0 * ref_loss, hidden, weight)):
        torch.testing.assert_close(a, b)  # the incoming gradient (3.0) scales both
    assert ours[0][0, 2:].abs().sum() == 0  # padding rows get no gradient


def test_without_gradients_the_same_values():
    hidden, weight, target = inputs()
    with torch.no_grad():
        loss, nll = linear_label_smoothed_nll(hidden, weight, target, 0.1)
    ref_loss, ref_nll = label_smoothed_nll(F.linear(hidden, weight), target, 0.1)
    torch.testing.assert_close(loss, ref_loss.detach())
    torch.testing.assert_close(nll, ref_nll)


def test_bf16_autocast_multiplies_in_bf16_and_keeps_fp32_gradients():
    hidden, weight, target = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_label_smoothed_nll(hidden, weight, target, 0.1)
        ref, _ = label_smoothed_nll(F.linear(hidden, weight), target, 0.1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-3)
    ours, theirs = grads(loss, hidden, weight), grads(ref, hidden, weight)
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


MODELS = {
    "transformer": dict(vocab_size=V, d_model=16, heads=2, ff_size=32, encoder_layers=1, decoder_layers=2, dropout=0.0),
    "lstm": dict(vocab_size=V, embed_size=16, hidden_size=16, encoder_layers=1, decoder_layers=2, dropout=0.0),
}


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
@pytest.mark.parametrize("tie", [True, False])
def test_models_left_unprojected_train_the_same(kind, tie):
    """project=False + output_loss gives every parameter the gradient the logits path gives it
    (tied embeddings collect both uses of the matrix)."""
    torch.manual_seed(0)
    model = build_model(kind, {**MODELS[kind], "tie_embeddings": tie}).train()
    src, tgt = torch.randint(4, V, (3, 6)), torch.randint(4, V, (3, 5))
    tgt[1, 3:] = PAD_ID
    tin, tout = tgt[:, :-1], tgt[:, 1:]
    out = model(src, tin, project=False)
    assert out.logits is None and out.projection[0].shape[:2] == tout.shape
    ours = grads(output_loss(out, tout, 0.1)[0], *model.parameters())
    theirs = grads(output_loss(model(src, tin), tout, 0.1)[0], *model.parameters())
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_copy_model_returns_logits_whatever_project_says():
    model = build_model("lstm", {**MODELS["lstm"], "copy": True}).eval()
    out = model(torch.randint(4, V, (2, 4)), torch.randint(4, V, (2, 3)), project=False)
    assert out.projection is None and out.logits.shape == (2, 3, V)
