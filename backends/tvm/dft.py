"""Discrete Fourier transforms as matrix products (Relax has no FFT op).

A complex tensor is a pair of real tensors (``Complex(re, im)``, ``im`` None
for a real one).  A transform of n points is one product with a constant
[n, n] DFT matrix when n <= DIRECT_MAX; longer ones are factored
Cooley-Tukey style, n = n1 * n2 (as FlashFFTConv's Monarch decomposition):

    x[..., n] -> [..., n1, n2]            (j = n2*j1 + j2)
    F_n1 @ x          along j1             (one batched matmul)
    * twiddle[k1, j2] = w_n^(k1*j2)        (elementwise)
    DFT_n2 along j2                        (recursively: a matmul, or factored again)
    transpose -> [..., n2, n1] -> [..., n]  (k = k1 + n1*k2)

so the cost is O(n (n1 + n2)) instead of O(n^2), and every step is a GEMM
that GPU schedules (DLight) and CPU templates handle.  Matrices are computed
in float64 and stored in float32.  Real-input transforms (rfft) keep the
n//2 + 1 non-negative frequencies; irfft ignores the imaginary parts of the
DC and Nyquist bins, as numpy/torch do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convdsl.backends.tvm.common import R, relax

DIRECT_MAX = 128  # largest transform done as one dense DFT matrix


@dataclass
class Complex:
    re: relax.Expr
    im: relax.Expr | None = None


def _twiddles(rows: int, cols: int, n: int, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """exp(sign * 2 pi i * r * c / n) for r < rows, c < cols (float64)."""
    phase = (np.outer(np.arange(rows), np.arange(cols)) % n) * (2.0 * math.pi / n)
    return np.cos(phase), sign * np.sin(phase)


def _factor(n: int) -> int | None:
    """The largest divisor n1 <= sqrt(n) (and <= DIRECT_MAX), or None for a prime."""
    best = None
    for d in range(2, min(DIRECT_MAX, math.isqrt(n)) + 1):
        if n % d == 0:
            best = d
    return best


def cmul_const(cx, z: Complex, re: np.ndarray, im: np.ndarray) -> Complex:
    """z * (re + i im) elementwise (broadcasting)."""
    a, b = cx.const(re), cx.const(im)
    if z.im is None:
        return Complex(cx.emit(R.multiply(z.re, a)), cx.emit(R.multiply(z.re, b)))
    r = cx.emit(R.subtract(cx.emit(R.multiply(z.re, a)), cx.emit(R.multiply(z.im, b))))
    i = cx.emit(R.add(cx.emit(R.multiply(z.re, b)), cx.emit(R.multiply(z.im, a))))
    return Complex(r, i)


def cmul(cx, x: Complex, y: Complex) -> Complex:
    """x * y elementwise, both complex tensors."""
    r = cx.emit(R.subtract(cx.emit(R.multiply(x.re, y.re)), cx.emit(R.multiply(x.im, y.im))))
    i = cx.emit(R.add(cx.emit(R.multiply(x.re, y.im)), cx.emit(R.multiply(x.im, y.re))))
    return Complex(r, i)


def _matmul(cx, z: Complex, mre: np.ndarray, mim: np.ndarray, left: bool) -> Complex:
    """z @ M (or M @ z when ``left``) with a constant complex M."""
    a, b = cx.const(mre), cx.const(mim)

    def mm(x, m):
        return cx.emit(R.matmul(m, x) if left else R.matmul(x, m))

    if z.im is None:
        return Complex(mm(z.re, a), mm(z.re, b))
    re = cx.emit(R.subtract(mm(z.re, a), mm(z.im, b)))
    im = cx.emit(R.add(mm(z.re, b), mm(z.im, a)))
    return Complex(re, im)


def dft_last(cx, z: Complex, shape: tuple[int, ...], sign: float = -1.0, scale: float = 1.0) -> Complex:
    """Complex DFT over the last axis (size shape[-1]); sign -1 forward, +1 inverse (unscaled unless ``scale``)."""
    n = shape[-1]
    n1 = _factor(n) if n > DIRECT_MAX else None
    if n1 is None:
        re, im = _twiddles(n, n, n, sign)
        return _matmul(cx, z, re * scale, im * scale, left=False)
    n2 = n // n1
    lead = shape[:-1]
    split = lead + (n1, n2)
    z = Complex(cx.emit(R.reshape(z.re, split)), None if z.im is None else cx.emit(R.reshape(z.im, split)))
    re, im = _twiddles(n1, n1, n1, sign)
    z = _matmul(cx, z, re * scale, im * scale, left=True)  # DFT_n1 along j1
    z = cmul_const(cx, z, *_twiddles(n1, n2, n, sign))  # twiddles w_n^(k1*j2)
    z = dft_last(cx, z, split, sign)  # DFT_n2 along j2
    perm = list(range(len(lead))) + [len(lead) + 1, len(lead)]
    out = lead + (n,)
    return Complex(*(cx.emit(R.reshape(cx.emit(R.permute_dims(t, perm)), out)) for t in (z.re, z.im)))


def dft_axis(cx, z: Complex, shape: tuple[int, ...], axis: int, sign: float, scale: float = 1.0) -> Complex:
    """Complex DFT over ``axis``: a left product for short axes, else moved last."""
    rank = len(shape)
    axis %= rank
    if axis == rank - 1:
        return dft_last(cx, z, shape, sign, scale)
    n = shape[axis]
    if axis == rank - 2 and n <= DIRECT_MAX:
        re, im = _twiddles(n, n, n, sign)
        return _matmul(cx, z, re * scale, im * scale, left=True)
    perm = [i for i in range(rank) if i != axis] + [axis]
    inv = list(np.argsort(perm))
    moved = tuple(shape[i] for i in perm)
    z = Complex(cx.emit(R.permute_dims(z.re, perm)), None if z.im is None else cx.emit(R.permute_dims(z.im, perm)))
    z = dft_last(cx, z, moved, sign, scale)
    return Complex(cx.emit(R.permute_dims(z.re, inv)), cx.emit(R.permute_dims(z.im, inv)))


def rfft(cx, x: relax.Expr, shape: tuple[int, ...], n: int, scale: float = 1.0) -> Complex:
    """Real x[..., m] zero-padded (or cut) to n points -> spectrum [..., n//2 + 1]."""
    m, f = shape[-1], n // 2 + 1
    if n <= DIRECT_MAX or _factor(n) is None:
        re, im = _twiddles(n, f, n, -1.0)
        rows = min(m, n)
        if m > n:
            x = cx.emit(R.strided_slice(x, [len(shape) - 1], [0], [n]))
        return _matmul(cx, Complex(x), re[:rows] * scale, im[:rows] * scale, left=False)
    if m != n:
        x = cx.emit(R.nn.pad(x, [0, 0] * (len(shape) - 1) + [0, n - m])) if m < n else \
            cx.emit(R.strided_slice(x, [len(shape) - 1], [0], [n]))
    full = shape[:-1] + (n,)
    z = dft_last(cx, Complex(x), full, -1.0, scale)
    axis = [len(shape) - 1]
    return Complex(cx.emit(R.strided_slice(z.re, axis, [0], [f])), cx.emit(R.strided_slice(z.im, axis, [0], [f])))


def irfft(cx, z: Complex, shape: tuple[int, ...], n: int, start: int = 0, length: int | None = None,
          scale: float | None = None) -> relax.Expr:
    """Spectrum [..., n//2 + 1] -> real signal of n points, outputs start .. start+length.
    ``scale`` defaults to 1/n (numpy's "backward" norm)."""
    f = n // 2 + 1
    length = n - start if length is None else length
    scale = 1.0 / n if scale is None else scale
    if n <= DIRECT_MAX or _factor(n) is None:
        # y[t] = scale * sum_k w_k (re_k cos(2 pi k t / n) - im_k sin(2 pi k t / n)), w = 1 at DC/Nyquist, else 2
        k = np.arange(f)[:, None]
        t = np.arange(start, start + length)[None, :]
        w = np.where((k == 0) | ((n % 2 == 0) & (k == n // 2)), 1.0, 2.0) * scale
        phase = (k * t % n) * (2.0 * math.pi / n)
        y = cx.emit(R.matmul(z.re, cx.const(w * np.cos(phase))))
        if z.im is not None:
            y = cx.emit(R.subtract(y, cx.emit(R.matmul(z.im, cx.const(w * np.sin(phase))))))
        return y
    # the full Hermitian spectrum, then a complex inverse DFT; the real part is the signal
    axis = len(shape) - 1
    mirror = np.arange(n - f, 0, -1)  # bins n-f .. 1 give frequencies f .. n-1
    idx = cx.const(mirror, "int64")
    re = cx.emit(R.concat([z.re, cx.emit(R.take(z.re, idx, axis=axis, mode="clip"))], axis=axis))
    im = cx.emit(R.concat([z.im, cx.emit(R.negative(cx.emit(R.take(z.im, idx, axis=axis, mode="clip"))))], axis=axis))
    full = shape[:-1] + (n,)
    y = dft_last(cx, Complex(re, im), full, +1.0, scale).re
    if start or length != n:
        y = cx.emit(R.strided_slice(y, [axis], [start], [start + length]))
    return y


def long_conv(cx, u: relax.Expr, shape: tuple[int, ...], kernel: np.ndarray, causal: bool = True) -> relax.Expr:
    """Each channel of u[N, C, L] convolved with its own constant kernel[C, K] by DFT products,
    zero-padded to n = L + K so nothing wraps (``fft_long_conv``'s semantics):
    causal y[t] = sum_j k[j] u[t-j]; centered y[t] = sum_j k[j] u[t - j + K//2]."""
    L, K = shape[-1], kernel.shape[-1]
    n = L + K
    spectrum = np.fft.rfft(kernel.astype(np.float64), n=n)  # the kernel's transform, once, here
    z = rfft(cx, u, shape, n)
    z = cmul_const(cx, z, spectrum.real, spectrum.imag)
    return irfft(cx, z, shape[:-1] + (n // 2 + 1,), n, start=0 if causal else K // 2, length=L)
