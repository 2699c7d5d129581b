"""Attention pictures: grayscale SVG heatmaps (0 black, 1 white), an index.html, a terminal view.

No plotting dependency: an SVG is a grid of ``<rect>`` cells whose fill is the weight as a gray
level, with a ``<title>`` per cell so a browser shows the value on hover. Source tokens run along
the top, target tokens down the left side.
"""

from __future__ import annotations

import html
from pathlib import Path

from torch import Tensor

CELL = 22  # pixels per cell


def gray(w: float) -> str:
    v = max(0, min(255, round(float(w) * 255)))
    return f"rgb({v},{v},{v})"


def svg_heatmap(weights: Tensor, src: list[str], tgt: list[str], title: str = "") -> str:
    """weights ``(T, S)`` with ``len(tgt) == T`` and ``len(src) == S`` -> an SVG document."""
    t, s = weights.shape
    left = 10 + 7 * max((len(x) for x in tgt), default=1)
    top = 30 + int(5.5 * max((len(x) for x in src), default=1))
    width, height = left + s * CELL + 10, top + t * CELL + 10
    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">',
           f"<title>{esc(title)}</title>" if title else "",
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>']
    for j, tok in enumerate(src):
        x = left + j * CELL + CELL / 2
        out.append(f'<text x="{x:.1f}" y="{top - 6}" transform="rotate(-60 {x:.1f} {top - 6})">{esc(tok)}</text>')
    for i, tok in enumerate(tgt):
        y = top + i * CELL + CELL * 0.7
        out.append(f'<text x="{left - 6}" y="{y:.1f}" text-anchor="end">{esc(tok)}</text>')
    rows = weights.tolist()
    for i in range(t):
        for j in range(s):
            w = rows[i][j]
            out.append(f'<rect class="cell" x="{left + j * CELL}" y="{top + i * CELL}" width="{CELL}" height="{CELL}" '
                       f'fill="{gray(w)}" data-row="{i}" data-col="{j}" data-w="{w:.4f}">'
                       f"<title>{esc(tgt[i])} \u2192 {esc(src[j])}: {w:.3f}</title></rect>")
    out.append("</svg>")
    return "\n".join(x for x in out if x)


def attention_figures(attention: Tensor, src: list[str], tgt: list[str]) -> list[tuple]:
    """attention ``(T, L, H, S)`` -> ``(name, (T, S) matrix, row labels, column labels)`` per figure:
    per layer the mean over heads, then every head (a single-head layer shows just its head).
    Layers and heads count from 0 in the names, as ``--align-layer`` and ``--align-heads`` do."""
    figs = []
    _, layers, heads, _ = attention.shape
    for layer in range(layers):
        if heads > 1:
            figs.append((f"layer{layer}.avg", attention[:, layer].mean(1), tgt, src))
        for head in range(heads):
            figs.append((f"layer{layer}.head{head}", attention[:, layer, head], tgt, src))
    return figs


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>nmt attention</title>
<style>body{{font-family:sans-serif;margin:2em;background:#f4f4f4}} section{{background:white;padding:1em;margin-bottom:2em}}
.figs{{display:flex;flex-wrap:wrap;gap:1.5em}} figure{{margin:0}} figcaption{{font-size:12px;color:#444}}
dt{{font-weight:bold}} dd{{margin:0 0 .5em 0}}</style></head>
<body><h1>Attention of the printed translations</h1>
<p>Grayscale: 0 black, 1 white. Source pieces along the top, output pieces down the side (EOS included).
Hover a cell for its value.</p>
{sections}
</body></html>
"""


def write_attention_page(out_dir: Path, items: list[dict]) -> Path:
    """Write one SVG per figure and an ``index.html`` that shows them all.

    ``items``: dicts with ``index`` (input line number), ``source``, ``output``, ``score`` and
    ``figures`` (list of ``(name, (T, S) tensor, row labels, column labels)``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for item in items:
        figs = []
        for name, w, rows, cols in item["figures"]:
            svg = svg_heatmap(w, cols, rows, f"line {item['index'] + 1} {name}")
            fname = f"line{item['index'] + 1:05d}.{name}.svg"
            (out_dir / fname).write_text(svg, encoding="utf-8")
            figs.append(f'<figure>{svg}<figcaption><a href="{fname}">{html.escape(name)}</a></figcaption></figure>')
        sections.append(
            f"<section><h2>line {item['index'] + 1}</h2><dl><dt>source</dt><dd>{html.escape(item['source'])}</dd>"
            f"<dt>output</dt><dd>{html.escape(item['output'])}</dd><dt>score</dt><dd>{item['score']:.4f}</dd></dl>"
            f"<div class=\"figs\">{''.join(figs)}</div></section>")
    index = out_dir / "index.html"
    index.write_text(PAGE.format(sections="\n".join(sections)), encoding="utf-8")
    return index


SHADES = " ░▒▓█"


def terminal_heatmap(weights: Tensor, src: list[str], tgt: list[str]) -> str:
    """A quick look in a terminal: one shading character per cell (space = 0, █ = 1)."""
    width = max((len(x) for x in tgt), default=1)
    lines = []
    for j, tok in enumerate(src):
        lines.append(" " * (width + 1) + "│" * j + f"┌ {tok}")
    for i, tok in enumerate(tgt):
        cells = "".join(SHADES[min(len(SHADES) - 1, int(float(w) * len(SHADES)))] for w in weights[i].tolist())
        lines.append(f"{tok:>{width}} {cells}")
    return "\n".join(lines)
