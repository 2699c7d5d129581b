"""Search against scripted models (known beams) and real tiny models (beam 1 == greedy, attention)."""

import itertools
import math
import random
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_batch, tiny_transformer
from nmt.search import beam_search, greedy_search, length_penalty, topk_last

EOS = 3


class BigramModel(torch.nn.Module):
    """A fake model: P(next | previous token) from a fixed table ``probs[prev] -> (V,)``.

    It follows the model contract with a batch-first state and nothing else, like a real model.
    """

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.logp = probs.clamp_min(1e-30).log()

    def encode(self, src):
        return {"memory": torch.zeros(*src.shape, 1), "src_mask": src != 0}

    def init_state(self, enc):
        return {"src_mask": enc["src_mask"], "steps": torch.zeros(enc["src_mask"].shape[0], dtype=torch.long)}

    def step(self, tokens, state, need_attention=False):
        new = {**state, "steps": state["steps"] + 1}
        b, s = state["src_mask"].shape
        attn = torch.full((b, 1, 1, s), 1.0 / s) if need_attention else None
        return self.logp[tokens], new, attn


def table(rows: dict[int, dict[int, float]], v: int = 6) -> torch.Tensor:
    t = torch.zeros(v, v)
    for prev, nxt in rows.items():
        for tok, p in nxt.items():
            t[prev, tok] = p
    return t


# PAD UNK BOS EOS A=4 B=5
SCRIPT = table({2: {4: 0.6, 5: 0.4}, 4: {3: 0.3, 4: 0.45, 5: 0.25}, 5: {3: 0.9, 4: 0.05, 5: 0.05}})


def test_scripted_beam_finds_what_greedy_misses():
    m = BigramModel(SCRIPT)
    src = torch.tensor([[7, 3]])
    greedy = greedy_search(m, src, max_len_a=0, max_len_b=4)[0][0]
    assert greedy.tokens == [4, 4, 4]  # A A A, forced EOS at the limit
    beam = beam_search(m, src, beam=2, alpha=0.0, max_len_a=0, max_len_b=4)[0][0]
    assert beam.tokens == [5] and beam.score == pytest.approx(math.log(0.4 * 0.9), abs=1e-5)


def test_nbest_scores_and_order():
    """Beam 3, at most 3 tokens. Step 2 ranks B.EOS .36, A.A .27, A.EOS .18, A.B .15, B.A .02: the two
    EOS among the best 3 finish and leave the beam, so A.A, A.B and B.A go on (a finished hypothesis
    holding a beam would have pushed A.B out). Step 3 must end them: A.B.EOS .6 * .25 * .9 = .135,
    A.A.EOS .6 * .45 * .3 = .081."""
    m = BigramModel(SCRIPT)
    hyps = beam_search(m, torch.tensor([[7, 3]]), beam=3, alpha=0.0, n_best=3, max_len_a=0, max_len_b=3)[0]
    assert [h.tokens for h in hyps] == [[5], [4], [4, 5]]
    assert [h.score for h in hyps] == pytest.approx([math.log(p) for p in (0.36, 0.18, 0.135)], abs=1e-5)


class Recording(BigramModel):
    """Records the tokens every step is fed."""

    def __init__(self, probs):
        super().__init__(probs)
        self.fed = []

    def step(self, tokens, state, need_attention=False):
        self.fed.append(tokens.tolist())
        return super().step(tokens, state, need_attention)


def test_no_row_extends_a_finished_hypothesis():
    """Once B.EOS finishes (step 2), every row of step 3 extends a live hypothesis: no EOS is fed,
    and the sentence keeps k = 3 live beams (A.A, A.B, B.A) until its length limit."""
    m = Recording(SCRIPT)
    beam_search(m, torch.tensor([[7, 3]]), beam=3, alpha=0.0, n_best=3, max_len_a=0, max_len_b=3)
    assert len(m.fed) == 3 and all(EOS not in fed for fed in m.fed)
    assert sorted(m.fed[2]) == [4, 4, 5]  # last tokens of A.A, B.A and A.B


def test_first_step_runs_one_row_per_sentence():
    """Before the first step every beam is BOS with score 0: the model sees one row per sentence
    there, then k rows per sentence (the state copied out), and the beams are the same as if all k
    rows had been computed (A.A, A.B, B.A above)."""
    m = Recording(SCRIPT)
    hyps = beam_search(m, torch.tensor([[7, 3], [7, 3]]), beam=3, alpha=0.0, n_best=3, max_len_a=0, max_len_b=3)
    assert [len(fed) for fed in m.fed] == [2, 6, 6]
    assert m.fed[0] == [2, 2]  # BOS once per sentence
    assert [h.tokens for h in hyps[1]] == [[5], [4], [4, 5]]


