"""Strings in generated code: nothing a user names (files, folders, networks, blocks, instances,
inputs, string attributes, labels) can become code in the generated ``model.py``.

The property: for random strings in every position a user controls, the module either is
refused with a ConvDSLError or parses to exactly the statements, imports, global names and
calls of the same program written with plain names.  Then the attack itself, end to end: a
folder whose name carries a newline and Python, through ``compile``, ``run FILE``,
``run FOLDER`` (also without model.py) and ``import model``.
"""
from __future__ import annotations

import ast
import functools
import keyword
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from convdsl.backends.torch.codegen import generate, text
from convdsl.backends.torch.runtime import HELPERS
from convdsl.errors import ConvDSLError
from convdsl.lang.ast import unescape
from convdsl.ir.ops.conv import PAD_MODES
from convdsl.lang.elaborate import elaborate

from tests.adversarial.harness import assert_no_crash, assert_only_changed, assert_refused, run_cli, tree_state

PROGRAM = """\
tag = {tag}

block {blk}(c)(x) {{
    y = x | conv2d(c, 3, pad=1, pad_mode={pad_mode}) as {conv} | relu
    return y + x
}}

network {net}({inp}: f32[N, 4, 8, 8]) {{
    a = {inp} | {blk}(4) as {inst}
    b = a | upsample(2, mode={mode}) as {up}
    return b | flatten | linear(3) as {fc}
}}
"""
PLAIN = dict(path="plain/net.cdl", tag='"t"', blk="blk", pad_mode="zeros", conv="conv", net="net", inp="x",
             inst="i1", mode="nearest", up='"up{tag}"', fc="fc")
LABELS = ("conv", "inst", "up", "fc")

# the only modules a generated file imports: torch at the top; json, struct and os inside
# load_safetensors() and load(), which read the weights next to the file (written by the template)
ALLOWED_IMPORTS = {"math", "torch", "torch.nn.functional", "torch.nn", "json", "struct", "os"}


def cdl_string(s: str) -> str:
    """``s`` as a CDL string literal (the escapes the lexer knows)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# strings an attacker would try first, and anything at all
TRICKY = ["self", "torch", "nn", "F", "math", "load", "os", "__import__", "eval", "forward", "_modules", "__init__",
          "training", "class", "def", "Scope", "load_safetensors", "0", "1.2", "a.b.c", "x_1", "N",
          'a"); import os; os.system("id")  #', "a\n", "a\nimport os", "\\", '"""', "\x00", "\u202e", "\U0001d42d",
          "\u00e9", "\ud800", "\r\n", "{tag}", "a.0", "0.a"]
anything = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12),
                     st.text(st.characters(codec=None, categories=None), max_size=6))
# a segment of an instance name: what a state_dict key segment holds ("block1-0", "fc:0", "w[0]", "a/b")
SEGMENT = r"[A-Za-z0-9_!#$%&'()*+,/:;<=>?@\[\]^`|~-]"
label_like = st.one_of(st.sampled_from(TRICKY + keyword.kwlist + ["print", "super", "block1-0", "a-b.c:d", "w[0]",
                                                                 "x');import os#", "a|b", "__class__", "'"]),
                       st.from_regex(rf"{SEGMENT}{{1,6}}(\.{SEGMENT}{{1,4}}){{0,2}}", fullmatch=True), anything)
identifier = st.one_of(st.sampled_from(["self", "torch", "F", "nn", "math", "load", "forward", "Scope", "print",
                                         "x", "N", "input", "network", "__import__"] + keyword.kwlist),
                       st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True))
# a file name as Python sees one: any character but '/' and NUL; undecodable bytes arrive as
# surrogate escapes (U+DC80-U+DCFF), the only surrogates a path can hold
path_part = st.text(st.one_of(st.characters(codec=None, exclude_categories=["Cs"], exclude_characters="/\x00"),
                              st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)), min_size=1, max_size=10)


