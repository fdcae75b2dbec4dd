"""The schedule of convdsl's int8 kernel on x86: AVX-512 VNNI (``vpdpbusd``, u8 x s8 -> s32).

``lower_quant.vnni_conv2d`` (qconv2d, qconv1d, qlinear on CPU) is a TE kernel of three
blocks, each annotated ``convdsl.vnni``: ``pack`` (NCHW u8 -> NCHW[4c], padded with the
zero point), ``conv`` (int32 accumulation, [N, OC/16, OH, OW, 16] over
[IC/4, KH, KW, 4]) and ``requant`` (the epilogue, back to NCHW); FuseOps may have
appended elementwise float ops (residual add, relu, the next quantize) after it.

The schedule (no tuning):

    parallel  n, oc/16 tiles, oh                   (one output row of a channel block per task;
                                                    n, oh, oc/16 tiles when the input outweighs the
                                                    weights: cpu.rows_first)
      for     ow tiles
        init  acc[ob_t, ow_t, 16] = 0             (vectorized, stays in zmm registers)
        for   ic/4, kh, kw
          for ob_t, ow_t (unrolled)               register tile: ob_t x ow_t accumulators <= 15
            vpdpbusd acc[ob, ow, 0:16] += bcast(x[4]) . W[16, 4]      (tensorized, ``dot_16x4_vnni``)
        epilogue of the tile: + bias, * multiplier, round, clamp, zero point, fused float ops

The accumulator tile (at most 15 x 64 bytes) is under TVM's stack-allocation limit, so it
is an alloca that LLVM keeps in zmm registers.

Output channels a multiple of 8 and not of 16 (MobileNet-V2's 24-channel projections) take 8 x 4 weight
blocks (``lower_quant.int8_layout``) and the same nest on ymm registers (``dot_8x4_vnni``: ``vpdpbusd``
with AVX512VL): nothing is computed for padding channels, and the output is written in 8-channel blocks
that the next conv reads as they are (layout.py), where 16-channel blocks meant NCHW on both sides, an
unpack before the conv and a pack after it.  MobileNet-V2 int8, Zen 4, 2 threads, a scratch A/B in one
process toggling ``lower_quant.VNNI_YMM``, 21 alternating rounds: 2.00 -> 1.88 ms, outputs identical.

Without AVX-512 VNNI (AVX2, AVX-512 without VNNI) the kernel is lowered for the target in one of
AVX2's two layouts (``lower_quant.int8_layout``, per layer, from its weights):

- weights whose pairs cannot saturate int16 (``lower_quant.maddubs_exact``; 7-bit weights, which
  ``convdsl quantize`` makes on such a CPU, always): bytes ``[oc/8][ic/4][kh][kw][8][4]``, u8
  activations packed as for VNNI, and the inner 8 x 4 dot product tensorized to ``vpmaddubsw``
  (u8 x s8, pairs summed in int16: exact for these weights) + ``vpmaddwd`` with ones (the two
  pairs of a lane summed into int32) + ``vpaddd`` (``register_maddubs_intrinsic``), register tile
  ``maddubs_register_tile`` (at most 12 ymm accumulators), or one pixel by up to 13 blocks for a 1x1
  conv reading 8-channel blocks (``maddubs_pointwise_tile``);
- other weights (8-bit): int16 pairs ``[oc/8][ic/2][kh][kw][8][2]``, activations widened to
  int16 once, when they are packed, and the inner 8 x 2 dot product tensorized to one
  ``vpmaddwd`` (``register_madd_intrinsic``: the activation pair broadcast to 8 lanes, times
  8 x 2 weights, pairs summed exactly in int32), register tile ``madd_register_tile``.

``vpmaddubsw`` never sees weights whose int16 pair sums could saturate, so both are exact.  A
kernel still in VNNI's byte layout on such a CPU (lowered without the target) runs the old
untensorized nest (``_schedule_avx2``: exact, but the [16 x 4] bytes are gathered with byte
inserts, ~20x slower; it warns once).
"""
from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from convdsl.backends.tvm.schedules import cpu, tophub
from convdsl.backends.tvm.schedules.kernels import GROUPS_ATTR, divisors, target_has

