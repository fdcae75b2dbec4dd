"""ONNX exports of linear layers (convdsl/ir/ops/linear.py); see export.py for the entry format."""
from __future__ import annotations

from convdsl.backends.onnx.common import family, linear

EXPORTS = family("linear")


def _linear(cx, node, args, ins):
    return linear(cx, args[0], ins[0], cx.param("weight"), cx.param("bias") if node.attrs["bias"] else None)


EXPORTS.add("linear", _linear)
