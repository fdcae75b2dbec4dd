"""``convdsl lsp`` driven over stdio by a real LSP client (pygls's), on the example files.

Reference values come from elsewhere than the server: shapes and counts from
the ``convdsl stats --json`` command, formatting from ``convdsl fmt``,
positions from the text itself.  Edits only ever go to the editor buffers,
never to the files on disk.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lsprotocol import types as lsp
from pygls.uris import from_fs_path

from convdsl.ir.ops import OPS
from convdsl.ir.stats import human_count
from tests.lsp.session import Session, apply_edits

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RESNET18 = EXAMPLES / "resnet18.cdl"
BLOCKS = EXAMPLES / "blocks" / "resnet.cdl"


@pytest.fixture(scope="module")
def session():
    s = Session(EXAMPLES)
    yield s
    s.close()
    assert not [m for m in s.messages if "Traceback" in m], s.messages


def find(text: str, needle: str, nth: int = 0, offset: int = 0) -> tuple[int, int]:
    """0-based (line, character) of the nth occurrence of ``needle`` (plus ``offset`` characters)."""
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    i += offset
    line = text.count("\n", 0, i)
    return line, i - (text.rfind("\n", 0, i) + 1)


def cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "convdsl", *args], check=True, capture_output=True, text=True,
                          cwd=ROOT).stdout


def uri_of(path: Path) -> str:
    return from_fs_path(str(path.resolve()))


# ---- diagnostics ---------------------------------------------------------------------------------------
def test_planted_error_has_its_range_and_clears_after_the_fix(session):
    text = RESNET18.read_text()
    uri = session.open(RESNET18)
    assert session.diagnostics(uri, session.versions[uri]) == []
    bad = text.replace("[2, 2, 2, 2], classes)", "[2, 2, 2, 2], clases)")
    v = session.change(uri, bad)
    (d,) = session.diagnostics(uri, v)
    line, col = find(bad, "clases")
    assert (d.range.start.line, d.range.start.character) == (line, col)
    assert (d.range.end.line, d.range.end.character) == (line, col + len("clases"))
    assert d.code == "name error" and "unknown name 'clases'" in d.message
    assert "did you mean 'classes'" in d.message  # the hint travels with the message
    v = session.change(uri, text)
    assert session.diagnostics(uri, v) == []


def test_incremental_edits_are_applied(session):
    """A partial change (as editors send them) plants a syntax error; undoing it clears it."""
    uri = session.open(RESNET18)
    text = RESNET18.read_text()
    line, col = find(text, "logits = ")
    v = session.edit(uri, line, col + len("logits "), line, col + len("logits ="), "==")
    (d,) = session.diagnostics(uri, v)
    assert d.code == "syntax error"
    assert (d.range.start.line, d.range.start.character) == (line, col + len("logits "))
    v = session.edit(uri, line, col + len("logits "), line, col + len("logits =="), "=")
    assert session.diagnostics(uri, v) == []


def test_more_than_the_first_error(tmp_path, session):
    """Each network is elaborated on its own and a syntax error is skipped: three errors, three places."""
    text = ("block cb(c) = conv2d(c, 3, pad=1) | relu\n\n"
            "network a(x: f32[1, 3, 16, 16]) {\n    y = x | cb(8) | linear(10, 2, 3)\n    return y\n}\n\n"
            "X = = 2\n\n"
            "network b(x: f32[1, 3, 16, 16]) {\n    return x | cb(8) | rleu\n}\n\n"
            "network c(x: f32[1, 3, 16, 16]) {\n    return x | cb(4)\n}\n")
    path = tmp_path / "many.cdl"
    path.write_text(text)
    uri = session.open(path)
    diags = sorted(session.diagnostics(uri, session.versions[uri]), key=lambda d: d.range.start.line)
    assert [d.code for d in diags] == ["type error", "syntax error", "name error"]
    assert [d.range.start.line for d in diags] == [find(text, "linear(10")[0], find(text, "= = 2")[0],
                                                   find(text, "rleu")[0]]
    assert diags[2].range.start.character == find(text, "rleu")[1]


def test_error_in_an_import_shows_at_the_import_and_in_that_file(tmp_path, session):
    (tmp_path / "lib.cdl").write_text("block cb(c) = conv2d(c 3) | relu\n")
    main = tmp_path / "main.cdl"
    text = 'import "lib.cdl"\n\nnetwork n(x: f32[1, 3, 8, 8]) {\n    return x | relu\n}\n'
    main.write_text(text)
    uri = session.open(main)
    (d,) = session.diagnostics(uri, session.versions[uri])
    assert d.range.start.line == 0 and d.range.end.line == 0  # the import line
    assert d.message.startswith("in lib.cdl:1:24: unexpected '3'")
    lib_uri = uri_of(tmp_path / "lib.cdl")
    (ld,) = session.diagnostics(lib_uri)
    assert (ld.range.start.line, ld.range.start.character) == (0, 23)
    assert d.related_information[0].location.uri == lib_uri
    v = session.change(uri, text.replace('import "lib.cdl"\n', ""))
    assert session.diagnostics(uri, v) == []
    deadline = time.time() + 10
    while session.latest(lib_uri) != [] and time.time() < deadline:
        time.sleep(0.02)
    assert session.latest(lib_uri) == []  # the imported file's diagnostic went away with its cause


def test_shape_error_inside_an_imported_block_shows_at_the_call(tmp_path, session):
    (tmp_path / "lib.cdl").write_text("block head(c)(x) {\n    return x | linear(c)\n}\n")
    main = tmp_path / "main.cdl"
    text = ('import "lib.cdl"\n\nnetwork n(x: f32[1, 3, 8, 8]) {\n    y = x | conv2d(4, 3)\n'
            '    return y | head(10, 5)\n}\n')
    main.write_text(text)
    uri = session.open(main)
    (d,) = session.diagnostics(uri, session.versions[uri])
    assert (d.range.start.line, d.range.start.character) == find(text, "head(10, 5)")
    assert "head takes at most 1 hyper-parameters" in d.message


# ---- inlay hints --------------------------------------------------------------------------------------
def test_inlay_hints_equal_convdsl_stats(session):
    stats = json.loads(cli("stats", "--json", str(RESNET18)))
    n = stats["bind"]["N"]
    uri = session.open(RESNET18)
    session.diagnostics(uri)
    text = RESNET18.read_text()
    hints = {(h.position.line, h.label) for h in session.hints(uri)}
    header = find(text, "network resnet18")[0]
    totals = stats["totals"]
    assert (header, f"{totals['params']:,} params · {human_count(totals['macs'], 'MACs')}") in hints
    (out,) = stats["outputs"]
    shown = f"{out['dtype']}[{', '.join(map(str, out['symbolic_shape']))}]"
    assert [out["dtype"]] + [str(d) for d in out["shape"]] == \
        [out["dtype"]] + [str(n) if d == "N" else str(d) for d in out["symbolic_shape"]]
    assert (find(text, "logits = ")[0], f": {shown}") in hints

    # the blocks file learns its shapes from the open network that uses it
    buri = session.open(BLOCKS)
    session.diagnostics(buri)
    btext = BLOCKS.read_text()
    bhints = {h.position.line: h.label for h in session.hints(buri)}
    layers = {r["name"]: r for r in stats["layers"]}

    def sym(shape):  # stats binds N; the editor keeps it symbolic
        return "f32[" + ", ".join(["N"] + [str(d) for d in shape[1:]]) + "]"

    y_shapes = [sym(layers[f"layer{i}.{j}.bn2"]["shapes"][0]) for i in range(1, 5) for j in range(2)]
    distinct = list(dict.fromkeys(y_shapes))
    y_line = find(btext, "y = x | conv2d(c, 3, stride=stride")[0]
    assert bhints[y_line + 1] == f": {distinct[0]} … {distinct[-1]} ({len(distinct)} shapes)"
    hover = session.hover(buri, y_line, 4).contents.value
    assert [m for m in re.findall(r"- `([^`]+)`", hover)] == distinct
    basic = [r for r in stats["layers"] if re.match(r"layer\d\.\d\.", r["name"])]
    params = sum(r["params"] for r in basic)
    macs = sum(r["macs"] for r in basic)
    assert bhints[find(btext, "block basic")[0]] == \
        f"8 instances: {params:,} params · {human_count(macs, 'MACs')} in all"


# ---- hover --------------------------------------------------------------------------------------------
def test_hover_on_op_block_value_and_bare_word(session):
    uri = session.open(BLOCKS)
    text = BLOCKS.read_text()
    session.open(RESNET18)
    session.diagnostics(uri)
    op = session.hover(uri, *find(text, "conv2d(c, 3, stride=stride")).contents.value
    assert "conv2d(out=none, k=3, stride=1, pad=0" in op and "2-D convolution" in op
    assert "shape: `out = floor(" in op and "here: `f32[N, 64, 56, 56]" in op
    block = session.hover(uri, *find(text, "block basic", offset=6)).contents.value
    assert "block basic(c, stride=1)(x)" in block and "two 3x3 convs" in block
    assert "- `layer1.0` → `f32[N, 64, 56, 56]`: 73,984 params" in block  # 2 convs 3x3x64x64 + 2 BN
    s = session.hover(uri, *find(text, "return relu(y + s)", offset=len("return relu(y + "))).contents.value
    assert s.startswith("```cdl\ns: f32[N, 64, 56, 56]")
    kw = session.hover(uri, *find(text, "stride=stride, pad=1")).contents.value
    assert kw.startswith("`conv2d(stride=…)`")
    code = 'network n(x: f32[1, 3, 8, 8]) {\n    return x | conv2d(4, 3, pad=same, groups=depthwise)\n}\n'
    u2 = session.open(EXAMPLES / "scratch_hover.cdl", code)
    session.diagnostics(u2, session.versions[u2])
    word = session.hover(u2, *find(code, "same")).contents.value
    assert word.startswith("`same`: a value of `conv2d(pad=…)`") and "same/valid" in word
    dw = session.hover(u2, *find(code, "depthwise")).contents.value
    assert "`conv2d(groups=…)`" in dw and "depthwise (= in channels)" in dw


def test_a_symbolic_size_by_name_is_the_networks_symbol(session):
    """N in the body is the size of the inputs' N (issue 14 item 2), not a bare word: hover says so,
    definition goes to the signature, completion offers it; a constant N would win."""
    code = ("network n(x: f32[N, 16, 8, 8]) {\n"
            "    y = x | reshape([4 * N, 4, -1])\n"
            "    return y | reshape([N, 16, 8, 8])\n}\n")
    uri = session.open(EXAMPLES / "scratch_sizes.cdl", code)
    assert session.diagnostics(uri, session.versions[uri]) == []
    hover = session.hover(uri, *find(code, "N, 4, -1")).contents.value
    assert hover.startswith("```cdl\nN\n```") and "symbolic size of network n's inputs" in hover
    loc = session.definition(uri, *find(code, "N, 16, 8, 8])"))
    assert (loc.range.start.line, loc.range.start.character) == find(code, "N, 16, 8, 8]")
    assert "N" in {i.label for i in session.completion(uri, *find(code, "return y"))}
    shadowed = "N = 2\n" + code.replace("reshape([N, 16, 8, 8])", "reshape([N * N // 4, -1])")
    v = session.change(uri, shadowed)
    session.diagnostics(uri, v)
    assert session.hover(uri, *find(shadowed, "N, 4, -1")).contents.value.startswith("```cdl\nN = 2")


# ---- completion -------------------------------------------------------------------------------------------
def test_completion_of_keyword_arguments_and_words(session):
    code = 'import "blocks/resnet.cdl"\nnetwork n(x: f32[1, 3, 32, 32]) {\n    y = x | conv2d(16, 3, \n}\n'
    uri = session.open(EXAMPLES / "scratch_complete.cdl", code.replace("3, \n", "3)\n    return y\n"))
    session.diagnostics(uri, session.versions[uri])
    v = session.change(uri, code)  # half-typed: completion works on the tokens and the last good names
    assert session.diagnostics(uri, v)[0].code == "syntax error"
    line, col = find(code, "conv2d(16, 3, ", offset=len("conv2d(16, 3, "))
    items = {i.label: i for i in session.completion(uri, line, col)}
    assert items["stride="].detail == "stride=1" and items["pad="].detail == "pad=0"
    assert items["groups="].detail == "groups=1"
    assert "out=" in items and "k=" in items  # given positionally, still offered (the server does not guess)
    assert items["stride="].sort_text < items["relu"].sort_text
    assert items["conv2d"].detail == OPS["conv2d"].doc  # the op table's doc
    assert "conv2d(out=none, k=3" in items["conv2d"].documentation.value
    assert "basic" in items and "bottleneck" in items  # blocks of the imported file
    assert items["x"].kind == items["y"].kind == lsp.CompletionItemKind.Variable
    v = session.change(uri, code.replace("conv2d(16, 3, ", "conv2d(16, 3, stride=2, pad="))
    session.diagnostics(uri, v)
    line, col = find(code.replace("conv2d(16, 3, ", "conv2d(16, 3, stride=2, pad="), "pad=", offset=4)
    items = session.completion(uri, line, col)
    assert [i.label for i in items[:2]] == ["same", "valid"]
    v = session.change(uri, code.replace("conv2d(16, 3, ", "basic(16, "))
    session.diagnostics(uri, v)
    line, col = find(code.replace("conv2d(16, 3, ", "basic(16, "), "basic(16, ", offset=len("basic(16, "))
    labels = [i.label for i in session.completion(uri, line, col)]
    assert labels[:2] == ["c=", "stride="]  # the block's own parameters


# ---- navigation ----------------------------------------------------------------------------------------------
def test_definition_across_an_import(session):
    uri = session.open(RESNET18)
    text = RESNET18.read_text()
    loc = session.definition(uri, *find(text, "basic,"))
    btext = BLOCKS.read_text()
    assert loc.uri == uri_of(BLOCKS)
    assert (loc.range.start.line, loc.range.start.character) == find(btext, "basic(c, stride=1)")
    imp = session.definition(uri, *find(text, "blocks/resnet.cdl"))
    assert imp.uri == uri_of(BLOCKS)


def test_references_across_files(session):
    buri = session.open(BLOCKS)
    btext = BLOCKS.read_text()
    refs = session.references(buri, *find(btext, "block bottleneck", offset=6))
    where = {(Path(r.uri).name, r.range.start.line) for r in refs}
    assert ("resnet.cdl", find(btext, "block bottleneck")[0]) in where  # the definition
    assert ("resnet50.cdl", find((EXAMPLES / "resnet50.cdl").read_text(), "bottleneck,")[0]) in where
    assert not any(n == "resnet18.cdl" for n, _ in where)
    # a value: only inside its own block
    local = session.references(buri, *find(btext, "y = x | conv2d(c, 3, stride"))
    assert {r.range.start.line for r in local} == {find(btext, "y = x | conv2d(c, 3, stride")[0],
                                                   find(btext, "return relu(y + s)")[0]}


def test_document_symbols(session):
    uri = session.open(BLOCKS)
    symbols = session.symbols(uri)
    assert [(s.name, s.kind) for s in symbols] == [
        ("downsample", lsp.SymbolKind.Class), ("basic", lsp.SymbolKind.Class), ("bottleneck", lsp.SymbolKind.Class),
        ("stage", lsp.SymbolKind.Class), ("stem", lsp.SymbolKind.Function), ("head", lsp.SymbolKind.Function),
        ("resnet", lsp.SymbolKind.Function)]
    basic = symbols[1]
    assert [c.name for c in basic.children] == ["y", "s"]
    ruri = session.open(EXAMPLES / "unet.cdl")
    assert any(s.kind == lsp.SymbolKind.Module and s.name == "unet" for s in session.symbols(ruri))


def test_formatting_equals_convdsl_fmt(tmp_path, session):
    messy = ("block cb( c,k=3 ) = conv2d(c,k,pad=same)|relu\n"
             "network n(x: f32[1,3,8,8]) {\n  y=x|cb(4)   # four\n  return y\n}\n")
    path = tmp_path / "messy.cdl"
    path.write_text(messy)
    uri = session.open(path)
    edits = session.formatting(uri)
    assert edits
    assert apply_edits(messy, edits) == cli("fmt", str(path))
    uri2 = session.open(RESNET18)
    assert not session.formatting(uri2)  # the examples are formatted already: no edit


def test_rename_a_block_and_a_value_within_the_file(session):
    text = BLOCKS.read_text()
    uri = session.open(BLOCKS)
    session.diagnostics(uri)
    line, col = find(text, "block basic", offset=6)
    rng = session.prepare_rename(uri, line, col)
    assert (rng.start.line, rng.start.character, rng.end.character) == (line, col, col + len("basic"))
    edit = session.rename(uri, line, col, "plain")
    renamed = apply_edits(text, edit.changes[uri])
    assert re.findall(r"\bplain\b", renamed) == ["plain"] and "basic" not in renamed.replace("basic(c", "")
    line, col = find(text, "s = downsample(x, out")
    edit = session.rename(uri, line, col, "shortcut")
    renamed = apply_edits(text, edit.changes[uri])
    assert "shortcut = downsample(x, out" in renamed and "return relu(y + shortcut)" in renamed
    assert "return relu(y + s)" in renamed  # the other block's 's' is another value
    # the renamed file still defines the same network: same output and parameter count
    code = renamed + '\nnetwork n(x: f32[1, 3, 64, 64]) {\n    return x | resnet(bottleneck, [1, 1, 1, 1], 10)\n}\n'
    orig = text + '\nnetwork n(x: f32[1, 3, 64, 64]) {\n    return x | resnet(bottleneck, [1, 1, 1, 1], 10)\n}\n'
    from convdsl.lang.elaborate import elaborate

    a, b = elaborate(code, str(BLOCKS)), elaborate(orig, str(BLOCKS))
    assert a.output_types() == b.output_types() and a.params.count() == b.params.count()
    assert session.prepare_rename(uri, *find(text, "conv2d")) is None  # an op is not renamed


def test_networks_are_elaborated_again_when_what_they_use_changes(tmp_path, session):
    """Unchanged networks are reused between edits; a change to a block one uses, or a new definition
    of a name it looked up, elaborates it again."""
    text = ("block a(c) = conv2d(c, 3, pad=1)\nblock b(c) = conv2d(c, 1)\n\n"
            "network one(x: f32[1, 3, 8, 8]) {\n    return x | a(4)\n}\n\n"
            "network two(x: f32[1, 3, 8, 8]) {\n    return x | b(4) | c\n}\n")
    uri = session.open(tmp_path / "reuse.cdl", text)
    (d,) = session.diagnostics(uri, session.versions[uri])
    assert "unknown name 'c'" in d.message

    def header_hints():  # network headers are lines 3 and 7
        return {h.position.line: h.label for h in session.hints(uri) if h.position.line in (3, 7)}

    one = "112 params · 6.91 KMACs"  # conv 3x3, 3 -> 4 channels on 8x8: 4*3*9 + 4 params, 4*3*9*64 MACs
    assert header_hints() == {3: one}  # 'two' fails: no totals
    v = session.change(uri, text + "\nblock c() = relu\n")  # 'two' unchanged, but the name it missed exists now
    assert session.diagnostics(uri, v) == []
    assert header_hints() == {3: one, 7: "16 params · 768 MACs"}  # 4*3 + 4 params, 4*3*64 MACs
    v = session.change(uri, text.replace("conv2d(c, 1)", "conv2d(c, 1, bias=false)") + "\nblock c() = relu\n")
    assert session.diagnostics(uri, v) == []
    assert header_hints() == {3: one, 7: "12 params · 768 MACs"}  # the block 'two' uses changed
