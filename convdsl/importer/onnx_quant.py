"""Import int8 ONNX models in the QDQ format onto convdsl's quantized ops.

The QDQ format (ONNX Runtime's ``quantize_static``, NNCF, convdsl's own export of an int8 program)
writes an int8 layer as a float op between a ``DequantizeLinear`` of its int8 input, a
``DequantizeLinear`` of its int8 weights (and int32 bias) and a ``QuantizeLinear`` of its output.
The importer maps:

- ``QuantizeLinear`` (one scale) -> ``quantize(scale, zero_point, dtype)``;
- ``DequantizeLinear`` of constants -> the float constant it computes, remembered with its integers
  (``QConst``) for the layer that reads it;
- ``DequantizeLinear`` of a computed int8 tensor -> nothing yet (``Deq``): a ``Conv``, ``Gemm`` or
  ``MatMul`` with quantized weights reading it becomes ``qconv*d`` / ``qlinear`` on the int8 tensor
  itself, and a ``QuantizeLinear`` after it (behind one ``Relu`` at most) becomes the layer's
  requantization (``out_dtype``, ``out_scale``, ``out_zp``, ``relu``); any other reader gets a
  ``dequantize(scale, zero_point)``, made once per tensor.
- a ``ConvTranspose`` with quantized weights (groups 1) reading a Deq: the ``qconv*d`` of its stride phases
  (``ir.ops.conv.phase_kernel``: the same integer products) and the reshape -> permute -> reshape -> crops
  that interleave them, on the int8 output: the form convdsl's own quantize pass gives a transposed conv.
- a ``MaxPool`` or a reshape / transpose between a Deq and a ``QuantizeLinear`` of the same scale, zero point
  and type (ONNX Runtime's QDQ around them): the op on the int8 tensor itself (``passthrough``); the pair
  is the identity on the integers, and max commutes with the increasing dequantization.

The ONNX graph is defined in float (a float conv of dequantized values, then a rounding); convdsl's
qconv sums the integers exactly and rounds once, as ONNX Runtime's own integer kernels do, so the two
agree within one step of the output.  Scales are kept as the float32 values the file holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from convdsl.importer.builder import located
from convdsl.importer.onnx_shapes import Const
from convdsl.ir.graph import Value

Ctx = Any  # onnx_import.Ctx, the importer's view of one node (this module sits below onnx_import)

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the ops that may read a Deq as a quantized layer
# ops whose convdsl mapping is an ``int8_passthrough`` op (max-pooling, moving values): between a Deq and a
# QuantizeLinear of the same scale and zero point they run on the int8 tensor (``passthrough``)
PASSTHROUGH = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
# integer ops of ONNX Runtime's QOperator format and of dynamic quantization: refused with the QDQ hint
OPERATOR_FORMAT = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QGemm",
                   "DynamicQuantizeLinear", "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearSigmoid")
_INT8 = {"u8": (0, 255), "i8": (-128, 127)}
_INT_DTYPE = {np.dtype(np.uint8): "u8", np.dtype(np.int8): "i8", np.dtype(np.int32): "i32"}
_WIDTH = np.iinfo(np.int32)


@dataclass(frozen=True)
class Deq:
    """A DequantizeLinear of a computed int8 tensor, left to its readers."""

    q: Value
    scale: float
    zp: int


@dataclass
class QConst:
    """A DequantizeLinear of constant integers: ``(q - zp) * scale``, per tensor or per slice along ``axis``."""

    q: np.ndarray
    scale: np.ndarray
    zp: np.ndarray
    axis: int
    key: str | None

    def integers(self, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(q - zp as int64, scale per slice along ``axis``), or None if quantized along another axis."""
        n = self.q.shape[axis]
        if self.scale.size > 1 and self.axis % self.q.ndim != axis:
            return None
        shape = [1] * self.q.ndim
        if self.scale.size > 1:
            shape[axis] = n
        zp = self.zp.reshape(shape) if self.zp.size > 1 else self.zp.reshape(())
        scale = np.broadcast_to(self.scale.reshape(-1), (n,)) if self.scale.size == 1 else self.scale.reshape(-1)
        return self.q.astype(np.int64) - zp.astype(np.int64), scale.astype(np.float32)


