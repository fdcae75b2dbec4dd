"""ONNX exports of the shape ops (see export.py for the entry format).

flatten and reshape become one Reshape whose target keeps symbolic dims
(ONNX 0 / -1, or the size read at run time); pixel_shuffle is DepthToSpace in
CRD order (PyTorch's); pixel_unshuffle is a reshape-transpose-reshape (ONNX's
SpaceToDepth orders channels the other way).
"""
from __future__ import annotations

from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.ops.shape import explicit_pads, index_as_slice, index_positions, select_dim, split_sizes, squeeze_dims

from convdsl.backends.onnx.export import Exporter
from convdsl.backends.onnx.common import family, pad_spatial


def _reshape(cx: Exporter, node, args, ins):
    return cx.reshape(args[0], ins[0], node.types[0].shape)


def _permute(cx, node, args, ins):
    dims = node.attrs["dims"]
    dims = (dims,) if isinstance(dims, int) else dims
    return cx.op("Transpose", [args[0]], perm=list(normalize_dims("permute", dims, ins[0].rank)))


def _transpose(cx, node, args, ins):
    rank = ins[0].rank
    perm = list(range(rank))
    a, b = node.attrs["dim0"] % rank, node.attrs["dim1"] % rank
    perm[a], perm[b] = perm[b], perm[a]
    return cx.op("Transpose", [args[0]], perm=perm)


def _squeeze(cx, node, args, ins):
    dims = squeeze_dims(node.attrs, ins[0])
    if not dims:
        return cx.op("Identity", [args[0]])
    return cx.op("Squeeze", [args[0], cx.ints(dims)])


def _unsqueeze(cx, node, args, ins):
    d, = normalize_dims("unsqueeze", node.attrs["dim"], ins[0].rank + 1)
    return cx.op("Unsqueeze", [args[0], cx.ints([d])])


def _concat(cx, node, args, ins):
    if len(args) == 1:
        return cx.op("Identity", [args[0]])
    return cx.op("Concat", args, axis=node.attrs["dim"] % ins[0].rank)


def _split(cx, node, args, ins):
    sizes = split_sizes(node.attrs, ins[0])
    if len(sizes) == 1:
        return [cx.op("Identity", [args[0]])]
    axis = node.attrs["dim"] % ins[0].rank
    return cx.op("Split", [args[0], cx.ints(sizes)], outputs=len(sizes), axis=axis)


def _pad(cx, node, args, ins):
    a = node.attrs
    pairs = explicit_pads(a["pad"], ins[0].rank - 2)
    y = pad_spatial(cx, args[0], ins[0], pairs, a["mode"], a["value"])
    return y if y != args[0] else cx.op("Identity", [y])


def _pixel_shuffle(cx, node, args, ins):
    r = node.attrs["factor"]
    t = ins[0]
    if t.rank == 4:
        return cx.op("DepthToSpace", [args[0]], blocksize=r, mode="CRD")
    if t.rank == 3:  # unbatched [C, H, W]
        y = cx.op("DepthToSpace", [cx.op("Unsqueeze", [args[0], cx.ints([0])])], blocksize=r, mode="CRD")
        return cx.op("Squeeze", [y, cx.ints([0])])
    raise cx.error("pixel_shuffle exports [N, C, H, W] and [C, H, W] inputs only")


def _pixel_unshuffle(cx, node, args, ins):
    # [N, C, H*r, W*r] -> [N, C, H, r, W, r] -> [N, C, r, r, H, W] -> [N, C*r*r, H, W]
    r = node.attrs["factor"]
    t = ins[0]
    if t.rank != 4:
        raise cx.error("pixel_unshuffle exports rank-4 inputs [N, C, H, W] only")
    n, c, _, _ = t.shape
    _, co, ho, wo = node.types[0].shape
    x = cx.reshape(args[0], t, (n, c, ho, r, wo, r))
    x = cx.op("Transpose", [x], perm=[0, 1, 3, 5, 2, 4])
    return cx.reshape(x, t.with_shape((n, c, r, r, ho, wo)), (n, co, ho, wo), [(args[0], t)])


def _select(cx, node, args, ins):
    d = select_dim(node.attrs, ins[0])
    return cx.op("Gather", [args[0], cx.const(node.attrs["index"], "int64")], axis=d)


def _index_select(cx, node, args, ins):
    d, index = index_positions(node.attrs, ins[0])
    run = index_as_slice(index)
    if run is not None:
        return cx.op("Slice", [args[0], *(cx.ints([v]) for v in run[:2]), cx.ints([d]), cx.ints([run[2]])])
    return cx.op("Gather", [args[0], cx.ints(list(index))], axis=d)  # a 1-D index keeps the dim


def _take(cx, node, args, ins):
    # ONNX Gather takes an index tensor of any rank: out = x.shape[:dim] + index.shape + x.shape[dim+1:]
    d, = normalize_dims("take", node.attrs["dim"], ins[0].rank)
    return cx.op("Gather", [args[0], cx.param("index")], axis=d)


def flip(cx: Exporter, x: str, dims) -> str:
    """Reverse ``x`` along ``dims`` (a Slice with step -1)."""
    dims = list(dims)
    n = len(dims)
    return cx.op("Slice", [x, cx.ints([-1] * n), cx.ints([-(2 ** 62)] * n), cx.ints(dims), cx.ints([-1] * n)])


EXPORTS = family("shape", {
    "flatten": _reshape,
    "reshape": _reshape,
    "permute": _permute,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "unsqueeze": _unsqueeze,
    "concat": _concat,
    "split": _split,
    "pad": _pad,
    "pixel_shuffle": _pixel_shuffle,
    "pixel_unshuffle": _pixel_unshuffle,
    "select": _select,
    "index_select": _index_select,
    "take": _take,
})
