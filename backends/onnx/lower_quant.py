"""ONNX exports of the quantized ops (see export.py for the entry format): QDQ form.

An int8 tensor of convdsl is an int8 tensor in ONNX too; ``quantize`` and
``dequantize`` are QuantizeLinear / DequantizeLinear.  ``qconv*d`` and
``qlinear`` with an int8 output become the QDQ pattern that ONNX Runtime and
OpenVINO fuse into integer kernels (QLinearConv, QGemm...):

    DQ(x_q; in_scale, in_zp) -> Conv(., DQ(w_u8; w_scale per channel, 128), DQ(b_i32; in_scale*w_scale))
        [-> Relu] -> Q(out_scale, out_zp)

A qconv with a float output (a residual add or relu6 follows) has no Q for a
runtime to fuse, so it is written as the integer convolution itself, the
torch simulation's arithmetic op for op:

    ConvInteger(x_q, w_u8; in_zp, 128) + b_i32 -> Cast(f32) * f32(in_scale * w_scale) [-> Relu]

Weights are stored as uint8 with zero point 128 (w + 128), which is the same
real value as convdsl's symmetric int8 (zero point 0): ONNX Runtime's
uint8 x int8 kernels on x86 CPUs without VNNI (AVX2) add pairs of products in
int16 with saturation (vpmaddubsw) and were measured up to 116 steps off on
such a CPU; uint8 x uint8 widens before multiplying and is exact on every CPU.
The weight initializers are named ``<key>.u8`` (``<key>.T.u8`` for qlinear's
[in, out] layout); scales and the int32 bias are the parameters themselves.
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


def _weight_u8(cx: Exporter, transposed: bool = False) -> str:
    """The int8 weight as uint8 with zero point 128 (see the module docstring)."""
    def shift(v: np.ndarray) -> np.ndarray:
        return ((v.T if transposed else v).astype(np.int16) + 128).astype(np.uint8)

    return cx.param("weight", shift, ".T.u8" if transposed else ".u8")


def _dq_weight(cx: Exporter, w: str, out: int, axis: int) -> str:
    zp = cx.const(np.full(out, 128, dtype=np.uint8), np.uint8)
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
        geometry = dict(kernel_shape=list(tuple_n(a["k"], nd)), strides=list(tuple_n(a["stride"], nd)),
                        pads=[lo for lo, _ in pads] + [hi for _, hi in pads],
                        dilations=list(tuple_n(a["dilation"], nd)), group=a["groups"])
        if a["out_dtype"] == "f32":
            return _conv_integer(cx, node, args[0], ins[0], nd, geometry)
        x = _dq_input(cx, node, args[0], ins[0])
        inputs = [x, _dq_weight(cx, _weight_u8(cx), a["out"], 0)] + ([_dq_bias(cx, node)] if a["bias"] else [])
        return _output(cx, node, cx.op("Conv", inputs, **geometry))

    return export


def _conv_integer(cx: Exporter, node, x: str, t, nd: int, geometry: dict) -> str:
    """int32 accumulation (ConvInteger, zero points subtracted, padding with in_zp = real zero), + bias,
    then f32(acc) * f32(in_scale * w_scale): QuantizedLayer.requantize's float output exactly."""
    a = node.attrs
    x_zp = cx.const(np.asarray(a["in_zp"], dtype=_INT[t.dtype]), _INT[t.dtype])
    if t.dtype != "u8":  # ConvInteger on CPUs takes uint8 activations: shift int8 by 128 (zero point too)
        x = cx.op("Cast", [cx.op("Add", [cx.op("Cast", [x], to=ONNX_DTYPE["i32"]),
                                         cx.const(np.asarray(128, np.int32), np.int32)])], to=ONNX_DTYPE["u8"])
        x_zp = cx.const(np.asarray(a["in_zp"] + 128, dtype=np.uint8), np.uint8)
    acc = cx.op("ConvInteger", [x, _weight_u8(cx), x_zp, cx.const(np.asarray(128, np.uint8), np.uint8)],
                **geometry)
    shape = (1, a["out"]) + (1,) * nd
    if a["bias"]:
        acc = cx.op("Add", [acc, cx.param("bias", lambda b: b.reshape(shape), ".per_channel")])
    m = (np.float64(a["in_scale"]) * cx.array("w_scale").astype(np.float64)).astype(np.float32).reshape(shape)
    y = cx.op("Mul", [cx.op("Cast", [acc], to=ONNX_DTYPE["f32"]), cx.const(m, np.float32)])
    return cx.op("Relu", [y]) if a["relu"] else y


def _qlinear(cx, node, args, ins):
    a = node.attrs
    x = _dq_input(cx, node, args[0], ins[0])
    w = _dq_weight(cx, _weight_u8(cx, transposed=True), a["out"], 1)  # [in, out]
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
