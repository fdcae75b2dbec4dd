"""Every user mistake is a ConvDSLError subclass that knows file:line:col,
renders the source line with a caret under the right column, and says what
was expected and/or how to fix it."""
from __future__ import annotations

import pytest

from convdsl.errors import (ChoiceError, CDLNameError, CDLSyntaxError, CDLTypeError, ConvDSLError, ResourceError,
                            ShapeError, Span, UsageError, remember_source)
from convdsl.lang.elaborate import Options, elaborate

HEAD = "network n(x: f32[N, 3, 8, 8]) {\n"


def body(*lines: str) -> str:
    return HEAD + "".join(f"    {ln}\n" for ln in lines) + "}\n"


def caret_column(rendered: str, line: int) -> int:
    """1-based column of the first '^' under the quoted source line."""
    gutter = f"{line:>4} | "
    rows = rendered.splitlines()
    i = next(i for i, r in enumerate(rows) if r.startswith(gutter))
    return rows[i + 1].index("^") - len(gutter) + 1


# name, source, error class, line, column, text in "expected:" (or None), text in "hint:" (or None)
CASES = [
    ("syntax", body("y = x | conv2d(8,, 3)", "return y"), CDLSyntaxError, 2, 22, "')'", None),
    ("syntax-unclosed", body("y = (x | conv2d(8)", "return y"), CDLSyntaxError, 3, 5, None,
     "'(' at line 2, column 9 is not closed"),
    ("syntax-single-quotes", body("y = x | relu as 'a'", "return y"), CDLSyntaxError, 2, 21, "strings",
     "double quotes"),
    ("syntax-compare", HEAD + "    if channels(x) = 3 { x = x }\n    return x\n}\n", CDLSyntaxError, 2, 20, None,
     "'=='"),
    ("unknown-name", body("return x | conv2d(8) | reluu"), CDLNameError, 2, 28, None, "did you mean 'relu'"),
    ("unknown-value", body("return x | conv2d(widht)"), CDLNameError, 2, 23, None, "names defined here: x"),
    ("unknown-local", "network n(x: f32[N, 3, 8, 8], width=8) {\n    return x | conv2d(widht)\n}\n", CDLNameError,
     2, 23, None, "did you mean 'width'"),
    ("attr-name", body("return x | conv2d(8, strid=2)"), CDLTypeError, 2, 16, "stride", "did you mean 'stride'"),
    ("attr-word", body("return x | conv2d(8, pad=sam)"), CDLTypeError, 2, 16, "same / valid", "did you mean 'same'"),
    ("attr-type", body("return x | conv2d(8, bias=1)"), CDLTypeError, 2, 16, "true or false", None),
    ("attr-missing", body("return x | linear"), CDLTypeError, 2, 16, "out: an integer", "linear(1000)"),
    ("add-shapes", body("y = x | conv2d(4)", "return x + y"), ShapeError, 3, 12, "equal sizes", None),
    ("conv-groups", body("return x | conv2d(8, 3, groups=2)"), ShapeError, 2, 16, "divisible by 2", None),
    ("input-too-small", body("return x | conv2d(8, 9)"), ShapeError, 2, 16, None, None),
    ("unresolved-choice", body("return x | conv2d(choice(8, 16))"), ChoiceError, 2, 23, "a plain program",
     "--choose 2:23=INDEX"),
    ("recursion", "block r(c)(x) {\n    return x | r(c)\n}\n" + body("return x | r(3)"), ResourceError, 2, 16, None,
     "base case"),
    ("tensor-too-big", body("return x | conv2d(8) | linear(100000000)"), ResourceError, 2, 28, None, "--max-memory"),
    ("input-too-big", "network n(x: f32[N, 3, 100000, 100000]) {\n    return x\n}\n", ResourceError, 1, 11, None,
     "--max-memory"),
    ("nesting", body("c = " + "(" * 65 + "1" + ")" * 65, "return x"), ResourceError, 2, 9 + 64, None,
     "named values"),
    ("duplicate-instance", body("y = x | relu as act", "return y | relu as act"), CDLNameError, 3, 16, None,
     "unique"),
    ("duplicate-scope", "block b() = relu\n" + body("y = x | relu as act", "return y | b as act"), CDLNameError,
     4, 16, None, "another name"),
    ("op-inside-op", body('y = x | relu as "act.inner"', "return y | relu as act"), CDLNameError, 3, 16, None,
     "cannot also be a scope"),
    ("scope-inside-op", "block b() = relu\n" + body("y = x | relu as act", 'return y | b as "act.inner"'),
     CDLNameError, 4, 16, None, "another name"),
    ("block-inputs", "block merge()(a, b) {\n    return a + b\n}\n" + body("return x | merge"), CDLTypeError,
     5, 16, "2 (a, b)", "merge(a, b)"),
    ("op-inputs", body("return relu(x, x)"), CDLTypeError, 2, 12, None, "x | relu"),
    ("block-param-name", "block f(c, k=3) = conv2d(c, k)\n" + body("return x | f(8, kk=3)"), CDLTypeError, 3, 16,
     "c, k", "did you mean 'k'"),
    ("block-param-missing", "block f(c, k=3) = conv2d(c, k)\n" + body("return x | f(k=3)"), CDLTypeError, 3, 16,
     "f(c, k)", None),
    ("assert", body("assert channels(x) == 4", "return x"), CDLTypeError, 2, 12, None, "message"),
    ("not-a-layer", body("return x | 3"), CDLTypeError, 2, 16, "an op or block", None),
    ("return-number", body("return 3"), CDLTypeError, 2, 12, "a tensor", None),
    ("repeat-negative", body("repeat -1 { x = x }", "return x"), CDLTypeError, 2, 12, "an integer >= 0", None),
    ("bad-label", body('return x | relu as "a b"'), CDLNameError, 2, 24, "printable ASCII without spaces", None),
    ("unknown-dtype", "network n(x: q32[1]) {\n    return x\n}\n", CDLSyntaxError, 1, 14, "f32", None),
    ("duplicate-input", "network n(x: f32[1, 3],\n          x: f32[1, 3]) {\n    return x\n}\n", CDLNameError, 2, 11,
     None, "own name"),
]