VNNI_ATTR = "convdsl.vnni"  # same key as backends/tvm/lower_quant.py
# the conv block's instruction (lower_quant.Int8Layout.instruction, which lower_quant.vnni_conv2d annotates):
# AVX2's vpmaddubsw and VNNI's ymm vpdpbusd share the [8][4] byte layout, so the layout alone does not tell them.
# The same key and values as backends/tvm/lower_quant.py's (the lowering tables load without TVM, so it cannot
# import this module; tests/backends/tvm/test_int8_vnni.py checks they agree)
INSTRUCTION_ATTR = "convdsl.int8_instruction"
VPDPBUSD, VPDPBUSD_YMM, VPMADDUBSW, VPMADDWD = "vpdpbusd", "vpdpbusd-ymm", "vpmaddubsw", "vpmaddwd"
MAX_ACCUMULATORS = 15  # zmm accumulators of one register tile (15 x 64 B < LLVM's 1 KiB alloca limit)


def try_schedule(sch: s_tir.Schedule, target) -> bool:
    """Schedule convdsl's VNNI int8 kernel (recognized by its ``convdsl.vnni`` block annotations)
    and return True; return False, leaving ``sch`` untouched, for anything else."""
    dw = _int8_depthwise_nchw(sch)
    if dw is not None:  # int8_depthwise.depthwise_int8_nchw: f32 lanes along the rows, any x86 vector width
        if target is None or target.kind.name != "llvm":
            return False
        from convdsl.backends.tvm.schedules import int8_depthwise

        int8_depthwise.schedule_nchw(sch, dw)
        return True
    from convdsl.backends.tvm.schedules import winograd_int8

    wino = winograd_int8.annotated(sch)
    if wino is not None:  # winograd_int8.qconv2d: the int16 GEMM is AVX2's vpmaddwd
        if not target_has(target, "avx2"):
            return False
        winograd_int8.schedule(sch, wino, register_madd_intrinsic(), _inline_consumers, _parallel_outer)
        return True
    blocks = _annotated_blocks(sch)
    if {"amx_batch_out", "amx_pack_p", "amx_pack_x"} & blocks.keys():  # amx_transformer's bf16 kernels
        from convdsl.backends.tvm.schedules import amx_transformer

        amx_transformer.schedule_batch(sch, blocks, _inline_consumers, _parallel_outer)
        return True
    if {"amx_requant", "amx_conv_requant"} & blocks.keys():  # schedules/amx.py's kernels (only for AMX targets)
        from convdsl.backends.tvm.schedules import amx

        amx.schedule(sch, blocks, _inline_consumers, _parallel_outer)
        return True
    if "conv" not in blocks:
        return _schedule_int_pool(sch, target)
    intrin = intrinsic_for(target)
    if intrin is None:
        return False
    conv = sch.get_sblock(blocks["conv"])
    requant = sch.get_sblock(blocks["requant"]) if "requant" in blocks else None
    pack = sch.get_sblock(blocks["pack"]) if "pack" in blocks else None

    _, n_ob, _, n_ow = (int(r.dom.extent) for r in sch.get(conv).iter_vars[:4])
    instruction = str(sch.get(conv).annotations[INSTRUCTION_ATTR])
    if GROUPS_ATTR in sch.get(conv).annotations:
        # a grouped conv: output blocks of different groups share no input broadcast, so a tile of several
        # blocks saves no load; one block, the widest row
        n_ob = 1
    if instruction == VPMADDWD:  # AVX2's int16 pair layout
        if not target_has(target, "avx2"):
            return False
        tile = tophub.choose("int8_conv", sch, conv, None, madd_register_tile(n_ob, n_ow))
        _schedule_tensorized(sch, conv, requant, pack, register_madd_intrinsic(), tile)
        return True
    if instruction == VPDPBUSD_YMM:  # [8][4] bytes on VNNI: vpdpbusd on ymm (O % 16 == 8)
        if intrin != VNNI_INTRIN:
            return False
        tile = tophub.choose("int8_conv", sch, conv, None, register_tile(n_ob, n_ow))
        _schedule_tensorized(sch, conv, requant, pack, register_vnni8_intrinsic(), tile)
        return True
    if instruction == VPMADDUBSW:  # AVX2's byte layout [8][4]: weights whose pairs cannot saturate vpmaddubsw
        if not target_has(target, "avx2"):
            return False
        icb, kh, kw = (int(r.dom.extent) for r in sch.get(conv).iter_vars[5:8])
        pointwise = maddubs_pointwise_tile(n_ob, icb * 4) if kh * kw == 1 and pack is None else None
        tile = tophub.choose("int8_conv", sch, conv, None, pointwise or maddubs_register_tile(n_ob, n_ow))
        _schedule_tensorized(sch, conv, requant, pack, register_maddubs_intrinsic(), tile)
        return True
    if intrin == AVX2:  # VNNI's byte layout on a CPU without VNNI (lowered without the target)
        _warn_no_vnni()
        _schedule_avx2(sch, conv, requant, pack, n_ob, n_ow)
        return True
    tile = tophub.choose("int8_conv", sch, conv, None, register_tile(n_ob, n_ow))
    _schedule_tensorized(sch, conv, requant, pack, intrin, tile)
    return True


