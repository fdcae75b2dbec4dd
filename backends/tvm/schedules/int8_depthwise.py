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

A float32 ``bias`` (``lower_quant`` passes one where every |bias| <= 2^24) is added to the f32
accumulator instead: both are exact integers in float32 and their sum is rounded once, as the int32
sum's conversion rounds it, so the value is the same with one instruction instead of three.

FuseOps appends the elementwise float ops that follow to the requantization (op_pattern
kOutEWiseFusable, as for the VNNI kernel).

On rows of at least ``NCHW_MIN_WIDTH`` output columns (MobileNet-V2's 112-, 56- and 28-wide layers) the
kernel is ``depthwise_int8_nchw`` instead, the same exact arithmetic without any layout change: the
input and output stay NCHW u8/i8, each channel's padded plane is converted to f32 once (borders
partitioned out, the interior one vectorized conversion), and the output rows are computed in whole
vectors of 8 f32 lanes along the row, the taps unrolled, the requantization after each row
(``schedule_nchw``, called from ``int8.try_schedule``).  The NCHW[16c] kernel's pack gathered a byte
from 16 channel planes per lane and its requantization scattered the output bytes back, which cost
more than the convolution itself.

Where the int8 activations are already blocked ([N, C/b, H, W, b] u8/i8, the layout layout.py keeps
between int8 convs), ``depthwise_int8(..., in_block=b, out_block=b)`` reads and writes that layout: the
pack converts 16 contiguous channels per pixel, the requantization stores 16 per pixel, at any row width.
MobileNet-V2's ten depthwise shapes alone, u8 in and out, one thread of the AMX Xeon, CPU time per call
(load 3): 0.70 ms in all blocked, against 3.41 for the NCHW[16c] kernel on NCHW u8 and 2.12 for the NCHW
kernel; 2.5-4x the faster of the two on every shape (32 x 112 x 112: 0.17 against 0.25 ms, 192 x 28 x 28:
0.047 against 0.18, 960 x 7 x 7: 0.015 against 0.052).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from convdsl.backends.tvm.schedules.kernels import KERNEL_ATTR, dwconv_nchwc, rounded

LANES = 16
MAX_TAPS = (1 << 24) // (255 * 128)  # taps whose int8 sum stays exact in float32


NCHW_MIN_WIDTH = 28  # output rows at least this wide: the NCHW kernel


def layout(channels: int, taps: int, out_width: int = 0) -> str | None:
    """Which kernel runs a depthwise conv: ``nchw`` (``depthwise_int8_nchw``, rows of at least
    ``NCHW_MIN_WIDTH`` output columns, any channel count), ``nchw16c`` (``depthwise_int8``, narrower rows
    over whole 16-channel vectors), None (neither: Relax's generic int32 conv).  Per core on Zen 3, u8 in
    and out (CPU time, load 3-4): MobileNet-V2's 32 x 112 x 112 0.64 -> 0.24 ms, 96 x 112 x 112 / 2 0.72 ->
    0.35, 144 x 56 x 56 0.74 -> 0.26; on 28-wide rows and narrower the per-channel plane costs more than the
    layout changes it saves (192 x 28 x 28 0.25 NCHW[16c] against 0.29, 960 x 7 x 7 0.12 against 0.18).
    On the AVX-512 Xeon, with a 28-wide row computed as one register tile (``ROW_TILE_MAX``), the NCHW
    kernel takes the 28-wide rows too: MobileNet-V2's three such layers in the int8 network, one thread,
    0.96 -> 0.62 ms (two profiles of 20 calls each, load 3; 192 x 28 x 28 0.34 -> 0.14 ms alone); 14-wide
    rows stay NCHW[16c] (384 x 14 x 14: 0.06 against 0.16)."""
    if taps > MAX_TAPS:
        return None
    if out_width >= NCHW_MIN_WIDTH:
        return "nchw"
    return "nchw16c" if channels % LANES == 0 else None


def fits(channels: int, taps: int, out_width: int = 0) -> bool:
    return layout(channels, taps, out_width) is not None


