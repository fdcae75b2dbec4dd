"""convdsl's own CPU schedules, applied without tuning (fp32, x86 AVX-512/AVX2).

One rule per kernel family, each a plain function ``schedule_*(sch, block, hw) -> None``
that raises (``ScheduleError`` or ``_Skip``) when the function is not its shape:

- ``conv2d_nchwc``: NeoCPU's direct convolution.  Output register tile of ``rn`` output
  columns x ``ov`` channel blocks (``rn * ov`` accumulators <= the vector registers
  left free), loop order ``(n, oc_outer, oh) parallel, ow_outer, ic_outer, kh, kw,
  ic_inner, ow_inner (unrolled), oc_inner (unrolled), oc_block (vector)``, or
  ``(n, oh, oc_outer) parallel`` when the input outweighs the weights (``rows_first``); the
  accumulator tile lives in a local buffer that LLVM keeps in registers; the fused
  epilogue (batchnorm scale/shift, bias, residual add, activation) is inlined into one
  block computed at the tile; padding is one parallel, vectorized copy.  A 1x1 conv is
  the same loop nest with kh = kw = 1, i.e. a GEMM over channels.  With 16 registers (AVX2)
  the input channels are reduced in chunks whose weights stay in L1 (``weight_chunk``): ``ic``
  chunks outside the row's tiles, the epilogue after the last chunk.  A grouped conv is the
  same template: only the input block its ``ic_outer`` loop reads depends on the output block.
- ``dwconv_nchwc``: depthwise, the same tile with one channel block, vectorized over it, the
  kw loop unrolled (a row's input vectors loaded once), the padding computed per output row
  into a local buffer (the kh rows it reads) instead of one copy of the whole input.
- ``dense_packed`` and any matmul-like block (spatial axes then one reduction axis,
  the last spatial axis contiguous in the right operand): a register-tiled GEMM,
  ``rm`` rows x ``nv`` vectors of columns, k between the parallel outer loops and the
  tile.
- ``attention_rows``: (batch, head, block of query rows) parallel, every stage of the attention
  computed inside its task (``schedule_attention_rows``);
- row reductions (softmax, layer norm, pooling to one value): rows parallel, every block
  computed inside its row, vectorized where the lanes divide the row;
- everything else: every root block gets its leading spatial loops fused and parallel and its
  innermost spatial loop vectorized; pure elementwise chains are inlined first.

Template parameters come from the shape and ``Hardware`` (vector lanes, register
count); no measurement, no search.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

from convdsl.backends.tvm.schedules import bf16, tophub
from convdsl.backends.tvm.schedules.kernels import GROUPS_ATTR, K_INNER_ATTR, KERNEL_ATTR, ROWS_ATTR, divisors


class _Skip(Exception):
    """This rule does not apply to the function."""


@dataclass(frozen=True)
class Hardware:
    lanes: int = 16  # fp32 lanes of a vector register
    registers: int = 32  # vector registers

    @property
    def accumulators(self) -> int:  # registers left for the output tile (the rest: operands)
        return self.registers - 4

    @staticmethod
    def of(target) -> "Hardware":
        """Vector width and register count of ``target``, from its LLVM features: AVX-512 16 fp32
        lanes x 32 zmm, AVX/AVX2 8 x 16 ymm, SSE 4 x 16 xmm, NEON 4 x 32.  (TVM's
        ``llvm_get_vector_width`` answers 512 for every x86 CPU, haswell and x86-64 included,
        which gave an AVX2 machine tiles of 28 zmm-sized accumulators: 56 ymm registers, spilled.)"""
        try:
            from tvm.target.codegen import target_has_features
        except ImportError:  # noqa: BLE001 - an older TVM: assume AVX-512, as before
            return Hardware()

        def has(feature: str) -> bool:
            try:
                return bool(target_has_features(feature, target))
            except Exception:  # noqa: BLE001 - not an LLVM target, or an unknown feature name
                return False

        if has("avx512f"):
            return Hardware(16, 32)
        if has("avx"):
            return Hardware(8, 16)
        if has("neon"):
            return Hardware(4, 32)
        return Hardware(4, 16)

    def vectors(self, block: int) -> int:
        """Registers one ``block``-lane channel block (or column block) occupies."""
        return max(1, -(-block // self.lanes))

    def max_accumulators(self, vb: int, guarded: bool = True) -> int:
        """Accumulator registers of a register tile whose blocks take ``vb`` registers each.

        32 registers: all but the operands'.  16 (AVX2), measured on Zen 3 with TVM's code:
        8 when a block takes two registers and the tile may be a guarded partial one
        (``guarded``: ViT-S's packed GEMMs over 197 rows: 4x16 tiles 65-76 GFLOP/s per core, the
        textbook 6x16 tile 35-42, 7x16 convs 46 against 4x16's 76-92: the partial last tile's
        row guard sits inside the reduction loop and LLVM spills the tile around it), 12 otherwise
        (a GEMM whose rows the tile divides: 6x16 over 198 rows 71-87 against 4x16's 66-83)."""
        if self.registers >= 32:
            return self.accumulators
        return 8 if vb > 1 and guarded else 12


# ---- helpers ----------------------------------------------------------------------------
def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _static_extent(sch: s_tir.Schedule, loop) -> int | None:
    """The loop's extent, or None when it is symbolic (the batch of a dynamic-batch build)."""
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def kernel_of(sch: s_tir.Schedule, block) -> str | None:
    ann = sch.get(block).annotations
    return str(ann[KERNEL_ATTR]) if KERNEL_ATTR in ann else None


def _root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _iter_kinds(sch: s_tir.Schedule, block) -> str:
    return "".join("S" if int(iv.iter_type) == 0 else "R" if int(iv.iter_type) == 2 else "O"
                   for iv in sch.get(block).iter_vars)


def _is_elementwise_chain_member(sch: s_tir.Schedule, block) -> bool:
    return "R" not in _iter_kinds(sch, block) and "O" not in _iter_kinds(sch, block)


def _inline_epilogue(sch: s_tir.Schedule, main) -> object | None:
    """Inline the blocks after ``main`` into the last one; return that last block (None: no epilogue)."""
    blocks = _root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    i = names.index(sch.get(main).name_hint)
    after = blocks[i + 1:]
    if not after:
        return None
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    for b in after[:-1]:
        if sch.get(b).name_hint in outputs:
            raise _Skip("an intermediate epilogue block is an output")
        sch.compute_inline(b)
    last = after[-1]
    if not _is_elementwise_chain_member(sch, last):
        raise _Skip("epilogue is not elementwise")
    if _elements(sch, last) > _elements(sch, main):
        # computed at the kernel's tiles, an epilogue writes only what it reads from them: the positions a pad
        # adds (a linear's output padded to whole attention windows) would never be written
        raise _Skip("the epilogue writes more elements than the kernel computes")
    return last


def _elements(sch: s_tir.Schedule, block) -> int:
    """Elements the block writes, with symbolic dims (a dynamic batch) counted as 1."""
    return math.prod(int(d) if isinstance(d, tirx.IntImm) else 1 for d in sch.get(block).writes[0].source.shape)


def _vectorize_inner(sch: s_tir.Schedule, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    n = _static_extent(sch, inner)
    if n is None or n == 1:
        return
    if n > lanes:
        if n % lanes:
            return
        inner = sch.split(inner, [None, lanes])[1]
    sch.vectorize(inner)


def _parallel_copy(sch: s_tir.Schedule, block, lanes: int, keep: int = 1) -> None:
    """A copy-like root block: fuse all but the last ``keep`` loops, parallel; vectorize the last.

    A padding copy (``kernels.pad_spatial``) whose last loop is narrower than a vector (a channel
    block of 3, 4 or 8 lanes: the RGB stem's [N, 1, H, W, 3] input) has that loop fused with the
    one before it, the rows parallel instead of every pixel, and each row vectorized in whole
    vectors where they divide it, else left to LLVM as one contiguous loop (the stem's padded row,
    678 floats: a guarded last vector was slower).  MobileNet-V2's stem conv alone, one thread,
    CPU time: 0.294 -> 0.204 ms; ResNet-18's 1.55 -> 1.44."""
    loops = sch.get_loops(block)
    last = _static_extent(sch, loops[-1]) if loops else None
    if keep == 1 and kernel_of(sch, block) == "pad" and len(loops) >= 3 and last is not None and last < lanes \
            and _static_extent(sch, loops[-2]) is not None:
        row = sch.fuse(loops[-2], loops[-1])
        outer = loops[:-2]
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        n = _extent(sch, row)
        if n <= lanes:
            sch.vectorize(row)
        elif n % lanes == 0:
            sch.vectorize(sch.split(row, [None, lanes])[1])
        return
    if len(loops) > keep:
        sch.parallel(sch.fuse(*loops[:-keep]) if len(loops) - keep > 1 else loops[0])
    _vectorize_inner(sch, block, lanes)


def _tile_epilogue(sch: s_tir.Schedule, epilogue, loop, depth: int) -> None:
    """Compute the epilogue at ``loop`` (the ``depth``-th loop of the nest): its own loops
    are the tile's; the innermost (channel lanes) vectorized, the others unrolled."""
    sch.reverse_compute_at(epilogue, loop)
    tail = sch.get_loops(epilogue)[depth:]
    if tail:
        sch.vectorize(tail[-1])
        for lp in tail[:-1]:
            sch.unroll(lp)


# the helpers other schedule modules use (winograd.py)
extent, inline_epilogue, parallel_copy = _extent, _inline_epilogue, _parallel_copy


# ---- conv2d NCHWc -----------------------------------------------------------------------
def conv_tile(ow: int, ocb: int, hw: Hardware, block: int | None = None,
              strided_1x1: bool = False) -> tuple[int, int]:
    """(rn, ov): output columns and channel blocks of the register tile.

    32 vector registers (AVX-512): rn a divisor of ow, the most accumulators (rn*ov) with
    every operand in a register (rn*ov accumulators, ov weight vectors, one broadcast input);
    wide over columns rather than channel blocks (measured on ResNet-18's 56x56x64 conv: 7x4
    and 14x2 tiles ~140 GFLOP/s, 4x4 ~90: each channel block is another weight stream), so 4
    blocks only when the row is too short to fill the registers otherwise.

    16 registers (AVX2), where a ``block``-lane channel block may take several registers
    (``hw.vectors``): ``_conv_tile_16``; ``strided_1x1``: a 1x1 conv with a stride above 1."""
    if hw.registers < 32:
        return _conv_tile_16(ow, ocb, hw, hw.vectors(block or hw.lanes), strided_1x1)
    best, best_score = (1, 1), -1.0
    for ov in (1, 2, 4):
        if ocb % ov:
            continue
        for rn in divisors(ow):
            if rn * ov + ov + 1 > hw.registers:
                continue
            score = rn * ov - (3 if ov == 4 else 0) + (0.5 if ov == 2 else 0)
            if score > best_score:
                best, best_score = (rn, ov), score
    return best


def _conv_tile_16(ow: int, ocb: int, hw: Hardware, vb: int, strided_1x1: bool = False) -> tuple[int, int]:
    """The register tile with 16 vector registers, ``vb`` of them per channel block.

    ``hw.max_accumulators`` accumulator registers, one channel block where that many fit
    (measured on Zen 3 with 16-lane blocks, two ymm each, one thread: rn=4 or 6 reach 76-92
    GFLOP/s on ResNet's 3x3 convs, rn=4 the better on 3 of 5 shapes; rn=7, i.e. 14
    accumulators plus two weight vectors and the broadcast, spills and runs at 46; 28
    accumulators (the AVX-512 tile) at 32-39).  rn need not divide ow: the last
    tile is guarded, and on a 7-wide row rn=4 (62 GFLOP/s) beats rn=7 (46) and 1x2 (30).
    Score: accumulators x the useful fraction of the padded row, fewer columns on ties.
    A strided 1x1 conv prefers two channel blocks (2 x 2 over 4 x 1): each input column it
    broadcasts is another cache line (no neighbouring column shares it), and 2 x 2 broadcasts
    half as many per FMA (ResNet-50's stride-2 1x1 convs per core on Zen 3, A/B at load 10:
    55 -> 70, 48 -> 56, 45 -> 49 GFLOP/s; 3x3 stride-2 convs were mixed, +9% and -11%)."""
    best, best_score = (1, 1), -1.0
    for ov in (1, 2, 4):
        if ocb % ov:
            continue
        for rn in range(1, ow + 1):
            acc = rn * ov * vb
            if acc > hw.max_accumulators(vb) or acc + ov * vb + 1 > hw.registers:
                continue
            useful = ow / (-(-ow // rn) * rn)
            score = acc * useful + ((0.5 if strided_1x1 else -0.5) if ov > 1 else 0)
            if score > best_score + 1e-9:
                best, best_score = (rn, ov), score
    return best


WEIGHT_CHUNK_BYTES = 8192  # 16 vector registers (AVX2): the weights one chunk of input channels takes


def weight_chunk(icb: int, kh: int, kw: int, ib: int, ob: int, ov: int, tiles: bool, hw: Hardware) -> int | None:
    """Input-channel blocks per chunk of the reduction (None: no chunks).  With 16 registers
    (AVX2) a tile's weights (all input channels x ``ov`` output blocks) are streamed from L2 for
    every few output columns: ResNet-50's 1x1 convs over 1024-2048 channels take 64-128 KB per
    output block.  In chunks of ``WEIGHT_CHUNK_BYTES`` the chunk's weights stay in L1 over the
    whole row's tiles (``tiles``: more than one), the accumulators go to the row's buffer between
    chunks.  Measured per core on Zen 3 at load 9-10, A/B in one process: ResNet-50's convs 63.9
    -> 58.6 ms in all (16 KB chunks 60.5, 32 KB 65.8), ResNet-18 35.9 -> 33.7, MobileNet-V2
    5.4 -> 5.0.  32 registers (AVX-512) keep the unchunked loop (not measured there)."""
    if hw.registers >= 32 or not tiles:
        return None
    return _divisor_chunk(icb, WEIGHT_CHUNK_BYTES // (kh * kw * ib * ob * ov * 4))


PLANE_CHUNK_BYTES = 18432  # one 16-channel block of a 3x3 conv's weights for 2 output blocks
PLANE_MAX_PIXELS = 64
PLANE_MIN_WEIGHTS = 256 << 10


def plane_chunk(icb: int, kh: int, kw: int, ib: int, ob: int, oh: int, ow: int, ov: int, hw: Hardware) -> int | None:
    """Input-channel blocks per chunk when a small output plane (at most ``PLANE_MAX_PIXELS``
    pixels: ResNet's 7x7) is reduced chunk by chunk over all its rows (None: no chunks).

    32 registers (AVX-512).  Unchunked, each output row streams its channel blocks' weights
    (``icb * kh * kw * ib * ob * ov`` floats, 590 KB for a 3x3 conv over 512 channels) from L2
    again; in chunks of ``PLANE_CHUNK_BYTES`` a chunk's weights serve all the plane's rows from
    L1, the plane's accumulators waiting in a local buffer (7 x 7 x ov vectors).  Measured on a
    Granite Rapids Xeon, one core, CPU time, alternating: 3x3 512ch 7x7 1.58 -> 1.44 ms, 1x1
    2048 -> 512 at 7x7 0.72 -> 0.63; 1x1 512 -> 2048 (131 KB per block) 0.72 -> 0.72-0.79, so
    only convs whose weights per output block reach ``PLANE_MIN_WEIGHTS``."""
    if hw.registers < 32 or oh * ow > PLANE_MAX_PIXELS or oh < 2 or PLANE_CHUNK_BYTES <= 0 \
            or icb * kh * kw * ib * ob * ov * 4 < PLANE_MIN_WEIGHTS:
        return None
    return _divisor_chunk(icb, PLANE_CHUNK_BYTES // (kh * kw * ib * ob * ov * 4))


def _divisor_chunk(icb: int, fit: int) -> int | None:
    """The largest divisor of ``icb`` channel blocks up to ``fit`` (at least 1), or None when all
    ``icb`` fit (no chunks)."""
    chunk = max(1, fit)
    if icb <= chunk:
        return None
    while icb % chunk:
        chunk -= 1
    return chunk


def _conv_strides(sch: s_tir.Schedule, conv) -> tuple[int, int] | None:
    """(sh, sw) of a conv block (None: not readable), from its input read ``x[.., y*sh + .., x*sw + .., ..]``."""
    from tvm.sym.pattern import detect_linear_equation

    b = sch.get(conv)
    y, x = b.iter_vars[2].var, b.iter_vars[3].var
    mins = [r.min for r in b.reads[0].region]
    if len(mins) < 4:
        return None
    cy, cx = detect_linear_equation(mins[2], [y]), detect_linear_equation(mins[3], [x])
    return (int(cy[0]), int(cx[0])) if len(cy) == 2 and len(cx) == 2 else None


def rows_first(input_bytes: int, weight_bytes: int) -> bool:
    """Whether a conv's parallel loop takes output rows before channel blocks: when its input outweighs its
    weights.  Channel blocks first, each core reads the whole input (half of it from the other core's L2,
    where the conv before wrote it) and half the weights; rows first, half the input (its own rows, which the
    conv before, rows first too, wrote on this core) and all the weights.  Measured on a Granite Rapids Xeon,
    2 threads, whole networks (one process, alternating, both build orders, quiet machine): ResNet-50 f32 0.93-0.97,
    MobileNet-V2 0.94-0.95 with its depthwise convs rows first too (``schedule_dwconv_nchwc``), ResNet-18 0.98;
    the 7x7 stages, whose weights outweigh their inputs, stay channel blocks first."""
    return input_bytes > weight_bytes


def schedule_conv2d_nchwc(sch: s_tir.Schedule, conv, hw: Hardware) -> None:
    b, o, y, x, oc, rc, ry, rx, ri = sch.get_loops(conv)
    ocb, ow = _extent(sch, o), _extent(sch, x)
    strides = _conv_strides(sch, conv)
    strided_1x1 = _extent(sch, ry) == _extent(sch, rx) == 1 and strides != (1, 1)
    rn, ov = tophub.choose("conv2d_nchwc", sch, conv, hw, conv_tile(ow, ocb, hw, _extent(sch, oc), strided_1x1))
    epilogue = _inline_epilogue(sch, conv)
    pad = [p for p in sch.get_producers(conv) if kernel_of(sch, p) == "pad"]
    if epilogue is not None:
        sch.set_scope(conv, 0, "local")

    sh, sw = strides or (1, 1)
    channels = _extent(sch, rc) * _extent(sch, ri)  # reduced per output channel: a grouped conv's group width
    groups = int(sch.get(conv).annotations.get(GROUPS_ATTR, 1))
    rows = rows_first(_extent(sch, y) * sh * ow * sw * channels * groups,  # in elements: both f32
                      ocb * _extent(sch, oc) * channels * _extent(sch, ry) * _extent(sch, rx))
    oo, oi = sch.split(o, [None, ov])
    xo, xi = sch.split(x, [None, rn])
    chunk = weight_chunk(*(_extent(sch, lp) for lp in (rc, ry, rx, ri, oc)), ov, ow > rn, hw)
    plane = None if chunk else plane_chunk(*(_extent(sch, lp) for lp in (rc, ry, rx, ri, oc, y)), ow, ov, hw)
    first = (oo, y)  # the parallel loops after the image
    if chunk:  # the reduction over channels in chunks, each chunk over the whole row's tiles
        rco, rci = sch.split(rc, [None, chunk])
        sch.reorder(b, oo, y, rco, xo, rci, ry, rx, ri, xi, oi, oc)
    elif plane:  # in chunks, each chunk over the whole output plane's tiles
        chunk, first = plane, (oo,)
        rco, rci = sch.split(rc, [None, chunk])
        sch.reorder(b, oo, rco, y, xo, rci, ry, rx, ri, xi, oi, oc)
    else:
        first = (y, oo) if rows else (oo, y)
        sch.reorder(b, *first, xo, rc, ry, rx, ri, xi, oi, oc)
    outer = sch.fuse(b, *first)
    sch.parallel(outer)
    sch.vectorize(oc)
    sch.unroll(oi)
    sch.unroll(xi)
    if epilogue is not None:  # at the tile, or after the row's last chunk
        _tile_epilogue(sch, epilogue, outer, depth=1) if chunk else _tile_epilogue(sch, epilogue, xo, depth=2)
    init = sch.decompose_reduction(conv, rco if chunk else rc)
    iloops = sch.get_loops(init)
    sch.vectorize(iloops[-1])
    for lp in iloops[-3:-1]:
        sch.unroll(lp)
    for p in pad:
        _parallel_copy(sch, p, hw.lanes)


def dw_tile(ow: int, hw: Hardware, vb: int = 1, sw: int = 1, kw: int = 3) -> int:
    """Output columns of a depthwise conv's register tile: the largest divisor of ow whose
    accumulators (``vb`` registers per column), the input vectors one tap row of the tile reads
    (``(d - 1) * sw + kw`` columns) and the tap's weight fit the registers.  (Accumulators alone let
    AVX-512 take 28-column tiles that spill: MobileNet-V2's depthwise kernels on Zen 4, each alone with the
    template tuner's timer in a scratch script, 1.3-1.65x slower than any tile up to 14 columns; the shipped
    database's tuned tiles are 1-7.)"""
    def fits(d: int) -> bool:
        return d * vb <= hw.max_accumulators(vb) and (d + (d - 1) * sw + kw) * vb + 1 <= hw.registers

    return max(d for d in divisors(ow) if d == 1 or fits(d))


# the padded input rows one chunk of a depthwise conv's output rows reads, in L2: each padded row is converted
# (int8) or copied (f32) once per chunk, so a chunk of r output rows at stride s redoes (kh - s) of its
# (r - 1) * s + kh rows.  24 KB (in L1) kept MobileNet-V2's 112- and 56-wide convs at one output row per chunk,
# every input row padded kh / s times; on Zen 4 (32 KB L1, 1 MB L2), per-kernel medians in the network's
# profile (15 / 11 alternating profiles, scratch A/B): int8 depthwise kernels 0.515 -> 0.479 ms (96 x 112 x 112
# stride 2 0.083 -> 0.072, 32 x 112 x 112 0.076 -> 0.060), f32 0.637 -> 0.578; 64 KB as good for f32, 256 KB
# no better
DW_PAD_BYTES = 131072
DW_MIN_CHUNKS = 16  # parallel work items (channel blocks x row chunks) a chunk size must leave


def dw_rows(oh: int, cb: int, kh: int, kw: int, sh: int, sw: int, ow: int, lanes: int) -> int:
    """Output rows of a depthwise conv per parallel work item, whose padded input rows
    (``(rows - 1) * sh + kh``, one channel block) are computed into one local buffer: the largest
    divisor of ``oh`` whose buffer fits ``DW_PAD_BYTES`` and that leaves ``DW_MIN_CHUNKS`` items.
    One row per item pads each input row ``kh / sh`` times."""
    width = ((ow - 1) * sw + kw) * lanes * 4  # bytes of one padded input row
    best = 1
    for r in divisors(oh):
        if ((r - 1) * sh + kh) * width <= DW_PAD_BYTES and cb * (oh // r) >= DW_MIN_CHUNKS:
            best = r
    return best


def schedule_dwconv_nchwc(sch: s_tir.Schedule, conv, hw: Hardware) -> None:
    b, c, y, x, k, ry, rx = sch.get_loops(conv)
    ow = _extent(sch, x)
    sh, sw = _conv_strides(sch, conv) or (1, 1)
    rn, = tophub.choose("dwconv_nchwc", sch, conv, hw,
                        (dw_tile(ow, hw, hw.vectors(_extent(sch, k)), sw, _extent(sch, rx)),))
    epilogue = _inline_epilogue(sch, conv)
    pad = [p for p in sch.get_producers(conv) if kernel_of(sch, p) == "pad"]
    if epilogue is not None:
        sch.set_scope(conv, 0, "local")
    xo, xi = sch.split(x, [None, rn])
    chunk = dw_rows(_extent(sch, y), _extent(sch, c), _extent(sch, ry), _extent(sch, rx), sh, sw, ow,
                    _extent(sch, k)) if pad else 1
    yo, yi = sch.split(y, [None, chunk])
    sch.reorder(b, yo, c, yi, xo, ry, rx, xi, k)  # rows first, as the 1x1 convs around it (``rows_first``)
    rows = sch.fuse(b, yo, c)
    sch.parallel(rows)
    sch.vectorize(k)
    sch.unroll(xi)
    sch.unroll(rx)  # the rn + kw - 1 input vectors of a row, each loaded once (stride 1)
    if epilogue is not None:
        _tile_epilogue(sch, epilogue, xo, depth=3)
    init = sch.decompose_reduction(conv, ry)
    iloops = sch.get_loops(init)
    sch.vectorize(iloops[-1])
    sch.unroll(iloops[-2])
    for p in pad:  # the kh padded input rows of this output row, in a local buffer (L1)
        sch.set_scope(p, 0, "local")
        sch.compute_at(p, rows)
        _vectorize_inner(sch, p, hw.lanes)


# ---- GEMM -------------------------------------------------------------------------------
def gemm_tile(m: int, nvecs: int, hw: Hardware, vb: int = 1, pad_cols: bool = False) -> tuple[int, int]:
    """(rm, nv): rows and column vectors of the register tile; rm need not divide m.  A column
    vector takes ``vb`` registers (16-lane packed columns on AVX2: 2 ymm; the tile then is
    the classic 6x16 of AVX2 GEMMs: 12 accumulators, 2 column vectors, 1 broadcast).
    ``pad_cols``: the columns may be padded to a multiple of ``nv`` vectors (an einsum is padded
    anyway), the padding counted as waste; else ``nv`` divides ``nvecs``.  (Attention's 197
    tokens are 25 vectors of 8: without padding only 1 x 8 column tiles fit, 11 x 1 tiles with
    12 loads per 11 FMAs.)"""
    # 16 registers: one left spare (ViT-S's attention matmuls on Zen 3, per core: 6 x 2 vectors
    # of 8, 15 registers, 53-73 GFLOP/s; 4 x 3, all 16, 52-62; 11 x 1, 43-59)
    free = hw.registers - (1 if hw.registers < 32 else 0)
    best, best_score = (1, 1), -1.0
    for nv in (1, 2, 3, 4):
        if nvecs % nv and not pad_cols:
            continue
        col_waste = (-nvecs) % nv / (nvecs + (-nvecs) % nv)
        for rm in range(1, min(m, hw.accumulators) + 1):
            if (rm * nv + nv) * vb + 1 > free or rm * nv * vb > hw.max_accumulators(vb, m % rm != 0):
                continue  # accumulators + column vectors + one broadcast
            waste = (-m) % rm / m  # padded rows of the last tile
            score = rm * nv * vb / (rm + nv * vb) * (1 - waste) * (1 - col_waste)
            if score > best_score + 1e-9:
                best, best_score = (rm, nv), score
    return best


def dense_rows(m: int, nvecs: int, hw: Hardware, vb: int) -> int:
    """Rows a packed GEMM over ``m`` rows computes (``kernels.dense_packed``'s ``rows``, the
    Winograd GEMM's tiles): ``m``, or ``m`` padded to a multiple of the register tile's rows where
    that pays.  The padded rows repeat the last row and are never stored.

    16 registers with two-register column vectors: a guarded partial tile limits the tile to 8
    accumulators (``Hardware.max_accumulators``): ViT-S's 197 tokens -> 198 rows, 6x16 tiles.
    32 registers (AVX-512): a guarded tile may run at a third of the unguarded one's speed
    (measured on a Granite Rapids Xeon, one core, CPU time: ResNet-18's Winograd GEMM over 196
    tiles x 64 channels, 6 x 4 vectors, 1.08 ms guarded, 0.34 ms over 198 rows; 5 x 4 and 7 x 4
    over 196 rows 0.35), so a tile that does not divide the rows counts half."""
    if m < 2 or (hw.registers < 32 and vb == 1):
        return m

    def score(rows: int) -> float:
        rm, nv = gemm_tile(rows, nvecs, hw, vb)
        guard = 0.5 if hw.registers >= 32 and rows % rm else 1.0
        return rm * nv * vb / (rm + nv * vb) * (1 - (-rows) % rm / rows) * m / rows * guard

    return max([m] + [-(-m // r) * r for r in range(2, 7)], key=lambda rows: (score(rows) + 1e-9 * (rows == m), -rows))


def schedule_gemm(sch: s_tir.Schedule, block, hw: Hardware, lanes: int | None = None) -> None:
    """A block with iterators (spatial..., m, n, k): C[..., m, n] += A[..., m, k] * B[..., k, n].

    ``lanes`` given: the columns come packed in blocks of that many (dense_packed).  Else the
    block is a plain einsum, padded (``pad_einsum``) to whole tiles when its rows or columns
    do not divide (attention's 197 tokens), the padding copies computed apart."""
    kinds = _iter_kinds(sch, block)
    if not (kinds.endswith("SR") and kinds.count("R") == 1 and "O" not in kinds):
        raise _Skip(f"not a GEMM iteration space: {kinds}")
    name = sch.get(block).name_hint
    loops = sch.get_loops(block)
    if len(loops) < 2:
        raise _Skip("too few loops")
    *lead, n, k = loops
    nn = _extent(sch, n)
    # rows: a symbolic count (a dynamic batch) is tiled as one row, the tile of a batch of 1
    mm = (_static_extent(sch, lead[-1]) or 1) if lead else 1
    einsum = lanes is None
    lanes = lanes or hw.lanes
    rm, nv = tophub.choose("gemm", sch, block, hw, gemm_tile(mm, -(-nn // lanes), hw, hw.vectors(lanes),
                                                                 pad_cols=einsum and hw.registers < 32),
                           lanes=lanes)
    if einsum and (nn % (lanes * nv) or mm % rm):
        sch.pad_einsum(block, [1] * (len(lead) - 1) + ([rm] if lead else []) + [lanes * nv, 1])
        block = sch.get_sblock(name)
        *lead, n, k = sch.get_loops(block)
        nn = _extent(sch, n)
    if nn % lanes:
        raise _Skip("columns not a multiple of the lanes")
    copies = [b for b in _root_blocks(sch) if sch.get(b).name_hint != name]
    epilogue = _inline_epilogue(sch, block)
    # rows: the last leading axis; batch axes stay outside
    batch, m = (lead[:-1], lead[-1]) if lead else ([], None)
    if epilogue is not None:
        sch.set_scope(block, 0, "local")
    no, nvl, nl = sch.split(n, [None, nv, lanes])
    if m is not None:
        mo, mi = sch.split(m, [None, rm])
        sch.reorder(*batch, no, mo, k, mi, nvl, nl)
        par = [*batch, no, mo]
        inner = sch.get(block).annotations.get(K_INNER_ATTR)
        if inner is not None and _extent(sch, k) % int(inner) == 0:  # k = (k / inner, k % inner): plain
            k = sch.split(k, [None, int(inner)])[0]  # addresses for an operand read as [.., k / inner, .., k % inner]
    else:
        mi = None
        sch.reorder(*batch, no, k, nvl, nl)
        par = [*batch, no]
    outer = sch.fuse(*par) if len(par) > 1 else par[0]
    sch.parallel(outer)
    sch.vectorize(nl)
    sch.unroll(nvl)
    if mi is not None:
        sch.unroll(mi)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, outer)
        eloops = sch.get_loops(epilogue)[1:]
        inner = eloops[-1]
        if _extent(sch, inner) % lanes == 0 and _extent(sch, inner) > lanes:
            inner = sch.split(inner, [None, lanes])[1]
        sch.vectorize(inner)
    init = sch.decompose_reduction(block, k)
    iloops = sch.get_loops(init)
    sch.vectorize(iloops[-1])
    sch.unroll(iloops[-2])
    if mi is not None:
        sch.unroll(iloops[-3])
    live = {sch.get(b).name_hint for b in _root_blocks(sch)}
    for b in copies:  # operand padding copies (pad_einsum), still at the root
        try:
            if sch.get(b).name_hint in live and _is_elementwise_chain_member(sch, b):
                _parallel_copy(sch, b, hw.lanes)
        except Exception:  # noqa: BLE001 - inlined or moved meanwhile
            pass


def schedule_dense_packed(sch: s_tir.Schedule, block, hw: Hardware) -> None:
    # [..., m, n, k]: the leading axes stay batch axes.  (Fusing them into the rows would
    # give the tile a non-rectangular set of rows, and the epilogue computed at the tile
    # would then cover rows of other tiles.)
    nb = int(sch.get(block).reads[1].source.shape[-1])
    schedule_gemm(sch, block, hw, lanes=nb)


L1_BYTES = 32 * 1024  # the L1 data cache assumed (Zen 4's; Ice Lake and later have 48 KB)
ATTENTION_IN_L1 = True
# a task's logits, weights, row maxima and sums "local": small buffers on the stack (tir_pipeline), not two
# workspace calls each per task (ViT-S's kernel alone 342 -> 329 us on Zen 4)
ATTENTION_LOCAL = True


def attention_tiles(length: int, d: int, hw: Hardware, keys: int = 0) -> tuple[int, int]:
    """(rows, pv_rows) of ``kernels.attention_rows``: the query rows of one task and the rows of
    P V's register tile (``gemm_tile`` over d's vectors).  ``rows`` is a multiple of ``pv_rows``
    (the task's rows are whole P V tiles) of at most the accumulators (Q K^T's tile is ``rows`` x one
    vector of keys), the one that pads ``length`` least; on ties, the largest whose logits and weights
    over ``keys`` (f32, 2 x rows x keys x 4 bytes) take at most half of L1, leaving the rest to the K
    and V rows streamed past them (ViT-S: 197 queries, 208 keys, d 64 -> 6, 198 rows; 18 rows pad as little
    but their 30 KB left V's rows no room: the kernel alone 356 -> 342 us on Zen 4), else the largest (long
    sequences: every task reads all of K and V, so fewer tasks read less)."""
    pv_rows = gemm_tile(length, max(1, d // hw.lanes), hw)[0]
    options = range(pv_rows, max(pv_rows, hw.accumulators) + 1, pv_rows)

    def spills(r: int) -> bool:
        return ATTENTION_IN_L1 and 2 * r * keys * 4 > L1_BYTES // 2

    rows = min(options, key=lambda r: (-(-length // r) * r, spills(r), -r))
    return rows, pv_rows


def schedule_attention_rows(sch: s_tir.Schedule, block, hw: Hardware) -> None:
    """``kernels.attention_rows``: (batch, heads, row blocks) parallel; inside a task, for its
    ``rows`` queries: Q K^T as a ``rows`` x 1-vector register tile per vector of keys (d
    innermost-but-one), the row max and sum as lanes-wide partials (vectorized), the weights
    (vectorized exp), P V as ``gemm_tile``'s tiles over d, the division last."""
    rows = int(sch.get(block).annotations[ROWS_ATTR])
    qk, out = block, sch.get_sblock("attention_out")
    d = _extent(sch, sch.get_loops(out)[-1])
    if d % hw.lanes or _extent(sch, sch.get_loops(qk)[-2]) % hw.lanes:
        raise _Skip("d or the keys not whole vectors")
    # P V's tile rows: the model's for the task's rows (attention_tiles made the rows a multiple of it for
    # the whole query length), else the largest divisor of the rows below that
    cap = gemm_tile(rows, max(1, d // hw.lanes), hw)[0]
    pv_rows = max(r for r in divisors(rows) if r <= cap)
    lanes = hw.lanes
    kept = {"attention_qk", "attention_part_max", "attention_max", "attention_weight", "attention_part_sum",
            "attention_sum", "attention_pv", "attention_out"}
    names = [sch.get(b).name_hint for b in _root_blocks(sch)]
    for name in names[:names.index("attention_out")]:  # the logits' shift, fast_exp's stages: in the weights
        if name not in kept:
            sch.compute_inline(sch.get_sblock(name))
    epilogue = _inline_epilogue(sch, out)  # what FuseOps put after it (the padded queries sliced off)
    b, h, i, o = sch.get_loops(out)
    io, _ = sch.split(i, [None, rows])
    task = sch.fuse(b, h, io)
    sch.parallel(task)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, task)
        inner = sch.get_loops(epilogue)[-1]
        if _extent(sch, inner) % lanes == 0:
            sch.vectorize(sch.split(inner, [None, lanes])[1])
    for name in ("attention_pv", "attention_sum", "attention_part_sum", "attention_weight", "attention_max",
                 "attention_part_max", "attention_qk"):
        sch.compute_at(sch.get_sblock(name), task, preserve_unit_loops=True)
        if ATTENTION_LOCAL:
            sch.set_scope(sch.get_sblock(name), 0, "local")
    # Q K^T: for each vector of keys, d steps of ``rows`` broadcast FMAs
    *_, ii, j, c = sch.get_loops(qk)
    jo, jl = sch.split(j, [None, lanes])
    sch.reorder(jo, c, ii, jl)
    sch.unroll(ii)
    sch.vectorize(jl)
    init = sch.decompose_reduction(qk, c)
    iloops = sch.get_loops(init)
    sch.vectorize(iloops[-1])
    sch.unroll(iloops[-2])
    for name in ("attention_part_max", "attention_part_sum"):  # (row, lanes, key vectors) -> lanes innermost
        part = sch.get_sblock(name)
        *_, e, jv = sch.get_loops(part)
        sch.reorder(jv, e)
        sch.vectorize(e)
        init = sch.decompose_reduction(part, jv)
        sch.vectorize(sch.get_loops(init)[-1])
    weight = sch.get_sblock("attention_weight")
    sch.vectorize(sch.split(sch.get_loops(weight)[-1], [None, lanes])[1])
    # P V: tiles of pv_rows x (d / lanes) vectors, the keys between the tile loop and the tile
    pv = sch.get_sblock("attention_pv")
    *_, ii, o, j = sch.get_loops(pv)
    iio, iii = sch.split(ii, [None, pv_rows])
    oo, ol = sch.split(o, [None, lanes])
    sch.reorder(iio, j, iii, oo, ol)
    sch.unroll(iii)
    sch.unroll(oo)
    sch.vectorize(ol)
    init = sch.decompose_reduction(pv, j)
    iloops = sch.get_loops(init)
    sch.vectorize(iloops[-1])
    for lp in iloops[-3:-1]:
        sch.unroll(lp)
    sch.vectorize(sch.split(sch.get_loops(out)[-1], [None, lanes])[1])


# ---- the rest ---------------------------------------------------------------------------
def schedule_generic(sch: s_tir.Schedule, hw: Hardware) -> None:
    """Inline elementwise chains, then parallelize and vectorize each root block."""
    blocks = _root_blocks(sch)
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    for b in blocks:
        if sch.get(b).name_hint in outputs:
            continue
        try:
            sch.compute_inline(b)
        except Exception:
            pass
    for b in _root_blocks(sch):
        kinds = _iter_kinds(sch, b)
        loops = sch.get_loops(b)
        if not loops or "O" in kinds:
            continue
        lead = 0
        for kind, lp in zip(kinds, loops):
            if kind != "S":
                break
            lead += 1
        if len(loops) != len(kinds):  # loops were already transformed; leave it
            continue
        spatial_only = lead == len(loops)
        par = loops[:lead - 1] if spatial_only and lead > 1 else loops[:lead]
        par = [lp for lp in par]
        if par:
            fused = sch.fuse(*par) if len(par) > 1 else par[0]
            if (_static_extent(sch, fused) or 2) > 1:  # symbolic: a dynamic batch, parallel
                sch.parallel(fused)
        if spatial_only:
            _vectorize_inner(sch, b, hw.lanes)


POOL_BLOCKS = ("pool_max", "pool_sum")  # topi.nn.pool2d's window reductions


def schedule_window_pool(sch: s_tir.Schedule, hw: Hardware) -> None:
    """A max/avg pooling window over the blocked layout (``topi.nn.pool2d`` on NCHW[x]c):
    [n, c, oh, ow, lanes] reduced over (kh, kw).  ``(n, c, oh)`` parallel, then ``ow``, the
    window unrolled, the channel lanes one vector: each output column is kh * kw vector maxes
    (or adds), the padding's bounds test per window position, not per lane.  (The generic
    schedule fused every spatial loop into one parallel loop of scalar reductions: ResNet's
    stem max pool 0.9 ms on a core, 2 GFLOP/s.)  An avg pool's division is computed per column."""
    pools = [b for b in _root_blocks(sch) if sch.get(b).name_hint in POOL_BLOCKS]
    if len(pools) != 1 or not _iter_kinds(sch, pools[0]).endswith("SRR"):
        raise _Skip("not a window pool")
    block = pools[0]
    loops = sch.get_loops(block)
    if len(loops) < 4 or (_static_extent(sch, loops[-3]) or 0) not in (4, 8, 16, 32, 64):
        raise _Skip("pool not over a channel block")
    for b in sch.get_producers(block):  # the padding: read through it
        sch.compute_inline(b)
    epilogue = _inline_epilogue(sch, block)
    *spatial, ow, lane, r0, r1 = sch.get_loops(block)
    sch.reorder(ow, r0, r1, lane)
    par = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    sch.parallel(par)
    if _extent(sch, lane) > hw.lanes:
        lo, lane = sch.split(lane, [None, hw.lanes])
        sch.reorder(lo, r0, r1, lane)
    sch.unroll(r0)
    sch.unroll(r1)
    sch.vectorize(lane)
    if epilogue is not None:
        sch.set_scope(block, 0, "local")
        sch.reverse_compute_at(epilogue, ow)
        _vectorize_inner(sch, epilogue, hw.lanes)
    init = sch.decompose_reduction(block, r0)
    _vectorize_inner(sch, init, hw.lanes)


def schedule_rows(sch: s_tir.Schedule, hw: Hardware) -> None:
    """Row-wise reductions (softmax, layer norm, mean): every block shares the leading
    spatial axes (the rows); those are fused and parallel on the last block, the other
    blocks computed inside one row, and injective inner loops vectorized: whole vectors, and
    where the lanes do not divide a row longer than two vectors the rest after them as
    scalars (``loop_partition``; a predicated vector loop would be scalarized, and LLVM's
    loop vectorizer left ViT-S's 197-column softmax scalar: 0.35 -> 0.23 ms a call)."""
    blocks = _root_blocks(sch)
    if len(blocks) < 2:
        raise _Skip("one block")
    kinds = [_iter_kinds(sch, b) for b in blocks]
    if "R" in kinds[-1] or not any("R" in k for k in kinds) or any("O" in k or not k for k in kinds):
        raise _Skip("not rows of reductions")
    lead = min(len(k) - len(k.lstrip("S")) for k in kinds)
    if lead == 0:
        raise _Skip("a block has no leading spatial axis")
    rfs = [rf for b in blocks[:-1] for rf in [_row_rfactor(sch, b, hw)] if rf is not None]
    blocks = _root_blocks(sch)
    last = blocks[-1]
    loops = sch.get_loops(last)
    if lead == len(loops):  # keep one inner loop in the row
        lead -= 1
    if lead == 0:
        raise _Skip("nothing to parallelize")
    rows = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    sch.parallel(rows)
    for b in reversed(blocks[:-1]):
        sch.compute_at(b, rows, preserve_unit_loops=True)
    for b in blocks[:-1]:
        _channel_lanes_last(sch, b)
    for rf in rfs:  # loops (row, lanes, unit loops..., row / lanes): the lanes innermost, vectorized
        try:
            lp = sch.get_loops(rf)
            lanes = next(x for x in lp[1:] if _extent(sch, x) == hw.lanes)
            sch.reorder(lp[-1], lanes)
            sch.vectorize(lanes)
        except Exception:  # noqa: BLE001 - left scalar: still lanes independent chains
            pass
    for b in blocks:
        inner = sch.get_loops(b)[-1]
        n = _static_extent(sch, inner)
        if "R" in _iter_kinds(sch, b) or n is None or n < 2:
            continue
        if n % hw.lanes == 0 and n > hw.lanes:
            inner = sch.split(inner, [None, hw.lanes])[1]
            sch.vectorize(inner)
        elif n > 2 * hw.lanes:  # whole vectors, then the rest (ViT's 197 keys: 24 vectors and 5 scalars)
            body, _ = sch.loop_partition(inner, [n - n % hw.lanes, None])
            sch.vectorize(sch.split(body, [None, hw.lanes])[1])
        elif n <= hw.lanes and n in (4, 8, 16):
            sch.vectorize(inner)


def _channel_lanes_last(sch: s_tir.Schedule, block) -> None:
    """A sum over pixels of the blocked layout inside its row (the global average pool of NCHW[x]c, a
    squeeze-and-excitation's: loops channel lanes, then the window's rows and columns): the lanes moved inside
    the window, one add of contiguous lanes per pixel (unrolled: TVM's vectorize refuses a loop inside its
    block's reduction loops, and LLVM makes the unrolled adds one vector add), where each lane summed its window
    alone in a chain of dependent scalar adds (RegNetY-400MF's 56 x 56 x 48 pool alone, a scratch timing: 62 -> 8
    us).  The order of each lane's additions is unchanged.  Nothing changes for other blocks, nor where the lanes
    are not the contiguous axis of every buffer the block reads and writes."""
    kinds = _iter_kinds(sch, block)
    loops = sch.get_loops(block)
    reds = len(kinds) - len(kinds.rstrip("R"))
    if reds < 2 or len(loops) < reds + 1 or kinds[:-reds].count("R"):
        return
    lanes = loops[-reds - 1]
    if _static_extent(sch, lanes) not in (4, 8, 16) or kinds[-reds - 1] != "S":
        return
    b = sch.get(block)
    lane_var = b.iter_vars[len(kinds) - reds - 1].var
    last = [r.region[-1].min for r in (*b.reads, *b.writes)]  # the lanes must be every buffer's contiguous axis
    if not all(isinstance(m, tirx.Var) and m.same_as(lane_var) for m in last):
        return
    sch.reorder(*loops[-reds:], lanes)
    init = sch.decompose_reduction(block, loops[-reds])
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(sch.get_loops(block)[-1])


def _row_rfactor(sch: s_tir.Schedule, block, hw: Hardware):
    """A sum or max along a row as ``lanes`` partial results (rfactor; its block returned, to be
    vectorized over them once in the row): one vector instruction per ``lanes`` elements instead
    of a chain of dependent scalar ones (a 384-wide layer norm row: 384 adds of 4 cycles' latency,
    twice).  The order of the additions changes (within float rounding).  None, with nothing
    changed, when the lanes do not divide the row or the block is not a plain reduction over its
    innermost loop."""
    kinds = _iter_kinds(sch, block)
    loops = sch.get_loops(block)
    if not kinds.endswith("R") or kinds.count("R") != 1 or len(loops) != len(kinds):
        return None
    n = _extent(sch, loops[-1])
    if n % hw.lanes or n < 2 * hw.lanes:
        return None
    try:  # a failing primitive leaves the schedule as it was; a split alone changes nothing computed
        _, ki = sch.split(loops[-1], [None, hw.lanes])
        return sch.rfactor(ki, factor_axis=len(sch.get(block).writes[0].source.shape))
    except Exception:  # noqa: BLE001 - rfactor does not apply (e.g. an argmax): the scalar loop stays
        return None


def schedule_matmul_like(sch: s_tir.Schedule, hw: Hardware) -> bool:
    """A legalized matmul (T_matmul/NT_matmul/matmul) with an elementwise epilogue."""
    for b in _root_blocks(sch):
        name = sch.get(b).name_hint
        if "matmul" in name.lower() and _iter_kinds(sch, b).endswith("SR"):
            producers = sch.get_producers(b)
            for p in producers:  # broadcast/transposes of operands computed inline
                try:
                    sch.compute_inline(p)
                except Exception:
                    pass
            schedule_gemm(sch, b, hw)
            return True
    return False


# ---- bf16 kernels (bf16.py: their compute and the vdpbf16ps intrinsic) ---------------------------------
def schedule_conv2d_nchwc_bf16(sch: s_tir.Schedule, conv, hw) -> None:
    b, o, y, x, oc, rc, ry, rx, rp, r2 = sch.get_loops(conv)
    ocb, ow = _extent(sch, o), _extent(sch, x)
    rn, ov = tophub.choose("conv2d_nchwc", sch, conv, hw, conv_tile(ow, ocb, hw))
    epilogue = _inline_epilogue(sch, conv)
    copies = [p for p in sch.get_producers(conv) if kernel_of(sch, p) == "pad"]
    pads = [q for p in copies for q in sch.get_producers(p) if kernel_of(sch, q) == "pad"]
    for p in pads:  # zero padding and rounding: one copy
        sch.compute_inline(p)
    if epilogue is not None:
        sch.set_scope(conv, 0, "local")
    oo, oi = sch.split(o, [None, ov])
    xo, xi = sch.split(x, [None, rn])
    sch.reorder(b, oo, y, xo, rc, ry, rx, rp, xi, oi, oc, r2)
    sch.parallel(sch.fuse(b, oo, y))
    if epilogue is not None:
        _tile_epilogue(sch, epilogue, xo, depth=2)
    init = sch.decompose_reduction(conv, rc)
    iloops = sch.get_loops(init)
    sch.vectorize(iloops[-1])
    for lp in iloops[-3:-1]:
        sch.unroll(lp)
    sch.tensorize(oc, bf16.register_intrinsic("local" if epilogue is not None else "global", _extent(sch, oc)))
    sch.unroll(oi)
    sch.unroll(xi)
    for p in copies:
        _parallel_copy(sch, p, hw.lanes)


def schedule_dense_packed_bf16(sch: s_tir.Schedule, block, hw) -> None:
    *lead, n, rp, r2 = sch.get_loops(block)
    nn = _extent(sch, n)
    mm = _extent(sch, lead[-1]) if lead else 1
    rm, nv = tophub.choose("gemm", sch, block, hw, gemm_tile(mm, nn // bf16.LANES, hw), lanes=bf16.LANES)
    # tensorize fails under a partial tile's row guard: the rows were padded to gemm_tile's rm
    # (layout.py); a database entry with another rm takes the largest one that divides them
    rm = max(r for r in range(1, rm + 1) if mm % r == 0)
    copies = [p for p in sch.get_producers(block) if kernel_of(sch, p) == "pack"]
    epilogue = _inline_epilogue(sch, block)
    batch, m = (lead[:-1], lead[-1]) if lead else ([], None)
    if epilogue is not None:
        sch.set_scope(block, 0, "local")
    no, nvl, nl = sch.split(n, [None, nv, bf16.LANES])
    if m is not None:
        mo, mi = sch.split(m, [None, rm])
        sch.reorder(*batch, no, mo, rp, mi, nvl, nl, r2)
        par = [*batch, no, mo]
    else:
        mi = None
        sch.reorder(*batch, no, rp, nvl, nl, r2)
        par = [*batch, no]
    outer = sch.fuse(*par) if len(par) > 1 else par[0]
    sch.parallel(outer)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, outer)
        inner = sch.get_loops(epilogue)[-1]
        if _extent(sch, inner) % bf16.LANES == 0 and _extent(sch, inner) > bf16.LANES:
            inner = sch.split(inner, [None, bf16.LANES])[1]
        sch.vectorize(inner)
    init = sch.decompose_reduction(block, rp)
    iloops = sch.get_loops(init)
    sch.vectorize(iloops[-1])
    sch.unroll(iloops[-2])
    if mi is not None:
        sch.unroll(iloops[-3])
    sch.tensorize(nl, bf16.register_intrinsic("local" if epilogue is not None else "global"))
    sch.unroll(nvl)
    if mi is not None:
        sch.unroll(mi)
    for p in copies:
        _parallel_copy(sch, p, hw.lanes)


BF16_RULES = {
    "conv2d_nchwc_bf16": schedule_conv2d_nchwc_bf16,
    "dense_packed_bf16": schedule_dense_packed_bf16,
}
RULES = {
    "conv2d_nchwc": schedule_conv2d_nchwc,
    "dwconv_nchwc": schedule_dwconv_nchwc,
    "dense_packed": schedule_dense_packed,
    "attention_rows": schedule_attention_rows,
    **BF16_RULES,
}


def _debug(func, rule: str, e: Exception) -> None:
    if os.environ.get("CONVDSL_SCHEDULE_DEBUG"):
        print(f"[schedules] {rule} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)


def schedule_func(func: tirx.PrimFunc, target) -> tirx.PrimFunc | None:
    """The scheduled function, or None when no rule applied (the function is left as is)."""
    hw = Hardware.of(target)
    sch = s_tir.Schedule(func)
    for b in _root_blocks(sch):
        kind = kernel_of(sch, b)
        rule = RULES.get(kind)
        if rule is not None:
            try:
                rule(sch, b, hw)
                return bf16.with_llvm_import(sch.mod["main"]) if kind in BF16_RULES else sch.mod["main"]
            except Exception as e:  # noqa: BLE001 - the rule does not fit: fall through
                _debug(func, rule.__name__, e)
                sch = s_tir.Schedule(func)
                break
    try:
        schedule_window_pool(sch, hw)
        return sch.mod["main"]
    except Exception as e:  # noqa: BLE001 - not a window pool
        _debug(func, "schedule_window_pool", e)
        sch = s_tir.Schedule(func)
    try:
        if schedule_matmul_like(sch, hw):
            return sch.mod["main"]
    except Exception:
        sch = s_tir.Schedule(func)
    try:
        schedule_rows(sch, hw)
        return sch.mod["main"]
    except Exception as e:  # noqa: BLE001 - not row reductions
        _debug(func, "schedule_rows", e)
        sch = s_tir.Schedule(func)
    try:
        schedule_generic(sch, hw)
        return sch.mod["main"]
    except Exception:
        return None
