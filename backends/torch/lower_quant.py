"""Torch lowerings of the quantized ops (convdsl/ir/ops/quant.py); see common.py for the entry format.

The torch backend *simulates* int8 exactly: tensors really are uint8/int8, the
int32 accumulation of qconv/qlinear is done in float64 (every partial sum is an
integer below 2**53, so float64 gives the exact integer whatever the summation
order), and requantization follows convdsl/ir/ops/quant.py step by step in
float32, so its results equal the TVM backend's real int8 kernels bit for bit.

The helpers below are copied into generated files like those of runtime.py
(they depend on torch, nn, F only); lowering.py joins ``HELPERS`` with
runtime's, next to ``LOWERINGS``.  Max-pooling of int8 tensors is lower_pool.py's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convdsl.ir.graph import Node
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.ops.quant import (ERF_CLAMP, ERF_COEFFS, EXP2_COEFFS, EXP2_FLOOR, INV_SQRT2, LN_QMAX, LOG2E,
                                  PROB_MAX, QRANGE, attention_constants, f32, inverse_scale,
                                  ln_constants)
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TORCH_DTYPE, TensorType

from convdsl.backends.torch.common import TorchLowering, family, keywords, lit, module_call

LOWERINGS = family("quant")


# ---- helpers copied into generated code ---------------------------------------------------------
def quantize_tensor(x: torch.Tensor, inv_scale: float, zero_point: int, qmin: int, qmax: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """float -> int8: clamp(round(x * inv_scale) + zero_point, qmin, qmax); torch.round rounds half to even."""
    return torch.clamp(torch.round(x.float() * inv_scale) + zero_point, qmin, qmax).to(dtype)


def dequantize_tensor(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """int8 -> float32: (q - zero_point) * scale."""
    return (q.float() - zero_point) * scale


class QuantizedLayer(nn.Module):
    """Shared part of QConv and QLinear: int8 weights [out, ...] with float32 scales per output
    channel, int32 bias; requantization of the exact accumulator (float64 holding int32 values):
    float output: f32(acc) * m, m = f32(in_scale * w_scale);  int8 output:
    clamp(round(f32(acc) * m) + out_zp, lo, qmax), m = f32(in_scale * w_scale / out_scale),
    the multipliers computed in float64 and rounded once."""

    RANGES = {"u8": (0, 255, torch.uint8), "i8": (-128, 127, torch.int8)}

    def __init__(self, w_shape, bias=True, in_scale=1.0, in_zp=0, out_dtype="f32", out_scale=1.0, out_zp=0,
                 relu=False):
        super().__init__()
        self.register_buffer("weight", torch.zeros(w_shape, dtype=torch.int8))
        self.register_buffer("w_scale", torch.ones(w_shape[0]))
        self.register_buffer("bias", torch.zeros(w_shape[0], dtype=torch.int32) if bias else None)
        self.in_scale, self.in_zp, self.out_dtype = in_scale, in_zp, out_dtype
        self.out_scale, self.out_zp, self.relu = out_scale, out_zp, relu

    def requantize(self, acc: torch.Tensor, channel_dim: int) -> torch.Tensor:
        m = self.in_scale * self.w_scale.double()
        if self.out_dtype != "f32":
            m = m / self.out_scale
        shape = [1] * acc.dim()
        shape[channel_dim] = -1
        y = acc.float() * m.float().view(shape)
        if self.out_dtype == "f32":
            return torch.relu(y) if self.relu else y
        qmin, qmax, dtype = self.RANGES[self.out_dtype]
        lo = max(qmin, self.out_zp) if self.relu else qmin
        return torch.clamp(torch.round(y) + self.out_zp, lo, qmax).to(dtype)


class QConv(QuantizedLayer):
    """Quantized N-d convolution; ``pad`` is F.pad's flat tuple (last dim first) of zero padding in the
    real domain, i.e. ``in_zp`` in the int8 domain."""

    def __init__(self, nd, cin, out, k, stride=1, pad=(), dilation=1, groups=1, **kwargs):
        k = (k,) * nd if isinstance(k, int) else tuple(k)
        super().__init__((out, cin // groups, *k), **kwargs)
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        self.stride, self.pad, self.dilation, self.groups = stride, pad, dilation, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xd = x.double() - self.in_zp
        if any(self.pad):
            xd = F.pad(xd, self.pad)
        bias = None if self.bias is None else self.bias.double()
        acc = self.conv(xd, self.weight.double(), bias, self.stride, 0, self.dilation, self.groups)
        return self.requantize(acc, 1)


class QLinear(QuantizedLayer):
    """Quantized y = x W^T + b over the last dim."""

    def __init__(self, fin, out, **kwargs):
        super().__init__((out, fin), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.double()
        acc = F.linear(x.double() - self.in_zp, self.weight.double(), bias)
        return self.requantize(acc, -1)


def sqrt_f32(v: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 square root of float32 ``v`` >= 0 (IEEE sqrt, as LLVM's and numpy's).
    torch.sqrt is not: with MKL it calls VML's vsSqrt, within one ulp (0.6% of random float32 values a
    last bit off), which moved a layer norm's output a step.  A float64 square root, rounded, is within
    one ulp whatever the library; the midpoints to its neighbours (25 bits, their squares exact in
    float64) say which of the three is the nearest."""
    s = torch.sqrt(v.double()).float()
    up = torch.nextafter(s, torch.full_like(s, float("inf")))
    down = torch.nextafter(s, torch.zeros_like(s))
    vd = v.double()
    hi, lo = (s.double() + up.double()) * 0.5, (s.double() + down.double()) * 0.5
    return torch.where(hi * hi <= vd, up, torch.where(lo * lo > vd, down, s))


