"""TVM lowerings of the shape ops (see lowering.py for the entry format).

Shapes are static after binding, so every view (flatten, reshape, squeeze,
unsqueeze) is one Relax ``reshape`` to the node's own output type: the shape
rule in the op table stays the only place that computes it.
"""
from __future__ import annotations

import numpy as np
from tvm import relax

from convdsl.ir.graph import Node
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.ops.shape import explicit_pads, split_sizes
from convdsl.ir.types import TensorType

R = relax.op


def _view(cx, node: Node, args, ins):
    return R.reshape(args[0], cx.out_shape())


def _permute(cx, node, args, ins):
    dims = node.attrs["dims"]
    return R.permute_dims(args[0], list(normalize_dims("permute", dims, ins[0].rank)))


def _transpose(cx, node, args, ins):
    rank = ins[0].rank
    a, = normalize_dims("transpose", node.attrs["dim0"], rank)
    b, = normalize_dims("transpose", node.attrs["dim1"], rank)
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    return R.permute_dims(args[0], perm)


def _concat(cx, node, args, ins):
    if len(args) == 1:
        return args[0]
    return R.concat(args, axis=node.attrs["dim"] % ins[0].rank)


def _split(cx, node, args, ins):
    sizes = split_sizes(node.attrs, ins[0])
    if len(sizes) == 1:
        return [args[0]]
    axis = node.attrs["dim"] % ins[0].rank
    indices = list(np.cumsum(sizes)[:-1].tolist())
    parts = cx.emit(R.split(args[0], indices, axis=axis))
    return [relax.TupleGetItem(parts, i) for i in range(len(sizes))]


# ---- pad ----------------------------------------------------------------------------
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


def _pad(cx, node, args, ins):
    a = node.attrs
    t = ins[0]
    pairs = explicit_pads(a["pad"], t.rank - 2)
    if a["mode"] != "zeros":
        return pad_by_index(cx, args[0], t, pairs, a["mode"])
    width = [0, 0, 0, 0] + [p for pr in pairs for p in pr]
    return R.nn.pad(args[0], width, "constant", a["value"])


# ---- pixel shuffle ---------------------------------------------------------------------
def _pixel_shuffle(cx, node, args, ins):
    # [..., C*r*r, H, W] -> [..., C, r, r, H, W] -> [..., C, H, r, W, r] -> [..., C, H*r, W*r]
    r = node.attrs["factor"]
    shape = cx.shape(ins[0])
    lead, (c, h, w) = shape[:-3], shape[-3:]
    k = len(lead)
    y = cx.emit(R.reshape(args[0], lead + (c // (r * r), r, r, h, w)))
    y = cx.emit(R.permute_dims(y, list(range(k)) + [k, k + 3, k + 1, k + 4, k + 2]))
    return R.reshape(y, cx.out_shape())


def _pixel_unshuffle(cx, node, args, ins):
    # [..., C, H*r, W*r] -> [..., C, H, r, W, r] -> [..., C, r, r, H, W] -> [..., C*r*r, H, W]
    r = node.attrs["factor"]
    shape = cx.shape(ins[0])
    lead, (c, h, w) = shape[:-3], shape[-3:]
    k = len(lead)
    y = cx.emit(R.reshape(args[0], lead + (c, h // r, r, w // r, r)))
    y = cx.emit(R.permute_dims(y, list(range(k)) + [k, k + 2, k + 4, k + 1, k + 3]))
    return R.reshape(y, cx.out_shape())


LOWERINGS = {
    "flatten": _view,
    "reshape": _view,
    "squeeze": _view,
    "unsqueeze": _view,
    "permute": _permute,
    "transpose": _transpose,
    "concat": _concat,
    "split": _split,
    "pad": _pad,
    "pixel_shuffle": _pixel_shuffle,
    "pixel_unshuffle": _pixel_unshuffle,
}

__all__ = ["LOWERINGS", "pad_by_index", "pad_index"]
