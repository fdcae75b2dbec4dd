"""TVM lowerings of the misc ops (convdsl/ir/ops/misc.py); see common.py for the entry format."""
from __future__ import annotations

import math

import numpy as np

from convdsl.ir.ops.misc import dynamic_groups, flip_dims, rot90_dims
from convdsl.ir.ops.pool import normalize_dims

from convdsl.backends.tvm.common import TVM_DTYPE, R, family, relax

LOWERINGS = family("misc")


def _flip(cx, x, dims):
    for d in dims:
        x = cx.emit(R.flip(x, d))
    return x


def _swap(rank: int, a: int, b: int) -> list[int]:
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    return perm


def _rot90(cx, node, args, ins):
    # torch.rot90: k=1 flip(b) then swap(a, b); k=2 flip(a, b); k=3 flip(a) then swap(a, b)
    a, b = rot90_dims(node.attrs, ins[0])
    k = node.attrs["k"] % 4
    x = args[0]
    if k == 0:
        return x
    if k == 2:
        return _flip(cx, x, (a, b))
    x = _flip(cx, x, (b,) if k == 1 else (a,))
    return R.permute_dims(x, _swap(ins[0].rank, a, b))


def _flip_op(cx, node, args, ins):
    return _flip(cx, args[0], flip_dims(node.attrs, ins[0]))


def _glu(cx, node, args, ins):
    # a * sigmoid(b) for the two halves of dim
    d = node.attrs["dim"] % ins[0].rank
    half = cx.shape(ins[0])[d] // 2
    parts = cx.emit(R.split(args[0], [half], axis=d))
    a, b = cx.emit(relax.TupleGetItem(parts, 0)), cx.emit(relax.TupleGetItem(parts, 1))
    return R.multiply(a, cx.emit(R.sigmoid(b)))


def _prelu(cx, node, args, ins):
    # x if x > 0 else w * x, w per channel (dim 1) or one shared slope
    t = ins[0]
    w = cx.param("weight")
    if w.size > 1:
        w = w.reshape((1, -1) + (1,) * (t.rank - 2))
    x = args[0]
    zero = cx.const(0.0, TVM_DTYPE[t.dtype])
    return R.where(cx.emit(R.greater(x, zero)), x, cx.emit(R.multiply(x, cx.const(w, TVM_DTYPE[t.dtype]))))


def _amax(cx, node, args, ins):
    dims = normalize_dims("amax", node.attrs["dims"], ins[0].rank)
    return R.max(args[0], axis=list(dims), keepdims=node.attrs["keepdim"])


def _vector_norm(cx, node, args, ins):
    a = node.attrs
    dims = list(normalize_dims("vector_norm", a["dims"], ins[0].rank))
    p, keep = a["p"], a["keepdim"]
    ax = cx.emit(R.abs(args[0]))
    if math.isinf(p):
        return (R.max if p > 0 else R.min)(ax, axis=dims, keepdims=keep)
    if p == 0:  # number of nonzeros
        nz = cx.emit(R.astype(cx.emit(R.not_equal(ax, cx.const(0.0))), "float32"))
        return R.sum(nz, axis=dims, keepdims=keep)
    if p == 1:
        return R.sum(ax, axis=dims, keepdims=keep)
    if p == 2:
        return R.sqrt(cx.emit(R.sum(cx.emit(R.multiply(args[0], args[0])), axis=dims, keepdims=keep)))
    s = cx.emit(R.sum(cx.emit(R.power(ax, cx.const(p))), axis=dims, keepdims=keep))
    return R.power(s, cx.const(1.0 / p))


def _dynamic_filter(cx, node, args, ins):
    # y[n, c] = sum_t kernels[n, g*k*k + t] * x[n, c] shifted by tap t (zeros outside): the k*k shifted
    # copies of x are slices of x padded by d*(k//2)
    c, g, taps = dynamic_groups(node.attrs, ins)
    k, d = node.attrs["k"], node.attrs["dilation"]
    n, _, h, w = cx.shape(ins[0])
    nk = cx.shape(ins[1])[0]
    p = d * (k // 2)
    xp = cx.emit(R.nn.pad(args[0], [0, 0, 0, 0, p, p, p, p]))
    shifted = [cx.emit(R.strided_slice(xp, [2, 3], [d * ty, d * tx], [d * ty + h, d * tx + w]))
               for ty in range(k) for tx in range(k)]
    patches = cx.emit(R.stack(shifted, axis=2))  # [N, C, T, H, W]
    patches = cx.emit(R.reshape(patches, (n, g, c // g, taps, h, w)))
    kern = cx.emit(R.reshape(args[1], (nk, g, 1, taps, h, w)))
    y = cx.emit(R.sum(cx.emit(R.multiply(patches, kern)), axis=[3]))
    return R.reshape(y, (n, c, h, w))


def _parameter(cx, node, args, ins):
    # the learned tensor itself; the input only places it in the graph
    return cx.const(np.asarray(cx.param("weight")), TVM_DTYPE[node.types[0].dtype])


LOWERINGS.add("rot90", _rot90)
LOWERINGS.add("flip", _flip_op)
LOWERINGS.add("glu", _glu)
LOWERINGS.add("prelu", _prelu)
LOWERINGS.add("amax", _amax)
LOWERINGS.add("vector_norm", _vector_norm)
LOWERINGS.add("dynamic_filter", _dynamic_filter)
LOWERINGS.add("parameter", _parameter)