def qlayernorm_tensor(x: torch.Tensor, inv_x: float, qmax_x: int, e: float, g: torch.Tensor, b: torch.Tensor,
                      out_zp: int, qmin: int, qmax: int, dtype: torch.dtype) -> torch.Tensor:
    """qlayernorm (convdsl/ir/ops/quant.py): exact int64 sums of the 16-bit fixed-point input, then one
    float32 rounding per step; ``g``, ``b``: f32(weight / out_scale), f32(bias / out_scale)."""
    xi = torch.clamp(torch.round(x.float() * inv_x), -qmax_x, qmax_x).to(torch.int64)
    c = x.shape[-1]
    s1 = xi.sum(-1, keepdim=True)
    s2 = (xi * xi).sum(-1, keepdim=True)
    d = (c * xi - s1).float()
    v = (c * s2 - s1 * s1).float()
    r = 1.0 / sqrt_f32(v + e)
    t = ((d * r) * g) + b
    return torch.clamp(torch.round(t) + out_zp, qmin, qmax).to(dtype)


def qgelu_tensor(x: torch.Tensor, inv_sqrt2: float, clamp: float, coeffs: tuple, inv_out: float, out_zp: int,
                 qmin: int, qmax: int, dtype: torch.dtype) -> torch.Tensor:
    """qgelu (convdsl/ir/ops/quant.py): erf by Abramowitz & Stegun 7.1.28 in float32 steps, then quantize."""
    x = x.float()
    z = torch.clamp(x.abs() * inv_sqrt2, max=clamp)
    h = z * coeffs[-1]
    for a in reversed(coeffs[:-1]):
        h = (h + a) * z
    p = h + 1.0
    r = 1.0 / p
    r = r * r
    r = r * r
    r = r * r
    r = r * r
    e = 1.0 - r
    e = torch.where(x < 0, -e, e)
    g = (x * (1.0 + e)) * 0.5
    return torch.clamp(torch.round(g * inv_out) + out_zp, qmin, qmax).to(dtype)