def _schedule_tensorized(sch: s_tir.Schedule, conv, requant, pack, intrin: str, tile: tuple[int, int]) -> None:
    """The register-tiled loop nest with the inner (output block x input block) dot product
    tensorized to ``intrin``: VNNI's 16 x 4 or AVX2's 8 x 2."""
    ow_t, ob_t = tile
    # the epilogue absorbs the elementwise ops FuseOps put after it (one reader each)
    tail = _inline_consumers(sch, requant) if requant is not None else []

    n, ob, oh, ow, o16, icb, kh, kw, c4 = sch.get_loops(conv)
    # rows before channel blocks when the input outweighs the weights (cpu.rows_first; the input counted at
    # the output's size, i.e. without a stride's extra pixels): ResNet-50 VNNI int8 0.95 / 0.94 (both build
    # orders), MobileNet-V2 0.97, ResNet-18 0.99 (Granite Rapids Xeon, --no-amx, 2 threads, quiet)
    ext = lambda lp: cpu.extent(sch, lp)  # noqa: E731
    channels = ext(icb) * ext(c4)
    rows = cpu.rows_first(channels * ext(oh) * ext(ow), ext(ob) * ext(o16) * channels * ext(kh) * ext(kw))
    obo, obi = sch.split(ob, [None, ob_t])
    owo, owi = sch.split(ow, [None, ow_t])
    first = (oh, obo) if rows else (obo, oh)
    sch.reorder(n, *first, owo, icb, kh, kw, obi, owi, o16, c4)
    if requant is not None:
        sch.reverse_compute_at(requant, owo, preserve_unit_loops=True)
    outer = sch.fuse(n, *first)
    sch.parallel(outer)
    init = sch.decompose_reduction(conv, icb)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(o16, intrin)
    sch.unroll(owi)
    sch.unroll(obi)
    if requant is not None:
        _vectorize_epilogue(sch, requant)
    if pack is not None:
        _schedule_pack(sch, pack)
    for block in tail:  # readers the epilogue could not absorb: at least run in parallel
        _parallel_outer(sch, block, 2)


def intrinsic_for(target) -> str | None:
    """The 16x4 u8 x s8 dot-product intrinsic for ``target``: VNNI's, else None."""
    if target is None or target.kind.name != "llvm":
        return None
    from tvm.target import codegen

    if codegen.target_has_features("avx512vnni", target):
        return register_vnni_intrinsic()
    if codegen.target_has_features("avx2", target):
        return AVX2
    # AVX-512 without VNNI (TVM's dot_16x4_avx512: vpmaddubsw + vpmaddwd) is not used: vpmaddubsw
    # saturates each pair of u8 x s8 products to int16 (2 * 255 * 127 > 32767), so results could
    # differ from the exact int32 sum the torch simulation defines
    return None


