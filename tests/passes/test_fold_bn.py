"""fold_bn: structure (no foldable batchnorm left, ids and parameter names kept)
and numbers (outputs within zoo.TOL of the unfolded torch module)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from convdsl.api import load_graph
from convdsl.ir.graph import Value
from convdsl.ir.verify import verify
from convdsl.passes import fold_bn

from .zoo import EXAMPLES, TOL, assert_same_function, example, inputs_for, outputs, param_fingerprint, \
    reference, rel_diff, same_graph, with_bn_stats


# what fold_bn folds, written out here rather than read from the op table it works from
BATCHNORMS = {"batchnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d"}
FOLDABLE = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear"}


def foldable_pairs(g) -> dict[str, str]:
    """batchnorm id -> producer id for every pair fold_bn should fold."""
    pairs = {}
    for node in g.nodes():
        if node.op not in BATCHNORMS:
            continue
        (src,) = g.inputs_of(node.id)
        producer = g.node(src.node)
        if producer.op in FOLDABLE and g.users(src) == [(node.id, 0)] and not g.is_output(src) \
                and (producer.op != "linear" or producer.type.rank == 2):
            pairs[node.id] = producer.id
    return pairs


def net(body: str, x: str = "f32[N, 4, 9, 9]") -> str:
    return f"network net(x: {x}) {{\n{body}\n}}\n"


def folded(src: str, seed: int = 0):
    g = with_bn_stats(load_graph(src), seed)
    f = verify(fold_bn(g))
    return g, f


# ---- the model zoo -----------------------------------------------------------------
@pytest.mark.zoo
@pytest.mark.parametrize("name", EXAMPLES)
def test_fold_bn_on_example(name):
    g = example(name)
    pairs = foldable_pairs(g)
    f = verify(fold_bn(g))
    # structure: every foldable batchnorm is gone, its producer kept its id and got a bias
    assert not foldable_pairs(f)
    assert not any(bn in f for bn in pairs)
    assert len(f) == len(g) - len(pairs)
    for bn, producer in pairs.items():
        node = f.node(producer)
        assert node.attrs["bias"] is True
        assert node.params == {"weight": f"{producer}.weight", "bias": f"{producer}.bias"}
        assert not any(k.startswith(bn + ".") for k in f.params.names())
    # numbers (a network without batchnorm must come back as the same program)
    if not pairs:
        assert same_graph(f, g)
        return
    d = rel_diff(outputs(f, inputs_for(g)), reference(name))
    assert d <= TOL, f"{name}: relative difference {d:.3g}"


@pytest.mark.parametrize("name", ["digits_mobilenet", "unet"])
def test_fold_bn_leaves_its_input_alone(name):
    g = example(name)
    before, nodes = param_fingerprint(g), [(n.id, n.op, dict(n.attrs), dict(n.params)) for n in g.nodes()]
    fold_bn(g)
    assert param_fingerprint(g) == before
    assert [(n.id, n.op, n.attrs, n.params) for n in g.nodes()] == nodes


# ---- every producer kind -------------------------------------------------------------
CONVS = [
    ("conv1d(6, 3, pad=1)", "f32[N, 4, 9]"),
    ("conv1d(8, 5, stride=2, groups=2, bias=false)", "f32[N, 4, 17]"),
    ("conv2d(6, 3, pad=1, bias=false)", "f32[N, 4, 9, 9]"),
    ("conv2d(8, 3, stride=2, dilation=2, groups=4, pad=same)", "f32[N, 4, 9, 9]"),
    ("conv2d(k=3, groups=depthwise, pad=1, bias=false)", "f32[N, 4, 9, 9]"),
    ("conv2d(6, [3, 1], pad=[1, 0], pad_mode=circular)", "f32[N, 3, 7, 8]"),
    ("conv3d(6, 3, pad=1, groups=2)", "f32[N, 4, 5, 6, 7]"),
    ("conv_transpose1d(6, 4, stride=2, bias=false)", "f32[N, 4, 9]"),
    ("conv_transpose2d(6, 3, stride=2, pad=1, output_pad=1, groups=2)", "f32[N, 4, 7, 7]"),
    ("conv_transpose2d(8, 2, stride=2, groups=4, bias=false)", "f32[N, 4, 5, 6]"),
    ("conv_transpose3d(6, 3, stride=2, groups=2, dilation=2, bias=false)", "f32[N, 4, 3, 4, 5]"),
    ("linear(7)", "f32[N, 5]"),
    ("linear(7, bias=false)", "f32[N, 5]"),
]


@pytest.mark.parametrize("op, x", CONVS, ids=[c[0] for c in CONVS])
@pytest.mark.parametrize("bn", ["batchnorm", "batchnorm(eps=0.001, affine=false)"])
def test_fold_each_producer(op, x, bn):
    g, f = folded(net(f"    return x | {op} as conv | {bn} as bn", x))
    assert [n.op for n in f.nodes()] == ["input", op.split("(")[0]]
    assert f.node("conv").attrs["bias"] is True
    assert sorted(f.params.names()) == ["conv.bias", "conv.weight"]
    assert f.outputs == [Value("conv", 0)] and f.output_names == g.output_names
    assert_same_function(f, g)


@st.composite
def conv_case(draw):
    nd = draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    groups = draw(st.sampled_from([1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k, stride = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    bias = draw(st.booleans())
    b = "true" if bias else "false"
    op = (f"conv_transpose{nd}d({cout}, {k}, stride={stride}, groups={groups}, bias={b})" if transposed
          else f"conv{nd}d({cout}, {k}, stride={stride}, pad={k // 2}, groups={groups}, bias={b})")
    return op, f"f32[N, {cin}, {', '.join(['5'] * nd)}]"


@settings(max_examples=25, deadline=None)
@given(case=conv_case(), seed=st.integers(0, 2**16))
def test_fold_random_convs(case, seed):
    op, x = case
    g, f = folded(net(f"    return x | {op} as conv | batchnorm as bn", x), seed)
    assert [n.op for n in f.nodes()] == ["input", op.split("(")[0]]
    assert_same_function(f, g, seed=seed)


def test_fold_inside_a_network_rewires_every_reader():
    src = net("""    y = x | conv2d(6, 3, pad=1, bias=false) as conv | batchnorm as bn
    a = y | relu
    b = y | sigmoid
    return a + b, y""")
    g, f = folded(src)
    assert "bn" not in f and [u for u, _ in f.users(Value("conv", 0))] == ["relu", "sigmoid"]
    assert f.outputs[1] == Value("conv", 0)
    assert_same_function(f, g)


# ---- when not to fold ------------------------------------------------------------------
def test_skipped_when_conv_output_has_another_reader():
    src = net("""    y = x | conv2d(6, 3, pad=1) as conv
    z = y | batchnorm as bn
    return z + y""")
    g, f = folded(src)
    assert [n.op for n in f.nodes()] == [n.op for n in g.nodes()]
    assert "bn" in f and f.params.names() == g.params.names()
    assert_same_function(f, g, tol=0.0)


def test_skipped_when_conv_output_is_a_graph_output():
    src = net("""    y = x | conv2d(6, 3, pad=1) as conv
    return y, y | batchnorm as bn""")
    g, f = folded(src)
    assert "bn" in f and f.node("conv").params == g.node("conv").params
    assert_same_function(f, g, tol=0.0)


def test_skipped_when_batchnorm_follows_no_conv():
    g, f = folded(net("    return x | relu | batchnorm as bn"))
    assert "bn" in f


def test_linear_over_tokens_is_not_folded():
    # [N, L, C]: batchnorm1d normalizes dim 1 (L), linear's features are dim -1
    g, f = folded(net("    return x | linear(6) as fc | batchnorm as bn", "f32[N, 5, 4]"))
    assert "bn" in f
    assert_same_function(f, g, tol=0.0)


def test_fold_does_not_write_to_input_arrays():
    g = with_bn_stats(load_graph(net("    return x | conv2d(6, 3, pad=1) as conv | batchnorm as bn")))
    w = g.params["conv.weight"]
    copy = w.copy()
    f = fold_bn(g)
    assert np.array_equal(w, copy) and g.params["conv.weight"] is w
    assert f.params["conv.weight"] is not w and "bn" in g