def qattention_tensor(x: torch.Tensor, heads: int, zp: int, c: float, log2e: float, floor: float, coeffs: tuple,
                      prob_max: float, mult: float, out_zp: int | None, qmin: int, qmax: int,
                      dtype: torch.dtype) -> torch.Tensor:
    """qattention (convdsl/ir/ops/quant.py): exact integer products in float64, the 8-bit softmax in
    float32 steps (2^f by Horner, 2^n from its exponent bits), its normalization in the output's
    multiplier; ``out_zp`` None: a float output."""
    n, length, c3 = x.shape
    width = c3 // 3
    q, k, v = (x.double() - zp).view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    s = q @ k.transpose(-1, -2)
    t = (s - s.amax(-1, keepdim=True)).float() * c
    u = torch.clamp(t * log2e, min=floor)
    e = torch.floor(u)
    f = u - e
    h = f * coeffs[-1]
    for a in reversed(coeffs[:-1]):
        h = (h + a) * f
    p = h + 1.0
    w = torch.round((p * ((e.to(torch.int32) + 127) << 23).view(torch.float32)) * prob_max)
    total = w.double().sum(-1, keepdim=True)
    a = (w.double() @ v).float()
    m = torch.full_like(a[..., :1], mult) / total.float()  # (a python number / a tensor is its reciprocal times it)
    y = (a * m).permute(0, 2, 1, 3).reshape(n, length, width)
    if out_zp is None:
        return y
    return torch.clamp(torch.round(y) + out_zp, qmin, qmax).to(dtype)


class QLayerNorm(nn.Module):
    """qlayernorm with its float32 ``weight`` and ``bias`` (buffers); the output multipliers
    f32(weight / out_scale), f32(bias / out_scale) are computed in float64 and rounded once."""

    def __init__(self, channels, inv_x, qmax_x, e, out_scale, out_zp, qmin, qmax, dtype):
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.inv_x, self.qmax_x, self.e, self.out_scale = inv_x, qmax_x, e, out_scale
        self.out_zp, self.qmin, self.qmax, self.dtype = out_zp, qmin, qmax, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = (self.weight.double() / self.out_scale).float()
        b = (self.bias.double() / self.out_scale).float()
        return qlayernorm_tensor(x, self.inv_x, self.qmax_x, self.e, g, b, self.out_zp, self.qmin, self.qmax,
                                 self.dtype)


HELPERS: dict[str, object] = {"quantize_tensor": quantize_tensor, "dequantize_tensor": dequantize_tensor,
                              "QuantizedLayer": QuantizedLayer, "QConv": QConv, "QLinear": QLinear,
                              "sqrt_f32": sqrt_f32, "qlayernorm_tensor": qlayernorm_tensor, "qgelu_tensor": qgelu_tensor,
                              "qattention_tensor": qattention_tensor, "QLayerNorm": QLayerNorm}


