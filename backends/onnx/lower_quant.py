"""ONNX exports of the quantized ops (see export.py for the entry format): QDQ form.

An int8 tensor of convdsl is an int8 tensor in ONNX too; ``quantize`` and
``dequantize`` are QuantizeLinear / DequantizeLinear.  ``qconv*d`` and
``qlinear`` with an int8 output become the QDQ pattern that ONNX Runtime and
OpenVINO fuse into integer kernels (QLinearConv, QGemm...):

    DQ(x_q; in_scale, in_zp) -> Conv(., DQ(w_u8; w_scale per channel, 128), DQ(b_i32; in_scale*w_scale))
        [-> Relu] -> Q(out_scale, out_zp)    (a relu whose out_zp is above qmin: Q -> Max(., out_zp))

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

The transformer ops between int8 layers (``qlayernorm``, ``qgelu``, ``qattention``)
have no ONNX operator; each is written as the node sequence of the arithmetic
that convdsl/ir/ops/quant.py defines, one ONNX node per float32 step, so that
ONNX Runtime computes them to the bit (the torch simulation's results):

- integer sums as integers: ReduceSum / Mul / Sub on int64 (qlayernorm), and
  MatMulInteger on uint8 x uint8 with zero points (qattention's q k^T and w v; an
  i8 input is shifted to u8 by 128, zero point too, as for ConvInteger above);
  a product that could overflow its int32 accumulator (more than 33025 terms of
  255 x 255) runs as a float64 MatMul, exact below 2^53;
- every float32 step one node (Mul, Add, Reciprocal, Sqrt, Floor, Min/Max, Where,
  Round (half to even)), each rounded once: ONNX Runtime has no FMA contraction
  across nodes.  Its DivMulFusion (ORT_ENABLE_ALL, the default) would merge the
  two roundings of Div(1, x) -> Mul into one Div, so 1/x is Reciprocal.  (Its
  MatMulIntegerToFloatFusion matches MatMulInteger -> Cast -> Mul(Mul(., .)) and
  applies the two factors one after the other; qattention's multiplier is a Div.)
  The tests compare ORT_ENABLE_ALL and ORT_DISABLE_ALL with the simulation, and the
  float32 values before the last rounding with NumPy;
- 2^n (qattention, n integer in [-126, 0]) is a Gather from a table of the 127
  powers of two, exact in every runtime (the simulation builds it from exponent
  bits; ONNX has no bitcast, and Pow's exactness would be each runtime's libm's).

OpenVINO's CPU plugin runs int64 as int32: qlayernorm's C * sum(x_i^2) overflows
there once it reaches 2^31; and it computes qattention's M / f32(S) as M * (1 / f32(S)),
one rounding more (within one output step); qgelu is exact there (docs/interop.md).
"""
from __future__ import annotations

import numpy as np

from convdsl.ir.ops.quant import (ERF_CLAMP, ERF_COEFFS, EXP2_COEFFS, EXP2_FLOOR, INV_SQRT2, LN_QMAX, LOG2E, PROB_MAX,
                                  QRANGE, attention_constants, f32, inverse_scale, ln_constants)
from convdsl.ir.optable import tuple_n
from convdsl.ir.ops.conv import conv_padding

from convdsl.backends.onnx.common import family
from convdsl.backends.onnx.export import ONNX_DTYPE, Exporter
from convdsl.backends.onnx.lower_attention import heads_first, heads_last

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
    """The layer's relu and requantization.  An int8 output whose zero point is above qmin (a range that
    goes below 0: an int8 concat's shared scale) clamps at it after QuantizeLinear, Max(q, zp) on the
    integers, which is relu then quantize exactly (rounding is monotone, 0 maps to zp): ONNX Runtime
    fuses DQ -> Conv -> Q into an integer conv only where no Relu stands between whose clamp Q does not
    already make (zero point qmin)."""
    a = node.attrs
    clamp_after = a["relu"] and a["out_dtype"] != "f32" and a["out_zp"] > QRANGE[a["out_dtype"]][0]
    if a["relu"] and not clamp_after:
        y = cx.op("Relu", [y])
    if a["out_dtype"] == "f32":
        return y
    q = cx.op("QuantizeLinear", [y, *_q_scalar(cx, a["out_scale"], a["out_zp"], a["out_dtype"])])
    if clamp_after:
        q = cx.op("Max", [q, cx.const(np.asarray(a["out_zp"], dtype=_INT[a["out_dtype"]]), _INT[a["out_dtype"]])])
    return q


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


# ---- the transformer ops between int8 layers (see the module docstring) ----------------------------
def _f(cx: Exporter, v: float) -> str:
    """A float32 scalar constant."""
    return cx.const(np.float32(v), np.float32)


