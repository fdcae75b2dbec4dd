"""TE computes of the CPU kernels that convdsl schedules itself (``cpu.py``).

Each compute names its main block with a ``convdsl.kernel`` annotation, which is how
the schedule dispatcher recognizes it after FuseOps/FuseTIR merged epilogues into it:

- ``conv2d_nchwc``: direct convolution in the blocked layout NCHW[ib]c x OIHW[ib]i[ob]o
  -> NCHW[ob]c (NeoCPU's layout; the weight is packed once at compile time); grouped convs
  too, where each group's input and output channels are whole blocks.
- ``dwconv_nchwc``: depthwise convolution, NCHW[b]c x [C/b, KH, KW, b] -> NCHW[b]c.
- ``dense_packed``: x[..., K] @ W, with W packed as [N/nb, K, nb] (nb lanes contiguous), over
  rows padded to whole register tiles where ``cpu.dense_rows`` says so.
- ``dense_heads`` / ``dense_merge_heads``: attention's projections in the heads' layout (AVX2,
  ``lower_attention._heads_layout``): Q, K^T, V written as [N, heads, ...], the output
  projection reading it; both scheduled as ``dense_packed``.
- ``attention_rows``: softmax(scale Q K^T) V in one kernel over blocks of query rows (AVX-512,
  ``lower_attention``), reading ``dense_heads``'s layouts.
- ``pack_nchwc`` / ``unpack_nchwc``: the layout transforms NCHW <-> NCHW[b]c.
"""
from __future__ import annotations

from tvm import te, tirx

from convdsl.ir.ops.conv import conv_out_size

KERNEL_ATTR = "convdsl.kernel"
GROUPS_ATTR = "convdsl.groups"  # a grouped conv2d_nchwc's groups (tophub keys it: its reduction differs)
K_INNER_ATTR = "convdsl.k_inner"  # a GEMM whose reduction is better split by this (cpu.schedule_gemm)
LOWEST_F32 = -3.4028234663852886e38  # numpy.finfo(float32).min


def rounded(y):
    """The float32 value ``y`` (TIR) as a rounding point: max with the lowest float32 is the identity on
    every number, and it keeps LLVM (TVM's codegen contracts every fmul + fadd it can) from fusing the
    multiply that made ``y`` with an add that FuseOps put after it into one FMA, which rounds once
    where the torch simulation rounds twice.  A value on a quantization half-step then went the other
    way (ResNet-50: a scaled conv output plus its residual, 91.49999 instead of 91.5 before a
    quantize), and that one-step flip grew through the later layers."""
    return tirx.max(y, tirx.const(LOWEST_F32, "float32"))