def pack_weight(w: np.ndarray) -> np.ndarray:
    """int8 [C, 1, KH, KW] -> f32 [C/16, KH, KW, 16]."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.astype(np.float32).reshape(c // LANES, LANES, kh, kw).transpose(0, 2, 3, 1))


def _biased(acc, bias: te.Tensor, ch):
    """f32(i32(acc) + bias[ch]): with a float32 ``bias`` (exact integers, |bias| <= 2^24) the f32 sum, which
    rounds the same exact sum once (module docstring)."""
    if bias.dtype == "float32":
        return acc + bias[ch]
    return (acc.astype("int32") + bias[ch]).astype("float32")


def depthwise_int8(x: te.Tensor, w: te.Tensor, bias: te.Tensor, mult: te.Tensor, *, pads, stride, dilation,
                   in_zp: int, out_dtype: str, out_zp: int = 0, lo: int = 0, hi: int = 0, relu: bool = False,
                   in_block: int | None = None, out_block: int | None = None) -> te.Tensor:
    """x [N, C, H, W] u8/i8, w from ``pack_weight``, bias int32 [C] (or float32: ``_biased``), mult f32 [C] ->
    [N, C, OH, OW] ``out_dtype``.

    ``in_block`` = ib: x is in the blocked layout [N, C/ib, H, W, ib] instead (layout.py's int8 activations
    between convs); with ib = 16 the pack is a contiguous conversion of 16 channels per pixel, not a gather
    from 16 channel planes.  ``out_block`` = ob: the result is [N, C/ob, OH, OW, ob], ob contiguous channels
    per pixel (with ob = 16 one vector store per output pixel, not a scatter to 16 planes)."""
    n = int(x.shape[0])
    h, wd = int(x.shape[2]), int(x.shape[3])
    c = int(x.shape[1]) * (in_block or 1)
    pt, pb, pl, pr = pads
    zp = tirx.const(float(in_zp), "float32")

    def read(i, ch, yy, zz):
        return x[i, ch // in_block, yy, zz, ch % in_block] if in_block else x[i, ch, yy, zz]

    def pack(i, cb, y, z, k):
        yy, zz = y - pt, z - pl
        inside = tirx.all(yy >= 0, yy < h, zz >= 0, zz < wd)
        v = read(i, cb * LANES + k, yy, zz).astype("float32") - zp
        return tirx.if_then_else(inside, v, tirx.const(0.0, "float32"))

    xf = te.compute((n, c // LANES, h + pt + pb, wd + pl + pr, LANES), pack, name="int8_dw_pack",
                    attrs={KERNEL_ATTR: "pad"})
    acc = dwconv_nchwc(xf, w, stride, (0, 0, 0, 0), dilation)
    _, _, oh, ow, _ = (int(d) for d in acc.shape)

    def requant(i, ch, y, z):
        v = _biased(acc[i, ch // LANES, y, z, ch % LANES], bias, ch) * mult[ch]
        if out_dtype == "float32":
            return tirx.max(v, tirx.const(0.0, "float32")) if relu else rounded(v)
        q = tirx.round(v) + tirx.const(float(out_zp), "float32")
        q = tirx.max(tirx.min(q, tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32"))
        return q.astype(out_dtype)

    if out_block:
        return te.compute((n, c // out_block, oh, ow, out_block),
                          lambda i, o, y, z, k: requant(i, o * out_block + k, y, z), name="int8_dw_requant")
    return te.compute((n, c, oh, ow), requant, name="int8_dw_requant")


ROW_ATTR = "convdsl.int8_dw"  # block annotation of the NCHW kernel: pack | conv
PADS_ATTR = "convdsl.pads"  # the pack block's (top, left) padding, for ``_partition_pack``
VECTOR = 8  # f32 lanes of an AVX2 register; the output rows are computed in whole vectors of them
ROW_TILE_MAX = 32  # output rows up to this wide (padded): the whole row is one register tile
# wider rows: up to this many tiles computed side by side, each tap one independent FMA per tile (one tile
# at a time chained the taps' FMAs on one register): MobileNet-V2 int8's 112- and 56-wide depthwise layers
# 1.30 -> 0.94 and 1.39 -> 0.97 ms on one thread in the network's profile (two pairs, load 3.7)
ROW_GROUP = 8


def pack_weight_planes(w: np.ndarray) -> np.ndarray:
    """int8 [C, 1, KH, KW] -> f32 [C, KH, KW] (one scalar per tap, broadcast along a row)."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.astype(np.float32).reshape(c, kh, kw))