def _requantize(cx: Exporter, y: str, zp: int, dtype: str) -> str:
    """clamp(round(y) + zp, qmin, qmax) as ``dtype``: round half to even, then the zero point added
    in float32, as the simulation does."""
    qmin, qmax = QRANGE[dtype]
    q = cx.op("Round", [y])
    if zp:
        q = cx.op("Add", [q, _f(cx, zp)])
    q = cx.op("Clip", [q, _f(cx, qmin), _f(cx, qmax)])
    return cx.op("Cast", [q], to=ONNX_DTYPE[dtype])


def _qlayernorm(cx, node, args, ins):
    """x_i = clamp(round(x * f32(1/x_scale))) as int64; s1, s2 and C x_i - s1, C s2 - s1^2 exact in
    int64, each cast to float32 once; r = 1 / sqrt(v + E); q = requantize((d * r) * G + B)."""
    a = node.attrs
    c = ins[0].shape[-1]
    inv, e, _, _ = ln_constants(c, a["eps"], a["x_scale"], None, None, a["out_scale"])
    xi = cx.op("Clip", [cx.op("Round", [cx.op("Mul", [args[0], _f(cx, inv)])]), _f(cx, -LN_QMAX), _f(cx, LN_QMAX)])
    xi = cx.op("Cast", [xi], to=ONNX_DTYPE["i64"])
    last, count = cx.ints([-1]), cx.const(np.int64(c), np.int64)
    s1 = cx.op("ReduceSum", [xi, last], keepdims=1)
    s2 = cx.op("ReduceSum", [cx.op("Mul", [xi, xi]), last], keepdims=1)
    d = cx.op("Cast", [cx.op("Sub", [cx.op("Mul", [xi, count]), s1])], to=ONNX_DTYPE["f32"])
    v = cx.op("Cast", [cx.op("Sub", [cx.op("Mul", [s2, count]), cx.op("Mul", [s1, s1])])], to=ONNX_DTYPE["f32"])
    r = cx.op("Reciprocal", [cx.op("Sqrt", [cx.op("Add", [v, _f(cx, e)])])])
    # G = f32(weight / out_scale), B = f32(bias / out_scale), in float64 then rounded once (QLayerNorm)
    g = cx.param("weight", lambda w: (w.astype(np.float64) / np.float64(a["out_scale"])).astype(np.float32), ".G")
    b = cx.param("bias", lambda w: (w.astype(np.float64) / np.float64(a["out_scale"])).astype(np.float32), ".B")
    t = cx.op("Add", [cx.op("Mul", [cx.op("Mul", [d, r]), g]), b])
    return _requantize(cx, t, a["out_zp"], a["out_dtype"])


def _horner(cx: Exporter, x: str, coeffs: tuple[float, ...]) -> str:
    """1 + x (c1 + x (c2 + ... x cn)), one float32 rounding per Mul and Add (the simulation's order)."""
    h = cx.op("Mul", [x, _f(cx, coeffs[-1])])
    for k in reversed(coeffs[:-1]):
        h = cx.op("Mul", [cx.op("Add", [h, _f(cx, k)]), x])
    return cx.op("Add", [h, _f(cx, 1.0)])


def _qgelu(cx, node, args, ins):
    """erf by Abramowitz & Stegun 7.1.28 (z = min(|x| / sqrt 2, 6), e = 1 - (1 / P(z))^16, signed),
    g = (x (1 + e)) 0.5, q = requantize(g * f32(1/out_scale))."""
    a = node.attrs
    x = args[0]
    z = cx.op("Min", [cx.op("Mul", [cx.op("Abs", [x]), _f(cx, INV_SQRT2)]), _f(cx, ERF_CLAMP)])
    r = cx.op("Reciprocal", [_horner(cx, z, tuple(f32(k) for k in ERF_COEFFS))])
    for _ in range(4):
        r = cx.op("Mul", [r, r])
    e = cx.op("Sub", [_f(cx, 1.0), r])
    e = cx.op("Where", [cx.op("Less", [x, _f(cx, 0.0)]), cx.op("Neg", [e]), e])
    g = cx.op("Mul", [cx.op("Mul", [x, cx.op("Add", [_f(cx, 1.0), e])]), _f(cx, 0.5)])
    return _requantize(cx, cx.op("Mul", [g, _f(cx, inverse_scale(a["out_scale"]))]), a["out_zp"], a["out_dtype"])


INT32_TERMS = 2 ** 31 // (255 * 255)  # terms of |255 x 255| an int32 accumulator always holds (33025)