def test_length_penalty_formula_and_ranking():
    assert float(length_penalty(torch.tensor(3), 1.0)) == pytest.approx(8 / 6)
    assert float(length_penalty(torch.tensor(7), 0.0)) == 1.0
    m = BigramModel(SCRIPT)
    hyp = beam_search(m, torch.tensor([[7, 3]]), beam=2, alpha=1.0, max_len_a=0, max_len_b=4)[0][0]
    assert hyp.score == pytest.approx(math.log(0.36) / ((5 + 2) / 6), abs=1e-5)


def brute_force(logp: torch.Tensor, max_len: int):
    best = (None, -math.inf)
    for n in range(max_len):
        for seq in itertools.product(range(4, logp.shape[0]), repeat=n):
            prev, score = 2, 0.0
            for tok in seq + (EOS,):
                score += float(logp[prev, tok])
                prev = tok
            if score > best[1]:
                best = (list(seq), score)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_wide_beam_is_exact_search(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(7, 7, generator=g) * 2, -1)
    probs[:, :3] = 0
    probs = probs / probs.sum(-1, keepdim=True)
    m = BigramModel(probs)
    hyp = beam_search(m, torch.tensor([[5, 3]]), beam=64, alpha=0.0, max_len_a=0, max_len_b=4)[0][0]
    tokens, score = brute_force(m.logp, 4)
    assert hyp.tokens == tokens and hyp.score == pytest.approx(score, abs=1e-4)


def test_beam_one_equals_greedy_on_a_real_model():
    torch.manual_seed(0)
    m = tiny_transformer().eval()
    src, _ = random_batch(b=4)
    g = greedy_search(m, src)
    b = beam_search(m, src, beam=1, alpha=0.0)
    assert [h[0].tokens for h in g] == [h[0].tokens for h in b]


def test_batching_does_not_change_results():
    torch.manual_seed(0)
    m = tiny_transformer().eval()
    src, _ = random_batch(b=3)
    together = beam_search(m, src, beam=3)
    alone = [beam_search(m, src[i : i + 1, : int((src[i] != 0).sum())], beam=3)[0] for i in range(3)]
    assert [h[0].tokens for h in together] == [h[0].tokens for h in alone]
    assert [h[0].score for h in together] == pytest.approx([h[0].score for h in alone], abs=1e-4)


def test_beam_attention_belongs_to_the_printed_hypothesis():
    """The attention returned with the 1-best equals teacher-forcing that same hypothesis."""
    torch.manual_seed(1)
    m = tiny_transformer().eval()
    src, _ = random_batch(b=3)
    hyps = beam_search(m, src, beam=5, need_attention=True)
    for i, h in enumerate(hyps):
        h = h[0]
        s = int((src[i] != 0).sum())
        tgt_in = torch.tensor([[2] + h.tokens])
        attn = m(src[i : i + 1, :s], tgt_in, need_attention=True).attention  # (1, L, H, T, S)
        assert h.attention.shape == (len(h.tokens) + 1, 2, 4, s)
        assert torch.allclose(h.attention, attn[0].permute(2, 0, 1, 3), atol=1e-5)


def test_max_length_is_respected():
    m = BigramModel(table({2: {4: 1.0}, 4: {4: 1.0}}))
    h = beam_search(m, torch.tensor([[7, 7, 3]]), beam=2, max_len_a=1.0, max_len_b=2)[0][0]
    assert len(h.tokens) + 1 == 5


def test_reorder_beams_leaves_source_entries_in_place_until_sentences_drop():
    from nmt.models import reorder_beams

    state = {"src_k": torch.arange(6.0)[:, None], "h": torch.arange(6.0)[:, None]}  # 2 sentences x 3 beams
    back = torch.tensor([2, 2, 0, 4, 3, 3])  # back-pointers stay within each sentence
    moved = reorder_beams(dict(state), back)
    assert moved["src_k"] is state["src_k"]  # not copied
    assert moved["h"][:, 0].tolist() == [2, 2, 0, 4, 3, 3]
    given = dict(state)
    dropped = reorder_beams(given, torch.tensor([4, 3, 3]), kept=torch.tensor([3, 4, 5]))  # sentence 0 done
    assert dropped["src_k"][:, 0].tolist() == [3, 4, 5] and dropped["h"][:, 0].tolist() == [4, 3, 3]
    assert given == {} and state["h"][:, 0].tolist() == [0, 1, 2, 3, 4, 5]  # taken over, never changed in place


def test_decode_workers_auto_and_explicit():
    from nmt.translate import decode_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [decode_workers(0, cpu, n) for n in (1, 2, 16)] == [1, 2, 2]
    assert decode_workers(3, cpu, 1) == 3 and decode_workers(0, gpu, 16) == decode_workers(2, gpu, 4) == 1


