"""Hard (stochastic) attention: the decoder looks at exactly one source position per step.

Xu et al. 2015 ("Show, attend and tell"), stochastic hard attention: the attention distribution
``a_t (B, N, S)`` becomes a categorical over positions; ``z_t ~ Cat(a_t)`` and the context is the
value at ``z_t`` alone. ``z`` is discrete, so the loss is not differentiable in it; REINFORCE
estimates the gradient of ``E_z[log p(y | x, z)]``::

    grad ~ sum_t (R - b) grad log a_t[z_t]  +  lambda_H grad sum_t H(a_t)

with the reward ``R`` = the reference's log-likelihood under the sampled positions (per token,
averaged over the sentence, so that it does not grow with length), ``b`` a moving average of
``R`` (the baseline: same expectation, lower variance) and an entropy bonus that keeps the
distribution from collapsing too early.

The low-variance alternative is exact marginalisation over the position (Shankar et al. 2018,
"Surprisingly easy hard-attention"; Deng et al. 2018): ``p(y_t) = sum_i a_t,i p(y_t | v_i)``,
which costs one output distribution per source position (O(S V) per target token).

At inference both take the argmax position: ``z_t = argmax a_t``.
Masks: ``a_t`` is exactly 0 on padding, so neither sampling nor argmax can pick it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


BASELINE_DECAY = 0.95  # b <- 0.95 b + 0.05 mean(R) after every training batch


def choose_positions(weights: Tensor, sample: bool) -> Tensor:
    """One-hot positions ``(B, N, S)`` from attention ``weights (B, N, S)``: sampled or argmax."""
    flat = weights.reshape(-1, weights.shape[-1]).float()
    index = torch.multinomial(flat, 1) if sample else flat.argmax(-1, keepdim=True)  # (B*N, 1)
    return torch.zeros_like(flat).scatter_(1, index, 1.0).view_as(weights).to(weights.dtype)


def sample_log_prob(weights: Tensor, one_hot: Tensor) -> Tensor:
    """``log a_t[z_t]`` summed over heads: weights, one_hot ``(B, N, S)`` -> ``(B,)``."""
    return torch.log((weights * one_hot).sum(-1).clamp_min(1e-12)).sum(-1)


def entropy(weights: Tensor) -> Tensor:
    """``H(a_t) = -sum_s a_s log a_s`` summed over heads: ``(B, N, S)`` -> ``(B,)`` (0 log 0 = 0)."""
    return -(weights * torch.log(weights.clamp_min(1e-12))).sum((-1, -2))


def sentence_reward(token_logp: Tensor, mask: Tensor) -> Tensor:
    """R per sentence: the reference's log-likelihood per token. token_logp ``(B, T)``, mask ``(B, T)``
    bool (True = real target token) -> ``(B,)``, detached (a reward, not a path for gradients)."""
    m = mask.to(token_logp.dtype)
    return ((token_logp * m).sum(1) / m.sum(1).clamp_min(1)).detach()


def reinforce_loss(log_probs: Tensor, reward: Tensor, mask: Tensor, baseline: float | Tensor,
                   entropies: Tensor, entropy_weight: float) -> Tensor:
    """The REINFORCE surrogate, to be minimised.

    log_probs ``(B, T)``: ``log a_t[z_t]`` of the sampled positions. reward ``(B,)`` from
    :func:`sentence_reward`. mask ``(B, T)`` bool, True = real target token. entropies ``(B, T)``.
    The loss is a sum over tokens (the scale of a summed NLL); its gradient is
    ``-(R - b) grad sum_t log a_t[z_t] - lambda_H grad sum_t H(a_t)``.
    """
    m = mask.to(log_probs.dtype)
    advantage = reward - baseline  # (B,)
    return -(advantage[:, None] * log_probs * m).sum() - entropy_weight * (entropies * m).sum()


def marginal_log_probs(weights: Tensor, logits_per_position: Tensor) -> Tensor:
    """Exact marginalisation: ``log sum_i a_i softmax(logits_i)``.

    weights ``(..., S)`` (one head), logits_per_position ``(..., S, V)`` -> ``(..., V)``.
    """
    logp = F.log_softmax(logits_per_position.float(), -1)  # (..., S, V)
    return torch.logsumexp(logp + torch.log(weights.float().clamp_min(1e-30))[..., None], dim=-2)
