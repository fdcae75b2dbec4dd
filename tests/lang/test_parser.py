"""Source text -> AST: every construct of CDL parses to the AST node named
after its grammar rule, with its span; syntax mistakes become CDLSyntaxError
with a location."""
from __future__ import annotations

import pytest

from convdsl.errors import CDLSyntaxError, ResourceError
from convdsl.lang import ast
from convdsl.lang.parser import MAX_NESTING, parse, parse_expr


def expr(text: str) -> ast.Expr:
    """The value of ``_ = text``."""
    item = parse(f"_ = {text}\n").items[0]
    assert isinstance(item, ast.ConstDef)
    return item.value


# ---- top level --------------------------------------------------------------------
def test_empty_and_comment_only_programs():
    assert parse("").items == []
    p = parse("# nothing here\n\n   # indented comment\n")
    assert p.items == []
    assert [c[2] for c in p.comments] == ["# nothing here", "# indented comment"]


def test_seq_block_with_defaults_referencing_earlier_params():
    (b,) = parse("block conv_bn(c, k=3, p=k // 2) = conv2d(c, k, pad=p) | batchnorm | relu\n").items
    assert isinstance(b, ast.BlockDef) and b.inputs is None
    assert [p.name for p in b.params] == ["c", "k", "p"]
    assert b.params[0].default is None
    assert b.params[1].default == ast.Num(3)
    assert b.params[2].default == ast.Arith(ast.Name("k"), [("//", ast.Num(2))])
    assert isinstance(b.body, ast.Pipe) and len(b.body.stages) == 3
    assert b.span.line == 1 and b.span.column == 1


def test_graph_block_with_several_inputs_and_outputs():
    src = """
block mix(c)(a, b) {
    y = a + b
    return y, a
}
"""
    (b,) = parse(src).items
    assert b.inputs == ["a", "b"]
    assert isinstance(b.body[0], ast.Assign) and b.body[0].targets == ["y"]
    assert isinstance(b.body[1], ast.Return) and b.body[1].values == [ast.Name("y"), ast.Name("a")]


def test_block_without_params_or_inputs():
    (b,) = parse("block stem() = relu\n").items
    assert b.params == [] and b.inputs is None
    (g,) = parse("block nothing()() {\n return 1\n}\n").items
    assert g.inputs == []


def test_network_inputs_with_symbolic_dims_and_dtypes():
    (n,) = parse("network net(image: f32[N, 3, 224, 224], tokens: i64[N, L], classes=1000) {\n return image\n}\n").items
    assert isinstance(n, ast.NetworkDef)
    assert [(i.name, i.dtype, i.dims) for i in n.inputs] == [("image", "f32", ["N", 3, 224, 224]),
                                                             ("tokens", "i64", ["N", "L"])]
    assert [p.name for p in n.hyper] == ["classes"]


def test_def_const_and_imports():
    p = parse('import "blocks.cdl"\nimport "other.cdl" as o\ndef sq(v) = v ** 2\nWIDTH = 64\n')
    imp, imp_as, fn, const = p.items
    assert imp == ast.Import("blocks.cdl", None)
    assert imp_as == ast.Import("other.cdl", "o")
    assert fn == ast.FuncDef("sq", [ast.Param("v")], ast.Pow(ast.Name("v"), ast.Num(2)))
    assert const == ast.ConstDef("WIDTH", ast.Num(64))


# ---- statements -------------------------------------------------------------------
BODY = """
network n(x: f32[N, 4], k=2) {
    for i, c in enumerate([8, 16]) {
        x = x | linear(c)
    }
    repeat k {
        x = x | relu
    }
    if k > 2 {
        x = x | relu
    } elif k == 2 {
        x = x | gelu
    }
    else {
        x = x | silu
    }
    assert k >= 0, "k must be non-negative"
    assert true
    return x
}
"""


def test_statements():
    (n,) = parse(BODY).items
    f, r, i, a1, a2, ret = n.body
    assert isinstance(f, ast.For) and f.targets == ["i", "c"] and len(f.body) == 1
    assert isinstance(r, ast.Repeat) and r.count == ast.Name("k")
    assert isinstance(i, ast.If) and len(i.branches) == 2 and i.orelse is not None
    assert i.branches[1][0] == ast.Compare(ast.Name("k"), [("==", ast.Num(2))])
    assert a1.message == "k must be non-negative" and a2.message is None
    assert isinstance(ret, ast.Return)


