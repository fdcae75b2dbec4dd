"""convdsl's own CPU schedules, applied without tuning (fp32, x86 AVX-512/AVX2).

One rule per kernel family, each a plain function ``schedule_*(sch, block, hw) -> None``
that raises (``ScheduleError`` or ``_Skip``) when the function is not its shape:

- ``conv2d_nchwc``: NeoCPU's direct convolution.  Output register tile of ``rn`` output
  columns x ``ov`` channel blocks (``rn * ov`` accumulators <= the vector registers
  left free), loop order ``(n, oc_outer, oh) parallel, ow_outer, ic_outer, kh, kw,
  ic_inner, ow_inner (unrolled), oc_inner (unrolled), oc_block (vector)``; the
  accumulator tile lives in a local buffer that LLVM keeps in registers; the fused
  epilogue (batchnorm scale/shift, bias, residual add, activation) is inlined into one
  block computed at the tile; padding is one parallel, vectorized copy.  A 1x1 conv is
  the same loop nest with kh = kw = 1, i.e. a GEMM over channels.
- ``dwconv_nchwc``: depthwise, the same tile with one channel block, vectorized over it.
- ``dense_packed`` and any matmul-like block (spatial axes then one reduction axis,
  the last spatial axis contiguous in the right operand): a register-tiled GEMM,
  ``rm`` rows x ``nv`` vectors of columns, k between the parallel outer loops and the
  tile.
- row reductions (softmax, layer norm, pooling to one value): rows parallel, every block
  computed inside its row, vectorized where the lanes divide the row;
- everything else: every root block gets its leading spatial loops fused and parallel and its
  innermost spatial loop vectorized; pure elementwise chains are inlined first.

Template parameters come from the shape and ``Hardware`` (vector lanes, register
count); no measurement, no search.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

from convdsl.backends.tvm.schedules import bf16, tophub
from convdsl.backends.tvm.schedules.kernels import KERNEL_ATTR


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
        from tvm.target.codegen import llvm_get_vector_width

        try:
            bits = int(llvm_get_vector_width(target))
        except Exception:  # noqa: BLE001 - not an LLVM target
            bits = 128
        bits = bits if bits > 0 else 128
        return Hardware(lanes=max(bits // 32, 4), registers=32 if bits >= 512 else 16)


# ---- helpers ----------------------------------------------------------------------------
def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _static_extent(sch: s_tir.Schedule, loop) -> int | None:
    """The loop's extent, or None when it is symbolic (the batch of a dynamic-batch build)."""
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


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
    return last


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
    """A copy-like root block: fuse all but the last ``keep`` loops, parallel; vectorize the last."""
    loops = sch.get_loops(block)
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


# ---- conv2d NCHWc -----------------------------------------------------------------------
def conv_tile(ow: int, ocb: int, hw: Hardware) -> tuple[int, int]:
    """(rn, ov): output columns and channel blocks of the register tile, rn a divisor of ow.

    The most accumulators (rn*ov) with every operand in a register (rn*ov accumulators,
    ov weight vectors, one broadcast input); wide over columns rather than channel
    blocks (measured on ResNet-18's 56x56x64 conv: 7x4 and 14x2 tiles ~140 GFLOP/s, 4x4
    ~90: each channel block is another weight stream), so 4 blocks only when the row
    is too short to fill the registers otherwise."""
    best, best_score = (1, 1), -1.0
    for ov in (1, 2, 4):
        if ocb % ov:
            continue
        for rn in _divisors(ow):
            if rn * ov + ov + 1 > hw.registers:
                continue
            score = rn * ov - (3 if ov == 4 else 0) + (0.5 if ov == 2 else 0)
            if score > best_score:
                best, best_score = (rn, ov), score
    return best


def schedule_conv2d_nchwc(sch: s_tir.Schedule, conv, hw: Hardware) -> None:
    b, o, y, x, oc, rc, ry, rx, ri = sch.get_loops(conv)
    ocb, ow = _extent(sch, o), _extent(sch, x)
    rn, ov = tophub.choose("conv2d_nchwc", sch, conv, hw, conv_tile(ow, ocb, hw))
    epilogue = _inline_epilogue(sch, conv)
    pad = [p for p in sch.get_producers(conv) if kernel_of(sch, p) == "pad"]
    if epilogue is not None:
        sch.set_scope(conv, 0, "local")

    oo, oi = sch.split(o, [None, ov])
    xo, xi = sch.split(x, [None, rn])
    sch.reorder(b, oo, y, xo, rc, ry, rx, ri, xi, oi, oc)
    outer = sch.fuse(b, oo, y)
    sch.parallel(outer)
    sch.vectorize(oc)
    sch.unroll(oi)
    sch.unroll(xi)
    if epilogue is not None:
        _tile_epilogue(sch, epilogue, xo, depth=2)
    init = sch.decompose_reduction(conv, rc)
    iloops = sch.get_loops(init)
    sch.vectorize(iloops[-1])
    for lp in iloops[-3:-1]:
        sch.unroll(lp)
    for p in pad:
        _parallel_copy(sch, p, hw.lanes)


