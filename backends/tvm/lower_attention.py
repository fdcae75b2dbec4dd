"""TVM lowerings of the attention ops (convdsl/ir/ops/attention.py); see common.py for the entry format.

Every variant reduces to ``attend``: logits = q k^T * scale (+ a bias), softmax,
times v, as batched matmuls.  Whatever depends only on weights or shapes is
computed here with NumPy: relative position biases gathered from their
tables, Swin's shifted-window mask, sinusoidal position tables, batchnorm
scale/shift of CvT's projections.
"""
from __future__ import annotations

import math

import numpy as np

from convdsl.ir.ops.attention import cpb_bias_table, logit_scale_factor, mha_names, packed_cross, shift_mask
from convdsl.ir.optable import tuple_n

from convdsl.backends.tvm.common import R, family, relax

LOWERINGS = family("attention")


# ---- the shared core ----------------------------------------------------------------------
def linear(cx, x, weight: np.ndarray, bias: np.ndarray | None):
    """x @ weight^T + bias (weight [out, in], transposed once here)."""
    y = cx.emit(R.matmul(x, cx.const(np.ascontiguousarray(weight.T))))
    return y if bias is None else cx.emit(R.add(y, cx.const(bias)))


# CPUs with 32 vector registers (AVX-512): attention as one kernel (kernels.attention_rows) where
# there is no bias; False: Q K^T, softmax and P V as three (the comparison in docs/tvm.md)
ATTENTION_ROWS = True
# Q, K and V's weights packed one head (d <= 64 columns) to a block, where dense_block's 16 made a head's
# columns four 24 KB streams apart: ViT-S's projections (198 x 384 -> 6 x 64) alone 267 -> 259 us on Zen 4,
# the three in the network 10.75 -> 10.44 ms of kernels (9 alternating profiles)
HEAD_BLOCK = True


def cpu_hardware():
    """Hardware of the target being built when it is a CPU (LLVM), else None."""
    import tvm

    from convdsl.backends.tvm.schedules.cpu import Hardware

    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        return None
    return Hardware.of(target)


def key_padding(k, bias=None) -> int:
    """Keys to add so that a row of logits is a whole number of vectors: on CPUs, where
    ``cpu.py``'s softmax rule vectorizes a row (and sums it as lanes-wide partial sums) only
    when the lanes divide it, and the Q K^T GEMM's columns need no padding copy: ViT-S's 197
    tokens -> 200 (AVX2), 208 (AVX-512).  0 on GPUs, for keys shorter than a vector, and for a
    bias that is not per key.  (AVX-512 kept the plain lowering until it was measured there:
    ViT-S's softmax over 197 scalar columns took 9.5% of the network on a Granite Rapids Xeon.)"""
    import tvm

    from convdsl.backends.tvm.schedules.cpu import Hardware
    from convdsl.backends.tvm.schedules.layout import static_shape

    target = tvm.target.Target.current(allow_none=True)
    shape = static_shape(k)
    if target is None or target.kind.name != "llvm" or shape is None or str(k.ty.dtype) != "float32":
        return 0
    hw = Hardware.of(target)
    lk = shape[-2]
    if lk < hw.lanes:
        return 0
    if bias is not None and (static_shape(bias) or [0])[-1] != lk:
        return 0
    return (-lk) % hw.lanes


def attend(cx, q, k, v, scale: float, bias=None):
    """softmax(q k^T * scale + bias) v over the last two dims (batched).  With ``key_padding``
    the keys and values get zero rows and the padded logits -inf (a bias's padding too), so the
    padded keys weigh nothing and the result is unchanged."""
    fused = _attention_rows(cx, q, k, v, scale, bias)
    if fused is not None:
        return fused
    rank = q.ty.ndim
    pad = key_padding(k, bias)
    if pad:
        widths = [0, 0] * (rank - 2) + [0, pad, 0, 0]
        k, v = cx.emit(R.nn.pad(k, widths)), cx.emit(R.nn.pad(v, widths))
        lk = int(k.ty.shape[-2])
        if bias is None:
            bias = cx.const(np.where(np.arange(lk) < lk - pad, 0.0, -np.inf).astype(np.float32))
        else:
            brank = bias.ty.ndim
            bias = cx.emit(R.nn.pad(bias, [0, 0] * (brank - 1) + [0, pad], pad_value=float("-inf")))
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    logits = cx.emit(R.matmul(q, cx.emit(R.permute_dims(k, perm))))
    logits = cx.emit(R.multiply(logits, cx.const(scale)))
    if bias is not None:
        logits = cx.emit(R.add(logits, bias))
    return cx.emit(R.matmul(cx.emit(R.nn.softmax(logits, axis=-1)), v))


def _rows_kernel_fits(hw, d: int, lk: int, bias) -> bool:
    """Whether attention over ``lk`` keys of ``d`` channels a head runs as ``kernels.attention_rows`` on the
    CPU ``hw``: 32 vector registers (its 18-row Q K^T tile), d whole vectors, at least a vector of keys, no
    bias."""
    return ATTENTION_ROWS and bias is None and hw.registers >= 32 and d % hw.lanes == 0 and lk >= hw.lanes


