"""Quantized ops: int8 tensors in the IR, and fp16/bf16 casts.

An int8 tensor is a ``u8`` or ``i8`` tensor ``q`` standing for the real values
``(q - zero_point) * scale``; ``scale`` and ``zero_point`` are attributes of
the op that makes or reads it, so the CDL text shows every quantization
parameter.  The arithmetic is defined once, here, and every backend follows
it to the bit (``round`` is round-half-to-even, as ``torch.round`` and
LLVM's ``nearbyint``; all float arithmetic is IEEE float32 unless stated):

- ``quantize``:   q = clamp(round(x * inv) + zp, qmin, qmax),  inv = f32(1 / scale)
- ``dequantize``: x = (f32(q) - zp) * f32(scale)
- ``qconv*d`` / ``qlinear``: int8 activations x int8 weights, int32 accumulation

      acc[c] = sum (q_x - in_zp) * q_w[c] + bias[c]              (exact int32)
      out_dtype=f32:     y = f32(acc) * m[c],  m = f32(in_scale * w_scale[c])
      out_dtype=u8/i8:   q = clamp(round(f32(acc) * m[c]) + out_zp, lo, qmax),
                         m = f32(in_scale * w_scale[c] / out_scale)           (m in float64, then rounded)

  Zero padding pads the *real* input with 0, i.e. the int8 input with
  ``in_zp``.  ``relu=true`` clamps at 0 (float output) or at ``out_zp``
  (``lo = max(qmin, out_zp)``), which is exactly relu before quantizing.
  Weights are symmetric per output channel (int8 in [-127, 127], zero point
  0); ``bias`` is int32 in units of ``in_scale * w_scale[c]``.

The transformer ops between quantized layers are defined with integer sums
and single float32 operations only (no exp, erf, rsqrt library calls, no float
reductions), so that a backend whose float code differs in summation order or
in its transcendental functions still computes them to the bit:

- ``qlayernorm`` (float x [..., C] -> int8, over the last dim):

      x_i = clamp(round(x * f32(1/x_scale)), -32767, 32767)     (16-bit fixed point)
      s1 = sum x_i,  s2 = sum x_i^2                              (exact integers)
      d = f32(C * x_i - s1),  v = f32(C * s2 - s1^2)             (int64, rounded to float32 once)
      r = 1 / sqrt(v + E),  E = f32(C^2 * eps / x_scale^2)
      q = clamp(round(((d * r) * G[c]) + B[c]) + out_zp, qmin, qmax),
          G = f32(weight / out_scale), B = f32(bias / out_scale)

  (d * r is the normalized value: (x - mean) / sqrt(var + eps) with C^2 cancelled.)
- ``qgelu`` (float x -> int8): GELU with Abramowitz & Stegun's erf 7.1.28
  (|error| <= 3e-7): z = min(|x| * f32(1/sqrt 2), 6), P = 1 + z (a1 + z (a2 + ...
  z a6)) by Horner, e = 1 - (1/P)^16 (four squarings), negated where x < 0;
  g = (x * (1 + e)) * 0.5; q = clamp(round(g * f32(1/out_scale)) + out_zp).
- ``qattention`` (int8 q|k|v [N, L, 3C] -> [N, L, C], heads of width d):

      s[i, j] = sum_k (q[i, k] - zp) (k[j, k] - zp)                  (exact)
      t = f32(s - max_j s) * c,  c = f32(in_scale^2 * scale)
      u = max(t * f32(log2 e), -126);  n = floor(u);  f = u - n
      e = (1 + f (p1 + f (p2 + f (p3 + f (p4 + f p5))))) * 2^n       (Horner, 2^f within 1.6e-7)
      w = round(e * 255)                                 (unnormalized probabilities 0..255, max 255)
      a[i, k] = sum_j w[i, j] (v[j, k] - zp),  S_i = sum_j w[i, j]   (exact)
      out_dtype=f32: y = f32(a) * (f32(in_scale) / f32(S_i))
      int8:          q = clamp(round(f32(a) * (f32(in_scale / out_scale) / f32(S_i))) + out_zp)

  the softmax's normalization folded into the requantization of its product with v.

Each listed float32 step is one rounding: a backend must not contract a multiply and an add into
one FMA (TVM: ``kernels.rounded``).  Integer sums are exact whatever their order; a backend may run
them in float32 where every partial sum is an integer below 2^24.

Lowered in backends/torch/lower_quant.py and backends/tvm/lower_quant.py (the transformer ops:
backends/tvm/lower_qtransformer.py); how pruning treats each op is its ``prune=`` (PRUNE_RULE ops:
convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

import math

import numpy as np

from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.domains import NON_NEGATIVE, POSITIVE, Domain
from convdsl.ir.optable import (SPATIAL_EXAMPLE_INPUTS, Attr, Cost, Init, OpDef, ParamSpec, check_positive, expect_rank,
                                io_workspace, opaque, tuple_n, zero_cost)
from convdsl.ir.types import FLOAT_DTYPES, TensorType
from convdsl.ir.ops.conv import conv_out_size, conv_padding

INT_DTYPES = ("u8", "i8")
QRANGE = {"u8": (0, 255), "i8": (-128, 127)}
_INT8 = opaque("int8 weights and scales: prune the float network, then quantize")


# ---- the arithmetic, shared by the passes and the backends --------------------------------------
def inverse_scale(scale: float) -> float:
    """f32(1 / scale): what ``quantize`` multiplies by (a float32 value, as a Python float)."""
    return float(np.float32(1.0 / scale))


def f32(v: float) -> float:
    """``v`` rounded to float32 (as a Python float), the precision every scale is applied in."""
    return float(np.float32(v))


def requant_multiplier(in_scale: float, w_scale: np.ndarray, out_scale: float | None) -> np.ndarray:
    """Per output channel: f32(in_scale * w_scale / out_scale) (f32(in_scale * w_scale) for a float
    output), computed in float64 and rounded once.  The torch helpers do the same float64 steps."""
    m = np.float64(in_scale) * np.asarray(w_scale, dtype=np.float32).astype(np.float64)
    if out_scale is not None:
        m = m / np.float64(out_scale)
    return m.astype(np.float32)


def qparams_for_range(lo: float, hi: float, dtype: str = "u8") -> tuple[float, int]:
    """(scale, zero_point) mapping [min(lo, 0), max(hi, 0)] onto the dtype's range, so that
    real 0 is exactly representable; the scale is a float32 value."""
    qmin, qmax = QRANGE[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"cannot quantize the range [{lo}, {hi}]")
    if hi - lo <= 0.0:
        return 1.0, (0 if dtype == "i8" else qmin)
    scale = f32((hi - lo) / (qmax - qmin))
    zp = int(np.clip(qmin - round(lo / scale), qmin, qmax))
    return scale, zp


def quantize_weight(w: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel (dim 0) quantization: (int8 weights, float32 scales).
    ``bits`` < 8 uses the narrower range [-(2^(bits-1) - 1), 2^(bits-1) - 1], still stored as int8."""
    qmax = 2 ** (bits - 1) - 1
    w64 = np.asarray(w, dtype=np.float64)
    amax = np.abs(w64.reshape(w64.shape[0], -1)).max(axis=1) if w64.size else np.zeros(w64.shape[0])
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)  # an all-zero channel keeps scale 1
    s = scale.astype(np.float64).reshape((-1,) + (1,) * (w64.ndim - 1))
    q = np.clip(np.round(w64 / s), -qmax, qmax).astype(np.int8)
    return q, scale


