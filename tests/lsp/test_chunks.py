"""Parsing item by item (convdsl/lsp/chunks.py) gives exactly the whole-file parse, and reuses pieces."""
from __future__ import annotations

from pathlib import Path

import pytest

from convdsl.lang.parser import parse
from convdsl.lsp import chunks
from convdsl.lsp.chunks import PieceCache
from convdsl.lsp.tokens import lex

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").rglob("*.cdl"))


def _spans(program):
    return [(i.span.line, i.span.column, i.span.end_line, i.span.end_column, getattr(i, "end_line", None))
            for i in program.items]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_pieces_equal_the_whole_file_parse(path):
    text = path.read_text()
    program, tokens = PieceCache().parse(text, str(path))
    whole = parse(text, str(path))
    assert program == whole and program.comments == whole.comments
    assert _spans(program) == _spans(whole)  # spans take no part in ==: compare them too
    assert [t for t in tokens if t.type != "_NL"] == [t for t in lex(text) if t.type != "_NL"]


def test_an_edit_reparses_only_its_piece(monkeypatch):
    text = (Path(__file__).resolve().parents[2] / "examples" / "blocks" / "resnet.cdl").read_text()
    cache = PieceCache()
    cache.parse(text, "/x/resnet.cdl")
    calls = []
    real = chunks.parse
    monkeypatch.setattr(chunks, "parse", lambda t, f: calls.append(t) or real(t, f))
    edited = text.replace("block stage(unit, c, n, stride=1)", "block stage(unit, c, n, stride=2)")
    program, _ = cache.parse(edited, "/x/resnet.cdl")
    assert len(calls) == 1 and "block stage(unit, c, n, stride=2)" in calls[0]
    assert program == parse(edited, "/x/resnet.cdl")


def test_a_cut_inside_a_construct_falls_back():
    """A keyword argument at column 1 looks like an item start: that piece fails, the caller parses whole."""
    text = "network n(x: f32[1, 3]) {\n    y = x | linear(4,\nbias=false)\n    return y\n}\n"
    parse(text, "/x/n.cdl")  # valid as a whole
    assert PieceCache().parse(text, "/x/n.cdl") is None
