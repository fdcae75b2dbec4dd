"""The canonical formatter: parse(fmt(t)) == parse(t), fmt is idempotent, and
every comment survives, in order."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convdsl.lang import ast
from convdsl.lang.format import MAX_WIDTH, format_expr, format_program, format_source
from convdsl.lang.parser import parse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/**/*.cdl"))


def check(text: str, width: int = MAX_WIDTH) -> str:
    """The formatter's three properties on one source; returns the output."""
    program = parse(text)
    out = format_program(program, width)
    again = parse(out)
    assert again == program
    assert [c[2] for c in again.comments] == [c[2] for c in program.comments]
    assert format_program(again, width) == out
    assert format_source(text, width=width) == out
    return out


# ---- canonical layout -----------------------------------------------------------
CANONICAL = '''\
# A residual network, written the way `convdsl fmt` prints it.

import "lib/common.cdl"
import "lib/heads.cdl" as heads  # classifier heads

WIDTH = choice(32, 64, name="width")
DEPTHS = [2, 2, 2, 2]

def half(c) = c // 2

block conv_bn(c, k=3, stride=1, act=relu) =
    conv2d(c, k, stride=stride, pad=same, bias=false)
    | batchnorm
    | act

block basic(c, stride=1)(x) {  # two 3x3 convolutions
    # the main path
    y = x | conv_bn(c, stride=stride) | conv_bn(c, act=identity) as main

    s = x | conv_bn(c, k=1, stride=stride, act=identity) if stride != 1 or channels(x) != c else x
    assert c > 0 and c % 2 == 0, "channels must be even, got \\"c\\""
    return relu(y + s)
}

block split2(c)(x, y) {
    a, b = split(x, 2)
    return a + y, (b,)
}

block empty()() {
}

network resnet(image: f32[N, 3, 224, 224], classes=1000, wide=false, drop=none) {
    x = image
        | conv_bn(WIDTH, k=7, stride=2) as stem  # 112 x 112
        | maxpool(3, stride=2, pad=1)  # 56 x 56
    for i, depth in enumerate(DEPTHS) {
        c = WIDTH * (i + 1) * 2 if wide else WIDTH * (i + 1)
        repeat depth {
            x = x | basic(c, stride=choice(1, 2)) as "layer{i + 1}.{j}"
            # end of the repeat
        }
    }
    if drop == none {
        x = x | gap
    } elif drop > 0.5 {  # heavy dropout
        x = x | gap | dropout(drop)
    } else {
        # light dropout
        x = x | gap | dropout(drop / 2)
    }
    return x | flatten | linear(classes) as fc
}
'''


def test_canonical_text_is_a_fixed_point() -> None:
    assert format_source(CANONICAL) == CANONICAL


def test_messy_source_is_normalised() -> None:
    messy = (
        'import   "a.cdl"as  a\n'
        "K=3\n"
        "block f( c,k = 3 )=conv2d(c,k,stride = 2)|relu\n"
        "network n(image:f32[N,3,8,8],flag=true){\n"
        "  x=image|f(8)\n"
        "\n"
        "\n"
        "\n"
        "  y,z=( x , )\n"
        '  assert flag!=false,"ok"\n'
        "  return x\n"
        "}\n"
    )
    assert check(messy) == (
        'import "a.cdl" as a\n'
        "\n"
        "K = 3\n"
        "\n"
        "block f(c, k=3) = conv2d(c, k, stride=2) | relu\n"
        "\n"
        "network n(image: f32[N, 3, 8, 8], flag=true) {\n"
        "    x = image | f(8)\n"
        "\n"
        "    y, z = (x,)\n"
        '    assert flag != false, "ok"\n'
        "    return x\n"
        "}\n"
    )


def test_blank_lines_at_body_edges_are_dropped() -> None:
    src = "block g(c)(x) {\n\n    y = x\n\n}\n"
    assert check(src) == "block g(c)(x) {\n    y = x\n}\n"