def test_if_without_else():
    (n,) = parse("network n(x: f32[1]) {\n if true { x = x }\n return x\n}\n").items
    assert n.body[0].orelse is None


# ---- expressions ------------------------------------------------------------------
def test_pipes_span_lines():
    src = "y = x\n    | conv2d(8)\n    | relu\n\nz = 1\n"
    y, z = parse(src).items
    assert isinstance(y.value, ast.Pipe) and len(y.value.stages) == 3
    assert z.value == ast.Num(1)


def test_line_continues_after_operator_and_inside_brackets():
    a, b = parse("a = 1 +\n    2\nb = f(1,\n      2)\n").items
    assert a.value == ast.Arith(ast.Num(1), [("+", ast.Num(2))])
    assert b.value == ast.Call(ast.Name("f"), [ast.Num(1), ast.Num(2)], [])


def test_precedence():
    assert expr("1 + 2 * 3") == ast.Arith(ast.Num(1), [("+", ast.Arith(ast.Num(2), [("*", ast.Num(3))]))])
    assert expr("x | f if c else g") == ast.IfExp(ast.Pipe([ast.Name("x"), ast.Name("f")]), ast.Name("c"),
                                                  ast.Name("g"))
    assert expr("not a and b or c") == ast.BoolOp("or", [ast.BoolOp("and", [ast.Not(ast.Name("a")), ast.Name("b")]),
                                                         ast.Name("c")])
    assert expr("a < b <= c") == ast.Compare(ast.Name("a"), [("<", ast.Name("b")), ("<=", ast.Name("c"))])
    assert expr("x | relu as r") == ast.Pipe([ast.Name("x"), ast.Labeled(ast.Name("relu"), ast.Label(["r"]))])


def test_power_is_one_token_and_right_associative():
    # regression: lark's basic lexer split '**' into two MULOP '*'
    assert expr("2 ** 3 ** 2") == ast.Pow(ast.Num(2), ast.Pow(ast.Num(3), ast.Num(2)))
    assert expr("2**-1") == ast.Pow(ast.Num(2), ast.Num(-1))
    assert expr("a * b") == ast.Arith(ast.Name("a"), [("*", ast.Name("b"))])
    with pytest.raises(CDLSyntaxError):
        parse("x = 2 * * 3\n")  # a space makes two multiplications


def test_binary_minus():
    # regression: every '-' was lexed as the unary MINUS, so `a - 1` did not parse
    assert expr("a - 1") == ast.Arith(ast.Name("a"), [("-", ast.Num(1))])
    assert expr("a-1") == ast.Arith(ast.Name("a"), [("-", ast.Num(1))])
    assert expr("f(x) - [1][0] - -2") == ast.Arith(
        ast.Call(ast.Name("f"), [ast.Name("x")], []),
        [("-", ast.Index(ast.ListExpr([ast.Num(1)]), ast.Num(0))), ("-", ast.Num(-2))])
    assert expr("-a") == ast.Neg(ast.Name("a"))
    assert expr("-3") == ast.Num(-3)
    assert expr("(a\n - b)") == ast.Arith(ast.Name("a"), [("-", ast.Name("b"))])


def test_literals():
    assert expr('[1, 2.5, "s", true, false, none]') == ast.ListExpr(
        [ast.Num(1), ast.Num(2.5), ast.Str("s"), ast.Const(True), ast.Const(False), ast.Const(None)])
    assert expr("(1, 2)") == ast.TupleExpr([ast.Num(1), ast.Num(2)])
    assert expr("(1,)") == ast.TupleExpr([ast.Num(1)])
    assert expr("(1)") == ast.Num(1)
    assert expr("1e3") == ast.Num(1000.0)
    assert expr('"a\\"b\\n"') == ast.Str('a"b\n')


def test_calls_keywords_index_attribute():
    e = expr("m.conv(64, k=3)[0].shape")
    assert isinstance(e, ast.Attribute) and e.name == "shape"
    call = e.obj.obj
    assert call == ast.Call(ast.Attribute(ast.Name("m"), "conv"), [ast.Num(64)], [ast.Keyword("k", ast.Num(3))])


