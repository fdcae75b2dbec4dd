"""State-space ops (s4d, sgconv, selective_scan): shape rules and errors,
documented initializations, and the torch lowering checked against naive numpy
recurrences and direct convolutions."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from convdsl.backends.torch import build_module
from convdsl.backends.torch.runtime import SelectiveScan
from convdsl.errors import CDLTypeError, ShapeError
from convdsl.lang.elaborate import elaborate
from opcheck import infer1


def graph(op: str, shape):
    dims = ", ".join(str(d) for d in shape)
    return elaborate(f"network t(x: f32[{dims}]) {{\n    return x | {op} as op\n}}")


def param(g, name: str) -> np.ndarray:
    return np.asarray(g.params[f"op.{name}"], dtype=np.float64)


def run(model, x: np.ndarray, method: str = "forward") -> np.ndarray:
    with torch.no_grad():
        return getattr(model, method)(torch.from_numpy(x.astype(np.float32))).double().numpy()


def randomize(g, seed: int, **scales):
    """Replace the named parameters by normal(0, scale) draws."""
    rng = np.random.default_rng(seed)
    for name, scale in scales.items():
        arr = g.params[f"op.{name}"]
        g.params[f"op.{name}"] = (scale * rng.standard_normal(arr.shape)).astype(np.float32)


def causal_conv(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """y[n, c, t] = sum_j k[c, j] x[n, c, t - j], with np.convolve per row."""
    L = x.shape[-1]
    return np.stack([[np.convolve(x[n, c], k[c])[:L] for c in range(x.shape[1])] for n in range(x.shape[0])])


# ---- S4D ----------------------------------------------------------------------------------
def s4d_recurrence(g, x: np.ndarray) -> np.ndarray:
    """The S4D recurrence in complex128: h = dA h + dB u, y = 2 Re(C . h) + D u."""
    dt = np.exp(param(g, "log_dt"))[:, None]
    A = -np.exp(param(g, "log_A_real")) + 1j * param(g, "A_imag")
    C = param(g, "C")[..., 0] + 1j * param(g, "C")[..., 1]
    D = param(g, "D")
    dA = np.exp(dt * A)
    dB = (dA - 1) / A
    h = np.zeros(x.shape[:2] + A.shape[-1:], complex)
    y = np.empty_like(x)
    for t in range(x.shape[-1]):
        h = dA * h + dB * x[..., t, None]
        y[..., t] = 2 * (C * h).sum(-1).real + D * x[..., t]
    return y


@pytest.mark.parametrize("state,L", [(8, 37), (2, 1), (16, 100)])
def test_s4d_convolution_equals_recurrence(state, L):
    g = graph(f"s4d(state={state}, dt_min=0.01, dt_max=0.5)", (2, 3, L))
    randomize(g, 0, C=1.0, D=1.0)
    m = build_module(g)
    x = np.random.default_rng(1).standard_normal((2, 3, L))
    want = s4d_recurrence(g, x)
    np.testing.assert_allclose(run(m, x), want, rtol=1e-4, atol=1e-4)  # FFT convolution form
    np.testing.assert_allclose(run(m.op, x, "recurrent"), want, rtol=1e-4, atol=1e-4)  # the helper's scan


@pytest.mark.parametrize("op", ["s4d(state=8)", "sgconv(kernel_dim=4)"])
def test_kernel_is_reused_at_inference_until_a_parameter_changes(op):
    g = graph(op, (2, 3, 33))
    m = build_module(g).eval()
    x = torch.randn(2, 3, 33)
    calls = []
    method = "kernel" if op.startswith("s4d") else "kernel_for"
    compute = getattr(m.op, method)

    def counting(length):
        calls.append(length)
        return compute(length)

    object.__setattr__(m.op, method, counting)  # an instance attribute shadows the method
    with torch.inference_mode():
        first = m(x)
        torch.testing.assert_close(m(x), first)
    assert calls == [33]  # computed once for two calls
    with torch.no_grad():
        m(x[..., :20])  # another length: a new kernel
        assert calls == [33, 20]
        m.op.D.mul_(0.5)  # an in-place update: recomputed
        changed = m(x)
    assert calls == [33, 20, 33]
    torch.testing.assert_close(changed, first - m.op.D[:, None] * x)  # D halved: D u drops by the new D u
    m(x).sum().backward()  # with gradients: never cached, and gradients reach the parameters
    assert calls[-1] == 33 and len(calls) == 4
    assert all(p.grad is not None for p in m.op.parameters())


@pytest.mark.parametrize("L", [25, 4100])  # 4100: the kernel is computed 2048 steps at a time
def test_s4d_kernel_is_the_impulse_response(L):
    g = graph("s4d(state=6, dt_min=0.0005, dt_max=0.002)", (1, 3, L))  # slow decay: a long kernel
    m = build_module(g)
    k = m.op.kernel(L).detach().double().numpy()
    impulse = np.zeros((1, 3, L))
    impulse[..., 0] = 1.0
    response = s4d_recurrence(g, impulse)
    response[..., 0] -= param(g, "D")
    np.testing.assert_allclose(k, response[0], rtol=1e-4, atol=1e-5)
    if L > 2048:  # the second piece is not negligible, so the comparison covers it
        assert np.abs(response[0][:, 2048:]).max() > 1e-3


def test_s4d_bidirectional_is_forward_plus_flipped():
    g1, g2 = graph("s4d(state=8)", (2, 3, 19)), graph("s4d(state=8, bidirectional=true)", (2, 3, 19))
    assert g1.params.names() == [n for n in g2.params.names()]
    for g in (g1, g2):
        randomize(g, 3, C=1.0, D=1.0)
    m1, m2 = build_module(g1), build_module(g2)
    x = np.random.default_rng(2).standard_normal((2, 3, 19))
    want = run(m1, x) + run(m1, x[..., ::-1].copy())[..., ::-1]
    np.testing.assert_allclose(run(m2, x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(m2.op, x, "recurrent"), want, rtol=1e-4, atol=1e-4)


def test_s4d_init_is_s4d_lin():
    g = graph("s4d(state=8, dt_min=0.002, dt_max=0.05)", ("N", 64, "L"))
    assert g.output_types()[0].shape == ("N", 64, "L")
    np.testing.assert_allclose(np.exp(param(g, "log_A_real")), 0.5, rtol=1e-6)
    np.testing.assert_allclose(param(g, "A_imag"), np.broadcast_to(np.pi * np.arange(4), (64, 4)), rtol=1e-6)
    dt = np.exp(param(g, "log_dt"))
    assert dt.min() >= 0.002 * (1 - 1e-6) and dt.max() <= 0.05 * (1 + 1e-6)
    assert param(g, "C").shape == (64, 4, 2)
    m = build_module(g)  # symbolic length: the kernel follows the input
    assert tuple(m(torch.randn(2, 64, 11)).shape) == (2, 64, 11)


def test_s4d_errors():
    with pytest.raises(CDLTypeError, match="even"):
        infer1("s4d", (2, 4, 10), state=7)
    with pytest.raises(CDLTypeError, match="dt_min <= dt_max"):
        infer1("s4d", (2, 4, 10), dt_min=0.1, dt_max=0.01)
    with pytest.raises(ShapeError, match=r"rank-3 sequence \[N, C, L\]"):
        infer1("s4d", (2, 4, 10, 10))
    with pytest.raises(ShapeError, match="static channel count"):
        infer1("s4d", (2, "C", 10))


# ---- SGConv ---------------------------------------------------------------------------------
def upsample_linear(k: np.ndarray, scale: int) -> np.ndarray:
    """F.interpolate(mode="linear", align_corners=False): sample at (i + 0.5) / scale - 0.5, clamped."""
    d = k.shape[-1]
    src = np.clip((np.arange(d * scale) + 0.5) / scale - 0.5, 0, d - 1)
    return np.stack([np.interp(src, np.arange(d), row) for row in k])


def sgconv_kernel(kernel: np.ndarray, decay: float, L: int, interp: str = "linear") -> np.ndarray:
    pieces = []
    for i, k in enumerate(kernel):
        s = 2 ** max(0, i - 1)
        up = upsample_linear(k, s) if interp == "linear" else np.repeat(k, s, axis=-1)
        pieces.append(up * decay ** i)
    full = np.concatenate(pieces, axis=-1)
    full /= np.linalg.norm(full, axis=-1, keepdims=True)
    return full[:, :L] if full.shape[-1] >= L else np.pad(full, ((0, 0), (0, L - full.shape[-1])))


@pytest.mark.parametrize("op,L,scales", [
    ("sgconv(kernel_dim=5)", 37, 4),  # 1 + ceil(log2(37/5)) scales: 40 taps, cut to 37
    ("sgconv(kernel_dim=3, n_scales=2, decay=0.3)", 37, 2),  # 6 taps, zero-padded
    ("sgconv(kernel_dim=4, interp=nearest)", 29, 4),
    ("sgconv(kernel_dim=8)", 5, 1),
])
@pytest.mark.slow
def test_sgconv_kernel_and_output(op, L, scales):
    g = graph(op, (2, 3, L))
    a = g.node("op").attrs
    assert a["n_scales"] == scales and param(g, "kernel").shape == (scales, 3, a["kernel_dim"])
    m = build_module(g)
    full = m.op.full_kernel().detach().double().numpy()
    assert full.shape == (3, a["kernel_dim"] * 2 ** (scales - 1))
    np.testing.assert_allclose(np.linalg.norm(full, axis=-1), 1.0, rtol=1e-5)  # unit norm per channel
    k = m.op.kernel_for(L).detach().double().numpy()
    want_k = sgconv_kernel(param(g, "kernel"), a["decay"], L, a["interp"])
    assert k.shape == (3, L)
    np.testing.assert_allclose(k, want_k, rtol=1e-5, atol=1e-6)
    x = np.random.default_rng(4).standard_normal((2, 3, L))
    want = causal_conv(x, want_k) + param(g, "D")[:, None] * x
    np.testing.assert_allclose(run(m, x), want, rtol=1e-4, atol=1e-4)


def test_sgconv_bidirectional_is_forward_plus_flipped():
    g1, g2 = graph("sgconv(kernel_dim=4)", (2, 3, 21)), graph("sgconv(kernel_dim=4, bidirectional=true)", (2, 3, 21))
    m1, m2 = build_module(g1), build_module(g2)  # same names, same seed: same parameters
    x = np.random.default_rng(5).standard_normal((2, 3, 21))
    want = run(m1, x) + run(m1, x[..., ::-1].copy())[..., ::-1]
    np.testing.assert_allclose(run(m2, x), want, rtol=1e-5, atol=1e-5)


def test_sgconv_errors():
    with pytest.raises(ShapeError, match="n_scales when the sequence length is symbolic"):
        infer1("sgconv", (2, 4, "L"))
    assert infer1("sgconv", (2, 4, "L"), n_scales=3) == (2, 4, "L")
    with pytest.raises(CDLTypeError, match="n_scales must be in"):
        infer1("sgconv", (2, 4, 10), n_scales=0)
    with pytest.raises(CDLTypeError, match="kernel_dim must be positive"):
        infer1("sgconv", (2, 4, 10), kernel_dim=0)
    with pytest.raises(CDLTypeError, match="decay"):
        infer1("sgconv", (2, 4, 10), decay=0.0)


# ---- selective scan -------------------------------------------------------------------------
def softplus(v):
    return np.logaddexp(0, v)


def selective_scan_loop(g, x: np.ndarray, state: int, dt_rank: int, d_conv: int) -> np.ndarray:
    """Mamba's selective_scan_ref, one time step at a time, in float64 numpy."""
    n, c, L = x.shape
    u = x
    if d_conv:
        w, b = param(g, "conv1d.weight")[:, 0], param(g, "conv1d.bias")
        conv = np.zeros_like(x)
        for t in range(L):
            for j in range(d_conv):  # causal: tap j sees x[t - (d_conv - 1) + j]
                s = t - (d_conv - 1) + j
                if s >= 0:
                    conv[..., t] += w[:, j] * x[..., s]
        conv += b[:, None]
        u = conv / (1 + np.exp(-conv))  # silu
    proj = np.einsum("ncl,oc->nlo", u, param(g, "x_proj.weight"))
    dt_low, B, C = proj[..., :dt_rank], proj[..., dt_rank:dt_rank + state], proj[..., dt_rank + state:]
    dt = softplus(np.einsum("nlr,cr->ncl", dt_low, param(g, "dt_proj.weight")) + param(g, "dt_proj.bias")[:, None])
    A = -np.exp(param(g, "A_log"))
    h = np.zeros((n, c, state))
    y = np.empty_like(x)
    for t in range(L):
        h = np.exp(dt[..., t, None] * A) * h + (dt[..., t] * u[..., t])[..., None] * B[:, None, t]
        y[..., t] = (h * C[:, None, t]).sum(-1)
    return y + param(g, "D")[:, None] * u