def test_imports_and_constants_keep_their_grouping() -> None:
    src = 'import "a"\nimport "b"\n\nimport "c"\nA = 1\nB = 2\n'
    assert check(src) == 'import "a"\nimport "b"\n\nimport "c"\n\nA = 1\nB = 2\n'


def test_every_statement_kind() -> None:
    src = (
        "def area(h, w) = h * w\n"
        "block g(c)(x, y) {\n"
        "    for i in range(3) {\n"
        "    }\n"
        "    repeat c {\n"
        "        x = x | relu\n"
        "    }\n"
        "    if c { x = x } elif not c { x = y } else { x = x }\n"
        "    assert c\n"
        "    return x, y\n"
        "}\n"
    )
    out = check(src)
    assert "    for i in range(3) {\n    }\n" in out
    assert "    } elif not c {\n        x = y\n    } else {\n        x = x\n    }\n" in out
    assert "    assert c\n" in out


def test_strings_and_labels() -> None:
    src = 'x = f("tab\\there", "quote\\"s", "back\\\\slash", "line\\nbreak") as "block{i*2}.\\"q\\""\n'
    out = check(src)
    assert out == 'x = f("tab\\there", "quote\\"s", "back\\\\slash", "line\\nbreak") as "block{i * 2}.\\"q\\""\n'
    # a plain label stays bare; one written quoted stays quoted (Label.quoted is part of the AST)
    assert check('x = a as conv1 | b as "conv2"\n') == 'x = a as conv1 | b as "conv2"\n'


def test_numbers() -> None:
    assert check("x = [0, 1.5, .5, 1e-05, 2.5E3, -3, -0.25, 1e999, -1e999]\n") == (
        "x = [0, 1.5, 0.5, 1e-5, 2500.0, -3, -0.25, 1e999, -1e999]\n"
    )
    assert check("x = (3).real + (-2).imag\n") == "x = (3).real + (-2).imag\n"


# ---- parentheses ----------------------------------------------------------------
PRECEDENCE = [
    ("(a + b) * c", "(a + b) * c"),
    ("-(a + b)", "-(a + b)"),
    ("not (a and b)", "not (a and b)"),
    ("(a if b else c) + 1", "(a if b else c) + 1"),
    ("x | (f | g)", "x | (f | g)"),
    ("(a | b) | c", "(a | b) | c"),
    ("(((a)))", "a"),
    ("a + (b * c)", "a + b * c"),
    ("(a + b) + c", "(a + b) + c"),
    ("a * (b // c)", "a * (b // c)"),
    ("(a or b) and c", "(a or b) and c"),
    ("a or (b and c)", "a or b and c"),
    ("not not a", "not not a"),
    ("(not a) == b", "(not a) == b"),
    ("(a < b) < c", "(a < b) < c"),
    ("a < b < c", "a < b < c"),
    ("a if b else (c if d else e)", "a if b else c if d else e"),
    ("(a if b else c) if d else e", "(a if b else c) if d else e"),
    ("a if (b if c else d) else e", "a if (b if c else d) else e"),
    ("x | conv(3) as c1 | relu", "x | conv(3) as c1 | relu"),
    ("(x | y) as c1", "(x | y) as c1"),
    ("(x as a) as b", "(x as a) as b"),
    ("a + (b as c)", "a + (b as c)"),
    ("(a + b) as c", "a + b as c"),
    ("(a == b) | c", "(a == b) | c"),
    ("--a", "--a"),
    ("-a * b", "-a * b"),
    ("-(a * b)", "-(a * b)"),
    ("(a + b)(c)[0].d", "(a + b)(c)[0].d"),
    ("(f)(x)", "f(x)"),
    ("[(a, b), (c,)]", "[(a, b), (c,)]"),
    ("a + -3", "a + -3"),
    ("choice(3, 5, 7)", "choice(3, 5, 7)"),
    ('choice(a, b | c, name="k")', 'choice(a, b | c, name="k")'),
    ("a - (b - c)", "a - (b - c)"),
    ("(a - b) - c", "(a - b) - c"),
    ("a - b - c", "a - b - c"),
    ("a - -b", "a - -b"),
    ("a - -3", "a - -3"),
    ("a-1", "a - 1"),
    ("a ** b ** c", "a ** b ** c"),
    ("(a ** b) ** c", "(a ** b) ** c"),
    ("-a ** b", "-a ** b"),
    ("(-a) ** b", "(-a) ** b"),
    ("(-2) ** 2", "(-2) ** 2"),
    ("a ** -b", "a ** -b"),
    ("a.b ** c(d)", "a.b ** c(d)"),
]


