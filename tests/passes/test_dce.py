"""dce: nodes no output depends on are removed with their parameters; nothing else changes."""
from __future__ import annotations

from convdsl.api import load_graph
from convdsl.ir.graph import Value
from convdsl.ir.types import TensorType
from convdsl.ir.verify import verify
from convdsl.passes import dce

from .zoo import assert_same_function, same_graph

SRC = """
network net(x: f32[N, 4, 8, 8], unused: f32[N, 3]) {
    y = x | conv2d(6, 3, pad=1) as conv | relu as act
    dead = x | conv2d(6, 3, pad=1) as dead_conv | batchnorm as dead_bn | relu as dead_act
    half = y | split(chunks=2) as halves
    return half[0] | sigmoid as out
}
"""


def test_dce_removes_unused_nodes_and_their_parameters():
    g = load_graph(SRC)
    d = verify(dce(g))
    assert {"dead_conv", "dead_bn", "dead_act"}.isdisjoint(d.g.nodes)
    assert not any(k.startswith("dead_") for k in d.params.names())
    assert sorted(d.params.names()) == ["conv.bias", "conv.weight"]
    # inputs stay (the signature), and so does a multi-output node with one output read
    assert d.inputs == ["x", "unused"] and "halves" in d
    assert len(d) == len(g) - 3
    assert_same_function(d, g, tol=0.0)
    assert "dead_conv" in g and "dead_conv.weight" in g.params  # input graph untouched


def test_dce_keeps_a_graph_without_dead_code():
    g = load_graph("network net(x: f32[N, 4]) {\n    return x | linear(3) as fc | relu\n}\n")
    assert same_graph(dce(g), g)


def test_dce_removes_nodes_a_rewrite_disconnected():
    g = load_graph("network net(x: f32[N, 4]) {\n    return x | linear(3) as fc | relu as act\n}\n")
    g2 = g.copy()
    g2.add_node("orphan", "relu", [Value("fc", 0)], {}, [TensorType(("N", 3))])
    g2.outputs = [Value("fc", 0)]  # as if a pass had rerouted the output
    d = verify(dce(g2))
    assert sorted(d.g.nodes) == ["fc", "x"]
