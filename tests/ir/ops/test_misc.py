"""Misc ops (rot90, flip, glu, prelu, amax, vector_norm, dynamic_filter, parameter): shape rules
and errors, and the torch lowering checked against independent numpy references
(np.rot90 / np.flip, the GLU and PReLU formulas, an explicit per-pixel loop)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from convdsl.backends.torch import build_module
from convdsl.backends.torch.lowering import TORCH_LOWERINGS
from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.ops import OPS, misc
from convdsl.ir.optable import Cost
from convdsl.ir.verify import verify
from convdsl.lang.elaborate import elaborate
from opcheck import infer1, one_op_program, run_infer

NAMES = [op.name for op in misc.OPS]


def build(op: str, *shapes, seed: int = 0):
    """A network of one op (named `op`) on inputs of the given shapes; random normal parameters."""
    params = ", ".join(f"x{i}: f32[{', '.join(str(d) for d in s)}]" for i, s in enumerate(shapes))
    src = "x0" if len(shapes) == 1 else "(" + ", ".join(f"x{i}" for i in range(len(shapes))) + ")"
    g = verify(elaborate(f"network t({params}) {{\n    return {src} | {op} as op\n}}\n"))
    rng = np.random.default_rng(seed)
    for name, arr in list(g.params.items()):
        g.params[name] = rng.standard_normal(arr.shape).astype(np.float32)
    return g, build_module(g)


def run(model, *xs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(x.astype(np.float32)) for x in xs)).double().numpy()


def rand(*shape, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("name", NAMES)
def test_op_is_documented_and_lowered(name):
    op = OPS[name]
    assert op.doc and op.example and op.shape_rule and name in TORCH_LOWERINGS


# ---- rot90 / flip -------------------------------------------------------------------------
@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 5])
def test_rot90_matches_numpy(k):
    x = rand(2, 3, 5, 7)
    g, m = build(f"rot90({k})", x.shape)
    want = np.rot90(x, k, axes=(2, 3))
    assert g.output_types()[0].shape == want.shape
    np.testing.assert_array_equal(run(m, x), want.astype(np.float32))


def test_rot90_other_plane_and_symbolic_sizes():
    assert infer1("rot90", ("N", 3, "H", "W"), 1) == ("N", 3, "W", "H")
    assert infer1("rot90", ("N", 3, "H", "W"), 2) == ("N", 3, "H", "W")
    x = rand(2, 3, 4, 6)
    _, m = build("rot90(3, dims=[-1, 1])", x.shape)
    np.testing.assert_array_equal(run(m, x), np.rot90(x, 3, axes=(3, 1)).astype(np.float32))


def test_rot90_errors():
    with pytest.raises(CDLTypeError, match="two dims"):
        infer1("rot90", (2, 3, 4, 4), 1, dims=[2])
    with pytest.raises(ShapeError, match="out of range"):
        infer1("rot90", (2, 3, 4), 1, dims=[2, 3])
    with pytest.raises(CDLTypeError, match="repeat"):
        infer1("rot90", (2, 3, 4, 4), 1, dims=[2, -2])


@pytest.mark.parametrize("dims", [-1, [2, 3], [0, 1, 3]])
def test_flip_matches_numpy(dims):
    x = rand(2, 3, 4, 5)
    _, m = build(f"flip({dims})", x.shape)
    axes = (dims,) if isinstance(dims, int) else tuple(dims)
    np.testing.assert_array_equal(run(m, x), np.flip(x, axis=axes).astype(np.float32))


# ---- glu -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,shape", [(1, (2, 6, 5)), (-1, (3, 4, 10)), (2, (1, 3, 4, 7))])
def test_glu_matches_formula(dim, shape):
    x = rand(*shape)
    g, m = build(f"glu(dim={dim})", shape)
    a, b = np.split(x, 2, axis=dim)
    want = a / (1 + np.exp(-b))
    assert g.output_types()[0].shape == want.shape
    np.testing.assert_allclose(run(m, x), want, rtol=1e-5, atol=1e-6)


def test_glu_odd_size_is_a_shape_error():
    with pytest.raises(ShapeError, match="odd size 5"):
        infer1("glu", (2, 5, 8), dim=1)
    with pytest.raises(ShapeError, match="static"):
        infer1("glu", (2, "C", 8), dim=1)


# ---- prelu ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,shared", [((2, 4, 3, 5), False), ((3, 6), False), ((2, 4, 7), True)])
def test_prelu_matches_formula(shape, shared):
    x = rand(*shape)
    g, m = build(f"prelu(shared={'true' if shared else 'false'})", shape)
    a = g.params["op.weight"].astype(np.float64)
    assert a.shape == ((1,) if shared else (shape[1],))
    slope = a.reshape((1, -1) + (1,) * (len(shape) - 2))
    np.testing.assert_allclose(run(m, x), np.where(x > 0, x, slope * x), rtol=1e-5, atol=1e-6)


def test_prelu_init_and_torch_keys():
    g = verify(elaborate(one_op_program("prelu", [(2, 8, 4, 4)], init=0.1)))
    (name,) = g.params.names()
    assert name.endswith(".weight") and np.allclose(g.params[name], 0.1)
    assert set(build_module(g).state_dict()) == set(g.params.names())


# ---- amax ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dims,keep", [(1, True), ([2, 3], False), (-1, False)])
def test_amax_matches_numpy(dims, keep):
    x = rand(2, 3, 4, 5)
    g, m = build(f"amax({dims}, keepdim={'true' if keep else 'false'})", x.shape)
    want = np.amax(x, axis=(dims,) if isinstance(dims, int) else tuple(dims), keepdims=keep)
    assert g.output_types()[0].shape == want.shape
    np.testing.assert_allclose(run(m, x), want, rtol=1e-6)


def test_amax_symbolic_and_cost():
    assert infer1("amax", ("N", 8, "H", "W"), 1, keepdim=True) == ("N", 1, "H", "W")
    from convdsl.ir.types import TensorType
    x, y = TensorType((2, 8, 4, 4)), TensorType((2, 1, 4, 4))
    assert OPS["amax"].cost({"dims": 1, "keepdim": True}, [x], [y]) == Cost(0, 256)


# ---- vector_norm ---------------------------------------------------------------------------
@pytest.mark.parametrize("dims,p,keep", [([1, 2], 2.0, True), (-1, 1.0, False), ([0, 2, 3], 3.0, False)])
def test_vector_norm_matches_numpy(dims, p, keep):
    x = rand(2, 3, 4, 5)
    g, m = build(f"vector_norm({dims}, p={p}, keepdim={'true' if keep else 'false'})", x.shape)
    axes = (dims,) if isinstance(dims, int) else tuple(dims)
    want = (np.abs(x) ** p).sum(axis=axes, keepdims=keep) ** (1 / p)
    assert g.output_types()[0].shape == want.shape
    np.testing.assert_allclose(run(m, x), want, rtol=1e-5)


def test_vector_norm_rejects_nonpositive_p():
    with pytest.raises(CDLTypeError, match=r"p must be in \(0, inf\]"):
        infer1("vector_norm", (2, 3), 1, p=0.0)


# ---- dynamic_filter ------------------------------------------------------------------------
def dynamic_filter_ref(x: np.ndarray, w: np.ndarray, k: int, d: int) -> np.ndarray:
    """The definition, one output pixel at a time."""
    n, c, h, wd = x.shape
    groups = w.shape[1] // (k * k)
    per = c // groups
    r = k // 2
    out = np.zeros_like(x)
    for b in range(n):
        wb = w[b if w.shape[0] == n else 0]
        for ch in range(c):
            grp = ch // per
            for i in range(h):
                for j in range(wd):
                    s = 0.0
                    for ty in range(k):
                        for tx in range(k):
                            yi, xj = i + d * (ty - r), j + d * (tx - r)
                            if 0 <= yi < h and 0 <= xj < wd:
                                s += wb[grp * k * k + ty * k + tx, i, j] * x[b, ch, yi, xj]
                    out[b, ch, i, j] = s
    return out


@pytest.mark.parametrize("n,nk,c,groups,k,d,h,w", [
    (2, 2, 3, 1, 3, 1, 5, 6),     # KPN-style: one kernel per pixel for all channels
    (2, 1, 4, 4, 3, 1, 4, 5),     # TVConv-style: depthwise, kernels shared by the batch
    (1, 1, 6, 2, 5, 2, 7, 5),     # grouped, dilated, odd sizes
])
def test_dynamic_filter_matches_loop(n, nk, c, groups, k, d, h, w):
    x, kern = rand(n, c, h, w, seed=2), rand(nk, groups * k * k, h, w, seed=3)
    g, m = build(f"dynamic_filter({k}, dilation={d})", x.shape, kern.shape)
    assert g.output_types()[0].shape == x.shape
    np.testing.assert_allclose(run(m, x, kern), dynamic_filter_ref(x, kern, k, d), rtol=1e-4, atol=1e-5)


def test_dynamic_filter_symbolic_batch_and_cost():
    assert run_infer("dynamic_filter", [("N", 8, 6, 6), (1, 72, 6, 6)], 3) == [("N", 8, 6, 6)]
    from convdsl.ir.types import TensorType
    x = TensorType((2, 8, 6, 6))
    assert OPS["dynamic_filter"].cost({"k": 3, "dilation": 1}, [x, TensorType((2, 9, 6, 6))], [x]) == \
        Cost(2 * 8 * 36 * 9, 2 * 2 * 8 * 36 * 9)


@pytest.mark.parametrize("shapes,k,match", [
    ([(2, 8, 6, 6), (2, 10, 6, 6)], 3, "multiple of k\\*k"),
    ([(2, 8, 6, 6), (2, 27, 6, 6)], 3, "do not divide 8 channels"),
    ([(2, 8, 6, 6), (2, 9, 6, 5)], 3, "width"),
    ([(2, 8, 6, 6), (3, 9, 6, 6)], 3, "batch"),
    ([(2, 8, 6, 6), (2, 9, 6, 6)], 2, "odd"),
    ([(2, 8, 6), (2, 9, 6, 6)], 3, "rank"),
])
def test_dynamic_filter_errors(shapes, k, match):
    with pytest.raises((ShapeError, CDLTypeError), match=match):
        run_infer("dynamic_filter", shapes, k)


# ---- parameter -----------------------------------------------------------------------------
def test_parameter_is_its_weight_whatever_the_input():
    g, m = build("parameter([1, 3, 4, 4])", (2, 5, 8))
    (out,) = g.output_types()
    assert out.shape == (1, 3, 4, 4)
    w = g.params["op.weight"]
    np.testing.assert_array_equal(run(m, rand(2, 5, 8)), w)
    np.testing.assert_array_equal(run(m, 7 * rand(2, 5, 8, seed=9)), w)
    assert set(m.state_dict()) == {"op.weight"}


@pytest.mark.parametrize("init,check", [
    ("zeros", lambda a: np.all(a == 0)),
    ("ones", lambda a: np.all(a == 1)),
    ("const", lambda a: np.allclose(a, 0.5)),
    ("uniform", lambda a: np.all(np.abs(a) <= 0.5)),
    ("trunc_normal", lambda a: np.all(np.abs(a) <= 1.0)),
    ("normal", lambda a: 0.3 < a.std() < 0.7),
])
def test_parameter_inits(init, check):
    g = elaborate(one_op_program("parameter", [(1, 4)], [64, 64], init=init, scale=0.5))
    (name,) = g.params.names()
    assert check(g.params[name])


def test_parameter_errors_and_independent_copies():
    with pytest.raises(CDLTypeError, match="positive"):
        infer1("parameter", (1, 4), [3, 0])
    src = "network t(x: f32[N, 4]) {\n    a = x | parameter([4]) as a\n    b = x | parameter([4]) as b\n" \
          "    return a + b\n}\n"
    g = verify(elaborate(src))
    assert sorted(g.params.names()) == ["a.weight", "b.weight"]
    from convdsl.passes.cse import cse
    assert len(verify(cse(g)).params.names()) == 2  # owners of parameters are never merged


# ---- every example elaborates --------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_example_elaborates(name):
    ex = OPS[name].example
    if ex.startswith("("):  # "(x, kernels) | dynamic_filter(3)"
        body = "x = image\n    kernels = image | conv2d(9, 3, pad=1)\n    return " + ex
    else:
        body = f"x = image\n    return {ex if ex.startswith('x |') else 'x | ' + ex}"
    g = verify(elaborate(f"network t(image: f32[N, 8, 14, 14]) {{\n    {body}\n}}\n"))
    assert g.output_types()
