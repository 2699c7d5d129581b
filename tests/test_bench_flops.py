"""bench/train_throughput.py counts the oneDNN LSTM layers' FLOPs (FlopCounterMode knows none of them)."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from train_throughput import count_lstm_layer_flops  # noqa: E402


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
