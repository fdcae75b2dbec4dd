"""const_fold: subgraphs of parameters alone become parameters; affine/neg chains
become one affine (or nothing), view chains one reshape (or nothing); a shared
intermediate blocks the fold."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from convdsl.api import load_graph
from convdsl.backends.torch import build_module
from convdsl.ir.graph import Value
from convdsl.ir.ops import OPS
from convdsl.ir.types import Size, TensorType
from convdsl.ir.verify import verify
from convdsl.passes import const_fold, dce
from convdsl.passes.const_fold import reshape_spec

from .zoo import assert_same_function, same_graph


def net(body: str, x: str = "f32[N, 4, 6]") -> str:
    return f"network net(x: {x}) {{\n{body}\n}}\n"


def test_affine_chain_folds_to_one_affine():
    g = load_graph(net("    return -(relu(x) * 2.0 + 1.0) * 0.5 - 3.0"))
    c = verify(const_fold(g))
    assert [n.op for n in c.nodes()] == ["input", "relu", "affine"]
    (aff,) = [n for n in c.nodes() if n.op == "affine"]
    assert aff.attrs == {"scale": -1.0, "shift": -3.5}  # (-(2r + 1)) * 0.5 - 3 = -r - 3.5
    assert c.outputs == [Value(aff.id, 0)]
    assert_same_function(c, g, tol=1e-6)


def test_affine_chain_that_cancels_disappears():
    g = load_graph(net("    return (relu(x) * 4.0 + 2.0) * 0.25 - 0.5"))
    c = verify(const_fold(g))
    assert [n.op for n in c.nodes()] == ["input", "relu"]
    assert_same_function(c, g, tol=1e-6)  # the unfolded chain rounds on the way


def test_shared_intermediate_is_not_folded():
    g = load_graph(net("""    y = x * 2.0
    return y + 1.0, y"""))
    assert same_graph(const_fold(g), g)


def test_view_chain_folds_to_one_reshape():
    g = load_graph(net("    return relu(x) | unsqueeze(1) | flatten(start=2) | reshape([0, 2, 12]) as r",
                       "f32[N, 4, 6]"))
    c = verify(const_fold(g))
    assert [n.op for n in c.nodes()] == ["input", "relu", "reshape"]
    assert c.node("r").attrs == {"shape": (0, 2, 12)} and c.node("r").type == TensorType(("N", 2, 12))
    assert_same_function(c, g, tol=0.0)


def test_view_chain_back_to_the_input_shape_disappears():
    g = load_graph(net("    return relu(x) | flatten | reshape([0, 4, 6]) | sigmoid as s"))
    c = verify(const_fold(g))
    assert [n.op for n in c.nodes()] == ["input", "relu", "sigmoid"]
    assert_same_function(c, g, tol=0.0)


def test_reshape_spec_keeps_symbolic_dims():
    t = TensorType
    assert reshape_spec(t(("N", 4, 6)), t(("N", 24))) == (0, 24)
    assert reshape_spec(t(("N", 3, "H", "W")), t(("N", 3, "H", "W", 1))) == (0, 3, 0, 0, 1)
    assert reshape_spec(t((2, "L", 6)), t((2, 6, "L"))) == (2, 6, -1)  # the -1 takes the symbol
    assert reshape_spec(t(("N", "L", 6)), t(("L", "N", 6))) == (-1, Size("N"), 6)  # a second one is a size
    assert reshape_spec(t(("N", 64)), t(("N", "L"))) is None  # no reshape makes an L


def test_view_chain_with_two_symbolic_sizes_folds_to_one_reshape():
    """[N, L, 64] -> [2*N, 4*L, 8] -> [L, N, 64] is one reshape ([-1, N, 64]), which every
    backend reads from the input's shape when it runs."""
    g = load_graph(net("    return x | reshape([2 * N, 4 * L, 8]) | reshape([L, N, 64]) as v", "f32[N, L, 64]"))
    c = verify(const_fold(g))
    assert [n.op for n in c.nodes()] == ["input", "reshape"] and c.node("v").attrs == {"shape": (-1, Size("N"), 64)}
    x = torch.randn(2, 3, 64)  # N = 2, L = 3 (the shared inputs bind N and L to 1)
    torch.testing.assert_close(build_module(c)(x), x.reshape(3, 2, 64), rtol=0, atol=0)


def test_view_chain_with_symbolic_spatial_dims():
    g = load_graph(net("    return x | flatten(start=2) | unsqueeze(-1) as u", "f32[N, 3, H, W]"))
    c = verify(const_fold(g))
    assert [n.op for n in c.nodes()] == ["input", "reshape"] and c.node("u").attrs == {"shape": (0, 3, -1, 1)}
    assert_same_function(c, g, tol=0.0)


# ---- constant subgraphs (from the `parameter` op) ----------------------------------------
GATED = net("""    gate = x | parameter([4, 1], init=const, scale=1.0) as lam | sigmoid as sig
    pos = x | parameter([4, 6]) as table | softmax(-1) as pos
    return x * (1 - gate) + pos * gate""")


@pytest.mark.skipif("parameter" not in OPS, reason="no parameter op in this op table")
def test_constant_subgraphs_become_parameters():
    g = load_graph(GATED)
    c = verify(dce(const_fold(g)))
    # sigmoid, softmax, 1 - gate and pos * gate are all computed at compile time
    assert sorted(n.op for n in c.nodes()) == ["add", "input", "mul", "parameter", "parameter"]
    one_minus_gate, pos_gate = sorted((n for n in c.nodes() if n.op == "parameter"), key=lambda n: n.type.shape)
    assert one_minus_gate.params == {"weight": f"{one_minus_gate.id}.weight"}
    assert not any(k.startswith(("lam.", "table.")) for k in c.params.names())
    sig = 1.0 / (1.0 + np.exp(-1.0))
    table = g.params["table.weight"].astype(np.float64)
    soft = np.exp(table) / np.exp(table).sum(-1, keepdims=True)
    np.testing.assert_allclose(c.params[one_minus_gate.params["weight"]], np.full((4, 1), 1 - sig), rtol=1e-6)
    np.testing.assert_allclose(c.params[pos_gate.params["weight"]], soft * sig, rtol=1e-6)
    assert_same_function(c, g, tol=1e-6)
    # the folded graph prints back to CDL and re-elaborates with the same parameter names
    from convdsl.lang.printer import print_graph

    assert sorted(load_graph(print_graph(c)).params.names()) == sorted(c.params.names())


@pytest.mark.skipif("parameter" not in OPS, reason="no parameter op in this op table")
def test_values_that_depend_on_inputs_are_not_folded():
    g = load_graph(net("    return x * (x | parameter([4, 6]) as p)"))
    assert same_graph(const_fold(g), g)
