"""Fuzzing the front end: whatever text comes in, ``parse`` and ``elaborate``
either succeed or raise a ``ConvDSLError`` subclass with a location that
renders.  Any other exception is a compiler bug.

Sources of input: (a) random text over CDL's alphabet and keywords;
(b) valid seed programs with random token- and line-level edits (delete,
duplicate, swap, absurd numbers, names swapped for other names or keywords),
which get past the parser and exercise the elaborator and the op table;
(c) the programs in examples/ with the same edits.

Elaboration must not allocate parameters (they are lazy), so absurd sizes
cost nothing but a ``ResourceError``.  The number of examples follows the
hypothesis profile (``HYPOTHESIS_PROFILE=ci|thorough``, see tests/conftest.py).
The bugs found while writing this file (by the fuzzer or by probing the edge
cases it hinted at) are pinned at the end as explicit regression inputs.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from convdsl.errors import ConvDSLError, ResourceError, UsageError
from convdsl.ir.ops import OPS
from convdsl.lang.elaborate import Options, elaborate

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
N_EXAMPLES = {"ci": 1500, "thorough": 30000}.get(PROFILE, 1500)
FUZZ = settings(max_examples=N_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

LIB = """
# imported by the seed programs as "lib.cdl"
WIDTH = 8
block conv_bn(c, k=3, stride=1) = conv2d(c, k, stride=stride, pad=k // 2, bias=false) | batchnorm | relu
def half(v) = v // 2
"""

SEEDS = [
    # 0: residual network, defaults that use earlier params, label interpolation, def, constants
    """
W = 16
def double(v) = v * 2
block conv_bn(c, k=3, stride=1, p=k // 2) = conv2d(c, k, stride=stride, pad=p, bias=false) | batchnorm | relu

block basic(c, stride=1)(x) {
    y = x | conv_bn(c, stride=stride) as a
          | conv_bn(c) as b
    s = x | conv_bn(c, k=1, stride=stride) as down if stride != 1 or channels(x) != c else x
    return relu(y + s)
}

network net(image: f32[N, 3, 32, 32], classes=10) {
    h = image | conv_bn(W) as stem
    for i in range(2) {
        for j in range(2) {
            h = h | basic(double(W) if i > 0 else W, stride=2 if i > 0 and j == 0 else 1) as "layer{i+1}.{j}"
        }
    }
    return h | global_avgpool(keepdim=false) | linear(classes) as fc
}
""",
    # 1: recursive U-Net-like block with a depth parameter
    """
block unet(c, depth)(x) {
    if depth == 0 {
        return x | conv2d(c, 3, pad=1) | relu
    }
    d = x | conv2d(c, 3, stride=2, pad=1) as down | relu
    inner = d | unet(c, depth - 1) as inner
    u = inner | upsample(scale=2.0) as up
    return u + x
}

network net(x: f32[N, 8, 32, 32], depth=3) {
    return x | unet(8, depth) as body
}
""",
    # 2: multi-output and multi-input blocks, repeat, if/elif/else, assert, pipes across lines
    """
block split2(c)(x) {
    a = x | conv2d(c, 1)
    b = x | conv2d(c, 3, pad=same)
    return a, b
}

block merge()(a, b) {
    return relu(a + b)
}

network net(x: f32[N, 16, 16, 16], mode=1) {
    assert channels(x) % 4 == 0, "channels must be a multiple of 4"
    a, b = x | split2(16)
    y = merge(a, b)
    repeat 2 {
        y = y
          | conv2d(16, 3, pad=1, groups=4)
          | batchnorm
          | gelu
    }
    if mode == 0 {
        z = y | relu
    } elif mode == 1 {
        z = y | silu
    } else {
        z = y | tanh
    }
    return z, y
}
""",
    # 3: a search space: choices in defaults, arguments and between layers
    """
block mb(c, k=choice(3, 5, name="k"), act=choice(relu, gelu, name="act"))(x) {
    y = x | conv2d(c * 2, 1) | act | conv2d(c * 2, k, pad=same, groups=depthwise) | act | conv2d(c, 1)
    return x + y if channels(x) == c else y
}

network net(x: f32[N, 3, 32, 32], w=choice(16, 32, name="width")) {
    h = x | conv2d(w, choice(1, 3), pad=same) | relu
    repeat choice(1, 2, name="depth") {
        h = h | mb(w)
    }
    return h | global_avgpool(keepdim=false) | linear(10)
}
""",
    # 4: 1-d signal model: pooling, dilation, symbolic length, builtins, lists, indexing
    """
SIZES = [8, 16]
network seq(x: f32[N, 4, 64], drop=0.1) {
    h = x | conv1d(SIZES[0], 5, pad=same) | relu | maxpool1d(2)
    h = h | avgpool1d(2) | conv1d(SIZES[-1], 3, dilation=2, pad=2) | sigmoid
    n = dim(h, 2) * len(SIZES) - min(3, max(1, 2)) ** 2 + abs(-1)
    assert n > 0 and not (rank(h) != 3)
    g = global_avgpool(h, keepdim=false)
    return g | linear(n) | dropout(p=drop) | linear(4) | softmax(dim=-1)
}
""",
    # 5: imports (plain and `as`), tuple unpacking in for, arithmetic with tensors
    """
import "lib.cdl" as m
import "lib.cdl"

STAGES = [8, 16, 32]
network net(x: f32[N, 3, 64, 64]) {
    h = x
    for i, c in enumerate(STAGES) {
        h = h | m.conv_bn(c) as "stage{i}" | maxpool2d(2)
    }
    y = (h | conv2d(half(WIDTH), 1)) as head
    z = y * 2.0 + 1 - y
    return -z, sigmoid(z)
}
""",
    # 6: the forms of issue 14: slices, item assignment, tuple assignment, a def applied to a
    # tensor, labels on def calls, quoted labels with '-', 'as' on a continuation line
    """
DEPTHS = [1, 2, 3, 4]
def bn2(m=0.1) = batchnorm(momentum=m)
def conv_bn(c, k=1, stride=1) = conv2d(c, k, stride=stride, pad=k // 2, bias=false) as "0" | batchnorm as "1"
network net(x: f32[N, 3, 32, 32]) {
    d = DEPTHS[1:-1]
    d[0] = 4
    a, b = x | conv2d(8, 1), x | conv2d(8, 3, pad=1)
    a, b = b, a
    for j, k in enumerate(d[::-1]) {
        a = a | conv_bn(8, k % 2 * 2 + 1) as "block1-{j}"
            | relu
    }
    y = bn2(a + b, 0.3) as "norm-1"
    z = y | conv2d(16, 3, stride=2, pad=1)
          as "down:0"
    parts = z | split(chunks=4)
    return concat(parts[1:3], dim=1) | reshape([-1, 2, 16, 16]) | reshape([-1, 8, 16, 16])
}
""",
]

RESERVED = {"block", "network", "def", "import", "as", "for", "in", "repeat", "if", "elif", "else", "assert",
            "return", "and", "or", "not", "true", "false", "none"}
NAMES = sorted({"x", "y", "h", "c", "k", "N", "relu", "conv2d", "add", "linear", "choice", "range", "channels",
                "block", "network", "def", "import", "for", "in", "repeat", "if", "elif", "else", "assert",
                "return", "as", "true", "false", "none", "and", "or", "not", "m", "self", "depthwise", "same",
                "f32", "i8", "len", "enumerate", "nonexistent"})
# Absurd values only: a mid-sized loop count (4096 stages) is a legal network that merely takes seconds.
NUMBERS = ["0", "-1", "1", "2", "3", "-0.0", "1.5", "0.0", "2**31", "99999999999", "10**30", "2**62", "1e400"]

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\d+\.\d*(?:[eE][-+]?\d+)?|\d+|[A-Za-z_]\w*|\*\*|//|==|!=|<=|>='
                    r'|\n|[ \t]+|.')


def tokens(src: str) -> list[str]:
    return _TOKEN.findall(src)


def _klass(tok: str) -> str:
    if re.fullmatch(r"[A-Za-z_]\w*", tok):
        return "name"
    if re.fullmatch(r"[\d.]+", tok):
        return "number"
    return "string" if tok.startswith('"') else "other"


def apply_edits(src: str, edits: list[tuple[str, int, int, int]]) -> str:
    """Token- and line-level edits on ``src``; positions are taken modulo the
    candidates.  Most edit kinds keep the program parseable so that the
    elaborator, not only the parser, sees the damage."""
    toks = tokens(src)
    for kind, i, j, pick in edits:
        if kind in ("delete_line", "duplicate_line", "swap_lines"):
            lines = "".join(toks).split("\n")
            a, b = i % len(lines), j % len(lines)
            if kind == "delete_line":
                del lines[a]
            elif kind == "duplicate_line":
                lines.insert(a, lines[a])
            else:
                lines[a], lines[b] = lines[b], lines[a]
            toks = tokens("\n".join(lines))
            continue
        solid = [n for n, t in enumerate(toks) if t.strip(" \t")]
        if not solid:
            break
        a = solid[i % len(solid)]
        if kind == "delete":
            toks[a] = ""
        elif kind == "duplicate":
            toks[a] = toks[a] + " " + toks[a]
        elif kind == "swap_any":
            b = solid[j % len(solid)]
            toks[a], toks[b] = toks[b], toks[a]
        elif kind == "swap":  # two tokens of the same class: names, numbers, strings or symbols
            same = [n for n in solid if _klass(toks[n]) == _klass(toks[a])]
            b = same[j % len(same)]
            toks[a], toks[b] = toks[b], toks[a]
        elif kind == "number":
            nums = [n for n in solid if re.fullmatch(r"\d+(\.\d*)?", toks[n])]
            if nums:
                toks[nums[i % len(nums)]] = NUMBERS[pick % len(NUMBERS)]
        elif kind in ("name", "rename"):  # rename: never to a keyword
            names = [n for n in solid if re.fullmatch(r"[A-Za-z_]\w*", toks[n])]
            if names:
                pool = NAMES + sorted({toks[n] for n in names})
                if kind == "rename":
                    pool = [w for w in pool if w not in RESERVED]
                toks[names[i % len(names)]] = pool[pick % len(pool)]
        elif kind == "insert":
            pool = sorted(set(toks) | set(NAMES) | {"(", ")", "[", "]", "{", "}", "|", ",", "=", "\n"})
            toks[a] = pool[pick % len(pool)] + " " + toks[a]
    return "".join(toks)


def check(text: str, file: str, options: Options | None = None) -> None:
    """The contract: success, or a ConvDSLError that knows where and renders.
    (``elaborate`` parses first, so this covers ``parse`` as well.)"""
    try:
        g = elaborate(text, file, options=options)
    except ConvDSLError as err:
        _check_error(err, text, file)
    else:
        assert not any(g.params.is_materialized(n) for n in g.params.names()), "elaboration allocated parameters"


def _check_error(err: ConvDSLError, text: str, file: str) -> None:
    rendered = err.render()
    assert err.kind in rendered
    if isinstance(err, UsageError):
        return  # file-level: no network in the file
    assert err.span is not None, f"{type(err).__name__} without a location: {err.message}"
    if err.span.file == file:
        assert 1 <= err.span.line <= text.count("\n") + 1, rendered
        assert err.span.column >= 1, rendered
        assert "^" in rendered, rendered


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> str:
    """The file name fuzz cases are elaborated as: a scratch folder holding
    lib.cdl, so imports resolve there and no fuzz case reads project files."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "lib.cdl").write_text(LIB)
    return str(d / "fuzz.cdl")


@pytest.mark.parametrize("i", range(len(SEEDS)))
def test_seeds_are_valid(src, i):
    g = elaborate(SEEDS[i], src, options=Options(first_choice=True))
    assert g.outputs


# ---- (a) random text ----------------------------------------------------------------
CHARS = "abcxyzNfk_019 .,:=+-*/%@<>!|()[]{}\"'#\n\t"
KEYWORDS = ["block", "network", "def", "import", "as", "for", "in", "repeat", "if", "elif", "else", "assert",
            "return", "and", "or", "not", "true", "false", "none", "choice", "f32", "x", "N", "relu", "conv2d",
            "linear", "add", "batchnorm", "range", "**", "//", "==", "\n", "(", ")", "{", "}", "[", "]", "|", ",",
            "=", ":", '"lib.cdl"', '"a{i}"', "0", "3", "-1", "99999999999"]


@FUZZ
@given(st.text(alphabet=CHARS, max_size=120))
@example('network n(x: f32[1]) { return x as "{y as \\"{\\"}" }')  # a label inside a label: wrapped VisitError
@example("x = 1" + "0" * 5000)  # integer literal beyond Python's str->int limit
def test_random_text(src, text):
    check(text, src)


@FUZZ
@given(st.lists(st.sampled_from(KEYWORDS) | st.text(alphabet=CHARS, max_size=4), max_size=40))
def test_random_token_soup(src, parts):
    check(" ".join(parts), src)


# ---- (b) valid programs with token edits -----------------------------------------------
EDIT = st.tuples(st.sampled_from(["delete", "duplicate", "swap_any", "swap", "number", "name", "insert", "delete_line",
                                  "duplicate_line", "swap_lines"]),
                 st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 100))


@FUZZ
@given(st.integers(0, len(SEEDS) - 1), st.lists(EDIT, min_size=1, max_size=3), st.booleans())
def test_mutated_seeds(src, i, edits, first):
    check(apply_edits(SEEDS[i], edits), src, Options(first_choice=first))


SEMANTIC_EDIT = st.tuples(st.sampled_from(["number", "rename", "swap", "delete_line", "duplicate_line"]),
                          st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 100))


@settings(FUZZ, max_examples=N_EXAMPLES // 2)
@given(st.integers(0, len(SEEDS) - 1), st.lists(SEMANTIC_EDIT, min_size=1, max_size=3), st.booleans())
def test_semantic_edits(src, i, edits, first):
    """Edits that mostly keep the program parseable, so the elaborator sees them."""
    check(apply_edits(SEEDS[i], edits), src, Options(first_choice=first))


@settings(FUZZ, max_examples=N_EXAMPLES // 2)
@given(st.integers(0, len(SEEDS) - 1), st.lists(st.tuples(st.just("number"), st.integers(0, 10_000),
                                                          st.integers(0, 0), st.integers(0, 100)),
                                                min_size=1, max_size=3))
def test_absurd_numbers(src, i, edits):
    check(apply_edits(SEEDS[i], edits), src, Options(first_choice=True))


# ---- (c) the example programs with token edits: every op of the table, real imports ------------
EXAMPLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "examples").rglob("*.cdl")
                  if re.search(r"^network ", p.read_text(), re.M))


@settings(FUZZ, max_examples=max(20, N_EXAMPLES // 15))  # big programs: ~0.2 s each
@given(st.data(), st.lists(EDIT, min_size=1, max_size=3))
def test_mutated_examples(data, edits):
    if not EXAMPLES:
        pytest.skip("no examples/")
    path = data.draw(st.sampled_from(EXAMPLES), label="example")
    check(apply_edits(path.read_text(), edits), str(path), Options(first_choice=True))


# ---- regressions: minimal inputs of bugs the fuzzer (and review) found ------------------------
NET = "network n(x: f32[N, 3, 8, 8]) {{\n{}\n}}\n"
REGRESSIONS = [
    NET.format("y = (1 if true else 2) as a\nreturn x"),  # TypeError: labeled if-expression of a number
    NET.format("return (x | relu if true else x) as a"),  # TypeError: labeled if-expression of a pipe
    NET.format("y = min()\nreturn x"),  # ValueError from min()
    NET.format("y = range(1, 2, 0)\nreturn x"),  # ValueError: range step 0
    NET.format("y = range(10**20)\nreturn x"),  # OverflowError in len(range)
    NET.format("y = make_divisible(5, 0)\nreturn x"),  # ZeroDivisionError
    NET.format("y = int(1e400)\nreturn x"),  # OverflowError: int(inf)
    NET.format("y = 10**400 / 1\nreturn x"),  # OverflowError: int / int too large for a float
    NET.format("y = (-8) ** 0.5\nreturn x | conv2d(y)"),  # complex numbers
    "network n(x: f32[1, 3], x: f32[1, 3]) { return x }",  # ValueError: duplicate node id
    'import "/dev/zero"\nnetwork n(x: f32[1, 3]) { return x }',  # never-ending read
    "x = 2**3\n",  # '**' was lexed as two '*'
    "network n(x: f32[1]) {\n return x - 1\n}\n",  # binary '-' was lexed as unary
    'network n(x: f32[1, 3]) { return x | linear(3) as "a.b" | linear(3) as a }',  # op "a" over op "a.b": the
    # torch backend could not load its own state_dict
]
# ... and those that must be refused as a ResourceError, quickly
TOO_COSTLY = [
    NET.format("y = 2**4096 * 2**4096 * 2**4096\nassert y == 1\nreturn x"),  # unbounded integers (str() fails)
    NET.format('s = "ab"\nrepeat 60 {\n s = s + s\n}\nreturn x'),  # string doubling: memory
    NET.format("repeat 999999 {\nrepeat 999999 {\n}\n}\nreturn x"),  # nested loops: time
    "def f(n) = 1 if n == 0 else f(n - 1) + f(n - 1)\nnetwork n(x: f32[1, 3]) { y = f(40)\nreturn x }",  # 2**40 calls
    "def g(a, b=g(1)) = 1\nX = g(1)\nnetwork n(x: f32[1, 3]) { return x }",  # RecursionError in a constant
]


@pytest.mark.parametrize("text", REGRESSIONS + TOO_COSTLY)
def test_regressions(src, text):
    check(text, src)


@pytest.mark.parametrize("text", TOO_COSTLY)
def test_costly_programs_are_resource_errors(text):
    with pytest.raises(ResourceError):
        elaborate(text)


def test_binary_import_is_refused(tmp_path):
    (tmp_path / "bin.cdl").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConvDSLError, match="UTF-8"):
        elaborate('import "bin.cdl"\nnetwork n(x: f32[1]) { return x }', str(tmp_path / "main.cdl"))


def test_op_table_is_covered():
    """The names the mutator swaps in include real ops."""
    assert {"relu", "conv2d", "add", "linear"} <= set(OPS)
