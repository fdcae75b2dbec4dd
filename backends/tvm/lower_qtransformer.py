"""TVM lowerings of the transformer ops between int8 layers (``qlayernorm``, ``qgelu``, ``qattention``
of convdsl/ir/ops/quant.py); see common.py for the entry format.  ``packed_attention``, their float
counterpart, is lowered in lower_attention.py (its family, ``attention``).

The ops are defined (quant.py's module docstring) by exact integer sums and single float32 steps,
and these kernels compute them to the bit, equal to the torch simulation
(backends/torch/lower_quant.py):

- every float32 step that the definition rounds on its own is a rounding point here
  (``kernels.rounded`` on each product that an add follows): LLVM contracts fmul + fadd into one FMA,
  which rounds once where the definition rounds twice;
- an integer sum runs in float32 only where every partial sum is an integer of magnitude <= 2^24
  (then every order of the additions, FMA included, is exact), else in int32 (int64 where int32
  could overflow); a float32 value of an integer is its int32 / int64 / float64 value rounded once
  to nearest even, whichever type holds it exactly;
- 2^n is built from its exponent bits; sqrt and division are IEEE (correctly rounded) in LLVM.

``qattention`` (int8 q|k|v [N, L, 3C]) has the float32 attention's shape (``attend``, and the
heads' layouts that ``_heads_layout``'s projections write):

    unpack   q, k^T, v = x - zp                [N, heads, L, d], [N, heads, d, keys], [N, heads, keys, d]
    logits   s = q k^T                          float32 GEMM if d * 255^2 <= 2^24, else int32
    probs    w = round(255 * 2^(c (s - max s) log2 e))                the 8-bit softmax, rows vectorized
             m = f32(M / S),  S = sum w                               one multiplier per row (one division)
    values   y = f32(w v) * m                   float32 GEMM if L * 255^2 <= 2^24, else int32;
                                                the requantization is its epilogue, then the heads merged

with the keys padded to whole vectors (``key_padding``'s rule: 197 -> 208 on AVX-512), the padded
keys left out of the max, their w and v zero.  ViT-S (d = 64, L = 197) takes the float32 GEMMs:
64 * 255^2 = 4.2M and 197 * 255^2 = 12.8M are below 2^24 = 16.8M.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from convdsl.ir.graph import Node
from convdsl.ir.ops.quant import (ERF_CLAMP, ERF_COEFFS, EXP2_COEFFS, EXP2_FLOOR, INV_SQRT2, LN_QMAX, LOG2E,
                                  PROB_MAX, QRANGE, attention_constants, f32, inverse_scale, ln_constants)
from convdsl.ir.types import TensorType

from convdsl.backends.tvm.common import TVM_DTYPE, Lowerer, R, family, te, tvm

if TYPE_CHECKING:
    from tvm.relax import Expr

LOWERINGS = family("quant")  # the ops are quant.py's (the registry's family); their own file for their size

F32_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32
INT32_MAX = 2**31 - 1
DIFF_MAX = 255  # |q - zp|: q and zp both in the dtype's 256 values
OPAQUE = 8  # relax.OpPatternKind.kOpaque


def _f(v: float):
    return tvm.tirx.const(float(v), "float32")


def _round(v):
    """Round half to even: ``tirx.round`` on CPUs (LLVM's nearbyint, and vectorizable), ``tirx.nearbyint``
    on GPUs, where ``round`` is CUDA's round(), ties away from zero (build.py keeps topi.round there too)."""
    target = tvm.target.Target.current(allow_none=True)
    if target is not None and target.kind.name != "llvm":
        return tvm.tirx.nearbyint(v)
    return tvm.tirx.round(v)


def _clamp_int(q, qmin: int, qmax: int, dtype: str):
    from tvm import tirx

    return tirx.max(tirx.min(q, _f(qmax)), _f(qmin)).astype(dtype)


# ---- qlayernorm ------------------------------------------------------------------------------------
def ln_sum_dtypes(channels: int) -> tuple[str, str]:
    """(dtype of s1 and of C x_i - s1, dtype of s2): int32 where it holds every value exactly
    (|C x_i - s1| <= 2 C 32767: C < 32768), else int64; s2 (up to C 32767^2) is int64."""
    small = 2 * channels * LN_QMAX <= INT32_MAX
    return ("int32" if small else "int64"), "int64"


def qlayernorm_kernel(x: te.Tensor, g: te.Tensor, b: te.Tensor, *, inv_x: float, e: float, out_zp: int,
                      qmin: int, qmax: int, out_dtype: str) -> te.Tensor:
    """TE: qlayernorm over the last dim of x [..., C] float32 (quant.py), ``g``, ``b`` f32 [C]
    (f32(weight / out_scale), f32(bias / out_scale)).  Blocks: the fixed-point input, its two row
    sums, the row's 1 / sqrt(v + E), the output (schedules/cpu.py's row rule: rows parallel, the
    sums as lanes-wide partial sums)."""
    from tvm import tirx

    from convdsl.backends.tvm.schedules.kernels import rounded

    shape, c = tuple(x.shape), int(x.shape[-1])
    lead = shape[:-1]
    acc, acc2 = ln_sum_dtypes(c)

    def fixed(*i):
        v = _round(x(*i) * _f(inv_x))
        return tirx.max(tirx.min(v, _f(LN_QMAX)), _f(-LN_QMAX)).astype(acc)

    xi = te.compute(shape, fixed, name="ln_fixed")
    k1 = te.reduce_axis((0, c), "k1")
    s1 = te.compute(lead, lambda *i: te.sum(xi[(*i, k1)], axis=k1), name="ln_sum")
    k2 = te.reduce_axis((0, c), "k2")
    # x_i^2 <= 32767^2 < 2^31: the product in int32, the sum in int64
    s2 = te.compute(lead, lambda *i: te.sum((xi[(*i, k2)].astype("int32") * xi[(*i, k2)].astype("int32"))
                                            .astype(acc2), axis=k2), name="ln_sum_sq")

    def rstd(*i):
        s = s1(*i).astype("int64")
        v = (tirx.const(c, "int64") * s2(*i) - s * s).astype("float32")  # exact int64, rounded once
        return _f(1.0) / tirx.sqrt(v + _f(e))

    r = te.compute(lead, rstd, name="ln_rstd")

    def out(*i):
        row, ch = i[:-1], i[-1]
        d = (tirx.const(c, acc) * xi(*i) - s1(*row)).astype("float32")
        t = rounded((d * r(*row)) * g[ch]) + b[ch]
        return _clamp_int(_round(t) + _f(out_zp), qmin, qmax, out_dtype)

    return te.compute(shape, out, name="qlayernorm")


def _qlayernorm(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    a = node.attrs
    c = ins[0].shape[-1]
    inv, e, g, b = ln_constants(c, a["eps"], a["x_scale"], cx.param("weight"), cx.param("bias"), a["out_scale"])
    qmin, qmax = QRANGE[a["out_dtype"]]
    return cx.emit_te(qlayernorm_kernel, args[0], cx.const(g, "float32"), cx.const(b, "float32"), inv_x=inv, e=e,
                      out_zp=a["out_zp"], qmin=qmin, qmax=qmax, out_dtype=TVM_DTYPE[a["out_dtype"]])


# ---- qgelu -------------------------------------------------------------------------------------------
def qgelu_value(x, inv_out: float, out_zp: int, qmin: int, qmax: int, out_dtype: str):
    """qgelu of one float32 TIR value (quant.py: erf by A&S 7.1.28 in float32 steps, then quantize)."""
    from tvm import tirx

    from convdsl.backends.tvm.schedules.kernels import rounded

    coeffs = [f32(v) for v in ERF_COEFFS]
    z = tirx.min(tirx.abs(x) * _f(INV_SQRT2), _f(ERF_CLAMP))
    h = rounded(z * _f(coeffs[-1]))
    for a in reversed(coeffs[:-1]):
        h = rounded((h + _f(a)) * z)
    r = _f(1.0) / (h + _f(1.0))
    for _ in range(4):  # (1/P)^16 as four squarings
        r = r * r
    r = rounded(r)  # the last square, before 1 - r
    e = _f(1.0) - r
    e = tirx.Select(x < _f(0.0), -e, e)
    g = (x * (_f(1.0) + e)) * _f(0.5)
    return _clamp_int(_round(g * _f(inv_out)) + _f(out_zp), qmin, qmax, out_dtype)


def _qgelu(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    a = node.attrs
    qmin, qmax = QRANGE[a["out_dtype"]]
    kw = dict(inv_out=inverse_scale(a["out_scale"]), out_zp=a["out_zp"], qmin=qmin, qmax=qmax,
              out_dtype=TVM_DTYPE[a["out_dtype"]])
    return cx.emit_te(lambda x: te.compute(x.shape, lambda *i: qgelu_value(x(*i), **kw), name="qgelu"), args[0])


# ---- qattention --------------------------------------------------------------------------------------
def qattention_paths(length: int, head_width: int) -> tuple[str, str]:
    """(logits, values): the dtype each GEMM of qattention sums in.  float32 where every partial sum
    is an integer of magnitude <= 2^24 (q k^T: d * 255^2, w v: L * 255^2; then any order of the
    additions is exact and the fast float32 GEMM serves), else int32 (int64 past int32's range)."""
    def dtype(bound: int) -> str:
        return "float32" if bound <= F32_EXACT else "int32" if bound <= INT32_MAX else "int64"

    return dtype(head_width * DIFF_MAX * DIFF_MAX), dtype(length * PROB_MAX * DIFF_MAX)


def qattention_tiles(length: int) -> tuple[int, int]:
    """(query rows, keys) the attention's GEMMs run over on the current CPU target, as
    ``lower_attention._heads_layout`` pads them: the keys to whole column tiles of the Q K^T GEMM
    (whole vectors only where that wastes over 8%: ViT-S's 197 -> 208 on AVX-512), the queries to whole
    row tiles, so that neither GEMM pads its operands; (L, L) elsewhere and for rows shorter than a vector."""
    from convdsl.backends.tvm.lower_attention import cpu_hardware
    from convdsl.backends.tvm.schedules.cpu import gemm_tile

    hw = cpu_hardware()
    if hw is None or length < hw.lanes:
        return length, length
    rm, nv = gemm_tile(length, -(-length // hw.lanes), hw, 1, pad_cols=True)
    pad = (-length) % (nv * hw.lanes)
    if pad - (-length) % hw.lanes > 0.08 * length:
        pad = (-length) % hw.lanes
    return -(-length // rm) * rm, length + pad


def qattention_unpack(x: te.Tensor, *, heads: int, rows: int, keys: int, zp: int, dtype: str,
                      parts: tuple[str, ...] = ("q", "kt", "v")) -> list[te.Tensor]:
    """TE: int8 tokens x [N, L, 3C] -> x - zp in ``dtype`` (exact), split into the GEMMs' operands
    (``parts`` of them): q [N, heads, rows, d], kt [N, heads, d, keys] (k transposed), v [N, heads, keys, d];
    the queries and keys past L are zeros.  The layouts the attention's GEMMs read as they are; one
    kernel (``_opaque``)."""
    from tvm import tirx

    n = x.shape[0]
    length, width = int(x.shape[1]), int(x.shape[2]) // 3
    d = width // heads
    zero = tirx.const(0, dtype)

    def val(b, i, col):
        return x[b, i, col].astype(dtype) - tirx.const(zp, dtype)

    def key(b, j, col):  # tokens past L: zeros (the row read is clamped inside x)
        return tirx.Select(j < length, val(b, tirx.min(j, length - 1), col), zero)

    make = {
        "q": lambda: te.compute((n, heads, rows, d), lambda b, h, i, k: key(b, i, h * d + k), name="qattn_q"),
        "kt": lambda: te.compute((n, heads, d, keys), lambda b, h, k, j: key(b, j, width + h * d + k), name="qattn_kt"),
        "v": lambda: te.compute((n, heads, keys, d), lambda b, h, j, k: key(b, j, 2 * width + h * d + k),
                                name="qattn_v"),
    }
    return [make[p]() for p in parts]


def qattention_probs(s: te.Tensor, *, length: int, c: float, out_dtype: str) -> te.Tensor:
    """TE: the 8-bit softmax of logits s [..., keys] (float32 or integer; keys past ``length`` are
    padding): w = round(255 * 2^u), u = max(c (s - max s) log2 e, -126) (quant.py), 0 on the padding.
    Two row blocks, the max and w (schedules/cpu.py's row rule: rows parallel, the max as lanes-wide
    partial results, w one vector per 16 keys)."""
    from tvm import tirx

    from convdsl.backends.tvm.schedules.kernels import rounded

    shape = tuple(s.shape)
    rows, keys = shape[:-1], int(shape[-1])
    low = _f(float("-inf")) if s.dtype == "float32" else tvm.tirx.min_value(s.dtype)
    j = te.reduce_axis((0, keys), "j")
    top = te.compute(rows, lambda *i: te.max(tirx.Select(j < length, s[(*i, j)], low), axis=j), name="qattn_max")
    coeffs = [f32(p) for p in EXP2_COEFFS]

    def prob(*i):
        diff = s(*i) - top(*i[:-1])  # exact, or (float32, past 2^24) the exact difference rounded once
        t = diff.astype("float32") * _f(c)
        u = tirx.max(t * _f(LOG2E), _f(EXP2_FLOOR))
        n = tirx.floor(u)
        f = u - n
        h = rounded(f * _f(coeffs[-1]))
        for a in reversed(coeffs[:-1]):
            h = rounded((h + _f(a)) * f)
        p = h + _f(1.0)
        two_n = tirx.reinterpret("float32", tirx.shift_left(n.astype("int32") + 127, tirx.const(23, "int32")))
        w = _round((p * two_n) * _f(PROB_MAX))
        return tirx.Select(i[-1] < length, w, _f(0.0)).astype(out_dtype)

    return te.compute(shape, prob, name="qattn_probs")


def qattention_multiplier(w: te.Tensor, *, mult: float) -> te.Tensor:
    """TE: each row's output multiplier f32(M / S), S = sum w (exact: S <= 255 L).  A row
    kernel of its own (the sum and the multiplier: the row rule's two blocks; in the probabilities'
    kernel, whose w is an output, the rule cannot place the blocks in the row loop)."""
    rows, keys = tuple(w.shape[:-1]), int(w.shape[-1])
    k = te.reduce_axis((0, keys), "k")
    total = te.compute(rows, lambda *i: te.sum(w[(*i, k)], axis=k), name="qattn_sum")

    def multiplier(*i):
        return _f(mult) / total(*i).astype("float32")  # one division (quant.py)

    return te.compute(rows, multiplier, name="qattn_mult")


def _qattention(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    from convdsl.backends.tvm.schedules.kernels import LOWEST_F32

    a = node.attrs
    n, length, c3 = cx.shape(ins[0])
    if not isinstance(length, int):
        raise cx.error("needs a static token count (its exact sums are chosen by the sequence length)",
                       hint="bind the length: --bind L=197")
    heads = a["heads"]
    width = c3 // 3
    d = width // heads
    to_int = a["out_dtype"] != "f32"
    c, mult = attention_constants(a["in_scale"], d, a["scale"], a["out_scale"] if to_int else None)
    logits_dtype, values_dtype = qattention_paths(length, d)
    rows, keys = qattention_tiles(length)
    unpack = dict(heads=heads, rows=rows, keys=keys, zp=a["in_zp"])
    if values_dtype == logits_dtype:
        qkv = cx.emit_te(qattention_unpack, args[0], dtype=logits_dtype, **unpack)
        _opaque(cx, qkv)
        q, kt, v = (cx.emit(tvm.relax.TupleGetItem(qkv, i)) for i in range(3))
    else:
        qk = cx.emit_te(qattention_unpack, args[0], dtype=logits_dtype, parts=("q", "kt"), **unpack)
        _opaque(cx, qk)
        q, kt = (cx.emit(tvm.relax.TupleGetItem(qk, i)) for i in range(2))
        v = cx.emit_te(lambda x: qattention_unpack(x, dtype=values_dtype, parts=("v",), **unpack)[0], args[0])
    s = cx.emit(R.matmul(q, kt, out_dtype=logits_dtype))  # [N, heads, rows, keys]: rows past L finite, unused
    w = cx.emit_te(qattention_probs, s, length=length, c=c, out_dtype=values_dtype)
    m = cx.emit_te(qattention_multiplier, w, mult=mult)
    acc = cx.emit(R.matmul(w, v, out_dtype=values_dtype))  # [N, heads, rows, d]
    m = cx.emit(R.expand_dims(m, [-1]))
    y = cx.emit(R.multiply(cx.emit(R.astype(acc, "float32")) if values_dtype != "float32" else acc, m))
    if to_int:
        qmin, qmax = QRANGE[a["out_dtype"]]
        y = cx.emit(R.add(cx.emit(R.round(y)), cx.const(float(a["out_zp"]), "float32")))
        y = cx.emit(R.astype(cx.emit(R.clip(y, qmin, qmax)), TVM_DTYPE[a["out_dtype"]]))
    else:
        y = cx.emit(R.maximum(y, cx.const(LOWEST_F32, "float32")))  # rounded(y): an add after it stays apart
    return cx.emit_te(merge_heads, y, length=length)


def _opaque(cx, y) -> None:
    """op_pattern = kOpaque on the kernel just emitted: FuseOps leaves it one kernel (a multi-output
    injective kernel was split into one copy per output, each launching its own parallel loop)."""
    gv = cx.bb.lookup_binding(y).args[0]
    cx.bb.update_func(gv, cx.bb.get()[gv].with_attr("op_pattern", OPAQUE))


def merge_heads(y: te.Tensor, *, length: int) -> te.Tensor:
    """TE: [N, heads, rows, d] -> [N, L, heads * d], the first L rows."""
    n, heads, _, d = y.shape
    return te.compute((n, length, heads * d), lambda b, i, c: y[b, c // d, i, c % d], name="qattn_merge")


LOWERINGS.add("qlayernorm", _qlayernorm)
LOWERINGS.add("qgelu", _qgelu)
LOWERINGS.add("qattention", _qattention)
