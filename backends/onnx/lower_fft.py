"""ONNX exports of the FFT mixing ops (see export.py for the entry format).

- global_filter, adaptive_filter: the 2-D real FFTs are products with constant
  DFT matrices (the "matmul form"; ONNX's DFT operator is not implemented by
  every runtime that reads ONNX), computed here in float64, stored in the
  compute dtype.  rfft2 keeps the W//2+1 non-negative frequencies; irfft2
  ignores the imaginary parts of the DC and Nyquist bins, as numpy/torch do.
- fft_conv: the kernel is a weight, so the FFT long convolution is exactly a
  depthwise Conv1d with the reversed kernel (the "long-convolution form").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convdsl.ir.ops.fft import filter_size

from convdsl.backends.onnx.common import family
from convdsl.backends.onnx.export import Exporter


@dataclass
class Complex:
    re: str
    im: str | None = None


def _twiddles(rows: int, cols: int, n: int, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """exp(sign * 2 pi i * r * c / n) for r < rows, c < cols (float64)."""
    phase = (np.outer(np.arange(rows), np.arange(cols)) % n) * (2.0 * math.pi / n)
    return np.cos(phase), sign * np.sin(phase)


def _matmul(cx: Exporter, z: Complex, mre: np.ndarray, mim: np.ndarray, left: bool) -> Complex:
    """z @ M (or M @ z when ``left``) with a constant complex M."""
    a, b = cx.const(mre), cx.const(mim)

    def mm(x, m):
        return cx.op("MatMul", [m, x] if left else [x, m])

    if z.im is None:
        return Complex(mm(z.re, a), mm(z.re, b))
    return Complex(cx.op("Sub", [mm(z.re, a), mm(z.im, b)]), cx.op("Add", [mm(z.re, b), mm(z.im, a)]))


def cmul(cx: Exporter, x: Complex, y: Complex) -> Complex:
    r = cx.op("Sub", [cx.op("Mul", [x.re, y.re]), cx.op("Mul", [x.im, y.im])])
    i = cx.op("Add", [cx.op("Mul", [x.re, y.im]), cx.op("Mul", [x.im, y.re])])
    return Complex(r, i)


def rfft2(cx: Exporter, x: str, h: int, w: int) -> Complex:
    """rfft2(x, norm="ortho") over the last two dims of [..., H, W] -> [..., H, W//2+1]."""
    f = w // 2 + 1
    re, im = _twiddles(w, f, w, -1.0)
    z = _matmul(cx, Complex(x), re / math.sqrt(w), im / math.sqrt(w), left=False)
    re, im = _twiddles(h, h, h, -1.0)
    return _matmul(cx, z, re / math.sqrt(h), im / math.sqrt(h), left=True)


def irfft2(cx: Exporter, z: Complex, h: int, w: int) -> str:
    """irfft2(z, s=(H, W), norm="ortho") for z [..., H, W//2+1]."""
    re, im = _twiddles(h, h, h, +1.0)
    z = _matmul(cx, z, re / math.sqrt(h), im / math.sqrt(h), left=True)
    f = w // 2 + 1
    k = np.arange(f)[:, None]
    t = np.arange(w)[None, :]
    weight = np.where((k == 0) | ((w % 2 == 0) & (k == w // 2)), 1.0, 2.0) / math.sqrt(w)
    phase = (k * t % w) * (2.0 * math.pi / w)
    y = cx.op("MatMul", [z.re, cx.const(weight * np.cos(phase))])
    return cx.op("Sub", [y, cx.op("MatMul", [z.im, cx.const(weight * np.sin(phase))])])


def _nchw(cx: Exporter, node, x: str) -> str:
    return cx.op("Transpose", [x], perm=[0, 3, 1, 2]) if node.attrs["layout"] == "nhwc" else x


def _back(cx: Exporter, node, y: str) -> str:
    return cx.op("Transpose", [y], perm=[0, 2, 3, 1]) if node.attrs["layout"] == "nhwc" else y


def _global_filter(cx, node, args, ins):
    # y = irfft2(rfft2(x) * W, s=(H, W)), both ortho
    h, w = filter_size(node.attrs, ins[0])
    x = _nchw(cx, node, args[0])
    spec = rfft2(cx, x, h, w)
    weight = Complex(cx.param("complex_weight", lambda a: a[..., 0], ".real"),
                     cx.param("complex_weight", lambda a: a[..., 1], ".imag"))
    return _back(cx, node, irfft2(cx, cmul(cx, spec, weight), h, w))


def _blocks(w: np.ndarray) -> np.ndarray:
    """w [2, k, i, o] (real, imaginary) -> [k, 2i, 2o] = [[w0, w1], [-w1, w0]] per block."""
    wr, wi = w[0], w[1]  # [k, i, o]
    return np.concatenate([np.concatenate([wr, wi], axis=2), np.concatenate([-wi, wr], axis=2)], axis=1)


def _block_complex_matmul(cx: Exporter, z: Complex, w: str, b: str, k: int, i: int, h: int,
                          f: int) -> Complex:
    """einsum("nkihf,kio->nkohf", z, w0 + i w1) + (b0 + i b1) for z [n, k, i, h, f], as one real
    matmul per block: [zr | zi] @ [[w0, w1], [-w1, w0]] = [zr w0 - zi w1 | zr w1 + zi w0].  ``w``, ``b``
    name the parameters; the block matrix and the joined bias are ``<key>.blocks``."""
    o = cx.array(w).shape[-1]
    zz = cx.op("Concat", [z.re, z.im], axis=2)  # [n, k, 2i, h, f]
    zz = cx.op("Transpose", [zz], perm=[0, 1, 3, 4, 2])  # [n, k, h, f, 2i]
    zz = cx.op("Reshape", [zz, cx.ints([0, k, h * f, 2 * i])])
    y = cx.op("MatMul", [zz, cx.param(w, _blocks, ".blocks")])  # [n, k, hf, 2o]
    y = cx.op("Add", [y, cx.param(b, lambda v: np.concatenate([v[0], v[1]], axis=-1)[:, None, :], ".blocks")])
    y = cx.op("Reshape", [y, cx.ints([0, k, h, f, 2 * o])])
    y = cx.op("Transpose", [y], perm=[0, 1, 4, 2, 3])  # [n, k, 2o, h, f]
    re, im = cx.op("Split", [y, cx.ints([o, o])], outputs=2, axis=2)
    return Complex(re, im)


def softshrink(cx: Exporter, x: str, lam: float) -> str:
    """x - lam if x > lam; x + lam if x < -lam; else 0  ==  relu(x - lam) - relu(-x - lam)."""
    c = cx.const(np.float32(lam))
    return cx.op("Sub", [cx.op("Relu", [cx.op("Sub", [x, c])]), cx.op("Relu", [cx.op("Sub", [cx.op("Neg", [x]), c])])])


def _adaptive_filter(cx, node, args, ins):
    a = node.attrs
    t = ins[0]
    c, h, w = (t.shape[1], t.shape[2], t.shape[3]) if a["layout"] == "nchw" else (t.shape[3], t.shape[1], t.shape[2])
    if not all(isinstance(v, int) for v in (h, w)):
        raise cx.error("needs static H and W", hint="bind the symbols when exporting (--bind)")
    k = a["blocks"]
    f = w // 2 + 1
    x = _nchw(cx, node, args[0])
    spec = rfft2(cx, x, h, w)  # [n, c, h, f]
    blocked = cx.ints([0, k, c // k, h, f])
    z = Complex(cx.op("Reshape", [spec.re, blocked]), cx.op("Reshape", [spec.im, blocked]))
    z = _block_complex_matmul(cx, z, "w1", "b1", k, c // k, h, f)
    z = Complex(cx.op("LeakyRelu", [z.re], alpha=a["slope"]), cx.op("LeakyRelu", [z.im], alpha=a["slope"]))
    hid = cx.array("w1").shape[-1]
    z = _block_complex_matmul(cx, z, "w2", "b2", k, hid, h, f)
    back = cx.ints([0, c, h, f])
    mask = Complex(*(cx.op("Reshape", [softshrink(cx, v, a["sparsity"]), back]) for v in (z.re, z.im)))
    y = irfft2(cx, cmul(cx, mask, spec), h, w)
    if a["residual"]:
        y = cx.op("Add", [y, x])
    return _back(cx, node, y)


def long_conv(cx: Exporter, u: str, c: int, kernel: np.ndarray, causal: bool, name: str | None = None) -> str:
    """Each channel of u[N, C, L] convolved with its own kernel[C, K] (zeros outside the sequence):
    causal y[t] = sum_j k[j] u[t-j]; centered y[t] = sum_j k[j] u[t - j + K//2].  A depthwise Conv
    (a cross-correlation) with the reversed kernel and K-1 taps of padding split accordingly."""
    taps = kernel.shape[-1]
    w = np.ascontiguousarray(kernel[:, None, ::-1])
    lo = taps - 1 if causal else taps - 1 - taps // 2
    hi = taps - 1 - lo
    return cx.op("Conv", [u, cx.const(w, name=name)], kernel_shape=[taps], pads=[lo, hi], group=c)


def _fft_conv(cx, node, args, ins):
    a = node.attrs
    c = ins[0].shape[1]
    y = long_conv(cx, args[0], c, cx.array("kernel"), a["causal"], name=node.params["kernel"] + ".reversed")
    if a["bias"]:
        y = cx.op("Add", [y, cx.param("bias", lambda v: v[:, None], ".as_channels")])
    if a["skip"]:
        y = cx.op("Add", [y, cx.op("Mul", [args[0], cx.param("D", lambda v: v[:, None], ".as_channels")])])
    return y


EXPORTS = family("fft", {
    "global_filter": _global_filter,
    "adaptive_filter": _adaptive_filter,
    "fft_conv": _fft_conv,
})
