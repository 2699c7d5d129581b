"""The streaming line reader: every input line gives exactly one line, in order."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from nmt.translate import clean_line, read_chunks


def chunks_of(data: bytes, max_lines: int = 3, warnings: list | None = None) -> list[str]:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    warnings = [] if warnings is None else warnings
    with os.fdopen(r, "rb") as stream:
        return [line for chunk in read_chunks(stream, max_lines, warnings.append) for line in chunk]


def test_crlf_bom_no_final_newline_and_empty_lines():
    assert chunks_of(b"\xef\xbb\xbfa\r\nb\n\n  \nlast") == ["a", "b", "", "  ", "last"]


def test_invalid_utf8_is_replaced_not_dropped():
    warnings = []
    out = chunks_of(b"ok\n\xff\xfebad\nend\n\xc3more\nx\n", max_lines=2, warnings=warnings)
    assert len(out) == 5 and out[0] == "ok" and out[2] == "end" and "bad" in out[1] and "more" in out[3]
    assert warnings == ["warning: input has invalid UTF-8; bad bytes were replaced"]  # one warning, two bad lines
    clean = []
    assert chunks_of("a \ufffd b\n".encode(), warnings=clean) == ["a \ufffd b"] and clean == []  # a real U+FFFD


def test_clean_line_handles_controls_and_tabs():
    assert clean_line("a\x00b\tc\x1b  d\x7f") == "a b c d"
    assert clean_line(" \t ") == ""


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=30), max_size=20),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_line_count_and_order_preserved(lines, eol, final_newline):
    data = eol.join(l.encode("utf-8") for l in lines) + (eol if final_newline and lines else b"")
    out = chunks_of(data)
    expected = lines if (lines and (final_newline or lines[-1] != "")) else lines[:-1] if lines else []
    if lines and not final_newline and lines[-1] == "":
        expected = lines[:-1]
    assert out == expected
