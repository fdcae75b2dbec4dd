"""TVM lowerings of pooling and resampling (convdsl/ir/ops/pool.py); see common.py for the entry format.

Resampling is exact by construction: each spatial axis is interpolated with a
constant matrix (linear modes) or a constant index vector (nearest) computed
here with PyTorch's own source-index formulas, so fractional scales, align
corners and bicubic borders match ``F.interpolate`` element for element.
"""
from __future__ import annotations

import math

import numpy as np

from convdsl.ir.graph import Node
from convdsl.ir.ops.pool import normalize_dims, pool_geometry
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.tvm.common import R, family, topi
from convdsl.backends.tvm.indexing import interp_matrix, nearest_index

LOWERINGS = family("pool")
_LAYOUT = {1: "NCW", 2: "NCHW", 3: "NCDHW"}
_ADAPTIVE_TE = {1: "adaptive_pool1d", 2: "adaptive_pool", 3: "adaptive_pool3d"}  # topi.nn's


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
            fn = lambda x: getattr(R.nn, f"max_pool{nd}d")(x, k, s, p + p, d, ceil_mode=a["ceil_mode"],  # noqa: E731
                                                           layout=_LAYOUT[nd])
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
            fn = lambda x: getattr(R.nn, f"avg_pool{nd}d")(x, k, s, p + p, (1,) * nd,  # noqa: E731
                                                           ceil_mode=a["ceil_mode"],
                                                           count_include_pad=a["count_include_pad"],
                                                           layout=_LAYOUT[nd])
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
            pool = getattr(R.nn, f"adaptive_avg_pool{nd}d")
            return _batched(cx, args[0], ins, nd, lambda x: pool(x, out, layout=_LAYOUT[nd]))
        return _batched(cx, args[0], ins, nd,
                        lambda x: cx.emit_te(getattr(topi.nn, _ADAPTIVE_TE[nd]), x, out, "max", _LAYOUT[nd]))

    return lower


def _mean(cx, node, args, ins):
    dims = normalize_dims("mean", node.attrs["dims"], ins[0].rank)
    return R.mean(args[0], axis=list(dims), keepdims=node.attrs["keepdim"])


# ---- upsample ---------------------------------------------------------------------------
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


for _n in (1, 2, 3):
    for _k in ("max", "avg"):
        LOWERINGS.add(f"{_k}pool{_n}d", _pool(_k, _n))
LOWERINGS.add("global_avgpool", _global(lambda x, **kw: R.mean(x, **kw)))
LOWERINGS.add("global_maxpool", _global(lambda x, **kw: R.max(x, **kw)))
for _n in (1, 2, 3):
    for _k in ("avg", "max"):
        LOWERINGS.add(f"adaptive_{_k}pool{_n}d", _adaptive(_k, _n))
LOWERINGS.add("mean", _mean)
LOWERINGS.add("upsample", _upsample)