def shape_of(source: str) -> dict:
    """What a generated module does, independent of the names in it: every statement's kind in
    order, the modules it imports, the global names it reads, and the global functions it calls
    (calls on ``self`` or a local variable are statements of their own kind, counted above)."""
    tree = ast.parse(source)

    def stored(scope) -> set:
        return {n.id for n in ast.walk(scope) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)} | \
            {n.arg for n in ast.walk(scope) if isinstance(n, ast.arg)} | \
            {a.asname or a.name.split(".")[0] for n in ast.walk(scope) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in n.names}

    # a name is local where a function (or the module, for module-level code) binds it: a variable
    # `os` in forward() is not the `os` that load() imports for itself
    scope_of: dict[int, set] = {}
    module_names = {t.id for s in tree.body if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Name)}
    for f in ast.walk(tree):
        if isinstance(f, (ast.FunctionDef, ast.Lambda)):
            names = stored(f)
            for n in ast.walk(f):
                scope_of.setdefault(id(n), set()).update(names)
    network_class = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name not in HELPERS]
    imports, globals_read, calls = set(), set(), set()
    for n in ast.walk(tree):
        local = scope_of.get(id(n), set()) | module_names
        if isinstance(n, ast.Import):
            imports |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            imports |= {f"{n.module}.{a.name}" for a in n.names}
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in local | set(network_class):
            globals_read.add(n.id)
        elif isinstance(n, ast.Call):
            parts, f = [], n.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name) and f.id not in local | {"self"} | set(network_class):
                calls.add(".".join([f.id] + parts[::-1]))
    statements = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, ast.stmt)]
    return {"statements": statements, "imports": imports, "globals": globals_read, "calls": calls}


def label_text(slot: str) -> str:
    """The instance name a label slot spells: a bare name, or a CDL string literal."""
    return unescape(slot) if slot.startswith('"') else slot


def twin(slots: dict, tag: str) -> dict:
    """The same program with plain names: every distinct segment of an instance name replaced by
    a plain one of the same form (an attribute-safe name stays one, any other becomes digits), so
    scopes, sharing and the generator's choices (``self.a`` or ``self._modules['0']``) are the
    same; attribute values, which are only ever validated words, stay."""
    from convdsl.backends.torch.codegen import _safe_attr

    texts = {k: label_text(slots[k]) for k in LABELS}
    for k in LABELS:  # a string label interpolates {expr}: "{tag}" is the tag's value (the network's)
        if slots[k].startswith('"'):
            texts[k] = re.sub(r"\{\s*tag\s*\}", lambda m: tag, texts[k])
            assume("{" not in texts[k])  # another expression ("{c}" is 4 in the block): not modelled here
    texts["up"] = "up" + tag
    plain: dict[str, str] = {}
    for k in LABELS:
        for seg in texts[k].split("."):
            plain.setdefault(seg, f"s{len(plain)}" if _safe_attr(seg) else str(len(plain)))
    out = dict(PLAIN, pad_mode=slots["pad_mode"], mode=slots["mode"])
    out.update({k: cdl_string(".".join(plain[s] for s in texts[k].split("."))) for k in LABELS})
    return out


def generated(slots: dict) -> str | None:
    """model.py for the program with these slots, or None when convdsl refuses it cleanly."""
    src = PROGRAM.format(**{k: v for k, v in slots.items() if k != "path"})
    try:
        return generate(elaborate(src, slots["path"])).source
    except ConvDSLError:
        return None


@functools.lru_cache(maxsize=256)
def plain_shape(slots: tuple) -> dict:
    plain = generated(dict(slots))
    assert plain is not None, "the plain twin must compile"
    return shape_of(plain)


def assert_same_shape(source: str, plain: dict | str) -> None:
    shape, want = shape_of(source), plain_shape(tuple(sorted(plain.items()))) if isinstance(plain, dict) else shape_of(plain)
    assert shape["imports"] <= ALLOWED_IMPORTS
    assert shape == want