def test_labels_plain_and_interpolated():
    e = expr('x | basic(64) as "layer{i+1}.{j}"')
    label = e.stages[1].label
    assert label.quoted
    assert label.parts == ["layer", ast.Arith(ast.Name("i"), [("+", ast.Num(1))]), ".", ast.Name("j")]
    # the parts parsed from inside the string carry the string's span
    assert label.parts[1].span == label.span
    assert expr("conv2d(8) as c1").label == ast.Label(["c1"], False)


def test_choice():
    e = expr('choice(3, 5, 7, name="k")')
    assert e == ast.Choice([ast.Num(3), ast.Num(5), ast.Num(7)], "k")
    assert e.key == "k"
    anon = parse("\n_ = choice(relu, gelu)\n").items[0].value
    assert anon.key == "2:5"  # unnamed choices are keyed by their position


def test_parse_expr():
    assert parse_expr("i + 1") == ast.Arith(ast.Name("i"), [("+", ast.Num(1))])
    with pytest.raises(CDLSyntaxError):
        parse_expr("1 +")
    with pytest.raises(CDLSyntaxError):
        parse_expr("a\nb")


def test_spans_point_at_the_token():
    (c,) = parse("\n  x = foo + 1\n").items
    assert (c.span.line, c.span.column) == (2, 3)
    assert (c.value.first.span.line, c.value.first.span.column) == (2, 7)


def test_crlf_line_endings():
    p = parse("a = 1\r\nb = a\r\n")
    assert [i.name for i in p.items] == ["a", "b"]


# ---- syntax errors ------------------------------------------------------------------
@pytest.mark.parametrize("src, line, col", [
    ("x = (1 + 2\ny = 3\n", 2, 1),
    ("x = 1 +\n", 1, 8),
    ("if x = 1 { }\n", 1, 1),
    ("block f(c) { }\n", 1, 12),
    ("x = 'a'\n", 1, 5),
    ("network n(x: q32[1]) { return x }\n", 1, 14),
    ("x = f(a=1, 2)\n", 1, 12),
    ("x = f(a=1, a=2)\n", 1, 12),
    ('x = 1 as "a{"\n', 1, 10),
    ('x = 1 as "{}"\n', 1, 10),
    ("x = choice()\n", 1, 5),
    ('x = choice(1, nam="a")\n', 1, 15),
    ("x = 1\nelse { }\n", 2, 1),
    ("x = 1 $ 2\n", 1, 7),
])
def test_syntax_errors_have_locations(src, line, col):
    with pytest.raises(CDLSyntaxError) as info:
        parse(src, "bad.cdl")
    err = info.value
    assert (err.span.file, err.span.line, err.span.column) == ("bad.cdl", line, col)
    assert "^" in err.render()


def test_nesting_limit():
    ok = "x = " + "(" * MAX_NESTING + "1" + ")" * MAX_NESTING + "\n"
    assert parse(ok).items[0].value == ast.Num(1)
    with pytest.raises(ResourceError) as info:
        parse("x = " + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1) + "\n")
    assert info.value.span.column == 4 + MAX_NESTING + 1


def test_deep_nesting_without_brackets_is_refused():
    with pytest.raises(ResourceError):
        parse("x = " + "not " * 5000 + "1\n")


def test_huge_integer_literal_is_refused():
    # regression: int() of a 5000-digit literal raised ValueError inside the AST builder
    with pytest.raises(ResourceError):
        parse("x = 1" + "0" * 5000 + "\n")


def test_label_inside_label_error_is_unwrapped():
    # regression: a syntax error in a label nested in a label escaped as lark's VisitError
    with pytest.raises(CDLSyntaxError):
        parse('x = y as "{z as \\"{\\"}"\n')


@pytest.mark.parametrize("char", ["\x1e", "\u2028", "\x0c", "\x85"])
def test_hash_after_an_odd_line_break_inside_a_string(char):
    # regression: comments were scanned on str.splitlines() lines, which also break at these
    # characters (lark does not), so a '#' later in the string was taken for a comment
    p = parse(f'x = "{char}# not a comment"  # real\n')
    assert p.items[0].value == ast.Str(f"{char}# not a comment")
    assert p.comments == [(1, 25, "# real")]


