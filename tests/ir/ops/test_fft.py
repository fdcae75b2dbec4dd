"""FFT mixing ops (global_filter, adaptive_filter, fft_conv): shape rules and
errors, and the torch lowering checked against independent numpy references
(direct convolution sums, the AFF mixer written out in real arithmetic)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from convdsl.backends.torch import build_module, generate
from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.ops import OPS
from convdsl.ir.ops.fft import fft_flops
from convdsl.lang.elaborate import elaborate
from opcheck import infer1, run_infer


def build(op: str, shape, seed: int = 0, scale: float = 1.0):
    """A one-op network (the node is named `op`) with normal(0, scale) float parameters."""
    dims = ", ".join(str(d) for d in shape)
    g = elaborate(f"network t(x: f32[{dims}]) {{\n    return x | {op} as op\n}}")
    rng = np.random.default_rng(seed)
    for name, arr in list(g.params.items()):
        g.params[name] = (scale * rng.standard_normal(arr.shape)).astype(np.float32)
    return g, build_module(g)


def run(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x.astype(np.float32))).double().numpy()


def param(g, name: str) -> np.ndarray:
    return np.asarray(g.params[f"op.{name}"], dtype=np.float64)


# ---- fft_conv -----------------------------------------------------------------------------
@pytest.mark.parametrize("L", [1, 7, 100, 257])
def test_fft_conv_is_causal_convolution(L):
    g, m = build("fft_conv(skip=true)", (3, 5, L))
    x = np.random.default_rng(1).standard_normal((3, 5, L))
    k, b, D = param(g, "kernel"), param(g, "bias"), param(g, "D")
    assert k.shape == (5, L)
    want = np.empty_like(x)
    for n in range(3):
        for c in range(5):
            want[n, c] = np.convolve(x[n, c], k[c])[:L] + b[c] + D[c] * x[n, c]
    np.testing.assert_allclose(run(m, x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("L,K", [(100, 13), (9, 9), (31, 4)])
def test_fft_conv_short_kernel_without_bias(L, K):
    g, m = build(f"fft_conv(kernel_len={K}, bias=false)", (2, 3, L))
    assert sorted(g.params.names()) == ["op.kernel"]
    x = np.random.default_rng(2).standard_normal((2, 3, L))
    k = param(g, "kernel")
    want = np.stack([[np.convolve(x[n, c], k[c])[:L] for c in range(3)] for n in range(2)])
    np.testing.assert_allclose(run(m, x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("L,K", [(7, 7), (20, 5), (20, 6), (9, 17)])
def test_fft_conv_noncausal_kernel_is_centered(L, K):
    g, m = build(f"fft_conv(kernel_len={K}, causal=false, bias=false)", (2, 3, L))
    x = np.random.default_rng(3).standard_normal((2, 3, L))
    k = param(g, "kernel")
    # y[t] = sum_j k[j] x[t - j + K//2]
    want = np.zeros_like(x)
    for t in range(L):
        for j in range(K):
            s = t - j + K // 2
            if 0 <= s < L:
                want[..., t] += k[:, j] * x[..., s]
    np.testing.assert_allclose(run(m, x), want, rtol=1e-4, atol=1e-4)


def test_fft_conv_symbolic_length_runs_any_length():
    g, m = build("fft_conv(kernel_len=8)", ("N", 3, "L"))
    assert g.output_types()[0].shape == ("N", 3, "L")
    k, b = param(g, "kernel"), param(g, "bias")
    for L in (5, 21):
        x = np.random.default_rng(L).standard_normal((2, 3, L))
        want = np.stack([[np.convolve(x[n, c], k[c])[:L] + b[c] for c in range(3)] for n in range(2)])
        np.testing.assert_allclose(run(m, x), want, rtol=1e-4, atol=1e-4)


def test_fft_conv_params_and_init():
    spec = elaborate("network t(x: f32[2, 4, 16]) {\n    return x | fft_conv(skip=true) as op\n}").params
    k = spec["op.kernel"]
    assert k.shape == (4, 16) and np.abs(k).max() <= 0.25  # uniform(+-1/sqrt(16))
    assert spec["op.D"].shape == (4,)


def test_fft_conv_shape_errors():
    with pytest.raises(ShapeError, match="rank-3"):
        infer1("fft_conv", (2, 16))
    with pytest.raises(ShapeError, match="longer than the sequence"):
        infer1("fft_conv", (2, 4, 10), kernel_len=11)
    assert infer1("fft_conv", (2, 4, 10), kernel_len=19, causal=False) == (2, 4, 10)
    with pytest.raises(ShapeError, match="kernel_len when the sequence length is symbolic"):
        infer1("fft_conv", (2, 4, "L"))
    with pytest.raises(ShapeError, match="static channel count"):
        infer1("fft_conv", (2, "C", 10))
    with pytest.raises(CDLTypeError, match="kernel_len must be positive"):
        infer1("fft_conv", (2, 4, 10), kernel_len=0)


# ---- global_filter ------------------------------------------------------------------------
def circular_conv2d(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """y[n, c, i, j] = sum_{a, b} x[n, c, a, b] k[c, (i - a) % H, (j - b) % W], summed directly."""
    H, W = x.shape[-2:]
    y = np.zeros_like(x)
    for a in range(H):
        for b in range(W):
            y += x[..., a, b][..., None, None] * np.roll(k, (a, b), axis=(-2, -1))
    return y


@pytest.mark.parametrize("H,W", [(5, 7), (6, 4), (1, 9), (8, 8)])
def test_global_filter_is_circular_convolution(H, W):
    g, m = build("global_filter()", (2, 3, H, W))
    w = param(g, "complex_weight")
    assert w.shape == (3, H, W // 2 + 1, 2)
    # the filter's inverse FFT is the spatial kernel (norm="ortho" both ways cancels)
    kernel = np.fft.irfft2(w[..., 0] + 1j * w[..., 1], s=(H, W))
    x = np.random.default_rng(4).standard_normal((2, 3, H, W))
    np.testing.assert_allclose(run(m, x), circular_conv2d(x, kernel), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_global_filter_channels_last_matches_channels_first():
    g1, m1 = build("global_filter()", (2, 3, 5, 6), seed=7)
    g2, m2 = build("global_filter(layout=nhwc)", (2, 5, 6, 3), seed=7)
    np.testing.assert_array_equal(param(g1, "complex_weight"), param(g2, "complex_weight"))
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 6))
    np.testing.assert_allclose(run(m2, x.transpose(0, 2, 3, 1)), run(m1, x).transpose(0, 2, 3, 1), atol=1e-6)


def test_global_filter_default_init_is_gfnet():
    g = elaborate("network t(x: f32[1, 32, 14, 14]) {\n    return x | global_filter() as op\n}")
    w = g.params["op.complex_weight"]
    assert w.shape == (32, 14, 8, 2)
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002


def test_global_filter_sizes_and_errors():
    assert infer1("global_filter", ("N", 8, "H", "W"), h=14, w=14) == ("N", 8, "H", "W")
    assert infer1("global_filter", (2, 8, 14, 14), h=14) == (2, 8, 14, 14)
    with pytest.raises(ShapeError, match="rank-4"):
        infer1("global_filter", (2, 8, 14))
    with pytest.raises(ShapeError, match="h=12 does not match"):
        infer1("global_filter", (2, 8, 14, 14), h=12)
    with pytest.raises(ShapeError, match="static width"):
        infer1("global_filter", (2, 8, 14, "W"))
    with pytest.raises(ShapeError, match="static channel count"):
        infer1("global_filter", (2, 14, 14, "C"), layout="nhwc")
    with pytest.raises(CDLTypeError, match="positive"):
        infer1("global_filter", (2, 8, "H", 14), h=0)


# ---- adaptive_filter ----------------------------------------------------------------------
def aff_reference(x, w1, b1, w2, b2, blocks, sparsity, slope, residual):
    """AFFNet's AFNO2D_channelfirst forward, written out in real arithmetic with numpy."""
    n, c, H, W = x.shape
    X = np.fft.rfft2(x, norm="ortho").reshape(n, blocks, c // blocks, H, -1)
    xr, xi = X.real, X.imag

    def mm(t, w):  # per block: [n, k, i, h, f] x [k, i, o] -> [n, k, o, h, f]
        return np.stack([np.tensordot(t[:, b], w[b], axes=([1], [0])).transpose(0, 3, 1, 2)
                         for b in range(blocks)], axis=1)

    def lrelu(t):
        return np.where(t > 0, t, slope * t)

    def shrink(t):
        return np.sign(t) * np.maximum(np.abs(t) - sparsity, 0)

    bias = lambda b: b[None, :, :, None, None]  # noqa: E731
    o1r = lrelu(mm(xr, w1[0]) - mm(xi, w1[1]) + bias(b1[0]))
    o1i = lrelu(mm(xi, w1[0]) + mm(xr, w1[1]) + bias(b1[1]))
    o2r = shrink(mm(o1r, w2[0]) - mm(o1i, w2[1]) + bias(b2[0]))
    o2i = shrink(mm(o1i, w2[0]) + mm(o1r, w2[1]) + bias(b2[1]))
    mask = (o2r + 1j * o2i).reshape(n, c, H, -1)
    y = np.fft.irfft2(mask * X.reshape(n, c, H, -1), s=(H, W), norm="ortho")
    return y + x if residual else y


@pytest.mark.parametrize("op,blocks,factor,residual", [
    ("adaptive_filter(blocks=3, hidden_factor=2, sparsity=0.3)", 3, 2, True),
    ("adaptive_filter(blocks=1, sparsity=0.3, slope=0.2, residual=false)", 1, 1, False),
])
def test_adaptive_filter_matches_reference(op, blocks, factor, residual):
    g, m = build(op, (2, 6, 5, 7), scale=0.5)
    a = g.node("op").attrs
    p = {k: param(g, k) for k in ("w1", "b1", "w2", "b2")}
    assert p["w1"].shape == (2, blocks, 6 // blocks, 6 // blocks * factor)
    assert p["b2"].shape == (2, blocks, 6 // blocks)
    x = np.random.default_rng(6).standard_normal((2, 6, 5, 7))
    want = aff_reference(x, **p, blocks=blocks, sparsity=a["sparsity"], slope=a["slope"], residual=residual)
    np.testing.assert_allclose(run(m, x), want, rtol=1e-4, atol=1e-5)


def test_adaptive_filter_any_resolution_and_errors():
    assert infer1("adaptive_filter", ("N", 16, "H", "W")) == ("N", 16, "H", "W")
    with pytest.raises(ShapeError, match="blocks=8 must divide the channels"):
        infer1("adaptive_filter", (2, 12, 8, 8))
    with pytest.raises(CDLTypeError, match="must be positive"):
        infer1("adaptive_filter", (2, 12, 8, 8), blocks=0)
    with pytest.raises(CDLTypeError, match="soft-shrink"):
        infer1("adaptive_filter", (2, 16, 8, 8), sparsity=-1.0)
    g, m = build("adaptive_filter(blocks=2, layout=nhwc)", ("N", "H", "W", 4))
    assert tuple(m(torch.randn(1, 3, 5, 4)).shape) == (1, 3, 5, 4)


# ---- all three ------------------------------------------------------------------------------
@pytest.mark.parametrize("op,shape", [("global_filter()", (2, 8, 6, 6)), ("adaptive_filter(blocks=4)", (2, 8, 6, 6)),
                                      ("fft_conv(kernel_len=5)", (2, 8, 12))])
def test_generated_source_is_standalone_and_keeps_shape(op, shape):
    g, m = build(op, shape)
    src = generate(g).source
    imports = [line.split()[1] for line in src.splitlines() if line.lstrip().startswith(("import ", "from "))]
    assert set(imports) <= {"torch", "torch.nn.functional", "math", "json", "struct", "os"}, imports
    out = m(torch.randn(*shape))
    assert tuple(out.shape) == shape
    assert sorted(k.split(".", 1)[1] for k in m.state_dict()) == sorted(OPS[g.node("op").op].params(
        g.node("op").attrs, [g.node("x").type]))


def test_costs_count_the_transforms():
    assert fft_flops(1) == 0 and fft_flops(8) == 5 * 8 * 3
    d = OPS["fft_conv"]
    from convdsl.ir.types import TensorType
    x = TensorType((2, 4, 16))
    attrs = dict(kernel_len=16, causal=True, bias=False, skip=False)
    cost = d.cost(attrs, [x], [x])
    n = 32  # zero-padded to L + K
    assert cost.flops == (2 * 8 + 4) * fft_flops(n) + 6 * 8 * (n // 2 + 1)
    assert run_infer("global_filter", [(2, 4, 8, 8)])  # cost runs inside run_infer


def test_fft_sizes_are_the_smallest_5_smooth_length_that_fits():
    from convdsl.backends.torch.runtime import fast_fft_len

    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 3000):
        m = fast_fft_len(n)
        assert m >= n and smooth(m) and not any(smooth(j) for j in range(n, m)), n
