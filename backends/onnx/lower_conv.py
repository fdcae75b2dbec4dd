"""ONNX exports of convolutions (convdsl/ir/ops/conv.py); see export.py for the entry format."""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.onnx.common import family, pad_spatial
from convdsl.backends.onnx.export import ExportFn, Exporter

EXPORTS = family("conv")


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


for _n in (1, 2, 3):
    EXPORTS.add(f"conv{_n}d", _conv(_n))
    EXPORTS.add(f"conv_transpose{_n}d", _conv_transpose(_n))
