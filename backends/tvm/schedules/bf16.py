"""bf16 kernels on x86 with AVX512_BF16: ``vdpbf16ps`` (bf16 pairs x bf16 pairs -> f32), convdsl's own.

``--precision bf16`` (``layout.py``) turns convs (groups 1, output channels a multiple of 8,
even input-channel block; an odd number of NCHW input channels, the RGB stem, gets a zero channel,
``PAD_ODD_CHANNELS``) and constant-weight matmuls (N a multiple of 16, K even) into the
two kernels below (a conv whose output channels are a multiple of 8 and not of 16 writes 8-channel
blocks with the ymm ``vdpbf16ps``, ``conv_block``: RegNetY-400MF's 104- and 440-channel layers, which
stayed f32 before: RegNetY-400MF bf16 6.04 -> 5.41 ms on Zen 4 in a scratch A/B, MobileNet-V2 level):
weights rounded to bf16 once (NumPy, round to nearest even), activations rounded to bf16 by the kernel's own
input copy, products summed in f32, the fused epilogue (bias, batchnorm, residual add, activation) in f32.
Everything else stays f32.

    conv2d_nchwc_bf16   x [N, C/ib, H, W, ib] f32 -> pad + round -> xb (bf16 bits)
                        y[n, o, oh, ow, ob] += xb[n, c, ..., 2p:2p+2] . W[o, c, kh, kw, p, ob, 2]  (ob 16 or 8)
    dense_packed_bf16   x [..., K] f32 -> round -> xb;  y[..., n] += xb[..., 2p:2p+2] . W[n/16, p, n%16, 2]

The inner 16 x 2 dot product (16 output lanes, one pair of input channels broadcast) is
tensorized to ``vdpbf16ps``; ``cpu.py`` schedules both, the same template as its f32 kernels (register
tile of output columns x channel blocks, reduction loops outside the tile, epilogue per tile).

Why an LLVM IR snippet: TVM's LLVM code generator has no ``bfloat`` vector type (bf16 values
are legalized to f32 compute or u16 storage), and LLVM 17+ declares
``llvm.x86.avx512bf16.dpbf16ps.512`` on ``<32 x bfloat>``.  So bf16 tensors are ``uint16``
bit patterns in TIR, and the tensor intrinsic calls ``convdsl_dpbf16ps`` on i32 vectors, a
four-line LLVM function (bitcast, intrinsic) imported into the module with TVM's
``pragma_import_llvm`` and inlined by LLVM: one ``vdpbf16ps`` per call, no call overhead.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from convdsl.backends.tvm.schedules.kernels import (KERNEL_ATTR, bf16_value, out_size, pad_spatial, target_has,
                                                   to_bf16_bits)

LANES = 16  # f32 outputs of one vdpbf16ps (zmm)
HALF = 8  # f32 outputs of the ymm vdpbf16ps: convs whose output channels are 8-channel blocks (O % 16 == 8)
YMM = True  # False: such convs stay f32 in a bf16 build
PAIR = 2  # bf16 products summed per lane
INTRIN = "convdsl_dpbf16_16x2"
EXTERN = "convdsl_dpbf16ps"
IMPORT_ATTR = "pragma_import_llvm"


def _extern(lanes: int) -> str:
    """The name of the ``vdpbf16ps`` function on ``lanes`` f32 outputs: ``EXTERN`` (zmm), ``EXTERN`` + "8" (ymm)."""
    return EXTERN if lanes == LANES else f"{EXTERN}{lanes}"


def _dpbf16ps(lanes: int) -> str:
    """The LLVM IR of ``_extern(lanes)`` on ``lanes`` f32 outputs (16: zmm, 8: ymm)."""
    name = _extern(lanes)
    intrinsic = f"llvm.x86.avx512bf16.dpbf16ps.{lanes * 32}"
    f, i, h = f"<{lanes} x float>", f"<{lanes} x i32>", f"<{2 * lanes} x bfloat>"  # f32 lanes, bf16 pairs
    return f"""
define linkonce_odr {f} @{name}({f} %c, {i} %a, {i} %b) alwaysinline {{
  %x = bitcast {i} %a to {h}
  %y = bitcast {i} %b to {h}
  %r = call {f} @{intrinsic}({f} %c, {h} %x, {h} %y)
  ret {f} %r
}}
declare {f} @{intrinsic}({f}, {h}, {h})
"""


LLVM_IR = _dpbf16ps(LANES) + _dpbf16ps(HALF)


# ---- bf16 as uint16 bit patterns ------------------------------------------------------------------------
def round_to_bf16(a: np.ndarray) -> np.ndarray:
    """f32 -> bf16 bit patterns (uint16), round to nearest even, as torch's ``.to(torch.bfloat16)``."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(a)
    out = r.astype(np.uint16)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


