"""Shared fixtures: tiny models, a tiny prepared corpus from the real Multi30k mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# the same examples on every run: a property test that fails in CI fails again on a rerun
settings.register_profile("nmt", derandomize=True)
settings.load_profile("nmt")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NMT_DATA_HOME", REPO.parent / "shared" / "data"))
MULTI30K = SHARED_DATA / "multi30k" / "raw"


def tiny_transformer(vocab_size: int = 40, **kw):
    from nmt.models import build_model
    from nmt.models.transformer import TransformerConfig

    cfg = dict(vocab_size=vocab_size, d_model=32, heads=4, ff_size=64, encoder_layers=2, decoder_layers=2, dropout=0.0)
    cfg.update(kw)
    return build_model("transformer", TransformerConfig(**cfg))


def random_batch(vocab_size: int = 40, b: int = 3, s: int = 7, t: int = 6, seed: int = 0):
    """src (b, s) with padding in row 1, tgt_in (b, t) starting with BOS."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab_size, (b, s), generator=g)
    src[1, s - 2 :] = 0
    src[:, -1][src[:, -1] != 0] = 3
    tgt = torch.randint(4, vocab_size, (b, t), generator=g)
    tgt[:, 0] = 2
    return src, tgt


@pytest.fixture(scope="session")
def multi30k_small(tmp_path_factory) -> dict:
    """300 training + 40 valid/test lines of real Multi30k de-en, as files."""
    if not (MULTI30K / "train.de").exists():
        message = f"Multi30k mirror not found at {MULTI30K} (set NMT_DATA_HOME)"
        if os.environ.get("NMT_REQUIRE_DATA") == "1":  # CI: a missing mirror must not pass as skips
            pytest.fail(message)
        pytest.skip(message)
    d = tmp_path_factory.mktemp("m30k")
    files = {}
    for split, n in (("train", 300), ("val", 40), ("test_2016_flickr", 40)):
        for lang in ("de", "en"):
            lines = (MULTI30K / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            p = d / f"{split}.{lang}"
            p.write_text("\n".join(lines) + "\n", encoding="utf-8")
            files[f"{split}.{lang}"] = p
    return files


@pytest.fixture(scope="session")
def prepared_small(multi30k_small, tmp_path_factory) -> Path:
    from nmt.prepare import PrepareOptions, prepare

    out = tmp_path_factory.mktemp("prep")
    f = multi30k_small
    prepare(out, (f["train.de"], f["train.en"]), (f["val.de"], f["val.en"]), (f["test_2016_flickr.de"], f["test_2016_flickr.en"]),
            ("de", "en"), PrepareOptions(vocab_size=300), log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def trained_small(prepared_small, tmp_path_factory) -> Path:
    """A tiny Transformer trained for a few updates on the small corpus: its run folder."""
    from nmt.config import load_config
    from nmt.train import Trainer

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, [f'data.dir="{prepared_small}"', "model.d_model=32", "model.heads=2", "model.ff_size=64",
                             "model.encoder_layers=1", "model.decoder_layers=1", "train.max_steps=6",
                             "train.valid_every=3", "train.batch_tokens=600", "train.valid_beam=2", "train.threads=1"])
    Trainer(cfg, out, log=lambda m: None).run()
    return out


def incremental_log_probs(model, src, tgt_in):
    """Feed ``tgt_in`` through ``step`` one token at a time: log-probs ``(B, T, V)``."""
    state = model.init_state(model.encode(src))
    lps = []
    for t in range(tgt_in.shape[1]):
        lp, state, _ = model.step(tgt_in[:, t], state)
        lps.append(lp)
    return torch.stack(lps, 1)
