"""remove_identity: every no-op goes, its readers read its input, and the
outputs are bit-for-bit the same."""
from __future__ import annotations

import pytest

from convdsl.api import load_graph
from convdsl.ir.graph import Value
from convdsl.ir.verify import verify
from convdsl.passes import remove_identity

from .zoo import assert_same_function, same_graph


def net(body: str, x: str = "f32[N, 4, 6, 6]") -> str:
    return f"network net(x: {x}) {{\n{body}\n}}\n"


NOOPS = ["identity", "dropout(0.3)", "affine(scale=1.0)", "reshape([0, 4, 6, 6])", "flatten(start=2, end=2)",
         "squeeze", "permute([0, 1, 2, 3])", "transpose(2, -2)", "pad(0)", "pad([0, 0], mode=reflect)",
         "pixel_shuffle(1)", "pixel_unshuffle(1)", "upsample(scale=1, mode=bilinear)", "concat", "split(chunks=1)"]


@pytest.mark.parametrize("op", NOOPS)
def test_noop_is_removed(op):
    g = load_graph(net(f"    return x | relu as a | {op} as noop | sigmoid as b"))
    r = verify(remove_identity(g))
    assert [n.id for n in r.nodes()] == ["x", "a", "b"]
    assert r.inputs_of("b") == [Value("a", 0)]
    assert_same_function(r, g, tol=0.0)


def test_a_chain_of_noops_and_graph_outputs():
    g = load_graph(net("""    y = x | identity | dropout(0.1) | affine(scale=1.0, shift=0.0)
    return y, x | relu | dropout as d"""))
    r = verify(remove_identity(g))
    assert [n.op for n in r.nodes()] == ["input", "relu"]
    assert r.outputs == [Value("x", 0), Value("relu", 0)] and r.output_names == g.output_names
    assert_same_function(r, g, tol=0.0)


KEPT = ["affine(scale=2.0)", "affine(shift=0.5)", "permute([0, 1, 3, 2])", "transpose(2, 3)", "reshape([0, 4, 36])",
        "pad(1)", "upsample(scale=2)", "relu"]


@pytest.mark.parametrize("op", KEPT)
def test_ops_that_move_or_change_values_stay(op):
    g = load_graph(net(f"    return x | {op} as keep"))
    assert same_graph(remove_identity(g), g)


def test_remove_identity_leaves_its_input_alone():
    g = load_graph(net("    return x | dropout | relu"))
    remove_identity(g)
    assert [n.op for n in g.nodes()] == ["input", "dropout", "relu"]