def schedule_dwconv_nchwc(sch: s_tir.Schedule, conv, hw: Hardware) -> None:
    b, c, y, x, k, ry, rx = sch.get_loops(conv)
    ow = _extent(sch, x)
    rn, = tophub.choose("dwconv_nchwc", sch, conv, hw, (max(d for d in _divisors(ow) if d <= hw.accumulators),))
    epilogue = _inline_epilogue(sch, conv)
    pad = [p for p in sch.get_producers(conv) if kernel_of(sch, p) == "pad"]
    if epilogue is not None:
        sch.set_scope(conv, 0, "local")
    xo, xi = sch.split(x, [None, rn])
    sch.reorder(b, c, y, xo, ry, rx, xi, k)
    sch.parallel(sch.fuse(b, c, y))
    sch.vectorize(k)
    sch.unroll(xi)
    if epilogue is not None:
        _tile_epilogue(sch, epilogue, xo, depth=2)
    init = sch.decompose_reduction(conv, ry)
    iloops = sch.get_loops(init)
    sch.vectorize(iloops[-1])
    sch.unroll(iloops[-2])
    for p in pad:
        _parallel_copy(sch, p, hw.lanes)


# ---- GEMM -------------------------------------------------------------------------------
def gemm_tile(m: int, nvecs: int, hw: Hardware) -> tuple[int, int]:
    """(rm, nv): rows and column vectors of the register tile; rm need not divide m."""
    best, best_score = (1, 1), -1.0
    for nv in (1, 2, 3, 4):
        if nvecs % nv:
            continue
        for rm in range(1, min(m, hw.accumulators) + 1):
            if rm * nv + nv + 1 > hw.registers:  # accumulators + column vectors + one broadcast
                continue
            waste = (-m) % rm / m  # padded rows of the last tile
            score = rm * nv / (rm + nv) * (1 - waste)
            if score > best_score + 1e-9:
                best, best_score = (rm, nv), score
    return best


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
    rm, nv = tophub.choose("gemm", sch, block, hw, gemm_tile(mm, -(-nn // lanes), hw), lanes=lanes)
    if einsum and (nn % lanes or mm % rm):
        sch.pad_einsum(block, [1] * (len(lead) - 1) + ([rm] if lead else []) + [lanes, 1])
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


def schedule_rows(sch: s_tir.Schedule, hw: Hardware) -> None:
    """Row-wise reductions (softmax, layer norm, mean): every block shares the leading
    spatial axes (the rows); those are fused and parallel on the last block, the other
    blocks computed inside one row, and injective inner loops vectorized when the lanes
    divide them (else left whole for LLVM's loop vectorizer: a predicated vector loop
    would be scalarized)."""
    blocks = _root_blocks(sch)
    if len(blocks) < 2:
        raise _Skip("one block")
    kinds = [_iter_kinds(sch, b) for b in blocks]
    if "R" in kinds[-1] or not any("R" in k for k in kinds) or any("O" in k or not k for k in kinds):
        raise _Skip("not rows of reductions")
    lead = min(len(k) - len(k.lstrip("S")) for k in kinds)
    if lead == 0:
        raise _Skip("a block has no leading spatial axis")
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
    for b in blocks:
        inner = sch.get_loops(b)[-1]
        n = _static_extent(sch, inner)
        if "R" in _iter_kinds(sch, b) or n is None or n < 2:
            continue
        if n % hw.lanes == 0 and n > hw.lanes:
            inner = sch.split(inner, [None, hw.lanes])[1]
            sch.vectorize(inner)
        elif n <= hw.lanes and n in (4, 8, 16):
            sch.vectorize(inner)


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
    sch.tensorize(oc, bf16.register_intrinsic("local" if epilogue is not None else "global"))
    sch.unroll(oi)
    sch.unroll(xi)
    for p in copies:
        _parallel_copy(sch, p, hw.lanes)


def schedule_dense_packed_bf16(sch: s_tir.Schedule, block, hw) -> None:
    *lead, n, rp, r2 = sch.get_loops(block)
    nn = _extent(sch, n)
    mm = _extent(sch, lead[-1]) if lead else 1
    rm, nv = tophub.choose("gemm", sch, block, hw, gemm_tile(mm, nn // bf16.LANES, hw), lanes=bf16.LANES)
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