@pytest.mark.parametrize("src, want", PRECEDENCE, ids=[src for src, _ in PRECEDENCE])
def test_minimal_parentheses(src: str, want: str) -> None:
    assert check(f"x = {src}\n") == f"x = {want}\n"


def n(name: str) -> ast.Name:
    return ast.Name(name)


@pytest.mark.parametrize("expr, want", [
    (ast.Arith(n("a"), [("-", ast.Arith(n("b"), [("-", n("c"))]))]), "a - (b - c)"),
    (ast.Arith(ast.Arith(n("a"), [("-", n("b"))]), [("-", n("c"))]), "(a - b) - c"),
    (ast.Neg(ast.Arith(n("a"), [("+", n("b"))])), "-(a + b)"),
    (ast.Pow(ast.Neg(n("a")), ast.Pow(n("b"), ast.Neg(n("c")))), "(-a) ** b ** -c"),
    (ast.Pow(ast.Num(-2), ast.Num(-1)), "(-2) ** -1"),
    (ast.Attribute(ast.Num(3), "real"), "(3).real"),
    (ast.Pipe([n("x"), ast.Pipe([n("f"), n("g")])]), "x | (f | g)"),
    (ast.Labeled(n("x"), ast.Label(["blk", ast.Arith(n("i"), [("+", ast.Num(1))]), ".", n("j")], True)),
     'x as "blk{i + 1}.{j}"'),
    (ast.TupleExpr([n("a")]), "(a,)"),
])
def test_expression_printing(expr: ast.Expr, want: str) -> None:
    """Printing alone, independent of what the parser accepts today."""
    assert format_expr(expr) == want


# ---- long pipes -----------------------------------------------------------------
def test_a_long_pipe_fills_lines_up_to_the_width() -> None:
    """Issue 14 item 7: the canonical layout.  A pipe over 100 columns written on one line is
    filled greedily, continuation lines putting their '|' under the first one; a trailing comment
    counts towards the width of its line."""
    stages = " | ".join(f"conv2d({64 * k}, 3, stride=2, pad=same) as c{k}" for k in range(1, 5))
    src = f"network n(image: f32[N, 3, 64, 64]) {{\n    x = image | {stages}\n    return x\n}}\n"
    lines = check(src).splitlines()
    assert lines[1] == "    x = image | conv2d(64, 3, stride=2, pad=same) as c1 | conv2d(128, 3, stride=2, pad=same) as c2"
    assert lines[2] == "              | conv2d(192, 3, stride=2, pad=same) as c3 | conv2d(256, 3, stride=2, pad=same) as c4"
    lines = check(src.replace(" as c4", " as c4  # deep")).splitlines()
    assert lines[2:4] == ["              | conv2d(192, 3, stride=2, pad=same) as c3",
                          "              | conv2d(256, 3, stride=2, pad=same) as c4  # deep"]
    assert all(len(line) <= MAX_WIDTH for line in lines)


def test_a_long_pipe_keeps_the_lines_its_author_gave_the_stages() -> None:
    """conv | batchnorm | relu on a line of its own stays together; a line still too long is
    filled again."""
    src = ("block b(c)(x) {\n"
           "    y = x | conv2d(c, 3, pad=1, bias=false) as conv1 | batchnorm as bn1 | relu\n"
           "      | conv2d(c, 3, pad=1, bias=false) as conv2 | batchnorm as bn2\n"
           "    z = y | conv2d(c, 1, bias=false) as conv3 | batchnorm as bn3 | relu | conv2d(c, 3, pad=1, bias=false) as c4\n"
           "    return z\n"
           "}\n")
    assert check(src) == ("block b(c)(x) {\n"
                          "    y = x | conv2d(c, 3, pad=1, bias=false) as conv1 | batchnorm as bn1 | relu\n"
                          "          | conv2d(c, 3, pad=1, bias=false) as conv2 | batchnorm as bn2\n"
                          "    z = y | conv2d(c, 1, bias=false) as conv3 | batchnorm as bn3 | relu\n"
                          "          | conv2d(c, 3, pad=1, bias=false) as c4\n"
                          "    return z\n"
                          "}\n")