@pytest.mark.parametrize("op,state,dt_rank,d_conv,L", [
    ("selective_scan(state=4, dt_rank=2, d_conv=3)", 4, 2, 3, 37),
    ("selective_scan(state=3)", 3, 1, 0, 16),
    ("selective_scan(state=5, d_conv=4)", 5, 1, 4, 1),
])
def test_selective_scan_matches_naive_loop(op, state, dt_rank, d_conv, L):
    g = graph(op, (2, 5, L))
    randomize(g, 6, **{"D": 1.0, "dt_proj.weight": 1.0})
    m = build_module(g)
    x = np.random.default_rng(7).standard_normal((2, 5, L))
    want = selective_scan_loop(g, x, state, dt_rank, d_conv)
    np.testing.assert_allclose(run(m, x), want, rtol=1e-4, atol=1e-4)  # chunked
    np.testing.assert_allclose(run(m.op, x, "recurrent"), want, rtol=1e-4, atol=1e-4)  # step by step


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_selective_scan_chunked_equals_steps(chunk):
    gen = torch.Generator().manual_seed(chunk)
    n, c, L, s = 3, 4, 41, 6

    def draw(fn, *shape):
        return fn(*shape, generator=gen, dtype=torch.float64)

    u, B, C = draw(torch.randn, n, c, L), draw(torch.randn, n, L, s), draw(torch.randn, n, L, s)
    dt = 3 * draw(torch.rand, n, c, L)  # large steps: strong decay
    A = -torch.arange(1, s + 1, dtype=torch.float64).repeat(c, 1) * draw(torch.rand, c, 1)
    steps = SelectiveScan.scan_steps(u, dt, A, B, C)
    chunked = SelectiveScan.scan_chunked(u, dt, A, B, C, chunk)
    assert torch.isfinite(chunked).all()
    torch.testing.assert_close(chunked, steps, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strength", [0.1, 3.0, 60.0])
def test_selective_scan_chunked_float32_blocks_and_strong_decay(strength):
    """float32, several blocks, chunks cut where the decay would overflow exp(); against float64 steps."""
    gen = torch.Generator().manual_seed(7)
    n, c, L, s = 2, 3, 300, 5
    u, B, C = (torch.randn(*sh, generator=gen) for sh in ((n, c, L), (n, L, s), (n, L, s)))
    dt = strength * torch.rand(n, c, L, generator=gen)
    A = -torch.arange(1, s + 1, dtype=torch.float32).repeat(c, 1)
    want = SelectiveScan.scan_steps(*(t.double() for t in (u, dt, A, B, C)))
    got = SelectiveScan.scan_chunked(u, dt, A, B, C, chunk=64, block=128)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@functools.cache
def long_scan_case():
    """(u, dt, A, B, C) for 3,001 tokens, 64 channels, state 16 in float64, and scan_steps() of them."""
    gen = torch.Generator().manual_seed(11)
    n, c, L, s = 1, 64, 3001, 16
    u, B, C = (torch.randn(*sh, generator=gen, dtype=torch.float64) for sh in ((n, c, L), (n, L, s), (n, L, s)))
    dt = 0.45 * torch.rand(n, c, L, generator=gen, dtype=torch.float64) ** 3
    A = -torch.arange(1, s + 1, dtype=torch.float64).repeat(c, 1)
    A[:4] *= 1e-3  # slow states: long memory across many chunks and blocks
    return (u, dt, A, B, C), SelectiveScan.scan_steps(u, dt, A, B, C)


@pytest.mark.parametrize("chunk,block", [(None, None), (5, 1024), (7, 30)])
def test_selective_scan_chunked_long_sequence_equals_steps(chunk, block):
    """A long sequence over several blocks (the last one padded), float64, against the sequential recurrence at a
    tight tolerance; decays up to ~7 per step (dt 0.45 x A 16, as the benchmark's channels) and a few near zero."""
    (u, dt, A, B, C), want = long_scan_case()
    assert SelectiveScan.scan_sizes(1, 64, 16, 3001, None, None) == (32, 1024)  # auto: 3 blocks, chunks of 32
    got = SelectiveScan.scan_chunked(u, dt, A, B, C, chunk, block)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    got32 = SelectiveScan.scan_chunked(*(t.float() for t in (u, dt, A, B, C)), chunk, block)
    torch.testing.assert_close(got32.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_selective_scan_chunked_has_gradients():
    gen = torch.Generator().manual_seed(3)
    n, c, L, s = 1, 2, 37, 4
    args = [torch.randn(n, c, L, generator=gen), torch.rand(n, c, L, generator=gen), -torch.rand(c, s, generator=gen) - 0.5,
            torch.randn(n, L, s, generator=gen), torch.randn(n, L, s, generator=gen)]
    args = [a.double().requires_grad_() for a in args]
    grads = torch.autograd.grad(SelectiveScan.scan_chunked(*args, chunk=8).sum(), args)
    want = torch.autograd.grad(SelectiveScan.scan_steps(*args).sum(), args)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-8)


def test_selective_scan_bidirectional_is_forward_plus_flipped():
    g1 = graph("selective_scan(state=4, d_conv=3)", (2, 5, 23))
    g2 = graph("selective_scan(state=4, d_conv=3, bidirectional=true)", (2, 5, 23))
    m1, m2 = build_module(g1), build_module(g2)
    x = np.random.default_rng(8).standard_normal((2, 5, 23))
    want = run(m1, x) + run(m1, x[..., ::-1].copy())[..., ::-1]
    np.testing.assert_allclose(run(m2, x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(m2.op, x, "recurrent"), want, rtol=1e-4, atol=1e-4)


def test_selective_scan_params_and_init():
    g = graph("selective_scan(state=16, d_conv=4, dt_min=0.001, dt_max=0.1)", ("N", 48, "L"))
    a = g.node("op").attrs
    assert a["dt_rank"] == 3  # ceil(48 / 16)
    shapes = {n.split(".", 1)[1]: s.shape for n, s in g.params.specs.items()}
    assert shapes == {"conv1d.weight": (48, 1, 4), "conv1d.bias": (48,), "x_proj.weight": (3 + 32, 48),
                      "dt_proj.weight": (48, 3), "dt_proj.bias": (48,), "A_log": (48, 16), "D": (48,)}
    np.testing.assert_allclose(param(g, "A_log"), np.broadcast_to(np.log(np.arange(1, 17)), (48, 16)), rtol=1e-6)
    np.testing.assert_array_equal(param(g, "D"), 1.0)
    dt = softplus(param(g, "dt_proj.bias"))
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert np.abs(param(g, "dt_proj.weight")).max() <= 3 ** -0.5
    m = build_module(g)
    assert tuple(m(torch.randn(2, 48, 9)).shape) == (2, 48, 9)


def test_selective_scan_errors():
    with pytest.raises(CDLTypeError, match="dt_rank must be positive"):
        infer1("selective_scan", (2, 4, 10), dt_rank=0)
    with pytest.raises(CDLTypeError, match="d_conv must be >= 0"):
        infer1("selective_scan", (2, 4, 10), d_conv=-1)
    with pytest.raises(CDLTypeError, match="state must be positive"):
        infer1("selective_scan", (2, 4, 10), state=0)
    with pytest.raises(CDLTypeError, match="bad value"):
        infer1("selective_scan", (2, 4, 10), dt_rank="full")
    with pytest.raises(ShapeError, match="rank-3"):
        infer1("selective_scan", (4, 10))


def test_errors_point_at_the_cdl_source():
    with pytest.raises(ShapeError) as err:
        graph("s4d(state=8)", (2, 16))
    assert err.value.span is not None and err.value.span.line == 2


@pytest.mark.parametrize("interp", ["linear", "nearest"])
@pytest.mark.parametrize("taps, factor", [(1, 2), (3, 1), (5, 4), (8, 8), (32, 16)])
def test_sgconv_upsampling_matrix_is_f_interpolate(taps, factor, interp):
    """The matrix the ONNX export multiplies SGConv's pieces by (and its importer checks) is
    F.interpolate's upsampling, applied to the identity."""
    import torch
    import torch.nn.functional as F

    from convdsl.ir.ops.ssm import sgconv_upsampling

    ref = F.interpolate(torch.eye(taps, dtype=torch.float64)[None], scale_factor=factor, mode=interp)[0].numpy()
    np.testing.assert_array_equal(sgconv_upsampling(taps, factor, interp), ref)
    piece = torch.randn(3, taps, dtype=torch.float64)
    np.testing.assert_allclose(piece.numpy() @ sgconv_upsampling(taps, factor, interp),
                               F.interpolate(piece[None], scale_factor=factor, mode=interp)[0].numpy(), rtol=1e-12)