def _dot_description(lanes: int, width: int, a_dtype: str, b_dtype: str):
    """The description every int8 intrinsic below tensorizes: C[lanes] (int32) += the sum over k < width of
    A[k] * B[lanes, k], each product in int32 (the u8 x s8 bytes of vpdpbusd / vpmaddubsw, the int16 pairs
    of vpmaddwd)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((width,), a_dtype, offset_factor=1), B: T.Buffer((lanes, width), b_dtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:width], B[0:lanes, 0:width])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, width):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


VNNI_INTRIN = "convdsl_dot_16x4_vnni"


def register_vnni_intrinsic() -> str:
    """Register (once) the 16x4 u8 x s8 -> s32 dot product implemented with ``vpdpbusd``.

    TVM's own ``dot_16x4_vnni`` passes the bytes as <16 x i32>; LLVM 20+ declares
    ``llvm.x86.avx512.vpdpbusd.512`` on <64 x i8> operands, so that intrinsic no longer
    compiles.  This one reinterprets the operands to the type the LLVM in use expects."""
    return _register_vpdpbusd(VNNI_INTRIN, 16)


VNNI8_INTRIN = "convdsl_dot_8x4_vnni"
VNNI8_OC = 8  # output channels of the half-width vpdpbusd (8 int32 lanes of a ymm) x 4 input channels


def register_vnni8_intrinsic() -> str:
    """Register (once) the 8x4 u8 x s8 -> s32 dot product of ``vpdpbusd`` on ymm registers (AVX512_VNNI
    with AVX512VL): the kernel of a conv whose output channels are a multiple of 8 and not of 16
    (MobileNet-V2's 24-channel projections), so that its output is written in 8-channel blocks
    that the next conv reads as they are (``lower_quant.int8_layout``), and no padding to 16 channels is
    computed.  A ymm ``vpdpbusd`` does half a zmm one's work: on Zen 4, whose 512-bit instructions run
    as two 256-bit halves, at the same rate per byte."""
    return _register_vpdpbusd(VNNI8_INTRIN, VNNI8_OC)


def _register_vpdpbusd(name: str, lanes: int) -> str:
    """Register (once) ``name``: the lanes x 4 u8 x s8 -> s32 dot product of one ``vpdpbusd`` on zmm (16 lanes)
    or ymm (8 lanes)."""
    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    from tvm.target import codegen
    from tvm.script import tirx as T

    from convdsl.backends.tvm.tuning import prime_inspect_cache

    prime_inspect_cache()  # TVMScript's decorator inspects the stack
    bytes_ = f"int8x{4 * lanes}" if codegen.llvm_version_major() >= 20 else f"int32x{lanes}"
    acc, weights, intrinsic = f"int32x{lanes}", f"int8x{4 * lanes}", f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"

    desc = _dot_description(lanes, 4, "uint8", "int8")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(intrinsic),
                C.vload([0], dtype=acc),
                T.reinterpret(T.broadcast(a, lanes), dtype=bytes_),
                T.reinterpret(B.vload([0, 0], dtype=weights), dtype=bytes_),
                dtype=acc)

    s_tir.TensorIntrin.register(name, desc, impl)
    return name


MADD_INTRIN = "convdsl_dot_8x2_madd"


def register_madd_intrinsic() -> str:
    """Register (once) the 8x2 int16 x int16 -> int32 dot product of AVX2's ``vpmaddwd``: the two
    int16 activations of one input-channel pair, broadcast to 8 lanes, times the [8][2] int16
    weights; each lane's pair of products is summed exactly in int32 (|u8 * s8| < 2^15)."""
    if s_tir.TensorIntrin.get(MADD_INTRIN, allow_missing=True) is not None:
        return MADD_INTRIN
    from tvm.script import tirx as T

    from convdsl.backends.tvm.tuning import prime_inspect_cache

    prime_inspect_cache()

    desc = _dot_description(8, 2, "int16", "int16")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), "int16", offset_factor=1), B: T.Buffer((8, 2), "int16", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            a = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(T.broadcast(a, 8), dtype="int16x16"),
                B.vload([0, 0], dtype="int16x16"),
                dtype="int32x8")

    s_tir.TensorIntrin.register(MADD_INTRIN, desc, impl)
    return MADD_INTRIN


