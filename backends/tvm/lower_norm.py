"""TVM lowerings of the normalization layers (convdsl/ir/ops/norm.py); see common.py for the entry
format.  Inference: batchnorm (and instancenorm with running statistics) is a constant scale and
shift; group, instance and layer norm compute their statistics in two passes."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from convdsl.ir.graph import Node
from convdsl.ir.types import TensorType

from convdsl.backends.tvm.common import TVM_DTYPE, Lowerer, R, family, relax

if TYPE_CHECKING:
    from tvm.relax import Expr

LOWERINGS = family("norm")


def _batchnorm(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    # inference: (x - mean) / sqrt(var + eps) * w + b  =  x * scale + shift
    c = ins[0].shape[1]
    var = cx.param("running_var").astype(np.float64)
    mean = cx.param("running_mean").astype(np.float64)
    scale = 1.0 / np.sqrt(var + node.attrs["eps"])
    w = cx.param("weight").astype(np.float64) if node.attrs["affine"] else np.ones(c)
    b = cx.param("bias").astype(np.float64) if node.attrs["affine"] else np.zeros(c)
    shape = (1, c) + (1,) * (ins[0].rank - 2)
    y = cx.emit(R.multiply(args[0], cx.const((scale * w).reshape(shape))))
    return R.add(y, cx.const((b - mean * scale * w).reshape(shape)))


def _affine_or(cx: Lowerer, name: str, shape: tuple[int, ...], fill: float,
               as_shape: tuple[int, ...] | None = None) -> Expr:
    arr = cx.param(name) if cx.has_param(name) else np.full(shape, fill)
    return cx.const(arr if as_shape is None else arr.reshape(as_shape))


def _layer_norm(cx: Lowerer, x: Expr, t: TensorType, axes: list[int], weight: Expr, bias: Expr, eps: float) -> Expr:
    """Relax's layer_norm (float32 and float16 only); float64 in two passes, as ``normalize_groups``."""
    if TVM_DTYPE[t.dtype] != "float64":
        return R.nn.layer_norm(x, weight, bias, axes=axes, epsilon=eps)
    d = cx.emit(R.subtract(x, cx.emit(R.mean(x, axis=axes, keepdims=True))))
    var = cx.emit(R.mean(cx.emit(R.multiply(d, d)), axis=axes, keepdims=True))
    y = cx.emit(R.multiply(d, cx.emit(R.rsqrt(cx.emit(R.add(var, cx.const(eps)))))))
    return R.add(cx.emit(R.multiply(y, weight)), bias)


def _layernorm(cx, node, args, ins):
    n = node.attrs["dims"]
    rank = ins[0].rank
    shape = ins[0].shape[rank - n:]
    return _layer_norm(cx, args[0], ins[0], list(range(rank - n, rank)), _affine_or(cx, "weight", shape, 1.0),
                       _affine_or(cx, "bias", shape, 0.0), node.attrs["eps"])


def _layernorm2d(cx, node, args, ins):
    c = ins[0].shape[1]
    if TVM_DTYPE[ins[0].dtype] == "float64":  # the affine part broadcasts over dim 1
        shape = (c, 1, 1)
        return _layer_norm(cx, args[0], ins[0], [1], _affine_or(cx, "weight", (c,), 1.0, shape),
                           _affine_or(cx, "bias", (c,), 0.0, shape), node.attrs["eps"])
    return R.nn.layer_norm(args[0], _affine_or(cx, "weight", (c,), 1.0), _affine_or(cx, "bias", (c,), 0.0),
                           axes=[1], epsilon=node.attrs["eps"])


