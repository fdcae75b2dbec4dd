"""TVM lowerings of the state-space ops (convdsl/ir/ops/ssm.py); see common.py for the entry format.

- s4d, sgconv (LTI): the convolution kernel depends only on weights, so it is
  computed here, once, in float64 NumPy (S4D's Vandermonde product; SGConv's
  upsampled, decayed, normalized sub-kernels) and applied as a long
  convolution by DFT products (``dft.long_conv``, kernel spectrum constant).
- selective_scan (input-dependent): projections in Relax, then the recurrence
  h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t as one TIR loop
  (parallel over batch x channel on CPU, one GPU thread per row on CUDA).
"""
from __future__ import annotations

import numpy as np

from convdsl.backends.tvm.common import R, family, relax
from convdsl.backends.tvm.dft import long_conv
from convdsl.backends.tvm.indexing import interp_matrix, nearest_index
from convdsl.backends.tvm.lower_conv import conv_nd

LOWERINGS = family("ssm")


def _flip_last(cx, x, shape):
    idx = cx.const(np.arange(shape[-1] - 1, -1, -1), "int64")
    return cx.emit(R.take(x, idx, axis=len(shape) - 1, mode="clip"))


def _lti(cx, u, shape, kernel: np.ndarray, d: np.ndarray, bidirectional: bool):
    """y = K * u + D u  (+ the same run backwards in time when bidirectional)."""
    y = long_conv(cx, u, shape, kernel)
    if bidirectional:  # flip(K * flip(u)) + D u
        back = long_conv(cx, _flip_last(cx, u, shape), shape, kernel)
        y = cx.emit(R.add(y, _flip_last(cx, back, shape)))
        d = 2.0 * d
    return R.add(y, cx.emit(R.multiply(u, cx.const(d[:, None]))))


# ---- S4D ----------------------------------------------------------------------------------
def s4d_kernel(log_a_real, a_imag, c, log_dt, length: int) -> np.ndarray:
    """K[c, l] = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n * exp(dt A_n l)), l < length (float64)."""
    dt = np.exp(log_dt.astype(np.float64))[:, None]
    a = -np.exp(log_a_real.astype(np.float64)) + 1j * a_imag.astype(np.float64)
    cc = (c[..., 0] + 1j * c[..., 1]).astype(np.complex128) * (np.exp(dt * a) - 1.0) / a
    powers = np.exp((dt * a)[..., None] * np.arange(length))  # Vandermonde [C, N/2, L]
    return 2.0 * np.einsum("cn,cnl->cl", cc, powers).real


def _s4d(cx, node, args, ins):
    shape = cx.shape(ins[0])
    k = s4d_kernel(cx.param("log_A_real"), cx.param("A_imag"), cx.param("C"), cx.param("log_dt"), shape[-1])
    return _lti(cx, args[0], shape, k, cx.param("D").astype(np.float64), node.attrs["bidirectional"])


# ---- SGConv -------------------------------------------------------------------------------
def sgconv_kernel(kernel: np.ndarray, decay: float, interp: str, length: int) -> np.ndarray:
    """Sub-kernel i upsampled by 2**max(0, i-1) (F.interpolate), times decay**i, concatenated,
    unit L2 norm per channel, then cut or zero-padded to ``length`` taps: [C, length]."""
    pieces = []
    for i in range(kernel.shape[0]):
        piece = kernel[i].astype(np.float64)
        if i > 1:
            d, scale = piece.shape[-1], 2 ** (i - 1)
            if interp == "nearest":
                piece = piece[:, nearest_index(d, d * scale, float(scale))]
            else:
                piece = piece @ interp_matrix(d, d * scale, "linear", False, float(scale)).T
        pieces.append(piece * decay ** i)
    k = np.concatenate(pieces, axis=-1)
    k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
    if k.shape[-1] >= length:
        return k[:, :length]
    return np.pad(k, ((0, 0), (0, length - k.shape[-1])))


def _sgconv(cx, node, args, ins):
    a = node.attrs
    shape = cx.shape(ins[0])
    k = sgconv_kernel(cx.param("kernel"), a["decay"], a["interp"], shape[-1])
    return _lti(cx, args[0], shape, k, cx.param("D").astype(np.float64), a["bidirectional"])