def test_a_long_signature_wraps_its_parameters_after_the_parenthesis() -> None:
    params = ", ".join(f"width_{k}={k}" for k in range(12))
    out = check(f"network n(image: f32[N, 3, 224, 224], {params}) {{\n    return image\n}}\n")
    assert out.splitlines()[:2] == [
        "network n(image: f32[N, 3, 224, 224], width_0=0, width_1=1, width_2=2, width_3=3, width_4=4,",
        "          width_5=5, width_6=6, width_7=7, width_8=8, width_9=9, width_10=10, width_11=11) {"]


def test_short_pipe_is_joined() -> None:
    assert check("x = a\n    | b\n    | c\n") == "x = a | b | c\n"


# ---- long expressions (issue 14 item 7: every line within the width) --------------------------
def test_long_call_fills_its_arguments_after_the_parenthesis() -> None:
    """examples/search/digits_mixers.cdl's choice() of seven mixers."""
    src = ('mixer1 = choice(dense_mixer(3), conv_mixer(3), conv_mixer(5), attn_mixer(2), cvt_mixer(2), '
           'fft_mixer(), ssm_mixer(16), name="mixer1")\n')
    assert check(src) == (
        "mixer1 = choice(dense_mixer(3), conv_mixer(3), conv_mixer(5), attn_mixer(2), cvt_mixer(2),\n"
        '                fft_mixer(), ssm_mixer(16), name="mixer1")\n')
    long_call = "x = f(" + ", ".join(f"arg{k}" for k in range(30)) + ")\n"
    assert check(long_call).splitlines() == [
        "x = f(arg0, arg1, arg2, arg3, arg4, arg5, arg6, arg7, arg8, arg9, arg10, arg11, arg12, arg13, arg14,",
        "      arg15, arg16, arg17, arg18, arg19, arg20, arg21, arg22, arg23, arg24, arg25, arg26, arg27,",
        "      arg28, arg29)"]


def test_a_long_stage_breaks_inside_its_call() -> None:
    """examples/maxvit_t.cdl: one pipe stage longer than a line; the label stays after the ')'."""
    src = ('block b(c)(x) {\n    y = x | norm | window_attention(c // 32, 7, scale=c ** -0.5, qkv="to_qkv", '
           'proj="merge") as "attn_layer.1" | relu\n    return y\n}\n')
    assert check(src) == (
        "block b(c)(x) {\n"
        "    y = x | norm\n"
        '          | window_attention(c // 32, 7, scale=c ** -0.5, qkv="to_qkv",\n'
        '                             proj="merge") as "attn_layer.1"\n'
        "          | relu\n"
        "    return y\n"
        "}\n")


def test_arguments_take_a_line_of_their_own_when_aligning_would_break_one() -> None:
    """Aligned after a '(' far to the right, an argument would break inside; one indent deeper
    it fits on one line, and the ')' goes under the line that opened it (here the '|')."""
    src = ("network n(image: f32[N, 3, 8, 8]) {\n    for i in range(3) {\n        for j in range(3) {\n"
           "            x = image | some_rather_long_block_name(make_divisible(channels_for_stage(i) * "
           'width_multiplier), stride=2) as "blocks.{i}.{j}"\n        }\n    }\n    return x\n}\n')
    assert check(src).splitlines()[3:6] == [
        "            x = image",
        "                | some_rather_long_block_name(",
        "                    make_divisible(channels_for_stage(i) * width_multiplier), stride=2",
    ] and check(src).splitlines()[6] == '                ) as "blocks.{i}.{j}"'


