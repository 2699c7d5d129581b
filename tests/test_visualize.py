import json
import xml.etree.ElementTree as ET

import torch
from typer.testing import CliRunner

from nmt.alignment import attention_stats, merge_to_words, pharaoh, word_groups, words
from nmt.visualize import gray, svg_heatmap, terminal_heatmap
from nmt_cli.main import app

SVG = "{http://www.w3.org/2000/svg}"


def test_svg_is_wellformed_with_one_cell_per_pair():
    w = torch.softmax(torch.randn(3, 4), -1)
    root = ET.fromstring(svg_heatmap(w, ["▁a", "▁b<", "&c", "</s>"], ["x", "y", "</s>"], "t"))
    cells = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "cell"]
    assert len(cells) == 12
    for c in cells:
        value = float(w[int(c.get("data-row")), int(c.get("data-col"))])
        assert c.get("fill") == gray(value)
        assert c.find(f"{SVG}title") is not None
    assert gray(0.0) == "rgb(0,0,0)" and gray(1.0) == "rgb(255,255,255)"


def test_words_from_pieces():
    pieces = ["▁Ein", "▁Hu", "nd", "▁läuft", "."]
    assert word_groups(pieces) == [[0], [1, 2], [3, 4]]
    assert words(pieces) == ["Ein", "Hund", "läuft."]
    w = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0], [0.0, 0.5, 0.5, 0.0, 0.0]])
    merged = merge_to_words(w, pieces, ["▁a", "b"])
    assert torch.allclose(merged, torch.tensor([[0.05, 0.75, 0.2]]))


def test_pharaoh_diagonal_and_stats():
    eye = torch.eye(4)
    assert pharaoh(eye) == "0-0 1-1 2-2 3-3"
    assert pharaoh(torch.eye(4).flip(1)) == "0-3 1-2 2-1 3-0"
    stopped = torch.tensor([[0.0, 0, 0], [0, 0, 1.0], [0, 0, 0]])  # monotonic: rows 0 and 2 attended nothing
    assert pharaoh(stopped) == "2-1" and str(attention_stats(stopped)["entropy"]) == "0.0"
    s = attention_stats(eye)
    assert s["entropy"] == 0 and s["unattended"] == 0 and s["repeated"] == 0
    rep = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    s = attention_stats(rep)
    assert s["repeated"] == round(1 / 3, 4) and s["unattended"] == round(1 / 3, 4)
    assert attention_stats(torch.full((2, 4), 0.25))["entropy"] == round(float(torch.log(torch.tensor(4.0))), 4)


def test_terminal_view():
    out = terminal_heatmap(torch.tensor([[1.0, 0.0], [0.0, 0.5]]), ["a", "b"], ["x", "y"])
    assert out.splitlines()[-2] == "x █ " and out.splitlines()[-1] == "y  ▒"


def test_translate_writes_pictures_alignments_and_stats(trained_small, tmp_path):
    pics, stats = tmp_path / "pics", tmp_path / "stats.jsonl"
    r = CliRunner().invoke(app, ["translate", "-m", str(trained_small / "best.pt"), "--beam", "3", "--attention",
                                 str(pics), "--alignments", "-", "--attention-stats", str(stats),
                                 "--encoder-attention"], input="Ein Hund läuft.\n\nZwei Männer.\n")
    assert r.exit_code == 0, r.output
    lines = r.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "\t"
    index = (pics / "index.html").read_text()
    assert "line 1" in index and "line 3" in index and "line 2<" not in index
    svgs = sorted(p.name for p in pics.glob("*.svg"))
    assert "line00001.layer0.head0.svg" in svgs and "line00001.encoder.layer0.avg.svg" in svgs  # from 0, as --align-*
    for p in pics.glob("*.svg"):
        ET.parse(p)
    records = [json.loads(l) for l in stats.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3] and "entropy" in records[0]


def test_lstm_alignments(tmp_path, prepared_small):
    from nmt.checkpoint import atomic_save, make_checkpoint
    from nmt.models import build_model
    from nmt.models.lstm import LSTMConfig

    m = build_model("lstm", LSTMConfig(vocab_size=300, embed_size=16, hidden_size=16, heads=2))
    atomic_save(make_checkpoint(m, "lstm", (prepared_small / "spm.model").read_bytes(), {}), tmp_path / "l.pt")
    align = tmp_path / "a.txt"
    r = CliRunner().invoke(app, ["translate", "-m", str(tmp_path / "l.pt"), "--alignments", str(align),
                                 "--max-len-b", "3", "--attention", str(tmp_path / "p")], input="Ein Hund.\n")
    assert r.exit_code == 0, r.output
    assert align.read_text().count("\n") == 1
    assert (tmp_path / "p" / "line00001.layer0.head1.svg").exists()
    for extra, message in ((["--attention", str(tmp_path / "q")], "encoder has no self-attention"),
                           ([], "needs --attention DIR")):
        r = CliRunner().invoke(app, ["translate", "-m", str(tmp_path / "l.pt"), "--encoder-attention",
                                     "-o", str(tmp_path / "out.txt"), *extra], input="Ein Hund.\n")
        assert r.exit_code == 1 and message in r.output, r.output
        assert not (tmp_path / "out.txt").exists() and not (tmp_path / "q").exists()  # refused before any output
