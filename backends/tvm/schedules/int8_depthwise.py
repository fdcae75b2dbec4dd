"""int8 depthwise convolution on CPUs: exact integer arithmetic carried in f32 lanes.

A depthwise conv has no sum over channels, so VNNI's 4-channel dot product does not apply; what
it needs is 16 channels per vector and the taps in registers, which is convdsl's f32 depthwise
kernel (``kernels.dwconv_nchwc``, scheduled by ``cpu.schedule_dwconv_nchwc``).  The int8 values
run through it exactly: a product (x - zp) * w is at most 255 * 128 in magnitude and a sum of up
to 512 of them stays below 2^24, where every float32 integer is exact, so the accumulator equals the
int32 one of the torch simulation bit for bit.  One kernel of three blocks:

    pack:     xf[n, c/16, h + pt, w + pl, c%16] = f32(x[n, c, h, w]) - in_zp        (0 where padded)
    conv:     acc = dwconv_nchwc(xf, f32(W))                                       (16 channels per vector)
    requant:  y[n, c, oh, ow] = requantize(i32(acc[n, c/16, oh, ow, c%16]) + bias[c])  (NCHW, u8/i8/f32)

FuseOps appends the elementwise float ops that follow to the requantization (op_pattern
kOutEWiseFusable, as for the VNNI kernel).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from convdsl.backends.tvm.schedules.kernels import KERNEL_ATTR, dwconv_nchwc

LANES = 16
MAX_TAPS = (1 << 24) // (255 * 128)  # taps whose int8 sum stays exact in float32


def fits(channels: int, taps: int) -> bool:
    return channels % LANES == 0 and taps <= MAX_TAPS


def pack_weight(w: np.ndarray) -> np.ndarray:
    """int8 [C, 1, KH, KW] -> f32 [C/16, KH, KW, 16]."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.astype(np.float32).reshape(c // LANES, LANES, kh, kw).transpose(0, 2, 3, 1))


def depthwise_int8(x: te.Tensor, w: te.Tensor, bias: te.Tensor, mult: te.Tensor, *, pads, stride, dilation,
                   in_zp: int, out_dtype: str, out_zp: int = 0, lo: int = 0, hi: int = 0, relu: bool = False) -> te.Tensor:
    """x [N, C, H, W] u8/i8, w from ``pack_weight``, bias int32 [C], mult f32 [C] -> [N, C, OH, OW] ``out_dtype``."""
    n, c, h, wd = (int(d) for d in x.shape)
    pt, pb, pl, pr = pads
    zp = tirx.const(float(in_zp), "float32")

    def pack(i, cb, y, z, k):
        yy, zz = y - pt, z - pl
        inside = tirx.all(yy >= 0, yy < h, zz >= 0, zz < wd)
        v = x[i, cb * LANES + k, yy, zz].astype("float32") - zp
        return tirx.if_then_else(inside, v, tirx.const(0.0, "float32"))

    xf = te.compute((n, c // LANES, h + pt + pb, wd + pl + pr, LANES), pack, name="int8_dw_pack",
                    attrs={KERNEL_ATTR: "pad"})
    acc = dwconv_nchwc(xf, w, stride, (0, 0, 0, 0), dilation)
    _, _, oh, ow, _ = (int(d) for d in acc.shape)

    from convdsl.backends.tvm.lower_quant import rounded

    def requant(i, ch, y, z):
        v = (acc[i, ch // LANES, y, z, ch % LANES].astype("int32") + bias[ch]).astype("float32") * mult[ch]
        if out_dtype == "float32":
            return tirx.max(v, tirx.const(0.0, "float32")) if relu else rounded(v)
        q = tirx.round(v) + tirx.const(float(out_zp), "float32")
        q = tirx.max(tirx.min(q, tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32"))
        return q.astype(out_dtype)

    return te.compute((n, c, oh, ow), requant, name="int8_dw_requant")


__all__ = ["depthwise_int8", "pack_weight", "fits", "MAX_TAPS"]
