import pytest
import torch

from conftest import random_batch, tiny_transformer
from nmt.checkpoint import FORMAT_VERSION, atomic_save, load_checkpoint, make_checkpoint, model_from_checkpoint
from nmt.errors import NmtError
from nmt.search import beam_search


@pytest.fixture
def spm_bytes(prepared_small):
    return (prepared_small / "spm.model").read_bytes()


def test_round_trip_gives_identical_translations(tmp_path, spm_bytes):
    torch.manual_seed(0)
    m = tiny_transformer(vocab_size=300).eval()
    path = tmp_path / "m.pt"
    atomic_save(make_checkpoint(m, "transformer", spm_bytes, {"step": 3}), path)
    raw = torch.load(path, weights_only=True)  # loads without arbitrary unpickling
    assert raw["format_version"] == FORMAT_VERSION and raw["kind"] == "transformer"
    m2, vocab = model_from_checkpoint(load_checkpoint(path))
    assert m2.embed is m2.tgt_embed
    src, _ = random_batch(vocab_size=300)
    a = beam_search(m, src, beam=3)
    b = beam_search(m2, src, beam=3)
    assert [h[0].tokens for h in a] == [h[0].tokens for h in b]
    assert len(vocab) == 300


@pytest.mark.parametrize("extra", [{}, {"hard": "reinforce", "copy": True, "location_filters": 2, "tie_embeddings": False}])
def test_lstm_round_trip(tmp_path, spm_bytes, extra):
    from nmt.models import build_model
    from nmt.models.lstm import LSTMConfig

    m = build_model("lstm", LSTMConfig(vocab_size=300, embed_size=16, hidden_size=16, heads=2, score="mlp", **extra)).eval()
    atomic_save(make_checkpoint(m, "lstm", spm_bytes, {}), tmp_path / "l.pt")
    m2, _ = model_from_checkpoint(load_checkpoint(tmp_path / "l.pt"))
    assert m2.config == m.config
    a, b = m.state_dict(), m2.state_dict()  # (hard: the REINFORCE baseline starts as NaN)
    assert list(a) == list(b) and all(torch.equal(a[k].nan_to_num(7.0), b[k].nan_to_num(7.0)) for k in a)
    src, _ = random_batch(vocab_size=300)
    assert [h[0].tokens for h in beam_search(m, src)] == [h[0].tokens for h in beam_search(m2, src)]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_code_executing_pickle(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "weights": Evil()}, path)
    with pytest.raises(NmtError, match="refused"):
        load_checkpoint(path)


def test_truncated_foreign_newer_and_missing(tmp_path, spm_bytes):
    good = tmp_path / "good.pt"
    atomic_save(make_checkpoint(tiny_transformer(vocab_size=300), "transformer", spm_bytes, {}), good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(NmtError, match="trunc.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(NmtError, match="text.pt"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"some": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(NmtError, match="not an nmt checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    ckpt = torch.load(good, weights_only=True)
    ckpt["format_version"] = FORMAT_VERSION + 1
    torch.save(ckpt, tmp_path / "new.pt")
    with pytest.raises(NmtError, match="newer"):
        load_checkpoint(tmp_path / "new.pt")
    with pytest.raises(NmtError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"format_version": 1, "weights": {}, "x": torch.ones(1)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(Exception):
        atomic_save({"bad": Boom()}, path)
    assert torch.load(path, weights_only=True)["x"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left
