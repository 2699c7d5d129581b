from pathlib import Path

import pytest
import torch

from nmt.config import load_config, parse_overrides
from nmt.data import make_batches
from nmt.errors import NmtError
from nmt.schedules import inverse_sqrt, noam


def test_overrides_are_typed_and_checked(tmp_path):
    cfg = load_config(None, ["train.lr=5e-4", "model.heads=8", "model.pre_norm=false", "train.adam_betas=[0.9, 0.99]"])
    assert cfg.train.lr == 5e-4 and cfg.model.heads == 8 and cfg.model.pre_norm is False
    assert cfg.train.adam_betas == (0.9, 0.99)
    with pytest.raises(NmtError, match="valid keys in \\[model\\]"):
        load_config(None, ["model.hidden_size=3"])  # an LSTM key on a Transformer
    assert load_config(None, ["model.kind=\"lstm\"", "model.hidden_size=64", "model.embed_size=64"]).model.hidden_size == 64
    with pytest.raises(NmtError, match="valid: transformer, lstm"):
        load_config(None, ['model.kind="gru"'])
    with pytest.raises(NmtError, match="section.key=value"):
        parse_overrides(["lr=1"])
    with pytest.raises(NmtError, match="valid sections"):
        load_config(None, ["optim.lr=1"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(NmtError, match="not valid TOML"):
        load_config(bad)


def test_example_configs_load():
    from pathlib import Path

    from nmt.models import build_model

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert [p.name for p in configs] == ["lstm-bahdanau.toml", "lstm-luong.toml", "transformer.toml"]
    params = {}
    for path in configs:
        cfg = load_config(path)
        params[path.name] = sum(p.numel() for p in build_model(cfg.model_kind, cfg.model).parameters())
    # the shapes the README and the side-by-side benchmark quote (8,000-piece vocabulary)
    assert params == {"lstm-bahdanau.toml": 4_547_584, "lstm-luong.toml": 4_481_536, "transformer.toml": 7_578_624}


def test_batches_respect_token_budget_and_cover_everything():
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(2, 40, (500,), generator=g), torch.randint(2, 40, (500,), generator=g)
    batches = make_batches(src, tgt, 400, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) * int(torch.maximum(src[b], tgt[b]).max()) <= 400
    assert make_batches(src, tgt, 400, seed=3) == batches and make_batches(src, tgt, 400, seed=4) != batches


def test_schedules():
    assert inverse_sqrt(50, 1e-3, 100) == pytest.approx(5e-4)
    assert inverse_sqrt(400, 1e-3, 100) == pytest.approx(5e-4)
    assert noam(100, 1e-3, 100) == pytest.approx(1e-3)
    assert noam(400, 1e-3, 100) == pytest.approx(5e-4)


def test_docs_config_names_every_key():
    """docs/config.md lists every key of every section, and no key that does not exist."""
    import dataclasses
    import re

    from nmt.config import DataConfig, TrainConfig
    from nmt.models import MODELS

    page = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    sections = re.split(r"\n## ", page)[1:]
    listed = {s.splitlines()[0]: re.findall(r"^\| `(\w+)` \|", s, re.M) for s in sections}
    expected = {"`[data]`": [f.name for f in dataclasses.fields(DataConfig)],
                "`[train]`": [f.name for f in dataclasses.fields(TrainConfig)],
                **{f'`[model]`, `kind = "{kind}"`': ["kind"] * (i == 0) + [f.name for f in dataclasses.fields(cls)]
                   for i, (kind, (cls, _)) in enumerate(MODELS.items())}}
    assert listed == expected