# each position: a value convdsl accepts (drawn at random), or, for the positions under attack in
# this example, anything at all; file and folder names are always anything
CDL_KEYWORDS = {"import", "as", "block", "network", "def", "return", "for", "in", "repeat", "if", "elif", "else",
                "assert", "and", "or", "not", "true", "false", "none"}
plain_identifier = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(lambda s: s not in CDL_KEYWORDS)
VALID = {"tag": st.from_regex(r"[A-Za-z0-9_]{0,5}", fullmatch=True).map(cdl_string),
         "blk": plain_identifier, "net": plain_identifier, "inp": plain_identifier,
         "pad_mode": st.sampled_from(PAD_MODES).map(cdl_string),
         "mode": st.sampled_from(["nearest", "bilinear", "bicubic"]).map(cdl_string),
         **{k: st.from_regex(rf"{SEGMENT}{{1,6}}(\.{SEGMENT}{{1,4}}){{0,2}}", fullmatch=True) for k in ("conv", "inst", "fc")}}
HOSTILE = {"tag": anything.map(cdl_string), "blk": identifier, "net": identifier, "inp": identifier,
           "pad_mode": anything.map(cdl_string), "mode": anything.map(cdl_string),
           **{k: label_like for k in ("conv", "inst", "fc")}}


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(folder=path_part, file=path_part, attacked=st.sets(st.sampled_from(sorted(VALID)), min_size=1, max_size=3),
       quote=st.sets(st.sampled_from(["conv", "inst", "fc"])), data=st.data())
def test_no_user_string_adds_a_statement_an_import_or_a_call(folder, file, attacked, quote, data):
    slots = dict(PLAIN, path=f"{folder}/{file}.cdl")
    for k in sorted(VALID):
        slots[k] = data.draw(HOSTILE[k] if k in attacked else VALID[k], label=k)
        if k in quote or (k in ("conv", "inst", "fc") and not slots[k].isidentifier()):
            slots[k] = cdl_string(slots[k])
    source = generated(slots)
    assume(source is not None)
    for k in attacked:
        event(f"accepted with {k} attacked")
    assert_same_shape(source, twin(slots, unescape(slots["tag"])))


@given(name=anything, path=anything, symbol=anything)
def test_names_given_through_the_python_api_stay_text(name, path, symbol):
    """A Graph made in Python (an importer, a pass) can hold any network name, source path or
    symbol name: the header comment and the class docstring still hold them as text."""
    plain_program = PROGRAM.format(**{k: v for k, v in PLAIN.items() if k != "path"})
    g = elaborate(plain_program, PLAIN["path"])
    g.name, g.source_file = name, path
    x = g.node(g.inputs[0])
    x.types = [type(x.type)((symbol,) + tuple(x.type.shape[1:]), x.type.dtype)]
    assert_same_shape(generate(g).source, generate(elaborate(plain_program, PLAIN["path"])).source)


@given(st.text(st.characters(codec=None, categories=None)))
def test_text_is_inert_in_a_comment_and_a_docstring_and_reads_back(s):
    t = text(s)
    assert t.isascii() and t.isprintable()
    module = ast.parse(f"# {t}\ndef f():\n    \"\"\"{t}\"\"\"\n")
    assert len(module.body) == 1 and ast.get_docstring(module.body[0], clean=False) == s


def test_identifiers_are_ascii_because_python_folds_the_others():
    """Python reads identifiers after NFKC: a variable spelled with mathematical letters would be
    ``torch`` itself.  Every identifier the generator makes is ASCII."""
    from convdsl.backends.torch.codegen import Namespace, module_ref

    fancy = "\U0001d42d\U0001d428\U0001d42b\U0001d41c\U0001d421"  # bold 'torch'
    name = Namespace().make(fancy)
    assert name.isascii() and name.isidentifier() and name != "torch"
    assert module_ref(fancy) == f"self._modules[{fancy!r}]"


