"""TVM lowerings of the shape ops (convdsl/ir/ops/shape.py); see common.py for the entry format.

Every view (flatten, reshape, squeeze, unsqueeze) is one Relax ``reshape`` to the
node's own output type (sizes, or shape-variable expressions of a dynamic batch): the
shape rule in the op table stays the only place that computes it.
"""
from __future__ import annotations

import numpy as np

from convdsl.ir.graph import Node
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.ops.shape import explicit_pads, index_as_slice, index_positions, select_dim, split_sizes

from convdsl.backends.tvm.common import R, family, relax
from convdsl.backends.tvm.indexing import pad_by_index

LOWERINGS = family("shape")


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


# ---- pad, select ----------------------------------------------------------------------
def _pad(cx, node, args, ins):
    a = node.attrs
    t = ins[0]
    pairs = explicit_pads(a["pad"], t.rank - 2)
    if a["mode"] != "zeros":
        return pad_by_index(cx, args[0], t, pairs, a["mode"])
    width = [0, 0, 0, 0] + [p for pr in pairs for p in pr]
    return R.nn.pad(args[0], width, "constant", a["value"])


def _select(cx, node, args, ins):
    d = select_dim(node.attrs, ins[0])
    size = cx.shape(ins[0])[d]
    i = node.attrs["index"] % size
    y = cx.emit(R.strided_slice(args[0], [d], [i], [i + 1]))
    return R.squeeze(y, [d])


def _index_select(cx, node, args, ins):
    d, index = index_positions(node.attrs, ins[0])
    run = index_as_slice(index)
    if run is not None:  # a copy of a window, which fuses with its neighbours, rather than a gather
        start, stop, step = run
        return R.strided_slice(args[0], [d], [start], [stop], [step])
    return R.take(args[0], cx.const(np.array(index), "int64"), axis=d, mode="clip")


def _take(cx, node, args, ins):
    d, = normalize_dims("take", node.attrs["dim"], ins[0].rank)
    return R.take(args[0], cx.const(cx.param("index"), "int64"), axis=d, mode="clip")


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


LOWERINGS.add("flatten", _view)
LOWERINGS.add("reshape", _view)
LOWERINGS.add("squeeze", _view)
LOWERINGS.add("unsqueeze", _view)
LOWERINGS.add("permute", _permute)
LOWERINGS.add("transpose", _transpose)
LOWERINGS.add("concat", _concat)
LOWERINGS.add("split", _split)
LOWERINGS.add("pad", _pad)
LOWERINGS.add("pixel_shuffle", _pixel_shuffle)
LOWERINGS.add("pixel_unshuffle", _pixel_unshuffle)
LOWERINGS.add("select", _select)
LOWERINGS.add("index_select", _index_select)
LOWERINGS.add("take", _take)
