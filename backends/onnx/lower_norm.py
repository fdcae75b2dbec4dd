"""ONNX exports of normalizations (convdsl/ir/ops/norm.py); see export.py for the entry format."""
from __future__ import annotations

import numpy as np

from convdsl.ir.types import TensorType

from convdsl.backends.onnx.common import family
from convdsl.backends.onnx.export import Exporter

EXPORTS = family("norm")


def _ones_or(cx: Exporter, name: str, shape: tuple[int, ...], fill: float) -> str:
    return cx.param(name) if cx.has_param(name) else cx.const(np.full(shape, fill))


def _batchnorm(cx, node, args, ins):
    c = ins[0].shape[1]
    return cx.op("BatchNormalization", [args[0], _ones_or(cx, "weight", (c,), 1.0), _ones_or(cx, "bias", (c,), 0.0),
                                        cx.param("running_mean"), cx.param("running_var")],
                 epsilon=node.attrs["eps"],
                 # training-only, kept so an import gives the program back: ONNX's momentum weighs the old
                 # running value (PyTorch's momentum the new one)
                 momentum=float(1.0 - node.attrs.get("momentum", 0.1)))


def _layernorm(cx, node, args, ins):
    n = node.attrs["dims"]
    shape = ins[0].shape[ins[0].rank - n:]
    return cx.op("LayerNormalization", [args[0], _ones_or(cx, "weight", shape, 1.0), _ones_or(cx, "bias", shape, 0.0)],
                 axis=-n, epsilon=node.attrs["eps"])


def _layernorm2d(cx, node, args, ins):
    # channels-first: normalize over C of [N, C, H, W] = channels-last LayerNorm between two transposes
    c = ins[0].shape[1]
    x = cx.op("Transpose", [args[0]], perm=[0, 2, 3, 1])
    y = cx.op("LayerNormalization", [x, _ones_or(cx, "weight", (c,), 1.0), _ones_or(cx, "bias", (c,), 0.0)],
              axis=-1, epsilon=node.attrs["eps"])
    return cx.op("Transpose", [y], perm=[0, 3, 1, 2])


def normalize_groups(cx: Exporter, x: str, t: TensorType, groups: int, eps: float) -> str:
    """(x - mean) / sqrt(var + eps) over each group of C/groups channels and the spatial dims,
    in two passes (var = E[(x - mean)^2])."""
    xg = cx.op("Reshape", [x, cx.ints([0, groups, -1])])
    d = cx.op("Sub", [xg, cx.op("ReduceMean", [xg], axes=[2], keepdims=1)])
    var = cx.op("ReduceMean", [cx.op("Mul", [d, d])], axes=[2], keepdims=1)
    y = cx.op("Div", [d, cx.op("Sqrt", [cx.op("Add", [var, cx.scalar(eps, t)])])])
    return cx.op("Reshape", [y, cx.shape_of(x)])


def _channel_affine(cx: Exporter, y: str, t: TensorType) -> str:
    shape = (t.shape[1],) + (1,) * (t.rank - 2)
    w = cx.param("weight", lambda a: a.reshape(shape), ".as_channels")
    b = cx.param("bias", lambda a: a.reshape(shape), ".as_channels")
    return cx.op("Add", [cx.op("Mul", [y, w]), b])


def _groupnorm(cx, node, args, ins):
    y = normalize_groups(cx, args[0], ins[0], node.attrs["groups"], node.attrs["eps"])
    return _channel_affine(cx, y, ins[0]) if node.attrs["affine"] else y


def _instancenorm(cx, node, args, ins):
    a = node.attrs
    c = ins[0].shape[1]
    if a["track_running_stats"]:  # inference uses the running statistics, like batchnorm
        return _batchnorm(cx, node, args, ins)
    return cx.op("InstanceNormalization", [args[0], _ones_or(cx, "weight", (c,), 1.0), _ones_or(cx, "bias", (c,), 0.0)],
                 epsilon=a["eps"])


for _op in ("batchnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d"):
    EXPORTS.add(_op, _batchnorm)
EXPORTS.add("layernorm", _layernorm)
EXPORTS.add("layernorm2d", _layernorm2d)
EXPORTS.add("groupnorm", _groupnorm)
for _n in (1, 2, 3):
    EXPORTS.add(f"instancenorm{_n}d", _instancenorm)