def test_one_argument_per_line_with_a_trailing_comma_when_they_fit_no_other_way() -> None:
    args = [f"argument_number_{k}_{'x' * 30}" for k in range(3)]
    src = f"block b()(x) {{\n    return a_function_with_a_rather_long_name_for_this_test_case({', '.join(args)})\n}}\n"
    assert check(src).splitlines()[1:6] == [
        "    return a_function_with_a_rather_long_name_for_this_test_case(",
        *[f"        {a}," for a in args],
        "    )"]
    assert check('x = "' + "a" * 120 + '"\n') == 'x = "' + "a" * 120 + '"\n'  # a string never breaks


def test_long_operator_chains_break_after_an_operator() -> None:
    """examples/unet.cdl's assert and examples/papers/unireplknet_block.cdl's return: continuation
    lines align with the first operand (a line may not start with an operator)."""
    src = ("network n(image: f32[N, 3, 8, 8]) {\n"
           '    assert dim(image, 2) % 2 ** depth == 0 and dim(image, 3) % 2 ** depth == 0, "height and width '
           'must be divisible by 2**depth"\n'
           "    return (x * n | layer_scale(0.0) as gamma) + (x | parameter([dim(x, 3)], init=zeros) as beta) + x"
           " + image\n"
           "}\n")
    assert check(src).splitlines()[1:5] == [
        "    assert dim(image, 2) % 2 ** depth == 0 and dim(image, 3) % 2 ** depth == 0,",
        '           "height and width must be divisible by 2**depth"',
        "    return (x * n | layer_scale(0.0) as gamma) + (x | parameter([dim(x, 3)], init=zeros) as beta) +",
        "           x + image"]
    src = ("network n(image: f32[N, 3, 8, 8]) {\n    if dim(image, 2) % 2 ** depth == 0 and dim(image, 3) % 2 ** "
           "depth == 0 and channels(image) == 3 {\n        x = image\n    }\n    return x\n}\n")
    assert check(src).splitlines()[1:3] == [
        "    if dim(image, 2) % 2 ** depth == 0 and dim(image, 3) % 2 ** depth == 0 and",
        "       channels(image) == 3 {"]


def test_a_list_inside_an_expression_breaks_like_a_call() -> None:
    """examples/papers/gabor_texture.cdl: a pipe in a list keeps its '|' under the first one."""
    src = ('block b(width)(e) {\n    feats = []\n    for s in range(2) {\n        feats = feats + [e | batchnorm as '
           '"norm.{s}" | conv2d(width, 1) as "proj.{s}" | relu | global_avgpool | flatten]\n    }\n'
           "    return feats | concat\n}\n")
    assert check(src).splitlines()[3:5] == [
        '        feats = feats + [e | batchnorm as "norm.{s}" | conv2d(width, 1) as "proj.{s}" | relu',
        "                           | global_avgpool | flatten]"]


def test_a_long_conditional_breaks_after_else() -> None:
    src = "x = conv_bn(x, width, 1, stride) as projection_shortcut if stride != 1 or channels(x) != width else identity(x)\n"
    assert check(src) == ("x = conv_bn(x, width, 1, stride) as projection_shortcut if stride != 1 or channels(x) != width else\n"
                          "    identity(x)\n")
    nested = "y = f(" + "a if b else c, " * 8 + "d)\n"
    assert all(len(line) <= MAX_WIDTH for line in check(nested).splitlines())


def test_expressions_nested_as_deep_as_the_parser_allows_break() -> None:
    """Breaking recurses into brackets, operators and pipes: the deepest expressions the parser
    accepts (``MAX_DEPTH``) must neither exhaust Python's stack nor stop round-tripping."""
    from convdsl.errors import ConvDSLError

    def nested(d: int) -> str:
        e = "leaf_name_quite_long"
        for i in range(d):
            e = f"[a_{i} or b_{i} and {e} == c_{i}, (x_{i} | f_{i}(y_{i}) as lab_{i})]"
        return f"x = {e}\n"

    with pytest.raises(ConvDSLError, match="nested more than"):
        parse(nested(50))
    program = parse(nested(49))
    for width in (MAX_WIDTH, 30):
        assert parse(format_program(program, width)).items == program.items


