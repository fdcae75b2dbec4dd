"""cse: identical parameter-free computations are done once; nodes with
parameters and random ops are never merged; results are bit-for-bit equal."""
from __future__ import annotations

from convdsl.api import load_graph
from convdsl.ir.graph import Value
from convdsl.ir.verify import verify
from convdsl.passes import cse

from .zoo import assert_same_function, same_graph


def net(body: str, x: str = "f32[N, 4, 8, 8]") -> str:
    return f"network net(x: {x}) {{\n{body}\n}}\n"


def test_cse_merges_identical_nodes_and_what_follows():
    g = load_graph(net("""    a = x | relu as r1 | maxpool2d(2) as p1
    b = x | relu as r2 | maxpool2d(2) as p2
    c = x | relu as r3 | maxpool2d(3, stride=2) as p3
    return a + b, c"""))
    c = verify(cse(g))
    assert "r2" not in c and "r3" not in c and "p2" not in c  # r2, r3 -> r1; then p2 -> p1
    assert "p3" in c  # different attributes
    assert c.inputs_of("add") == [Value("p1", 0), Value("p1", 0)]
    assert c.inputs_of("p3") == [Value("r1", 0)]
    assert_same_function(c, g, tol=0.0)


def test_cse_never_merges_nodes_with_parameters():
    g = load_graph(net("""    a = x | conv2d(6, 3, pad=1) as c1
    b = x | conv2d(6, 3, pad=1) as c2
    return a + b"""))
    c = verify(cse(g))
    assert same_graph(c, g)


def test_cse_never_merges_random_ops():
    g = load_graph(net("""    a = x | dropout(0.5) as d1
    b = x | dropout(0.5) as d2
    return a + b"""))
    assert same_graph(cse(g), g)


def test_cse_two_input_add_and_mul_are_commutative():
    g = load_graph(net("""    a = x | relu as r
    b = x | sigmoid as s
    return (a + b) * (b + a), (a * b) + (b * a), (a - b) + (b - a)"""))
    c = verify(cse(g))
    before, after = [n.op for n in g.nodes()], [n.op for n in c.nodes()]
    assert before.count("add") == 4 and after.count("add") == 3  # a + b and b + a merge
    assert before.count("mul") == 3 and after.count("mul") == 2  # a * b and b * a merge
    assert after.count("sub") == 2  # a - b and b - a differ
    assert_same_function(c, g, tol=0.0)


def test_cse_multi_output_nodes_and_graph_outputs():
    g = load_graph(net("""    s1 = x | split(chunks=2) as s1
    s2 = x | split(chunks=2) as s2
    return s1[0] + s2[1], s2[0]""", "f32[N, 4, 6]"))
    c = verify(cse(g))
    assert "s2" not in c
    assert c.inputs_of("add") == [Value("s1", 0), Value("s1", 1)]
    assert c.outputs[1] == Value("s1", 0)
    assert_same_function(c, g, tol=0.0)


def test_cse_leaves_its_input_alone():
    g = load_graph(net("    return relu(x) + relu(x)"))
    n = len(g)
    cse(g)
    assert len(g) == n