def depthwise_int8_nchw(x: te.Tensor, w: te.Tensor, bias: te.Tensor, mult: te.Tensor, *, pads, stride, dilation,
                        in_zp: int, out_dtype: str, out_zp: int = 0, lo: int = 0, hi: int = 0,
                        relu: bool = False) -> te.Tensor:
    """x [N, C, H, W] u8/i8, w from ``pack_weight_planes``, bias int32 [C], mult f32 [C] -> [N, C, OH, OW]
    ``out_dtype``, all in NCHW, vectorized along the output row: neither the input nor the output changes
    layout (the NCHW[16c] kernel gathered each packed lane from 16 channel planes and scattered each output
    byte).  A channel's padded input plane is packed once, as f32 minus the zero point, its columns split
    by the stride's phase (``xf[.., y, p, j]`` = column ``j * sw + p``, so that a strided row reads
    contiguous vectors) and zero-extended so that every output row is computed in whole ``VECTOR``s
    (``acc`` has ``owp`` >= OW columns; the ones past OW are never stored)."""
    n, c, h, wd = (int(d) for d in x.shape)
    _, kh, kw = (int(d) for d in w.shape)
    pt, pb, pl, pr = pads
    (sh, sw), (dh, dw) = stride, dilation
    hp, wp = h + pt + pb, wd + pl + pr
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    owp = -(-ow // VECTOR) * VECTOR
    q = max(-(-wp // sw), owp + (kw - 1) * dw // sw)
    zp = tirx.const(float(in_zp), "float32")

    def pack(i, ch, y, p, j):
        yy, zz = y - pt, j * sw + p - pl
        inside = tirx.all(yy >= 0, yy < h, zz >= 0, zz < wd)
        v = x[i, ch, yy, zz].astype("float32") - zp
        return tirx.if_then_else(inside, v, tirx.const(0.0, "float32"))

    xf = te.compute((n, c, hp, sw, q), pack, name="int8_dw_pack", attrs={ROW_ATTR: "pack", PADS_ATTR: [pt, pl]})
    ry = te.reduce_axis((0, kh), "kh")
    rx = te.reduce_axis((0, kw), "kw")
    acc = te.compute(
        (n, c, oh, owp),
        lambda i, ch, y, z: te.sum(xf[i, ch, y * sh + ry * dh, tirx.floormod(rx * dw, sw),
                                      z + tirx.floordiv(rx * dw, sw)] * w[ch, ry, rx], axis=[ry, rx]),
        name="int8_dw_conv", attrs={ROW_ATTR: "conv"})

    def requant(i, ch, y, z):
        v = _biased(acc[i, ch, y, z], bias, ch) * mult[ch]
        if out_dtype == "float32":
            return tirx.max(v, tirx.const(0.0, "float32")) if relu else rounded(v)
        r = tirx.round(v) + tirx.const(float(out_zp), "float32")
        r = tirx.max(tirx.min(r, tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32"))
        return r.astype(out_dtype)

    return te.compute((n, c, oh, ow), requant, name="int8_dw_requant")


def schedule_nchw(sch, conv) -> None:
    """``depthwise_int8_nchw`` with the elementwise ops FuseOps appended: channels parallel; per channel its
    padded plane packed (the borders' tests partitioned out of the loops, so the interior is one vectorized
    conversion), then per output row its whole vectors in 16- (or 8-) column register tiles with the taps
    unrolled around them (one weight broadcast and one contiguous input vector per tap and register), the
    requantization and the appended ops after the row, vectorized."""
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    names = [sch.get(b).name_hint for b in blocks]
    i = names.index(sch.get(conv).name_hint)
    pack = [p for p in sch.get_producers(conv) if sch.get(p).annotations.get(ROW_ATTR) is not None]
    after = blocks[i + 1:]
    if not after or len(pack) != 1:
        raise ValueError("not the int8 NCHW depthwise kernel")
    for b in after[:-1]:
        sch.compute_inline(b)
    last = after[-1]
    loops = sch.get_loops(last)
    if len(loops) != 4:
        raise ValueError("the epilogue is not [N, C, OH, OW]")
    n, c, y, z = loops
    ow = int(sch.get(z).extent)
    nc = sch.fuse(n, c)
    sch.parallel(nc)
    sch.set_scope(conv, 0, "local")
    sch.compute_at(conv, y)
    *_, cz, ry, rx = sch.get_loops(conv)
    width = int(sch.get(cz).extent)  # a short row is one tile: its vectors are independent accumulators
    tile = width if width <= ROW_TILE_MAX else 2 * VECTOR if width % (2 * VECTOR) == 0 else VECTOR
    czo, czi = sch.split(cz, [None, tile])
    tiles = width // tile  # wider rows: up to ROW_GROUP tiles side by side, each tap's FMAs independent
    group = max(g for g in range(1, min(tiles, ROW_GROUP) + 1) if tiles % g == 0) if width > ROW_TILE_MAX else 1
    if group > 1:
        czoo, czoi = sch.split(czo, [None, group])
        sch.reorder(czoo, ry, rx, czoi, czi)
        sch.unroll(czoi)
    else:
        sch.reorder(czo, ry, rx, czi)
    sch.vectorize(czi)
    sch.unroll(rx)
    sch.unroll(ry)
    init = sch.decompose_reduction(conv, ry)
    sch.vectorize(sch.get_loops(init)[-1])
    if ow % VECTOR == 0:
        sch.vectorize(sch.split(z, [None, VECTOR])[1])
    elif ow <= 4 * VECTOR:
        sch.vectorize(z)
    sch.compute_at(pack[0], nc)
    _partition_pack(sch, pack[0])


def _partition_pack(sch, pack) -> None:
    """Split the pack's rows and columns into the padded borders and the interior (``loop_partition``),
    so that the interior's bounds tests fold away and it becomes one vectorized u8 -> f32 conversion.
    (TVM's LoopPartition pass, asked for by ``pragma_loop_partition_hint``, did this on some kernels and
    not on others of the same network.)  The padding comes from the block's ``PADS_ATTR``; with several
    stride phases they become the innermost loop, unrolled, so that a row's loads form one interleaved
    group of contiguous vectors.  Nothing changes where the loops are not (rows, [phases,] columns)."""
    h, wd = (int(d) for d in sch.get(pack).reads[0].source.shape[2:4])
    sw = int(sch.get(pack).writes[0].source.shape[3])
    pads = sch.get(pack).annotations.get(PADS_ATTR)
    loops = sch.get_loops(pack)[1:]
    if pads is None or len(loops) not in (2, 3):
        return
    pt, pl = (int(v) for v in pads)
    y, j = loops[0], loops[-1]
    if len(loops) == 3:
        sch.reorder(j, loops[1])
        sch.unroll(loops[1])
    cols = int(sch.get(j).extent)
    lo = -(-pl // sw)  # the columns j whose every phase p reads inside the row: j * sw + p - pl in [0, wd)
    hi = min(cols, (wd + pl) // sw)
    if hi - lo >= 8 and (lo > 0 or cols > hi):  # the last part's size inferred (None)
        sch.loop_partition(j, ([lo] if lo else []) + ([hi - lo, None] if cols > hi else [None]))
    rows = int(sch.get(y).extent)
    if pt > 0 and rows - pt > 1:  # top padding, interior rows, bottom padding (each part with the columns' parts)
        sch.loop_partition(y, [pt, h, None] if rows - pt > h else [pt, None])

__all__ = ["depthwise_int8", "depthwise_int8_nchw", "pack_weight", "pack_weight_planes", "schedule_nchw", "fits",
           "layout", "MAX_TAPS"]
