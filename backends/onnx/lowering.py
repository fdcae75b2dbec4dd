"""ONNX export table: op name -> a function that writes ONNX nodes for one graph node
(see export.py for the entry format).  This file holds convolution, linear,
activations, arithmetic and normalization; the other families are in
``lower_<family>.py`` and merged below (dict merge, one table).
"""
from __future__ import annotations

import math

import numpy as np

from convdsl.errors import LoweringError
from convdsl.ir.graph import Node
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.onnx.common import gelu, linear, pad_spatial, silu
from convdsl.backends.onnx.export import ONNX_DTYPE, ExportFn, Exporter


# ---- convolution -----------------------------------------------------------------------
def _conv(nd: int) -> ExportFn:
    def export(cx: Exporter, node: Node, args: list[str], ins: list[TensorType]) -> str:
        a = node.attrs
        x = args[0]
        pads = conv_padding(a, list(ins[0].shape[2:]), nd)
        if a["pad_mode"] != "zeros":
            x = pad_spatial(cx, x, ins[0], pads, a["pad_mode"])
            pads = [(0, 0)] * nd
        inputs = [x, cx.param("weight")] + ([cx.param("bias")] if a["bias"] else [])
        return cx.op("Conv", inputs, kernel_shape=list(tuple_n(a["k"], nd)), strides=list(tuple_n(a["stride"], nd)),
                     pads=[lo for lo, _ in pads] + [hi for _, hi in pads],
                     dilations=list(tuple_n(a["dilation"], nd)), group=a["groups"])

    return export


def _conv_transpose(nd: int) -> ExportFn:
    def export(cx, node, args, ins):
        a = node.attrs
        p = tuple_n(a["pad"], nd)
        inputs = [args[0], cx.param("weight")] + ([cx.param("bias")] if a["bias"] else [])
        return cx.op("ConvTranspose", inputs, kernel_shape=list(tuple_n(a["k"], nd)),
                     strides=list(tuple_n(a["stride"], nd)), pads=list(p) + list(p),
                     output_padding=list(tuple_n(a["output_pad"], nd)), dilations=list(tuple_n(a["dilation"], nd)),
                     group=a["groups"])

    return export


# ---- linear and arithmetic -----------------------------------------------------------------
def _linear(cx, node, args, ins):
    return linear(cx, args[0], ins[0], cx.param("weight"), cx.param("bias") if node.attrs["bias"] else None)


def _unary(op_type: str, **attrs) -> ExportFn:
    return lambda cx, node, args, ins: cx.op(op_type, [args[0]], **attrs)


def _relu6(cx, node, args, ins):
    return cx.op("Clip", [args[0], cx.scalar(0.0, ins[0]), cx.scalar(6.0, ins[0])])


def _leaky_relu(cx, node, args, ins):
    return cx.op("LeakyRelu", [args[0]], alpha=node.attrs["slope"])


def _gelu(cx, node, args, ins):
    return gelu(cx, args[0], ins[0], node.attrs["approximate"])


def _hardsigmoid(cx, node, args, ins):
    return cx.op("HardSigmoid", [args[0]], alpha=1.0 / 6.0, beta=0.5)


def _affine(cx, node, args, ins):
    s, b = node.attrs["scale"], node.attrs["shift"]
    y = args[0]
    if s != 1.0:
        y = cx.op("Mul", [y, cx.scalar(s, ins[0])])
    if b != 0.0:
        y = cx.op("Add", [y, cx.scalar(b, ins[0])])
    return y if y != args[0] else cx.op("Identity", [y])


def _add(cx, node, args, ins):
    y = args[0]
    for b in args[1:]:
        y = cx.op("Add", [y, b])
    return y


def _binary(op_type: str) -> ExportFn:
    return lambda cx, node, args, ins: cx.op(op_type, [args[0], args[1]])


def _softmax(cx, node, args, ins):
    return cx.op("Softmax", [args[0]], axis=node.attrs["dim"] % ins[0].rank)


def _identity(cx, node, args, ins):
    return cx.op("Identity", [args[0]])


# ---- normalization -------------------------------------------------------------------------
def _ones_or(cx: Exporter, name: str, shape: tuple[int, ...], fill: float) -> str:
    return cx.param(name) if cx.has_param(name) else cx.const(np.full(shape, fill))


def _batchnorm(cx, node, args, ins):
    c = ins[0].shape[1]
    return cx.op("BatchNormalization", [args[0], _ones_or(cx, "weight", (c,), 1.0), _ones_or(cx, "bias", (c,), 0.0),
                                        cx.param("running_mean"), cx.param("running_var")],
                 epsilon=node.attrs["eps"])


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


ONNX_EXPORTS: dict[str, ExportFn] = {
    **{f"conv{n}d": _conv(n) for n in (1, 2, 3)},
    **{f"conv_transpose{n}d": _conv_transpose(n) for n in (1, 2, 3)},
    "linear": _linear,
    # activations and arithmetic
    "identity": _identity,
    "dropout": lambda cx, node, args, ins: cx.op("Dropout", [args[0], cx.scalar(node.attrs["p"], ins[0])]),
    "relu": _unary("Relu"),
    "relu6": _relu6,
    "leaky_relu": _leaky_relu,
    "gelu": _gelu,
    "silu": lambda cx, node, args, ins: silu(cx, args[0]),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "hardswish": _unary("HardSwish"),
    "hardsigmoid": _hardsigmoid,
    "neg": _unary("Neg"),
    "affine": _affine,
    "add": _add,
    "sub": _binary("Sub"),
    "mul": _binary("Mul"),
    "div": _binary("Div"),
    "matmul": _binary("MatMul"),
    "softmax": _softmax,
    # normalization
    **{name: _batchnorm for name in ("batchnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d")},
    "layernorm": _layernorm,
    "layernorm2d": _layernorm2d,
    "groupnorm": _groupnorm,
    **{f"instancenorm{n}d": _instancenorm for n in (1, 2, 3)},
}

# op families kept in their own files, merged here (dict merge, one table)
from convdsl.backends.onnx import lower_attention, lower_fft, lower_misc, lower_pool, lower_quant, lower_shape, lower_ssm  # noqa: E402

for _family in (lower_pool, lower_shape, lower_attention, lower_fft, lower_ssm, lower_misc, lower_quant):
    ONNX_EXPORTS.update(_family.EXPORTS)


def export_for(node: Node) -> ExportFn:
    entry = ONNX_EXPORTS.get(node.op)
    if entry is None:
        raise LoweringError(f"op '{node.op}' has no ONNX export", node.span,
                            hint="supported ops: " + ", ".join(sorted(ONNX_EXPORTS)), notes=[f"node {node.id}"])
    return entry


__all__ = ["ONNX_EXPORTS", "ONNX_DTYPE", "export_for"]
