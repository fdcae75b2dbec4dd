"""ONNX exports of the quantized ops (see export.py for the entry format): QDQ form.

An int8 tensor of convdsl is an int8 tensor in ONNX too; ``quantize`` and
``dequantize`` are QuantizeLinear / DequantizeLinear.  ``qconv*d`` and
``qlinear`` become the QDQ pattern that ONNX Runtime and OpenVINO fuse into
integer kernels (QLinearConv, MatMulInteger...):

    DQ(x_q; in_scale, in_zp) -> Conv(., DQ(w_i8; w_scale per channel), DQ(b_i32; in_scale*w_scale))
        [-> Relu] [-> Q(out_scale, out_zp)]

The int8 weights, their scales and the int32 bias are the parameters
themselves (initializers named by their store keys).
"""
from __future__ import annotations

import numpy as np

from convdsl.ir.ops.quant import f32
from convdsl.ir.optable import tuple_n
from convdsl.ir.ops.conv import conv_padding

from convdsl.backends.onnx.common import family
from convdsl.backends.onnx.export import ONNX_DTYPE, Exporter

_INT = {"u8": np.uint8, "i8": np.int8}


def _q_scalar(cx: Exporter, scale: float, zp: int, dtype: str) -> tuple[str, str]:
    return cx.const(np.float32(scale), np.float32), cx.const(np.asarray(zp, dtype=_INT[dtype]), _INT[dtype])


def _quantize(cx, node, args, ins):
    a = node.attrs
    return cx.op("QuantizeLinear", [args[0], *_q_scalar(cx, a["scale"], a["zero_point"], a["dtype"])])


def _dequantize(cx, node, args, ins):
    a = node.attrs
    return cx.op("DequantizeLinear", [args[0], *_q_scalar(cx, a["scale"], a["zero_point"], ins[0].dtype)])


def _cast(cx, node, args, ins):
    return cx.op("Cast", [args[0]], to=ONNX_DTYPE[node.attrs["dtype"]])


def _dq_input(cx: Exporter, node, x: str, t) -> str:
    a = node.attrs
    return cx.op("DequantizeLinear", [x, *_q_scalar(cx, a["in_scale"], a["in_zp"], t.dtype)])


def _dq_weight(cx: Exporter, w: str, out: int, axis: int) -> str:
    zp = cx.const(np.zeros(out, dtype=np.int8), np.int8)
    return cx.op("DequantizeLinear", [w, cx.param("w_scale"), zp], axis=axis)


def _dq_bias(cx: Exporter, node) -> str:
    unit = (np.float64(f32(node.attrs["in_scale"])) * cx.array("w_scale").astype(np.float64)).astype(np.float32)
    zp = cx.const(np.zeros(unit.shape[0], dtype=np.int32), np.int32)
    return cx.op("DequantizeLinear", [cx.param("bias"), cx.const(unit, np.float32), zp], axis=0)


def _output(cx: Exporter, node, y: str) -> str:
    a = node.attrs
    if a["relu"]:
        y = cx.op("Relu", [y])
    if a["out_dtype"] == "f32":
        return y
    return cx.op("QuantizeLinear", [y, *_q_scalar(cx, a["out_scale"], a["out_zp"], a["out_dtype"])])


def _qconv(nd: int):
    def export(cx, node, args, ins):
        a = node.attrs
        pads = conv_padding(a, list(ins[0].shape[2:]), nd)
        x = _dq_input(cx, node, args[0], ins[0])
        inputs = [x, _dq_weight(cx, cx.param("weight"), a["out"], 0)] + ([_dq_bias(cx, node)] if a["bias"] else [])
        y = cx.op("Conv", inputs, kernel_shape=list(tuple_n(a["k"], nd)), strides=list(tuple_n(a["stride"], nd)),
                  pads=[lo for lo, _ in pads] + [hi for _, hi in pads], dilations=list(tuple_n(a["dilation"], nd)),
                  group=a["groups"])
        return _output(cx, node, y)

    return export


def _qlinear(cx, node, args, ins):
    a = node.attrs
    x = _dq_input(cx, node, args[0], ins[0])
    w = _dq_weight(cx, cx.param("weight", lambda v: np.ascontiguousarray(v.T), ".T"), a["out"], 1)  # [in, out]
    y = cx.op("MatMul", [x, w])
    if a["bias"]:
        y = cx.op("Add", [y, _dq_bias(cx, node)])
    return _output(cx, node, y)


EXPORTS = family("quant", {
    "quantize": _quantize,
    "dequantize": _dequantize,
    "cast": _cast,
    **{f"qconv{n}d": _qconv(n) for n in (1, 2, 3)},
    "qlinear": _qlinear,
})
