"""TVM lowerings of pooling and resampling (see lowering.py for the entry format).

Resampling is exact by construction: each spatial axis is interpolated with a
constant matrix (linear modes) or a constant index vector (nearest) computed
here with PyTorch's own source-index formulas, so fractional scales, align
corners and bicubic borders match ``F.interpolate`` element for element.
"""
from __future__ import annotations

import math

import numpy as np
from tvm import relax, topi

from convdsl.ir.graph import Node
from convdsl.ir.ops.pool import normalize_dims, pool_geometry
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

R = relax.op
_LAYOUT = {1: "NCW", 2: "NCHW", 3: "NCDHW"}
_MAX = {1: R.nn.max_pool1d, 2: R.nn.max_pool2d, 3: R.nn.max_pool3d}
_AVG = {1: R.nn.avg_pool1d, 2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d}
_ADAPTIVE_AVG = {1: R.nn.adaptive_avg_pool1d, 2: R.nn.adaptive_avg_pool2d, 3: R.nn.adaptive_avg_pool3d}
_ADAPTIVE_TE = {1: topi.nn.adaptive_pool1d, 2: topi.nn.adaptive_pool, 3: topi.nn.adaptive_pool3d}


def _batched(cx, x, ins: list[TensorType], nd: int, fn):
    """Run a pooling op written for [N, C, *spatial] on an unbatched [C, *spatial] input too."""
    t = ins[0]
    if t.rank == nd + 2:
        return fn(x)
    y = cx.emit(fn(cx.emit(R.expand_dims(x, 0))))
    return R.squeeze(y, [0])


def windows_in_padding(sizes, outs, k, s, p, d) -> np.ndarray:
    """[*outs] bool: the max-pool windows that cover no input element (only padding), which torch
    reduces to -inf.  A window is empty when it is empty along one of its dims."""
    empty = np.zeros(tuple(outs), dtype=bool)
    for i, (size, out, ki, si, pi, di) in enumerate(zip(sizes, outs, k, s, p, d)):
        taps = np.arange(out)[:, None] * si - pi + np.arange(ki)[None, :] * di  # input index of each tap
        none = ~((taps >= 0) & (taps < size)).any(axis=1)
        empty |= none.reshape((1,) * i + (out,) + (1,) * (len(outs) - i - 1))
    return empty


def _pool(kind: str, nd: int):
    def lower(cx, node: Node, args, ins):
        a = node.attrs
        k, s, p, d = pool_geometry(a, nd)
        if kind == "max":
            fn = lambda x: _MAX[nd](x, k, s, p + p, d, ceil_mode=a["ceil_mode"], layout=_LAYOUT[nd])  # noqa: E731
            if any(pi > 0 and di > 1 for pi, di in zip(p, d)):
                # a window may then lie entirely in the padding (with pad <= k/2, the op table's rule,
                # an undilated window always covers an element): torch gives -inf there, TVM's pool
                # the lowest finite float (its reduction's start value), so set those windows to -inf
                empty = windows_in_padding(cx.shape(ins[0])[-nd:], cx.out_shape()[-nd:], k, s, p, d)
                if empty.any():
                    y = cx.emit(_batched(cx, args[0], ins, nd, fn))
                    mask = empty.reshape((1,) * (ins[0].rank - nd) + empty.shape)
                    return R.where(cx.const(mask, "bool"), cx.const(float("-inf")), y)
        else:
            fn = lambda x: _AVG[nd](x, k, s, p + p, (1,) * nd, ceil_mode=a["ceil_mode"],  # noqa: E731
                                     count_include_pad=a["count_include_pad"], layout=_LAYOUT[nd])
        return _batched(cx, args[0], ins, nd, fn)

    return lower


def _global(reduce):
    def lower(cx, node, args, ins):
        return reduce(args[0], axis=list(range(2, ins[0].rank)), keepdims=node.attrs["keepdim"])

    return lower


def _adaptive(kind: str, nd: int):
    def lower(cx, node, args, ins):
        out = tuple_n(node.attrs["out"], nd)
        if kind == "avg":
            return _batched(cx, args[0], ins, nd, lambda x: _ADAPTIVE_AVG[nd](x, out, layout=_LAYOUT[nd]))
        return _batched(cx, args[0], ins, nd,
                        lambda x: cx.emit_te(_ADAPTIVE_TE[nd], x, out, "max", _LAYOUT[nd]))

    return lower


def _mean(cx, node, args, ins):
    dims = normalize_dims("mean", node.attrs["dims"], ins[0].rank)
    return R.mean(args[0], axis=list(dims), keepdims=node.attrs["keepdim"])


# ---- upsample ---------------------------------------------------------------------------
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


def resample_axis(cx, x, shape: tuple[int, ...], axis: int, out_size: int, mode: str, align_corners: bool,
                  scale: float | None):
    """Resample one axis of ``x`` (static ``shape``); returns (expr, new shape)."""
    n = shape[axis]
    new = shape[:axis] + (out_size,) + shape[axis + 1:]
    if mode == "nearest":
        idx = nearest_index(n, out_size, scale)
        return cx.emit(R.take(x, cx.const(idx, "int64"), axis=axis, mode="clip")), new
    m = interp_matrix(n, out_size, mode, align_corners, scale)
    if axis == len(shape) - 1:  # [..., in] @ [in, out]
        return cx.emit(R.matmul(x, cx.const(m.T))), new
    rest = math.prod(shape[axis + 1:])  # [out, in] @ [..., in, rest]
    y = cx.emit(R.reshape(x, shape[:axis] + (n, rest)))
    y = cx.emit(R.matmul(cx.const(m), y))
    return cx.emit(R.reshape(y, new)), new


def _upsample(cx, node, args, ins):
    a = node.attrs
    t = ins[0]
    nd = t.rank - 2
    out = cx.out_shape()[2:]
    if a["scale"] is None:
        scales = (None,) * nd
    elif isinstance(a["scale"], (int, float)):
        scales = (float(a["scale"]),) * nd
    else:
        scales = tuple(float(s) for s in a["scale"])
    mode = "linear" if a["mode"] in ("linear", "bilinear", "trilinear") else a["mode"]
    x, shape = args[0], cx.shape(t)
    for i in range(nd):
        if out[i] != shape[2 + i] or mode != "nearest":
            x, shape = resample_axis(cx, x, shape, 2 + i, out[i], mode, a["align_corners"], scales[i])
    return x


LOWERINGS = {
    **{f"{k}pool{n}d": _pool(k, n) for k in ("max", "avg") for n in (1, 2, 3)},
    "global_avgpool": _global(R.mean),
    "global_maxpool": _global(R.max),
    **{f"adaptive_{k}pool{n}d": _adaptive(k, n) for k in ("avg", "max") for n in (1, 2, 3)},
    "mean": _mean,
    "upsample": _upsample,
}