def quantize_bias(b: np.ndarray, in_scale: float, w_scale: np.ndarray) -> np.ndarray:
    """int32 bias in accumulator units (in_scale * w_scale[c]), rounded half to even, saturated."""
    unit = np.float64(in_scale) * np.asarray(w_scale, dtype=np.float64)
    q = np.round(np.asarray(b, dtype=np.float64) / unit)
    info = np.iinfo(np.int32)
    return np.clip(q, info.min, info.max).astype(np.int32)


# the transformer ops' constants (see the module docstring); float32 values
LN_QMAX = 32767  # qlayernorm's 16-bit fixed-point input range [-LN_QMAX, LN_QMAX]
ERF_COEFFS = (0.0705230784, 0.0422820123, 0.0092705272, 0.0001520143, 0.0002765672, 0.0000430638)  # A&S 7.1.28
ERF_CLAMP = 6.0  # erf(6) = 1 in float32
EXP2_COEFFS = (0.6931512951850891, 0.24016447365283966, 0.05579983815550804, 0.009017136879265308,
               0.0018670796416699886)  # 2^f = 1 + f (p1 + f (p2 + ...)) on [0, 1), fitted for relative error
EXP2_FLOOR = -126.0  # 2^n stays a normal float32
LOG2E = float(np.float32(1.4426950408889634))
INV_SQRT2 = float(np.float32(0.7071067811865476))
PROB_MAX = 255  # qattention's largest unnormalized probability (the row's maximum)


