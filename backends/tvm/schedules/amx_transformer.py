"""A transformer layer's GEMMs on Intel AMX bf16 tiles (``tdpbf16ps``), built on ``amx.py``'s micro-kernel and
block loop: attention's batched products (``batch_matmul_bf16``: Q K^T and P V, with the softmax in P's pack),
linears whose output is row-major with the bias in the tiles (``linear_rows_bf16``), the MLP's fc1 with GELU
rounded into fc2's A tiles (``mlp_up_bf16``), GEMMs reading another kernel's tiles with the bias and a residual
in the block loop (``linear_packed_bf16``), the Q/K/V projection straight into the attention GEMMs' tiles
(``qkv_tiles_bf16``) and P V with the heads merged into the output projection's tiles
(``heads_matmul_pack_bf16``); layer norms computed in the packs (``_pack_rows_ln_bf16``).

``lower_attention`` and ``lower_elementwise`` build these for ``--precision bf16`` on a target with
``+amx-bf16``; ``schedule_batch`` schedules their packs and outputs (``int8.py`` dispatches to it).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from convdsl.backends.tvm.schedules.amx import (ATTR, BF16_CHANNELS, BLOCK_OC, BLOCK_ROWS, EXTERN_BF16, IMPORT_ATTR,
                                                LLVM_IR_BF16, OC, TILE_K, block_loop, cdiv, i64, llvm_f32,
                                                one_tap, tile_phis, tile_step, tile_stores, tile_zeros,
                                                vectorize_by)


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

    rows, kb, n_ob = cdiv(m, BLOCK_ROWS) * BLOCK_ROWS, cdiv(k, BF16_CHANNELS), cdiv(n, BLOCK_OC) * 2

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
    offs = one_tap()
    pairs, blocks = n_ob // 2, rows // BLOCK_ROWS

    def body(ins, outs):
        a, wt, taps = ins
        acc, = outs
        return block_loop(batch, pairs, blocks, LLVM_IR_BF16, lambda bi, j, pb: tirx.call_extern(
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
        vectorize_by(sch, loops[-1], OC)
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
    """``pack_rows_ln_bf16``'s pack: rows in parallel, each row's sums (16 lanes, vectorized, then across them),
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
    vectorize_by(sch, sch.get_loops(exp)[-1], OC)
    for name in ("attn_max16", "attn_sum16"):  # (row, 1, 1, lanes, keys / lanes): the lanes innermost, vectorized
        loops = sch.get_loops(sch.get_sblock(name))
        sch.reorder(loops[-1], loops[-2])
        sch.vectorize(loops[-2])


# ---- bf16 linear with its bias, written in place (no acc buffer, no epilogue pass) ----------------------------
EXTERN_BF16_ROWS = "convdsl_amx_dpbf16ps_2x2_rows"
# C[2 x 2 tiles] = bias + sum over steps s of A(s) . B(s): C starts as the bias (a 64-byte row loaded with stride 0:
# 16 equal rows), A's blocks ``a_k`` bytes apart, B as ``amx._micro_kernel``'s; C is stored straight into a row-major
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
{tile_phis("entry", "loop")}  %ao = mul i64 %s, %a_k
  %a0 = getelementptr i8, ptr %a, i64 %ao
{tile_step("tdpbf16ps")}  %s1 = add i64 %s, 1
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
    rows = cdiv(length, BLOCK_ROWS) * BLOCK_ROWS

    def pack(b, c, i, e):
        kk = c * BF16_CHANNELS + e
        v = to_bf16_bits(x[b, tirx.min(i, length - 1), tirx.min(kk, k - 1) if kb * BF16_CHANNELS > k else kk])
        return tirx.Select(kk < k, v, tirx.const(0, "uint16")) if kb * BF16_CHANNELS > k else v

    return te.compute((n, kb, rows, BF16_CHANNELS), pack, name="amx_pack", attrs={ATTR: "amx_pack_x"})