# ---- weights ---------------------------------------------------------------------------------------------
def pack_conv_weight(w: np.ndarray, ib: int, ob: int = LANES) -> np.ndarray:
    """OIHW f32 -> [O/ob, I/ib, KH, KW, ib/2, ob, 2] bf16 bits (``ob``: ``conv_block``'s)."""
    o, i, kh, kw = w.shape
    b = w.reshape(o // ob, ob, i // ib, ib // PAIR, PAIR, kh, kw).transpose(0, 2, 5, 6, 3, 1, 4)
    return round_to_bf16(np.ascontiguousarray(b))


def pack_dense_weight(w: np.ndarray) -> np.ndarray:
    """[K, N] f32 -> [N/16, K/2, 16, 2] bf16 bits (N zero-padded to whole 16-column vectors)."""
    k, n = w.shape
    if n % LANES:
        w = np.concatenate([w, np.zeros((k, (-n) % LANES), w.dtype)], axis=1)
        n = w.shape[1]
    b = w.reshape(k // PAIR, PAIR, n // LANES, LANES).transpose(2, 0, 3, 1)
    return round_to_bf16(np.ascontiguousarray(b))


def conv_block(o: int) -> int | None:
    """The output block of a bf16 conv with ``o`` output channels: 16 (zmm ``vdpbf16ps``), 8 where ``o`` is a
    multiple of 8 and not of 16 (the ymm form, as the int8 kernel's ymm ``vpdpbusd``: MobileNet-V2's
    24-channel projections, RegNetY-400MF's 104- and 440-channel layers), None for other counts."""
    return LANES if o % LANES == 0 else HALF if o % HALF == 0 and YMM else None


def conv_fits(c: int, o: int, ib: int | None) -> bool:
    return ib is not None and ib % PAIR == 0 and c % ib == 0 and conv_block(o) is not None


# a conv over an odd number of NCHW input channels (the RGB stem) gets one zero channel, so that its input
# channels are whole pairs for vdpbf16ps, instead of staying f32
PAD_ODD_CHANNELS = True
# a conv's output whose only reader is a vdpbf16ps conv (or a bf16 depthwise conv) is stored as bf16 bits by
# its epilogue (``layout._Blocker.bf16_input``) instead of f32 rounded by the reader's input copy
BITS_BETWEEN_CONVS = True
# without AMX, a 3x3 stride-1 conv that winograd.choose_m takes against vdpbf16ps (``against_bf16``) runs as the
# f32 Winograd kernels in a bf16 build
WINOGRAD_F32 = True
PAD_DENSE_COLUMNS = True  # N not a multiple of 16 (a classifier's 1000): padded to whole vectors, not left f32


def dense_fits(k: int, n: int) -> bool:
    return k % PAIR == 0 and (n % LANES == 0 or PAD_DENSE_COLUMNS and n >= LANES)


# ---- computes ----------------------------------------------------------------------------------------------
def conv2d_nchwc_bf16(data: te.Tensor, kernel: te.Tensor, stride, padding, dilation) -> te.Tensor:
    """data [N, C/ib, H, W, ib] f32 (or u16: bf16 bits), kernel [O/ob, C/ib, KH, KW, ib/2, ob, 2] u16 -> [N, O/ob, OH,
    OW, ob] f32."""
    n, _, h, w, _ = (int(v) for v in data.shape)
    ocb, icb, kh, kw, ip, ob, _ = (int(v) for v in kernel.shape)
    (sh, sw), (dh, dw) = stride, dilation
    pt, pl, pb, pr = padding
    oh, ow = out_size(h, kh, sh, pt + pb, dh), out_size(w, kw, sw, pl + pr, dw)
    xp = pad_spatial(data, pt, pl, pb, pr)
    if data.dtype == "uint16":  # bf16 bits already (the conv before rounded them in its store): padded only
        xb = xp
    else:
        xb = te.compute(xp.shape, lambda *i: to_bf16_bits(xp(*i)), name="to_bf16", attrs={KERNEL_ATTR: "pad"})
    rc = te.reduce_axis((0, icb), "ic_outer")
    ry = te.reduce_axis((0, kh), "kh")
    rx = te.reduce_axis((0, kw), "kw")
    rp = te.reduce_axis((0, ip), "ic_pair")
    r2 = te.reduce_axis((0, PAIR), "ic_two")
    return te.compute(
        (n, ocb, oh, ow, ob),
        lambda b, o, y, x, oc: te.sum(
            bf16_value(xb[b, rc, y * sh + ry * dh, x * sw + rx * dw, rp * PAIR + r2])
            * bf16_value(kernel[o, rc, ry, rx, rp, oc, r2]),
            axis=[rc, ry, rx, rp, r2]),
        name="conv2d_nchwc_bf16", attrs={KERNEL_ATTR: "conv2d_nchwc_bf16"})


def dense_packed_bf16(x: te.Tensor, w: te.Tensor, rows: int | None = None, cols: int | None = None) -> te.Tensor:
    """x [..., M, K] f32, w [N/16, K/2, 16, 2] u16 -> [..., M, N] f32.  ``rows`` > M: the product
    is computed over ``rows`` rows (the ones past M read row M - 1) into a buffer the result is
    copied from (``dense_unpad``, inlined into the epilogue by the schedule), as
    ``kernels.dense_packed`` does: the register tile must divide the rows, since TVM's tensorize
    does not match a block under the row guard of a partial tile (ViT-S's 197 tokens).  ``cols`` <
    N the same way for columns: ``w`` zero-padded to whole 16-column vectors (a classifier's 1000
    outputs: 63 vectors), the result the first ``cols``."""
    nblk, kp, nb, _ = (int(v) for v in w.shape)
    cols = nblk * nb if cols is None else cols
    xb = te.compute(x.shape, lambda *i: to_bf16_bits(x(*i)), name="to_bf16", attrs={KERNEL_ATTR: "pack"})
    rp = te.reduce_axis((0, kp), "k_pair")
    r2 = te.reduce_axis((0, PAIR), "k_two")
    lead = list(x.shape[:-1])
    m = lead[-1] if lead else None
    pad = rows is not None and isinstance(m, (int, tirx.IntImm)) and rows > int(m)

    def fn(*idx):
        j = idx[-1]
        row = tuple(idx[:-2]) + (tirx.min(idx[-2], int(m) - 1),) if pad else tuple(idx[:-1])
        return te.sum(bf16_value(xb[row + (rp * PAIR + r2,)]) * bf16_value(w[j // nb, rp, j % nb, r2]), axis=[rp, r2])

    shape = lead[:-1] + [rows] + [nblk * nb] if pad else lead + [nblk * nb]
    y = te.compute(shape, fn, name="dense_packed_bf16", attrs={KERNEL_ATTR: "dense_packed_bf16"})
    if not pad and cols == nblk * nb:
        return y
    return te.compute(lead + [cols], lambda *idx: y[idx], name="dense_unpad")


def dense_rows(m: int, tile_rows: int) -> int:
    """``m`` rounded up to a multiple of the register tile's rows (``dense_packed_bf16``'s ``rows``)."""
    return -(-m // tile_rows) * tile_rows


# ---- the tensor intrinsic ----------------------------------------------------------------------------------
def register_intrinsic(scope: str = "global", lanes: int = LANES) -> str:
    """Register (once) C[lanes] += sum_k bf16(A[k]) * bf16(B[lanes, k]), k < 2, as one ``vdpbf16ps`` (zmm for 16
    lanes, ymm for 8); ``scope``: the accumulator's (``local`` when an epilogue reads the tile)."""
    name = f"{INTRIN}_{scope}" if lanes == LANES else f"{INTRIN}_{scope}_{lanes}"
    extern = _extern(lanes)
    acc, weights, words = f"float32x{lanes}", f"uint16x{2 * lanes}", f"int32x{lanes}"  # vector dtypes
    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    from tvm.script import tirx as T

    from convdsl.backends.tvm.tuning import prime_inspect_cache

    prime_inspect_cache()  # TVMScript's decorator inspects the stack

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((2,), "uint16", offset_factor=1), B: T.Buffer((lanes, 2), "uint16", offset_factor=1),
             C: T.Buffer((lanes,), "float32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.reinterpret("float32", T.shift_left(T.Cast("uint32", A[vk]), T.uint32(16))) \
                            * T.reinterpret("float32", T.shift_left(T.Cast("uint32", B[vi, vk]), T.uint32(16)))

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), "uint16", offset_factor=1), B: T.Buffer((lanes, 2), "uint16", offset_factor=1),
             C: T.Buffer((lanes,), "float32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            pair = T.reinterpret(A.vload([0], "uint16x2"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_pure_extern(
                acc, extern, C.vload([0], dtype=acc), T.broadcast(pair, lanes),
                T.reinterpret(B.vload([0, 0], dtype=weights), dtype=words))

    s_tir.TensorIntrin.register(name, desc, impl)
    return name


def with_llvm_import(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with the LLVM definition of ``convdsl_dpbf16ps`` attached (linked once per module)."""
    body = tirx.AttrStmt(tirx.const(0, "int32"), IMPORT_ATTR, tvm.ir.StringImm(LLVM_IR), func.body)
    return func.with_body(body)


def has_bf16(target) -> bool:
    return target_has(target, "avx512bf16")


__all__ = ["conv2d_nchwc_bf16", "dense_packed_bf16", "pack_conv_weight", "pack_dense_weight",
           "round_to_bf16", "bf16_to_f32", "to_bf16_bits", "with_llvm_import", "has_bf16", "conv_block", "conv_fits",
           "dense_fits"]