def ln_constants(channels: int, eps: float, x_scale: float, gamma: np.ndarray | None, beta: np.ndarray | None,
                 out_scale: float) -> tuple[float, float, np.ndarray, np.ndarray]:
    """qlayernorm's float32 constants: (f32(1/x_scale), E, G, B) (module docstring)."""
    inv = inverse_scale(x_scale)
    e = f32(channels * channels * eps / (np.float64(x_scale) ** 2))
    g = np.ones(channels) if gamma is None else np.asarray(gamma, np.float64)
    b = np.zeros(channels) if beta is None else np.asarray(beta, np.float64)
    return inv, e, (g / np.float64(out_scale)).astype(np.float32), (b / np.float64(out_scale)).astype(np.float32)


def attention_constants(in_scale: float, head_width: int, scale: float | None, out_scale: float | None
                        ) -> tuple[float, float]:
    """qattention's float32 constants: (c, M): the logit multiplier f32(in_scale^2 * scale) and the
    numerator of the output multiplier, f32(in_scale / out_scale) (f32(in_scale) for a float output)."""
    s = 1.0 / math.sqrt(head_width) if scale is None else scale
    c = f32(np.float64(in_scale) ** 2 * np.float64(s))
    return c, f32(in_scale if out_scale is None else np.float64(in_scale) / np.float64(out_scale))


# ---- checks ---------------------------------------------------------------------------------------
def _need_dtype(op: str, t: TensorType, allowed: tuple[str, ...], what: str) -> None:
    if t.dtype not in allowed:
        raise ShapeError(f"{op} needs {what} input", expected=" or ".join(allowed), got=str(t),
                         hint="quantize it first: x | quantize(scale, zero_point)" if "u8" in allowed else None)


def _check_qparams(op: str, scale: float, zp: int, dtype: str, what: str = "") -> None:
    if not (scale > 0 and math.isfinite(scale)):
        raise CDLTypeError(f"{op}: {what}scale must be a positive number", got=str(scale))
    qmin, qmax = QRANGE[dtype]
    if not qmin <= zp <= qmax:
        raise CDLTypeError(f"{op}: {what}zero point {zp} is outside the {dtype} range", expected=f"{qmin}..{qmax}",
                           got=str(zp))


# ---- quantize / dequantize / cast ---------------------------------------------------------------
def _quantize_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    _need_dtype("quantize", ins[0], FLOAT_DTYPES, "a float")
    _check_qparams("quantize", attrs["scale"], attrs["zero_point"], attrs["dtype"])
    return [TensorType(ins[0].shape, attrs["dtype"])]


