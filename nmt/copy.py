"""Copy attention: the pointer-generator mixture (See et al. 2017; Gu et al. 2016; Vinyals et al. 2015).

    P(w) = p_gen * P_vocab(w) + (1 - p_gen) * sum_{i : x_i = w} a_i

The attention over source positions is scattered onto the source tokens' ids in the shared
(joint SentencePiece) vocabulary, so a source piece can be produced even when the decoder's own
distribution gives it little mass; a piece occurring twice in the source gets both weights.
"""

from __future__ import annotations

from torch import Tensor


def copy_mix(p_vocab: Tensor, attention: Tensor, src_ids: Tensor, p_gen: Tensor) -> Tensor:
    """Mix the vocabulary distribution with copied attention.

    Args:
        p_vocab: ``(B, [T,] V)`` probabilities (rows sum to 1).
        attention: ``(B, [T,] S)`` weights over source positions (padding 0).
        src_ids: ``(B, S)`` source token ids.
        p_gen: ``(B, [T,] 1)`` probability of generating from the vocabulary.

    Returns:
        ``(B, [T,] V)`` probabilities; rows sum to 1 when the attention rows do.
    """
    index = src_ids if attention.dim() == 2 else src_ids[:, None].expand(-1, attention.shape[1], -1)
    copied = p_vocab.new_zeros(p_vocab.shape).scatter_add_(-1, index, attention.to(p_vocab.dtype))
    return p_gen * p_vocab + (1 - p_gen) * copied