def pad_spatial(data: te.Tensor, pt: int, pl: int, pb: int, pr: int, block: int | None = None, value=0.0,
                name: str = "pad_nchwc", attrs: dict | None = None) -> te.Tensor:
    """``data`` [N, C/b, H, W, b] padded by (pt, pl, pb, pr) with ``value`` (an int8 input's zero point;
    else 0); ``block`` != b: the copy also re-blocks the channels to [N, C/block, H', W', block] (a grouped
    conv whose groups are narrower than ``data``'s blocks), channel c at [c // block, ..., c % block].
    ``name`` and ``attrs``: the copy's block, for the schedule that finds it (``{KERNEL_ATTR: "pad"}``)."""
    n, c, h, w, b = data.shape
    nb = int(b) if block is None else block
    if nb == int(b) and not (pt or pl or pb or pr):
        return data
    read = _reblocked(data, nb)

    def fn(i, j, y, x, k):
        inside = tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl)
        return tirx.if_then_else(inside, read(i, j, y - pt, x - pl, k), tirx.const(value, data.dtype))

    return te.compute((n, int(c) * int(b) // nb, h + pt + pb, w + pl + pr, nb), fn, name=name,
                      attrs={KERNEL_ATTR: "pad"} if attrs is None else attrs)


def _reblocked(data: te.Tensor, block: int):
    """``data`` [N, C/b, H, W, b] read in blocks of ``block`` channels: (i, j, y, x, k) -> channel j * block + k
    at [c // b, ..., c % b] (itself where block is b)."""
    b = int(data.shape[4])
    if block == b:
        return lambda i, j, y, x, k: data[i, j, y, x, k]

    def read(i, j, y, x, k):
        ch = j * block + k
        return data[i, ch // b, y, x, ch % b]

    return read


def out_size(size: int, k: int, stride: int, pad: int, dilation: int) -> int:
    """Output size of a convolution padded by ``pad`` in all (the op table's formula)."""
    return conv_out_size(size, pad, 0, k, stride, dilation)


def conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, stride, padding, dilation, groups: int = 1) -> te.Tensor:
    """data [N, C/b, H, W, b], kernel [O/ob, C/groups/ib, KH, KW, ib, ob] -> [N, O/ob, OH, OW, ob];
    N may be symbolic (a dynamic batch).

    ``groups`` > 1: a grouped conv whose per-group widths are whole blocks (ib | C/groups, ob | O/groups):
    output block o reduces over its group's input blocks only, ``(o // (O/ob/groups)) * C/groups/ib + rc``;
    the rest is the dense conv's compute (and schedule).  The padded copy re-blocks the input when its
    block b is not ib (groups narrower than the blocks of the conv before)."""
    n = data.shape[0]
    cb, h, w, lanes = (int(v) for v in data.shape[1:])
    ocb, icb, kh, kw, ib, ob = (int(v) for v in kernel.shape)
    if cb * lanes != groups * icb * ib or ocb % groups:
        raise ValueError(f"conv2d_nchwc: {cb * lanes} input channels, kernel {list(kernel.shape)}, groups {groups}")
    (sh, sw), (dh, dw) = stride, dilation
    pt, pl, pb, pr = padding
    oh, ow = out_size(h, kh, sh, pt + pb, dh), out_size(w, kw, sw, pl + pr, dw)
    xp = pad_spatial(data, pt, pl, pb, pr, ib)
    rc = te.reduce_axis((0, icb), "ic_outer")
    ry = te.reduce_axis((0, kh), "kh")
    rx = te.reduce_axis((0, kw), "kw")
    ri = te.reduce_axis((0, ib), "ic_inner")
    per_group = ocb // groups  # output blocks per group
    attrs = {KERNEL_ATTR: "conv2d_nchwc", **({GROUPS_ATTR: groups} if groups > 1 else {})}

    def in_block(o):  # the input block that output block o reads at reduction step rc
        return rc if groups == 1 else o // per_group * icb + rc

    return te.compute(
        (n, ocb, oh, ow, ob),
        lambda b, o, y, x, oc: te.sum(
            xp[b, in_block(o), y * sh + ry * dh, x * sw + rx * dw, ri] * kernel[o, rc, ry, rx, ri, oc],
            axis=[rc, ry, rx, ri]),
        name="conv2d_nchwc", attrs=attrs)


def to_bf16_bits(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """TIR: an f32 value -> its bf16 bit pattern (uint16), round to nearest even (``round_to_bf16``'s
    rule) in integer arithmetic, which vectorizes: (u + 0x7fff + ((u >> 16) & 1)) >> 16."""
    u = tirx.reinterpret("uint32", v)
    one = tirx.const(1, "uint32")
    r = (u + tirx.const(0x7FFF, "uint32") + ((u >> tirx.const(16, "uint32")) & one)) >> tirx.const(16, "uint32")
    return r.astype("uint16")


def bf16_value(bits: tirx.PrimExpr) -> tirx.PrimExpr:
    """TIR: a bf16 bit pattern (uint16) -> its f32 value (exact)."""
    return tirx.reinterpret("float32", bits.astype("uint32") << tirx.const(16, "uint32"))


def to_bf16_nchwc(data: te.Tensor) -> te.Tensor:
    """f32 -> bf16 bit patterns (uint16), round to nearest even, elementwise: what a bf16 kernel reads
    (``bf16_inputs`` in layout.py), FuseOps fuses it into the kernel that writes ``data``."""
    return te.compute(data.shape, lambda *i: to_bf16_bits(data[i]), name="to_bf16")


def from_bf16_nchwc(data: te.Tensor) -> te.Tensor:
    """bf16 bit patterns (uint16) -> their f32 values, elementwise."""
    return te.compute(data.shape, lambda *i: bf16_value(data[i]), name="from_bf16")


def dwconv_nchwc(data: te.Tensor, kernel: te.Tensor, stride, padding, dilation, bf16: bool = False) -> te.Tensor:
    """data [N, C/b, H, W, b], kernel [C/b, KH, KW, b] -> [N, C/b, OH, OW, b]; N may be symbolic.
    ``bf16``: the input's values rounded to bf16 (data f32, rounded by the padded copy) or given as bf16
    bits (data uint16, widened by it); the weights, products and sums f32."""
    n = data.shape[0]
    cb, h, w, b = (int(v) for v in data.shape[1:])
    _, kh, kw, _ = (int(v) for v in kernel.shape)
    (sh, sw), (dh, dw) = stride, dilation
    pt, pl, pb, pr = padding
    oh, ow = out_size(h, kh, sh, pt + pb, dh), out_size(w, kw, sw, pl + pr, dw)
    if bf16:  # the padded copy (always made: it is where the values become f32) reads bf16
        src = data
        read = (lambda v: bf16_value(v)) if data.dtype == "uint16" else (lambda v: bf16_value(to_bf16_bits(v)))

        def fn(i, j, y, x, k):
            inside = tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl)
            return tirx.if_then_else(inside, read(src[i, j, y - pt, x - pl, k]), tirx.const(0.0, "float32"))

        xp = te.compute((n, cb, h + pt + pb, w + pl + pr, b), fn, name="pad_nchwc", attrs={KERNEL_ATTR: "pad"})
    else:
        xp = pad_spatial(data, pt, pl, pb, pr)
    ry = te.reduce_axis((0, kh), "kh")
    rx = te.reduce_axis((0, kw), "kw")
    return te.compute(
        (n, cb, oh, ow, b),
        lambda i, c, y, x, k: te.sum(xp[i, c, y * sh + ry * dh, x * sw + rx * dw, k] * kernel[c, ry, rx, k], axis=[ry, rx]),
        name="dwconv_nchwc", attrs={KERNEL_ATTR: "dwconv_nchwc"})


def dense_packed(x: te.Tensor, w: te.Tensor, rows: int | None = None) -> te.Tensor:
    """x [..., M, K], w [N/nb, K, nb] -> [..., M, N].  ``rows`` > M: the product is computed over
    ``rows`` rows (the ones past M read row M - 1) into a buffer the result is copied from
    (``dense_unpad``, which the schedule inlines into the epilogue), so that the register tile
    divides the rows and no row guard sits inside the reduction loop (``cpu.dense_rows``)."""
    nblk, k, nb = (int(v) for v in w.shape)
    rk = te.reduce_axis((0, k), "k")
    lead = list(x.shape[:-1])
    m = lead[-1] if lead else None
    pad = rows is not None and isinstance(m, (int, tirx.IntImm)) and rows > int(m)

    def fn(*idx):
        j = idx[-1]
        row = tuple(idx[:-2]) + (tirx.min(idx[-2], int(m) - 1),) if pad else tuple(idx[:-1])
        return te.sum(x[row + (rk,)] * w[j // nb, rk, j % nb], axis=rk)

    shape = lead[:-1] + [rows] + [nblk * nb] if pad else lead + [nblk * nb]
    y = te.compute(shape, fn, name="dense_packed", attrs={KERNEL_ATTR: "dense_packed"})
    if not pad:
        return y
    return te.compute(lead + [nblk * nb], lambda *idx: y[idx], name="dense_unpad")


def dense_heads(x: te.Tensor, w: te.Tensor, bias: te.Tensor, heads: int, rows: int, keys: int,
                transpose: bool = False) -> te.Tensor:
    """One attention projection written in the heads' layout, no copy after it:
    x [N, L, C], w [dim/nb, C, nb] (packed), bias [dim] -> [N, heads, keys, d], or
    [N, heads, d, keys] (``transpose``: K^T, the layout Q K^T reads), d = dim / heads; rows
    L..keys-1 are zeros (padded keys).  The product is computed over ``rows`` >= keys rows (the
    ones past L read row L - 1) so the register tile divides them; the bias add and the layout
    are the epilogue the schedule computes at each tile."""
    n, length, _ = x.shape
    length = int(length)
    nblk, k, nb = (int(v) for v in w.shape)
    d = nblk * nb // heads
    rk = te.reduce_axis((0, k), "k")
    y = te.compute(
        (n, heads, rows, d),
        lambda b, h, t, j: te.sum(x[b, tirx.min(t, length - 1), rk] * w[(h * d + j) // nb, rk, (h * d + j) % nb],
                                  axis=rk),
        name="dense_packed", attrs={KERNEL_ATTR: "dense_packed"})
    zero = tirx.const(0.0, x.dtype)

    def out(b, h, t, j):
        return tirx.if_then_else(t < length, y[b, h, t, j] + bias[h * d + j], zero)

    if transpose:
        return te.compute((n, heads, d, keys), lambda b, h, j, t: out(b, h, t, j), name="dense_heads_t")
    return te.compute((n, heads, keys, d), out, name="dense_heads")


def dense_merge_heads(y: te.Tensor, w: te.Tensor, rows: int, length: int) -> te.Tensor:
    """The attention output's projection reading the heads' layout: y [N, heads, L', d] (the
    heads merged back to channels c = h * d + j by the read, not by a copy; rows past ``length``
    are padding), w [out/nb, heads*d, nb] -> [N, length, out], computed over ``rows`` >= length
    rows as ``dense_packed``."""
    n, d = y.shape[0], int(y.shape[3])
    nblk, k, nb = (int(v) for v in w.shape)
    rk = te.reduce_axis((0, k), "k")
    p = te.compute(
        (n, rows, nblk * nb),
        lambda b, t, j: te.sum(y[b, rk // d, tirx.min(t, length - 1), rk % d] * w[j // nb, rk, j % nb], axis=rk),
        name="dense_packed", attrs={KERNEL_ATTR: "dense_packed", K_INNER_ATTR: d})
    if rows == length:
        return p
    return te.compute((n, length, nblk * nb), lambda *idx: p[idx], name="dense_unpad")


ROWS_ATTR = "convdsl.rows"  # attention_rows: the query rows one parallel task computes (cpu.py's tile)


def attention_rows(q: te.Tensor, kt: te.Tensor, v: te.Tensor, scale: float, valid: int, rows: int,
                   lanes: int) -> te.Tensor:
    """softmax(scale * Q K^T) V in one kernel, ``rows`` query rows at a time: q [N, heads, R, d],
    kt [N, heads, d, keys], v [N, heads, keys, d] -> [N, heads, R, d] (``dense_heads``'s layouts).
    Keys at or past ``valid`` are padding (their logits -inf, their weights 0).  A block of rows'
    logits, their exponentials and the sums stay in the task's cache; the three kernels
    (Q K^T, softmax, P V) wrote and read the whole [heads, R, keys] logits twice between them.

    The row max and sum are taken as ``lanes`` partial results over the keys' vectors first
    (``attention_part_max``/``_sum``, then reduced): one vector operation per ``lanes`` keys.  The
    division by the sum comes last, on the d outputs of a row rather than its keys' weights."""
    from tvm import topi

    n, heads, length, d = (int(s) for s in q.shape)
    keys = int(kt.shape[3])
    f32 = q.dtype
    c = te.reduce_axis((0, d), "c")
    qk = te.compute((n, heads, length, keys), lambda b, h, i, j: te.sum(q[b, h, i, c] * kt[b, h, c, j], axis=c),
                    name="attention_qk", attrs={KERNEL_ATTR: "attention_rows", ROWS_ATTR: rows})
    minus_inf = tirx.const(float("-inf"), f32)

    def logit(b, h, i, j):
        return tirx.Select(j < valid, qk[b, h, i, j] * tirx.const(scale, f32), minus_inf)

    jo = te.reduce_axis((0, keys // lanes), "jo")
    part_max = te.compute((n, heads, length, lanes), lambda b, h, i, e: te.max(logit(b, h, i, jo * lanes + e),
                                                                                axis=jo), name="attention_part_max")
    e1 = te.reduce_axis((0, lanes), "e")
    row_max = te.compute((n, heads, length), lambda b, h, i: te.max(part_max[b, h, i, e1], axis=e1),
                         name="attention_max")
    shifted = te.compute((n, heads, length, keys), lambda b, h, i, j: logit(b, h, i, j) - row_max[b, h, i],
                         name="attention_shift")
    exp = topi.fast_exp(shifted)  # padded keys: 0, not fast_exp's clamped exp(-88) (a denormal)
    weight = te.compute((n, heads, length, keys), lambda b, h, i, j: tirx.Select(j < valid, exp[b, h, i, j],
                                                                                 tirx.const(0.0, f32)),
                        name="attention_weight")
    jo2 = te.reduce_axis((0, keys // lanes), "jo2")
    part_sum = te.compute((n, heads, length, lanes), lambda b, h, i, e: te.sum(weight[b, h, i, jo2 * lanes + e],
                                                                                axis=jo2), name="attention_part_sum")
    e2 = te.reduce_axis((0, lanes), "e2")
    row_sum = te.compute((n, heads, length), lambda b, h, i: te.sum(part_sum[b, h, i, e2], axis=e2),
                         name="attention_sum")
    j = te.reduce_axis((0, keys), "j")
    pv = te.compute((n, heads, length, d), lambda b, h, i, o: te.sum(weight[b, h, i, j] * v[b, h, j, o], axis=j),
                    name="attention_pv")
    return te.compute((n, heads, length, d), lambda b, h, i, o: pv[b, h, i, o] / row_sum[b, h, i],
                      name="attention_out")


def pack_nchwc(x: te.Tensor, b: int, channels: int | None = None) -> te.Tensor:
    """[N, C, H, W] -> [N, C/b, H, W, b]; with ``channels`` > C, [N, channels/b, H, W, b], the channels past C
    zeros (a bf16 conv's odd input channels made whole pairs)."""
    n, c, h, w = x.shape
    if channels is None or channels == int(c):
        return te.compute((n, c // b, h, w, b), lambda i, j, y, z, k: x[i, j * b + k, y, z], name="pack_nchwc",
                          attrs={KERNEL_ATTR: "pack"})
    last = int(c) - 1

    def padded(i, j, y, z, k):
        ch = j * b + k
        return tirx.if_then_else(ch <= last, x[i, tirx.min(ch, last), y, z], tirx.const(0.0, x.dtype))

    return te.compute((n, channels // b, h, w, b), padded, name="pack_nchwc", attrs={KERNEL_ATTR: "pack"})


def reblock_nchwc(data: te.Tensor, block: int) -> te.Tensor:
    """``data`` [N, C/b, H, W, b] in blocks of ``block``: [N, C/block, H, W, block] (a plain copy where block
    is b), channel c at [c // block, ..., c % block]."""
    n, c, h, w, b = data.shape
    return te.compute((n, int(c) * int(b) // block, h, w, block), _reblocked(data, block), name="reblock_nchwc")


def unpack_nchwc(x: te.Tensor) -> te.Tensor:
    """[N, C/b, H, W, b] -> [N, C, H, W]."""
    n, cb, h, w, b = x.shape
    return te.compute((n, cb * b, h, w), lambda i, j, y, z: x[i, j // b, y, z, j % b], name="unpack_nchwc",
                      attrs={KERNEL_ATTR: "unpack"})


def target_has(target, *features: str) -> bool:
    """Whether ``target`` is an LLVM (CPU) target with every one of the LLVM ``features``
    (``avx512bf16``, ``amx-int8``, ...): what a kernel's instructions need."""
    if target is None or target.kind.name != "llvm":
        return False
    from tvm.target import codegen

    return all(codegen.target_has_features(f, target) for f in features)


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending: the tile sizes that split an extent of ``n`` evenly."""
    return [d for d in range(1, n + 1) if n % d == 0]
