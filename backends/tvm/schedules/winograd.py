"""Winograd F(m x m, 3 x 3) for f32 3x3 stride-1 convolutions on CPU: computes and schedules.

A 3x3, stride-1, dilation-1, groups-1 conv2d in the blocked layout (``kernels.conv2d_nchwc``'s
NCHW[ib]c -> NCHW[ob]c) becomes three kernels (``layout.py`` decides per layer, ``use``):

- ``winograd_input``: the input cut into overlapping a x a tiles (a = m + 2; the conv's zero
  padding is folded into the reads), each transformed to ``B^T d B`` and written as
  ``V[a*a, tiles', IC]`` (``tiles'``: the tiles padded to a whole number of GEMM register tiles;
  the extra rows repeat the last tile and are never read back).
- ``winograd_gemm``: a*a independent GEMMs ``M[e] = V[e] @ U[e]``, ``[tiles' x IC] x [IC x OC]``,
  with ``U = G g G^T`` computed at build time in float64 (numpy) and packed like
  ``dense_packed``'s weight, ``[a*a, OC/ob, IC, ob]``; scheduled by ``cpu.schedule_gemm`` (the
  register-tiled GEMM: rows x ob-lane columns, k outside the tile, parallel outer loops).
- ``winograd_output``: ``Y = A^T M A`` per tile, written straight into NCHW[ob]c (the layout the
  next conv reads); FuseOps pulls the conv's epilogue (bias, folded batchnorm, residual add,
  activation) into it, and the schedule computes it per tile, unrolled, vectorized over ob.

The transform matrices come from Toom-Cook interpolation at the points ``POINTS[m]`` and
infinity (see ``matrices``); the data transforms use constant coefficients (zero terms dropped,
+-1 as additions).  The multiplies per output fall from 9 to (m + 2)^2 / m^2: F(2,3) 2.25x,
F(3,3) 3.24x, F(4,3) 4x, F(6,3) 5.06x fewer; the transforms cost O(a^2) additions per tile and channel.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from tvm import te, tirx

from convdsl.backends.tvm.schedules import cpu
from convdsl.backends.tvm.schedules.kernels import KERNEL_ATTR

KERNEL_INPUT, KERNEL_GEMM, KERNEL_OUTPUT = "winograd_input", "winograd_gemm", "winograd_output"

# Toom-Cook points (plus infinity) of F(m, 3): the usual small ones, so the data transforms'
# coefficients stay small integers and halves
POINTS = {
    2: [0, 1, -1],
    3: [0, 1, -1, 2],  # F(3,3): 5x5 tiles, G has sixths
    4: [0, 1, -1, 2, -2],
    6: [0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)],
}


def matrices(m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T [m, a], G [a, r], B^T [a, a]) of F(m, r), a = m + r - 1, exact (Fractions -> float64).

    1-D correlation y_j = sum_k g_k d_{j+k} is the transpose of the polynomial product
    c = h * g (h of degree m - 1): Toom-Cook evaluates h and g at a - 1 points and infinity
    (E_h [a, m], E_g [a, r]) and interpolates c with C = E^-1 (E [a, a] the evaluation of
    degree a - 1), so c = C diag(E_g g) E_h h and, transposed, y = E_h^T diag(E_g g) C^T d:
    A^T = E_h^T, G = E_g, B^T = C^T.  Each row i of B^T is scaled by s_i to make its last nonzero
    entry 1 (small integers for the points above), and row i of G by 1 / s_i: the product is
    the same.  ``tests/backends/tvm/test_winograd.py`` checks y against numpy's correlation."""
    a = m + r - 1
    pts = [Fraction(p) for p in POINTS[m]]
    assert len(pts) == a - 1

    def evaluation(n: int) -> list[list[Fraction]]:
        rows = [[p ** k for k in range(n)] for p in pts]
        return rows + [[Fraction(int(k == n - 1)) for k in range(n)]]

    eh, eg, e = evaluation(m), evaluation(r), evaluation(a)
    c = _inverse(e)
    bt = [[c[j][i] for j in range(a)] for i in range(a)]  # C^T
    for i in range(a):
        last = next(v for v in reversed(bt[i]) if v != 0)
        bt[i] = [v / last for v in bt[i]]
        eg[i] = [v * last for v in eg[i]]
    at = [[eh[i][j] for i in range(a)] for j in range(m)]
    f = np.vectorize(float)
    return f(np.array(at, dtype=object)), f(np.array(eg, dtype=object)), f(np.array(bt, dtype=object))