@pytest.mark.parametrize("name, src, cls, line, col, expected, hint", CASES, ids=[c[0] for c in CASES])
def test_error(name, src, cls, line, col, expected, hint):
    with pytest.raises(ConvDSLError) as info:
        elaborate(src, "net.cdl")
    err = info.value
    assert type(err) is cls, err.render()
    assert (err.span.file, err.span.line, err.span.column) == ("net.cdl", line, col), err.render()
    rendered = err.render()
    assert rendered.startswith(f"net.cdl:{line}:{col}: {cls.kind}: ")
    assert f"{line:>4} | {src.splitlines()[line - 1]}" in rendered
    assert caret_column(rendered, line) == col, rendered
    if expected is not None:
        assert "  expected: " in rendered and expected in err.expected, rendered
    if hint is not None:
        assert "  hint: " in rendered and hint in err.hint, rendered
    assert str(err) == rendered


def test_too_small_input_says_why():
    with pytest.raises(ShapeError) as info:
        elaborate(body("return x | conv2d(8, 9)"), "net.cdl")
    assert "too small" in info.value.message and "f32[N, 3, 8, 8]" in info.value.got


def test_memory_limit_is_an_option():
    src = body("return x | conv2d(64) | conv2d(64)")
    elaborate(src)
    with pytest.raises(ResourceError, match="would need") as info:
        # the input (768 B), the first conv (9 KiB out, 7 KiB weights, 26 KiB of layout copies) fit in 60 kB;
        # the second conv's 145 KiB of weights (and their blocked copy) do not
        elaborate(src, options=Options(max_bytes=60_000))
    assert (info.value.span.line, info.value.span.column) == (2, 29)


def test_error_classes_have_distinct_exit_codes():
    classes = [CDLSyntaxError, CDLNameError, CDLTypeError, ResourceError, ChoiceError, UsageError]
    assert len({c.exit_code for c in classes}) == len(classes)
    assert ShapeError.exit_code == CDLTypeError.exit_code and issubclass(ShapeError, CDLTypeError)