def test_a_trailing_comment_counts_when_breaking_makes_room_for_it() -> None:
    """examples/papers/tvconv.cdl: code and comment fit once the pipe breaks; a comment too long
    for any line leaves the code as it would be without it."""
    src = ('block b(c, k, layers)(a) {\n'
           '    kernels = a | conv2d(c * k * k, 3, pad=1) as "weight_layers.{3 * (layers - 1)}"  # [1, C*k*k, H, W]\n'
           "    return kernels\n}\n")
    assert check(src).splitlines()[1:3] == [
        "    kernels = a",
        '        | conv2d(c * k * k, 3, pad=1) as "weight_layers.{3 * (layers - 1)}"  # [1, C*k*k, H, W]']
    src = "x = a | b  # " + " ".join(["far too long"] * 8) + "\n"
    assert check(src) == src


def test_long_seq_block_and_return() -> None:
    body = " | ".join(f"layer_number_{k}(width)" for k in range(6))
    out = check(f"block f(width) = {body}\nblock g()(x) {{\n    return x | {body}\n}}\n")
    # a definition starts its pipe on a line of its own
    assert "block f(width) =\n    layer_number_0(width) | layer_number_1(width) | layer_number_2(width)" in out
    assert "\n    | layer_number_4(width) | layer_number_5(width)\n" in out
    assert "    return x | layer_number_0(width) | layer_number_1(width) | layer_number_2(width)\n" in out


# ---- comments -------------------------------------------------------------------
def test_comment_places() -> None:
    src = """\
# header

# about f
block f(c) = conv(c)  # trailing f
block g(c)(x) {  # g header
    # lead y

    y = x  # trailing y
    for i in xs {  # for header
        y = y
        # closing for
    }
    # closing g
}
# end 1

# end 2
"""
    assert check(src) == """\
# header

# about f
block f(c) = conv(c)  # trailing f

block g(c)(x) {  # g header
    # lead y

    y = x  # trailing y
    for i in xs {  # for header
        y = y
        # closing for
    }
    # closing g
}
# end 1

# end 2
"""


def test_comment_inside_multiline_expression_moves_to_the_end() -> None:
    src = "x = f(a,  # first\n      b)  # second\ny = a | c(d,  # third\n      e)  # fourth\n"
    assert check(src) == "# first\nx = f(a, b)  # second\n# third\ny = a | c(d, e)  # fourth\n"


def test_comments_on_pipe_stages_keep_their_stage() -> None:
    src = (
        "block f(c) = conv(c)  # full size\n"
        "    | pool  # half size\n"
        "    | linear(c)\n"
        "x = a | b  # only on the last stage\n"
    )
    assert check(src) == (
        "block f(c) =\n"
        "    conv(c)  # full size\n"
        "    | pool  # half size\n"
        "    | linear(c)\n"
        "\n"
        "x = a | b  # only on the last stage\n"
    )


def test_comments_around_if_branches() -> None:
    src = """\
block g(c)(x) {
    if c {  # if header
        x = x
        # closing if-branch
    } elif d {  # elif header
        x = x
    } else {  # after else
        # top of else
        x = x
    }  # after the brace
    return x
}
"""
    out = check(src)
    # a comment on a `}` line is kept just inside the brace; one after `else {` opens the else body
    assert "    } else {\n        # after else\n        # top of else\n        x = x\n        # after the brace\n    }\n" in out
    assert "    } elif d {  # elif header\n" in out
    assert "        # closing if-branch\n    } elif" in out


def test_only_comments() -> None:
    assert check("# one\n\n\n# two\n") == "# one\n\n# two\n"
    assert check("") == ""


def test_hash_inside_strings_is_not_a_comment() -> None:
    assert check('x = "a # b"  # real\n') == 'x = "a # b"  # real\n'


