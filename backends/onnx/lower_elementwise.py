"""ONNX exports of activations and arithmetic (convdsl/ir/ops/elementwise.py); see export.py for the entry format."""
from __future__ import annotations

from convdsl.ir.ops.pool import normalize_dims

from convdsl.backends.onnx.common import family, gelu, silu
from convdsl.backends.onnx.export import ExportFn

EXPORTS = family("elementwise")


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
    if len(args) > 2:  # one Sum (broadcasting, as add): the importer reads it back as one add
        return cx.op("Sum", list(args))
    return cx.op("Add", [args[0], args[1]])


def _binary(op_type: str) -> ExportFn:
    return lambda cx, node, args, ins: cx.op(op_type, [args[0], args[1]])


def _softmax(cx, node, args, ins):
    normalize_dims("softmax", node.attrs["dim"], ins[0].rank)  # checked; the axis as written (ONNX's may be negative)
    return cx.op("Softmax", [args[0]], axis=int(node.attrs["dim"]))


def _identity(cx, node, args, ins):
    return cx.op("Identity", [args[0]])


for _op, _fn in {
    "identity": _identity,
    "dropout": lambda cx, node, args, ins: cx.op("Dropout", [args[0], cx.scalar(node.attrs["p"], ins[0])]),
    "drop_path": _identity,  # inference
    "relu": _unary("Relu"),
    "relu6": _relu6,
    "leaky_relu": _leaky_relu,
    "gelu": _gelu,
    "silu": lambda cx, node, args, ins: silu(cx, args[0]),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "erf": _unary("Erf"),
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
}.items():
    EXPORTS.add(_op, _fn)