# ---- lowerings --------------------------------------------------------------------------------------
def _quantize(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    qmin, qmax = QRANGE[a["dtype"]]
    return (f"quantize_tensor({args[0]}, {inverse_scale(a['scale'])!r}, {a['zero_point']}, {qmin}, {qmax}, "
            f"torch.{TORCH_DTYPE[a['dtype']]})")


def _dequantize(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"dequantize_tensor({args[0]}, {f32(node.attrs['scale'])!r}, {node.attrs['zero_point']})"


def _cast(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{args[0]}.to(torch.{TORCH_DTYPE[node.attrs['dtype']]})"


def _out_kwargs(node: Node) -> dict:
    a = node.attrs
    kw = {"bias": False} if not a["bias"] else {}
    kw.update(in_scale=a["in_scale"], in_zp=a["in_zp"])
    if a["out_dtype"] != "f32":
        kw.update(out_dtype=a["out_dtype"], out_scale=a["out_scale"], out_zp=a["out_zp"])
    if a["relu"]:
        kw["relu"] = True
    return kw


def _qconv_module(nd: int):
    def module(node: Node, ins: list[TensorType]) -> str:
        a = node.attrs
        pads = conv_padding(a, list(ins[0].shape[2:]), nd)
        flat = tuple(p for lo_hi in reversed(pads) for p in lo_hi)  # F.pad wants last dim first
        extra = {}
        for key in ("stride", "dilation"):
            if a[key] != 1:
                extra[key] = tuple_n(a[key], nd)
        if any(flat):
            extra["pad"] = flat
        if a["groups"] != 1:
            extra["groups"] = a["groups"]
        k = tuple_n(a["k"], nd)
        return (f"QConv({nd}, {ins[0].shape[1]}, {a['out']}, {lit(k if len(set(k)) > 1 else k[0])}"
                f"{keywords(**extra, **_out_kwargs(node))})")

    return module


def _qlinear_module(node: Node, ins: list[TensorType]) -> str:
    return f"QLinear({ins[0].shape[-1]}, {node.attrs['out']}{keywords(**_out_kwargs(node))})"


def _qlayernorm_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    c = ins[0].shape[-1]
    inv, e, _, _ = ln_constants(c, a["eps"], a["x_scale"], None, None, a["out_scale"])
    qmin, qmax = QRANGE[a["out_dtype"]]
    return (f"QLayerNorm({c}, {inv!r}, {LN_QMAX}, {e!r}, {a['out_scale']!r}, {a['out_zp']}, {qmin}, {qmax}, "
            f"torch.{TORCH_DTYPE[a['out_dtype']]})")


def _qgelu(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    qmin, qmax = QRANGE[a["out_dtype"]]
    return (f"qgelu_tensor({args[0]}, {INV_SQRT2!r}, {ERF_CLAMP!r}, {lit(tuple(f32(c) for c in ERF_COEFFS))}, "
            f"{inverse_scale(a['out_scale'])!r}, {a['out_zp']}, {qmin}, {qmax}, torch.{TORCH_DTYPE[a['out_dtype']]})")


def _qattention(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    heads, width = a["heads"], ins[0].shape[-1] // 3
    to_int = a["out_dtype"] != "f32"
    c, mult = attention_constants(a["in_scale"], width // heads, a["scale"], a["out_scale"] if to_int else None)
    qmin, qmax = QRANGE[a["out_dtype"]] if to_int else (0, 0)
    dtype = f"torch.{TORCH_DTYPE[a['out_dtype']]}" if to_int else "None"
    return (f"qattention_tensor({args[0]}, {heads}, {a['in_zp']}, {c!r}, {LOG2E!r}, {EXP2_FLOOR!r}, "
            f"{lit(tuple(f32(p) for p in EXP2_COEFFS))}, {float(PROB_MAX)!r}, {mult!r}, "
            f"{a['out_zp'] if to_int else None}, {qmin}, {qmax}, {dtype})")


_LAYER_HELPERS = ("QuantizedLayer",)

LOWERINGS.add("quantize", TorchLowering(_quantize, helpers=("quantize_tensor",)))
LOWERINGS.add("dequantize", TorchLowering(_dequantize, helpers=("dequantize_tensor",)))
LOWERINGS.add("cast", TorchLowering(_cast))
for _n in (1, 2, 3):
    LOWERINGS.add(f"qconv{_n}d", TorchLowering(module_call, _qconv_module(_n), helpers=(*_LAYER_HELPERS, "QConv")))
LOWERINGS.add("qlinear", TorchLowering(module_call, _qlinear_module, helpers=(*_LAYER_HELPERS, "QLinear")))
LOWERINGS.add("qlayernorm", TorchLowering(module_call, _qlayernorm_module,
                                          helpers=("sqrt_f32", "qlayernorm_tensor", "QLayerNorm")))
LOWERINGS.add("qgelu", TorchLowering(_qgelu, helpers=("qgelu_tensor",)))
LOWERINGS.add("qattention", TorchLowering(_qattention, helpers=("qattention_tensor",)))