# ---- selective scan (Mamba) -----------------------------------------------------------------
_LOG2E, _LN2_HI, _LN2_LO = 1.44269504088896341, 0.693359375, -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def fast_exp(x):
    """exp(x) in float32 arithmetic that vectorizes (Cephes' expf: 2^n times a degree-7 polynomial of the
    remainder, |rel err| ~ 1e-7); LLVM would call libm once per vector lane for ``T.exp``."""
    from tvm import tirx

    f = lambda v: tirx.const(v, "float32")  # noqa: E731
    x = tirx.max(tirx.min(x, f(88.3762626647949)), f(-88.3762626647949))
    n = tirx.floor(x * f(_LOG2E) + f(0.5))
    r = x - n * f(_LN2_HI) - n * f(_LN2_LO)
    p = f(_EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * r + f(c)
    p = p * r * r + r + f(1.0)
    two_n = tirx.reinterpret("float32", (n.astype("int32") + tirx.const(127, "int32")) << tirx.const(23, "int32"))
    return p * two_n


def scan_kernel(n: int, ch: int, length: int, state: int, gpu: bool):
    """TIR: y[n, c, t] = C[n, t] . h_t,  h_t = exp(dt A[c]) h_{t-1} + dt u B[n, t] (h_0 = 0), per row (n, c).

    CPU: rows in parallel; per time step the state is one vector (``state`` lanes: exp, the update
    and the products with C vectorized, exp as ``fast_exp``), then a sum over it."""
    from tvm.script import tirx as T

    rows = n * ch
    if not gpu:
        @T.prim_func(private=True)
        def scan(U: T.Buffer((n, ch, length), "float32"), DT: T.Buffer((n, ch, length), "float32"),
                 A: T.Buffer((ch, state), "float32"), B: T.Buffer((n, length, state), "float32"),
                 C: T.Buffer((n, length, state), "float32"), Y: T.Buffer((n, ch, length), "float32")):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            for r in T.parallel(rows):
                h = T.alloc_buffer((state,), "float32", scope="local")
                p = T.alloc_buffer((state,), "float32", scope="local")
                acc = T.alloc_buffer((1,), "float32", scope="local")
                for k in T.vectorized(state):
                    h[k] = T.float32(0)
                for t in range(length):
                    for k in T.vectorized(state):
                        h[k] = (fast_exp(DT[r // ch, r % ch, t] * A[r % ch, k]) * h[k]
                                + DT[r // ch, r % ch, t] * U[r // ch, r % ch, t] * B[r // ch, t, k])
                        p[k] = h[k] * C[r // ch, t, k]
                    acc[0] = T.float32(0)
                    for k in range(state):
                        acc[0] = acc[0] + p[k]
                    Y[r // ch, r % ch, t] = acc[0]

        return scan

    threads = 64
    blocks = (rows + threads - 1) // threads

    @T.prim_func(private=True)
    def scan_gpu(U: T.Buffer((n, ch, length), "float32"), DT: T.Buffer((n, ch, length), "float32"),
                 A: T.Buffer((ch, state), "float32"), B: T.Buffer((n, length, state), "float32"),
                 C: T.Buffer((n, length, state), "float32"), Y: T.Buffer((n, ch, length), "float32")):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        for bx in T.thread_binding(blocks, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                h = T.alloc_buffer((state,), "float32", scope="local")
                if bx * threads + tx < rows:
                    for k in range(state):
                        h[k] = T.float32(0)
                    for t in range(length):
                        Y[(bx * threads + tx) // ch, (bx * threads + tx) % ch, t] = T.float32(0)
                        for k in range(state):
                            h[k] = (T.exp(DT[(bx * threads + tx) // ch, (bx * threads + tx) % ch, t]
                                          * A[(bx * threads + tx) % ch, k]) * h[k]
                                    + DT[(bx * threads + tx) // ch, (bx * threads + tx) % ch, t]
                                    * U[(bx * threads + tx) // ch, (bx * threads + tx) % ch, t]
                                    * B[(bx * threads + tx) // ch, t, k])
                            Y[(bx * threads + tx) // ch, (bx * threads + tx) % ch, t] = (
                                Y[(bx * threads + tx) // ch, (bx * threads + tx) % ch, t]
                                + h[k] * C[(bx * threads + tx) // ch, t, k])

    return scan_gpu


def _softplus(cx, x):
    # log(1 + exp(x)), and x itself above 20 (torch's threshold)
    big = cx.const(20.0)
    soft = cx.emit(R.log(cx.emit(R.add(cx.emit(R.exp(cx.emit(R.minimum(x, big)))), cx.const(1.0)))))
    return cx.emit(R.where(cx.emit(R.greater(x, big)), x, soft))


def _one_way(cx, node, u, shape):
    """The selective SSM on u[N, C, L] in one direction (projections, scan, + D u)."""
    a = node.attrs
    n, c, length = shape
    s, r, k = a["state"], a["dt_rank"], a["d_conv"]
    if k:  # causal depthwise conv: pad k-1 on the left, then SiLU
        w = cx.param("conv1d.weight")
        u = cx.emit(conv_nd(cx, u, w, 1, (1,), [(k - 1, 0)], (1,), c))
        u = cx.emit(R.add(u, cx.const(cx.param("conv1d.bias")[:, None])))
        u = cx.emit(R.nn.silu(u))
    ut = cx.emit(R.permute_dims(u, [0, 2, 1]))  # [N, L, C]
    proj = cx.emit(R.matmul(ut, cx.const(cx.param("x_proj.weight").T)))  # [N, L, r + 2s]
    parts = cx.emit(R.split(proj, [r, r + s], axis=2))
    dt_low, b, cc = (cx.emit(relax.TupleGetItem(parts, i)) for i in range(3))
    dt = cx.emit(R.matmul(dt_low, cx.const(cx.param("dt_proj.weight").T)))  # [N, L, C]
    dt = _softplus(cx, cx.emit(R.add(dt, cx.const(cx.param("dt_proj.bias")))))
    dt = cx.emit(R.permute_dims(dt, [0, 2, 1]))  # [N, C, L]
    a_mat = cx.const(-np.exp(cx.param("A_log").astype(np.float64)))
    gv = cx.bb.add_func(scan_kernel(n, c, length, s, cx.target == "tvm-cuda"), "selective_scan")
    y = cx.emit(relax.call_tir(gv, [u, dt, a_mat, b, cc], relax.TensorType(shape, "float32")))
    return cx.emit(R.add(y, cx.emit(R.multiply(u, cx.const(cx.param("D")[:, None])))))


def _selective_scan(cx, node, args, ins):
    shape = cx.shape(ins[0])
    y = _one_way(cx, node, args[0], shape)
    if node.attrs["bidirectional"]:  # the same SSM on the time-reversed input, reversed back
        back = _one_way(cx, node, _flip_last(cx, args[0], shape), shape)
        y = cx.emit(R.add(y, _flip_last(cx, back, shape)))
    return y


LOWERINGS.add("s4d", _s4d)
LOWERINGS.add("sgconv", _sgconv)
LOWERINGS.add("selective_scan", _selective_scan)