def _inverse(rows: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact Gauss-Jordan inverse of a small square matrix of Fractions."""
    n = len(rows)
    aug = [list(r) + [Fraction(int(i == j)) for j in range(n)] for i, r in enumerate(rows)]
    for col in range(n):
        piv = next(i for i in range(col, n) if aug[i][col] != 0)
        aug[col], aug[piv] = aug[piv], aug[col]
        p = aug[col][col]
        aug[col] = [v / p for v in aug[col]]
        for i in range(n):
            if i != col and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [v - f * w for v, w in zip(aug[i], aug[col])]
    return [r[n:] for r in aug]


def weight_transform(w: np.ndarray, m: int, ob: int) -> np.ndarray:
    """OIHW 3x3 weights -> U = G g G^T, packed [a*a, O/ob, I, ob] (float64 math, float32 result)."""
    _, g, _ = matrices(m)
    o, i, _, _ = w.shape
    a = m + 2
    u = (g @ w.astype(np.float64) @ g.T).transpose(2, 3, 1, 0)  # [O, I, a, a] -> [a, a, I, O]
    u = u.reshape(a * a, i, o // ob, ob).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(u.astype(np.float32))


def tiles(oh: int, ow: int, m: int) -> tuple[int, int]:
    return -(-oh // m), -(-ow // m)


def combination(coeffs, terms):
    """sum_i coeffs[i] * terms[i] with zero coefficients dropped and +-1 as additions/subtractions."""
    out = None
    for c, t in zip(coeffs, terms):
        c = float(c)
        if c == 0.0:
            continue
        if c == 1.0:
            v, neg = t, False
        elif c == -1.0:
            v, neg = t, True
        else:
            v, neg = t * tirx.const(abs(c), "float32"), c < 0
        if out is None:
            out = -v if neg else v
        else:
            out = out - v if neg else out + v
    return out if out is not None else tirx.const(0.0, "float32")


def select(index, values):
    """values[index] for a small constant list: a chain of Selects that folds to one value once the
    loop over ``index`` is unrolled."""
    out = values[-1]
    for k in range(len(values) - 2, -1, -1):
        out = tirx.Select(index == k, values[k], out)
    return out


def winograd_input(data: te.Tensor, m: int, padding, oh: int, ow: int, rows: int) -> te.Tensor:
    """data [N, C/ib, H, W, ib] -> V [a*a, N, rows, C]: V[e = (u, v), n, t, c] = (B^T d B)[u, v], d the
    a x a input tile t of image n (t = (ty, tx) row-major; t >= TY*TX repeats the last tile; N may
    be symbolic, a dynamic batch),
    with the conv's zero padding (``padding`` = top, left, bottom, right) folded into the reads.
    Three stages: the tile (``winograd_tile``, zeros outside the input), its rows transformed
    (``winograd_rows``: B^T d), then its columns (V); the schedule computes the first two per tile
    and channel block."""
    n = data.shape[0]
    cb, h, w, ib = (int(v) for v in data.shape[1:])
    a = m + 2
    pt, pl = padding[0], padding[1]
    ty, tx = tiles(oh, ow, m)
    _, _, bt = matrices(m)

    def read(b, t, c, y, x, k):
        t = tirx.min(t, ty * tx - 1)
        yy, xx = (t // tx) * m + y - pt, (t % tx) * m + x - pl
        inside = tirx.all(yy >= 0, yy < h, xx >= 0, xx < w)
        return tirx.if_then_else(inside, data[b, c, yy, xx, k], tirx.const(0.0, data.dtype))

    d = te.compute((n, rows, cb, a, a, ib), read, name="winograd_tile")
    bd = te.compute((n, rows, cb, a, a, ib),
                    lambda b, t, c, u, x, k: select(u, [combination(bt[uu], [d[b, t, c, y, x, k] for y in range(a)])
                                                         for uu in range(a)]), name="winograd_rows")
    return te.compute((a * a, n, rows, cb * ib),
                      lambda e, b, t, c: select(e % a, [combination(bt[vv], [bd[b, t, c // ib, e // a, x, c % ib]
                                                                               for x in range(a)]) for vv in range(a)]),
                      name="winograd_input", attrs={KERNEL_ATTR: KERNEL_INPUT})


def winograd_gemm(v: te.Tensor, u: te.Tensor) -> te.Tensor:
    """V [a*a, N, rows, C] x U [a*a, O/ob, C, ob] -> M [a*a, N, rows, O]."""
    aa, ocb, c, ob = (int(x) for x in u.shape)
    n, rows = v.shape[1], int(v.shape[2])
    rk = te.reduce_axis((0, c), "k")
    return te.compute((aa, n, rows, ocb * ob),
                      lambda e, b, t, j: te.sum(v[e, b, t, rk] * u[e, j // ob, rk, j % ob], axis=rk),
                      name="winograd_gemm", attrs={KERNEL_ATTR: KERNEL_GEMM})


def winograd_output(mm: te.Tensor, m: int, oh: int, ow: int, ob: int) -> te.Tensor:
    """M [a*a, N, rows, O] -> Y [N, O/ob, OH, OW, ob]: Y's m x m tile t of image n is A^T M A, in two
    stages: the columns (``winograd_cols``: M A, [N, rows, O/ob, a, m, ob]), then the rows; the
    schedule computes the first per tile."""
    a = m + 2
    n, rows, o = mm.shape[1], int(mm.shape[2]), int(mm.shape[3])
    _, tx = tiles(oh, ow, m)
    at, _, _ = matrices(m)
    ma = te.compute((n, rows, o // ob, a, m, ob),
                    lambda b, t, oc, u, j, k: select(j, [combination(at[jj], [mm[u * a + v, b, t, oc * ob + k]
                                                                                for v in range(a)]) for jj in range(m)]),
                    name="winograd_cols")

    def fn(b, oc, y, x, k):
        t = (y // m) * tx + x // m
        return select(y % m, [combination(at[ii], [ma[b, t, oc, u, x % m, k] for u in range(a)]) for ii in range(m)])

    return te.compute((n, o // ob, oh, ow, ob), fn, name="winograd_output", attrs={KERNEL_ATTR: KERNEL_OUTPUT})


# ---- when -------------------------------------------------------------------------------
DEFAULT_M = 4


def applies(kernel_hw, stride, dilation, groups: int, dtype: str) -> bool:
    """The convs this lowering handles: 3x3, stride 1, dilation 1, groups 1, float32."""
    return (tuple(kernel_hw) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and groups == 1 and dtype == "float32")


MIN_CHANNELS = 16


MIN_TILES_AVX512 = 8
AVX512_M = (4, 3)  # the tile sizes AVX-512 chooses from (the cost in choose_m)
GEMM_MIN_ROWS = 32  # below this many tiles per image the GEMM streams its weights (memory-bound)


def choose_m(c: int, o: int, oh: int, ow: int, registers: int = 16, against_bf16: bool = False) -> int | None:
    """The tile size m for a conv with ``c`` -> ``o`` channels and an ``oh`` x ``ow`` output, or
    None: the direct conv.  ``registers``: the target's vector registers (32: AVX-512).

    Measured on Zen 3 (AVX2), one thread, CPU time, conv + batchnorm + relu, direct vs F(2,3) /
    F(4,3) / F(6,3) in one process, best of 7 (load 4.5): ResNet's 3x3 stride-1 convs
    64ch 56x56 2.91 / 2.20 / 1.48 / 1.52 ms, 128ch 28x28 2.86 / 1.85 / 1.19 / 1.33,
    256ch 14x14 2.89 / 1.79 / 1.60 / 2.08, 512ch 7x7 4.22 / 3.26 / 3.06 / 6.66 (the transformed
    weights, 4x the direct conv's, are streamed for only 4 tiles, and still win); F(4,3)
    everywhere.  Few channels: 8ch 56x56 0.15 direct vs 0.18, 16ch 0.30 vs 0.27, 32ch 28x28 0.26
    vs 0.19: the transforms' cost per channel does not shrink with the GEMM, so below 16
    channels on either side the direct conv.

    AVX-512 (a Granite Rapids Xeon, 2 cores): the direct conv runs at 70-86% of the FMA peak, and
    the Winograd GEMM over fewer than ``MIN_TILES_AVX512`` tiles per image (7x7 outputs: 4) streams
    a*a / 9 = 4x the direct conv's weight bytes for a few rows each: memory-bound.  One core
    alone it still wins (512ch 7x7, CPU time: direct 1.61 ms, F(4,3) 1.38), but on both cores
    the weights' stream does not split: ResNet-18 whole, 2 threads, CPU time per call (median of
    8 alternating rounds, load 4.8): 22.4 ms with F(4,3) at 7x7, 19.9 direct there, 20.9 direct at
    14x14 too.  So on AVX-512 those convs stay direct.

    The other AVX-512 convs take the m of ``AVX512_M`` with the least GEMM cost
    ``(m + 2)^2 * max(tiles, GEMM_MIN_ROWS)``: a GEMM over fewer rows than ``GEMM_MIN_ROWS`` streams
    its transformed weights (``(m + 2)^2 * C * O`` floats) for each few rows, so its time follows the
    weight bytes, not the rows.  That is F(3,3) at 14x14 (25 tiles of 5x5, 25 GEMMs, 25/36 of F(4,3)'s
    weight bytes; F(4,3) there has 16 tiles, 23% of their outputs past the edge; F(3,3) 13%) and F(4,3) at
    28x28 and 56x56.  ResNet-50's 256-channel 14x14 conv, GEMM alone on one core (CPU time):
    F(4,3) 0.667 ms, F(3,3) 0.642; in the network (one thread, CPU time, alternating, load 3) the
    Winograd kernels 10.5 -> 10.0 ms per call, and the network 1.5-3% less CPU per call
    (docs/tvm.md).

    ``against_bf16``: the direct conv is the bf16 one (``vdpbf16ps``, twice the f32 rate, half the weight
    bytes), so Winograd (in f32) only where its GEMM has ``GEMM_MIN_ROWS`` tiles or more and is compute-bound:
    F(4,3)'s 4x fewer multiplies against the 2x.  Measured on Zen 4 (AVX512_BF16, 2 threads, kernels in the
    network, median of 7 alternating profiles) with Winograd from a given input size up: ResNet-18 bf16 9.25 ms
    all direct, 8.62 from 14x14, 8.44 from 28x28, 8.72 from 56x56; ResNet-50 21.17 / 20.26 / 19.62 / 19.99;
    U-Net (128 x 128 input) 14.35 all direct, 12.32 from 8x8, 12.14 from 16x16, 12.32 from 32x32, 13.58 from
    64x64.  The tile count takes 28x28 and up (49 tiles of F(4,3)) and U-Net's 16x16 (36 of F(3,3)), and leaves
    ResNet's 14x14 (25 of F(3,3)) direct."""
    if min(c, o) < MIN_CHANNELS:
        return None
    if registers >= 32 and _tile_count(oh, ow, DEFAULT_M) < MIN_TILES_AVX512:
        return None
    if registers < 32:
        return None if against_bf16 else DEFAULT_M
    m = min(AVX512_M, key=lambda m: ((m + 2) ** 2 * max(_tile_count(oh, ow, m), GEMM_MIN_ROWS), -m))
    if against_bf16 and _tile_count(oh, ow, m) < GEMM_MIN_ROWS:
        return None
    return m


