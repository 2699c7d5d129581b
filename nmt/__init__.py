"""nmt: a small, clear neural machine translation toolkit (LSTM+attention and Transformer)."""

__version__ = "0.1.0"