def test_as_starts_a_continuation_line_and_tuples_assign_without_parentheses():
    """Issue 14 item 6: `as` on the next line was 'unexpected as ... expected: assert, ...', and
    `a, b = b, a` was refused."""
    from convdsl.lang.elaborate import elaborate

    src = ("network n(x: f32[N, 3, 8, 8]) {\n"
           "    a, b = x | conv2d(4, 1), x | conv2d(4, 1)\n"
           "    a, b = b, a\n"
           "    y = a - b\n"
           "        | conv2d(8, 3)\n"
           "        as stem\n"
           "    return y\n"
           "}\n")
    (net,) = parse(src).items
    swap = net.body[1]
    assert isinstance(swap, ast.Assign) and swap.targets == ["a", "b"]
    assert isinstance(swap.value, ast.TupleExpr) and [v.id for v in swap.value.items] == ["b", "a"]
    g = elaborate(src)
    assert [v.node for v in g.inputs_of("sub")] == ["conv2d_1", "conv2d"]  # a - b after the swap
    assert "stem.weight" in g.params.specs


def test_tokens_are_the_lexers_own():
    """``parse(..., tokens=)`` hands back what lark's lexer makes of the text (newlines kept, '**' as
    two '*'); a label parsed inside the program adds none."""
    from lark import Lark

    from convdsl.lang.parser import grammar_text

    text = 'x = 2**3\nnetwork n(a: f32[1, 4]) {\n    y = a | linear(4) as "fc{x}"  # c\n\n    return y - 1\n}\n'
    raw: list = []
    parse(text, "t.cdl", tokens=raw)
    lexer = Lark(grammar_text(), parser="lalr", lexer="basic")
    want = [(t.type, str(t), t.line, t.column, t.end_pos) for t in lexer.lex(text)]
    assert [(t.type, str(t), t.line, t.column, t.end_pos) for t in raw] == want
    assert ("MULOP", "*") in [(t.type, str(t)) for t in raw]
    raw.clear()
    with pytest.raises(CDLSyntaxError):
        parse("x = (1,\n", "t.cdl", tokens=raw)
    parse("y = 1\n", "t.cdl")  # a later parse without tokens= records nothing
    assert [str(t) for t in raw][:2] == ["x", "="] and all(t.line == 1 or t.type == "_NL" for t in raw)


def _spans(node, out: list) -> list:
    """Every AST node's type and span, depth first (spans take no part in ==)."""
    import dataclasses

    if isinstance(node, (list, tuple)):
        for x in node:
            _spans(x, out)
    elif dataclasses.is_dataclass(node):
        sp = getattr(node, "span", None)
        out.append((type(node).__name__, sp and (sp.line, sp.column, sp.end_line, sp.end_column)))
        for f in dataclasses.fields(node):
            if f.name != "span":
                _spans(getattr(node, f.name), out)
    return out


def test_the_tuned_parser_builds_what_stock_lark_builds():
    """``_lark()`` reduces one-child ``?rule`` alternatives straight to the child and the AST builder
    skips token callbacks: every example gives the program, and every node the span, that lark's own
    configuration (each reduction through position propagation, tokens visited) gives."""
    import functools
    from pathlib import Path

    from lark import Lark

    from convdsl.lang import parser as P

    stock = Lark(P.grammar_text(), parser="lalr", lexer="basic", propagate_positions=True,
                 maybe_placeholders=True, postlex=P._Postlexer("<cdl>"))
    stock.options.postlex.pow_type = P._lark().options.postlex.pow_type

    class StockBuilder(ast.ASTBuilder):
        __visit_tokens__ = True

    examples = sorted((Path(__file__).resolve().parents[2] / "examples").rglob("*.cdl"))
    assert len(examples) > 20
    for path in examples:
        text = path.read_text()
        mine = parse(text, str(path))
        tree = stock.parse(text)
        theirs = StockBuilder(str(path), functools.partial(P.parse_expr, file=str(path))).transform(tree)
        assert mine == theirs and _spans(mine.items, []) == _spans(theirs.items, []), path
