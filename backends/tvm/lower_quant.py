"""TVM lowerings of the quantized ops (see lowering.py for the entry format).

Real int8: ``qconv*d`` is a Relax convolution of the uint8/int8 input with the
int8 weights and ``out_dtype="int32"`` (int32 accumulation), ``qlinear`` an
int8 matmul with an int32 result.  The input zero point is handled the way
int8 libraries do: the input is padded with ``in_zp`` (real zero) and the
term ``in_zp * sum(w[c])`` is folded into the int32 bias, computed here once:

    acc = conv(pad(q_x, in_zp), q_w) + (bias - in_zp * sum(q_w[c]))   ==   conv(q_x - in_zp, q_w) + bias

Requantization follows convdsl/ir/ops/quant.py in float32 (multiply by the
per-channel multiplier, round half to even, add the zero point, clamp); after
LegalizeOps and FuseOps it becomes the epilogue of the int8 kernel.  The
multipliers come from ``requant_multiplier``, the same float64 steps as the
torch simulation, so both backends agree bit for bit.
"""
from __future__ import annotations

import numpy as np
from tvm import relax

from convdsl.ir.graph import Node
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.ops.quant import QRANGE, f32, inverse_scale, requant_multiplier
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from .lowering import TVM_DTYPE, Lowerer

R = relax.op
Expr = relax.Expr

_CONV = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}
_LAYOUT = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}


def _quantize(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    # q = clamp(round(x * f32(1/scale)) + zp, qmin, qmax)
    a = node.attrs
    qmin, qmax = QRANGE[a["dtype"]]
    x = args[0] if ins[0].dtype == "f32" else cx.emit(R.astype(args[0], "float32"))
    y = cx.emit(R.round(R.multiply(x, cx.const(inverse_scale(a["scale"])))))
    y = cx.emit(R.clip(R.add(y, cx.const(float(a["zero_point"]))), qmin, qmax))
    return R.astype(y, TVM_DTYPE[a["dtype"]])


def _dequantize(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    # x = (f32(q) - zp) * scale
    a = node.attrs
    y = cx.emit(R.subtract(R.astype(args[0], "float32"), cx.const(float(a["zero_point"]))))
    return R.multiply(y, cx.const(f32(a["scale"])))


def _cast(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    return R.astype(args[0], TVM_DTYPE[node.attrs["dtype"]])


def _requantize(cx: Lowerer, node: Node, acc: Expr, channel_shape: tuple[int, ...]) -> Expr:
    """int32 accumulator -> float32 (out_dtype=f32) or requantized int8, per channel."""
    a = node.attrs
    to_int = a["out_dtype"] != "f32"
    m = requant_multiplier(a["in_scale"], cx.param("w_scale"), a["out_scale"] if to_int else None)
    y = cx.emit(R.multiply(cx.emit(R.astype(acc, "float32")), cx.const(m.reshape(channel_shape))))
    if not to_int:
        return R.nn.relu(y) if a["relu"] else y
    qmin, qmax = QRANGE[a["out_dtype"]]
    lo = max(qmin, a["out_zp"]) if a["relu"] else qmin
    y = cx.emit(R.add(cx.emit(R.round(y)), cx.const(float(a["out_zp"]))))
    return R.astype(cx.emit(R.clip(y, lo, qmax)), TVM_DTYPE[a["out_dtype"]])


def _int32_bias(cx: Lowerer, node: Node, w: np.ndarray) -> np.ndarray:
    """bias - in_zp * sum(w[c]) (int64 arithmetic, checked to fit int32)."""
    wsum = w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    b = cx.param("bias").astype(np.int64) if node.attrs["bias"] else np.zeros(w.shape[0], np.int64)
    total = b - node.attrs["in_zp"] * wsum
    info = np.iinfo(np.int32)
    if total.min(initial=0) < info.min or total.max(initial=0) > info.max:
        raise cx.error("the int32 bias (with the input zero point folded in) overflows int32")
    return total.astype(np.int32)


def _qconv(nd: int):
    def lower(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
        a = node.attrs
        x = args[0]
        pads = conv_padding(a, list(ins[0].shape[2:]), nd)
        if any(p for pr in pads for p in pr):  # real zero is in_zp in the int8 domain
            width = [0, 0, 0, 0] + [p for pr in pads for p in pr]
            x = cx.emit(R.nn.pad(x, width, pad_value=float(a["in_zp"])))
        w = cx.param("weight").astype(np.int8)
        data_layout, kernel_layout = _LAYOUT[nd]
        acc = cx.emit(_CONV[nd](x, cx.const(w, "int8"), strides=tuple_n(a["stride"], nd), padding=(0,) * (2 * nd),
                                dilation=tuple_n(a["dilation"], nd), groups=a["groups"], data_layout=data_layout,
                                kernel_layout=kernel_layout, out_dtype="int32"))
        bias = _int32_bias(cx, node, w)
        if bias.any():
            acc = cx.emit(R.add(acc, cx.const(bias.reshape((1, -1) + (1,) * nd), "int32")))
        return _requantize(cx, node, acc, (1, -1) + (1,) * nd)

    return lower


def _qlinear(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    w = cx.param("weight").astype(np.int8)
    acc = cx.emit(R.matmul(args[0], cx.const(np.ascontiguousarray(w.T), "int8"), out_dtype="int32"))
    bias = _int32_bias(cx, node, w)
    if bias.any():
        acc = cx.emit(R.add(acc, cx.const(bias, "int32")))
    return _requantize(cx, node, acc, (-1,))


LOWERINGS = {
    "quantize": _quantize,
    "dequantize": _dequantize,
    "cast": _cast,
    **{f"qconv{n}d": _qconv(n) for n in (1, 2, 3)},
    "qlinear": _qlinear,
}

__all__ = ["LOWERINGS"]