# ---- the attack, end to end ------------------------------------------------------------------
MEM_MB = 6144  # address space: torch alone maps ~3.5 GB of libraries (libtorch_cuda)
NET = """network small(x: f32[N, 3, 8, 8]) {
    return x | conv2d(4, 3) as c1 | relu | flatten | linear(10) as fc
}
"""


def test_a_folder_name_with_python_in_it_is_never_executed(tmp_path):
    """compile, run FILE, run FOLDER (which generates the module again, from the folder's
    network.cdl) and `import model`: a newline and a statement in the file's and the artifact's
    folder names stay text in the header."""
    evil = 'x\nopen("PWNED", "w")\n#'  # run in tmp_path; `import model` in the artifact folder
    src_dir = tmp_path / evil
    src_dir.mkdir()
    (src_dir / "net.cdl").write_text(NET)
    out = tmp_path / f"out{evil}"
    before = tree_state(tmp_path)
    r = run_cli("compile", src_dir / "net.cdl", "-o", out, cwd=tmp_path, mem_mb=MEM_MB)
    assert_no_crash(r)
    assert r.returncode == 0, r.output
    assert_only_changed(before, tree_state(tmp_path), allowed=(out.name,))
    header = (out / "model.py").read_text().splitlines()[0]
    assert header.startswith("# Generated by convdsl") and "\\nopen(" in header
    for args in (["run", src_dir / "net.cdl"], ["run", out]):
        r = run_cli(*args, cwd=tmp_path, mem_mb=MEM_MB)
        assert_no_crash(r)
        assert r.returncode == 0 and "ran small" in r.stdout, r.output
    subprocess.run([sys.executable, "-c", "import model; model.load()"], cwd=out, check=True, capture_output=True,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    (out / "model.py").unlink()  # run FOLDER never reads model.py, and now refuses an incomplete folder
    r = run_cli("run", out, cwd=tmp_path, mem_mb=MEM_MB)
    assert_refused(r, exit_code=2, mentions="model.py")
    assert not (tmp_path / "PWNED").exists() and not (out / "PWNED").exists()


def test_a_label_ending_in_a_newline_is_refused_where_it_is_written(tmp_path):
    """``$`` matches before a final newline; the label check matches the whole label."""
    f = tmp_path / "lab.cdl"
    f.write_text('network n(x: f32[N, 3, 8, 8]) {\n    return x | conv2d(4, 3) as "c1\\n" | relu\n}\n')
    before = tree_state(tmp_path)
    r = run_cli("compile", f, "-o", tmp_path / "out", cwd=tmp_path, mem_mb=MEM_MB)
    assert_refused(r, exit_code=4, location=f"{f}:2:32", mentions="bad instance name")
    assert_only_changed(before, tree_state(tmp_path))


@pytest.mark.parametrize("label", ['"a\\tb"', '"a b"', '"a..b"', '".a"', '"a."', '"x{\\"\\\\n\\"}"'])
def test_labels_outside_the_instance_name_alphabet_are_refused(tmp_path, label):
    f = tmp_path / "lab.cdl"
    f.write_text(f"network n(x: f32[N, 4]) {{\n    return x | linear(4) as {label}\n}}\n")
    with pytest.raises(ConvDSLError, match="bad instance name"):
        elaborate(f.read_text(), str(f))


def test_a_network_folder_compiled_from_a_checked_program_parses_again(tmp_path):
    """The artifact's own network.cdl (printed from the graph) re-elaborates: what the label check
    lets through, the printer can write."""
    f = tmp_path / "ok.cdl"
    f.write_text('network n(x: f32[N, 4]) {\n    return x | linear(4) as "0.a_1" | linear(4) as "b9"\n}\n')
    r = run_cli("compile", f, "-o", tmp_path / "out", cwd=tmp_path, mem_mb=MEM_MB)
    assert r.returncode == 0, r.output
    r = run_cli("check", tmp_path / "out" / "network.cdl", cwd=tmp_path)
    assert r.returncode == 0, r.output
    assert Path(tmp_path / "out" / "model.py").exists()
