"""TVM lowering of ``linear`` (convdsl/ir/ops/linear.py); see common.py for the entry format."""
from __future__ import annotations

from typing import TYPE_CHECKING

from convdsl.ir.graph import Node
from convdsl.ir.types import TensorType

from convdsl.backends.tvm.common import Lowerer, R, family

if TYPE_CHECKING:
    from tvm.relax import Expr

LOWERINGS = family("linear")


def _linear(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    # y = x W^T + b, with W^T transposed once here
    y = R.matmul(args[0], cx.const(cx.param("weight").T))
    if node.attrs["bias"]:
        y = R.add(cx.emit(y), cx.const(cx.param("bias")))
    return y


LOWERINGS.add("linear", _linear)
