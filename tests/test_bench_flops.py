"""bench/train_throughput.py counts every product of a training step: the oneDNN LSTM layers' (FlopCounterMode
knows none of them) and the chunked output-layer loss's, all three."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from train_throughput import count_lstm_layer_flops, plain_linears  # noqa: E402

from nmt.loss import linear_label_smoothed_nll  # noqa: E402


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="CPU LSTMs run on oneDNN only where it is built in")
def test_lstm_layer_flops_are_counted_forward_and_backward():
    count_lstm_layer_flops()
    count_lstm_layer_flops()  # a second call changes nothing
    lstm = torch.nn.LSTM(16, 32, num_layers=2, batch_first=True)
    x = torch.randn(3, 5, 16, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out, _ = lstm(x)
        out.sum().backward()
    rows = 3 * 5
    gates = 4 * 32
    per_layer = [2 * rows * (gates * 16 + gates * 32), 2 * rows * (gates * 32 + gates * 32)]  # forward
    assert counter.get_total_flops() == 3 * sum(per_layer)  # backward: twice the forward


@pytest.mark.parametrize("rows", [70, 1100])  # one chunk, several chunks
def test_the_chunked_loss_counts_logits_and_both_gradients(rows):
    hidden = torch.randn(1, rows, 16, requires_grad=True)
    weight = torch.randn(8000, 16, requires_grad=True)
    target = torch.randint(4, 8000, (1, rows))
    with FlopCounterMode(display=False) as counter, plain_linears():
        loss, _ = linear_label_smoothed_nll(hidden, weight, target, 0.1)
        loss.backward()
    assert counter.get_total_flops() == 3 * 2 * rows * 8000 * 16  # h W^T, dL/dh and dL/dW (none in place)