def _dequantize_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    _need_dtype("dequantize", ins[0], INT_DTYPES, "an int8 (u8/i8)")
    _check_qparams("dequantize", attrs["scale"], attrs["zero_point"], ins[0].dtype)
    return [TensorType(ins[0].shape, "f32")]


def _cast_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    _need_dtype("cast", ins[0], FLOAT_DTYPES, "a float")
    return [TensorType(ins[0].shape, attrs["dtype"])]


# A quantization step: positive, and with its inverse (what quantize multiplies by) and the products
# of requantization inside float32 (1e-300 made 1/scale infinite, written as `inf` into model.py).
SCALE = Domain("[1e-30, 1e30]", name="a positive step in [1e-30, 1e30]")


_QATTRS = (Attr("scale", "float", doc="real value of one step", domain=SCALE),
           Attr("zero_point", "int", 0, doc="the integer that stands for real 0"))


# ---- quantized convolution and linear -------------------------------------------------------------
def _out_attrs() -> tuple[Attr, ...]:
    return (
        Attr("in_scale", "float", doc="scale of the int8 input", domain=SCALE),
        Attr("in_zp", "int", 0, doc="zero point of the int8 input"),
        Attr("out_dtype", "sym", "f32", choices=("f32", "u8", "i8"), doc="f32: dequantized output; u8/i8: requantized"),
        Attr("out_scale", "float", 1.0, doc="scale of an int8 output", domain=SCALE),
        Attr("out_zp", "int", 0, doc="zero point of an int8 output"),
        Attr("relu", "bool", False, doc="fused relu (clamp at real 0)"),
    )


def _check_io(op: str, attrs: dict, x: TensorType) -> None:
    _need_dtype(op, x, INT_DTYPES, "an int8 (u8/i8)")
    _check_qparams(op, attrs["in_scale"], attrs["in_zp"], x.dtype, "input ")
    if attrs["out_dtype"] != "f32":
        _check_qparams(op, attrs["out_scale"], attrs["out_zp"], attrs["out_dtype"], "output ")


def _qparams(out: int, w_shape: tuple[int, ...], bias: bool) -> dict[str, ParamSpec]:
    p = {"weight": ParamSpec(w_shape, Init("zeros"), dtype="i8", trainable=False),
         "w_scale": ParamSpec((out,), Init("ones"), trainable=False)}
    if bias:
        p["bias"] = ParamSpec((out,), Init("zeros"), dtype="i32", trainable=False)
    return p


