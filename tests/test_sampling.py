"""Sampling (nmt translate --sample): the counter-based generator, the top-k / nucleus cuts, draws
that follow a scripted model's distribution, line-by-line reproducibility, and the CLI."""

import math
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from conftest import random_batch, tiny_transformer
from nmt.sampling import counter_uniform, draw, filter_log_probs, sample_search, splitmix64, step_keys
from nmt.search import greedy_search
from nmt_cli.main import app
from test_search import SCRIPT, BigramModel


def test_splitmix64_matches_the_reference_sequence():
    # splitmix64 seeded with 0: the first two outputs of the reference C code (Vigna)
    got = splitmix64(torch.tensor([0, 0x9E3779B97F4A7C15 - (1 << 64)])).tolist()
    assert [g & ((1 << 64) - 1) for g in got] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_counter_uniform_is_uniform_and_a_pure_function_of_its_keys():
    keys = torch.arange(100_000)  # consecutive counters, as consecutive steps give
    u = counter_uniform(keys)  # (100000,)
    assert u.dtype == torch.float64 and 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    assert torch.equal(counter_uniform(keys[5000:6000]), u[5000:6000])
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.005
    a = step_keys(0, torch.tensor([1, 1, 2]), torch.tensor([0, 1, 0]), 3)
    assert len(set(a.tolist())) == 3 and torch.equal(a, step_keys(0, torch.tensor([1, 1, 2]), torch.tensor([0, 1, 0]), 3))
    assert not torch.equal(a, step_keys(1, torch.tensor([1, 1, 2]), torch.tensor([0, 1, 0]), 3))


def test_topk_and_nucleus_cuts():
    # tokens 4..7 (0..3 are PAD UNK BOS EOS, with no mass here)
    lp = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, 0.3, 0.15, 0.05]]).clamp_min(1e-30).log()
    kept = lambda x: (x > float("-inf")).squeeze(0).tolist()[4:]  # noqa: E731
    assert kept(filter_log_probs(lp, topk=2)) == [True, True, False, False]
    assert kept(filter_log_probs(lp, topp=0.7)) == [True, True, False, False]  # 0.5 < 0.7 <= 0.8
    assert kept(filter_log_probs(lp, topp=0.5)) == [True, False, False, False]
    assert kept(filter_log_probs(lp, topp=0.95)) == [True, True, True, False]
    assert kept(filter_log_probs(lp)) == [True] * 4
    assert (filter_log_probs(lp)[0, :4] > float("-inf")).tolist() == [False, True, False, True]  # PAD, BOS never
    shuffled = lp[:, [0, 1, 2, 3, 6, 4, 7, 5]]  # the nucleus follows the probabilities, not the positions
    assert kept(filter_log_probs(shuffled, topp=0.7)) == [False, True, False, True]
    torch.testing.assert_close(filter_log_probs(lp, temperature=0.5)[:, 3:], lp[:, 3:] * 2)


def test_draws_follow_the_models_distribution():
    m = BigramModel(SCRIPT)  # first token: A 0.6, B 0.4; after B: EOS 0.9
    n = 4000
    src = torch.tensor([[7, 3]]).repeat(n, 1)
    hyps = sample_search(m, src, torch.arange(n), max_len_a=0, max_len_b=3)
    first = Counter(h[0].tokens[0] for h in hyps)
    assert abs(first[4] / n - 0.6) < 0.03 and abs(first[5] / n - 0.4) < 0.03
    after_b = Counter(tuple(h[0].tokens) for h in hyps if h[0].tokens[0] == 5)
    assert abs(after_b[(5,)] / first[5] - 0.9) < 0.03  # B then EOS
    h = next(h[0] for h in hyps if h[0].tokens == [5])
    assert h.score == pytest.approx(math.log(0.4 * 0.9), abs=1e-5)  # the model's own log-probability
    # a temperature flattens: A and B (the top 2) nearly even at T = 10; top-k 1 is greedy
    flat = sample_search(m, src[:2000], torch.arange(2000), temperature=10.0, topk=2, max_len_a=0, max_len_b=2)
    share = sum(h[0].tokens[0] == 4 for h in flat) / 2000
    assert abs(share - 0.6 ** 0.1 / (0.6 ** 0.1 + 0.4 ** 0.1)) < 0.035
    top1 = sample_search(m, src[:50], torch.arange(50), topk=1, max_len_a=0, max_len_b=4)
    assert all(h[0].tokens == [4, 4, 4] for h in top1)  # greedy's A A A, EOS forced at the limit