def normalize_groups(cx: Lowerer, x: Expr, t: TensorType, groups: int, eps: float) -> Expr:
    """Group norm of [N, C, *spatial] without the affine part, in two passes:

        mean = E[x],  var = E[(x - mean)^2],  y = (x - mean) / sqrt(var + eps)

    over each group of C/groups channels and the spatial dims.  Relax's group_norm computes the
    variance as E[x^2] - E[x]^2, which cancels when the mean is large against the spread (300 +
    N(0, 1) inputs lose 2 digits).  Half precision is normalized in float32, as torch does."""
    shape = cx.shape(t)
    dtype = TVM_DTYPE[t.dtype]
    work = "float32" if dtype in ("float16", "bfloat16") else dtype
    if work != dtype:
        x = cx.emit(R.astype(x, work))
    xg = cx.emit(R.reshape(x, (shape[0], groups, math.prod(shape[1:]) // groups)))
    d = cx.emit(R.subtract(xg, cx.emit(R.mean(xg, axis=2, keepdims=True))))
    var = cx.emit(R.mean(cx.emit(R.multiply(d, d)), axis=2, keepdims=True))
    y = cx.emit(R.multiply(d, cx.emit(R.rsqrt(cx.emit(R.add(var, cx.const(eps, work)))))))
    y = cx.emit(R.reshape(y, shape))
    return y if work == dtype else cx.emit(R.astype(y, dtype))


def _channel_affine(cx: Lowerer, y: Expr, t: TensorType) -> Expr:
    """y * weight + bias over dim 1 (the node's affine parameters)."""
    shape = (1, t.shape[1]) + (1,) * (t.rank - 2)
    y = cx.emit(R.multiply(y, cx.const(cx.param("weight").reshape(shape))))
    return R.add(y, cx.const(cx.param("bias").reshape(shape)))


def _groupnorm(cx, node, args, ins):
    y = normalize_groups(cx, args[0], ins[0], node.attrs["groups"], node.attrs["eps"])
    return _channel_affine(cx, y, ins[0]) if node.attrs["affine"] else y


def _instancenorm(cx, node, args, ins):
    a = node.attrs
    c = ins[0].shape[1]
    if a["track_running_stats"]:  # inference uses the running statistics, like batchnorm
        if not a["affine"]:
            scale = 1.0 / np.sqrt(cx.param("running_var").astype(np.float64) + a["eps"])
            shape = (1, c) + (1,) * (ins[0].rank - 2)
            y = cx.emit(R.multiply(args[0], cx.const(scale.reshape(shape))))
            return R.add(y, cx.const((-cx.param("running_mean") * scale).reshape(shape)))
        return _batchnorm(cx, node, args, ins)
    # each (sample, channel) over its spatial extent = group norm with one channel per group
    y = normalize_groups(cx, args[0], ins[0], c, a["eps"])
    return _channel_affine(cx, y, ins[0]) if a["affine"] else y


for _name in ("batchnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d"):
    LOWERINGS.add(_name, _batchnorm)
LOWERINGS.add("layernorm", _layernorm)


def layer_norm_input(cx: Lowerer, value, graph_value) -> tuple | None:
    """(x, gamma, beta, eps) where ``value`` (the Relax variable of ``graph_value``) is ``_layernorm``'s
    layer_norm of x over the last axis with constant gamma and beta, read by one node only (a kernel may then
    normalize x itself, in its pack: ``amx_transformer.pack_rows_ln_bf16``), else None."""
    import tvm

    g = cx.graph
    if g.node(graph_value.node).op != "layernorm" or g.is_output(graph_value) or len(g.users(graph_value)) != 1:
        return None
    call = cx.bb.lookup_binding(value) if isinstance(value, relax.Var) else None
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.layer_norm":
        return None
    x, gamma, beta = call.args
    rank = x.ty.ndim
    if [int(a) % rank for a in call.attrs.axes] != [rank - 1] or not (call.attrs.center and call.attrs.scale) \
            or not all(hasattr(getattr(t, "value", None), "numpy") for t in (gamma, beta)) \
            or str(x.ty.dtype) != "float32":
        return None
    return x, gamma, beta, float(call.attrs.epsilon)
LOWERINGS.add("layernorm2d", _layernorm2d)
LOWERINGS.add("groupnorm", _groupnorm)
for _n in (1, 2, 3):
    LOWERINGS.add(f"instancenorm{_n}d", _instancenorm)