def _int_matmul(cx: Exporter, a: str, b: str, a_zp: int, b_zp: int, terms: int | None) -> str:
    """sum_k (a - a_zp) (b - b_zp) over uint8 operands, exact: MatMulInteger (int32) when ``terms``
    products of at most 255 x 255 cannot overflow int32, else a float64 MatMul (exact below 2^53)."""
    if terms is not None and terms <= INT32_TERMS:
        return cx.op("MatMulInteger", [a, b, cx.const(np.uint8(a_zp), np.uint8), cx.const(np.uint8(b_zp), np.uint8)])

    def centered(x: str, zp: int) -> str:
        x = cx.op("Cast", [x], to=ONNX_DTYPE["f64"])
        return cx.op("Sub", [x, cx.const(np.float64(zp), np.float64)]) if zp else x

    return cx.op("MatMul", [centered(a, a_zp), centered(b, b_zp)])


def _qattention(cx, node, args, ins):
    """s = (q - zp)(k - zp)^T exact; t = f32(s - max s) * c; u = max(t * log2e, -126), n = floor(u),
    f = u - n; w = round((P(f) * 2^n) * 255); a = w (v - zp), S = sum w exact;
    y = f32(a) * (M / f32(S)), requantized for an int8 output."""
    a = node.attrs
    t = ins[0]
    heads, width = a["heads"], t.shape[2] // 3
    d = width // heads
    to_int = a["out_dtype"] != "f32"
    c, mult = attention_constants(a["in_scale"], d, a["scale"], a["out_scale"] if to_int else None)
    x, zp = args[0], a["in_zp"]
    if t.dtype == "i8":  # to uint8 (x + 128, zero point + 128): MatMulInteger's exact u8 x u8 kernels
        x = cx.op("Cast", [cx.op("Add", [cx.op("Cast", [x], to=ONNX_DTYPE["i32"]),
                                         cx.const(np.int32(128), np.int32)])], to=ONNX_DTYPE["u8"])
        zp += 128
    q, k, v = cx.op("Split", [x, cx.ints([width] * 3)], outputs=3, axis=2)
    q, v = heads_first(cx, q, heads, d), heads_first(cx, v, heads, d)  # [N, heads, L, d]
    kt = cx.op("Transpose", [cx.op("Reshape", [k, cx.ints([0, 0, heads, d])])], perm=[0, 2, 3, 1])  # [N, h, d, L]
    length = t.shape[1] if isinstance(t.shape[1], int) else None
    s = _int_matmul(cx, q, kt, zp, zp, d)
    s = cx.op("Sub", [s, cx.op("ReduceMax", [s], axes=[-1], keepdims=1)])
    logits = cx.op("Mul", [cx.op("Cast", [s], to=ONNX_DTYPE["f32"]), _f(cx, c)])
    u = cx.op("Max", [cx.op("Mul", [logits, _f(cx, LOG2E)]), _f(cx, EXP2_FLOOR)])
    n = cx.op("Floor", [u])
    p = _horner(cx, cx.op("Sub", [u, n]), tuple(f32(k) for k in EXP2_COEFFS))
    low = int(EXP2_FLOOR)  # 2^n = table[n - low], n in [low, 0]
    table = cx.const(np.ldexp(np.float32(1.0), np.arange(low, 1)).astype(np.float32), np.float32)
    index = cx.op("Sub", [cx.op("Cast", [n], to=ONNX_DTYPE["i64"]), cx.const(np.int64(low), np.int64)])
    w = cx.op("Round", [cx.op("Mul", [cx.op("Mul", [p, cx.op("Gather", [table, index], axis=0)]),
                                      _f(cx, float(PROB_MAX))])])
    total = cx.op("ReduceSum", [cx.op("Cast", [w], to=ONNX_DTYPE["i32"]), cx.ints([-1])], keepdims=1)  # exact
    acc = _int_matmul(cx, cx.op("Cast", [w], to=ONNX_DTYPE["u8"]), v, 0, zp, length)
    total = cx.op("Cast", [total], to=ONNX_DTYPE["f32"])
    # M / f32(S), one division; M = 1 as Reciprocal, since ORT's DivMulFusion would make Div(1, S) -> Mul
    # one Div(a, S)
    m = cx.op("Reciprocal", [total]) if mult == 1.0 else cx.op("Div", [_f(cx, mult), total])
    y = heads_last(cx, cx.op("Mul", [cx.op("Cast", [acc], to=ONNX_DTYPE["f32"]), m]), width)
    return _requantize(cx, y, a["out_zp"], a["out_dtype"]) if to_int else y


EXPORTS = family("quant", {
    "quantize": _quantize,
    "dequantize": _dequantize,
    "cast": _cast,
    **{f"qconv{n}d": _qconv(n) for n in (1, 2, 3)},
    "qlinear": _qlinear,
    "qlayernorm": _qlayernorm,
    "qgelu": _qgelu,
    "qattention": _qattention,
})