def test_a_lines_samples_do_not_depend_on_its_batch():
    torch.manual_seed(0)
    m = tiny_transformer().eval()
    src, _ = random_batch(b=3)
    lines = torch.tensor([11, 12, 13])
    together = sample_search(m, src, lines, n=3, need_attention=True)
    alone = [sample_search(m, src[i : i + 1, : int((src[i] != 0).sum())], lines[i : i + 1], n=3)[0] for i in range(3)]
    assert [[h.tokens for h in s] for s in together] == [[h.tokens for h in s] for s in alone]
    assert all(len(s) == 3 and [h.score for h in s] == sorted((h.score for h in s), reverse=True) for s in together)
    a = together[0][0].attention  # (T+1, L, H, S real)
    assert a.shape[0] == len(together[0][0].tokens) + 1 and a.shape[-1] == int((src[0] != 0).sum())
    other_seed = sample_search(m, src, lines, n=3, seed=1)
    assert [[h.tokens for h in s] for s in other_seed] != [[h.tokens for h in s] for s in together]
    # top-k 1 draws the greedy translation
    greedy = [h[0].tokens for h in greedy_search(m, src)]
    assert [s[0].tokens for s in sample_search(m, src, lines, topk=1)] == greedy


def test_translate_sample_cli(trained_small):
    text = "".join(f"ein Hund Nummer {i} .\n" for i in range(12)) + "\n"
    model = str(trained_small / "best.pt")

    def run(*extra):
        r = CliRunner().invoke(app, ["translate", "-m", model, "--sample", *extra], input=text)
        assert r.exit_code == 0, r.output
        return r.stdout

    out = run()
    assert len(out.splitlines()) == 13 and out.splitlines()[-1] == ""
    # the same samples whatever the chunks, batches and threads
    assert run("--chunk-lines", "5", "--batch-size", "2", "--workers", "1") == out
    assert run("--seed", "5") != out
    three = run("--n-best", "3", "--sample-topk", "20", "--temperature", "0.7").splitlines()
    assert len(three) == 13 and all(line.count("\t") == 5 for line in three[:-1])
    for args, message in ((["--sample", "--beam", "3"], "--beam is a beam-search option, which --sample does not use"),
                          (["--seed", "3"], "--seed only applies with --sample"),
                          (["--sample", "--temperature", "0"], "--temperature must be a finite number > 0"),
                          (["--sample", "--temperature", "nan"], "--temperature must be a finite number > 0")):
        r = CliRunner().invoke(app, ["translate", "-m", model, *args], input=text)
        assert r.exit_code == 1 and message in r.stderr and r.stdout == "", r.output


def test_a_seed_out_of_range_is_refused_before_any_output_is_touched(trained_small, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("keep\n")
    r = CliRunner().invoke(app, ["translate", "-m", str(trained_small / "best.pt"), "-o", str(out), "--sample",
                                 "--seed", str(2**63)], input="ein Hund\n")
    assert r.exit_code == 2 and "--seed" in r.stderr and out.read_text() == "keep\n"


def test_pad_and_bos_are_never_drawn():
    probs = torch.full((6, 6), 0.0)
    probs[:, 0], probs[:, 2], probs[:, 3] = 0.45, 0.45, 0.1  # PAD and BOS would win nearly every draw
    hyps = sample_search(BigramModel(probs), torch.tensor([[7, 3]]).repeat(200, 1), torch.arange(200),
                         max_len_a=0, max_len_b=3)
    assert all(h[0].tokens == [] for h in hyps)  # EOS, the only token left, at once


def test_draw_inverts_the_cumulative_distribution():
    x = torch.tensor([[0.2, 0.0, 0.5, 0.3]]).clamp_min(1e-300).log().double()
    x[0, 1] = float("-inf")  # probability 0: never drawn, even at its boundary
    cases = {0.0: 0, 0.1999: 0, 0.2001: 2, 0.6999: 2, 0.7001: 3, 0.9999999: 3}
    for u, token in cases.items():
        assert int(draw(x, torch.tensor([u], dtype=torch.float64))) == token, u
    nothing = torch.full((1, 4), float("-inf"))
    assert int(draw(nothing, torch.tensor([0.5]))) == 0  # a row with nothing left: no crash, a token
