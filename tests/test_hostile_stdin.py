"""`nmt translate` keeps exactly one output line per input line, whatever the input."""

import re
import select
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nmt_cli.main import app

runner = CliRunner()

NASTY = [b"", b"   ", b"\t", b"Ein Hund.", b"Zwei M\xc3\xa4nner", b"\xff\xfe\xfd", b"a\x00b", b"\x1b[31mred",
         b"\xef\xbb\xbf", b"\r", b"caf\xe9", "日本語のテキスト".encode(), b"\x7f\x01\x02"]


def translate_bytes(ckpt, data: bytes, *extra) -> str:
    r = runner.invoke(app, ["translate", "-m", str(ckpt), "--beam", "1", *extra], input=data)
    assert r.exit_code == 0, r.output
    return r.stdout


def expected_lines(data: bytes) -> int:
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(NASTY), st.binary(max_size=12).filter(lambda b: b"\n" not in b)),
                max_size=12),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.booleans())
def test_one_line_out_per_line_in(trained_small, lines, eol, final_newline, bom):
    data = (b"\xef\xbb\xbf" if bom else b"") + eol.join(lines) + (eol if final_newline and lines else b"")
    out = translate_bytes(trained_small / "best.pt", data)
    n = expected_lines(data)
    assert out.count("\n") == n
    for i, raw in enumerate(data.split(b"\n")[:n]):  # blank in -> empty out, same place
        text = raw.decode("utf-8", "replace")
        if i == 0:
            text = text.removeprefix("\ufeff")  # a BOM starts the input only
        if not re.sub(r"[\s\x00-\x1f\x7f]", "", text):  # blank: whitespace and control characters only (README)
            assert out.split("\n")[i] == ""


def test_very_long_line_is_truncated_not_fatal(trained_small):
    data = b"Hund " * 10_000 + b"\nkurz\n"
    r = runner.invoke(app, ["translate", "-m", str(trained_small / "best.pt"), "--beam", "1"], input=data)
    assert r.exit_code == 0 and r.stdout.count("\n") == 2
    assert "truncated" in r.stderr


def test_many_lines_stream(trained_small):
    """100,000 input lines (mostly empty, some real) -> 100,000 output lines, in order."""
    lines = [b"Ein Hund." if i % 1000 == 0 else b"" for i in range(100_000)]
    out = translate_bytes(trained_small / "best.pt", b"\n".join(lines) + b"\n", "--chunk-lines", "5000")
    outs = out.split("\n")[:-1]
    assert len(outs) == 100_000 and all(o == "" for i, o in enumerate(outs) if i % 1000)


@pytest.mark.slow
def test_hundred_thousand_real_lines_memory_bounded(trained_small, tmp_path):
    src = tmp_path / "big.txt"
    src.write_text("Ein kleiner Hund läuft über die Wiese.\n" * 100_000)
    cmd = f"{sys.executable} -m nmt_cli.main translate -m {trained_small / 'best.pt'} --beam 1 < {src} | wc -l"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=3600)
    assert r.stdout.strip() == "100000"


def test_interactive_producer_gets_answers_before_eof(trained_small):
    p = subprocess.Popen([sys.executable, "-m", "nmt_cli.main", "translate", "-m", str(trained_small / "best.pt"),
                          "--beam", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(2):
            p.stdin.write(b"Ein Hund.\n")
            p.stdin.flush()
            ready, _, _ = select.select([p.stdout], [], [], 60)  # a flushing regression fails, never hangs
            assert ready, "no answer within 60 s while stdin is open"
            assert p.stdout.readline().endswith(b"\n")  # answered while stdin is still open
    finally:
        p.stdin.close()
        try:
            p.wait(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()


@pytest.mark.parametrize("fd, option, message", [(1, "-i", "standard output is closed; give --output FILE"),
                                                 (0, "-o", "standard input is closed; give --input FILE")])
def test_closed_standard_stream_is_a_one_line_error(trained_small, tmp_path, fd, option, message):
    """Started with fd 0 or 1 closed (``nmt translate ... >&-``): one line on stderr, exit 1, no
    traceback, and the file given for the other side untouched."""
    import os

    given = tmp_path / "file"
    given.write_text("Ein Hund.\n")
    r = subprocess.run([sys.executable, "-m", "nmt_cli.main", "translate", "-m", str(trained_small / "best.pt"),
                        option, str(given)], stderr=subprocess.PIPE, text=True, timeout=120,
                       preexec_fn=lambda: os.close(fd))
    assert r.returncode == 1 and r.stderr == f"nmt: error: {message}\n", r.stderr
    assert given.read_text() == "Ein Hund.\n"


def test_input_from_a_pipe(trained_small, tmp_path):
    """``-i <(zcat x.gz)``: a named pipe is an input like a file."""
    import os
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("Ein Hund.\n\nZwei Männer.\n"))
    writer.start()
    r = runner.invoke(app, ["translate", "-m", str(trained_small / "best.pt"), "--beam", "1", "-i", str(fifo)])
    writer.join(timeout=30)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("\n") == 3 and r.stdout.split("\n")[1] == ""