def _attention_rows(cx, q, k, v, scale: float, bias):
    """``attend`` as one kernel (``kernels.attention_rows``) on AVX-512 for static float32 [N, heads, L, d]
    operands and no bias: K transposed, the keys padded to whole vectors and the queries to whole tasks by
    copies FuseOps merges with the heads' permutes.  None where it does not apply."""
    from convdsl.backends.tvm.schedules import kernels
    from convdsl.backends.tvm.schedules.cpu import attention_tiles
    from convdsl.backends.tvm.schedules.layout import static_shape

    hw = cpu_hardware()
    if hw is None or q.ty.ndim != 4:
        return None
    shapes = [static_shape(t) for t in (q, k, v)]
    if any(s is None for s in shapes) or any(str(t.ty.dtype) != "float32" for t in (q, k, v)):
        return None
    (_, _, lq, d), (_, _, lk, _) = shapes[:2]
    if not _rows_kernel_fits(hw, d, lk, bias) or shapes[2][3] != d:
        return None
    key_pad = (-lk) % hw.lanes
    rows = attention_tiles(lq, d, hw, lk + key_pad)[0]
    row_pad = (-lq) % rows
    kt = cx.emit(R.permute_dims(k, [0, 1, 3, 2]))
    if key_pad:
        kt = cx.emit(R.nn.pad(kt, [0, 0, 0, 0, 0, 0, 0, key_pad]))
        v = cx.emit(R.nn.pad(v, [0, 0, 0, 0, 0, key_pad, 0, 0]))
    if row_pad:
        q = cx.emit(R.nn.pad(q, [0, 0, 0, 0, 0, row_pad, 0, 0]))
    y = cx.bb.emit_te(kernels.attention_rows, q, kt, v, float(scale), lk, rows, hw.lanes,
                      primfunc_name_hint="attention")
    return cx.emit(R.strided_slice(y, axes=[2], begin=[0], end=[lq])) if row_pad else y