def test_no_network_is_a_usage_error():
    with pytest.raises(UsageError, match="defines no network") as info:
        elaborate("block f() = relu\n", "lib.cdl")
    assert "network" in info.value.hint


def test_unknown_override():
    with pytest.raises(UsageError) as info:
        elaborate("network n(x: f32[1, 3], width=8) {\n    return x\n}\n", options=Options(overrides={"widht": 4}))
    assert "width" in info.value.hint


# ---- rendering ---------------------------------------------------------------------------
def test_caret_width_follows_the_span():
    remember_source("r.cdl", "y = conv2d(8)\n")
    rendered = ConvDSLError("bad", Span("r.cdl", 1, 5, 1, 14), expected="e", got="g", hint="h").render()
    assert rendered.splitlines()[2] == " " * 7 + " " * 4 + "^" * 9
    assert rendered.splitlines()[3:] == ["  expected: e", "  got:      g", "  hint: h"]


def test_caret_under_tabs():
    remember_source("t.cdl", "\tx = @\n")
    rendered = ConvDSLError("bad", Span("t.cdl", 1, 6)).render()
    assert rendered.splitlines()[2] == " " * 7 + "\t    ^"


def test_line_numbers_count_newlines_only():
    # regression: splitlines() also splits at form feeds, so the quoted line was the wrong one
    text = "a = 1\f\nb = ?\n"
    with pytest.raises(CDLSyntaxError) as info:
        elaborate(text, "ff.cdl")
    assert info.value.span.line == 2
    assert "   2 | b = ?" in info.value.render()


def test_render_without_source_or_span():
    assert ConvDSLError("plain").render() == "error: plain"
    rendered = ConvDSLError("x", Span("never-parsed.cdl", 3, 4)).render()
    assert rendered == "never-parsed.cdl:3:4: error: x"


def test_errors_in_imported_files_quote_that_file(tmp_path):
    (tmp_path / "lib.cdl").write_text("block bad() = conv2d(8, 3, groups=5)\n")
    main = tmp_path / "main.cdl"
    src = 'import "lib.cdl"\nnetwork n(x: f32[1, 3, 8, 8]) {\n    return x | bad\n}\n'
    main.write_text(src)
    with pytest.raises(ShapeError) as info:
        elaborate(src, str(main))
    assert info.value.span.file == str(tmp_path / "lib.cdl")
    assert "   1 | block bad() = conv2d(8, 3, groups=5)" in info.value.render()


@pytest.mark.parametrize("size", [-1, 0, 2**63, 1.5, True])
def test_api_bindings_are_checked_like_bind_options(size):
    """Options(bind=...) from the Python API: a size of 0 or less would make the memory check
    count negative bytes (a way around --max-memory), a float or a bool is not a size."""
    with pytest.raises(UsageError, match="bound to"):
        elaborate("network n(x: f32[N, 4]) {\n  return x\n}\n", options=Options(bind={"N": size}))


def test_a_parameter_hiding_a_builtin_is_named_where_the_builtin_is_called():
    """Issue 14 item 9: a network parameter `channels` made `channels(x)` fail with 'a list of 2
    cannot be called'.  The error now names the parameter and the built-in it hides."""
    src = ("network n(x: f32[N, 3, 8, 8], channels=[8, 16]) {\n"
           "    for c in channels { x = x | conv2d(c, 3, pad=1) }\n"
           "    return x | global_avgpool(keepdim=false) | linear(channels(x))\n"
           "}\n")
    with pytest.raises(CDLNameError) as e:
        elaborate(src, "<t>")
    text = e.value.render()
    assert "'channels' here is a list of 2: a parameter, variable or constant named 'channels' hides the built-in " \
           "function channels(x)" in text
    assert caret_column(text, 3) == 55 and "hint: rename the parameter or variable 'channels'" in text
    with pytest.raises(CDLNameError, match="'squeeze' here is the integer 4: .* hides the op squeeze"):
        elaborate("block se(squeeze)(x) {\n    return x | squeeze\n}\n" + body("return x | se(4)"), "<t>")
    renamed = src.replace("channels=", "widths=").replace("in channels", "in widths")
    assert elaborate(renamed, "<t>").output_types()[0].shape == ("N", 16)
