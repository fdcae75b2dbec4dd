"""int8 convolutions and linears, and bf16 convolutions, on Intel AMX tiles (``tdpbusd``: u8 x s8 -> s32,
16 x 16 x 64 per instruction; ``tdpbf16ps``: bf16 pairs -> f32, 16 x 16 x 32: ``conv2d_nchwc_bf16``, the
same pack, micro-kernel and loop with 32 channels per 64-byte tile row, used by layout.py for
``--precision bf16``).

``lower_quant`` builds this kernel instead of the VNNI one for a qconv2d/qconv1d/qlinear (groups 1,
more than 32 input channels) when the target has ``+amx-int8`` (``has_amx_int8``; ``--no-amx``
keeps VNNI).  Three blocks, as the VNNI kernel:

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
MIN_CHANNELS = 33  # fewer input channels: VNNI (the 64-channel blocks would be more than half zeros)
EXTERN = "convdsl_amx_dpbusd_2x2"
IMPORT_ATTR = "pragma_import_llvm"
ATTR = "convdsl.vnni"  # block annotation shared with lower_quant / int8.py: amx_pack | amx_requant
LANES_ATTR = "convdsl.lanes"  # on amx_pack: channels per pixel run of a blocked input

# C[2 x 2 tiles] = sum over steps s = (icb, tap) of A(icb, tap) . B(s): ``c`` the first C tile (the
# second pixel tile 1024 bytes on, the second channel block ``c_ob`` bytes on, rows 64 bytes apart),
# ``a`` the first input-channel block's plane, ``offs`` the taps' byte offsets in it, ``a_icb`` the
# distance between blocks, ``b`` the first weight tile (1024 bytes per step, the second channel block
# ``b_ob`` bytes on).
def _tile_step(op: str) -> str:
    """IR of one reduction step of the 2 x 2 block: from ``%a0`` (the first A tile), ``%b``, ``%s`` (the
    step) and ``%b_ob``, load the 2 A and 2 B tiles (the second A tile 1024 bytes on, B tiles 1024 bytes
    per step) and update ``%c00``..``%c11`` into ``%n00``..``%n11`` with ``op``."""
    return f"""  %a1 = getelementptr i8, ptr %a0, i64 1024
  %bo = shl i64 %s, 10
  %b0 = getelementptr i8, ptr %b, i64 %bo
  %b1 = getelementptr i8, ptr %b0, i64 %b_ob
  %ta0 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %a0, i64 64)
  %ta1 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %a1, i64 64)
  %tb0 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %b0, i64 64)
  %tb1 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %b1, i64 64)
  %n00 = call x86_amx @llvm.x86.{op}.internal(i16 16, i16 64, i16 64, x86_amx %c00, x86_amx %ta0, x86_amx %tb0)
  %n01 = call x86_amx @llvm.x86.{op}.internal(i16 16, i16 64, i16 64, x86_amx %c01, x86_amx %ta0, x86_amx %tb1)
  %n10 = call x86_amx @llvm.x86.{op}.internal(i16 16, i16 64, i16 64, x86_amx %c10, x86_amx %ta1, x86_amx %tb0)
  %n11 = call x86_amx @llvm.x86.{op}.internal(i16 16, i16 64, i16 64, x86_amx %c11, x86_amx %ta1, x86_amx %tb1)
"""


def _micro_kernel(name: str, op: str) -> str:
    return f"""
define linkonce_odr i32 @{name}(ptr %c, i64 %c_ob, ptr %a, i64 %a_icb, ptr %offs, i64 %ntaps, i64 %steps,
                                  ptr %b, i64 %b_ob) alwaysinline {{
entry:
  %z00 = call x86_amx @llvm.x86.tilezero.internal(i16 16, i16 64)
  %z01 = call x86_amx @llvm.x86.tilezero.internal(i16 16, i16 64)
  %z10 = call x86_amx @llvm.x86.tilezero.internal(i16 16, i16 64)
  %z11 = call x86_amx @llvm.x86.tilezero.internal(i16 16, i16 64)
  br label %loop
loop:
  %s = phi i64 [0, %entry], [%s1, %loop]
  %t = phi i64 [0, %entry], [%t2, %loop]
  %ai = phi ptr [%a, %entry], [%ai2, %loop]
  %c00 = phi x86_amx [%z00, %entry], [%n00, %loop]
  %c01 = phi x86_amx [%z01, %entry], [%n01, %loop]
  %c10 = phi x86_amx [%z10, %entry], [%n10, %loop]
  %c11 = phi x86_amx [%z11, %entry], [%n11, %loop]
  %op = getelementptr i64, ptr %offs, i64 %t
  %o = load i64, ptr %op
  %a0 = getelementptr i8, ptr %ai, i64 %o
{_tile_step(op)}  %s1 = add i64 %s, 1
  %t1 = add i64 %t, 1
  %wrap = icmp eq i64 %t1, %ntaps
  %t2 = select i1 %wrap, i64 0, i64 %t1
  %step = select i1 %wrap, i64 %a_icb, i64 0
  %ai2 = getelementptr i8, ptr %ai, i64 %step
  %done = icmp eq i64 %s1, %steps
  br i1 %done, label %exit, label %loop
exit:
  %c1 = getelementptr i8, ptr %c, i64 1024
  %cb = getelementptr i8, ptr %c, i64 %c_ob
  %cb1 = getelementptr i8, ptr %cb, i64 1024
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %c, i64 64, x86_amx %n00)
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %c1, i64 64, x86_amx %n10)
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %cb, i64 64, x86_amx %n01)
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %cb1, i64 64, x86_amx %n11)
  ret i32 0
}}
declare x86_amx @llvm.x86.tilezero.internal(i16, i16)
declare x86_amx @llvm.x86.tileloadd64.internal(i16, i16, ptr, i64)
declare x86_amx @llvm.x86.{op}.internal(i16, i16, i16, x86_amx, x86_amx, x86_amx)
declare void @llvm.x86.tilestored64.internal(i16, i16, ptr, i64, x86_amx)
"""


LLVM_IR = _micro_kernel(EXTERN, "tdpbusd")  # u8 x s8 -> s32
EXTERN_BF16 = "convdsl_amx_dpbf16ps_2x2"
LLVM_IR_BF16 = _micro_kernel(EXTERN_BF16, "tdpbf16ps")  # bf16 pairs x bf16 pairs -> f32


def has_amx_int8(target) -> bool:
    """Whether ``target`` (a TVM target) may execute ``tdpbusd``: +amx-tile and +amx-int8."""
    return target_has(target, "amx-tile", "amx-int8")


def fits(in_channels: int, groups: int = 1) -> bool:
    """Whether a quantized conv/linear with ``in_channels`` takes the AMX kernel (on an AMX target)."""
    return groups == 1 and in_channels >= MIN_CHANNELS


# ---- geometry ----------------------------------------------------------------------------------------------
def _cdiv(a: int, b: int) -> int:
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
    block_channels: int = TILE_K  # input channels per 64-byte tile row: 64 (u8), 32 (bf16)

    @property
    def oh(self) -> int:
        return (self.h + self.pads[0] + self.pads[1] - self.dilation[0] * (self.kh - 1) - 1) // self.stride[0] + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pads[2] + self.pads[3] - self.dilation[1] * (self.kw - 1) - 1) // self.stride[1] + 1

    @property
    def icb(self) -> int:
        return _cdiv(self.c, self.block_channels)

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
        return _cdiv(self.w + self.pads[2] + self.pads[3], self.stride[1])

    @property
    def rows(self) -> int:
        """Virtual pixels computed per image: OH rows of ww, up to whole 32-pixel blocks."""
        return _cdiv(self.oh * self.ww, BLOCK_ROWS) * BLOCK_ROWS

    @property
    def hh(self) -> int:
        """Rows per plane: the padded input's, and enough that the last block's reads stay inside."""
        reach = self.rows + max(int(o) for o in self.offsets(rows_only=True))
        return max(_cdiv(self.h + self.pads[0] + self.pads[1], self.stride[0]), _cdiv(reach, self.ww))

    @property
    def plane(self) -> int:
        """Bytes of one input-channel block of the packed input (every phase)."""
        return len(self.phases) * self.hh * self.ww * TILE_K

    def offsets(self, rows_only: bool = False) -> np.ndarray:
        """Byte offset of each tap (ky * KW + kx order, as ``pack_weight``) in a channel block; with
        ``rows_only``, its offset in pixels within its phase's plane."""
        phases = self.phases
        out = []
        for ky in range(self.kh):
            for kx in range(self.kw):
                py, px, dy, dx = self._tap(ky, kx)
                within = dy * self.ww + dx
                out.append(within if rows_only else (phases.index((py, px)) * self.hh * self.ww + within) * TILE_K)
        return np.asarray(out, np.int64)