# str.splitlines() also breaks lines at these characters; lark does not
LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


@pytest.mark.parametrize("char", ["\x1e", "\u2028"])
def test_hash_after_an_odd_line_break_inside_a_string(char: str) -> None:
    check(f'x = "{char}# not a comment"\n')


# ---- properties -----------------------------------------------------------------
KEYWORDS = {"import", "as", "block", "network", "def", "return", "for", "in", "repeat", "if", "elif",
            "else", "assert", "or", "and", "not", "true", "false", "none", "choice"}
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,4}", fullmatch=True).filter(lambda s: s not in KEYWORDS)
SUM_OPS = ["+", "-"]
PRODUCT_OPS = ["*", "/", "//", "%", "@"]
COMPARE_OPS = ["==", "!=", "<", "<=", ">", ">="]


def arith(operand: st.SearchStrategy, ops: list[str]) -> st.SearchStrategy:
    rest = st.lists(st.tuples(st.sampled_from(ops), operand), min_size=1, max_size=3)
    return st.builds(ast.Arith, operand, rest)


def _merge_text(parts: list) -> list:
    """Labels never hold two text parts in a row."""
    out: list = []
    for p in parts:
        if out and isinstance(p, str) and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return out


# `{expr}` parts end at the first '}', so they hold no strings or labels
label_exprs = st.recursive(
    names.map(ast.Name) | st.integers(0, 99).map(ast.Num),
    lambda inner: arith(inner, ["+"]) | arith(inner, ["*", "//"]) | st.builds(ast.Index, inner, inner),
    max_leaves=4,
)
# strings avoid LINE_BREAKS until the parser's comment scanner stops splitting there
chars = st.characters(exclude_categories=("Cs",), exclude_characters=LINE_BREAKS)
label_text = st.text(chars, min_size=1, max_size=4).filter(lambda s: "{" not in s)
labels = names.map(lambda n: ast.Label([n], False)) | st.lists(label_text | label_exprs, max_size=4).map(
    lambda parts: ast.Label(_merge_text(parts), True)
)

leaves = st.one_of(
    names.map(ast.Name),
    st.integers(-10**12, 10**12).map(ast.Num),
    st.floats(allow_nan=False).map(ast.Num),
    st.text(chars, max_size=6).map(ast.Str),
    st.sampled_from([True, False, None]).map(ast.Const),
)


def compound(e: st.SearchStrategy) -> st.SearchStrategy:
    kwargs = st.lists(st.tuples(names, e), max_size=2, unique_by=lambda kv: kv[0]).map(
        lambda kvs: [ast.Keyword(k, v) for k, v in kvs]
    )
    options = [
        st.lists(e, max_size=3).map(ast.ListExpr),
        st.lists(e, min_size=1, max_size=3).map(ast.TupleExpr),
        st.builds(ast.Call, e, st.lists(e, max_size=2), kwargs),
        st.builds(ast.Choice, st.lists(e, min_size=1, max_size=3), st.none() | st.text(chars, max_size=4)),
        st.builds(ast.Index, e, e),
        st.builds(ast.Attribute, e, names),
        e.filter(lambda x: not isinstance(x, ast.Num)).map(ast.Neg),  # -3 is the literal Num(-3)
        e.map(ast.Not),
        arith(e, SUM_OPS),
        arith(e, PRODUCT_OPS),
        st.builds(ast.Compare, e, st.lists(st.tuples(st.sampled_from(COMPARE_OPS), e), min_size=1, max_size=2)),
        st.builds(ast.BoolOp, st.sampled_from(["and", "or"]), st.lists(e, min_size=2, max_size=3)),
        st.builds(ast.IfExp, e, e, e),
        st.lists(e, min_size=2, max_size=4).map(ast.Pipe),
        st.builds(ast.Labeled, e, labels),
        st.builds(ast.Pow, e, e),
    ]
    return st.one_of(options)


exprs = st.recursive(leaves, compound, max_leaves=12)