def _tile_count(oh: int, ow: int, m: int) -> int:
    ty, tx = tiles(oh, ow, m)
    return ty * tx


# ---- schedules --------------------------------------------------------------------------
def schedule_input(sch, block, hw) -> None:
    tile, rows = sch.get_sblock("winograd_tile"), sch.get_sblock("winograd_rows")
    ib = int(sch.get(tile).iter_vars[5].dom.extent)
    for b in list(sch.get_producers(tile)):  # a layout copy FuseOps put in front: read through it
        sch.compute_inline(b)
    e, n, t, c = sch.get_loops(block)
    cb, ci = sch.split(c, [None, ib])
    sch.reorder(n, t, cb, e, ci)
    par = sch.fuse(n, t, cb)
    sch.parallel(par)
    sch.unroll(e)
    sch.vectorize(ci)
    for b in (rows, tile):
        sch.compute_at(b, par)
        sch.set_scope(b, 0, "local")
        loops = sch.get_loops(b)[1:]
        for lp in loops[:-1]:
            if cpu.extent(sch, lp) > 1:
                sch.unroll(lp)
        sch.vectorize(loops[-1])


def schedule_gemm(sch, block, hw) -> None:
    ob = int(sch.get(block).reads[1].source.shape[-1])
    cpu.schedule_gemm(sch, block, hw, lanes=ob)


