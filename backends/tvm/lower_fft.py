"""TVM lowerings of the FFT mixing ops (convdsl/ir/ops/fft.py); see common.py for the entry format.

Every transform is a product with constant DFT matrices (``dft.py``), long
ones factored Cooley-Tukey style into batched matmuls; filters that are
weights (fft_conv's kernel) are transformed once, at compile time.
"""
from __future__ import annotations

import math

import numpy as np

from convdsl.ir.ops.fft import filter_size

from convdsl.backends.tvm.common import R, family, relax
from convdsl.backends.tvm.dft import Complex, cmul, cmul_const, dft_axis, irfft, long_conv, rfft

LOWERINGS = family("fft")


def rfft2(cx, x, shape: tuple[int, ...]) -> Complex:
    """rfft2(x, norm="ortho") over the last two dims of [..., H, W] -> [..., H, W//2+1]."""
    h, w = shape[-2:]
    z = rfft(cx, x, shape, w, scale=1.0 / math.sqrt(w))
    return dft_axis(cx, z, shape[:-1] + (w // 2 + 1,), -2, -1.0, 1.0 / math.sqrt(h))


def irfft2(cx, z: Complex, shape: tuple[int, ...]) -> relax.Expr:
    """irfft2(z, s=(H, W), norm="ortho") for z [..., H, W//2+1]; ``shape`` is the output's [..., H, W]."""
    h, w = shape[-2:]
    spec = shape[:-1] + (w // 2 + 1,)
    z = dft_axis(cx, z, spec, -2, +1.0, 1.0 / math.sqrt(h))
    return irfft(cx, z, spec, w, scale=1.0 / math.sqrt(w))


def _nchw(cx, node, x, shape):
    """[N, H, W, C] -> [N, C, H, W] for layout=nhwc; returns (x, shape)."""
    if node.attrs["layout"] == "nhwc":
        n, h, w, c = shape
        return cx.emit(R.permute_dims(x, [0, 3, 1, 2])), (n, c, h, w)
    return x, shape


def _back(cx, node, y):
    return R.permute_dims(y, [0, 2, 3, 1]) if node.attrs["layout"] == "nhwc" else y


def _global_filter(cx, node, args, ins):
    # y = irfft2(rfft2(x) * W, s=(H, W)), both ortho
    x, shape = _nchw(cx, node, args[0], cx.shape(ins[0]))
    filter_size(node.attrs, ins[0])
    w = cx.param("complex_weight")  # [C, H, W//2+1, 2]
    z = cmul_const(cx, rfft2(cx, x, shape), w[..., 0], w[..., 1])
    return _back(cx, node, irfft2(cx, z, shape))


def _block_complex_matmul(cx, z: Complex, w: np.ndarray, b: np.ndarray, shape) -> Complex:
    """einsum("bkihw,kio->bkohw", z, w0 + i w1) + (b0 + i b1)[..., None, None] for z [n, k, i, h, f].

    One real matmul per block: [zr | zi] @ [[w0, w1], [-w1, w0]] = [zr w0 - zi w1 | zr w1 + zi w0]."""
    n, k, i, h, f = shape
    o = w.shape[-1]
    wr, wi = w[0], w[1]  # [k, i, o]
    big = np.concatenate([np.concatenate([wr, wi], axis=2), np.concatenate([-wi, wr], axis=2)], axis=1)  # [k, 2i, 2o]
    zz = cx.emit(R.concat([z.re, z.im], axis=2))  # [n, k, 2i, h, f]
    zz = cx.emit(R.permute_dims(zz, [0, 1, 3, 4, 2]))  # [n, k, h, f, 2i]
    zz = cx.emit(R.reshape(zz, (n, k, h * f, 2 * i)))
    y = cx.emit(R.matmul(zz, cx.const(big)))  # [n, k, hf, 2o]
    y = cx.emit(R.add(y, cx.const(np.concatenate([b[0], b[1]], axis=-1)[:, None, :])))  # bias [k, 1, 2o]
    y = cx.emit(R.reshape(y, (n, k, h, f, 2 * o)))
    y = cx.emit(R.permute_dims(y, [0, 1, 4, 2, 3]))  # [n, k, 2o, h, f]
    parts = cx.emit(R.split(y, [o], axis=2))
    return Complex(cx.emit(relax.TupleGetItem(parts, 0)), cx.emit(relax.TupleGetItem(parts, 1)))


def softshrink(cx, x, lam: float, dtype: str = "float32"):
    """x - lam if x > lam; x + lam if x < -lam; else 0  ==  relu(x - lam) - relu(-x - lam)."""
    c = cx.const(lam, dtype)
    return cx.emit(R.subtract(cx.emit(R.nn.relu(cx.emit(R.subtract(x, c)))),
                              cx.emit(R.nn.relu(cx.emit(R.subtract(cx.emit(R.negative(x)), c))))))


def _adaptive_filter(cx, node, args, ins):
    a = node.attrs
    x, shape = _nchw(cx, node, args[0], cx.shape(ins[0]))
    n, c, h, w = shape
    k = a["blocks"]
    f = w // 2 + 1
    spec = rfft2(cx, x, shape)  # [n, c, h, f]
    blocked = (n, k, c // k, h, f)
    z = Complex(cx.emit(R.reshape(spec.re, blocked)), cx.emit(R.reshape(spec.im, blocked)))
    z = _block_complex_matmul(cx, z, cx.param("w1"), cx.param("b1"), blocked)
    z = Complex(cx.emit(R.nn.leakyrelu(z.re, a["slope"])), cx.emit(R.nn.leakyrelu(z.im, a["slope"])))
    hid = cx.param("w1").shape[-1]
    z = _block_complex_matmul(cx, z, cx.param("w2"), cx.param("b2"), (n, k, hid, h, f))
    mask = Complex(*(cx.emit(R.reshape(softshrink(cx, t, a["sparsity"]), (n, c, h, f))) for t in (z.re, z.im)))
    y = irfft2(cx, cmul(cx, mask, spec), shape)
    if a["residual"]:
        y = cx.emit(R.add(y, x))
    return _back(cx, node, y)


def _fft_conv(cx, node, args, ins):
    a = node.attrs
    shape = cx.shape(ins[0])
    y = long_conv(cx, args[0], shape, cx.param("kernel"), a["causal"])
    if a["bias"]:
        y = cx.emit(R.add(y, cx.const(cx.param("bias")[:, None])))
    if a["skip"]:
        y = cx.emit(R.add(y, cx.emit(R.multiply(args[0], cx.const(cx.param("D")[:, None])))))
    return y


LOWERINGS.add("global_filter", _global_filter)
LOWERINGS.add("adaptive_filter", _adaptive_filter)
LOWERINGS.add("fft_conv", _fft_conv)