def _head_block(d: int, rows: int, hw) -> int:
    """The column block of Q, K and V's packed weights: one head's ``d`` columns (whole vectors, at most 64) where
    the model's register tile over that block keeps the rows of the tile over ``dense_block``'s (``HEAD_BLOCK``:
    one weight stream per tile instead of d / 16), else ``dense_block``'s.  Every such d on AVX-512; on AVX2 a
    64-column block is 8 ymm registers and its tile one row, so there the 16-column blocks stay."""
    from convdsl.backends.tvm.schedules.cpu import gemm_tile
    from convdsl.backends.tvm.schedules.layout import dense_block

    nb = dense_block(d)
    if not HEAD_BLOCK or d % 16 or d > 64 or d == nb:
        return nb
    kept = gemm_tile(rows, 1, hw, hw.vectors(d))[0] >= gemm_tile(rows, d // nb, hw, hw.vectors(nb))[0]
    return d if kept else nb


def _heads_layout(cx, xq, xkv, shapes, wq, wk, wv, bq, bk, bv, wo, bo, heads: int, scale: float, bias):
    """``mha`` on a CPU with no copy between the projections and the attention: Q, K^T and V are
    written by their GEMMs in the heads' layout ([N, heads, L, d], K as [N, heads, d, keys]; keys
    padded to whole vectors as ``key_padding``), the output projection reads the heads' layout
    (``kernels.dense_heads``, ``dense_merge_heads``); between them, on AVX-512 and with no bias,
    softmax(Q K^T) V is one kernel (``kernels.attention_rows``; ViT-S on Zen 4: the network 1.5% faster,
    the three kernels' 6.7 ms -> 4.6 ms in roofline.py's profile).  None where it does not apply (another
    target, symbolic or non-float32 shapes, a bias that is not per key)."""
    from convdsl.backends.tvm.schedules import kernels
    from convdsl.backends.tvm.schedules.cpu import attention_tiles, dense_rows, gemm_tile
    from convdsl.backends.tvm.schedules.layout import dense_block, pack_dense_weight, static_shape

    hw = cpu_hardware()
    (n, lq, _), (_, lk, _) = shapes
    dim = wq.shape[0]
    if hw is None or not all(isinstance(v, int) for v in (n, lq, lk)) or dim % heads \
            or any(str(e.ty.dtype) != "float32" for e in (xq, xkv)) or static_shape(xq) is None:
        return None
    d = dim // heads
    nb, nbo = _head_block(d, lq, hw), dense_block(wo.shape[0])
    if bias is not None and (static_shape(bias) or [0])[-1] != lk:
        return None
    fused = _rows_kernel_fits(hw, d, lk, bias)
    if fused:  # kernels.attention_rows: the keys whole vectors, the queries whole tasks of its rows
        pad = (-lk) % hw.lanes
        rm = attention_tiles(lq, d, hw, lk + pad)[0]
    else:
        # Q K^T's register tile (rows x column vectors): the keys padded to whole column tiles, the
        # queries to whole row tiles, so neither attention GEMM pads its operands
        rm, nv = gemm_tile(lq, -(-lk // hw.lanes), hw, 1, pad_cols=True)
        pad = (-lk) % (nv * hw.lanes) if lk >= hw.lanes else 0
        if pad - (-lk) % hw.lanes > 0.08 * lk:  # short rows (MaxViT's 49 keys): whole vectors only, 56 not 64
            pad = (-lk) % hw.lanes
    keys, q_rows = lk + pad, -(-lq // rm) * rm if lq >= rm else lq

    def project(x, w, b, length, keys, transpose=False):
        rows = dense_rows(keys, d // nb, hw, hw.vectors(nb))
        b = np.zeros(dim, np.float32) if b is None else b
        return cx.bb.emit_te(kernels.dense_heads, x, cx.const(pack_dense_weight(np.ascontiguousarray(w.T), nb)),
                             cx.const(b), heads, rows, keys, transpose, primfunc_name_hint="dense_heads")

    def merge(y):  # the output projection, reading the heads' layout
        rows = dense_rows(lq, wo.shape[0] // nbo, hw, hw.vectors(nbo))
        y = cx.bb.emit_te(kernels.dense_merge_heads, y, cx.const(pack_dense_weight(np.ascontiguousarray(wo.T), nbo)),
                          rows, lq, primfunc_name_hint="dense_merge_heads")
        return y if bo is None else cx.emit(R.add(y, cx.const(bo)))

    q = project(xq, wq, bq, lq, q_rows)  # [N, heads, q_rows, d]: rows past Lq are zeros
    kt = project(xkv, wk, bk, lk, keys, transpose=True)  # [N, heads, d, keys]
    v = project(xkv, wv, bv, lk, keys)  # [N, heads, keys, d]
    if fused and q_rows % rm == 0:
        y = cx.bb.emit_te(kernels.attention_rows, q, kt, v, scale, lk, rm, hw.lanes, primfunc_name_hint="attention")
        return merge(y)
    logits = cx.emit(R.multiply(cx.emit(R.matmul(q, kt)), cx.const(scale)))
    if pad:
        logits = cx.emit(R.add(logits, cx.const(np.where(np.arange(keys) < lk, 0.0, -np.inf).astype(np.float32))))
        if bias is not None:
            bias = cx.emit(R.nn.pad(bias, [0, 0] * (bias.ty.ndim - 1) + [0, pad], pad_value=float("-inf")))
    if bias is not None and q_rows > lq and static_shape(bias)[-2] == lq:  # padded queries: any finite logits
        bias = cx.emit(R.nn.pad(bias, [0, 0] * (bias.ty.ndim - 2) + [0, q_rows - lq, 0, 0]))
    if bias is not None:
        logits = cx.emit(R.add(logits, bias))
    return merge(cx.emit(R.matmul(cx.emit(R.nn.softmax(logits, axis=-1)), v)))  # [N, heads, q_rows, d]


def _attention_probs_bf16(q, kv, heads: int, d: int, k_off: int, scale: float, lq: int, lk: int,
                          tiles: bool = False):
    """softmax(scale * Q K^T) for q [N, Lq, >= heads*d] and kv [N, Lk, ...] (K at columns k_off + h*d; with
    ``tiles``, q and kv are ``amx_transformer.qkv_tiles_bf16``'s Q and K tiles, k_off unused), written as
    bf16 in P V's A-tile pack ([N*heads, keys/32, rows, 32] u16, ``batch_matmul_bf16``'s layout; keys and rows
    up to whole 32-blocks, the padding zeros): Q K^T on AMX tiles into f32 logits (the padded keys -inf), each
    row's max and sum of exponentials in f32, the probabilities exp * (1 / sum) rounded into the pack.  Neither
    the logits nor the probabilities exist as f32 tensors."""
    from tvm import te, tirx, topi

    from convdsl.backends.tvm.schedules import amx, amx_transformer
    from convdsl.backends.tvm.schedules.bf16 import to_bf16_bits

    if tiles:  # q and kv: ``amx_transformer.qkv_tiles_bf16``'s Q and K, already the A and B tiles
        bh = int(q.shape[0])
        acc = amx_transformer.batch_matmul_bf16(None, None, bh, lq, d, lk, a_packed=q, b_packed=kv)
    else:
        n = int(q.shape[0])  # q and kv may have more rows than Lq and Lk (``linear_rows_bf16``'s padding)
        bh = n * heads
        acc = amx_transformer.batch_matmul_bf16(lambda b, i, c: q[b // heads, i, b % heads * d + c],
                                    lambda b, c, j: kv[b // heads, j, k_off + b % heads * d + c], bh, lq, d, lk,
                                    b_along_k=True)
    keys, rows, lanes = int(acc.shape[1]) * amx.OC, int(acc.shape[2]), amx.OC
    ninf = tirx.const(float("-inf"), "float32")
    logits = te.compute((bh, lq, keys), lambda b, i, j: tirx.Select(
        j < lk, acc[b, j // amx.OC, i, j % amx.OC] * tirx.const(scale, "float32"), ninf), name="attn_logits")
    # each row's max and sum of exponentials as ``lanes`` partial results first (one vector per 16 keys),
    # then across the lanes
    jo = te.reduce_axis((0, keys // lanes), "jo")
    top16 = te.compute((bh, lq, lanes), lambda b, i, v: te.max(logits[b, i, jo * lanes + v], axis=jo),
                       name="attn_max16")
    v = te.reduce_axis((0, lanes), "v")
    top = te.compute((bh, lq), lambda b, i: te.max(top16[b, i, v], axis=v), name="attn_max")
    e = topi.fast_exp(te.compute((bh, lq, keys), lambda b, i, c: logits[b, i, c] - top[b, i], name="attn_shift"))
    jo2 = te.reduce_axis((0, keys // lanes), "jo2")
    sum16 = te.compute((bh, lq, lanes), lambda b, i, v: te.sum(e[b, i, jo2 * lanes + v], axis=jo2),
                       name="attn_sum16")
    v2 = te.reduce_axis((0, lanes), "v2")
    total = te.compute((bh, lq), lambda b, i: te.sum(sum16[b, i, v2], axis=v2), name="attn_sum")
    inv = te.compute((bh, lq), lambda b, i: tirx.const(1.0, "float32") / total[b, i], name="attn_inv")  # once a row

    def pack(b, c, i, k):
        row = tirx.min(i, lq - 1)
        return tirx.Select(i < lq, to_bf16_bits(e[b, row, c * 32 + k] * inv[b, row]), tirx.const(0, "uint16"))

    return te.compute((bh, keys // 32, rows, 32), pack, name="amx_pack_p", attrs={amx.ATTR: "amx_pack_p"})


def _attention_values_bf16(p, kv, heads: int, d: int, lq: int, lk: int, v_off: int, packed: bool = False):
    """P V for P ``_attention_probs_bf16``'s pack and kv [N, Lk, ...] (V at columns v_off + h*d) -> [N, Lq, heads*d]
    on AMX tiles (heads merged: the output projection reads it as it is).  ``packed`` (d a multiple of 32): the
    heads merged as bf16 straight into the output projection's A-tile pack, [N, heads*d/32, rows, 32] uint16
    (``amx_transformer.linear_packed_bf16`` reads it; its own pack would round the same values to bf16)."""
    from tvm import te, tirx

    from convdsl.backends.tvm.schedules import amx, amx_transformer
    from convdsl.backends.tvm.schedules.bf16 import to_bf16_bits

    bh, kb = int(p.shape[0]), int(p.shape[1])
    n = int(kv.shape[0])
    # over all the padded keys (P's pack has them): V's rows past Lk repeat row Lk - 1, times P's zeros
    acc = amx_transformer.batch_matmul_bf16(None, lambda b, c, col: kv[b // heads, tirx.min(c, lk - 1),
                                                           v_off + b % heads * d + col],
                                bh, lq, kb * 32, d, a_packed=p)
    if packed:  # column c * 32 + e of the merged heads: head c // q, its column (c % q) * 32 + e (q = d / 32)
        q, rows = d // amx.BF16_CHANNELS, int(acc.shape[2])
        return te.compute((n, heads * q, rows, amx.BF16_CHANNELS), lambda b, c, i, e: to_bf16_bits(
            acc[b * heads + c // q, c % q * 2 + e // amx.OC, i, e % amx.OC]), name="amx_heads_pack",
            attrs={amx.ATTR: "amx_batch_out"})
    return te.compute((n, lq, heads * d), lambda b, i, c: acc[b * heads + c // d, c % d // amx.OC, i, c % d % amx.OC],
                      name="amx_out", attrs={amx.ATTR: "amx_batch_out"})


def _amx_bf16(cx, node, xq, xkv, shapes, wq, wk, wv, bq, bk, bv, wo, bo, heads: int, scale: float, bias):
    """``mha`` at ``--precision bf16`` on a CPU with AMX-BF16: every GEMM on AMX tiles with bf16 operands and
    f32 sums.  Self-attention with heads a multiple of 32 wide: Q/K/V as ``qkv_tiles_bf16`` (a layer norm
    read only here done in its pack), the attention's GEMMs reading its tiles, P V's blocks rounded into the
    output projection's tiles (``heads_matmul_pack_bf16``), the projection ``linear_packed_bf16``.
    Otherwise the projections are plain constant-weight matmuls (layout.py makes them ``amx.dense_bf16``; Q, K
    and V one GEMM when queries and keys are the same tensor), the attention itself two kernels reading the heads
    straight from the projections' [N, L, 3 dim] output: the probabilities, written as bf16 tiles
    (``_attention_probs_bf16``), and P V (``_attention_values_bf16``).  None where it
    does not apply (another precision or target, symbolic or non-float32 shapes, a bias or mask on the logits)."""
    import tvm

    from convdsl.backends.tvm.lower_norm import layer_norm_input
    from convdsl.backends.tvm.schedules import amx, amx_transformer

    target = tvm.target.Target.current(allow_none=True)
    (n, lq, _), (_, lk, _) = shapes
    dim = wq.shape[0]
    if cx.precision != "bf16" or bias is not None or target is None or target.kind.name != "llvm" \
            or not amx.has_amx_bf16(target) or not all(isinstance(v, int) for v in (n, lq, lk)) or dim % heads \
            or any(str(e.ty.dtype) != "float32" for e in (xq, xkv)):
        return None
    d = dim // heads

    def stacked(*bs):
        return None if all(b is None for b in bs) else np.concatenate(
            [np.zeros(dim, np.float32) if b is None else b for b in bs])

    if xq.same_as(xkv) and d % amx.BLOCK_OC == 0 and wo.shape[0] % amx.BLOCK_OC == 0:
        # Q, K, V one GEMM whose blocks are rounded straight into the attention GEMMs' tiles (no packs there)
        w = amx.pack_weight_bf16(np.concatenate([wq, wk, wv])[:, :, None, None])
        b = stacked(bq, bk, bv)
        # a layer norm read only here (ViT's ln_1) is done in the GEMM's pack: its f32 output never exists
        ln = layer_norm_input(cx, xq, cx.graph.inputs_of(node.id)[0]) if node is not None else None
        x, norm = (xq, ()) if ln is None else (ln[0], ln[1:])
        qkv = cx.bb.emit_te(amx_transformer.qkv_tiles_bf16, x, cx.const(w, "uint16"),
                            cx.const(np.zeros(3 * dim, np.float32) if b is None else b), heads, d, *norm,
                            primfunc_name_hint="qkv_tiles_bf16_amx")
        q, kt, v = (cx.emit(relax.TupleGetItem(qkv, i)) for i in range(3))
        p = cx.bb.emit_te(_attention_probs_bf16, q, kt, heads, d, 0, scale, lq, lk, True,
                          primfunc_name_hint="attention_probs_bf16_amx")
        y = cx.bb.emit_te(amx_transformer.heads_matmul_pack_bf16, p, v, heads,
                          primfunc_name_hint="attention_pv_bf16_amx")
        return cx.bb.emit_te(amx_transformer.linear_packed_bf16, y,
                             cx.const(amx.pack_weight_bf16(wo[:, :, None, None]), "uint16"),
                             cx.const(np.zeros(wo.shape[0], np.float32) if bo is None else bo), lq,
                             primfunc_name_hint="out_proj_bf16_amx")
    if xq.same_as(xkv) and (3 * dim) % amx.BLOCK_OC == 0:
        # [N, rows, 3 dim]: Q, K, V one GEMM, the bias in its tiles and no epilogue pass (rows: L up to 32s)
        w = amx.pack_weight_bf16(np.concatenate([wq, wk, wv])[:, :, None, None])
        b = stacked(bq, bk, bv)
        q = kv = cx.bb.emit_te(amx_transformer.linear_rows_bf16, xq, cx.const(w, "uint16"),
                               cx.const(np.zeros(3 * dim, np.float32) if b is None else b),
                               primfunc_name_hint="qkv_bf16_amx")
        k_off, v_off = dim, 2 * dim
    elif xq.same_as(xkv):
        q = kv = linear(cx, xq, np.concatenate([wq, wk, wv]), stacked(bq, bk, bv))  # [N, L, 3 dim]
        k_off, v_off = dim, 2 * dim
    else:
        q, kv = linear(cx, xq, wq, bq), linear(cx, xkv, np.concatenate([wk, wv]), stacked(bk, bv))
        k_off, v_off = 0, dim
    p = cx.bb.emit_te(_attention_probs_bf16, q, kv, heads, d, k_off, scale, lq, lk,
                      primfunc_name_hint="attention_probs_bf16_amx")
    if d % amx.BF16_CHANNELS == 0 and wo.shape[0] % amx.BLOCK_OC == 0:
        # the heads as bf16 tiles into the output projection (bias, and a residual add after it, in its block
        # loop: lower_elementwise._amx_attention_residual): no f32 copy of the heads, no pack in the projection
        y = cx.bb.emit_te(_attention_values_bf16, p, kv, heads, d, lq, lk, v_off, True,
                          primfunc_name_hint="attention_pv_bf16_amx")
        return cx.bb.emit_te(amx_transformer.linear_packed_bf16, y,
                             cx.const(amx.pack_weight_bf16(wo[:, :, None, None]), "uint16"),
                             cx.const(np.zeros(wo.shape[0], np.float32) if bo is None else bo), lq,
                             primfunc_name_hint="out_proj_bf16_amx")
    y = cx.bb.emit_te(_attention_values_bf16, p, kv, heads, d, lq, lk, v_off,
                      primfunc_name_hint="attention_pv_bf16_amx")
    return linear(cx, y, wo, bo)


def mha(cx, node, xq, xkv, shapes, wq, wk, wv, bq, bk, bv, wo, bo, heads: int, scale, bias=None):
    """Multi-head attention of queries xq [N, Lq, C] over xkv [N, Lk, Ck]; returns [N, Lq, dim]."""
    (n, lq, _), (_, lk, _) = shapes
    dim = wq.shape[0]
    d = dim // heads
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    tiles = _amx_bf16(cx, node, xq, xkv, shapes, wq, wk, wv, bq, bk, bv, wo, bo, heads, scale, bias)
    if tiles is not None:
        return tiles
    # --precision bf16 without AMX tiles: the four projections as plain linears, which the blocked layout
    # makes vdpbf16ps GEMMs (bf16.dense_packed_bf16); the heads layout's GEMMs are f32 (ViT-S on Zen 4, roofline.py
    # profiles, docs/tvm.md: the network 35.6 -> 31.1 ms of kernels, the projections 14.4 -> 8.0 ms, the heads'
    # copies 0.5)
    fast = None if cx.precision == "bf16" else _heads_layout(cx, xq, xkv, shapes, wq, wk, wv, bq, bk, bv, wo, bo,
                                                              heads, scale, bias)
    if fast is not None:
        return fast
    q = linear(cx, xq, wq, bq)
    k = linear(cx, xkv, wk, bk)
    v = linear(cx, xkv, wv, bv)
    q = cx.emit(R.permute_dims(cx.emit(R.reshape(q, (n, lq, heads, d))), [0, 2, 1, 3]))
    k = cx.emit(R.permute_dims(cx.emit(R.reshape(k, (n, lk, heads, d))), [0, 2, 1, 3]))
    v = cx.emit(R.permute_dims(cx.emit(R.reshape(v, (n, lk, heads, d))), [0, 2, 1, 3]))
    y = attend(cx, q, k, v, scale, bias)  # [N, heads, Lq, d]
    y = cx.emit(R.reshape(cx.emit(R.permute_dims(y, [0, 2, 1, 3])), (n, lq, dim)))
    return linear(cx, y, wo, bo)


def _chunks(w: np.ndarray | None, parts: int = 3):
    return (None,) * parts if w is None else tuple(np.split(w, parts, axis=0))


def _opt(cx, name: str):
    return cx.param(name) if cx.has_param(name) else None


def _mask_bias(cx, mask, t, n: int, heads: int, lq: int, lk: int):
    """An input mask -> additive bias broadcastable to [N, heads, Lq, Lk] (bool: True = blocked)."""
    if t.dtype == "bool":
        mask = cx.emit(R.where(mask, cx.const(-np.inf), cx.const(0.0)))
    if t.rank == 3:  # [N*heads, Lq, Lk]
        mask = cx.emit(R.reshape(mask, (n, heads, lq, lk)))
    return mask


def _rel_bias(table: np.ndarray, lq: int, lk: int, max_len: int) -> np.ndarray:
    """table[i - j + max_len - 1, h] -> [heads, Lq, Lk]."""
    offset = np.arange(lq)[:, None] - np.arange(lk)[None, :] + max_len - 1
    return np.ascontiguousarray(table[offset].transpose(2, 0, 1))


# ---- mhsa / cross attention -------------------------------------------------------------------
def _mhsa(cx, node, args, ins):
    a = node.attrs
    n, length, c = cx.shape(ins[0])
    heads, names = a["heads"], mha_names(a)
    wq, wk, wv = _chunks(cx.param(names.w))
    bq, bk, bv = _chunks(_opt(cx, names.b))
    bias = None
    if len(args) > 1:
        bias = _mask_bias(cx, args[1], ins[1], n, heads, length, length)
    if a["rel_pos"]:
        rel = cx.const(_rel_bias(cx.param("relative_position_bias_table"), length, length, a["max_len"]))
        bias = rel if bias is None else cx.emit(R.add(bias, rel))
    if a["mask"] == "causal":  # -inf above the diagonal (top-left aligned, as is_causal)
        causal = cx.const(np.triu(np.full((length, length), -np.inf), 1))
        bias = causal if bias is None else cx.emit(R.add(bias, causal))
    shapes = (cx.shape(ins[0]), cx.shape(ins[0]))
    return mha(cx, node, args[0], args[0], shapes, wq, wk, wv, bq, bk, bv, cx.param(names.out_w),
               _opt(cx, names.out_b), heads, a["scale"], bias)


def _packed_attention(cx, node, args, ins):
    """mhsa between its projections: tokens [N, L, 3C] holding q | k | v -> [N, L, C] (heads merged)."""
    n, length, c3 = cx.shape(ins[0])
    heads = node.attrs["heads"]
    d = c3 // (3 * heads)
    x = cx.emit(R.permute_dims(cx.emit(R.reshape(args[0], (n, length, 3, heads, d))), [2, 0, 3, 1, 4]))
    parts = cx.emit(R.split(x, 3, axis=0))
    q, k, v = (cx.emit(R.squeeze(cx.emit(relax.TupleGetItem(parts, i)), [0])) for i in range(3))
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1.0 / math.sqrt(d)
    y = attend(cx, q, k, v, scale)  # [N, heads, L, d]
    return R.reshape(cx.emit(R.permute_dims(y, [0, 2, 1, 3])), (n, length, c3 // 3))


def _cross_attention(cx, node, args, ins):
    a = node.attrs
    (n, lq, c), (_, lk, ck) = cx.shape(ins[0]), cx.shape(ins[1])
    names = mha_names(a, packed_cross(c, ck, a["dim"]))
    if names.w is not None:
        wq, wk, wv = _chunks(cx.param(names.w))
    else:
        wq, wk, wv = cx.param(names.q), cx.param(names.k), cx.param(names.v)
    bq, bk, bv = _chunks(_opt(cx, names.b))
    bias = _mask_bias(cx, args[2], ins[2], n, a["heads"], lq, lk) if len(args) > 2 else None
    return mha(cx, node, args[0], args[1], (cx.shape(ins[0]), cx.shape(ins[1])), wq, wk, wv, bq, bk, bv,
               cx.param(names.out_w), _opt(cx, names.out_b), a["heads"], a["scale"], bias)


# ---- Swin window attention ---------------------------------------------------------------------
def window_bias(table: np.ndarray, wh: int, ww: int) -> np.ndarray:
    """[heads, T, T] relative position bias (T = wh*ww), as torchvision's relative_position_index."""
    ys, xs = np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    index = (ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + xs[:, None] - xs[None, :] + ww - 1
    return table[index].transpose(2, 0, 1)


def _roll(cx, x, size: int, axis: int, shift: int):
    """torch.roll(x, shift, axis) as a gather: out[i] = x[(i - shift) mod size]."""
    idx = (np.arange(size) - shift) % size
    return cx.emit(R.take(x, cx.const(idx, "int64"), axis=axis, mode="clip"))


def _unit(cx, x, eps: float = 1e-12):
    """F.normalize(x, dim=-1): x / max(||x||, eps)."""
    norm = cx.emit(R.sqrt(cx.emit(R.sum(cx.emit(R.multiply(x, x)), axis=-1, keepdims=True))))
    return cx.emit(R.divide(x, cx.emit(R.maximum(norm, cx.const(np.float32(eps))))))


def _window_attention(cx, node, args, ins):
    a = node.attrs
    n, h, w, c = cx.shape(ins[0])
    wh, ww = tuple_n(a["window"], 2)
    heads = a["heads"]
    d = c // heads
    x = args[0]
    ph, pw = (wh - h % wh) % wh, (ww - w % ww) % ww
    if ph or pw:  # zero-pad bottom/right to whole windows
        x = cx.emit(R.nn.pad(x, [0, 0, 0, ph, 0, pw, 0, 0]))
    hp, wp = h + ph, w + pw
    shift = tuple_n(a["shift"], 2)
    sh = shift[0] if wh < hp else 0  # no shift along a side one window covers
    sw = shift[1] if ww < wp else 0
    if sh:
        x = _roll(cx, x, hp, 1, -sh)
    if sw:
        x = _roll(cx, x, wp, 2, -sw)
    nwin, t = (hp // wh) * (wp // ww), wh * ww
    x = cx.emit(R.reshape(x, (n, hp // wh, wh, wp // ww, ww, c)))
    x = cx.emit(R.reshape(cx.emit(R.permute_dims(x, [0, 1, 3, 2, 4, 5])), (n, nwin, t, c)))
    qkv_bias = _opt(cx, f"{a['qkv']}.bias")
    if a["v2"] and qkv_bias is not None:  # V2 leaves the key's bias out
        qkv_bias = qkv_bias.copy()
        qkv_bias[c:2 * c] = 0
    qkv = linear(cx, x, cx.param(f"{a['qkv']}.weight"), qkv_bias)  # [N, nW, T, 3C]
    qkv = cx.emit(R.reshape(qkv, (n, nwin, t, 3, heads, d)))
    qkv = cx.emit(R.permute_dims(qkv, [3, 0, 1, 4, 2, 5]))  # [3, N, nW, heads, T, d]
    parts = cx.emit(R.split(qkv, 3, axis=0))
    q, k, v = (cx.emit(R.squeeze(cx.emit(relax.TupleGetItem(parts, i)), [0])) for i in range(3))
    scale = a["scale"] or d ** -0.5
    if a["v2"]:  # cosine attention: unit q, k; logits times exp(min(logit_scale, log 100)) per head
        q, k = _unit(cx, q), _unit(cx, k)
        ls = logit_scale_factor(cx.param("logit_scale"))
        q, scale = cx.emit(R.multiply(q, cx.const(ls))), 1.0  # [heads, 1, 1] against [N, nW, heads, T, d]
        table = cpb_bias_table(*(cx.param(k) for k in ("cpb_mlp.0.weight", "cpb_mlp.0.bias", "cpb_mlp.2.weight")),
                               wh, ww)
        bias = window_bias(table, wh, ww)[None]
    else:
        bias = window_bias(cx.param("relative_position_bias_table"), wh, ww)[None]  # [1, heads, T, T]
    if sh or sw:
        bias = bias + shift_mask(hp, wp, wh, ww, sh, sw)[:, None]  # [nW, heads, T, T]
    y = attend(cx, q, k, v, scale, cx.const(bias.astype(np.float32)))  # [N, nW, heads, T, d]
    y = cx.emit(R.reshape(cx.emit(R.permute_dims(y, [0, 1, 3, 2, 4])), (n, nwin, t, c)))
    y = linear(cx, y, cx.param(f"{a['proj']}.weight"), _opt(cx, f"{a['proj']}.bias"))
    y = cx.emit(R.reshape(y, (n, hp // wh, wp // ww, wh, ww, c)))
    y = cx.emit(R.reshape(cx.emit(R.permute_dims(y, [0, 1, 3, 2, 4, 5])), (n, hp, wp, c)))
    if sh:
        y = _roll(cx, y, hp, 1, sh)
    if sw:
        y = _roll(cx, y, wp, 2, sw)
    if ph or pw:
        y = cx.emit(R.strided_slice(y, [1, 2], [0, 0], [h, w]))
    return y


# ---- CvT convolutional attention ---------------------------------------------------------------
def _dw_bn(cx, x, prefix: str, c: int, k: int, stride: int, eps: float = 1e-5):
    """Depthwise conv (padding k//2, no bias) + inference batchnorm, folded to x*s + b after the conv."""
    y = cx.emit(R.nn.conv2d(x, cx.const(cx.param(f"{prefix}.conv.weight")), strides=stride,
                            padding=k // 2, groups=c))
    var = cx.param(f"{prefix}.bn.running_var").astype(np.float64)
    s = cx.param(f"{prefix}.bn.weight") / np.sqrt(var + eps)
    b = cx.param(f"{prefix}.bn.bias") - cx.param(f"{prefix}.bn.running_mean") * s
    y = cx.emit(R.multiply(y, cx.const(s.reshape(1, c, 1, 1))))
    return cx.emit(R.add(y, cx.const(b.reshape(1, c, 1, 1))))


def _tokens(cx, x, n: int, c: int):
    """[N, C, H, W] -> [N, H*W, C]."""
    return cx.emit(R.permute_dims(cx.emit(R.reshape(x, (n, c, -1))), [0, 2, 1]))


def _conv_attention(cx, node, args, ins):
    a = node.attrs
    n, c, _, _ = cx.shape(ins[0])
    _, _, ho, wo = cx.out_shape()
    k, heads = a["k"], a["heads"]
    d = c // heads
    x = args[0]
    q = _tokens(cx, _dw_bn(cx, x, "conv_proj_q", c, k, a["stride_q"]), n, c)
    kk = _tokens(cx, _dw_bn(cx, x, "conv_proj_k", c, k, a["stride_kv"]), n, c)
    v = _tokens(cx, _dw_bn(cx, x, "conv_proj_v", c, k, a["stride_kv"]), n, c)
    q, kk, v = (linear(cx, t, cx.param(f"proj_{s}.weight"), _opt(cx, f"proj_{s}.bias"))
                for t, s in ((q, "q"), (kk, "k"), (v, "v")))
    q, kk, v = (cx.emit(R.permute_dims(cx.emit(R.reshape(t, (n, -1, heads, d))), [0, 2, 1, 3])) for t in (q, kk, v))
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(d)
    y = attend(cx, q, kk, v, scale)  # [N, heads, Lq, d]
    y = cx.emit(R.reshape(cx.emit(R.permute_dims(y, [0, 2, 1, 3])), (n, ho * wo, c)))
    y = linear(cx, y, cx.param("proj.weight"), _opt(cx, "proj.bias"))
    return R.reshape(cx.emit(R.permute_dims(y, [0, 2, 1])), (n, c, ho, wo))


# ---- HaloNet ---------------------------------------------------------------------------------------
def _conv1x1(cx, x, weight: np.ndarray, bias: np.ndarray | None):
    y = cx.emit(R.nn.conv2d(x, cx.const(weight)))
    return y if bias is None else cx.emit(R.add(y, cx.const(bias.reshape(1, -1, 1, 1))))


def _halo_attention(cx, node, args, ins):
    a = node.attrs
    n, c, h, w = cx.shape(ins[0])
    heads, b, halo, dim = a["heads"], a["block_size"], a["halo"], a["dim"]
    win, d = b + 2 * halo, dim // heads
    nh, nw = h // b, w // b
    x = args[0]
    # queries: [N, dim, H, W] -> [N, heads, blocks, b*b, d]
    q = _conv1x1(cx, x, cx.param("q.weight"), _opt(cx, "q.bias"))
    q = cx.emit(R.reshape(q, (n, heads, d, nh, b, nw, b)))
    q = cx.emit(R.permute_dims(q, [0, 1, 3, 5, 4, 6, 2]))  # [N, heads, nh, nw, by, bx, d]
    qb = cx.emit(R.reshape(q, (n, heads, nh * nw, b, b, d)))
    q = cx.emit(R.reshape(q, (n, heads, nh * nw, b * b, d)))
    # keys/values: zero-pad by halo, cut overlapping win x win windows at stride b (unfold as gathers)
    kv = _conv1x1(cx, x, cx.param("kv.weight"), _opt(cx, "kv.bias"))
    kv = cx.emit(R.nn.pad(kv, [0, 0, 0, 0, halo, halo, halo, halo]))
    rows = (np.arange(nh)[:, None] * b + np.arange(win)[None, :]).ravel()
    cols = (np.arange(nw)[:, None] * b + np.arange(win)[None, :]).ravel()
    kv = cx.emit(R.take(kv, cx.const(rows, "int64"), axis=2, mode="clip"))  # [N, 2dim, nh*win, Wp]
    kv = cx.emit(R.take(kv, cx.const(cols, "int64"), axis=3, mode="clip"))  # [N, 2dim, nh*win, nw*win]
    kv = cx.emit(R.reshape(kv, (n, 2 * dim, nh, win, nw, win)))
    kv = cx.emit(R.permute_dims(kv, [0, 1, 2, 4, 3, 5]))  # [N, 2dim, nh, nw, win, win]
    kv = cx.emit(R.reshape(kv, (n, heads, 2 * d, nh * nw, win * win)))
    kv = cx.emit(R.permute_dims(kv, [0, 1, 3, 4, 2]))  # [N, heads, blocks, win*win, 2d]
    parts = cx.emit(R.split(kv, [d], axis=4))
    k, v = cx.emit(relax.TupleGetItem(parts, 0)), cx.emit(relax.TupleGetItem(parts, 1))
    # relative logits: q . height_rel[ky - qy + win - 1] and q . width_rel[kx - qx + win - 1]
    offset = np.arange(win)[None, :] - np.arange(b)[:, None] + win - 1  # [b, win]
    rh = cx.param("pos_embed.height_rel")[offset].transpose(0, 2, 1)  # [qy, d, ky]
    rw = cx.param("pos_embed.width_rel")[offset].transpose(0, 2, 1)  # [qx, d, kx]
    rel_h = cx.emit(R.matmul(qb, cx.const(rh)))  # [N, heads, blocks, qy, qx, ky]
    qt = cx.emit(R.permute_dims(qb, [0, 1, 2, 4, 3, 5]))  # [..., qx, qy, d]
    rel_w = cx.emit(R.permute_dims(cx.emit(R.matmul(qt, cx.const(rw))), [0, 1, 2, 4, 3, 5]))  # [..., qy, qx, kx]
    rel = cx.emit(R.add(cx.emit(R.expand_dims(rel_h, 6)), cx.emit(R.expand_dims(rel_w, 5))))
    rel = cx.emit(R.reshape(rel, (n, heads, nh * nw, b * b, win * win)))
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(d)
    y = attend(cx, q, k, v, scale, rel)  # [N, heads, blocks, b*b, d]
    y = cx.emit(R.reshape(y, (n, heads, nh, nw, b, b, d)))
    y = cx.emit(R.permute_dims(y, [0, 1, 6, 2, 4, 3, 5]))
    return R.reshape(y, (n, dim, h, w))


# ---- tokens ----------------------------------------------------------------------------------------
def _patch_embed(cx, node, args, ins):
    ph, pw = tuple_n(node.attrs["patch"], 2)
    n, c, h, w = cx.shape(ins[0])
    if cx.precision == "bf16" and all(isinstance(v, int) for v in (n, c, h, w)):
        # the patches as rows of one GEMM (a stride = kernel conv is a permutation and a matmul): layout.py runs
        # it on bf16 tiles, where the conv, with its 3 input channels, would stay f32 (ViT-S: 0.72 ms, 3% of
        # the bf16 build on one thread)
        oh, ow = h // ph, w // pw
        x = cx.emit(R.reshape(args[0], (n, c, oh, ph, ow, pw)))
        x = cx.emit(R.reshape(cx.emit(R.permute_dims(x, [0, 2, 4, 1, 3, 5])), (n, oh * ow, c * ph * pw)))
        weight = cx.param("weight").reshape(node.attrs["dim"], c * ph * pw)
        return linear(cx, x, weight, cx.param("bias") if node.attrs["bias"] else None)
    y = cx.emit(R.nn.conv2d(args[0], cx.const(cx.param("weight")), strides=(ph, pw)))
    if node.attrs["bias"]:
        y = cx.emit(R.add(y, cx.const(cx.param("bias").reshape(1, -1, 1, 1))))
    return _tokens(cx, y, n, node.attrs["dim"])


def _class_token(cx, node, args, ins):
    n, _, c = cx.shape(ins[0])
    tok = cx.emit(R.broadcast_to(cx.const(cx.param("class_token")), (n, node.attrs["tokens"], c)))
    return R.concat([tok, args[0]], axis=1)


def sinusoid_table(length: int, c: int) -> np.ndarray:
    """sin on even, cos on odd channels, in float32 as PositionEmbedding computes it."""
    pos = np.arange(length, dtype=np.float32)[:, None]
    freq = np.exp(np.arange(0, c, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / c))
    return np.stack([np.sin(pos * freq), np.cos(pos * freq)], axis=-1).reshape(length, c)


def _pos_embed(cx, node, args, ins):
    _, length, c = cx.shape(ins[0])
    table = cx.param("pos_embedding") if node.attrs["kind"] == "learned" else sinusoid_table(length, c)
    return R.add(args[0], cx.const(table))


def _layer_scale(cx, node, args, ins):
    return R.multiply(args[0], cx.const(cx.param("layer_scale")))


LOWERINGS.add("mhsa", _mhsa)
LOWERINGS.add("packed_attention", _packed_attention)
LOWERINGS.add("cross_attention", _cross_attention)
LOWERINGS.add("window_attention", _window_attention)
LOWERINGS.add("conv_attention", _conv_attention)
LOWERINGS.add("halo_attention", _halo_attention)
LOWERINGS.add("patch_embed", _patch_embed)
LOWERINGS.add("class_token", _class_token)
LOWERINGS.add("pos_embed", _pos_embed)
LOWERINGS.add("layer_scale", _layer_scale)