def pack_rows_ln_bf16(x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, eps: float, kb: int) -> te.Tensor:
    """``_pack_rows_bf16`` of layer_norm(x) over the last axis (K a multiple of 32: kb = K/32), TVM's formula
    (mean and mean of squares in one pass, (x - mean) * rsqrt(var + eps) * gamma + beta) computed in the pack:
    the normalized f32 tensor never exists.  Each row's sums as 16 partial results first (one vector per 16
    features), then across them (``schedule_batch``: at the pack's row loop)."""
    from convdsl.backends.tvm.schedules.bf16 import to_bf16_bits

    n, length, k = (int(d) for d in x.shape)
    rows = cdiv(length, BLOCK_ROWS) * BLOCK_ROWS
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

    def body(ins, outs):
        a, wt, bs = ins
        y, = outs
        return block_loop(n, pairs, blocks, LLVM_IR_BF16_ROWS, lambda bi, j, pb: tirx.call_extern(
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


def _row(r: str, cb: int, name: str, acc: str = "%acc") -> str:
    """IR loading row ``r`` (a value name or a constant) of the block's column half ``cb`` from the 4 KiB buffer
    ``acc`` + bias as ``%name``."""
    idx = f"{r}" if cb == 0 else f"{r}_{name}i"
    pre = "" if cb == 0 else f"  {idx} = add i64 {r}, {BLOCK_ROWS}\n"
    return (f"{pre}  %{name}p = getelementptr <16 x float>, ptr {acc}, i64 {idx}\n"
            f"  %{name}x = load <16 x float>, ptr %{name}p, align 64\n"
            f"  %{name} = fadd <16 x float> %{name}x, %bias{cb}\n")


# TVM's fast_erf (Eigen's rational approximation on [-4, 4]: x P(x^2) / Q(x^2)), its float32 coefficients
_ERF_P = (-2.7261423674040941e-10, 2.7706814620387377e-08, -2.101023937939317e-06, -5.6925062381196767e-05,
          -0.00073499063728377223, -0.0029545999132096767, -0.016096033155918121)
_ERF_Q = (-1.4566071513399947e-05, -0.00021337404905352741, -0.001682827016338706, -0.0073733292520046234,
          -0.014264739118516445)


def _gelu_ir() -> str:
    """GELU of 16 floats as FastMath's (x * (0.5 + 0.5 * fast_erf(x / sqrt 2))), op for op."""
    v = lambda c: f"splat (float {llvm_f32(c)})"  # noqa: E731
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


_TO_BF16 = """  %bf = call <32 x bfloat>
    @llvm.x86.avx512bf16.cvtne2ps2bf16.512(<16 x float> %v1, <16 x float> %v0)
"""


EXTERN_BF16_GELU = "convdsl_amx_dpbf16ps_2x2_gelu_pack"
MLP_UP_TASKS = 16  # parallel tasks mlp_up_bf16 aims for (column pairs x row groups), enough for the cores


def _gelu_row(tag: str, acc: str, out: str, r: str) -> str:
    """IR of one row ``r`` of a finished block: its two column halves in the 4 KiB buffer ``acc`` + bias, through
    the GELU, rounded to bf16 (vcvtne2ps2bf16: round to nearest even, as ``to_bf16_bits``) into the row's 64 bytes
    at ``out`` (value names prefixed with ``tag``)."""
    halves = _row(r, 0, f"{tag}v0", acc) + _row(r, 1, f"{tag}v1", acc)
    return f"""{halves}  %{tag}g0 = call <16 x float> @convdsl_gelu16(<16 x float> %{tag}v0)
  %{tag}g1 = call <16 x float> @convdsl_gelu16(<16 x float> %{tag}v1)
  %{tag}bf = call <32 x bfloat> @llvm.x86.avx512bf16.cvtne2ps2bf16.512(<16 x float> %{tag}g1, <16 x float> %{tag}g0)
  %{tag}dst = getelementptr <32 x bfloat>, ptr {out}, i64 {r}
  store <32 x bfloat> %{tag}bf, ptr %{tag}dst, align 64
"""


# fc1's blocks of one column pair, ``%nblocks`` 32-row blocks from ``%a`` / to ``%p``, software-pipelined: while
# block pb's tile products run (the AMX unit works on its own), the vector units finish block pb - 1 (bias, GELU,
# bf16 rounding: ``%rps`` of its rows after each reduction step), whose C tiles went to the other half of a
# double buffer (2 x 4 KiB, L1).  Done one block after the other, the tiles waited for each epilogue and the
# epilogue for the tile stores: together as long as the products.  The tile products, their order and the
# epilogue's arithmetic are the unpipelined kernel's, so the result is the same to the bit.
LLVM_IR_BF16_GELU = LLVM_IR_BF16 + _gelu_ir() + f"""
define linkonce_odr i32 @{EXTERN_BF16_GELU}(ptr %p, ptr %bias, ptr %a, i64 %a_icb, i64 %steps, ptr %b, i64 %b_ob,
                                          i32 %nblocks32) alwaysinline {{
entry:
  %nblocks = sext i32 %nblocks32 to i64
  %accs = alloca [{2 * BLOCK_ROWS * BLOCK_OC} x float], align 64
  %bias0 = load <16 x float>, ptr %bias, align 4
  %bp = getelementptr float, ptr %bias, i64 {OC}
  %bias1 = load <16 x float>, ptr %bp, align 4
  %rps0 = add i64 %steps, {BLOCK_ROWS - 1}
  %rps = udiv i64 %rps0, %steps
  br label %block
block:
  %pb = phi i64 [0, %entry], [%pb1, %store]
  %has_prev = icmp ne i64 %pb, 0
  %cur_half = and i64 %pb, 1
  %cur_off = mul i64 %cur_half, {BLOCK_ROWS * BLOCK_OC}
  %cur = getelementptr float, ptr %accs, i64 %cur_off
  %prev_off = sub i64 {BLOCK_ROWS * BLOCK_OC}, %cur_off
  %prev = getelementptr float, ptr %accs, i64 %prev_off
  %pb_m1 = sub i64 %pb, 1
  %prev_p = getelementptr [{BLOCK_ROWS} x <32 x bfloat>], ptr %p, i64 %pb_m1
  %ab = getelementptr [{BLOCK_ROWS} x <32 x bfloat>], ptr %a, i64 %pb
{tile_zeros()}  br label %step
step:
  %s = phi i64 [0, %block], [%s1, %step_end]
{tile_phis("block", "step_end")}  %ao = mul i64 %s, %a_icb
  %a0 = getelementptr i8, ptr %ab, i64 %ao
{tile_step("tdpbf16ps")}  %r_lo = mul i64 %s, %rps
  %r_hi0 = add i64 %r_lo, %rps
  %r_hi = call i64 @llvm.umin.i64(i64 %r_hi0, i64 {BLOCK_ROWS})
  %rows_left = icmp ult i64 %r_lo, %r_hi
  %go = and i1 %has_prev, %rows_left
  br i1 %go, label %row, label %step_end
row:
  %r = phi i64 [%r_lo, %step], [%r1, %row]
{_gelu_row("e", "%prev", "%prev_p", "%r")}  %r1 = add i64 %r, 1
  %rdone = icmp eq i64 %r1, %r_hi
  br i1 %rdone, label %step_end, label %row
step_end:
  %s1 = add i64 %s, 1
  %sdone = icmp eq i64 %s1, %steps
  br i1 %sdone, label %store, label %step
store:
{tile_stores("%cur", str(BLOCK_ROWS * OC * 4))}  %pb1 = add i64 %pb, 1
  %bdone = icmp eq i64 %pb1, %nblocks
  br i1 %bdone, label %last, label %block
last:
  %last_p = getelementptr [{BLOCK_ROWS} x <32 x bfloat>], ptr %p, i64 %pb
  br label %lrow
lrow:
  %lr = phi i64 [0, %last], [%lr1, %lrow]
{_gelu_row("l", "%cur", "%last_p", "%lr")}  %lr1 = add i64 %lr, 1
  %ldone = icmp eq i64 %lr1, {BLOCK_ROWS}
  br i1 %ldone, label %exit, label %lrow
exit:
  ret i32 0
}}
declare i64 @llvm.umin.i64(i64, i64)
declare <32 x bfloat> @llvm.x86.avx512bf16.cvtne2ps2bf16.512(<16 x float>, <16 x float>)
"""


def mlp_up_bf16(x: te.Tensor, kernel: te.Tensor, bias: te.Tensor, gamma: te.Tensor | None = None,
                beta: te.Tensor | None = None, eps: float = 1e-5) -> te.Tensor:
    """gelu(x W + bias) for x [N, L, K] f32 (W, bias as ``linear_rows_bf16``), rounded to bf16 straight into the
    next GEMM's A-tile pack: [N, O/32, rows, 32] uint16 (``linear_packed_bf16`` reads it).  Each 32 x 32 block is
    finished while it is in L1 (``LLVM_IR_BF16_GELU``: the tile products of a column pair's row blocks, each block's
    bias, GELU and bf16 rounding done while the next block's products run), so the block's f32 values never go to
    memory.  The GELU is FastMath's (x * (0.5 + 0.5 * fast_erf(x / sqrt 2))) op for op; the hidden layer never
    exists as an f32 tensor, and the next GEMM has no pack of its own.  A task is a column pair's row blocks, split
    into row groups where there are fewer than ``MLP_UP_TASKS`` pairs.  ``gamma``, ``beta``, ``eps``: x is a layer
    norm's input, normalized in the pack."""
    n_ob, kb = int(kernel.shape[0]), int(kernel.shape[1])
    xa = _pack_rows_bf16(x, kb) if gamma is None else pack_rows_ln_bf16(x, gamma, beta, eps, kb)
    n, rows = int(xa.shape[0]), int(xa.shape[2])
    pairs, blocks = n_ob // 2, rows // BLOCK_ROWS
    per_group = cdiv(blocks, min(blocks, cdiv(MLP_UP_TASKS, pairs)))  # row blocks per task
    groups = cdiv(blocks, per_group)

    def body(ins, outs):
        a, wt, bs = ins
        p, = outs
        return block_loop(n, pairs, groups, LLVM_IR_BF16_GELU, lambda bi, j, g: tirx.call_extern(
            "int32", EXTERN_BF16_GELU,
            p.access_ptr("w", offset=((bi * pairs + j) * rows + g * (per_group * BLOCK_ROWS)) * BF16_CHANNELS),
            bs.access_ptr("r", offset=j * BLOCK_OC),
            a.access_ptr("r", offset=(bi * kb * rows + g * (per_group * BLOCK_ROWS)) * BF16_CHANNELS),
            i64(rows * TILE_K), i64(kb), wt.access_ptr("r", offset=2 * j * kb * 512), i64(kb * 1024),
            # the task's row blocks: i32 (TVM narrows such index arithmetic to int32 whatever cast it had)
            tirx.Cast("int32", tirx.min(per_group, blocks - g * per_group))))

    ins = (xa, kernel, bias)
    buffers = [tirx.decl_buffer(t.shape, t.dtype, name) for t, name in zip(ins, ("xa", "w", "bias"))]
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
    offs = one_tap()
    pairs, blocks = n_ob // 2, rows // BLOCK_ROWS
    res = residual is not None

    def body(ins, outs):
        a, wt, taps, bs = ins[:4]
        y, = outs
        row = lambda bi, pb: (bi * length + pb * BLOCK_ROWS) * out  # noqa: E731 - the block's first row's offset
        return block_loop(n, pairs, blocks, LLVM_IR_BF16_OUT[res], lambda bi, j, pb: tirx.call_extern(
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
    xa = _pack_rows_bf16(x, kb) if gamma is None else pack_rows_ln_bf16(x, gamma, beta, eps, kb)
    n, rows = int(xa.shape[0]), int(xa.shape[2])
    offs = one_tap()
    pairs, blocks, dim = n_ob // 2, rows // BLOCK_ROWS, heads * d
    per_head, section = d // BLOCK_OC, dim // BLOCK_OC  # column blocks of 32 per head, per Q / K / V
    bh = n * heads
    shapes = {"q": (bh, per_head, rows, BF16_CHANNELS), "k": (bh, rows // OC, per_head, OC, OC),
              "v": (bh, d // OC, blocks, OC, OC)}

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
    offs = one_tap()
    zeros = te.compute((BLOCK_OC,), lambda _: tirx.const(0.0, "float32"), name="amx_zero_bias")

    def body(ins, outs):
        a, wt, taps, bs = ins
        y, = outs
        return block_loop(bh, pairs, blocks, LLVM_IR_QKV, lambda b, j, pb: tirx.call_extern(
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


__all__ = ["batch_matmul_bf16", "linear_rows_bf16", "linear_packed_bf16", "mlp_up_bf16", "qkv_tiles_bf16",
           "heads_matmul_pack_bf16", "pack_rows_ln_bf16", "schedule_batch"]
