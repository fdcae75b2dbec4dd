"""`op as param name`: an op's one parameter named exactly <scope>.name (a parameter a source model keeps
on a module that also holds other modules: ViT's encoder.pos_embedding, ConvNeXt's layer_scale)."""
from __future__ import annotations

import pytest

from convdsl.errors import CDLSyntaxError, CDLTypeError
from convdsl.lang.elaborate import elaborate
from convdsl.lang.format import format_source
from convdsl.lang.parser import parse
from convdsl.lang.printer import print_graph

SRC = """block enc()(x) {
    x = x | pos_embed(kind=learned) as param pos_embedding | layernorm as ln
    return x
}

network t(x: f32[N, 4, 8]) {
    param = 3
    y = x | class_token(1) as param cls_token | enc() as encoder
          | layer_scale(layout=last) as param "blocks.0-1.gamma" | linear(param) as fc
    return y
}
"""


def test_keys_are_the_labels_themselves():
    g = elaborate(SRC, "t.cdl")
    assert sorted(g.params.names()) == ["blocks.0-1.gamma", "cls_token", "encoder.ln.bias", "encoder.ln.weight",
                                        "encoder.pos_embedding", "fc.bias", "fc.weight"]
    assert g.node("encoder.pos_embedding").params == {"pos_embedding": "encoder.pos_embedding"}
    assert g.node("encoder.pos_embedding").exact_param and not g.node("fc").exact_param


def test_param_stays_a_name_elsewhere():
    # a variable called param, and a plain label `as param`, are what they were
    g = elaborate("network t(x: f32[N, 8]) {\n    param = 4\n    return x | linear(param) as param\n}\n", "t.cdl")
    assert sorted(g.params.names()) == ["param.bias", "param.weight"]


def test_format_and_printer_write_it_back():
    assert "as param cls_token" in format_source(SRC) and 'as param "blocks.0-1.gamma"' in format_source(SRC)
    assert format_source(format_source(SRC)) == format_source(SRC)
    g = elaborate(SRC, "t.cdl")
    text = print_graph(g)
    assert "as param cls_token" in text and 'as param "encoder.pos_embedding"' in text
    again = elaborate(text, "p.cdl")
    assert sorted(again.params.names()) == sorted(g.params.names())
    assert print_graph(again) == text


@pytest.mark.parametrize("expr, message", [
    ("x | linear(3) as param fc", "linear here has 2 (weight, bias)"),
    ("x | relu as param r", "relu here has 0"),
    ("x | pos_embed(kind=sinusoidal) as param p", "pos_embed here has 0"),
    ("(x | relu | layer_scale) as param s", "this expression is not one op"),
    ("x | scaled() as param s", "block scaled is not one op"),
])
def test_only_an_op_with_one_parameter(expr, message):
    src = f"block scaled()(x) {{\n    return x | layer_scale\n}}\n\nnetwork t(x: f32[N, 4, 8]) {{\n    y = {expr}\n    return y\n}}\n"
    with pytest.raises(CDLTypeError) as e:
        elaborate(src, "t.cdl")
    assert message in e.value.message and e.value.span is not None and e.value.span.line == 6


def test_param_without_a_label_is_a_syntax_error():
    with pytest.raises(CDLSyntaxError):
        parse("network t(x: f32[N, 8]) {\n    return x | layer_scale as param param param\n}\n", "t.cdl")