def make_qconv(nd: int) -> OpDef:
    name = f"qconv{nd}d"

    def normalize(attrs: dict, ins: list[TensorType]) -> dict:
        expect_rank(name, ins[0], nd + 2)
        if not isinstance(ins[0].shape[1], int):
            raise ShapeError(f"{name} needs a static channel count", got=str(ins[0]))
        if attrs["groups"] == "depthwise":
            attrs["groups"] = ins[0].shape[1]
        return attrs

    def infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
        x = ins[0]
        _check_io(name, attrs, x)
        cin, out, groups = x.shape[1], attrs["out"], attrs["groups"]
        k, s, d = (tuple_n(attrs[a], nd, a) for a in ("k", "stride", "dilation"))
        for a, v in (("k", k), ("stride", s), ("dilation", d)):
            check_positive(name, a, v)
        if out <= 0 or groups <= 0 or cin % groups or out % groups:
            raise ShapeError(f"{name}: groups={groups} must divide in ({cin}) and out ({out}) channels")
        pads = conv_padding(attrs, list(x.shape[2:]), nd)
        spatial = []
        for i in range(nd):
            o = conv_out_size(x.shape[2 + i], pads[i][0], pads[i][1], k[i], s[i], d[i])
            if isinstance(o, int) and o <= 0:
                raise ShapeError(f"{name}: input {x} is too small for kernel {k[i]}", got=str(x))
            spatial.append(o)
        return [TensorType((x.shape[0], out, *spatial), attrs["out_dtype"])]

    def params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
        cin, out, groups = ins[0].shape[1], attrs["out"], attrs["groups"]
        return _qparams(out, (out, cin // groups, *tuple_n(attrs["k"], nd, "k")), attrs["bias"])

    def cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
        macs = outs[0].numel() * (ins[0].shape[1] // attrs["groups"]) * math.prod(tuple_n(attrs["k"], nd, "k"))
        return Cost(macs, 2 * macs + 3 * outs[0].numel())  # + bias, scale, round per output

    def workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
        """The torch simulation dequantizes input and weights to f32 and runs a float conv (its
        reorders: twice the input and output); then the f32 accumulator, scaled and rounded, is
        requantized through two more f32 temporaries.  TVM's int8 kernels need less."""
        numel_in, numel_out = math.prod(ins[0].shape), math.prod(outs[0].shape)
        k = math.prod(tuple_n(attrs["k"], nd, "k"))
        weights = attrs["out"] * ins[0].shape[1] // attrs["groups"] * k
        return 4 * (3 * numel_in + 5 * numel_out + 2 * weights)

    return OpDef(
        name=name,
        group="quantization",
        attrs=(
            Attr("out", "int", doc="output channels", domain=POSITIVE),
            Attr("k", "ints", 3, doc="kernel size", domain=POSITIVE),
            Attr("stride", "ints", 1, domain=POSITIVE),
            Attr("pad", "ints|sym", 0, choices=("same", "valid"), doc="int, per-dim list, or same/valid (zeros)",
                 domain=NON_NEGATIVE),
            Attr("dilation", "ints", 1, domain=POSITIVE),
            Attr("groups", "int|sym", 1, choices=("depthwise",), domain=POSITIVE),
            Attr("bias", "bool", True, doc="int32 bias"),
            *_out_attrs(),
        ),
        infer=infer,
        params=params,
        cost=cost,
        normalize=normalize,
        workspace=workspace,
        doc=f"{nd}-D convolution of an int8 (u8/i8) tensor with int8 per-channel weights (`weight` i8, `w_scale` "
            "f32 per output channel, `bias` i32), int32 accumulation, then a float output or requantization "
            "to int8 (see convdsl/ir/ops/quant.py for the exact arithmetic).",
        example=f"quantize(0.02, 128) | qconv{nd}d(64, 3, pad=1, in_scale=0.02, in_zp=128, out_dtype=u8, out_scale=0.05, "
                "relu=true)",
        shape_rule=f"as conv{nd}d; dtype = out_dtype",
        example_inputs=SPATIAL_EXAMPLE_INPUTS[nd],
        prune=_INT8,
    )


def _qlinear_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    _check_io("qlinear", attrs, x)
    if x.rank < 1 or not isinstance(x.shape[-1], int):
        raise ShapeError("qlinear needs a static last dimension", got=str(x))
    if attrs["out"] <= 0:
        raise ShapeError("qlinear: out features must be positive", got=str(attrs["out"]))
    return [TensorType((*x.shape[:-1], attrs["out"]), attrs["out_dtype"])]


def _qlinear_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    return _qparams(attrs["out"], (attrs["out"], ins[0].shape[-1]), attrs["bias"])


def _qlinear_cost(attrs, ins, outs):
    macs = outs[0].numel() * ins[0].shape[-1]
    return Cost(macs, 2 * macs + 3 * outs[0].numel())


def _qlinear_workspace(attrs, ins, outs) -> int:
    """As qconv: f32 copies of the input and weights, the f32 accumulator and two temporaries."""
    numel_in, numel_out = math.prod(ins[0].shape), math.prod(outs[0].shape)
    return 4 * (2 * numel_in + 4 * numel_out + 2 * attrs["out"] * ins[0].shape[-1])


# ---- the transformer ops between quantized layers --------------------------------------------------
def _int_out_attrs() -> tuple[Attr, ...]:
    return (Attr("out_dtype", "sym", "u8", choices=INT_DTYPES, doc="the int8 output's dtype"),
            Attr("out_scale", "float", doc="scale of the int8 output", domain=SCALE),
            Attr("out_zp", "int", 0, doc="zero point of the int8 output"))


def _qlayernorm_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    _need_dtype("qlayernorm", x, ("f32",), "a float32")
    if x.rank < 1 or not isinstance(x.shape[-1], int):
        raise ShapeError("qlayernorm needs a static last dimension", got=str(x))
    if not (attrs["x_scale"] > 0 and math.isfinite(attrs["x_scale"])):
        raise CDLTypeError("qlayernorm: x_scale must be a positive number", got=str(attrs["x_scale"]))
    _check_qparams("qlayernorm", attrs["out_scale"], attrs["out_zp"], attrs["out_dtype"], "output ")
    return [TensorType(x.shape, attrs["out_dtype"])]


def _qlayernorm_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c = ins[0].shape[-1]
    return {"weight": ParamSpec((c,), Init("ones"), trainable=False),
            "bias": ParamSpec((c,), Init("zeros"), trainable=False)}


def _qgelu_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    _need_dtype("qgelu", ins[0], ("f32",), "a float32")
    _check_qparams("qgelu", attrs["out_scale"], attrs["out_zp"], attrs["out_dtype"], "output ")
    return [TensorType(ins[0].shape, attrs["out_dtype"])]


def _qattention_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    _check_io("qattention", attrs, x)
    if x.rank != 3 or not isinstance(x.shape[-1], int):
        raise ShapeError("qattention needs int8 tokens [N, L, 3C] holding q, k and v", got=str(x))
    if x.shape[-1] % 3:
        raise ShapeError("qattention: the last dim holds q, k and v, so it must be a multiple of 3",
                         got=str(x.shape[-1]))
    c, heads = x.shape[-1] // 3, attrs["heads"]
    if heads <= 0 or c % heads:
        raise ShapeError(f"qattention: {c} channels cannot be split into {heads} heads", got=f"heads={heads}")
    return [TensorType((x.shape[0], x.shape[1], c), attrs["out_dtype"])]


def _qattention_cost(attrs, ins, outs):
    n, length, c = outs[0].shape[0], ins[0].shape[1], outs[0].shape[-1]
    if not all(isinstance(v, int) for v in (n, length)):
        return Cost(0, 0)
    macs = 2 * n * length * length * c
    return Cost(macs, 2 * macs + 12 * n * attrs["heads"] * length * length)


def _qattention_workspace(attrs, ins, outs) -> int:
    """The torch simulation's float64 q, k, v, logits and probabilities."""
    n, length, c3 = (v if isinstance(v, int) else 1 for v in ins[0].shape)
    return 8 * (2 * n * length * c3 + 3 * n * attrs["heads"] * length * length)


_TRANSFORMER_INT8 = opaque("int8 scales calibrated for these channels: prune the float network, then quantize")

OPS = [
    OpDef(name="quantize", group="quantization",
          attrs=(*_QATTRS, Attr("dtype", "sym", "u8", choices=INT_DTYPES)),
          infer=_quantize_infer,
          workspace=io_workspace(per_input=3),  # x / scale, rounded, shifted: f32 temporaries before the clamp
          doc="float -> int8: q = clamp(round(x * f32(1/scale)) + zero_point) in the dtype's range, "
              "rounding half to even.",
          example="quantize(0.05, 128)", shape_rule="out = in; dtype = dtype", prune=_INT8),
    OpDef(name="dequantize", group="quantization", attrs=_QATTRS, infer=_dequantize_infer,
          workspace=io_workspace(per_output=1),  # q - zero_point in f32 before the scale
          doc="int8 -> f32: x = (q - zero_point) * scale.",
          example="quantize(0.05, 128) | dequantize(0.05, 128)", shape_rule="out = in; dtype = f32", prune=_INT8),
    OpDef(name="cast", group="quantization", attrs=(Attr("dtype", "sym", choices=FLOAT_DTYPES),),
          infer=_cast_infer, cost=zero_cost,
          doc="convert a float tensor to another float dtype (f32, f16, bf16, f64), rounding to nearest even.",
          example="cast(f16)", shape_rule="out = in; dtype = dtype",
          prune=opaque("a dtype change: prune before casting")),
    make_qconv(1), make_qconv(2), make_qconv(3),
    OpDef(name="qlinear", group="quantization",
          attrs=(Attr("out", "int", domain=POSITIVE), Attr("bias", "bool", True, doc="int32 bias"), *_out_attrs()),
          infer=_qlinear_infer, params=_qlinear_params, cost=_qlinear_cost, workspace=_qlinear_workspace,
          doc="y = x W^T + b over the last dim with an int8 input, int8 per-row weights (`weight` i8, `w_scale` "
              "f32, `bias` i32) and int32 accumulation, then a float output or requantization to int8.",
          example="quantize(0.02, 128) | qlinear(10, in_scale=0.02, in_zp=128)",
          shape_rule="[..., in] -> [..., out]; dtype = out_dtype", prune=_INT8),
    OpDef(name="qlayernorm", group="quantization",
          attrs=(Attr("eps", "float", 1e-5, doc="added to the variance", domain=NON_NEGATIVE),
                 Attr("x_scale", "float", doc="step of the 16-bit fixed-point input the sums run on",
                      domain=SCALE),
                 *_int_out_attrs()),
          infer=_qlayernorm_infer, params=_qlayernorm_params, cost=lambda a, i, o: Cost(0, 12 * o[0].numel()),
          workspace=io_workspace(per_input=4),
          doc="layer normalization over the last dim of a float tensor, straight to int8, computed with exact "
              "integer sums of a 16-bit fixed-point input (`weight`, `bias` f32; see "
              "convdsl/ir/ops/quant.py for the exact arithmetic).",
          example="qlayernorm(x_scale=0.001, out_scale=0.03, out_zp=128)",
          shape_rule="out = in; dtype = out_dtype", example_inputs="x: f32[N, 197, 64]",
          prune=_TRANSFORMER_INT8),
    OpDef(name="qgelu", group="quantization", attrs=_int_out_attrs(),
          infer=_qgelu_infer, cost=lambda a, i, o: Cost(0, 25 * o[0].numel()), workspace=io_workspace(per_input=4),
          doc="GELU (erf form, Abramowitz & Stegun's erf 7.1.28 in float32 steps) of a float tensor, "
              "straight to int8.",
          example="qgelu(out_scale=0.02, out_zp=10)", shape_rule="out = in; dtype = out_dtype",
          prune=_TRANSFORMER_INT8),
    OpDef(name="qattention", group="quantization",
          attrs=(Attr("heads", "int", doc="attention heads; must divide C", domain=POSITIVE),
                 Attr("scale", "float", None, doc="logit scale (default 1/sqrt(head width))", domain=SCALE),
                 *_out_attrs()[:-1]),
          infer=_qattention_infer, cost=_qattention_cost, workspace=_qattention_workspace,
          doc="softmax(q k^T * scale) v per head, on int8 tokens [N, L, 3C] holding q | k | v (what mhsa's "
              "quantized input projection writes), with exact integer products and an 8-bit softmax; "
              "float or int8 output [N, L, C].",
          example="quantize(0.05, 128) | qattention(heads=4, in_scale=0.05, in_zp=128)",
          shape_rule="[N, L, 3C] -> [N, L, C]; dtype = out_dtype",
          example_inputs="x: f32[N, 50, 96]", prune=_TRANSFORMER_INT8),
]