def pack_weight(w: np.ndarray) -> np.ndarray:
    """int8 [O, C, KH, KW] -> [O/16, C/64, KH*KW, 16, 16, 4] (AMX's B tiles: 16 quads of input channels x 16
    output channels x 4), zero-padded to whole blocks of 32 output and 64 input channels."""
    o, c, kh, kw = w.shape
    ob, icb = _cdiv(o, BLOCK_OC) * 2, _cdiv(c, TILE_K)
    full = np.zeros((ob * OC, icb * TILE_K, kh, kw), np.int8)
    full[:o, :c] = w
    blocks = full.reshape(ob, OC, icb, TILE_K // 4, 4, kh * kw).transpose(0, 2, 5, 3, 1, 4)
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


def _block_loop(images: int, pairs: int, blocks: int, ir: str, call) -> tirx.Stmt:
    """The parallel loop over (image, pair of 16-channel blocks, block of 32 rows) of a micro-kernel:
    ``call(image, pair, block)`` makes one call; ``ir`` is the LLVM IR the call needs imported."""
    t = tirx.Var("block", "int32")
    loop = tirx.For(t, 0, images * pairs * blocks, tirx.ForKind.PARALLEL,
                    tirx.Evaluate(call(t // (pairs * blocks), t // blocks % pairs, t % blocks)))
    return tirx.AttrStmt(tirx.const(0, "int32"), IMPORT_ATTR, tvm.ir.StringImm(ir), loop)


def conv_extern(xp: te.Tensor, w: te.Tensor, offsets: te.Tensor, geo: Geometry, bf16: bool = False) -> te.Tensor:
    """acc [N, O/16, rows, 16] int32 (f32 with ``bf16``) = the micro-kernel on every 32 x 32 block, blocks in
    parallel."""
    extern, ir, dtype = (EXTERN_BF16, LLVM_IR_BF16, "float32") if bf16 else (EXTERN, LLVM_IR, "int32")
    size = 2 if bf16 else 1  # bytes per element of the packed input and weights (offsets below are in bytes)
    n_ob, icb, taps = (int(d) for d in w.shape[:3])
    pairs, blocks, rows = n_ob // 2, geo.rows // BLOCK_ROWS, geo.rows
    steps = icb * taps

    def body(ins, outs):
        x, wt, offs = ins
        acc, = outs
        i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
        return _block_loop(geo.n, pairs, blocks, ir, lambda n, j, pb: tirx.call_extern(
            "int32", extern,
            acc.access_ptr("w", offset=((n * n_ob + 2 * j) * rows + pb * BLOCK_ROWS) * OC), i64(rows * OC * 4),
            x.access_ptr("r", offset=(n * (icb * geo.plane) + pb * (BLOCK_ROWS * TILE_K)) // size), i64(geo.plane),
            offs.access_ptr("r"), i64(taps), i64(steps),
            wt.access_ptr("r", offset=2 * j * (steps * 1024) // size), i64(steps * 1024)))

    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in ((xp, "xp"), (w, "w"), (offsets, "offsets"))]
    out = tirx.decl_buffer((geo.n, n_ob, rows, OC), dtype, "acc")
    return te.extern((geo.n, n_ob, rows, OC), [xp, w, offsets], body, name="amx_conv", dtype=dtype,
                     in_buffers=buffers, out_buffers=[out])


# ---- the requantization inside the block loop -------------------------------------------------------------------
# One 32 x 32 block: the micro-kernel stores its four C tiles to a 4 KiB stack buffer (L1) instead of ``acc``
# in memory, and the same call requantizes the block's pixels into their places in the blocked output
# ([N, O/16, OH, OW, 16]: one 16-byte store per pixel and channel block), skipping the virtual pixels
# ow >= OW and the rows beyond OH.  The arithmetic is ``lower_quant.vnni_conv2d``'s requant, op for op:
# f32(acc + bias) * mult, rounded half to even, + zero point, min(hi), max(lo), to u8 / i8.  With a
# ``Epilogue`` (``amx_epilogue.py``): the conv's float output max(f32(acc + bias) * mult, lowest) (``rounded``)
# plus the dequantized shortcut max((f32(u) - zero) * scale, floor), ReLU, * inv_scale, rounded, + zero
# point, clamped: the float ops FuseOps' epilogue would apply, in its order.
@dataclass(frozen=True)
class Epilogue:
    """The epilogue of a residual block's last conv: the shortcut ``dtype`` (u8 / i8 tensor) dequantized as
    max((f32(u) - zero) * scale, floor) (float32: read as it is), added, ReLU, quantized as
    clamp(round(y * inv_scale) + out_zp, lo, hi) to ``out_dtype``."""

    dtype: str
    zero: float
    scale: float
    floor: float
    inv_scale: float
    out_zp: float
    lo: float
    hi: float
    out_dtype: str


def _splat(name: str, value: str) -> str:
    return f"""  %{name}1 = insertelement <16 x float> poison, float {value}, i64 0
  %{name} = shufflevector <16 x float> %{name}1, <16 x float> poison, <16 x i32> zeroinitializer
"""


def _f32(v: float) -> str:
    """An LLVM float constant (the double with the float's value, in hex: exact)."""
    import struct

    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", float(np.float32(v))))[0]


def _block_entry(acc: str, micro: str) -> str:
    """IR of a block-loop kernel's entry (``_requant_kernel``, ``_bf16_epilogue_kernel``): whether the pair has a
    second channel block (``%two``: its output pointer differs), the block's first pixel (``%p0``: its A
    pointer's distance from the image's plane / 64), and the micro-kernel ``micro`` into a 4 KiB stack buffer
    (``%acc``, elements of type ``acc``)."""
    return f"""  %two = icmp ne ptr %y0, %y1
  %ai = ptrtoint ptr %a to i64
  %xi = ptrtoint ptr %x to i64
  %ab = sub i64 %ai, %xi
  %p0 = lshr i64 %ab, 6
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


def _requant_kernel(name: str, micro: str, signed: bool, shortcut: str | None = None) -> str:
    """LLVM IR of ``name``: the micro-kernel's block requantized (``shortcut``: the residual epilogue with a
    u8 / i8 shortcut of that dtype, its constants passed as floats)."""
    to_int = "fptosi" if signed else "fptoui"

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
        return acc + f"""  %e{cb} = call <16 x float> @llvm.roundeven.v16f32(<16 x float> {scaled})
  %z{cb} = fadd <16 x float> %e{cb}, %zpv
  %h{cb} = call <16 x float> @llvm.minnum.v16f32(<16 x float> %z{cb}, <16 x float> %hiv)
  %l{cb} = call <16 x float> @llvm.maxnum.v16f32(<16 x float> %h{cb}, <16 x float> %lov)
  %q{cb} = {to_int} <16 x float> %l{cb} to <16 x i8>
  %d{cb} = getelementptr <16 x i8>, ptr %y{cb}, i64 %pix
  store <16 x i8> %q{cb}, ptr %d{cb}, align 1"""

    extra = ", ptr %u0, ptr %u1, float %zero_s, float %scale_s, float %floor_s, float %inv_s" if shortcut else ""
    consts = (_splat("lowest", _f32(LOWEST_F32)) + _splat("zero", "%zero_s") + _splat("scale", "%scale_s")
              + _splat("floor", "%floor_s") + _splat("inv", "%inv_s")) if shortcut else ""
    return f"""{micro}
define linkonce_odr i32 @{name}(ptr %y0, ptr %y1, ptr %bias, ptr %mult, ptr %x, i64 %ww, i64 %oh, i64 %ow,
                                  float %zp, float %lo, float %hi, ptr %a, i64 %a_icb, ptr %offs, i64 %ntaps,
                                  i64 %steps, ptr %b, i64 %b_ob{extra}) {{
entry:
{_block_entry("i32", EXTERN)}{_channel_pair("bias", "i32")}{_channel_pair("mult", "float")}{_splat("zpv", "%zp")}{_splat("lov", "%lo")}{_splat("hiv", "%hi")}{consts}{_pixel_loop(pixel(0), pixel(1))}declare <16 x float> @llvm.roundeven.v16f32(<16 x float>)
declare <16 x float> @llvm.minnum.v16f32(<16 x float>, <16 x float>)
declare <16 x float> @llvm.maxnum.v16f32(<16 x float>, <16 x float>)
"""


EXTERN_REQUANT = {"uint8": "convdsl_amx_dpbusd_2x2_requant_u8", "int8": "convdsl_amx_dpbusd_2x2_requant_i8"}


def _requant_extern(out_dtype: str, shortcut: str | None) -> tuple[str, str]:
    """(function name, LLVM IR) of the block-loop requantization to ``out_dtype`` (with a ``shortcut`` dtype:
    the residual epilogue)."""
    suffix = {None: "", "uint8": "_res_u8", "int8": "_res_i8", "float32": "_res_f32"}[shortcut]
    name = EXTERN_REQUANT[out_dtype] + suffix
    return name, _requant_kernel(name, LLVM_IR, out_dtype == "int8", shortcut)


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
    name, ir = _requant_extern(out_dtype, epilogue.dtype if epilogue is not None else None)

    def body(ins, outs):
        x, wt, offs, b, m, *res = ins
        y, = outs
        i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
        f32 = lambda v: tirx.const(float(v), "float32")  # noqa: E731

        def blocks_of(buf, mode, n, j):  # the first and second channel block of pair j (the first again if none)
            return (buf.access_ptr(mode, offset=(n * ocb + 2 * j) * plane),
                    buf.access_ptr(mode, offset=(n * ocb + tirx.min(2 * j + 1, ocb - 1)) * plane))

        def call(n, j, pb):
            more = []
            if epilogue is not None:
                more = [*blocks_of(res[0], "r", n, j), f32(epilogue.zero), f32(epilogue.scale), f32(epilogue.floor),
                        f32(epilogue.inv_scale)]
            return tirx.call_extern(
                "int32", name, *blocks_of(y, "w", n, j),
                b.access_ptr("r", offset=2 * j * OC), m.access_ptr("r", offset=2 * j * OC),
                x.access_ptr("r", offset=n * (icb * geo.plane)),
                i64(geo.ww), i64(geo.oh), i64(geo.ow), f32(out_zp), f32(lo), f32(hi),
                x.access_ptr("r", offset=n * (icb * geo.plane) + pb * (BLOCK_ROWS * TILE_K)), i64(geo.plane),
                offs.access_ptr("r"), i64(taps), i64(steps),
                wt.access_ptr("r", offset=2 * j * (steps * 1024)), i64(steps * 1024), *more)

        # what differs per call goes as pointers (TVM's passes narrow or widen computed integer arguments): the
        # second channel block's output is the first's when there is none (O/16 odd), and the block's first
        # pixel is its A pointer's distance from its image's plane / 64
        return _block_loop(geo.n, pairs, blocks, ir, call)

    ins = [xp, w, offsets, bias, mult] + ([shortcut] if epilogue is not None else [])
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
        i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
        f32 = lambda v: tirx.const(float(v), "float32")  # noqa: E731
        # as conv_requant_extern: per-call values as pointers; x's offsets in bf16 elements (2 bytes)
        return _block_loop(geo.n, pairs, blocks, LLVM_IR_BF16_EPILOGUE[out_dtype], lambda n, j, pb: tirx.call_extern(
            "int32", EXTERN_BF16_EPILOGUE[out_dtype],
            y.access_ptr("w", offset=(n * ocb + 2 * j) * plane),
            y.access_ptr("w", offset=(n * ocb + tirx.min(2 * j + 1, ocb - 1)) * plane),
            sc.access_ptr("r", offset=2 * j * OC), sh.access_ptr("r", offset=2 * j * OC),
            x.access_ptr("r", offset=n * (icb * geo.plane) // 2),
            i64(geo.ww), i64(geo.oh), i64(geo.ow), f32(lo), f32(hi),
            x.access_ptr("r", offset=(n * (icb * geo.plane) + pb * (BLOCK_ROWS * TILE_K)) // 2), i64(geo.plane),
            offs.access_ptr("r"), i64(taps), i64(steps),
            wt.access_ptr("r", offset=2 * j * (steps * 1024) // 2), i64(steps * 1024)))

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
    ob, icb = _cdiv(o, BLOCK_OC) * 2, _cdiv(c, BF16_CHANNELS)
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


# ---- batched bf16 matmul (attention's Q K^T and P V) ------------------------------------------------------------
def batch_matmul_bf16(a_read, b_read, batch: int, m: int, k: int, n: int, b_along_k: bool = False,
                      a_packed: te.Tensor | None = None, b_packed: te.Tensor | None = None) -> te.Tensor:
    """acc [batch, n/16, rows, 16] f32: acc[b, j // 16, i, j % 16] = sum_kk A_b[i, kk] B_b[kk, j], on AMX tiles
    (``tdpbf16ps``, the conv's micro-kernel with one tap).  ``a_read(b, i, kk)`` and ``b_read(b, kk, j)`` give the
    f32 operands (A_b m x k, B_b k x n, indices always in range); the packs round them to bf16 and lay them out as
    tiles: A as [batch, k/32, rows, 32] u16 (a tile = 16 rows of 32 bf16, 64 bytes apart), B as [batch, n/16, k/32,
    16, 16] u32 (``pack_weight_bf16``'s B tiles: a word is the bf16 pair kk = 2p, 2p + 1 of column j).  m is padded
    to whole 32-row blocks, k to 32, n to 32, with zeros; the 2 x 2-tile blocks (b, column pair, row block) run in a
    parallel loop.  ``b_along_k``: B's memory is contiguous along kk (B = K^T), so its pack is vectorized over the
    pairs rather than the columns.  Only the guards a shape needs are emitted (a lane-varying guard keeps TVM from
    vectorizing the pack).  ``a_packed``: A already in its pack's layout ([batch, k/32, rows, 32] u16, another
    kernel's output: attention's probabilities), ``a_read`` unused; ``b_packed`` likewise for B ([batch, n/16, k/32,
    16, 16] u32: ``qkv_tiles_bf16``'s K and V), ``b_read`` unused.

    One product per kernel: TVM's StorageRewrite may give a dead pack's memory to a later buffer of another
    dtype, and the micro-kernel's typed pointers into it then fail to build."""
    from convdsl.backends.tvm.schedules.bf16 import to_bf16_bits

    rows, kb, n_ob = _cdiv(m, BLOCK_ROWS) * BLOCK_ROWS, _cdiv(k, BF16_CHANNELS), _cdiv(n, BLOCK_OC) * 2

    def guarded(conds, value, dtype):
        conds = [c for c in conds if c is not None]
        return tirx.Select(tirx.all(*conds), value, tirx.const(0, dtype)) if conds else value

    def pack_a(b, c, i, e):
        kk = c * BF16_CHANNELS + e
        v = to_bf16_bits(a_read(b, tirx.min(i, m - 1) if rows > m else i, tirx.min(kk, k - 1) if kb * 32 > k else kk))
        return guarded([i < m if rows > m else None, kk < k if kb * 32 > k else None], v, "uint16")

    def pack_b(b, o, c, p, j):
        kk, col = c * BF16_CHANNELS + p * 2, o * OC + j
        kk_pad, col_pad = kb * 32 > k, n_ob * OC > n
        col_r = tirx.min(col, n - 1) if col_pad else col

        def word(e):
            r = tirx.min(kk + e, k - 1) if kk_pad else kk + e
            bits = to_bf16_bits(b_read(b, r, col_r))
            return guarded([kk + e < k if kk_pad else None], bits, "uint16").astype("uint32")

        return guarded([col < n if col_pad else None], word(0) | (word(1) << tirx.const(16, "uint32")), "uint32")

    b_pack = "amx_pack_bk" if b_along_k else "amx_pack_b"
    xa = a_packed if a_packed is not None else te.compute((batch, kb, rows, BF16_CHANNELS), pack_a, name="amx_pack",
                                                          attrs={ATTR: "amx_pack"})
    xb = b_packed if b_packed is not None else te.compute((batch, n_ob, kb, BF16_CHANNELS // 2, OC), pack_b,
                                                          name=b_pack, attrs={ATTR: b_pack})
    offs = te.compute((1,), lambda _: tirx.const(0, "int64"), name="amx_taps")  # one tap, at offset 0
    pairs, blocks = n_ob // 2, rows // BLOCK_ROWS
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731

    def body(ins, outs):
        a, wt, taps = ins
        acc, = outs
        return _block_loop(batch, pairs, blocks, LLVM_IR_BF16, lambda bi, j, pb: tirx.call_extern(
            "int32", EXTERN_BF16,
            acc.access_ptr("w", offset=((bi * n_ob + 2 * j) * rows + pb * BLOCK_ROWS) * OC), i64(rows * OC * 4),
            a.access_ptr("r", offset=(bi * kb * rows + pb * BLOCK_ROWS) * BF16_CHANNELS), i64(rows * TILE_K),
            taps.access_ptr("r"), i64(1), i64(kb),
            wt.access_ptr("r", offset=(bi * n_ob + 2 * j) * kb * 256), i64(kb * 1024)))

    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in ((xa, "xa"), (xb, "xb"), (offs, "taps"))]
    out = tirx.decl_buffer((batch, n_ob, rows, OC), "float32", "acc")
    return te.extern((batch, n_ob, rows, OC), [xa, xb, offs], body, name="amx_batch_matmul", dtype="float32",
                     in_buffers=buffers, out_buffers=[out])


def schedule_batch(sch: s_tir.Schedule, blocks: dict[str, str], inline_consumers, parallel_outer) -> None:
    """``batch_matmul_bf16``'s kernels: the packs and the output (``amx_batch_out``, with what FuseOps put after
    it) in parallel loops, their rows vectorized (B = K^T's pack along the pairs: contiguous reads).  Attention's
    probabilities (``lower_attention._attention_probs_bf16``): everything between Q K^T and their pack
    (``amx_pack_p``, the kernel's output) inlined, the pack row by row with each row's max and sum computed in it."""
    tail = []
    if "amx_batch_out" in blocks:
        out = sch.get_sblock(blocks["amx_batch_out"])
        tail = inline_consumers(sch, out)
        loops = sch.get_loops(out)
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
        _vectorize_by(sch, loops[-1], OC)
    if "amx_pack_p" in blocks:
        _schedule_softmax_pack(sch, sch.get_sblock(blocks["amx_pack_p"]))
    if "amx_pack_x" in blocks and any(sch.get(b).name_hint == "ln_sum16"
                                      for b in sch.get_child_blocks(sch.get_sblock("root"))):
        _schedule_ln_pack(sch, sch.get_sblock(blocks["amx_pack_x"]))
        blocks = {k: v for k, v in blocks.items() if k != "amx_pack_x"}
    for key in ("amx_pack", "amx_pack_x"):  # [batch, k/32, rows, 32]
        if key not in blocks:
            continue
        pack = sch.get_sblock(blocks[key])
        loops = sch.get_loops(pack)
        sch.parallel(sch.fuse(*loops[:3]))
        sch.vectorize(loops[3])
    for key in ("amx_pack_b", "amx_pack_bk"):  # [batch, n/16, k/32, 16 pairs, 16 columns]
        if key in blocks:
            b, o, c, p, j = sch.get_loops(sch.get_sblock(blocks[key]))
            sch.parallel(sch.fuse(b, o, c))
            if key == "amx_pack_bk":
                sch.reorder(j, p)
                sch.vectorize(p)
            else:
                sch.vectorize(j)
    for block in tail:
        parallel_outer(sch, block, 2)


def _schedule_ln_pack(sch: s_tir.Schedule, pack) -> None:
    """``_pack_rows_ln_bf16``'s pack: rows in parallel, each row's sums (16 lanes, vectorized, then across them),
    mean and rsqrt computed at the row, then its K/32 runs of 32 features packed (16-lane vectors)."""
    b, c, i, e = sch.get_loops(pack)
    sch.reorder(b, i, c, e)
    row = sch.fuse(b, i)
    for name in ("ln_rstd", "ln_mean", "ln_sq", "ln_sum", "ln_sq16", "ln_sum16"):
        sch.compute_at(sch.get_sblock(name), row, preserve_unit_loops=True)
    for name in ("ln_sum16", "ln_sq16"):  # (row, 1, 1, lanes, features / lanes): the lanes innermost, vectorized
        loops = sch.get_loops(sch.get_sblock(name))
        sch.reorder(loops[-1], loops[-2])
        sch.vectorize(loops[-2])
    sch.vectorize(sch.split(e, [None, OC])[1])
    sch.parallel(row)


def _schedule_softmax_pack(sch: s_tir.Schedule, pack) -> None:
    """P's pack [batch, keys/32, rows, 32] with the softmax before it (``lower_attention._attention_probs_bf16``): the
    elementwise blocks inlined, the row max and sum (16 partial results, vectorized, then across them) computed at
    the pack's (batch, row) loop, which is parallel."""
    root = sch.get_sblock("root")
    exp = None
    for block in sch.get_child_blocks(root):  # logits, shift: recomputed where read (vectorized there)
        name = sch.get(block).name_hint
        if name.startswith("attn_logits") or name.startswith("attn_shift"):
            sch.compute_inline(block)
        elif "fast_exp" in name:
            exp = block
    b, c, i, e = sch.get_loops(pack)
    sch.reorder(b, i, c, e)
    row = sch.fuse(b, i)
    sch.parallel(row)
    sch.vectorize(sch.split(e, [None, OC])[1])  # 16 keys: one row of a C tile of the logits
    # consumers first; the row's exponentials once, into a row buffer the sum and the pack read
    for name in ("attn_inv", "attn_sum", "attn_sum16", "exp", "attn_max", "attn_max16"):
        sch.compute_at(exp if name == "exp" else sch.get_sblock(name), row, preserve_unit_loops=True)
    _vectorize_by(sch, sch.get_loops(exp)[-1], OC)
    for name in ("attn_max16", "attn_sum16"):  # (row, 1, 1, lanes, keys / lanes): the lanes innermost, vectorized
        loops = sch.get_loops(sch.get_sblock(name))
        sch.reorder(loops[-1], loops[-2])
        sch.vectorize(loops[-2])


# ---- bf16 linear with its bias, written in place (no acc buffer, no epilogue pass) ----------------------------
EXTERN_BF16_ROWS = "convdsl_amx_dpbf16ps_2x2_rows"
# C[2 x 2 tiles] = bias + sum over steps s of A(s) . B(s): C starts as the bias (a 64-byte row loaded with stride 0:
# 16 equal rows), A's blocks ``a_k`` bytes apart, B as ``_micro_kernel``'s; C is stored straight into a row-major
# output, rows ``c_row`` bytes apart (the second pixel tile 16 rows on, the second channel block 64 bytes on)
LLVM_IR_BF16_ROWS = f"""
define linkonce_odr i32 @{EXTERN_BF16_ROWS}(ptr %c, i64 %c_row, ptr %a, i64 %a_k, i64 %steps, ptr %b, i64 %b_ob,
                                           ptr %bias) alwaysinline {{
entry:
  %bias1 = getelementptr i8, ptr %bias, i64 64
  %z00 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %bias, i64 0)
  %z01 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %bias1, i64 0)
  %z10 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %bias, i64 0)
  %z11 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %bias1, i64 0)
  br label %loop
loop:
  %s = phi i64 [0, %entry], [%s1, %loop]
  %c00 = phi x86_amx [%z00, %entry], [%n00, %loop]
  %c01 = phi x86_amx [%z01, %entry], [%n01, %loop]
  %c10 = phi x86_amx [%z10, %entry], [%n10, %loop]
  %c11 = phi x86_amx [%z11, %entry], [%n11, %loop]
  %ao = mul i64 %s, %a_k
  %a0 = getelementptr i8, ptr %a, i64 %ao
{_tile_step("tdpbf16ps")}  %s1 = add i64 %s, 1
  %done = icmp eq i64 %s1, %steps
  br i1 %done, label %exit, label %loop
exit:
  %down = shl i64 %c_row, 4
  %c1 = getelementptr i8, ptr %c, i64 %down
  %cb = getelementptr i8, ptr %c, i64 64
  %cb1 = getelementptr i8, ptr %c1, i64 64
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %c, i64 %c_row, x86_amx %n00)
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %c1, i64 %c_row, x86_amx %n10)
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %cb, i64 %c_row, x86_amx %n01)
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %cb1, i64 %c_row, x86_amx %n11)
  ret i32 0
}}
declare x86_amx @llvm.x86.tileloadd64.internal(i16, i16, ptr, i64)
declare x86_amx @llvm.x86.tdpbf16ps.internal(i16, i16, i16, x86_amx, x86_amx, x86_amx)
declare void @llvm.x86.tilestored64.internal(i16, i16, ptr, i64, x86_amx)
"""


def _pack_rows_bf16(x: te.Tensor, kb: int) -> te.Tensor:
    """x [N, L, K] f32 -> the A tiles of a GEMM over its rows: [N, kb, rows, 32] bf16 bits (``batch_matmul_bf16``'s
    A; kb = K/32 rounded up), rows = L up to whole 32-row blocks, the rows past L copies of row L - 1, the
    features past K zeros."""
    from convdsl.backends.tvm.schedules.bf16 import to_bf16_bits

    n, length, k = (int(d) for d in x.shape)
    rows = _cdiv(length, BLOCK_ROWS) * BLOCK_ROWS

    def pack(b, c, i, e):
        kk = c * BF16_CHANNELS + e
        v = to_bf16_bits(x[b, tirx.min(i, length - 1), tirx.min(kk, k - 1) if kb * BF16_CHANNELS > k else kk])
        return tirx.Select(kk < k, v, tirx.const(0, "uint16")) if kb * BF16_CHANNELS > k else v

    return te.compute((n, kb, rows, BF16_CHANNELS), pack, name="amx_pack", attrs={ATTR: "amx_pack_x"})


def _pack_rows_ln_bf16(x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, eps: float, kb: int) -> te.Tensor:
    """``_pack_rows_bf16`` of layer_norm(x) over the last axis (K a multiple of 32: kb = K/32), TVM's formula
    (mean and mean of squares in one pass, (x - mean) * rsqrt(var + eps) * gamma + beta) computed in the pack:
    the normalized f32 tensor never exists.  Each row's sums as 16 partial results first (one vector per 16
    features), then across them (``schedule_batch``: at the pack's row loop)."""
    from convdsl.backends.tvm.schedules.bf16 import to_bf16_bits

    n, length, k = (int(d) for d in x.shape)
    rows = _cdiv(length, BLOCK_ROWS) * BLOCK_ROWS
    # over the padded rows too (the rows past L are copies of row L - 1): the pack reads them at its own row
    xr = lambda b, i, f: x[b, tirx.min(i, length - 1), f]  # noqa: E731
    jo, jq = te.reduce_axis((0, k // OC), "jo"), te.reduce_axis((0, k // OC), "jq")
    s16 = te.compute((n, rows, OC), lambda b, i, v: te.sum(xr(b, i, jo * OC + v), axis=jo), name="ln_sum16")
    q16 = te.compute((n, rows, OC), lambda b, i, v: te.sum(xr(b, i, jq * OC + v) * xr(b, i, jq * OC + v), axis=jq),
                     name="ln_sq16")
    v1, v2 = te.reduce_axis((0, OC), "v1"), te.reduce_axis((0, OC), "v2")
    total = te.compute((n, rows), lambda b, i: te.sum(s16[b, i, v1], axis=v1), name="ln_sum")
    squares = te.compute((n, rows), lambda b, i: te.sum(q16[b, i, v2], axis=v2), name="ln_sq")
    inv_k = tirx.const(1.0 / k, "float32")
    mean = te.compute((n, rows), lambda b, i: total[b, i] * inv_k, name="ln_mean")
    rstd = te.compute((n, rows), lambda b, i: tirx.rsqrt(squares[b, i] * inv_k - mean[b, i] * mean[b, i]
                                                         + tirx.const(eps, "float32")), name="ln_rstd")

    def pack(b, c, i, e):
        kk = c * BF16_CHANNELS + e
        return to_bf16_bits((xr(b, i, kk) - mean[b, i]) * rstd[b, i] * gamma[kk] + beta[kk])

    return te.compute((n, kb, rows, BF16_CHANNELS), pack, name="amx_pack", attrs={ATTR: "amx_pack_x"})


def linear_rows_bf16(x: te.Tensor, kernel: te.Tensor, bias: te.Tensor) -> te.Tensor:
    """x [N, L, K] f32 @ W + bias -> [N, rows, O] f32, rows = L up to whole 32-row blocks (the rows past L are
    computed from copies of row L - 1: whatever reads the result reads its first L rows), W
    ``pack_weight_bf16`` of [O, K, 1, 1] (O a multiple of 32), bias [O] f32.  The tiles start as the bias and are
    stored straight into the output (``LLVM_IR_BF16_ROWS``): no f32 accumulator buffer and no epilogue pass over
    it, which a plain ``dense_bf16`` spends on an output of 3 x 384 columns (ViT-S's Q/K/V) as long as on its
    GEMM.  The input is rounded to bf16 by the pack ([N, K/32, rows, 32], ``batch_matmul_bf16``'s A)."""
    n_ob, kb = int(kernel.shape[0]), int(kernel.shape[1])
    xa = _pack_rows_bf16(x, kb)
    n, rows = int(xa.shape[0]), int(xa.shape[2])
    out = n_ob * OC
    pairs, blocks = n_ob // 2, rows // BLOCK_ROWS
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731

    def body(ins, outs):
        a, wt, bs = ins
        y, = outs
        return _block_loop(n, pairs, blocks, LLVM_IR_BF16_ROWS, lambda bi, j, pb: tirx.call_extern(
            "int32", EXTERN_BF16_ROWS,
            y.access_ptr("w", offset=(bi * rows + pb * BLOCK_ROWS) * out + j * BLOCK_OC), i64(out * 4),
            a.access_ptr("r", offset=(bi * kb * rows + pb * BLOCK_ROWS) * BF16_CHANNELS), i64(rows * TILE_K),
            i64(kb), wt.access_ptr("r", offset=2 * j * kb * 512), i64(kb * 1024),
            bs.access_ptr("r", offset=j * BLOCK_OC)))

    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in ((xa, "xa"), (kernel, "w"), (bias, "bias"))]
    y = tirx.decl_buffer((n, rows, out), "float32", "y")
    return te.extern((n, rows, out), [xa, kernel, bias], body, name="amx_linear_rows", dtype="float32",
                     in_buffers=buffers, out_buffers=[y])


# ---- a transformer MLP: fc1 -> GELU -> fc2 (+ residual), the hidden layer only as bf16 tiles ----------------------
def _block_head(acc_loads: str) -> str:
    """The entry of a block-loop kernel with a bf16 epilogue: the micro-kernel's C tiles (one tap, ``%steps``
    input blocks) to a 4 KiB stack buffer ``%acc`` ([column half][32 rows][16] f32), the block's two 16-column
    halves of ``%bias`` as ``%bias0`` / ``%bias1``; ``acc_loads`` follows."""
    return f"""entry:
  %acc = alloca [{BLOCK_ROWS * BLOCK_OC} x float], align 64
  %k = call i32 @{EXTERN_BF16}(ptr %acc, i64 {BLOCK_ROWS * OC * 4}, ptr %a, i64 %a_icb, ptr %offs, i64 1, i64 %steps,
                              ptr %b, i64 %b_ob)
  %bias0 = load <16 x float>, ptr %bias, align 4
  %bp = getelementptr float, ptr %bias, i64 {OC}
  %bias1 = load <16 x float>, ptr %bp, align 4
{acc_loads}"""


def _row(r: str, cb: int, name: str) -> str:
    """IR loading row ``r`` (a value name or a constant) of the block's column half ``cb`` + bias as ``%name``."""
    idx = f"{r}" if cb == 0 else f"{r}_{name}i"
    pre = "" if cb == 0 else f"  {idx} = add i64 {r}, {BLOCK_ROWS}\n"
    return (f"{pre}  %{name}p = getelementptr <16 x float>, ptr %acc, i64 {idx}\n"
            f"  %{name}x = load <16 x float>, ptr %{name}p, align 64\n"
            f"  %{name} = fadd <16 x float> %{name}x, %bias{cb}\n")


def _f32(c: float) -> str:
    """An LLVM IR float constant: the double that is exactly float32(c)."""
    import struct

    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", float(np.float32(c))))[0]


# TVM's fast_erf (Eigen's rational approximation on [-4, 4]: x P(x^2) / Q(x^2)), its float32 coefficients
_ERF_P = (-2.7261423674040941e-10, 2.7706814620387377e-08, -2.101023937939317e-06, -5.6925062381196767e-05,
          -0.00073499063728377223, -0.0029545999132096767, -0.016096033155918121)
_ERF_Q = (-1.4566071513399947e-05, -0.00021337404905352741, -0.001682827016338706, -0.0073733292520046234,
          -0.014264739118516445)


def _gelu_ir() -> str:
    """GELU of 16 floats as FastMath's (x * (0.5 + 0.5 * fast_erf(x / sqrt 2))), op for op."""
    v = lambda c: f"splat (float {_f32(c)})"  # noqa: E731
    lines = [f"  %s = fmul <16 x float> %x, {v(1 / np.sqrt(2.0))}",
             f"  %lo = call <16 x float> @llvm.minnum.v16f32(<16 x float> %s, <16 x float> {v(4.0)})",
             f"  %c = call <16 x float> @llvm.maxnum.v16f32(<16 x float> %lo, <16 x float> {v(-4.0)})",
             "  %c2 = fmul <16 x float> %c, %c"]
    for name, coeffs in (("p", _ERF_P), ("q", _ERF_Q)):
        prev = v(coeffs[0])
        for i, c in enumerate(coeffs[1:]):
            lines += [f"  %{name}m{i} = fmul <16 x float> %c2, {prev}",
                      f"  %{name}{i} = fadd <16 x float> %{name}m{i}, {v(c)}"]
            prev = f"%{name}{i}"
    np_, nq = len(_ERF_P) - 2, len(_ERF_Q) - 2
    lines += [f"  %px = fmul <16 x float> %c, %p{np_}", f"  %erf = fdiv <16 x float> %px, %q{nq}",
              f"  %h = fmul <16 x float> {v(0.5)}, %erf", f"  %h1 = fadd <16 x float> {v(0.5)}, %h",
              "  %g = fmul <16 x float> %x, %h1"]
    body = "\n".join(lines)
    return f"""
define linkonce_odr <16 x float> @convdsl_gelu16(<16 x float> %x) alwaysinline {{
entry:
{body}
  ret <16 x float> %g
}}
declare <16 x float> @llvm.minnum.v16f32(<16 x float>, <16 x float>)
declare <16 x float> @llvm.maxnum.v16f32(<16 x float>, <16 x float>)
"""


def _rows_to_a_tiles(convert: str) -> str:
    """IR of a bf16 block-loop kernel from its entry to its end: per row ``%r`` of the block, its two column
    halves + bias (``%v0``, ``%v1``), ``convert`` making ``%bf`` (<32 x bfloat>) of them, stored as the row's
    64 bytes at ``%p`` (the next GEMM's A tiles)."""
    return f"""{_block_head("  br label %row")}
row:
  %r = phi i64 [0, %entry], [%r1, %row]
{_row("%r", 0, "v0")}{_row("%r", 1, "v1")}{convert}  %dst = getelementptr <32 x bfloat>, ptr %p, i64 %r
  store <32 x bfloat> %bf, ptr %dst, align 64
  %r1 = add i64 %r, 1
  %done = icmp eq i64 %r1, {BLOCK_ROWS}
  br i1 %done, label %exit, label %row
exit:
  ret i32 0
}}
"""


_GELU_TO_BF16 = """  %g0 = call <16 x float> @convdsl_gelu16(<16 x float> %v0)
  %g1 = call <16 x float> @convdsl_gelu16(<16 x float> %v1)
  %bf = call <32 x bfloat> @llvm.x86.avx512bf16.cvtne2ps2bf16.512(<16 x float> %g1, <16 x float> %g0)
"""
_TO_BF16 = """  %bf = call <32 x bfloat>
    @llvm.x86.avx512bf16.cvtne2ps2bf16.512(<16 x float> %v1, <16 x float> %v0)
"""


EXTERN_BF16_GELU = "convdsl_amx_dpbf16ps_2x2_gelu_pack"
# One 32 x 32 block of fc1: the micro-kernel's four C tiles to a 4 KiB stack buffer (L1), then per row the 32
# values + bias through the GELU, rounded to bf16 (vcvtne2ps2bf16: round to nearest even, as ``to_bf16_bits``)
# into the row's 64 bytes of the next GEMM's A-tile pack (the block's 32 rows are 2 KiB there, contiguous)
LLVM_IR_BF16_GELU = LLVM_IR_BF16 + _gelu_ir() + f"""
define linkonce_odr i32 @{EXTERN_BF16_GELU}(ptr %p, ptr %bias, ptr %a, i64 %a_icb, ptr %offs, i64 %steps, ptr %b,
                                          i64 %b_ob) {{
{_rows_to_a_tiles(_GELU_TO_BF16)}declare <32 x bfloat> @llvm.x86.avx512bf16.cvtne2ps2bf16.512(<16 x float>, <16 x float>)
"""


def mlp_up_bf16(x: te.Tensor, kernel: te.Tensor, bias: te.Tensor, gamma: te.Tensor | None = None,
                beta: te.Tensor | None = None, eps: float = 1e-5) -> te.Tensor:
    """gelu(x W + bias) for x [N, L, K] f32 (W, bias as ``linear_rows_bf16``), rounded to bf16 straight into the
    next GEMM's A-tile pack: [N, O/32, rows, 32] uint16 (``linear_packed_bf16`` reads it).  Each 32 x 32 block is
    finished while it is in L1 (``LLVM_IR_BF16_GELU``: the conv's micro-kernel with one tap, then bias, GELU and
    the bf16 rounding per row), so the block's f32 values never go to memory.  The GELU is FastMath's (x * (0.5 +
    0.5 * fast_erf(x / sqrt 2))) op for op; the hidden layer never exists as an f32 tensor, and the next GEMM has
    no pack of its own.  ``gamma``, ``beta``, ``eps``: x is a layer norm's input, normalized in the pack."""
    n_ob, kb = int(kernel.shape[0]), int(kernel.shape[1])
    xa = _pack_rows_bf16(x, kb) if gamma is None else _pack_rows_ln_bf16(x, gamma, beta, eps, kb)
    n, rows = int(xa.shape[0]), int(xa.shape[2])
    offs = te.compute((1,), lambda _: tirx.const(0, "int64"), name="amx_taps")  # one tap, at offset 0
    pairs, blocks = n_ob // 2, rows // BLOCK_ROWS
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731

    def body(ins, outs):
        a, wt, taps, bs = ins
        p, = outs
        return _block_loop(n, pairs, blocks, LLVM_IR_BF16_GELU, lambda bi, j, pb: tirx.call_extern(
            "int32", EXTERN_BF16_GELU,
            p.access_ptr("w", offset=((bi * pairs + j) * rows + pb * BLOCK_ROWS) * BF16_CHANNELS),
            bs.access_ptr("r", offset=j * BLOCK_OC),
            a.access_ptr("r", offset=(bi * kb * rows + pb * BLOCK_ROWS) * BF16_CHANNELS), i64(rows * TILE_K),
            taps.access_ptr("r"), i64(kb), wt.access_ptr("r", offset=2 * j * kb * 512), i64(kb * 1024)))

    ins = (xa, kernel, offs, bias)
    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in zip(ins, ("xa", "w", "taps", "bias"))]
    shape = (n, pairs, rows, BF16_CHANNELS)
    return te.extern(shape, list(ins), body, name="amx_mlp_up", dtype="uint16", in_buffers=buffers,
                     out_buffers=[tirx.decl_buffer(shape, "uint16", "p")])


def _rows_out_ir(name: str, residual: bool) -> str:
    """One 32 x 32 block of a GEMM whose output is row-major [N, L, O] f32: the micro-kernel's C tiles to a 4 KiB
    stack buffer, then each of the block's rows below L as acc + bias (+ the residual's row) to the output.  The
    block's first row is its A pointer's distance from its image's A (``%a0``) / 64, so that nothing per call is
    a computed integer (TVM's passes may narrow or widen those)."""
    res_arg = " ptr %res," if residual else ""
    add = """  %rp0 = getelementptr float, ptr %res, i64 %off
  %rv0 = load <16 x float>, ptr %rp0, align 4
  %rp1 = getelementptr float, ptr %rp0, i64 16
  %rv1 = load <16 x float>, ptr %rp1, align 4
  %o0 = fadd <16 x float> %s0, %rv0
  %o1 = fadd <16 x float> %s1, %rv1""" if residual else """  %o0 = fadd <16 x float> %s0, zeroinitializer
  %o1 = fadd <16 x float> %s1, zeroinitializer"""
    entry = _block_head(f"""  %ai = ptrtoint ptr %a to i64
  %a0i = ptrtoint ptr %a0 to i64
  %ad = sub i64 %ai, %a0i
  %row0 = lshr i64 %ad, 6
  %left = sub i64 %length, %row0
  %few = icmp ult i64 %left, {BLOCK_ROWS}
  %valid = select i1 %few, i64 %left, i64 {BLOCK_ROWS}
  br label %row""")
    return f"""
define linkonce_odr i32 @{name}(ptr %y,{res_arg} ptr %bias, i64 %out, i64 %length, ptr %a0, ptr %a, i64 %a_icb,
                                  ptr %offs, i64 %steps, ptr %b, i64 %b_ob) {{
{entry}
row:
  %r = phi i64 [0, %entry], [%r1, %row]
{_row("%r", 0, "s0")}{_row("%r", 1, "s1")}  %off = mul i64 %r, %out
{add}
  %d0 = getelementptr float, ptr %y, i64 %off
  store <16 x float> %o0, ptr %d0, align 4
  %d1 = getelementptr float, ptr %d0, i64 16
  store <16 x float> %o1, ptr %d1, align 4
  %r1 = add i64 %r, 1
  %done = icmp eq i64 %r1, %valid
  br i1 %done, label %exit, label %row
exit:
  ret i32 0
}}
"""


EXTERN_BF16_OUT = {False: "convdsl_amx_dpbf16ps_2x2_rows_out", True: "convdsl_amx_dpbf16ps_2x2_rows_out_residual"}
LLVM_IR_BF16_OUT = {res: LLVM_IR_BF16 + _rows_out_ir(name, res) for res, name in EXTERN_BF16_OUT.items()}


def linear_packed_bf16(hidden: te.Tensor, kernel: te.Tensor, bias: te.Tensor, length: int,
                       residual: te.Tensor | None = None) -> te.Tensor:
    """hidden W + bias (+ residual) -> [N, length, O] f32 for an A-tile pack ``hidden`` [N, K/32, rows, 32] (another
    kernel's bf16 output: ``mlp_up_bf16``'s hidden layer, attention's merged heads): each 32 x 32 block finished
    in the block loop (``_rows_out_ir``: acc on the stack, + bias, + the residual [N, length, O], its rows below
    ``length`` stored), so the kernel is one parallel pass and no f32 acc goes to memory."""
    n_ob, kb = int(kernel.shape[0]), int(kernel.shape[1])
    n, rows = int(hidden.shape[0]), int(hidden.shape[2])
    out = n_ob * OC
    offs = te.compute((1,), lambda _: tirx.const(0, "int64"), name="amx_taps")  # one tap, at offset 0
    pairs, blocks = n_ob // 2, rows // BLOCK_ROWS
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
    res = residual is not None

    def body(ins, outs):
        a, wt, taps, bs = ins[:4]
        y, = outs
        row = lambda bi, pb: (bi * length + pb * BLOCK_ROWS) * out  # noqa: E731 - the block's first row's offset
        return _block_loop(n, pairs, blocks, LLVM_IR_BF16_OUT[res], lambda bi, j, pb: tirx.call_extern(
            "int32", EXTERN_BF16_OUT[res], y.access_ptr("w", offset=row(bi, pb) + j * BLOCK_OC),
            *([ins[4].access_ptr("r", offset=row(bi, pb) + j * BLOCK_OC)] if res else []),
            bs.access_ptr("r", offset=j * BLOCK_OC), i64(out), i64(length),
            a.access_ptr("r", offset=bi * kb * rows * BF16_CHANNELS),
            a.access_ptr("r", offset=(bi * kb * rows + pb * BLOCK_ROWS) * BF16_CHANNELS), i64(rows * TILE_K),
            taps.access_ptr("r"), i64(kb), wt.access_ptr("r", offset=2 * j * kb * 512), i64(kb * 1024)))

    ins = (hidden, kernel, offs, bias) + ((residual,) if res else ())
    names = ("xa", "w", "taps", "bias", "residual")
    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in zip(ins, names)]
    shape = (n, length, out)
    return te.extern(shape, list(ins), body, name="amx_linear_packed", dtype="float32", in_buffers=buffers,
                     out_buffers=[tirx.decl_buffer(shape, "float32", "y")])


# ---- self-attention's Q/K/V projection straight into the attention GEMMs' bf16 tiles ------------------------------
def _qkv_ir() -> str:
    """Three epilogues of a 32 x 32 block of the Q/K/V GEMM (acc + bias, rounded to bf16): Q as A tiles (the block's
    32 rows, 64 bytes each, contiguous), V as B tiles of P V (row pairs 2p, 2p + 1 interleaved: a tile row p is the
    key pair p of 16 columns), K as B tiles of Q K^T (a tile row p is the feature pair p of 16 keys: each key's
    16 pair words, transposed 16 x 16 in registers)."""
    q = f"""
define linkonce_odr i32 @{EXTERN_QKV["q"]}(ptr %p, ptr %bias, ptr %a, i64 %a_icb, ptr %offs, i64 %steps, ptr %b,
                                           i64 %b_ob, i64 %stride) {{
{_rows_to_a_tiles(_TO_BF16)}"""
    inter = ", ".join(f"i32 {i // 2 + (16 if i % 2 else 0)}" for i in range(32))
    v_half = []
    for cb in (0, 1):
        v_half.append(f"""  %base{cb} = getelementptr i8, ptr %p, i64 {"0" if cb == 0 else "%stride"}
  br label %vrow{cb}
vrow{cb}:
  %vp{cb} = phi i64 [0, %{"entry" if cb == 0 else "vdone0"}], [%vp{cb}n, %vrow{cb}]
  %ve{cb} = shl i64 %vp{cb}, 1
  %vo{cb} = add i64 %ve{cb}, 1
{_row(f"%ve{cb}", cb, f"e{cb}")}{_row(f"%vo{cb}", cb, f"o{cb}")}  %be{cb} = call <16 x bfloat>
    @llvm.x86.avx512bf16.cvtneps2bf16.512(<16 x float> %e{cb})
  %bo{cb} = call <16 x bfloat> @llvm.x86.avx512bf16.cvtneps2bf16.512(<16 x float> %o{cb})
  %w{cb} = shufflevector <16 x bfloat> %be{cb}, <16 x bfloat> %bo{cb}, <32 x i32> <{inter}>
  %vd{cb} = getelementptr <32 x bfloat>, ptr %base{cb}, i64 %vp{cb}
  store <32 x bfloat> %w{cb}, ptr %vd{cb}, align 64
  %vp{cb}n = add i64 %vp{cb}, 1
  %vdn{cb} = icmp eq i64 %vp{cb}n, 16
  br i1 %vdn{cb}, label %vdone{cb}, label %vrow{cb}
vdone{cb}:
""")
    v = f"""
define linkonce_odr i32 @{EXTERN_QKV["v"]}(ptr %p, ptr %bias, ptr %a, i64 %a_icb, ptr %offs, i64 %steps, ptr %b,
                                           i64 %b_ob, i64 %stride) {{
{_block_head("")}{v_half[0]}{v_half[1]}  ret i32 0
}}
"""
    # K: per half of 16 keys, the 16 keys' pair words, then a 16 x 16 transpose by four stages of two-source shuffles
    k_body = []
    for rb in (0, 1):
        rows = []
        for j in range(16):
            r = rb * 16 + j
            rows.append(f"""  %k{rb}_{j}a = getelementptr <16 x float>, ptr %acc, i64 {r}
  %k{rb}_{j}b = load <16 x float>, ptr %k{rb}_{j}a, align 64
  %k{rb}_{j}c = fadd <16 x float> %k{rb}_{j}b, %bias0
  %k{rb}_{j}d = getelementptr <16 x float>, ptr %acc, i64 {r + BLOCK_ROWS}
  %k{rb}_{j}e = load <16 x float>, ptr %k{rb}_{j}d, align 64
  %k{rb}_{j}f = fadd <16 x float> %k{rb}_{j}e, %bias1
  %k{rb}_{j}g = call <32 x bfloat> @llvm.x86.avx512bf16.cvtne2ps2bf16.512(<16 x float> %k{rb}_{j}f,
                                                                           <16 x float> %k{rb}_{j}c)
  %m{rb}_0_{j} = bitcast <32 x bfloat> %k{rb}_{j}g to <16 x i32>""")
        k_body += rows
        for stage, step in enumerate((8, 4, 2, 1)):
            for i in range(16):
                if i & step:
                    continue
                lo = ", ".join(f"i32 {c if not c & step else 16 + c - step}" for c in range(16))
                hi = ", ".join(f"i32 {c + step if not c & step else 16 + c}" for c in range(16))
                a_, b_ = f"%m{rb}_{stage}_{i}", f"%m{rb}_{stage}_{i + step}"
                for row, mask in ((i, lo), (i + step, hi)):
                    k_body.append(f"  %m{rb}_{stage + 1}_{row} = shufflevector <16 x i32> {a_}, <16 x i32> {b_},"
                                  f" <16 x i32> <{mask}>")
        off = "0" if rb == 0 else "%stride"
        k_body.append(f"  %kt{rb} = getelementptr i8, ptr %p, i64 {off}")
        for pp in range(16):
            k_body.append(f"""  %kd{rb}_{pp} = getelementptr <16 x i32>, ptr %kt{rb}, i64 {pp}
  store <16 x i32> %m{rb}_4_{pp}, ptr %kd{rb}_{pp}, align 64""")
    body = "\n".join(k_body)
    k = f"""
define linkonce_odr i32 @{EXTERN_QKV["k"]}(ptr %p, ptr %bias, ptr %a, i64 %a_icb, ptr %offs, i64 %steps, ptr %b,
                                           i64 %b_ob, i64 %stride) {{
{_block_head("")}{body}
  ret i32 0
}}
"""
    return q + v + k + """declare <32 x bfloat> @llvm.x86.avx512bf16.cvtne2ps2bf16.512(<16 x float>, <16 x float>)
declare <16 x bfloat> @llvm.x86.avx512bf16.cvtneps2bf16.512(<16 x float>)
"""


EXTERN_QKV = {part: f"convdsl_amx_dpbf16ps_2x2_{part}_tiles" for part in ("q", "k", "v")}
LLVM_IR_QKV = LLVM_IR_BF16 + _qkv_ir()


def qkv_tiles_bf16(x: te.Tensor, kernel: te.Tensor, bias: te.Tensor, heads: int, d: int,
                   gamma: te.Tensor | None = None, beta: te.Tensor | None = None, eps: float = 1e-5):
    """Self-attention's Q, K, V = x W + bias for x [N, L, C] f32 (W ``pack_weight_bf16`` of [3 heads d, C, 1, 1],
    d a multiple of 32), each 32 x 32 block rounded to bf16 in the block loop straight into the tiles the attention
    GEMMs read (``_qkv_ir``), so neither attention kernel packs anything:
    Q [N heads, d/32, rows, 32] uint16 (Q K^T's A), K [N heads, rows/16, d/32, 16, 16] uint32 (Q K^T's B, pairs of
    features by keys), V [N heads, d/16, rows/32, 16, 16] uint32 (P V's B, pairs of keys by features); rows = L up
    to whole 32-row blocks, the rows past L from copies of token L - 1 (finite: masked keys, zero probabilities).
    ``gamma``, ``beta``, ``eps``: x is a layer norm's input, normalized in the pack."""
    n_ob, kb = int(kernel.shape[0]), int(kernel.shape[1])
    xa = _pack_rows_bf16(x, kb) if gamma is None else _pack_rows_ln_bf16(x, gamma, beta, eps, kb)
    n, rows = int(xa.shape[0]), int(xa.shape[2])
    offs = te.compute((1,), lambda _: tirx.const(0, "int64"), name="amx_taps")
    pairs, blocks, dim = n_ob // 2, rows // BLOCK_ROWS, heads * d
    per_head, section = d // BLOCK_OC, dim // BLOCK_OC  # column blocks of 32 per head, per Q / K / V
    bh = n * heads
    shapes = {"q": (bh, per_head, rows, BF16_CHANNELS), "k": (bh, rows // OC, per_head, OC, OC),
              "v": (bh, d // OC, blocks, OC, OC)}
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731

    def body(ins, outs):
        a, wt, taps, bs = ins
        q, k, v = outs
        t = tirx.Var("block", "int32")
        bi, j, pb = t // (pairs * blocks), t // blocks % pairs, t % blocks

        def call(part, out, offset, stride):
            within = j % section  # the column block within Q, K or V: head within // per_head, its c within % ...
            head, c = bi * heads + within // per_head, within % per_head
            return tirx.Evaluate(tirx.call_extern(
                "int32", EXTERN_QKV[part], out.access_ptr("w", offset=offset(head, c)),
                bs.access_ptr("r", offset=j * BLOCK_OC),
                a.access_ptr("r", offset=(bi * kb * rows + pb * BLOCK_ROWS) * BF16_CHANNELS), i64(rows * TILE_K),
                taps.access_ptr("r"), i64(kb), wt.access_ptr("r", offset=2 * j * kb * 512), i64(kb * 1024),
                i64(stride)))

        qc = call("q", q, lambda h, c: ((h * per_head + c) * rows + pb * BLOCK_ROWS) * BF16_CHANNELS, 0)
        kc = call("k", k, lambda h, c: ((h * (rows // OC) + 2 * pb) * per_head + c) * OC * OC, per_head * OC * OC * 4)
        vc = call("v", v, lambda h, c: ((h * (d // OC) + 2 * c) * blocks + pb) * OC * OC, blocks * OC * OC * 4)
        stmt = tirx.IfThenElse(j < section, qc, tirx.IfThenElse(j < 2 * section, kc, vc))
        loop = tirx.For(t, 0, n * pairs * blocks, tirx.ForKind.PARALLEL, stmt)
        return tirx.AttrStmt(tirx.const(0, "int32"), IMPORT_ATTR, tvm.ir.StringImm(LLVM_IR_QKV), loop)

    ins = (xa, kernel, offs, bias)
    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in zip(ins, ("xa", "w", "taps", "bias"))]
    dtypes = {"q": "uint16", "k": "uint32", "v": "uint32"}
    outs = [tirx.decl_buffer(shapes[p], dtypes[p], p) for p in ("q", "k", "v")]
    return te.extern([shapes[p] for p in ("q", "k", "v")], list(ins), body, name="amx_qkv_tiles",
                     dtype=[dtypes[p] for p in ("q", "k", "v")], in_buffers=buffers, out_buffers=outs)


def heads_matmul_pack_bf16(p: te.Tensor, v: te.Tensor, heads: int) -> te.Tensor:
    """P V for every (image, head) -> the heads merged as bf16 into the next GEMM's A tiles: p ``[N heads, keys/32,
    rows, 32]`` uint16 (attention's probabilities), v ``qkv_tiles_bf16``'s V ``[N heads, d/16, keys/32, 16, 16]``
    uint32 (d a multiple of 32) -> [N, heads d/32, rows, 32] uint16.  Each 32 x 32 block is rounded in the block
    loop into its 2 KiB of the output (``qkv_tiles_bf16``'s Q epilogue with a zero bias): one parallel pass."""
    bh, kb, rows = (int(d) for d in p.shape[:3])
    n_ob = int(v.shape[1])
    n, q, pairs, blocks = bh // heads, n_ob // 2, n_ob // 2, rows // BLOCK_ROWS
    offs = te.compute((1,), lambda _: tirx.const(0, "int64"), name="amx_taps")
    zeros = te.compute((BLOCK_OC,), lambda _: tirx.const(0.0, "float32"), name="amx_zero_bias")
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731

    def body(ins, outs):
        a, wt, taps, bs = ins
        y, = outs
        return _block_loop(bh, pairs, blocks, LLVM_IR_QKV, lambda b, j, pb: tirx.call_extern(
            "int32", EXTERN_QKV["q"],
            y.access_ptr("w", offset=(((b // heads) * heads * q + b % heads * q + j) * rows + pb * BLOCK_ROWS)
                         * BF16_CHANNELS),
            bs.access_ptr("r"), a.access_ptr("r", offset=(b * kb * rows + pb * BLOCK_ROWS) * BF16_CHANNELS),
            i64(rows * TILE_K), taps.access_ptr("r"), i64(kb),
            wt.access_ptr("r", offset=(b * n_ob + 2 * j) * kb * 256), i64(kb * 1024), i64(0)))

    ins = (p, v, offs, zeros)
    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in zip(ins, ("p", "v", "taps", "zeros"))]
    shape = (n, heads * q, rows, BF16_CHANNELS)
    return te.extern(shape, list(ins), body, name="amx_heads_pack", dtype="uint16", in_buffers=buffers,
                     out_buffers=[tirx.decl_buffer(shape, "uint16", "y")])


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
        _vectorize_by(sch, loops[3], OC)
    elif len(loops) == 5:  # blocked [N, O/ob, OH, OW, ob]: (n, ob, oh) in parallel, each pixel's ob channels
        sch.parallel(sch.fuse(*loops[:3]))  # one vector: a contiguous read of acc and a contiguous store
        _vectorize_by(sch, loops[4], min(OC, extents[4]))
    else:  # qlinear's [..., O]: rows in parallel, channels vectorized (contiguous in acc and the output)
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
        _vectorize_by(sch, loops[-1], OC)
    return tail


def _vectorize_by(sch: s_tir.Schedule, loop, lanes: int) -> None:
    extent = sch.get(loop).extent
    if isinstance(extent, tirx.IntImm) and extent.value % lanes == 0:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


__all__ = ["has_amx_int8", "has_amx_bf16", "fits", "Geometry", "pack_weight", "pack_weight_bf16", "pack_input",
           "conv_extern", "conv2d_nchwc_bf16", "dense_bf16", "batch_matmul_bf16", "linear_rows_bf16",
           "linear_packed_bf16", "mlp_up_bf16", "qkv_tiles_bf16", "heads_matmul_pack_bf16", "schedule",
           "schedule_batch",
           "LLVM_IR", "LLVM_IR_BF16"]
