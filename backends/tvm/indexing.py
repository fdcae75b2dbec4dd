"""Constant index vectors and interpolation matrices, computed in NumPy at lowering time and
shared by several families: padding by gathers (pad, convolutions with pad_mode), PyTorch's
resampling rules (upsample, SGConv's kernel interpolation)."""
from __future__ import annotations

import math

import numpy as np

from convdsl.ir.types import TensorType

from convdsl.backends.tvm.common import R


# ---- padding ---------------------------------------------------------------------------
def pad_index(size: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Source index of every padded position along one axis."""
    i = np.arange(-lo, size + hi)
    if mode == "replicate":
        return np.clip(i, 0, size - 1)
    if mode == "circular":
        return np.mod(i, size)
    if mode == "reflect":  # mirror without repeating the edge
        period = 2 * (size - 1)
        j = np.mod(i, period) if period else np.zeros_like(i)
        return np.where(j < size, j, period - j)
    raise ValueError(mode)


def pad_by_index(cx, x, t: TensorType, pads: list[tuple[int, int]], mode: str):
    """reflect / replicate / circular padding of the trailing len(pads) dims as gathers."""
    shape = cx.shape(t)
    first = len(shape) - len(pads)
    for i, (lo, hi) in enumerate(pads):
        if lo or hi:
            idx = pad_index(shape[first + i], lo, hi, mode)
            x = cx.emit(R.take(x, cx.const(idx, "int64"), axis=first + i, mode="clip"))
    return x


# ---- resampling (PyTorch's source-index formulas) ---------------------------------------------
def _source_scale(in_size: int, out_size: int, scale: float | None, align_corners: bool) -> float:
    """PyTorch's area_pixel_compute_scale."""
    if align_corners:
        return (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return 1.0 / scale if scale is not None else in_size / out_size


def nearest_index(in_size: int, out_size: int, scale: float | None) -> np.ndarray:
    """PyTorch's nearest_idx (float32 arithmetic, as its CPU kernel)."""
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    s = np.float32(1.0 / scale) if scale is not None else np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * s).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    def c1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def c2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)]


def interp_matrix(in_size: int, out_size: int, mode: str, align_corners: bool, scale: float | None) -> np.ndarray:
    """[out, in] matrix M with out = M @ in along one axis, as F.interpolate computes it."""
    m = np.zeros((out_size, in_size))
    rs = _source_scale(in_size, out_size, scale, align_corners)
    for o in range(out_size):
        src = rs * o if align_corners else rs * (o + 0.5) - 0.5
        if mode == "bicubic":
            i = math.floor(src)
            for j, w in enumerate(_cubic_weights(src - i)):
                m[o, min(max(i - 1 + j, 0), in_size - 1)] += w
        else:
            src = max(src, 0.0)
            i0 = min(int(src), in_size - 1)
            i1 = i0 + (1 if i0 < in_size - 1 else 0)
            lam = min(max(src - i0, 0.0), 1.0)
            m[o, i0] += 1.0 - lam
            m[o, i1] += lam
    return m
