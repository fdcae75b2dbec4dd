"""int8 convolutions and linears, and bf16 convolutions, on Intel AMX tiles (``tdpbusd``: u8 x s8 -> s32,
16 x 16 x 64 per instruction; ``tdpbf16ps``: bf16 pairs -> f32, 16 x 16 x 32: ``conv2d_nchwc_bf16``, the
same pack, micro-kernel and loop with 32 channels per 64-byte tile row, used by layout.py for
``--precision bf16``).

``lower_quant`` builds this kernel instead of the VNNI one for a qconv2d/qconv1d/qlinear (groups 1,
at least 8 input channels) when the target has ``+amx-int8`` (``has_amx_int8``; ``--no-amx``
keeps VNNI).  Layers with 8-32 input channels use tiles of narrower rows (8 / 16 / 32 bytes: ``row_bytes``),
so that the pack and the tiles carry no more zero channels than that.  Three blocks, as the VNNI kernel:

    pack     xp[n, icb, q, y, x, c64] = u8(x[n, 64 icb + c64, sh y + py - pt, sw x + px - pl])  (in_zp outside)
    conv     acc[n, ob, p, o16] = sum_{icb, tap, c64} xp[n, icb, ...] . W[ob, icb, tap, c64/4, o16, c64%4]
    requant  y[n, c, oh, ow] = requantize(acc[n, c / 16, oh * ww + ow, c % 16] + bias'[c])

*The input as planes of pixel rows.*  A tile row is one output pixel's 64 input channels, and AMX
loads a tile as 16 rows at one stride, so the input is packed as one plane per stride phase
(``q`` = (py, px): the input rows y with y = py mod sh, columns likewise; a stride-1 conv has one) and
each output pixel (oh, ow) is the virtual pixel p = oh * ww + ow of a plane ww pixels wide: for
every tap the 16 rows of a tile are 16 consecutive pixels of one plane, 64 bytes apart, starting at
the tap's offset (``Geometry.offsets``).  The pixels ow >= OW of each row (ww - OW of them: the
kernel's width - 1 for stride 1) are computed and never stored, like the rows beyond OH * ww up to
whole blocks of 32.

*The micro-kernel* (``LLVM_IR``, one LLVM function imported with TVM's ``pragma_import_llvm`` and
inlined): a 32 x 32 int32 block of ``acc`` (2 x 2 tiles: 32 pixels x 32 output channels) summed over
every input-channel block and tap, so the four accumulators never leave the tile registers; per
step 2 A tiles (pixels) and 2 B tiles (weights) are loaded for 4 ``tdpbusd``.  It uses LLVM's
``*.internal`` AMX intrinsics on ``x86_amx`` values: LLVM's AMX passes write the tile configuration
(``ldtilecfg``) themselves.  TVM runs the blocks in a parallel loop around it (``conv_extern``).

*Permission.*  Linux gives a process AMX state only after ``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``; without it the first tile instruction is SIGILL.  ``targets.request_amx``
asks once per process; the runtime does so before it runs a library built with AMX, and refuses
with a clear error if the kernel says no.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from convdsl.backends.tvm.schedules.kernels import LOWEST_F32, target_has

TILE_ROWS = 16  # pixels of one tile (rows of A and C)
TILE_K = 64  # input-channel bytes of one A row
OC = 16  # output channels of one C tile (int32 lanes of a row)
BLOCK_ROWS = 2 * TILE_ROWS  # pixels of the micro-kernel's block
BLOCK_OC = 2 * OC  # output channels of the micro-kernel's block
C_TILES = ("00", "01", "10", "11")  # the 2 x 2 block's C tiles: (pixel tile, channel tile)
MIN_CHANNELS = 8  # fewer input channels (an RGB stem): VNNI (tiles of 4-byte rows ran at 60% of the speed)
EXTERN = "convdsl_amx_dpbusd_2x2"
IMPORT_ATTR = "pragma_import_llvm"
ATTR = "convdsl.vnni"  # block annotation shared with lower_quant / int8.py: amx_pack | amx_requant
LANES_ATTR = "convdsl.lanes"  # on amx_pack: channels per pixel run of a blocked input

# C[2 x 2 tiles] = sum over steps s = (icb, tap) of A(icb, tap) . B(s): ``c`` the first C tile (the
# second pixel tile 1024 bytes on, the second channel block ``c_ob`` bytes on, rows 64 bytes apart),
# ``a`` the first input-channel block's plane, ``offs`` the taps' byte offsets in it, ``a_icb`` the
# distance between blocks, ``b`` the first weight tile (1024 bytes per step, the second channel block
# ``b_ob`` bytes on).
def tile_step(op: str, k: int = TILE_K) -> str:
    """IR of one reduction step of the 2 x 2 block: from ``%a0`` (the first A tile), ``%b``, ``%s`` (the
    step) and ``%b_ob``, load the 2 A and 2 B tiles (A: 16 rows of ``k`` bytes, the second A tile 16 rows
    on; B: k / 4 rows of 64 bytes, 16 k bytes per step) and update ``%c00``..``%c11`` into
    ``%n00``..``%n11`` with ``op``.  ``k`` < 64 (int8 layers with 8-32 input channels, ``row_bytes``):
    narrower tiles, fewer zero bytes read (a ``tdpbusd`` takes the same time for k 8 to 64)."""
    return f"""  %a1 = getelementptr i8, ptr %a0, i64 {TILE_ROWS * k}
  %bo = shl i64 %s, {(TILE_ROWS * k).bit_length() - 1}
  %b0 = getelementptr i8, ptr %b, i64 %bo
  %b1 = getelementptr i8, ptr %b0, i64 %b_ob
  %ta0 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 {k}, ptr %a0, i64 {k})
  %ta1 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 {k}, ptr %a1, i64 {k})
  %tb0 = call x86_amx @llvm.x86.tileloadd64.internal(i16 {k // 4}, i16 64, ptr %b0, i64 64)
  %tb1 = call x86_amx @llvm.x86.tileloadd64.internal(i16 {k // 4}, i16 64, ptr %b1, i64 64)
  %n00 = call x86_amx @llvm.x86.{op}.internal(i16 16, i16 64, i16 {k}, x86_amx %c00, x86_amx %ta0, x86_amx %tb0)
  %n01 = call x86_amx @llvm.x86.{op}.internal(i16 16, i16 64, i16 {k}, x86_amx %c01, x86_amx %ta0, x86_amx %tb1)
  %n10 = call x86_amx @llvm.x86.{op}.internal(i16 16, i16 64, i16 {k}, x86_amx %c10, x86_amx %ta1, x86_amx %tb0)
  %n11 = call x86_amx @llvm.x86.{op}.internal(i16 16, i16 64, i16 {k}, x86_amx %c11, x86_amx %ta1, x86_amx %tb1)
"""


def tile_zeros() -> str:
    """IR zeroing the 2 x 2 block's C tiles: ``%z00``..``%z11``."""
    return "".join(f"  %z{t} = call x86_amx @llvm.x86.tilezero.internal(i16 16, i16 64)\n" for t in C_TILES)


def tile_phis(init: str, loop: str) -> str:
    """IR of the C tiles' phis at a reduction loop's head: ``%c00``..``%c11`` from ``%z..`` (coming from block
    ``init``) or ``tile_step``'s ``%n..`` (from block ``loop``)."""
    return "".join(f"  %c{t} = phi x86_amx [%z{t}, %{init}], [%n{t}, %{loop}]\n" for t in C_TILES)


def tile_stores(c: str, c_ob: str) -> str:
    """IR storing ``tile_step``'s ``%n00``..``%n11`` to a blocked C buffer at ``c``: rows 64 bytes apart, the
    second pixel tile 1024 bytes on, the second channel block ``c_ob`` bytes on (pointers ``c``1, ``c``b,
    ``c``b1)."""
    ptrs = {"00": c, "10": f"{c}1", "01": f"{c}b", "11": f"{c}b1"}
    return (f"  {c}1 = getelementptr i8, ptr {c}, i64 1024\n"
            f"  {c}b = getelementptr i8, ptr {c}, i64 {c_ob}\n"
            f"  {c}b1 = getelementptr i8, ptr {c}b, i64 1024\n"
            + "".join(f"  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr {ptrs[t]}, i64 64, "
                      f"x86_amx %n{t})\n" for t in ("00", "10", "01", "11")))


def _micro_kernel(name: str, op: str, k: int = TILE_K) -> str:
    return f"""
define linkonce_odr i32 @{name}(ptr %c, i64 %c_ob, ptr %a, i64 %a_icb, ptr %offs, i64 %ntaps, i64 %steps,
                                  ptr %b, i64 %b_ob) alwaysinline {{
entry:
{tile_zeros()}  br label %loop
loop:
  %s = phi i64 [0, %entry], [%s1, %loop]
  %t = phi i64 [0, %entry], [%t2, %loop]
  %ai = phi ptr [%a, %entry], [%ai2, %loop]
{tile_phis("entry", "loop")}  %op = getelementptr i64, ptr %offs, i64 %t
  %o = load i64, ptr %op
  %a0 = getelementptr i8, ptr %ai, i64 %o
{tile_step(op, k)}  %s1 = add i64 %s, 1
  %t1 = add i64 %t, 1
  %wrap = icmp eq i64 %t1, %ntaps
  %t2 = select i1 %wrap, i64 0, i64 %t1
  %step = select i1 %wrap, i64 %a_icb, i64 0
  %ai2 = getelementptr i8, ptr %ai, i64 %step
  %done = icmp eq i64 %s1, %steps
  br i1 %done, label %exit, label %loop
exit:
{tile_stores("%c", "%c_ob")}  ret i32 0
}}
declare x86_amx @llvm.x86.tilezero.internal(i16, i16)
declare x86_amx @llvm.x86.tileloadd64.internal(i16, i16, ptr, i64)
declare x86_amx @llvm.x86.{op}.internal(i16, i16, i16, x86_amx, x86_amx, x86_amx)
declare void @llvm.x86.tilestored64.internal(i16, i16, ptr, i64, x86_amx)
"""


LLVM_IR = _micro_kernel(EXTERN, "tdpbusd")  # u8 x s8 -> s32
ROW_BYTES = (8, 16, 32, TILE_K)  # the int8 A tile row widths (``row_bytes``)


def int8_micro_kernel(k: int) -> tuple[str, str]:
    """(name, LLVM IR) of the u8 x s8 micro-kernel whose A tile rows are ``k`` bytes (one of ``ROW_BYTES``)."""
    return (EXTERN, LLVM_IR) if k == TILE_K else (f"{EXTERN}_k{k}", _micro_kernel(f"{EXTERN}_k{k}", "tdpbusd", k))
EXTERN_BF16 = "convdsl_amx_dpbf16ps_2x2"
LLVM_IR_BF16 = _micro_kernel(EXTERN_BF16, "tdpbf16ps")  # bf16 pairs x bf16 pairs -> f32


def has_amx_int8(target) -> bool:
    """Whether ``target`` (a TVM target) may execute ``tdpbusd``: +amx-tile and +amx-int8."""
    return target_has(target, "amx-tile", "amx-int8")


def fits(in_channels: int, groups: int = 1) -> bool:
    """Whether a quantized conv/linear with ``in_channels`` takes the AMX kernel (on an AMX target)."""
    return groups == 1 and in_channels >= MIN_CHANNELS


def row_bytes(in_channels: int) -> int:
    """Input channels (bytes) per A tile row of an int8 layer: 64, or for 8-32 input channels the fewest of
    ``ROW_BYTES`` that hold them (MobileNet-V2's 16 / 24 / 32-channel 1x1 convs: 16 / 32 / 32), so that the
    pack writes and the tiles read no more zero bytes than that."""
    return next(k for k in ROW_BYTES if k >= in_channels) if in_channels <= ROW_BYTES[-2] else TILE_K


def i64(v) -> tirx.PrimExpr:
    """An int64 TIR constant (the extern calls' byte strides and counts)."""
    return tirx.const(v, "int64")


def one_tap() -> te.Tensor:
    """The tap offsets of a GEMM on the conv micro-kernel: one tap, at offset 0."""
    return te.compute((1,), lambda _: tirx.const(0, "int64"), name="amx_taps")


# ---- geometry ----------------------------------------------------------------------------------------------
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Geometry:
    """Where each tap of each output pixel reads in the packed input (see the module docstring)."""

    n: int
    c: int  # input channels
    h: int
    w: int
    pads: tuple[int, int, int, int]  # top, bottom, left, right
    stride: tuple[int, int]
    dilation: tuple[int, int]
    kh: int
    kw: int
    block_channels: int = TILE_K  # input channels per tile row: 64 (u8), 32 (bf16), 8-32 (u8, ``row_bytes``)
    row_bytes: int = TILE_K  # bytes of one tile row (one packed pixel of a channel block)

    @property
    def oh(self) -> int:
        return (self.h + self.pads[0] + self.pads[1] - self.dilation[0] * (self.kh - 1) - 1) // self.stride[0] + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pads[2] + self.pads[3] - self.dilation[1] * (self.kw - 1) - 1) // self.stride[1] + 1

    @property
    def icb(self) -> int:
        return cdiv(self.c, self.block_channels)

    def rows_first(self, out_channels: int) -> bool:
        """Whether the conv's block loop takes rows before channel blocks: ``cpu.rows_first`` on its input
        and weights (the same element size).  Measured on a Granite Rapids Xeon, 2 threads, whole networks
        (one process, alternating, both build orders, quiet): MobileNet-V2 int8 0.96-0.97, bf16 0.92;
        ResNet-50 int8 0.98-0.99, bf16 0.93."""
        from convdsl.backends.tvm.schedules.cpu import rows_first

        return rows_first(self.c * self.h * self.w, out_channels * self.c * self.kh * self.kw)

    def _tap(self, ky: int, kx: int) -> tuple[int, int, int, int]:
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return (ky * dh) % sh, (kx * dw) % sw, (ky * dh) // sh, (kx * dw) // sw

    @property
    def phases(self) -> tuple[tuple[int, int], ...]:
        """The (row, column) stride phases some tap reads, in a fixed order."""
        used = {self._tap(ky, kx)[:2] for ky in range(self.kh) for kx in range(self.kw)}
        return tuple(sorted(used))

    @property
    def ww(self) -> int:
        """Pixels per plane row: the padded input width over the column stride (>= OW)."""
        return cdiv(self.w + self.pads[2] + self.pads[3], self.stride[1])

    @property
    def rows(self) -> int:
        """Virtual pixels computed per image: OH rows of ww, up to whole 32-pixel blocks."""
        return cdiv(self.oh * self.ww, BLOCK_ROWS) * BLOCK_ROWS

    @property
    def hh(self) -> int:
        """Rows per plane: the padded input's, and enough that the last block's reads stay inside."""
        reach = self.rows + max(int(o) for o in self.offsets(rows_only=True))
        return max(cdiv(self.h + self.pads[0] + self.pads[1], self.stride[0]), cdiv(reach, self.ww))

    @property
    def plane(self) -> int:
        """Bytes of one input-channel block of the packed input (every phase)."""
        return len(self.phases) * self.hh * self.ww * self.row_bytes

    def offsets(self, rows_only: bool = False) -> np.ndarray:
        """Byte offset of each tap (ky * KW + kx order, as ``pack_weight``) in a channel block; with
        ``rows_only``, its offset in pixels within its phase's plane."""
        phases = self.phases
        out = []
        for ky in range(self.kh):
            for kx in range(self.kw):
                py, px, dy, dx = self._tap(ky, kx)
                within = dy * self.ww + dx
                out.append(within if rows_only
                           else (phases.index((py, px)) * self.hh * self.ww + within) * self.row_bytes)
        return np.asarray(out, np.int64)


def pack_weight(w: np.ndarray, k: int = TILE_K) -> np.ndarray:
    """int8 [O, C, KH, KW] -> [O/16, C/k, KH*KW, k/4, 16, 4] (AMX's B tiles: k/4 quads of input channels x 16
    output channels x 4), zero-padded to whole blocks of 32 output and ``k`` (``row_bytes``) input channels."""
    o, c, kh, kw = w.shape
    ob, icb = cdiv(o, BLOCK_OC) * 2, cdiv(c, k)
    full = np.zeros((ob * OC, icb * k, kh, kw), np.int8)
    full[:o, :c] = w
    blocks = full.reshape(ob, OC, icb, k // 4, 4, kh * kw).transpose(0, 2, 5, 3, 1, 4)
    return np.ascontiguousarray(blocks)


# ---- computes -------------------------------------------------------------------------------------------------
def pack_input(read, geo: Geometry, in_zp: int, shift: bool, convert=None, dtype: str = "uint8",
               lanes: int | None = None) -> te.Tensor:
    """xp [N, C/k, phases, hh, ww, k] from ``read(n, c, h, w)``: u8 (i8 with ``shift``), ``in_zp`` outside the
    image; or, with ``convert`` (f32 -> bf16 bits), ``dtype`` uint16 with k = 32 and 0 outside.  ``lanes``: the
    input is blocked, ``lanes`` channels contiguous per pixel (``schedule`` copies runs of that many)."""
    phases = geo.phases
    (pt, _, pl, _), (sh, sw) = geo.pads, geo.stride
    k = geo.block_channels
    zp = tirx.const(in_zp, dtype)

    def pack(n, cb, q, y, x, c64):
        py = tirx.const(phases[0][0], "int32")
        px = tirx.const(phases[0][1], "int32")
        for i, (a, b) in enumerate(phases[1:], 1):  # the phase of plane q (a handful: unrolled selects)
            py = tirx.Select(q == i, tirx.const(a, "int32"), py)
            px = tirx.Select(q == i, tirx.const(b, "int32"), px)
        c, hh, wi = cb * k + c64, y * sh + py - pt, x * sw + px - pl
        inside = tirx.all(c < geo.c, hh >= 0, hh < geo.h, wi >= 0, wi < geo.w)
        v = read(n, tirx.min(c, geo.c - 1), tirx.max(tirx.min(hh, geo.h - 1), 0), tirx.max(tirx.min(wi, geo.w - 1), 0))
        v = (v.astype("int32") + 128).astype("uint8") if shift else v
        return tirx.if_then_else(inside, convert(v) if convert is not None else v, zp)

    shape = (geo.n, geo.icb, len(phases), geo.hh, geo.ww, k)
    attrs = {ATTR: "amx_pack", LANES_ATTR: lanes} if lanes else {ATTR: "amx_pack"}
    return te.compute(shape, pack, name="amx_pack", attrs=attrs)


def block_loop(images: int, pairs: int, blocks: int, ir: str, call, rows_first: bool = False) -> tirx.Stmt:
    """The parallel loop over (image, pair of 16-channel blocks, block of 32 rows) of a micro-kernel:
    ``call(image, pair, block)`` makes one call; ``ir`` is the LLVM IR the call needs imported.
    ``rows_first``: over (image, block of 32 rows, pair) instead, so each core takes whole rows
    (``Geometry.rows_first``)."""
    t = tirx.Var("block", "int32")
    image = t // (pairs * blocks)
    pair, block = (t % pairs, t // pairs % blocks) if rows_first else (t // blocks % pairs, t % blocks)
    loop = tirx.For(t, 0, images * pairs * blocks, tirx.ForKind.PARALLEL, tirx.Evaluate(call(image, pair, block)))
    return tirx.AttrStmt(tirx.const(0, "int32"), IMPORT_ATTR, tvm.ir.StringImm(ir), loop)


def conv_extern(xp: te.Tensor, w: te.Tensor, offsets: te.Tensor, geo: Geometry, bf16: bool = False) -> te.Tensor:
    """acc [N, O/16, rows, 16] int32 (f32 with ``bf16``) = the micro-kernel on every 32 x 32 block, blocks in
    parallel."""
    extern, ir, dtype = (EXTERN_BF16, LLVM_IR_BF16, "float32") if bf16 else (*int8_micro_kernel(geo.row_bytes), "int32")
    size = 2 if bf16 else 1  # bytes per element of the packed input and weights (offsets below are in bytes)
    n_ob, icb, taps = (int(d) for d in w.shape[:3])
    pairs, blocks, rows = n_ob // 2, geo.rows // BLOCK_ROWS, geo.rows
    steps = icb * taps
    b_step = TILE_ROWS * geo.row_bytes  # bytes of one B tile (row_bytes / 4 rows of 64 bytes; 1024 at 64)

    def body(ins, outs):
        x, wt, offs = ins
        acc, = outs
        return block_loop(geo.n, pairs, blocks, ir, lambda n, j, pb: tirx.call_extern(
            "int32", extern,
            acc.access_ptr("w", offset=((n * n_ob + 2 * j) * rows + pb * BLOCK_ROWS) * OC), i64(rows * OC * 4),
            x.access_ptr("r", offset=(n * (icb * geo.plane) + pb * (BLOCK_ROWS * geo.row_bytes)) // size),
            i64(geo.plane),
            offs.access_ptr("r"), i64(taps), i64(steps),
            wt.access_ptr("r", offset=2 * j * (steps * b_step) // size), i64(steps * b_step)),
                          rows_first=geo.rows_first(2 * pairs * OC))

    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in ((xp, "xp"), (w, "w"), (offsets, "offsets"))]
    out = tirx.decl_buffer((geo.n, n_ob, rows, OC), dtype, "acc")
    return te.extern((geo.n, n_ob, rows, OC), [xp, w, offsets], body, name="amx_conv", dtype=dtype,
                     in_buffers=buffers, out_buffers=[out])


# ---- the requantization inside the block loop -------------------------------------------------------------------
# One 32 x 32 block: the micro-kernel stores its four C tiles to a 4 KiB stack buffer (L1) instead of ``acc``
# in memory, and the same call requantizes the block's pixels into their places in the blocked output
# ([N, O/16, OH, OW, 16]: one 16-byte store per pixel and channel block), skipping the virtual pixels
# ow >= OW and the rows beyond OH.  The arithmetic is ``lower_quant.vnni_conv2d``'s requant, op for op:
# f32(acc + bias) * mult, rounded half to even, + zero point, min(hi), max(lo), to u8 / i8 (the clamp applied
# before the rounding, to the bounds less the zero point: the same values, fewer instructions).  With a
# ``Epilogue`` (``amx_epilogue.py``): the conv's float output max(f32(acc + bias) * mult, lowest) (``rounded``)
# plus the dequantized shortcut max((f32(u) - zero) * scale, floor), ReLU, * inv_scale, rounded, + zero
# point, clamped: the float ops FuseOps' epilogue would apply, in its order.  Without a shortcut (``clip``:
# MobileNet's conv -> ReLU6 -> quantize): f32(acc + bias) * mult * inv_scale, rounded, + zero point, clamped to
# the quantized range narrowed by the clip (``clip_bounds``).
@dataclass(frozen=True)
class Epilogue:
    """The epilogue of a residual block's last conv: the shortcut ``dtype`` (u8 / i8 tensor) dequantized as
    max((f32(u) - zero) * scale, floor) (float32: read as it is), added, ReLU, quantized as
    clamp(round(y * inv_scale) + out_zp, lo, hi) to ``out_dtype``.  With ``clip`` = (a, b) and ``dtype`` None:
    no shortcut, y = clip(the conv's float output, a, b) (ReLU6), quantized the same way, the clip folded into
    ``lo`` / ``hi`` (``clip_bounds``)."""

    dtype: str | None
    zero: float
    scale: float
    floor: float
    inv_scale: float
    out_zp: float
    lo: float
    hi: float
    out_dtype: str
    clip: tuple[float, float] | None = None


def clip_bounds(a: float, b: float, inv_scale: float, zp: float, lo: float, hi: float) -> tuple[float, float]:
    """(lo', hi') with clamp(round(y * inv_scale) + zp, lo', hi') = clamp(round(clip(y, a, b) * inv_scale) + zp,
    lo, hi) for every float32 y (``inv_scale`` > 0; each step in float32 as the kernels): the product, the rounding
    and the zero point's addition are monotone, so clip(y, a, b) becomes a clamp to the ends' quantized values,
    which narrows [lo, hi]; where the two do not meet, every y gives the one value the original gives."""
    f32 = np.float32
    qa, qb = (float(np.rint(f32(v) * f32(inv_scale))) + zp for v in (a, b))
    low, high = max(lo, qa), min(hi, qb)
    if low > high:  # the clip's range is quantized outside [lo, hi]: a constant, lo below, hi above
        low = high = lo if qb < lo else hi
    return low, high


def _splat(name: str, value: str) -> str:
    return f"""  %{name}1 = insertelement <16 x float> poison, float {value}, i64 0
  %{name} = shufflevector <16 x float> %{name}1, <16 x float> poison, <16 x i32> zeroinitializer
"""


def llvm_f32(v: float) -> str:
    """An LLVM float constant (the double with the float's value, in hex: exact)."""
    import struct

    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", float(np.float32(v))))[0]


def _block_entry(acc: str, micro: str, row_bytes: int = TILE_K) -> str:
    """IR of a block-loop kernel's entry (``_requant_kernel``, ``_bf16_epilogue_kernel``): whether the pair has a
    second channel block (``%two``: its output pointer differs), the block's first pixel (``%p0``: its A
    pointer's distance from the image's plane / ``row_bytes``), and the micro-kernel ``micro`` into a 4 KiB stack buffer
    (``%acc``, elements of type ``acc``)."""
    return f"""  %two = icmp ne ptr %y0, %y1
  %ai = ptrtoint ptr %a to i64
  %xi = ptrtoint ptr %x to i64
  %ab = sub i64 %ai, %xi
  %p0 = lshr i64 %ab, {row_bytes.bit_length() - 1}
  %acc = alloca [{BLOCK_ROWS * BLOCK_OC} x {acc}], align 64
  %k = call i32 @{micro}(ptr %acc, i64 {BLOCK_ROWS * OC * 4}, ptr %a, i64 %a_icb, ptr %offs, i64 %ntaps, i64 %steps,
                          ptr %b, i64 %b_ob)
"""


def _channel_pair(name: str, elem: str) -> str:
    """IR loading the pair's per-channel vectors of argument ``%name`` (16 x ``elem`` each) as ``%name0`` and
    ``%name1`` (the second block's, or the first's again when the pair has one block: ``%two``)."""
    return f"""  %{name}0 = load <16 x {elem}>, ptr %{name}, align 4
  %{name}_p = getelementptr {elem}, ptr %{name}, i64 {OC}
  %{name}_p1 = select i1 %two, ptr %{name}_p, ptr %{name}
  %{name}1 = load <16 x {elem}>, ptr %{name}_p1, align 4
"""


def _pixel_loop(store0: str, store1: str) -> str:
    """IR of the loop over a block's 32 virtual pixels (row ``%i``, column ``%j`` of a plane ``%ww`` wide, from
    ``%p0``): for each pixel inside the output (i < OH, j < OW), ``store0`` for the first channel block and, if
    ``%two``, ``store1`` for the second (both may use ``%r``, the pixel's row in the block, and ``%pix``, its
    index in the output plane); then the function's end."""
    return f"""  %i0 = udiv i64 %p0, %ww
  %iw = mul i64 %i0, %ww
  %j0 = sub i64 %p0, %iw
  br label %row
row:
  %r = phi i64 [0, %entry], [%r1, %next]
  %i = phi i64 [%i0, %entry], [%i2, %next]
  %j = phi i64 [%j0, %entry], [%j2, %next]
  %inh = icmp ult i64 %i, %oh
  %inw = icmp ult i64 %j, %ow
  %in = and i1 %inh, %inw
  br i1 %in, label %store0, label %next
store0:
  %pi = mul i64 %i, %ow
  %pix = add i64 %pi, %j
{store0}
  br i1 %two, label %store1, label %next
store1:
{store1}
  br label %next
next:
  %r1 = add i64 %r, 1
  %j1 = add i64 %j, 1
  %wrap = icmp eq i64 %j1, %ww
  %j2 = select i1 %wrap, i64 0, i64 %j1
  %di = zext i1 %wrap to i64
  %i2 = add i64 %i, %di
  %done = icmp eq i64 %r1, {BLOCK_ROWS}
  br i1 %done, label %exit, label %row
exit:
  ret i32 0
}}
"""


def _requant_kernel(name: str, micro: str, shortcut: str | None = None, k: int = TILE_K,
                    micro_name: str = EXTERN) -> str:
    """LLVM IR of ``name``: the micro-kernel ``micro_name`` (IR ``micro``, A rows of ``k`` bytes)'s block
    requantized (``shortcut``: the residual epilogue with a u8 / i8 shortcut of that dtype, its constants passed
    as floats; "clip": no shortcut, the conv's output clipped to [a, b] and quantized)."""
    def pixel(cb: int) -> str:
        acc = f"""  %v{cb} = getelementptr i32, ptr %acc, i64 {cb * BLOCK_ROWS * OC}
  %a{cb} = getelementptr <16 x i32>, ptr %v{cb}, i64 %r
  %x{cb} = load <16 x i32>, ptr %a{cb}, align 64
  %s{cb} = add <16 x i32> %x{cb}, %bias{cb}
  %f{cb} = sitofp <16 x i32> %s{cb} to <16 x float>
  %m{cb} = fmul <16 x float> %f{cb}, %mult{cb}
"""
        if shortcut is None:
            scaled = f"%m{cb}"
        elif shortcut == "clip":  # the activation's clip folded into lo / hi (``Epilogue``): the quantize's scale
            acc += f"""  %n{cb} = fmul <16 x float> %m{cb}, %inv
"""
            scaled = f"%n{cb}"
        else:
            acc += f"""  %c{cb} = call <16 x float> @llvm.maxnum.v16f32(<16 x float> %m{cb}, <16 x float> %lowest)
"""
            if shortcut == "float32":  # read as it is
                acc += f"""  %ru{cb} = getelementptr <16 x float>, ptr %u{cb}, i64 %pix
  %rm{cb} = load <16 x float>, ptr %ru{cb}, align 4
"""
            else:
                acc += f"""  %ru{cb} = getelementptr <16 x i8>, ptr %u{cb}, i64 %pix
  %rb{cb} = load <16 x i8>, ptr %ru{cb}, align 1
  %rf{cb} = {"sitofp" if shortcut == "int8" else "uitofp"} <16 x i8> %rb{cb} to <16 x float>
  %rz{cb} = fsub <16 x float> %rf{cb}, %zero
  %rs{cb} = fmul <16 x float> %rz{cb}, %scale
  %rm{cb} = call <16 x float> @llvm.maxnum.v16f32(<16 x float> %rs{cb}, <16 x float> %floor)
"""
            acc += f"""  %sum{cb} = fadd <16 x float> %c{cb}, %rm{cb}
  %relu{cb} = call <16 x float> @llvm.maxnum.v16f32(<16 x float> %sum{cb}, <16 x float> zeroinitializer)
  %n{cb} = fmul <16 x float> %relu{cb}, %inv
"""
            scaled = f"%n{cb}"
        # clamp(roundeven(v) + zp, lo, hi) as roundeven(clamp(v, lo - zp, hi - zp)) + zp: roundeven is monotone
        # and keeps integers, so the two are equal for integer lo, hi, zp (and v + zp's float rounding beyond 2^24
        # only moves values the clamp catches); the rounding and the conversion are one vcvtps2dq {rn-sae}, the
        # zero point an integer add, and the clamped value fits the byte (trunc)
        return acc + f"""  %h{cb} = call <16 x float> @llvm.minnum.v16f32(<16 x float> {scaled}, <16 x float> %hiv)
  %l{cb} = call <16 x float> @llvm.maxnum.v16f32(<16 x float> %h{cb}, <16 x float> %lov)
  %e{cb} = call <16 x i32> @llvm.x86.avx512.mask.cvtps2dq.512(<16 x float> %l{cb}, <16 x i32> zeroinitializer, i16 -1, i32 8)
  %z{cb} = add <16 x i32> %e{cb}, %zpv
  %q{cb} = trunc <16 x i32> %z{cb} to <16 x i8>
  %d{cb} = getelementptr <16 x i8>, ptr %y{cb}, i64 %pix
  store <16 x i8> %q{cb}, ptr %d{cb}, align 1"""

    if shortcut == "clip":
        extra = ", float %inv_s"
        consts = _splat("inv", "%inv_s")
    else:
        extra = ", ptr %u0, ptr %u1, float %zero_s, float %scale_s, float %floor_s, float %inv_s" if shortcut else ""
        consts = (_splat("lowest", llvm_f32(LOWEST_F32)) + _splat("zero", "%zero_s") + _splat("scale", "%scale_s")
                  + _splat("floor", "%floor_s") + _splat("inv", "%inv_s")) if shortcut else ""
    return f"""{micro}
define linkonce_odr i32 @{name}(ptr %y0, ptr %y1, ptr %bias, ptr %mult, ptr %x, i64 %ww, i64 %oh, i64 %ow,
                                  float %zp, float %lo, float %hi, ptr %a, i64 %a_icb, ptr %offs, i64 %ntaps,
                                  i64 %steps, ptr %b, i64 %b_ob{extra}) {{
entry:
{_block_entry("i32", micro_name, k)}{_channel_pair("bias", "i32")}{_channel_pair("mult", "float")}  %zpi = fptosi float %zp to i32
  %zpv1 = insertelement <16 x i32> poison, i32 %zpi, i64 0
  %zpv = shufflevector <16 x i32> %zpv1, <16 x i32> poison, <16 x i32> zeroinitializer
  %lo_zp = fsub float %lo, %zp
  %hi_zp = fsub float %hi, %zp
{_splat("lov", "%lo_zp")}{_splat("hiv", "%hi_zp")}{consts}{_pixel_loop(pixel(0), pixel(1))}declare <16 x i32> @llvm.x86.avx512.mask.cvtps2dq.512(<16 x float>, <16 x i32>, i16, i32)
declare <16 x float> @llvm.minnum.v16f32(<16 x float>, <16 x float>)
declare <16 x float> @llvm.maxnum.v16f32(<16 x float>, <16 x float>)
"""


EXTERN_REQUANT = {"uint8": "convdsl_amx_dpbusd_2x2_requant_u8", "int8": "convdsl_amx_dpbusd_2x2_requant_i8"}


def _requant_extern(out_dtype: str, shortcut: str | None, k: int = TILE_K) -> tuple[str, str]:
    """(function name, LLVM IR) of the block-loop requantization to ``out_dtype`` (with a ``shortcut`` dtype:
    the residual epilogue; "clip": the clip epilogue) for A rows of ``k`` bytes."""
    suffix = {None: "", "uint8": "_res_u8", "int8": "_res_i8", "float32": "_res_f32", "clip": "_clip"}[shortcut]
    name = EXTERN_REQUANT[out_dtype] + suffix + ("" if k == TILE_K else f"_k{k}")
    micro_name, micro = int8_micro_kernel(k)
    return name, _requant_kernel(name, micro, shortcut, k, micro_name)


def conv_requant_extern(xp: te.Tensor, w: te.Tensor, offsets: te.Tensor, bias: te.Tensor, mult: te.Tensor,
                        geo: Geometry, out_channels: int, out_dtype: str, out_zp: int, lo: int, hi: int,
                        shortcut: te.Tensor | None = None, epilogue: Epilogue | None = None) -> te.Tensor:
    """y [N, O/16, OH, OW, 16] u8 / i8 = requantize(the micro-kernel's block + bias): ``conv_extern`` and
    ``lower_quant.vnni_conv2d``'s requantization in one pass, each block requantized while it is in L1 (no
    int32 ``acc`` in memory).  ``bias`` int32 [O] and ``mult`` f32 [O].  With ``epilogue``: that epilogue, the
    shortcut read from ``shortcut`` (the output's shape, u8 / i8), ``out_dtype`` / ``out_zp`` / ``lo`` / ``hi``
    the epilogue's."""
    n_ob, icb, taps = (int(d) for d in w.shape[:3])
    pairs, blocks, ocb = n_ob // 2, geo.rows // BLOCK_ROWS, out_channels // OC
    steps = icb * taps
    shape = (geo.n, ocb, geo.oh, geo.ow, OC)
    plane = geo.oh * geo.ow * OC
    mode = None if epilogue is None else "clip" if epilogue.clip is not None else epilogue.dtype
    name, ir = _requant_extern(out_dtype, mode, geo.row_bytes)
    b_step = TILE_ROWS * geo.row_bytes  # bytes of one B tile

    def body(ins, outs):
        x, wt, offs, b, m, *res = ins
        y, = outs
        f32 = lambda v: tirx.const(float(v), "float32")  # noqa: E731

        def blocks_of(buf, mode, n, j):  # the first and second channel block of pair j (the first again if none)
            return (buf.access_ptr(mode, offset=(n * ocb + 2 * j) * plane),
                    buf.access_ptr(mode, offset=(n * ocb + tirx.min(2 * j + 1, ocb - 1)) * plane))

        def call(n, j, pb):
            more = []
            if mode == "clip":
                more = [f32(epilogue.inv_scale)]
            elif epilogue is not None:
                more = [*blocks_of(res[0], "r", n, j), f32(epilogue.zero), f32(epilogue.scale), f32(epilogue.floor),
                        f32(epilogue.inv_scale)]
            return tirx.call_extern(
                "int32", name, *blocks_of(y, "w", n, j),
                b.access_ptr("r", offset=2 * j * OC), m.access_ptr("r", offset=2 * j * OC),
                x.access_ptr("r", offset=n * (icb * geo.plane)),
                i64(geo.ww), i64(geo.oh), i64(geo.ow), f32(out_zp), f32(lo), f32(hi),
                x.access_ptr("r", offset=n * (icb * geo.plane) + pb * (BLOCK_ROWS * geo.row_bytes)), i64(geo.plane),
                offs.access_ptr("r"), i64(taps), i64(steps),
                wt.access_ptr("r", offset=2 * j * (steps * b_step)), i64(steps * b_step), *more)

        # what differs per call goes as pointers (TVM's passes narrow or widen computed integer arguments): the
        # second channel block's output is the first's when there is none (O/16 odd), and the block's first
        # pixel is its A pointer's distance from its image's plane / row_bytes
        return block_loop(geo.n, pairs, blocks, ir, call,
                          rows_first=geo.rows_first(2 * pairs * OC))

    ins = [xp, w, offsets, bias, mult] + ([shortcut] if mode not in (None, "clip") else [])
    names = ("xp", "w", "offsets", "bias", "mult", "shortcut")
    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in zip(ins, names)]
    out = tirx.decl_buffer(shape, out_dtype, "y")
    return te.extern(shape, ins, body, name="amx_conv_requant", dtype=out_dtype, in_buffers=buffers,
                     out_buffers=[out], attrs={ATTR: "amx_conv_requant"})


# ---- bf16 with its epilogue in the block loop ------------------------------------------------------------------
def _bf16_epilogue_kernel(name: str, bits: bool) -> str:
    """LLVM IR of ``conv_bf16_epilogue_extern``'s call: the bf16 micro-kernel's 32 x 32 f32 block (a stack buffer,
    in L1), then per pixel and 16-channel block y = clip(acc * scale + shift, lo, hi), stored as f32 or, with
    ``bits``, as bf16 bits (round to nearest even: ``bf16.to_bf16_bits``'s integer rule)."""
    ty, align = ("i16", 2) if bits else ("float", 4)
    def one(cb: int) -> str:
        out = f"""  %q{cb} = bitcast <16 x float> %l{cb} to <16 x i32>
  %u{cb} = lshr <16 x i32> %q{cb}, <i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16>
  %o{cb} = and <16 x i32> %u{cb}, <i32 1, i32 1, i32 1, i32 1, i32 1, i32 1, i32 1, i32 1, i32 1, i32 1, i32 1, i32 1, i32 1, i32 1, i32 1, i32 1>
  %e{cb} = add <16 x i32> %q{cb}, <i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767, i32 32767>
  %t{cb} = add <16 x i32> %e{cb}, %o{cb}
  %k{cb} = lshr <16 x i32> %t{cb}, <i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16, i32 16>
  %w{cb} = trunc <16 x i32> %k{cb} to <16 x i16>
""" if bits else ""
        value = f"%w{cb}" if bits else f"%l{cb}"
        return f"""  %v{cb} = getelementptr float, ptr %acc, i64 {cb * BLOCK_ROWS * OC}
  %a{cb} = getelementptr <16 x float>, ptr %v{cb}, i64 %r
  %x{cb} = load <16 x float>, ptr %a{cb}, align 64
  %m{cb} = fmul <16 x float> %x{cb}, %scale{cb}
  %s{cb} = fadd <16 x float> %m{cb}, %shift{cb}
  %h{cb} = call <16 x float> @llvm.minnum.v16f32(<16 x float> %s{cb}, <16 x float> %hiv)
  %l{cb} = call <16 x float> @llvm.maxnum.v16f32(<16 x float> %h{cb}, <16 x float> %lov)
{out}  %d{cb} = getelementptr <16 x {ty}>, ptr %y{cb}, i64 %pix
  store <16 x {ty}> {value}, ptr %d{cb}, align {align}"""
    return f"""{LLVM_IR_BF16}
define linkonce_odr i32 @{name}(ptr %y0, ptr %y1, ptr %scale, ptr %shift, ptr %x, i64 %ww, i64 %oh, i64 %ow,
                                  float %lo, float %hi, ptr %a, i64 %a_icb, ptr %offs, i64 %ntaps,
                                  i64 %steps, ptr %b, i64 %b_ob) {{
entry:
{_block_entry("float", EXTERN_BF16)}{_channel_pair("scale", "float")}{_channel_pair("shift", "float")}  %lo1 = insertelement <16 x float> poison, float %lo, i64 0
  %lov = shufflevector <16 x float> %lo1, <16 x float> poison, <16 x i32> zeroinitializer
  %hi1 = insertelement <16 x float> poison, float %hi, i64 0
  %hiv = shufflevector <16 x float> %hi1, <16 x float> poison, <16 x i32> zeroinitializer
{_pixel_loop(one(0), one(1))}declare <16 x float> @llvm.minnum.v16f32(<16 x float>, <16 x float>)
declare <16 x float> @llvm.maxnum.v16f32(<16 x float>, <16 x float>)
"""


EXTERN_BF16_EPILOGUE = {"float32": "convdsl_amx_dpbf16ps_2x2_epilogue_f32", "uint16": "convdsl_amx_dpbf16ps_2x2_epilogue_bits"}
LLVM_IR_BF16_EPILOGUE = {dtype: _bf16_epilogue_kernel(name, dtype == "uint16")
                         for dtype, name in EXTERN_BF16_EPILOGUE.items()}


def conv2d_nchwc_bf16_epilogue(data: te.Tensor, kernel: te.Tensor, offsets: te.Tensor, scale: te.Tensor,
                               shift: te.Tensor, geo: Geometry, out_blocks: int, out_dtype: str, lo: float,
                               hi: float) -> te.Tensor:
    """``conv2d_nchwc_bf16`` with its epilogue y = clip(conv * scale + shift, lo, hi) (a batchnorm or bias, relu /
    relu6; layout.py's ``_amx_bf16_epilogue``) applied to each 32 x 32 block inside the block loop, while it is in
    L1: no f32 ``acc`` in memory.  ``scale`` / ``shift`` f32 [O/16 * 16]; y [N, O/16, OH, OW, 16] f32, or bf16 bits
    (``out_dtype`` uint16) for a reader that rounds to bf16 anyway."""
    from convdsl.backends.tvm.schedules.bf16 import to_bf16_bits

    ib = int(data.shape[4])
    read = lambda n, c, h, w: data[n, c // ib, h, w, c % ib]  # noqa: E731
    convert = None if data.dtype == "uint16" else to_bf16_bits
    xp = pack_input(read, geo, 0, False, convert=convert, dtype="uint16", lanes=ib)
    n_ob, icb, taps = (int(d) for d in kernel.shape[:3])
    pairs, blocks, ocb = n_ob // 2, geo.rows // BLOCK_ROWS, out_blocks
    steps = icb * taps
    shape = (geo.n, ocb, geo.oh, geo.ow, OC)
    plane = geo.oh * geo.ow * OC

    def body(ins, outs):
        x, wt, offs, sc, sh = ins
        y, = outs
        f32 = lambda v: tirx.const(float(v), "float32")  # noqa: E731
        # as conv_requant_extern: per-call values as pointers; x's offsets in bf16 elements (2 bytes)
        return block_loop(geo.n, pairs, blocks, LLVM_IR_BF16_EPILOGUE[out_dtype], lambda n, j, pb: tirx.call_extern(
            "int32", EXTERN_BF16_EPILOGUE[out_dtype],
            y.access_ptr("w", offset=(n * ocb + 2 * j) * plane),
            y.access_ptr("w", offset=(n * ocb + tirx.min(2 * j + 1, ocb - 1)) * plane),
            sc.access_ptr("r", offset=2 * j * OC), sh.access_ptr("r", offset=2 * j * OC),
            x.access_ptr("r", offset=n * (icb * geo.plane) // 2),
            i64(geo.ww), i64(geo.oh), i64(geo.ow), f32(lo), f32(hi),
            x.access_ptr("r", offset=(n * (icb * geo.plane) + pb * (BLOCK_ROWS * TILE_K)) // 2), i64(geo.plane),
            offs.access_ptr("r"), i64(taps), i64(steps),
            wt.access_ptr("r", offset=2 * j * (steps * 1024) // 2), i64(steps * 1024)),
                          rows_first=geo.rows_first(2 * pairs * OC))

    ins = (xp, kernel, offsets, scale, shift)
    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in zip(ins, ("xp", "w", "offsets", "scale", "shift"))]
    out = tirx.decl_buffer(shape, out_dtype, "y")
    return te.extern(shape, list(ins), body, name="amx_conv_requant", dtype=out_dtype, in_buffers=buffers,
                     out_buffers=[out], attrs={ATTR: "amx_conv_requant"})


# ---- bf16 (``tdpbf16ps``: 16 pixels x 16 output channels x 32 input channels, f32 accumulation) -------------
BF16_CHANNELS = TILE_K // 2  # bf16 input channels of one tile row


def has_amx_bf16(target) -> bool:
    """Whether ``target`` may execute ``tdpbf16ps``: +amx-tile and +amx-bf16."""
    return target_has(target, "amx-tile", "amx-bf16")


def pack_weight_bf16(w: np.ndarray) -> np.ndarray:
    """f32 [O, C, KH, KW] -> bf16 bits [O/16, C/32, KH*KW, 16, 16, 2] (B tiles: 16 pairs of input channels x 16
    output channels x 2), rounded to nearest even, zero-padded to 32 output and 32 input channels."""
    from convdsl.backends.tvm.schedules.bf16 import round_to_bf16

    o, c, kh, kw = w.shape
    ob, icb = cdiv(o, BLOCK_OC) * 2, cdiv(c, BF16_CHANNELS)
    full = np.zeros((ob * OC, icb * BF16_CHANNELS, kh, kw), np.float32)
    full[:o, :c] = w
    blocks = full.reshape(ob, OC, icb, BF16_CHANNELS // 2, 2, kh * kw).transpose(0, 2, 5, 3, 1, 4)
    return round_to_bf16(np.ascontiguousarray(blocks))


def conv2d_nchwc_bf16(data: te.Tensor, kernel: te.Tensor, offsets: te.Tensor, geo: Geometry,
                      out_blocks: int, out_block: int = OC) -> te.Tensor:
    """data [N, C/ib, H, W, ib] f32 or bf16 bits (uint16; layout.py's blocked layout), kernel ``pack_weight_bf16``'s -> [N, O/ob, OH, OW,
    ob] f32 (ob = ``out_block``, 16 or a divisor of it: 24 channels are 3 blocks of 8): the input rounded to bf16
    by the pack, products summed in f32 on AMX tiles."""
    from convdsl.backends.tvm.schedules.bf16 import to_bf16_bits

    ib = int(data.shape[4])
    read = lambda n, c, h, w: data[n, c // ib, h, w, c % ib]  # noqa: E731
    convert = None if data.dtype == "uint16" else to_bf16_bits  # uint16: bf16 bits already (layout.py's to_bf16)
    xp = pack_input(read, geo, 0, False, convert=convert, dtype="uint16", lanes=ib)
    acc = conv_extern(xp, kernel, offsets, geo, bf16=True)
    if out_block == OC:
        return te.compute((geo.n, out_blocks, geo.oh, geo.ow, OC),
                          lambda n, ob, y, x, o: acc[n, ob, y * geo.ww + x, o], name="amx_out",
                          attrs={ATTR: "amx_requant"})
    per = OC // out_block  # output blocks per C tile row
    return te.compute((geo.n, out_blocks, geo.oh, geo.ow, out_block),
                      lambda n, ob, y, x, o: acc[n, ob // per, y * geo.ww + x, ob % per * out_block + o],
                      name="amx_out", attrs={ATTR: "amx_requant"})


def dense_bf16(x: te.Tensor, kernel: te.Tensor, offsets: te.Tensor, geo: Geometry, out_channels: int) -> te.Tensor:
    """x [..., K] f32 @ W -> [..., N] f32, W ``pack_weight_bf16`` of [N, K, 1, 1]: the rows are the pixels of a 1x1
    conv (``geo``: 1 x rows, K channels)."""
    from convdsl.backends.tvm.schedules.bf16 import to_bf16_bits

    lead = [int(d) for d in x.shape[:-1]]

    def unflat(j):  # flat row -> x's leading indices
        idx = []
        for d in reversed(lead):
            idx.append(j % d if d > 1 else tirx.const(0, "int32"))
            j = j // d
        return list(reversed(idx))

    def flat(idx):
        j = 0
        for i, d in zip(idx, lead):
            j = j * d + i if d > 1 else j
        return j

    xp = pack_input(lambda n, c, h, w: x[(*unflat(w), c)], geo, 0, False, convert=to_bf16_bits, dtype="uint16")
    acc = conv_extern(xp, kernel, offsets, geo, bf16=True)
    return te.compute((*lead, out_channels), lambda *i: acc[0, i[-1] // OC, flat(i[:-1]), i[-1] % OC],
                      name="amx_out", attrs={ATTR: "amx_requant"})


# ---- schedule ----------------------------------------------------------------------------------------------
def schedule(sch: s_tir.Schedule, blocks: dict[str, str], inline_consumers, parallel_outer) -> None:
    """The pack and the requantization (with the elementwise ops FuseOps appended, inlined into it)
    in parallel loops, the requantization's inner loop vectorized; the conv block is already a
    parallel loop of micro-kernel calls (``conv_requant_extern``'s, with the requantization, the whole
    kernel after the pack)."""
    tail = _schedule_requant(sch, sch.get_sblock(blocks["amx_requant"]), inline_consumers) \
        if "amx_requant" in blocks else []
    if "amx_pack" in blocks:
        pack = sch.get_sblock(blocks["amx_pack"])
        loops = sch.get_loops(pack)
        sch.parallel(sch.fuse(*loops[:4]))
        lanes = sch.get(pack).annotations.get(LANES_ATTR)
        k = int(sch.get(loops[-1]).extent)
        if lanes is not None and k % int(lanes) == 0 and int(lanes) < k:  # a blocked input: one vector per run
            sch.vectorize(sch.split(loops[-1], [None, int(lanes)])[1])
        else:
            sch.vectorize(loops[-1])
    for block in tail:
        parallel_outer(sch, block, 2)


REQUANT_MIN_COLUMN_BLOCKS = 8  # fewer 16-channel blocks: a qlinear requantizes rows in parallel (cores kept busy)
REQUANT_HEAVY_EPILOGUE = 64  # TIR nodes in the requantization's value from which the columns go in parallel


def _expression_size(sch: s_tir.Schedule, block, cap: int) -> int:
    """TIR expression nodes in the value ``block`` stores (the requantization and what was inlined into it,
    shared subexpressions counted where they appear), counted up to ``cap``."""
    count, todo = 0, [sch.get(block).body]
    while todo and count < cap:
        node = todo.pop()
        count += 1
        for field in ("value", "a", "b", "condition", "true_value", "false_value"):  # stores, casts, arithmetic,
            if hasattr(node, field):                                                # min / max, selects
                todo.append(getattr(node, field))
        todo.extend(getattr(node, "args", ()))  # calls (round, fabs, ...)
    return count


def _schedule_requant(sch: s_tir.Schedule, requant, inline_consumers) -> list:
    """``conv_extern``'s requantization; returns the consumers that could not be inlined into it."""
    tail = inline_consumers(sch, requant)
    loops = sch.get_loops(requant)
    extents = [int(sch.get(loop).extent) for loop in loops]
    if len(loops) == 4 and extents[1] % OC == 0:
        # NCHW: (n, 16 channels, oh) in parallel, then each pixel's 16 channels as one vector: a
        # contiguous read of acc (a row of a C tile), 16 stores one plane apart
        n, c, oh, ow = loops
        cb, c16 = sch.split(c, [None, OC])
        sch.reorder(n, cb, oh, ow, c16)
        sch.parallel(sch.fuse(n, cb, oh))
        sch.vectorize(c16)
    elif len(loops) == 4:  # channels not in whole blocks: (n, c, oh) in parallel, the row vectorized
        sch.parallel(sch.fuse(*loops[:3]))
        vectorize_by(sch, loops[3], OC)
    elif len(loops) == 5:  # blocked [N, O/ob, OH, OW, ob]: (n, ob, oh) in parallel, each pixel's ob channels
        sch.parallel(sch.fuse(*loops[:3]))  # one vector: a contiguous read of acc and a contiguous store
        vectorize_by(sch, loops[4], min(OC, extents[4]))
    elif (len(loops) in (2, 3) and extents[-1] % OC == 0 and extents[-1] // OC >= REQUANT_MIN_COLUMN_BLOCKS
          and _expression_size(sch, requant, REQUANT_HEAVY_EPILOGUE) >= REQUANT_HEAVY_EPILOGUE):
        # qlinear's [rows, O] / [N, L, O] with a costly epilogue inlined (qgelu: an erf per value): the 16-channel
        # blocks in parallel, the same split of the columns as the block loop's (column pair, row block), so a
        # core requantizes the C tiles it wrote (in its L2); then the rows, each block's 16 channels one vector:
        # acc read as it lies (a column block's rows are contiguous).  Rows in parallel read every column block,
        # half of them from the other core, 14 KB apart (ViT-S fc1 + qgelu: 279-289 -> 198-202 us, same output).
        # A light epilogue keeps the rows: the next kernel reads the output by rows, and the exchange between
        # the cores only moves there (every qlinear so, GFNet int8, its qgelus behind a reshape: 0.50 -> 0.53 ms)
        *rows, c = loops
        cb, c16 = sch.split(c, [None, OC])
        sch.reorder(cb, *rows, c16)
        sch.parallel(cb)
        sch.vectorize(c16)
    else:  # qlinear's [..., O] (few columns or not in blocks of 16): rows in parallel, channels vectorized
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
        vectorize_by(sch, loops[-1], OC)
    return tail


def vectorize_by(sch: s_tir.Schedule, loop, lanes: int) -> None:
    extent = sch.get(loop).extent
    if isinstance(extent, tirx.IntImm) and extent.value % lanes == 0:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


__all__ = ["has_amx_int8", "has_amx_bf16", "fits", "row_bytes", "int8_micro_kernel", "clip_bounds", "Geometry",
           "pack_weight", "pack_weight_bf16", "pack_input",
           "conv_extern", "conv2d_nchwc_bf16", "dense_bf16", "schedule", "block_loop", "cdiv", "tile_step",
           "tile_zeros", "tile_phis", "tile_stores",
           "vectorize_by", "llvm_f32", "i64", "one_tap", "LLVM_IR", "LLVM_IR_BF16"]
