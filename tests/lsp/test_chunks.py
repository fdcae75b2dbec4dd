"""Parsing item by item (convdsl/lsp/chunks.py) gives exactly the whole-file parse, and reuses pieces."""
from __future__ import annotations

import dataclasses
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
    whole_tokens = lex(text)
    assert [t for t in tokens if t.type != "_NL"] == [t for t in whole_tokens if t.type != "_NL"]
    starts = {(t.line, t.column) for t in whole_tokens if t.type == "_NL"}
    assert {(t.line, t.column) for t in tokens if t.type == "_NL"} <= starts  # (an item's last one ends at its end)


def test_an_edit_reparses_only_its_piece(monkeypatch):
    text = (Path(__file__).resolve().parents[2] / "examples" / "blocks" / "resnet.cdl").read_text()
    cache = PieceCache()
    cache.parse(text, "/x/resnet.cdl")
    calls = []
    real = chunks.parse
    monkeypatch.setattr(chunks, "parse", lambda t, f, **kw: calls.append(t) or real(t, f, **kw))
    edited = text.replace("block stage(unit, c, n, stride=1)", "block stage(unit, c, n, stride=2)")
    program, _ = cache.parse(edited, "/x/resnet.cdl")
    assert len(calls) == 1 and "block stage(unit, c, n, stride=2)" in calls[0]
    assert program == parse(edited, "/x/resnet.cdl")


def test_a_cut_inside_a_construct_falls_back():
    """A keyword argument at column 1 looks like an item start: that piece fails, the caller parses whole."""
    text = "network n(x: f32[1, 3]) {\n    y = x | linear(4,\nbias=false)\n    return y\n}\n"
    parse(text, "/x/n.cdl")  # valid as a whole
    assert PieceCache().parse(text, "/x/n.cdl") is None


def _all_spans(node, out: list) -> list:
    """Every node's type, span and end line, depth first (spans take no part in ==)."""
    if isinstance(node, (list, tuple)):
        for x in node:
            _all_spans(x, out)
    elif dataclasses.is_dataclass(node):
        sp = node.span if hasattr(node, "span") else None
        out.append((type(node).__name__, sp and (sp.file, sp.line, sp.column, sp.end_line, sp.end_column),
                    getattr(node, "end_line", None)))
        for f in dataclasses.fields(node):
            if f.name != "span":
                _all_spans(getattr(node, f.name), out)
    return out


def _long_network(statements: int) -> str:
    lines = ["# a long network", "block unit(c)(x) {", "    return x | conv2d(c, 3, pad=same) | relu", "}", "",
             "network big(image: f32[N, 3, 32, 32],", "            classes=10) {",
             "    h = image | conv2d(16, 3, pad=1) as stem  # the stem", ""]
    for j in range(statements):
        if j % 7 == 3:
            lines += [f"    # stage {j}", f"    if {j} > 2 {{", f"        h = h | unit(16) as u{j}", "    } else {",
                      "        h = h | relu", "    }"]
        elif j % 7 == 5:
            lines += [f"    h = h | unit(16)", f"          | relu as r{j}", ""]
        elif j % 7 == 6:
            lines += [f"    h = h + (h |", "        relu)"]
        else:
            lines.append(f"    h = h | unit(16) as u{j}" if j % 2 else f"    h = h | relu as r{j}")
    lines += ["    return h | global_avgpool(keepdim=false) | linear(classes) as fc", "}", "  # the end", ""]
    return "\n".join(lines)


@pytest.mark.parametrize("path", EXAMPLES + ["long"], ids=lambda p: getattr(p, "name", p))
def test_statement_runs_equal_the_whole_file_parse(path, monkeypatch):
    """Every network and block cut at its statements (runs of one or two statements): the same
    program, comments, spans of every node, and tokens as parsing it whole."""
    text = _long_network(60) if path == "long" else path.read_text()
    name = "/x/long.cdl" if path == "long" else str(path)
    try:
        whole = parse(text, name)
    except Exception:
        pytest.skip("not a file that parses")
    reference = PieceCache().parse(text, name)
    monkeypatch.setattr(chunks, "SPLIT_LINES", 0)
    monkeypatch.setattr(chunks, "SEGMENT_LINES", 1 if len(text) % 2 else 2)
    cache = PieceCache()
    program, tokens = cache.parse(text, name)
    assert program == whole and program.comments == whole.comments
    assert _all_spans(program.items, []) == _all_spans(whole.items, [])
    assert tokens == reference[1]
    assert [t for t in tokens if t.type != "_NL"] == [t for t in lex(text) if t.type != "_NL"]
    assert {(t.line, t.column) for t in tokens if t.type == "_NL"} <= {(t.line, t.column) for t in lex(text)}
    if path == "long":
        assert sum(key[0] == "run" for key in cache.pieces) > 30


def test_an_edit_in_a_long_network_reparses_only_its_statements(monkeypatch):
    text = _long_network(300)
    cache = PieceCache()
    cache.parse(text, "/x/long.cdl")
    calls = []
    real = chunks.parse
    monkeypatch.setattr(chunks, "parse", lambda t, f, **kw: calls.append(t) or real(t, f, **kw))
    edited = text.replace("unit(16) as u101", "unit(17) as u101")
    program, tokens = cache.parse(edited, "/x/long.cdl")
    assert len(calls) == 1 and "unit(17) as u101" in calls[0] and calls[0].count("\n    h = ") <= chunks.SEGMENT_LINES
    whole = parse(edited, "/x/long.cdl")
    assert program == whole and _all_spans(program.items, []) == _all_spans(whole.items, [])
    calls.clear()
    broken = text.replace("unit(16) as u101", "unit(16 as u101")  # a run that does not parse: the caller parses whole
    assert cache.parse(broken, "/x/long.cdl") is None and len(calls) == 1


def test_random_edits_of_a_long_network_parse_whole_or_fall_back(monkeypatch):
    """Brackets, newlines, keywords and operators dropped into a long network or cut out of it:
    parsed in runs of statements, the result is the whole parse (every span) or None (the caller
    parses whole), never another program."""
    import random

    from convdsl.errors import ConvDSLError

    monkeypatch.setattr(chunks, "SPLIT_LINES", 20)
    monkeypatch.setattr(chunks, "SEGMENT_LINES", 3)
    base = _long_network(30)
    snips = ["}", "{", "(", ")", "[", "]", "|", " as x", "\n", "\n    ", "#", '"', "if", "else", "return h", "h = ",
             ",", "-", "**", "\n}\n", "\n    }", "elif 1 {", "\n        | relu", "="]
    rng = random.Random(17)
    cache = PieceCache()
    cache.parse(base, "/x/f.cdl")
    parsed = 0
    for _ in range(120):
        text = base
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(text))
            text = text[:i] + rng.choice(snips) + text[i:] if rng.random() < 0.5 else text[:i] + text[i + rng.randint(1, 6):]
        got = cache.parse(text, "/x/f.cdl")
        if got is None:
            continue
        try:
            whole = parse(text, "/x/f.cdl")
        except ConvDSLError as e:
            raise AssertionError(f"pieces parsed what the whole parse refuses ({e})\n{text}") from None
        assert got[0] == whole and got[0].comments == whole.comments, text
        assert _all_spans(got[0].items, []) == _all_spans(whole.items, []), text
        parsed += 1
    assert parsed > 10  # some edits keep the program valid