MADD_ACCUMULATORS = 12  # of AVX2's 16 ymm registers: the rest hold the tile's weight vectors and a broadcast


def madd_register_tile(n_ob: int, n_ow: int) -> tuple[int, int]:
    """(ow_t, ob_t) for the 8 x 2 vpmaddwd kernel: the most accumulators (ow_t x ob_t <= 12, ob_t <= 3
    8-channel blocks sharing each broadcast activation), the fewer weight vectors on a tie."""
    best = (0, 0, 0)
    for ob_t in (d for d in range(1, 4) if n_ob % d == 0):
        ow_t = max(d for d in range(1, min(n_ow, MADD_ACCUMULATORS // ob_t) + 1) if n_ow % d == 0)
        if ow_t * ob_t > best[0]:
            best = (ow_t * ob_t, ow_t, ob_t)
    return best[1], best[2]


MADDUBS_INTRIN = "convdsl_dot_8x4_maddubs"
MADDUBS_OC = 8  # output channels of one vpmaddubsw block (8 int32 lanes of a ymm), 4 input channels each


def register_maddubs_intrinsic() -> str:
    """Register (once) the 8x4 u8 x s8 -> s32 dot product of AVX2's ``vpmaddubsw`` + ``vpmaddwd``:
    the four u8 activations of one input-channel block, broadcast to 8 lanes, times the [8][4] int8
    weights; ``vpmaddubsw`` sums each pair of products into int16 (saturating), ``vpmaddwd`` with ones
    sums the two int16 pairs of a lane into int32, added to the accumulator.

    Exact only when no pair sum can leave int16: 255 * (positive weights of the pair) <= 32767 and
    255 * (negative ones) >= -32768, i.e. each pair's positive and negative weights sum within
    [-128, 128] (7-bit weights, [-63, 63], always do).  ``lower_quant.int8_layout`` takes this layout
    only for such weights; the tensorized description states the exact int32 sum it then computes."""
    if s_tir.TensorIntrin.get(MADDUBS_INTRIN, allow_missing=True) is not None:
        return MADDUBS_INTRIN
    from tvm.script import tirx as T

    from convdsl.backends.tvm.tuning import prime_inspect_cache

    prime_inspect_cache()

    desc = _dot_description(8, 4, "uint8", "int8")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            a = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            pairs = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                T.reinterpret(T.broadcast(a, 8), dtype="int8x32"),
                B.vload([0, 0], dtype="int8x32"),
                dtype="int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                pairs, T.broadcast(T.int16(1), 16), dtype="int32x8")

    s_tir.TensorIntrin.register(MADDUBS_INTRIN, desc, impl)
    return MADDUBS_INTRIN


MADDUBS_ACCUMULATORS = 12  # of 16 ymm: the rest hold the weight vectors, the broadcast, the ones and a product


def maddubs_register_tile(n_ob: int, n_ow: int, limit: int = MADDUBS_ACCUMULATORS) -> tuple[int, int]:
    """(ow_t, ob_t) for the 8 x 4 vpmaddubsw kernel: the most accumulators (ow_t x ob_t <= ``limit``,
    ob_t <= 3 8-channel blocks sharing each broadcast activation), the fewer weight vectors on a tie."""
    best = (0, 0, 0)
    for ob_t in (d for d in range(1, 4) if n_ob % d == 0):
        ow_t = max(d for d in range(1, min(n_ow, limit // ob_t) + 1) if n_ow % d == 0)
        if ow_t * ob_t > best[0]:
            best = (ow_t * ob_t, ow_t, ob_t)
    return best[1], best[2]


MADDUBS_POINTWISE_ACCUMULATORS = 13  # one pixel's tile: its weight vectors are memory operands, no registers
MADDUBS_POINTWISE_WEIGHT_BYTES = 24 * 1024  # the weight blocks one pixel streams through, kept within L1 (32 KiB)


def maddubs_pointwise_tile(n_ob: int, channels: int) -> tuple[int, int] | None:
    """(1, ob_t) for a 1x1 ``vpmaddubsw`` conv reading blocked activations (no packing copy): one output
    pixel by the most 8-channel blocks (at most 13 accumulators) whose weights, ``channels`` x 8 bytes a block,
    fit in 24 KiB; each broadcast activation then feeds every accumulator and every weight vector is read
    from L1 as an operand.  None where fewer than two blocks qualify (``maddubs_register_tile`` decides).

    The width-first tiles ``maddubs_register_tile`` picks for 1x1 convs (8 x 1 at 56 x 56, 7 x 1 at 14 x 14)
    took 19% longer in sum than the tuner's choices over the 45 blocked 1x1 workloads of the shipped AVX2
    database (up to 1.6x on one), and the tuner mostly chose these one-pixel tiles: 1 x 8 at 64-256 input
    channels, 1 x 2 at 1024, 1 x 13 for 13 blocks.  ResNet-50 / MobileNet-V2 int8 built without the database:
    0.958 / 0.967 of the time (docs/tvm.md, "Zen 3 (AVX2), eleventh session")."""
    fit = min(MADDUBS_POINTWISE_ACCUMULATORS, MADDUBS_POINTWISE_WEIGHT_BYTES // (channels * MADDUBS_OC))
    ob_t = max((d for d in divisors(n_ob) if d <= fit), default=1)
    return (1, ob_t) if ob_t >= 2 else None


AVX2 = "avx2"  # intrinsic_for's answer without VNNI on an AVX2 CPU: the plain schedule below


def _schedule_avx2(sch: s_tir.Schedule, conv, requant, pack, n_ob: int, n_ow: int) -> None:
    """The same kernel without VNNI (AVX2): the VNNI loop nest with the 16 output channels
    vectorized as int32 and the 4 input channels unrolled.  Each product is of a zero-extended
    u8 and a sign-extended s8, which LLVM's x86 backend multiplies with ``vpmaddwd`` (int16
    pairs to int32: exact); no ``vpmaddubsw``, whose int16 sums saturate."""
    ow_t, ob_t = tophub.choose("int8_conv", sch, conv, None, (AVX2_TILE[0] if n_ow % AVX2_TILE[0] == 0 else
                                                             max(d for d in range(1, 5) if n_ow % d == 0), 1),
                               isa="avx2")
    tail = _inline_consumers(sch, requant) if requant is not None else []
    n, ob, oh, ow, o16, icb, kh, kw, c4 = sch.get_loops(conv)
    obo, obi = sch.split(ob, [None, ob_t])
    owo, owi = sch.split(ow, [None, ow_t])
    sch.reorder(n, obo, oh, owo, icb, kh, kw, c4, obi, owi, o16)
    if requant is not None:
        sch.reverse_compute_at(requant, owo, preserve_unit_loops=True)
    sch.parallel(sch.fuse(n, obo, oh))
    sch.vectorize(o16)
    sch.unroll(owi)
    sch.unroll(obi)
    sch.unroll(c4)
    init = sch.decompose_reduction(conv, icb)
    sch.vectorize(sch.get_loops(init)[-1])
    if requant is not None:
        _vectorize_epilogue(sch, requant)
    if pack is not None:
        _schedule_pack(sch, pack)
    for block in tail:
        _parallel_outer(sch, block, 2)


def _schedule_int_pool(sch: s_tir.Schedule, target) -> bool:
    """A max-pool on u8/i8 (between quantized layers: max commutes with quantization), which the float
    rules leave to the generic schedule (one parallel task per output element, not vectorized: ResNet's
    3x3/2 pool after the stem took 2.7 ms): parallel over (n, c, output row), the taps outside, the
    output row vectorized.  Returns False, leaving ``sch`` untouched, for anything else."""
    if target is None or target.kind.name != "llvm":
        return False
    root = sch.get_child_blocks(sch.get_sblock("root"))
    pools = [b for b in root if sch.get(b).name_hint == "pool_max"]
    if len(pools) != 1 or str(sch.get(pools[0]).writes[0].source.dtype) not in ("uint8", "int8"):
        return False
    pool = pools[0]
    try:
        pads = sch.get_producers(pool)  # the padding copy, if any
        loops = sch.get_loops(pool)
        if len(loops) != 6 or len(pads) > 1:
            return False
        n, c, oh, ow, rh, rw = loops
        sch.reorder(n, c, oh, rh, rw, ow)
        row = sch.fuse(n, c, oh)
        sch.parallel(row)
        if pads:  # the padded input rows of one output row, copied next to it: no bounds tests in the taps
            sch.compute_at(pads[0], row, preserve_unit_loops=True)
        init = sch.decompose_reduction(pool, rh)
        sch.vectorize(sch.get_loops(init)[-1])
        # the update's row cannot be a TVM vectorized loop under the taps (a reduction block); it is the
        # innermost loop with independent iterations, which LLVM's loop vectorizer takes
    except s_tir.ScheduleError:
        return False
    return True


class Int8SpeedWarning(UserWarning):
    """int8 kernels on a CPU without a dot-product instruction for them."""


_warned = False


def _warn_no_vnni() -> None:
    global _warned
    if not _warned:
        _warned = True
        import warnings

        warnings.warn("an int8 kernel in VNNI's byte layout on a CPU without AVX-512 VNNI: it runs exactly with "
                      "AVX2's vpmaddwd but gathers its weights byte by byte (~20x slower than the int16-pair layout "
                      "that a build for this target packs); build the network for this target", Int8SpeedWarning,
                      stacklevel=2)


AVX2_TILE = (4, 1)  # (ow_t, ob_t): 4 columns x 16 int32 channels = 8 ymm accumulators


def register_tile(n_ob: int, n_ow: int) -> tuple[int, int]:
    """(ow_t, ob_t): the output-width tile (a divisor of OW) and the number of 16-channel blocks sharing
    it (a divisor of O/16), with ow_t * ob_t <= MAX_ACCUMULATORS: the most ``vpdpbusd`` per load (each
    step loads ow_t input broadcasts and ob_t weight vectors for ow_t * ob_t of them), then the most
    accumulators.  The widest row first (14 x 1 on a 112-wide stem) loaded one broadcast per
    ``vpdpbusd``: 7 x 2 runs ResNet's 7x7 stride-2 stem 1.22 -> 0.85 ms and a 1x1 64 -> 256 conv at
    56x56 0.32 -> 0.27 ms (1 thread, this CPU), the 3x3 layers level."""
    tiles = [(ow, ob) for ow in divisors(n_ow) for ob in divisors(n_ob) if ow * ob <= MAX_ACCUMULATORS]
    return max(tiles, key=lambda t: (t[0] * t[1] / (t[0] + t[1]), t[0] * t[1], t[0]))


def schedule_module(mod: tvm.IRModule, target) -> tuple[tvm.IRModule, int]:
    """Apply ``try_schedule`` to every PrimFunc of ``mod`` (for tests and benchmarks until the
    schedule dispatcher calls it); returns the module and how many functions it scheduled."""
    done = 0
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or (func.attrs is not None and func.attrs.get("tirx.is_scheduled")):
            continue
        sch = s_tir.Schedule(func)
        if try_schedule(sch, target):
            mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            done += 1
    return mod, done


# ---- helpers --------------------------------------------------------------------------------------------
DW_ATTR = "convdsl.int8_dw"  # int8_depthwise.ROW_ATTR (that module imports TVM's te at import time)


def _int8_depthwise_nchw(sch: s_tir.Schedule):
    """The conv block of an int8 NCHW depthwise kernel at the root, or None."""
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        if str(sch.get(b).annotations.get(DW_ATTR, "")) == "conv":
            return b
    return None


def _annotated_blocks(sch: s_tir.Schedule) -> dict[str, str]:
    """{annotation value: block name} of the blocks annotated ``convdsl.vnni`` (one kernel only)."""
    found: dict[str, str] = {}
    convs = 0
    todo = list(sch.get_child_blocks(sch.get_sblock("root")))
    while todo:
        block = sch.get(todo.pop())
        if VNNI_ATTR in block.annotations:
            kind = str(block.annotations[VNNI_ATTR])
            found.setdefault(kind, block.name_hint)
            convs += kind in ("conv", "amx_requant", "amx_conv_requant", "amx_batch_out", "amx_pack_p", "amx_pack_x")
        todo.extend(sch.get_child_blocks(sch.get_sblock(block.name_hint)))
    return found if convs == 1 else {}


def _inline_consumers(sch: s_tir.Schedule, block) -> list:
    """reverse_compute_inline the chain of single elementwise readers of ``block``; the readers
    that cannot be inlined (several readers, a reduction) are returned, to be scheduled apart."""
    # first the elementwise blocks between it and the last one into their readers (gelu's
    # x * 0.5 * (1 + erf(x / sqrt 2)) reads x twice: its blocks are a diamond, not a chain)
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    root = list(sch.get_child_blocks(sch.get_sblock("root")))
    names = [sch.get(b).name_hint for b in root]
    at = names.index(sch.get(block).name_hint)
    # elementwise producers FuseOps put before the kernel (a residual's dequantize: cast, subtract, multiply)
    # into the epilogue that reads them; left as blocks they would run unscheduled, one element at a time
    for b in root[:at]:
        if VNNI_ATTR not in sch.get(b).annotations and sch.get(b).name_hint not in outputs:
            try:
                sch.compute_inline(b)
            except s_tir.ScheduleError:
                pass
    for b in root[at + 1:]:
        if sch.get(b).name_hint not in outputs:
            try:
                sch.compute_inline(b)
            except s_tir.ScheduleError:
                pass
    rest = []
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            rest.extend(consumers)
            break
        try:
            sch.reverse_compute_inline(consumers[0])
        except s_tir.ScheduleError:
            rest.extend(consumers)
            break
    seen, out = set(), []
    while rest:  # everything downstream of what stayed apart
        b = rest.pop()
        name = sch.get(b).name_hint
        if name not in seen:
            seen.add(name)
            out.append(b)
            rest.extend(sch.get_consumers(b))
    return out


def _vectorize_epilogue(sch: s_tir.Schedule, block) -> None:
    loops = sch.get_loops(block)
    inner = loops[-1]
    extent = sch.get(inner).extent
    if isinstance(extent, tirx.IntImm) and 1 < extent.value <= 64:
        try:
            sch.vectorize(inner)
        except s_tir.ScheduleError:
            pass


def _schedule_pack(sch: s_tir.Schedule, pack) -> None:
    """The input's copy (padding, the 4-byte groups): rows parallel; a blocked input's pixel (16 or more
    channels' bytes, ``lower_quant.vnni_conv2d``'s padded copy in the blocked layout) one vector."""
    _parallel_outer(sch, pack, 3)
    inner = sch.get_loops(pack)[-1]
    if cpu.extent(sch, inner) in (16, 32, 64):
        sch.vectorize(inner)


def _parallel_outer(sch: s_tir.Schedule, block, depth: int) -> None:
    """Fuse the (up to) ``depth`` outer loops of a root-level block and run them in parallel."""
    try:
        loops = sch.get_loops(block)
        if not loops:
            return
        sch.parallel(sch.fuse(*loops[:depth]) if len(loops) > 1 and depth > 1 else loops[0])
    except s_tir.ScheduleError:
        pass


__all__ = ["try_schedule", "intrinsic_for", "register_tile", "schedule_module", "VNNI_ATTR"]