def schedule_output(sch, block, hw) -> None:
    m = _tile_of(sch, block)
    epilogue = cpu.inline_epilogue(sch, block)
    if epilogue is not None and len(sch.get_loops(epilogue)) == 5:  # the epilogue per tile
        sch.compute_inline(block)
        block = epilogue
    elif epilogue is not None:  # ends in another layout (unpack_nchwc at the function's output): apart
        cpu.parallel_copy(sch, epilogue, hw.lanes)
    n, oc, y, x, k = sch.get_loops(block)
    yo, yi = sch.split(y, [None, m])
    xo, xi = sch.split(x, [None, m])
    # rows before channel blocks (as ``cpu.rows_first``): each core writes whole rows, which the next conv reads
    # on the same core (R-18 f32 0.96-0.97, R-50 0.97-0.99; the GEMM by tiles instead of positions measured level)
    sch.reorder(n, yo, oc, xo, yi, xi, k)
    par = sch.fuse(n, yo, oc)
    sch.parallel(par)
    sch.unroll(yi)
    sch.unroll(xi)
    sch.vectorize(k)
    cols = sch.get_sblock("winograd_cols")
    sch.compute_at(cols, xo)
    sch.set_scope(cols, 0, "local")
    loops = sch.get_loops(cols)[2:]
    for lp in loops[:-1]:
        sch.unroll(lp)
    sch.vectorize(loops[-1])


def _tile_of(sch, block) -> int:
    """m of a winograd_output block, from the [N, rows, O/ob, a, m, ob] columns stage it reads."""
    return int(sch.get(sch.get_sblock("winograd_cols")).iter_vars[4].dom.extent)


RULES = {KERNEL_INPUT: schedule_input, KERNEL_GEMM: schedule_gemm, KERNEL_OUTPUT: schedule_output}


def try_schedule(func, target):
    """The scheduled function when ``func`` is one of the Winograd kernels, else None."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        rule = RULES.get(cpu.kernel_of(sch, b))
        if rule is not None:
            rule(sch, b, cpu.Hardware.of(target))
            return sch.mod["main"]
    return None
