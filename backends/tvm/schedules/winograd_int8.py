"""Winograd F(2 x 2, 3 x 3) for int8 3x3 stride-1 convolutions on AVX2, exact in integers: computes and schedules.

On a CPU without VNNI the direct int8 conv multiplies with ``vpmaddubsw`` + ``vpmaddwd`` (two multiplies per
32 products, schedules/int8.py) and runs near that limit (ResNet-50's 3x3 convs ~180 G products/s on Zen 3,
2 cores, as OpenVINO's).  F(2,3) needs 16 products per 2 x 2 output tile and input channel where the direct
conv needs 36; with ``vpmaddwd`` on int16 (16 products per multiply) that is 2.25x fewer multiplies.

It stays exact because F(2,3)'s transforms are small integers:

- input: ``V = B^T d B``, d the 4 x 4 tile of ``x - zero point`` (the conv's zero padding is 0 there), B^T's
  entries 0 and +-1 with two nonzeros a row: |V| <= 4 * 255, int16;
- weights: ``U' = (2G) g (2G)^T = 4 U`` (2G's entries 0, +-1, 2), |U'| <= 9 * 128, int16, made at build time;
- GEMM: ``M' = V U'`` summed over the input channels in int32 (``vpmaddwd``: each lane's pair of int16
  products summed exactly, then ``vpaddd``; ``int8.register_madd_intrinsic``);
- output: ``A^T M' A = 4 y`` (A^T's entries 0 and +-1, three nonzeros a row), y the int32 sum of
  ``(x - zp) * w`` of the direct conv, recovered by an arithmetic shift by 2.

No sum may leave its type (TVM emits int32 arithmetic as LLVM's no-signed-wrap operations, so a wrapped partial
sum would not be a defined value even where the end result fits): ``exact`` bounds every partial sum of a layer
by its own weights, ``9 * 1020 * sum_c |U'[e, c, o]| <= 2^31 - 1``, which holds for any 7-bit weights up to 256
input channels and for real 512-channel layers; a layer it refuses stays direct.

y plus the bias (the zero point not folded in: the input was shifted by it) goes through
``lower_quant.requantized``, the direct kernel's requantization: the results are the same bits.

One kernel, three stages computed per chunk of tile rows (``schedule``): the chunk's V (int16, ~60 KB),
its GEMM over all output channels (M', int32, ~115 KB) and its outputs with the epilogue that FuseOps
appended (residual add, relu, the next quantize); the chunks run in parallel.  The transformed weights take 32
bytes per (input, output) channel pair (16 int16) against the direct conv's 9, which is why few tiles per image
make it slower (``chosen``).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from convdsl.backends.tvm.schedules import cpu, winograd
from convdsl.backends.tvm.schedules.kernels import divisors

VNNI_ATTR = "convdsl.vnni"  # int8.VNNI_ATTR: the blocks are wino8_tile | _rows | _v | _gemm | _cols | _out
KINDS = ("tile", "rows", "v", "gemm", "cols", "out")
M, A = 2, 4  # F(2,3): 2 x 2 outputs per 4 x 4 input tile
SCALE_BITS = 2  # U' = 4 U: the output transform gives 4 y
INT32_MAX = 2**31 - 1
GEMM_ACCUMULATORS = 12  # of AVX2's 16 ymm registers (with the tile's weight vectors and a broadcast)


def applies(kernel_hw, stride, dilation, groups: int, in_block: int | None, out_block: int) -> bool:
    """The convs this kernel computes: 3x3, stride 1, dilation 1, groups 1, blocked input of 8k channels a block
    (its 8-channel vectors are one block's) and 8-channel output blocks (the GEMM's ymm lanes)."""
    return (tuple(kernel_hw) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1
            and in_block is not None and in_block % 8 == 0 and out_block == 8)


MIN_CHANNELS = 16  # fewer input or output channels: the transforms outweigh the GEMM's saving
MIN_TILES = 32  # fewer 2 x 2 tiles per image: the GEMM streams its transformed weights for a few rows each


def chosen(c: int, o: int, oh: int, ow: int) -> bool:
    """Whether a conv that ``applies`` runs faster as this kernel than direct: ``MIN_CHANNELS`` channels on each
    side and ``MIN_TILES`` tiles per image.  Zen 3, 2 threads, ResNet-50 int8's 3x3 convs in the network (kernel
    profile, minimum of 10 runs): 64 ch at 56 x 56 0.64 -> 0.44 ms, 128 at 28 x 28 0.63 -> 0.51, 256 at
    14 x 14 (49 tiles) 0.62 -> 0.51, but 512 at 7 x 7 (16 tiles) 0.64 -> 0.91-1.10: there each of 4 chunks of
    4 tiles streams the 8 MB of transformed weights (the direct conv's are 2.4 MB)."""
    ty, tx = winograd.tiles(oh, ow, M)
    return min(c, o) >= MIN_CHANNELS and ty * tx >= MIN_TILES


V_MAX = 4 * 255  # |B^T d B| for |x - zp| <= 255: two nonzeros (+-1) in each row of B^T
OUT_TERMS = 9  # |A^T M' A| <= 9 max |M'|: three nonzeros (+-1) in each row of A^T


def exact(u: np.ndarray) -> bool:
    """Whether no sum the kernel forms with transformed weights ``u`` (``transform_weight``'s, [16, C, O]) can leave
    its type, whatever the input: U' in int16, every partial GEMM sum of output channel o at position e within
    ``V_MAX * sum_c |U'[e, c, o]|``, and the output transform's sums within ``OUT_TERMS`` times that, in int32."""
    partial = V_MAX * np.abs(u).sum(axis=1).max(initial=0)
    return bool(np.abs(u).max(initial=0) <= 32767 and OUT_TERMS * int(partial) <= INT32_MAX)


def transform_weight(w: np.ndarray) -> np.ndarray:
    """int8 OIHW 3x3 weights -> U' = (2G) g (2G)^T, [16, C, O] int64 (e = 4 * row + column of the 4 x 4 tile)."""
    _, g, _ = winograd.matrices(M)
    g2 = np.rint(2 * g).astype(np.int64)
    o, c = w.shape[:2]
    return np.einsum("ai,ocij,bj->abco", g2, w.astype(np.int64), g2).reshape(A * A, c, o)


def pack_weight(u: np.ndarray, ob: int = 8) -> np.ndarray:
    """U' (``transform_weight``'s, [16, C, O]) packed for the GEMM's ``vpmaddwd``: [16, O/ob, C/2, ob, 2] int16
    (input channels in pairs, zero-padded to an even count)."""
    aa, c, o = u.shape
    if c % 2:
        u = np.concatenate([u, np.zeros((aa, 1, o), u.dtype)], axis=1)
        c += 1
    return np.ascontiguousarray(u.reshape(aa, c // 2, 2, o // ob, ob).transpose(0, 3, 1, 4, 2).astype(np.int16))


def weight_from_packed(packed: np.ndarray, out_channels: int, in_channels: int) -> np.ndarray:
    """The int8 OIHW weights of ``lower_quant.pack_vnni_weight``'s [O/oc, C/ic, KH, KW, oc, ic] blocks (the AVX2
    bytes, or their int16 pairs)."""
    ob, icb, kh, kw, oc, ic = packed.shape
    w = packed.transpose(0, 4, 1, 5, 2, 3).reshape(ob * oc, icb * ic, kh, kw)
    return np.ascontiguousarray(w[:out_channels, :in_channels].astype(np.int8))


def qconv2d(x: te.Tensor, u: te.Tensor, bias: te.Tensor, mult: te.Tensor, *, pads, in_zp: int, shift: bool,
            out_channels: int, requant, ob: int = 8) -> te.Tensor:
    """x [N, C/ib, H, W, ib] (u8; i8 with ``shift``, +128), u ``pack_weight``'s, ``bias`` int32 [O] (the zero point
    not folded in), ``mult`` f32 [O] -> [N, O/ob, OH, OW, ob], each value ``requant(y, bias[o], mult[o])``
    (``lower_quant.requantized`` with the layer's keywords bound), y the int32 sum of (x - in_zp) * w."""
    n, cb, h, w_, ib = (int(d) if i else d for i, d in enumerate(x.shape))
    c2 = int(u.shape[2])
    pt, pb, pl, pr = pads
    oh, ow = h + pt + pb - 2, w_ + pl + pr - 2
    ty, tx = winograd.tiles(oh, ow, M)
    at, _, bt = winograd.matrices(M)

    def read(b, t, k, y, xx, r):  # (ib % 8 == 0, ``applies``: the channel pairs cover C exactly)
        ch = k * 2 + r
        yy, xq = (t // tx) * M + y - pt, (t % tx) * M + xx - pl
        inside = tirx.all(yy >= 0, yy < h, xq >= 0, xq < w_)
        v = x[b, ch // ib, yy, xq, ch % ib]
        v = v.astype("int16") + tirx.const(128, "int16") if shift else v.astype("int16")
        return tirx.if_then_else(inside, v - tirx.const(in_zp, "int16"), tirx.const(0, "int16"))

    shape = (n, ty * tx, c2, A, A, 2)
    d = te.compute(shape, read, name="wino8_tile", attrs={VNNI_ATTR: "wino8_tile"})
    bd = te.compute(shape, lambda b, t, k, i, xx, r: winograd.select(
        i, [winograd.combination(bt[row], [d[b, t, k, y, xx, r] for y in range(A)]) for row in range(A)]),
        name="wino8_rows", attrs={VNNI_ATTR: "wino8_rows"})
    v = te.compute((A * A, n, ty * tx, c2, 2), lambda e, b, t, k, r: winograd.select(
        e % A, [winograd.combination(bt[col], [bd[b, t, k, e // A, xx, r] for xx in range(A)]) for col in range(A)]),
        name="wino8_v", attrs={VNNI_ATTR: "wino8_v"})
    rk, rr = te.reduce_axis((0, c2), "k2"), te.reduce_axis((0, 2), "r2")
    mm = te.compute((A * A, n, ty * tx, out_channels // ob, ob), lambda e, b, t, o, l: te.sum(
        v[e, b, t, rk, rr].astype("int32") * u[e, o, rk, l, rr].astype("int32"), axis=[rk, rr]),
        name="wino8_gemm", attrs={VNNI_ATTR: "wino8_gemm"})
    cols = te.compute((n, ty * tx, out_channels // ob, A, M, ob), lambda b, t, o, i, j, l: winograd.select(
        j, [winograd.combination(at[jj], [mm[i * A + col, b, t, o, l] for col in range(A)]) for jj in range(M)]),
        name="wino8_cols", attrs={VNNI_ATTR: "wino8_cols"})

    def out(b, o, y, xx, l):
        t = (y // M) * tx + xx // M
        s = winograd.select(y % M, [winograd.combination(at[ii], [cols[b, t, o, i, xx % M, l] for i in range(A)])
                                    for ii in range(M)])
        acc = tirx.shift_right(s, tirx.const(SCALE_BITS, "int32"))
        return requant(acc, bias[o * ob + l], mult[o * ob + l])

    return te.compute((n, out_channels // ob, oh, ow, ob), out, name="wino8_out", attrs={VNNI_ATTR: "wino8_out"})


# ---- schedule ---------------------------------------------------------------------------------------------
def chunk_rows(ty: int, tx: int) -> int:
    """Tile rows per parallel chunk: the fewest whose tiles (at least 16) give the GEMM rows to share each weight
    vector, keeping at least 4 chunks for the cores; 1 where none qualifies (a chunk of rows that does not divide
    the tile rows would give the GEMM a ragged region).  Zen 3, 2 threads, 128 channels at 28 x 28 (14 x 14 tiles),
    the same 2 x 4 register tile: 1 row 0.79 ms, 2 rows 0.57; 512 channels at 7 x 7 (4 x 2): 1 row 0.58, 2 rows 1.09."""
    for r in divisors(ty):
        if r * tx >= 16 and ty // r >= 4:
            return r
    return 1


def gemm_tile(rows: int, blocks: int) -> tuple[int, int]:
    """(tiles, output blocks) of the GEMM's register tile: divisors of the chunk's tiles and of the 8-channel
    blocks, at most ``GEMM_ACCUMULATORS`` accumulators with their weight vectors and a broadcast in 16 registers;
    the most accumulators, then two or more tiles (a tile of one shares no weight load), then the squarer."""
    best = None
    for r in divisors(rows):
        for o in divisors(blocks):
            if r * o > GEMM_ACCUMULATORS or r * o + o + 1 > 16:
                continue
            key = (r * o, r >= 2, -abs(r - o))
            if best is None or key > best[0]:
                best = (key, (r, o))
    return best[1]


def schedule(sch, blocks: dict[str, object], madd: str, inline_consumers, parallel_outer) -> None:
    """Schedule the kernel of ``qconv2d`` (``blocks``: ``annotated``'s) with the epilogue FuseOps
    appended: ``madd`` is the registered 8 x 2 ``vpmaddwd`` intrinsic, ``inline_consumers`` / ``parallel_outer``
    are schedules/int8.py's (the readers inlined into the output block, the rest run in parallel)."""
    out = blocks["out"]
    tail = inline_consumers(sch, out)
    oh, ow = (int(sch.get(out).iter_vars[axis].dom.extent) for axis in (2, 3))
    ty, tx = winograd.tiles(oh, ow, M)
    n, o, y, x, l = sch.get_loops(out)
    yo, yi = sch.split(y, [None, M])
    xo, xi = sch.split(x, [None, M])
    rows = chunk_rows(ty, tx)
    yc, yr = sch.split(yo, [None, rows])
    sch.reorder(n, yc, yr, o, xo, yi, xi, l)
    par = sch.fuse(n, yc)
    sch.parallel(par)
    sch.unroll(yi)
    sch.unroll(xi)
    sch.vectorize(l)
    cols = blocks["cols"]
    sch.compute_at(cols, xo)
    sch.set_scope(cols, 0, "local")
    for lp in sch.get_loops(cols)[-4:-1]:
        sch.unroll(lp)
    sch.vectorize(sch.get_loops(cols)[-1])

    gemm, v = blocks["gemm"], blocks["v"]
    sch.compute_at(gemm, par)
    sch.compute_at(v, par)
    # V: the chunk's tiles, each channel block of 8 (4 pairs: one input block's bytes) a vector of int16
    e, t, k, r = sch.get_loops(v)[-4:]
    kb, ki = sch.split(k, [None, 4])
    sch.reorder(t, kb, e, ki, r)
    sch.unroll(e)
    sch.vectorize(sch.fuse(ki, r))
    for name in ("rows", "tile"):
        b = blocks[name]
        sch.compute_at(b, kb)
        sch.set_scope(b, 0, "local")
        kk, i, xx, rr = sch.get_loops(b)[-4:]
        sch.reorder(i, xx, kk, rr)
        sch.unroll(i)
        sch.unroll(xx)
        sch.vectorize(sch.fuse(kk, rr))
    # GEMM: for each of the 16 positions, register tiles of (tiles x 8-channel blocks), the input-channel pairs
    # outside them, the 8 x 2 dot product ``vpmaddwd``
    e, t, oc, lane, k2, r2 = sch.get_loops(gemm)[-6:]
    rt, ot = gemm_tile(cpu.extent(sch, t), cpu.extent(sch, oc))
    to, ti = sch.split(t, [None, rt])
    oo, oi = sch.split(oc, [None, ot])
    sch.reorder(e, to, oo, k2, ti, oi, lane, r2)
    init = sch.decompose_reduction(gemm, k2)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(lane, madd)
    sch.unroll(ti)
    sch.unroll(oi)
    for b in tail:
        parallel_outer(sch, b, 2)


def annotated(sch) -> dict[str, object] | None:
    """{kind: block} of a ``qconv2d`` kernel's blocks at the root of ``sch`` (``VNNI_ATTR`` wino8_<kind>), or None."""
    found = {}
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        kind = str(sch.get(b).annotations.get(VNNI_ATTR, ""))
        if kind.startswith("wino8_"):
            found[kind[len("wino8_"):]] = b
    return found if set(KINDS) <= found.keys() else None