@pytest.mark.property
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=exprs)
def test_random_expressions_round_trip(expr: ast.Expr) -> None:
    program = ast.Program([ast.ConstDef("x", expr)])
    text = format_program(program)
    assert parse(text).items == program.items, text
    assert format_source(text) == text


def in_statements(expr: ast.Expr) -> ast.Program:
    """``expr`` in every place a statement holds an expression, so each line-breaking rule meets it."""
    return ast.Program([
        ast.ConstDef("x", expr),
        ast.BlockDef("b", [], ["y"], [ast.Assign(["z"], expr), ast.Assert(expr, "message"),
                                      ast.If([(expr, [ast.Return([expr, expr])])], [ast.Return([expr])])]),
        ast.FuncDef("f", [], expr),
    ])


@pytest.mark.property
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=exprs, width=st.sampled_from([8, 20, 40, 60]))
def test_random_expressions_round_trip_at_any_width(expr: ast.Expr, width: int) -> None:
    """Narrow widths break nearly everything: every break must be one the grammar continues."""
    program = in_statements(expr)
    text = format_program(program, width)
    assert parse(text).items == program.items, text
    assert format_program(parse(text), width) == text


words = st.from_regex(r"[a-z][a-z0-9_]{0,4}", fullmatch=True).filter(lambda s: s not in KEYWORDS)
short_leaves = words.map(ast.Name) | st.integers(0, 10**6).map(ast.Num)


def breakable(e: st.SearchStrategy) -> st.SearchStrategy:
    """Expressions a line can break inside; their atoms are short."""
    kwargs = st.lists(st.tuples(words, e), max_size=3, unique_by=lambda kv: kv[0]).map(
        lambda kvs: [ast.Keyword(k, v) for k, v in kvs])
    return st.one_of(
        st.builds(ast.Call, words.map(ast.Name), st.lists(e, max_size=5), kwargs),
        st.lists(e, max_size=6).map(ast.ListExpr),
        st.lists(e, min_size=1, max_size=4).map(ast.TupleExpr),
        arith(e, SUM_OPS), arith(e, PRODUCT_OPS),
        st.builds(ast.Compare, e, st.lists(st.tuples(st.sampled_from(COMPARE_OPS), e), min_size=1, max_size=2)),
        st.builds(ast.BoolOp, st.sampled_from(["and", "or"]), st.lists(e, min_size=2, max_size=4)),
        st.lists(e, min_size=2, max_size=5).map(ast.Pipe),
        st.builds(ast.Labeled, e, words.map(lambda w: ast.Label([w], False))),
        st.builds(ast.IfExp, e, short_leaves, e),
    )


@pytest.mark.property
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=st.recursive(short_leaves, breakable, max_leaves=40))
def test_long_expressions_fit_the_width(expr: ast.Expr) -> None:
    """Issue 14 item 7: long calls, lists, chains, pipes and conditionals break until every line
    fits ``MAX_WIDTH`` (their atoms are short; a name or string longer than a line cannot)."""
    program = ast.Program([ast.NetworkDef("n", [], [ast.Assign(["x"], expr), ast.Return([expr])])])
    text = format_program(program)
    assert parse(text).items == program.items
    assert [line for line in text.splitlines() if len(line) > MAX_WIDTH] == [], text


@pytest.mark.property
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_random_comments_survive(data: st.DataObject) -> None:
    """Comments sprinkled over the canonical program: none lost, order kept,
    and the result is a fixed point."""
    lines: list[str] = []
    for n, line in enumerate(CANONICAL.splitlines()):
        if data.draw(st.booleans()):
            indent = data.draw(st.sampled_from(["", "  ", "    ", "        ", "            "]))
            lines.append(f"{indent}# own {n}")
        if line.strip() and data.draw(st.booleans()):
            line += f"  # tail {n}"
        lines.append(line)
    if data.draw(st.booleans()):
        lines.append("# last")
    check("\n".join(lines) + "\n", data.draw(st.sampled_from([MAX_WIDTH, 60, 30])))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_round_trip(path: Path) -> None:
    check(path.read_text())
    check(path.read_text(), 40)  # nearly every statement breaks
