"""Tiny models learn copy and reverse tasks through the real loss, model contract and search."""

import pytest
import torch

from nmt.loss import label_smoothed_nll
from nmt.models import build_model
from nmt.models.lstm import LSTMConfig
from nmt.models.transformer import TransformerConfig
from nmt.search import greedy_search
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID

V = 14  # 4 specials + 10 symbols


def make_task(n: int, reverse: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        length = int(torch.randint(3, 8, (1,), generator=g))
        x = torch.randint(4, V, (length,), generator=g).tolist()
        pairs.append((x, x[::-1] if reverse else x))
    return pairs


def collate(pairs):
    s = max(len(x) for x, _ in pairs) + 1
    t = max(len(y) for _, y in pairs) + 1
    src = torch.full((len(pairs), s), PAD_ID)
    tin, tout = torch.full((len(pairs), t), PAD_ID), torch.full((len(pairs), t), PAD_ID)
    for i, (x, y) in enumerate(pairs):
        src[i, : len(x) + 1] = torch.tensor(x + [EOS_ID])
        tin[i, : len(y) + 1] = torch.tensor([BOS_ID] + y)
        tout[i, : len(y) + 1] = torch.tensor(y + [EOS_ID])
    return src, tin, tout


def train_and_score(model, reverse: bool, steps: int, lr: float = 3e-3, diagonal: list | None = None) -> float:
    torch.manual_seed(0)
    data = make_task(3000, reverse, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        batch = [data[(step * 64 + i) % len(data)] for i in range(64)]
        src, tin, tout = collate(batch)
        logits = model(src, tin).logits
        loss, _ = label_smoothed_nll(logits, tout, 0.0)
        opt.zero_grad()
        (loss / (tout != PAD_ID).sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    test = make_task(200, reverse, seed=2)
    src, _, _ = collate(test)
    hyps = greedy_search(model, src, need_attention=diagonal is not None)
    if diagonal is not None:  # share of output tokens whose argmax attention is the same position
        from nmt.alignment import pharaoh, select_heads

        links = [pharaoh(select_heads(h[0].attention)[:-1, :-1]) for h in hyps]
        pairs = [tuple(map(int, l.split("-"))) for line in links for l in line.split()]
        diagonal.append(sum(s == t for s, t in pairs) / max(len(pairs), 1))
    return sum(h[0].tokens == y for h, (_, y) in zip(hyps, test)) / len(test)


def test_transformer_learns_reverse():
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the initial weights too, not whatever state earlier tests left behind
    m = build_model("transformer", TransformerConfig(vocab_size=V, d_model=64, heads=4, ff_size=128,
                                                     encoder_layers=2, decoder_layers=2, dropout=0.0))
    assert train_and_score(m, reverse=True, steps=600) >= 0.9  # 0.975-0.985 over init seeds 0-2


@pytest.mark.parametrize("score", ["dot", "mlp"])
def test_lstm_learns_copy(score):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = build_model("lstm", LSTMConfig(vocab_size=V, embed_size=48, hidden_size=48, encoder_layers=1,
                                       decoder_layers=1, dropout=0.0, score=score))
    diagonal = []
    assert train_and_score(m, reverse=False, steps=300, lr=1e-2, diagonal=diagonal) >= 0.9
    assert diagonal[0] >= 0.9  # a monotone task: the alignment from attention is the diagonal