class State:
    """What the importer knows about the quantized tensors of one file (``Ctx.quant``)."""

    def __init__(self, graph_outputs: set[str]) -> None:
        self.graph_outputs = graph_outputs  # names a fused layer must not hide
        self.tensors: dict[str, Deq] = {}  # ONNX value name -> its pending DequantizeLinear
        self.consts: dict[str, QConst] = {}  # ONNX value name -> the integers behind a dequantized constant
        self._dequantized: dict[tuple, Value] = {}

    def value(self, cx: Ctx, name: str) -> Any:
        """``env[name]``, a Deq made into a ``dequantize`` (once per int8 tensor and parameters)."""
        v = cx.env.get(name)
        if not isinstance(v, Deq):
            return v
        made = self._dequantized.get((v.q, v.scale, v.zp))
        if made is None:
            made = cx.add("dequantize", [v.q], {"scale": v.scale, "zero_point": v.zp},
                          id=cx.default_id("dequantize"))
            self._dequantized[(v.q, v.scale, v.zp)] = made
        cx.env[name] = made
        return made

    def read_inputs(self, cx: Ctx, names) -> None:
        for name in names:
            if name:
                self.value(cx, name)


def _dtype(cx: Ctx, v: Any, what: str) -> str:
    if isinstance(v, Const):
        dt = _INT_DTYPE.get(v.array.dtype)
    else:
        dt = cx.type(v).dtype if isinstance(v, Value) else None
    if dt is None:
        raise located(cx.origin, f"{what} must be uint8 or int8 (int32 for a bias)")
    return dt


def _scalar_params(cx: Ctx) -> tuple[float, int]:
    """(scale, zero point) of a per-tensor Quantize/DequantizeLinear; a located error for per-axis ones."""
    scale = cx.const(1)
    zp = cx.arg(2).array if isinstance(cx.arg(2), Const) else np.zeros((), np.int64)
    if scale.size != 1 or zp.size != 1:
        raise located(cx.origin, "a per-axis scale on a computed tensor has no convdsl op (quantize and dequantize "
                                 "take one scale and zero point)", "quantize activations per tensor")
    _no_blocks(cx)
    s = float(np.float32(scale.reshape(())))
    if not (s > 0 and np.isfinite(s)):
        raise located(cx.origin, f"scale {s} is not a positive finite number")
    return s, int(zp.reshape(()))


def quantize_linear(cx: Ctx):
    """QuantizeLinear -> quantize (a computed tensor) or the integers (a constant)."""
    zp = cx.arg(2)
    dtype = _dtype(cx, zp, "the zero point") if zp is not None else "u8"
    if int(cx.attrs.get("output_dtype", 0)):
        dtype = {2: "u8", 3: "i8"}.get(int(cx.attrs["output_dtype"]), f"ONNX type {cx.attrs['output_dtype']}")
    if dtype not in _INT8:
        raise located(cx.origin, f"quantizing to {dtype} has no convdsl op (u8 or i8 only)")
    if isinstance(cx.arg(0), Const):  # float weights quantized in the file (Q -> DQ on an initializer)
        return _quantized_const(cx, cx.arg(0), dtype)
    x = cx.tensor(0)
    scale, z = _scalar_params(cx)
    lo, hi = _INT8[dtype]
    if not lo <= z <= hi:
        raise located(cx.origin, f"zero point {z} is outside the {dtype} range")
    return cx.add("quantize", [x], {"scale": scale, "zero_point": z, "dtype": dtype}, id=cx.default_id("quantize"))


def _no_blocks(cx: Ctx) -> None:
    if int(cx.attrs.get("block_size", 0)):
        raise located(cx.origin, "blocked quantization (block_size) has no convdsl op")


def _per_axis(cx: Ctx, ndim: int):
    """(scale, zero point, along) of a Quantize/DequantizeLinear of a constant with ``ndim`` dims: float32 scales,
    the zero points, and a function shaping a per-tensor or per-axis array to broadcast against the constant."""
    _no_blocks(cx)
    scale = np.asarray(cx.const(1), np.float32)
    zp = np.asarray(cx.arg(2).array if isinstance(cx.arg(2), Const) else np.zeros((), np.int64))
    shape = [1] * ndim
    if scale.size > 1:
        shape[int(cx.attrs.get("axis", 1))] = -1
    return scale, zp, (lambda a: a.reshape(shape) if a.size > 1 else a.reshape(()))


