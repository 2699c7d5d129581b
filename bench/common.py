"""Helpers shared by the benchmark scripts: peak RSS, JSON output, small tables."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or of its finished children), in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def write_json(path: str | Path, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, str, str, float]:
    """Run ``cmd`` to completion in a fresh wrapper process, so that the peak RSS is this command's
    alone (its own children included). Returns (wall seconds, stdout, stderr, peak RSS in MiB);
    raises with the tail of the output when the command fails."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True, text=True); "
               "dt = time.perf_counter() - t; sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
               "print(f'\\nWALL {dt} RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
               "sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, "-c", wrapper, *cmd], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    *err, last = r.stderr.rstrip().splitlines()
    _, wall, _, rss = last.split()
    return float(wall), r.stdout, "\n".join(err), int(rss) / 1024