def test_batch_limits_follow_the_device_unless_given():
    from nmt.translate import BATCH_LIMITS, SearchOptions, batch_limits

    cpu, gpu, other = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
    assert batch_limits(SearchOptions(), cpu) == BATCH_LIMITS["cpu"] == (128, 5_000)
    assert batch_limits(SearchOptions(), gpu) == BATCH_LIMITS["cuda"] == (1_000, 50_000)
    assert batch_limits(SearchOptions(), other) == BATCH_LIMITS["cpu"]
    assert batch_limits(SearchOptions(batch_size=7, batch_tokens=0), gpu) == (7, 0)  # 0 = no token cap, kept
    assert batch_limits(SearchOptions(batch_tokens=300), cpu) == (128, 300)


def test_translator_batches_by_the_limits(monkeypatch):
    """The Translator cuts its batches with ``batch_limits``: the device's unless the options say."""
    import nmt.translate as tr_mod
    from nmt.translate import SearchOptions, Translator

    sizes = []

    def fake_search(model, opt, device, ids, need_attention=False):
        sizes.append(len(ids))
        return [[] for _ in ids]

    monkeypatch.setattr(tr_mod, "search_batch", fake_search)
    monkeypatch.setitem(tr_mod.BATCH_LIMITS, "cpu", (3, 0))
    lines = [f"w{i}" for i in range(8)]
    vocab = type("V", (), {"encode": lambda self, xs: [[5] for _ in xs]})()
    model = torch.nn.Linear(1, 1)
    Translator(model, vocab, SearchOptions(beam=1, workers=1)).hypotheses(lines)
    assert sorted(sizes) == [2, 3, 3]
    sizes.clear()
    Translator(model, vocab, SearchOptions(beam=1, workers=1, batch_size=5)).hypotheses(lines)
    assert sorted(sizes) == [3, 5]


def test_out_of_memory_searches_the_batch_in_halves(monkeypatch):
    """A batch that runs out of memory is searched in halves (recursively), results in order, one
    warning; a single sentence that does not fit is a one-line error."""
    import nmt.translate as tr_mod
    from nmt.errors import NmtError
    from nmt.translate import SearchOptions, Translator

    sizes, limit = [], {"n": 3}

    def fake_search(model, opt, device, items, need_attention=False):  # items: (sources' ids, line number)
        sizes.append(len(items))
        if len(items) > limit["n"]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return [[tr_mod.Hypothesis([seq[0][0]], 0.0)] for seq, _ in items]

    monkeypatch.setattr(tr_mod, "search_batch", fake_search)
    vocab = type("V", (), {"encode": lambda self, xs: [[int(x)] for x in xs]})()
    warnings = []
    tr = Translator(torch.nn.Linear(1, 1), vocab, SearchOptions(beam=1, workers=1, batch_size=8), warn=warnings.append)
    lines = [str(i) for i in range(10, 18)]
    hyps = tr.hypotheses(lines)
    assert [h[0].tokens for h in hyps] == [[int(x)] for x in lines]
    assert sizes == [8, 4, 2, 2, 4, 2, 2] and len(warnings) == 1 and "in halves" in warnings[0]
    limit["n"] = 0
    with pytest.raises(NmtError, match="out of memory on a single sentence"):
        tr.hypotheses(["5"])