def _quantized_const(cx: Ctx, x: Const, dtype: str) -> Const:
    """QuantizeLinear of a constant, as ONNX defines it: clamp(round(x / scale) + zp), per tensor or per
    slice along ``axis``; the integers keep the float parameter's key."""
    scale, zp, along = _per_axis(cx, x.array.ndim)
    lo, hi = _INT8[dtype]
    q = np.clip(np.rint(x.array.astype(np.float32) / along(scale)) + along(zp.astype(np.float32)), lo, hi)
    return Const(q.astype(np.uint8 if dtype == "u8" else np.int8), x.key, x.stored)


def dequantize_linear(cx: Ctx):
    """DequantizeLinear -> the float constant (remembered as a QConst) or a pending Deq."""
    x = cx.arg(0)
    name = cx.node.output[0]
    if isinstance(x, Const):
        if x.array.dtype.kind not in "iu":
            raise located(cx.origin, f"dequantizing {x.array.dtype} constants has no meaning")
        scale, zp, along = _per_axis(cx, x.array.ndim)
        q = QConst(x.array, scale, zp, int(cx.attrs.get("axis", 1)), _float_key(x.key))
        real = (x.array.astype(np.float32) - along(zp.astype(np.float32))) * along(scale)
        cx.quant.consts[name] = q
        return Const(real.astype(np.float32), q.key, x.stored)
    dtype = _dtype(cx, x, "the input")
    if dtype not in _INT8:
        raise located(cx.origin, f"dequantizing a computed {dtype} tensor has no convdsl op (u8 or i8 only)")
    scale, zp = _scalar_params(cx)
    deq = Deq(x, scale, zp)
    cx.quant.tensors[name] = deq
    return deq


def _float_key(key: str | None) -> str | None:
    """The float parameter's key behind a quantized initializer: ONNX Runtime writes ``<key>_quantized``,
    convdsl's exporter ``<key>.u8``."""
    for suffix in ("_quantized", ".u8"):
        if key and key.endswith(suffix):
            return key[: -len(suffix)]
    return key


# ---- quantized layers ------------------------------------------------------------------------------
def layer(cx: Ctx, conv_attrs, bias_after) -> Value | None:
    """``qconv*d`` / ``qlinear`` for a Conv / Gemm / MatMul reading a Deq with int8 weights, or None
    (the float mapping then runs on a ``dequantize``).  ``conv_attrs`` and ``bias_after`` are onnx_import's:
    a Conv's convdsl attributes, and the Add of a 1-D constant after a MatMul."""
    deq = cx.quant.tensors.get(cx.node.input[0])
    if deq is None:
        return None
    op, add = cx.node.op_type, None
    if op == "ConvTranspose":
        return _transposed(cx, deq)
    if op == "Conv":
        wq = cx.quant.consts.get(cx.node.input[1])
        got = wq and wq.integers(0)
        if got is None:
            return None
        w, w_scale = got
        attrs = conv_attrs(cx, wq.q.shape, False)
        kind, end, bias = f"qconv{wq.q.ndim - 2}d", cx.node.output[0], _arg_name(cx, 2)
    elif op == "Gemm":
        a = cx.attrs
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
            return None
        wq = cx.quant.consts.get(cx.node.input[1])
        got = wq and wq.integers(0 if a.get("transB", 0) else 1)
        if got is None:
            return None
        w, w_scale = got[0] if a.get("transB", 0) else got[0].T, got[1]
        attrs, kind, end, bias = {"out": int(w.shape[0])}, "qlinear", cx.node.output[0], _arg_name(cx, 2)
    else:  # MatMul(x, W) [+ bias]
        wq = cx.quant.consts.get(cx.node.input[1])
        got = wq and wq.q.ndim == 2 and wq.integers(1)
        if not got:
            return None
        w, w_scale = got[0].T, got[1]
        attrs, kind, end, bias = {"out": int(w.shape[0])}, "qlinear", cx.node.output[0], None
        _, add = bias_after(cx)
        if add is not None and add.name:
            bias, end = next(i for i in add.input if i != cx.node.output[0]), add.output[0]
    if w.min() < -128 or w.max() > 127:
        return None  # weights with a zero point whose differences leave int8: the float layer
    params = {"weight": w.astype(np.int8), "w_scale": w_scale}
    if bias is not None:
        params["bias"] = _bias(cx, bias, deq.scale, w_scale)
    attrs.update(bias=bias is not None, in_scale=deq.scale, in_zp=deq.zp)
    fused = _requantization(cx, end)
    if fused is not None:
        attrs.update(fused[0])
    pid, _ = cx.owner(weight=Const(w, wq.key))  # <id>.weight names the layer, as for a float one
    y = cx.add(kind, [deq.q], attrs, params, id=pid or cx.default_id(kind))
    if end != cx.node.output[0]:  # MatMul's bias Add
        cx.skip.add(add.name)
    _absorb(cx, fused, end, y)
    return y


