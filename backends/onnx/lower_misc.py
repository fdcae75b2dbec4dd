"""ONNX exports of the misc ops (see export.py for the entry format)."""
from __future__ import annotations

from convdsl.ir.ops.misc import dynamic_groups, flip_dims, rot90_dims
from convdsl.ir.ops.pool import normalize_dims

from convdsl.backends.onnx.common import family
from convdsl.backends.onnx.export import Exporter
from convdsl.backends.onnx.lower_shape import flip


def _swap(rank: int, a: int, b: int) -> list[int]:
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    return perm


def _rot90(cx, node, args, ins):
    # torch.rot90: k=1 flip(b) then swap(a, b); k=2 flip(a, b); k=3 flip(a) then swap(a, b).  The flips'
    # axes are the dims as written (ONNX's may be negative); k and dims are recorded in the doc strings, so
    # convdsl import tells rot90 from a flip and a transpose (and k=0 from an identity)
    k = node.attrs["k"] % 4
    a, b = rot90_dims(node.attrs, ins[0])
    dims = node.attrs["dims"]
    wa, wb = (dims, dims) if isinstance(dims, int) else dims  # one int: rot90_dims refused it already
    cx.record(k=int(node.attrs["k"]), dims=[int(wa), int(wb)])
    x = args[0]
    if k == 0:
        return cx.op("Identity", [x])
    if k == 2:
        return flip(cx, x, [wa, wb])
    x = flip(cx, x, [wb] if k == 1 else [wa])
    return cx.op("Transpose", [x], perm=_swap(ins[0].rank, a, b))


def _flip(cx, node, args, ins):
    flip_dims(node.attrs, ins[0])  # checked; the axes as the program wrote them (ONNX's may be negative)
    dims = node.attrs["dims"]
    return flip(cx, args[0], dims if isinstance(dims, (list, tuple)) else [dims])


def _glu(cx, node, args, ins):
    d, = normalize_dims("glu", node.attrs["dim"], ins[0].rank)
    half = ins[0].shape[d] // 2
    a, b = cx.op("Split", [args[0], cx.ints([half, half])], outputs=2, axis=d)
    return cx.op("Mul", [a, cx.op("Sigmoid", [b])])


def _prelu(cx, node, args, ins):
    # the slope broadcasts over dim 1 of [N, C, ...]: shape [C, 1, ...] (or [1] when shared)
    rank = ins[0].rank
    if node.attrs["shared"]:
        return cx.op("PRelu", [args[0], cx.param("weight")])
    return cx.op("PRelu", [args[0], cx.param("weight", lambda w: w.reshape((-1,) + (1,) * (rank - 2)),
                                             ".as_channels")])


def _amax(cx, node, args, ins):
    dims = normalize_dims("amax", node.attrs["dims"], ins[0].rank)
    return cx.op("ReduceMax", [args[0]], axes=list(dims), keepdims=int(node.attrs["keepdim"]))


def _vector_norm(cx, node, args, ins):
    a = node.attrs
    dims = normalize_dims("vector_norm", a["dims"], ins[0].rank)
    keep = int(a["keepdim"])
    if a["p"] == 2.0:
        return cx.op("ReduceL2", [args[0]], axes=list(dims), keepdims=keep)
    if a["p"] == 1.0:
        return cx.op("ReduceL1", [args[0]], axes=list(dims), keepdims=keep)
    p = cx.scalar(a["p"], ins[0])
    s = cx.op("ReduceSum", [cx.op("Pow", [cx.op("Abs", [args[0]]), p]), cx.ints(dims)], keepdims=keep)
    return cx.op("Pow", [s, cx.scalar(1.0 / a["p"], ins[0])])


def _dynamic_filter(cx, node, args, ins):
    # y = sum over taps t of kernels[:, g*k*k + t] * x shifted by the tap's offset (zeros outside):
    # x [N, G, C/G, H, W] padded once, one Slice per tap
    c, g, taps = dynamic_groups(node.attrs, ins)
    k, d = node.attrs["k"], node.attrs["dilation"]
    x, w = args
    h, wd = ins[0].shape[2], ins[0].shape[3]
    if not (isinstance(h, int) and isinstance(wd, int)):
        raise cx.error("needs static H and W", hint="bind the symbols when exporting (--bind)")
    r = d * (k // 2)
    xp = cx.op("Pad", [x, cx.ints([0, 0, r, r, 0, 0, r, r])])
    xp = cx.op("Reshape", [xp, cx.ints([0, g, c // g, h + 2 * r, wd + 2 * r])])
    kw = cx.op("Reshape", [w, cx.ints([0, g, 1, taps, h, wd])])
    acc = None
    for t in range(taps):
        ty, tx = divmod(t, k)
        patch = cx.op("Slice", [xp, cx.ints([ty * d, tx * d]), cx.ints([ty * d + h, tx * d + wd]), cx.ints([3, 4])])
        tap = cx.op("Squeeze", [cx.op("Slice", [kw, cx.ints([t]), cx.ints([t + 1]), cx.ints([3])]), cx.ints([3])])
        term = cx.op("Mul", [patch, tap])
        acc = term if acc is None else cx.op("Add", [acc, term])
    return cx.op("Reshape", [acc, cx.shape_of(x)])


def _parameter(cx, node, args, ins):
    # the input only places the parameter in the graph (its values are never read): recorded by name so
    # convdsl import anchors the parameter where the program did
    cx.record(anchor=args[0])
    return cx.op("Identity", [cx.param("weight")])


EXPORTS = family("misc", {
    "rot90": _rot90,
    "flip": _flip,
    "glu": _glu,
    "prelu": _prelu,
    "amax": _amax,
    "vector_norm": _vector_norm,
    "dynamic_filter": _dynamic_filter,
    "parameter": _parameter,
})
