"""TVM lowerings of activations and elementwise arithmetic (convdsl/ir/ops/elementwise.py);
see common.py for the entry format.  dropout and drop_path are identities (inference)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from convdsl.ir.types import TensorType

from convdsl.backends.tvm.common import TVM_DTYPE, LowerFn, Lowerer, R, family

if TYPE_CHECKING:
    from tvm.relax import Expr

LOWERINGS = family("elementwise")


def _unary(fn: Callable[[Expr], Expr]) -> LowerFn:
    return lambda cx, node, args, ins: fn(args[0])


def _scalar(cx: Lowerer, v: float, t: TensorType) -> Expr:
    return cx.const(v, TVM_DTYPE[t.dtype])


def _relu6(cx, node, args, ins):
    return R.clip(args[0], 0.0, 6.0)


def _leaky_relu(cx, node, args, ins):
    return R.nn.leakyrelu(args[0], node.attrs["slope"])


def _gelu(cx, node, args, ins):
    return R.nn.gelu_tanh(args[0]) if node.attrs["approximate"] == "tanh" else R.nn.gelu(args[0])


def _hardsigmoid(cx, node, args, ins):
    # relu6(x + 3) / 6
    t = ins[0]
    return R.divide(R.clip(cx.emit(R.add(args[0], _scalar(cx, 3.0, t))), 0.0, 6.0), _scalar(cx, 6.0, t))


def _hardswish(cx, node, args, ins):
    return R.multiply(args[0], cx.emit(_hardsigmoid(cx, node, args, ins)))


def _affine(cx, node, args, ins):
    s, b = node.attrs["scale"], node.attrs["shift"]
    y = args[0]
    if s != 1.0:
        y = R.multiply(y, _scalar(cx, s, ins[0]))
    if b != 0.0:
        y = R.add(cx.emit(y) if s != 1.0 else y, _scalar(cx, b, ins[0]))
    return y


def _add(cx, node, args, ins):
    y = args[0]
    for i, b in enumerate(args[1:]):
        y = R.add(y, b)
        if i < len(args) - 2:
            y = cx.emit(y)
    return y


def _binary(fn: Callable[[Expr, Expr], Expr]) -> LowerFn:
    return lambda cx, node, args, ins: fn(args[0], args[1])


def _softmax(cx, node, args, ins):
    return R.nn.softmax(args[0], axis=node.attrs["dim"] % ins[0].rank)


def _identity(cx, node, args, ins):
    return args[0]


LOWERINGS.add("identity", _identity)
LOWERINGS.add("dropout", _identity)  # inference
LOWERINGS.add("drop_path", _identity)  # inference
LOWERINGS.add("relu", _unary(lambda x: R.nn.relu(x)))
LOWERINGS.add("relu6", _relu6)
LOWERINGS.add("leaky_relu", _leaky_relu)
LOWERINGS.add("gelu", _gelu)
LOWERINGS.add("silu", _unary(lambda x: R.nn.silu(x)))
LOWERINGS.add("sigmoid", _unary(lambda x: R.sigmoid(x)))
LOWERINGS.add("tanh", _unary(lambda x: R.tanh(x)))
LOWERINGS.add("hardswish", _hardswish)
LOWERINGS.add("hardsigmoid", _hardsigmoid)
LOWERINGS.add("neg", _unary(lambda x: R.negative(x)))
LOWERINGS.add("affine", _affine)
LOWERINGS.add("add", _add)
LOWERINGS.add("sub", _binary(lambda a, b: R.subtract(a, b)))
LOWERINGS.add("mul", _binary(lambda a, b: R.multiply(a, b)))
LOWERINGS.add("div", _binary(lambda a, b: R.divide(a, b)))
LOWERINGS.add("matmul", _binary(lambda a, b: R.matmul(a, b)))
LOWERINGS.add("softmax", _softmax)