def _transposed(cx: Ctx, deq: Deq) -> Value | None:
    """A ConvTranspose on int8 (module docstring), or None where it stays a float conv_transpose: groups, a
    symbolic or 1x1 input, asymmetric pads, weights quantized along another axis, or a form the quantize pass
    leaves float too (``int8_phase_refusal``)."""
    from convdsl.ir.ops.conv import (int8_phase_refusal, of_a_point, phase_kernel, phase_shuffle, phase_taps,
                                     phase_window)

    a = cx.attrs
    wq = cx.quant.consts.get(cx.node.input[1])
    got = wq and wq.integers(1)  # [C, O, *k]: per output channel along axis 1
    if not got or int(a.get("group", 1)) != 1:
        return None
    w, w_scale = got
    nd = w.ndim - 2
    lengths = cx.type(deq.q).shape[2:]
    pads = list(a.get("pads", [0] * 2 * nd))
    k, s, d, opad = (tuple(int(v) for v in x) for x in (
        w.shape[2:], a.get("strides", [1] * nd), a.get("dilations", [1] * nd), a.get("output_padding", [0] * nd)))
    if w.min() < -128 or w.max() > 127 or pads[:nd] != pads[nd:] or not all(isinstance(n, int) for n in lengths) \
            or of_a_point(lengths, pads[:nd], opad, d, 1):
        return None
    if int8_phase_refusal(lengths, k, s, pads[:nd], d, opad) is not None:
        return None
    t = phase_taps(k, s, d)
    q, _, window = phase_window(lengths, k, s, pads[:nd], d, opad)
    o, phases = int(w.shape[1]), int(np.prod(s))
    bias = _arg_name(cx, 2)
    params = {"weight": phase_kernel(w.astype(np.int8), s, d, 1), "w_scale": np.tile(w_scale, phases)}
    if bias is not None:  # output channels phase-major, as the weights'
        params["bias"] = np.tile(_bias(cx, bias, deq.scale, w_scale), phases)
    attrs = {"out": o * phases, "k": list(t), "stride": 1, "pad": [ti - 1 for ti in t], "bias": bias is not None,
             "in_scale": deq.scale, "in_zp": deq.zp}
    fused = _requantization(cx, cx.node.output[0])
    if fused is not None:
        attrs.update(fused[0])
    pid, _ = cx.owner(weight=Const(w, wq.key))
    y = cx.add(f"qconv{nd}d", [deq.q], attrs, params, id=pid or cx.default_id(f"qconv{nd}d"))
    if phases > 1:
        split, dims, merged = phase_shuffle(o, 1, s, q)
        y = cx.add("reshape", [y], {"shape": tuple(split)}, id=cx.default_id("split_phases"))
        y = cx.add("permute", [y], {"dims": tuple(dims)}, id=cx.default_id("interleave"))
        y = cx.add("reshape", [y], {"shape": tuple(merged)}, id=cx.default_id("merge_phases"))
    for i, ((start, stop), qi, si) in enumerate(zip(window, q, s)):
        if (start, stop) != (0, qi * si):
            y = cx.add("index_select", [y], {"index": tuple(range(start, stop)), "dim": 2 + i},
                       id=cx.default_id("crop"))
    _absorb(cx, fused, cx.node.output[0], y)
    return y