def test_map_in_threads_keeps_order_shares_threads_and_restores_them():
    import threading

    from nmt.translate import map_in_threads

    threads, seen = torch.get_num_threads(), []

    def work(x):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return x * x

    assert map_in_threads(work, list(range(9)), 2) == [x * x for x in range(9)]
    assert all(name.startswith("nmt-search") and n == max(1, threads // 2) for name, n in seen)
    assert torch.get_num_threads() == threads
    started = []
    map_in_threads(started.append, list(range(6)), 1)  # one worker: in order, inline
    assert started == list(range(6))
    started.clear()
    map_in_threads(lambda x: started.append(x) or time.sleep(0.01), list(range(6)), 2)
    assert started[:2] in ([5, 4], [4, 5])  # the last (longest) items start first
    seen.clear()
    assert map_in_threads(work, [1, 2], 8) == [1, 4] and {n for _, n in seen} == {max(1, threads // 2)}  # 2 threads
    seen.clear()
    assert map_in_threads(work, [3], 2) == [9] and seen[0][0] == threading.current_thread().name  # one item: inline

    def fail(x):
        if x == 4:
            raise ValueError("batch 4")
        return x

    with pytest.raises(ValueError, match="batch 4"):
        map_in_threads(fail, list(range(8)), 2)
    assert torch.get_num_threads() == threads


def test_length_batches_cap_sentences_and_tokens():
    from nmt.translate import length_batches

    assert length_batches([1, 2, 3, 4, 5], max_sentences=2) == [[0, 1], [2, 3], [4]]
    # sentences x longest <= 20: long sentences come in smaller batches; one alone always fits
    assert length_batches([2, 2, 2, 10, 10, 30], max_sentences=10, max_tokens=20) == [[0, 1, 2], [3, 4], [5]]
    lengths = sorted(random.Random(0).randint(1, 60) for _ in range(500))
    batches = length_batches(lengths, 128, 1000)
    assert [i for b in batches for i in b] == list(range(500))
    assert all(len(b) <= 128 and (len(b) == 1 or len(b) * lengths[b[-1]] <= 1000) for b in batches)


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_workers_give_the_same_hypotheses(kind):
    """Batches searched by 2 workers give the hypotheses of 1 worker (see the asserts for how exactly)."""
    from nmt.models import build_model
    from nmt.models.lstm import LSTMConfig
    from nmt.translate import SearchOptions, Translator

    class Ids:  # a vocabulary of whitespace-separated ids
        def encode(self, lines):
            return [[int(w) for w in line.split()] for line in lines]

    torch.manual_seed(0)
    m = tiny_transformer() if kind == "transformer" else build_model(
        "lstm", LSTMConfig(vocab_size=40, embed_size=16, hidden_size=16, encoder_layers=1))
    rng = random.Random(0)
    lines = [" ".join(str(rng.randrange(4, 40)) for _ in range(rng.randrange(1, 10))) for _ in range(40)]
    threads = torch.get_num_threads()
    runs = []
    for workers, n in [(1, max(1, threads // 2)), (2, threads), (1, threads)]:
        torch.set_num_threads(n)
        try:
            opts = SearchOptions(beam=3, batch_tokens=40, workers=workers)
            runs.append([[(h.tokens, h.score) for h in x] for x in Translator(m.eval(), Ids(), opts).hypotheses(lines)])
        finally:
            torch.set_num_threads(threads)
    assert runs[1] == runs[0]  # each worker on threads // 2 threads: bit for bit one worker on that many
    # against one worker on all threads the products may round differently (last bits): the same tokens
    assert [t for x in runs[1] for t, _ in x] == [t for x in runs[2] for t, _ in x]
    assert [sc for x in runs[1] for _, sc in x] == pytest.approx([sc for x in runs[2] for _, sc in x], rel=1e-5)
    assert all(len(x) == 1 for x in runs[1])


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), v=st.sampled_from([7993, 8000, 8192, 16000, 640, 50]), k=st.integers(1, 11),
       seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_topk_last_is_topk(rows, v, k, seed, ties):
    """The two-pass top-k gives torch's values, best first, at indices that hold them: with ties
    (values rounded to a few levels), -inf entries (a masked vocabulary) and unsplittable widths."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 2, v, generator=g)
    if ties:
        x = (x * 2).round()
    x[:, :, torch.randint(0, v, (v // 3,), generator=g)] = float("-inf")
    x[0, 0] = float("-inf")  # a whole row masked
    x[-1, -1, 0] = float("nan")  # and a NaN ranks first, as in torch.topk
    values, indices = topk_last(x, k)
    exact = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(values, x.topk(k, dim=-1).values, **exact)
    torch.testing.assert_close(x.gather(-1, indices), values, **exact)
    assert (indices.sort(-1).values.diff(dim=-1) > 0).all()  # k different positions


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_a_sentence_decodes_the_same_alone_and_in_a_batch(kind):
    """Batching, dropping finished sentences (one ends at the first step, by its length limit) and
    the first step's one row per sentence give each sentence what it gets alone: with and without
    shared source rows, n-best lists, attention and the coverage penalty."""
    from nmt.models import build_model
    from nmt.models.lstm import LSTMConfig

    torch.manual_seed(0)
    m = tiny_transformer() if kind == "transformer" else build_model(
        "lstm", LSTMConfig(vocab_size=40, embed_size=16, hidden_size=16, encoder_layers=1, dropout=0.0))
    m.eval()
    src = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 3], [7, 3, 0, 0, 0, 0, 0, 0, 0, 0], [9, 8, 7, 6, 3, 0, 0, 0, 0, 0]])
    kw = dict(beam=3, n_best=2, need_attention=True, beta=0.2, max_len_a=0.4, max_len_b=0)  # limits 4, 1, 2
    together = beam_search(m, src, **kw)
    assert [len(h[0].tokens) for h in together][1] == 0  # the second ends at its first step
    for row, hyps in enumerate(together):
        alone = beam_search(m, src[row : row + 1, : int((src[row] != 0).sum())], **kw)[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-4)
        for a, b in zip(hyps, alone):
            assert torch.allclose(a.attention, b.attention, atol=1e-5)