def passthrough(cx: Ctx, mapping) -> Value | None:
    """A ``PASSTHROUGH`` op reading a Deq whose only reader quantizes it back to the same scale, zero point and
    type: ``mapping`` (onnx_import's for the op) run on the int8 tensor, its result what that QuantizeLinear
    gives; None otherwise (the op then reads a ``dequantize``)."""
    name, out = cx.node.input[0], cx.node.output[0]
    deq = cx.quant.tensors.get(name)
    users = cx.consumers.get(out, [])
    if deq is None or len(cx.node.output) != 1 or out in cx.quant.graph_outputs or len(users) != 1:
        return None
    q = users[0]
    dtype = cx.type(deq.q).dtype
    if not q.name or q.op_type != "QuantizeLinear" or q.input[0] != out or \
            _q_params(cx, q) != (deq.scale, deq.zp, dtype):
        return None
    cx.env[name] = deq.q
    try:
        y = mapping(cx)
    finally:
        cx.env[name] = deq  # other readers of the DequantizeLinear still see it pending
    if not isinstance(y, Value) or cx.type(y).dtype != dtype:  # pragma: no cover - a mapping that is not a passthrough
        raise located(cx.origin, f"{cx.node.op_type} on the int8 tensor did not keep its type")
    cx.skip.add(q.name)
    cx.env[out] = cx.env[q.output[0]] = y
    return y


def _arg_name(cx: Ctx, i: int) -> str | None:
    return cx.node.input[i] if len(cx.node.input) > i and cx.node.input[i] else None


def _bias(cx: Ctx, name: str, in_scale: float, w_scale: np.ndarray) -> np.ndarray:
    """The int32 bias in units of f32(in_scale * w_scale[c]) (qconv's): the file's integers where its bias
    scale is that product (ONNX Runtime's and convdsl's QDQ bias), else the float bias rounded to them."""
    unit = (np.float32(in_scale) * w_scale).astype(np.float32)
    qb = cx.quant.consts.get(name)
    if qb is not None and qb.q.dtype == np.int32 and not qb.zp.any():
        scale = np.broadcast_to(qb.scale.reshape(-1), unit.shape)
        if np.all(np.abs(scale - unit) <= 1e-6 * unit):
            return qb.q.reshape(-1).astype(np.int32)
    real = cx.env.get(name)
    if not isinstance(real, Const):
        raise located(cx.origin, "the layer's bias is computed; convdsl's quantized layers take a constant bias")
    b = np.rint(real.array.reshape(-1).astype(np.float64) / unit.astype(np.float64))
    if b.min(initial=0) < _WIDTH.min or b.max(initial=0) > _WIDTH.max:
        raise located(cx.origin, "the bias does not fit int32 in units of in_scale * w_scale")
    return b.astype(np.int32)


def _requantization(cx: Ctx, out: str) -> tuple[dict, list] | None:
    """The output QuantizeLinear the layer absorbs (its only reader, behind at most one Relu): qconv's
    ``out_*`` / ``relu`` attributes and the nodes it replaces, or None (a float output)."""
    graph_outputs = cx.quant.graph_outputs
    chain = []
    name = out
    while True:
        users = cx.consumers.get(name, [])
        if name in graph_outputs or len(users) != 1 or not users[0].name:
            return None
        user = users[0]
        chain.append(user)
        if user.op_type == "Relu" and len(chain) == 1:
            name = user.output[0]
            continue
        if user.op_type != "QuantizeLinear" or user.input[0] != name:
            return None
        break
    params = _q_params(cx, user)
    if params is None:
        return None
    s, z, dtype = params
    return {"out_dtype": dtype, "out_scale": s, "out_zp": z, "relu": chain[0].op_type == "Relu"}, chain


def _q_params(cx: Ctx, q) -> tuple[float, int, str] | None:
    """(scale, zero point, dtype) of the QuantizeLinear node ``q`` with one constant scale and zero point, or None."""
    scale, zp = cx.env.get(q.input[1]), cx.env.get(q.input[2]) if len(q.input) > 2 and q.input[2] else None
    if not isinstance(scale, Const) or scale.array.size != 1 or (zp is not None and not isinstance(zp, Const)) or \
            any(a.name in ("output_dtype", "block_size") for a in q.attribute):
        return None
    dtype = "u8" if zp is None else _INT_DTYPE.get(zp.array.dtype)
    s = float(np.float32(scale.array.reshape(())))
    if dtype not in _INT8 or not (s > 0 and np.isfinite(s)):
        return None
    return s, 0 if zp is None else int(zp.array.reshape(())), dtype


def _absorb(cx: Ctx, fused: tuple[dict, list] | None, end: str, y: Value) -> None:
    """``y`` is the value of ``end`` and, with ``fused`` (``_requantization``'s), of the QuantizeLinear (and
    Relu) the layer absorbed, which the importer then skips."""
    if fused is not None:
        for n in fused[1]:
            cx.skip.add(n.name)
        cx.env[fused[1][-1].output[0]] = y
    cx.env[end] = y
