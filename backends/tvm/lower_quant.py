"""TVM lowerings of the quantized ops (convdsl/ir/ops/quant.py); see common.py for the entry format.

Real int8.  On CPU targets (``tvm-llvm``) ``qconv2d``/``qconv1d`` with
``groups=1`` and ``qlinear`` are one TE kernel in the layout of x86's VNNI
instruction ``vpdpbusd`` (u8 x s8 -> s32, 4 products per int32 lane, 16 lanes):

    pack:     xp[n, icb, h, w, c4]  = u8(x[n, 4 icb + c4, h - pad, w - pad])   (in_zp where padded)
    conv:     acc[n, ob, oh, ow, o16] = sum xp[n, icb, oh s + kh d, ow s + kw d, c4] * W[ob, icb, kh, kw, o16, c4]
    requant:  y[n, c, oh, ow] = requantize(acc[n, c / 16, oh, ow, c % 16] + bias'[c])

The weights are packed here, at compile time, into ``OIHW[oc/16][ic/4][kh][kw][16][4]``
blocks (channels zero-padded to multiples of 16 and 4).  The block annotations
``convdsl.vnni`` (``pack``, ``conv``, ``requant``) are what
``schedules/int8.py`` recognizes; it tensorizes the inner 16 x 4 dot product with
TVM's ``dot_16x4_vnni`` intrinsic.  The kernel is marked output-elementwise
fusable (``op_pattern`` = kOutEWiseFusable), so FuseOps appends the float ops
that follow (residual add, relu, the next quantize) to its epilogue.  ``qlinear``
is the same kernel as a 1x1 convolution of [1, K, 1, rows] (rows share each weight
load); ``qconv1d`` a convolution of height 1; on VNNI a grouped qconv2d whose groups are whole blocks
(``grouped_int8_layout``) the same kernel, each output block reading its own group's input blocks.
Depthwise convs have their own kernel (schedules/int8_depthwise.py); other grouped convs (on CPU in float32
where exact, ``grouped_in_f32``), qconv3d and GPU targets use the plain Relax path below
(``conv(..., out_dtype="int32")``).

The input zero point is handled the way int8 libraries do: the input is padded
with ``in_zp`` (real zero) and the term ``in_zp * sum(w[c])`` is folded into the
int32 bias, computed here once:

    acc = conv(pad(q_x, in_zp), q_w) + (bias - in_zp * sum(q_w[c]))   ==   conv(q_x - in_zp, q_w) + bias

An ``i8`` input is shifted to ``u8`` (x + 128, in_zp + 128: the same differences
x - in_zp), since vpdpbusd multiplies unsigned by signed bytes.

Requantization follows convdsl/ir/ops/quant.py in float32 (multiply by the
per-channel multiplier, round half to even, add the zero point, clamp).  The
multipliers come from ``requant_multiplier``, the same float64 steps as the
torch simulation, and the int32 accumulator is exact, so both backends agree
bit for bit.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from convdsl.ir.graph import Node
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.ops.quant import QRANGE, f32, inverse_scale, requant_multiplier
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.tvm.common import TVM_DTYPE, Lowerer, R, family, te, tvm

if TYPE_CHECKING:
    from tvm.relax import Expr

LOWERINGS = family("quant")

VNNI_ATTR = "convdsl.vnni"  # block annotation: pack | conv | requant
INSTRUCTION_ATTR = "convdsl.int8_instruction"  # the conv block's: its Int8Layout.instruction (schedules/int8.py)
VPDPBUSD, VPDPBUSD_YMM, VPMADDUBSW, VPMADDWD = "vpdpbusd", "vpdpbusd-ymm", "vpmaddubsw", "vpmaddwd"
VNNI_OC, VNNI_IC = 16, 4  # output channels x input channels of one vpdpbusd
MADD_OC, MADD_IC = 8, 2  # output channels x input channels of one AVX2 vpmaddwd (int16 pairs -> int32)
MADDUBS_OC = 8  # output channels of one AVX2 vpmaddubsw + vpmaddwd block (x VNNI_IC input channels, bytes)
VNNI8_OC = 8  # output channels of a ymm vpdpbusd: the VNNI layout of O % 16 == 8 output channels
VNNI_YMM = True  # False: such layers padded to 16-channel blocks (written NCHW: a transpose on each side)
GROUPED_INT8 = True  # False: grouped convs as before, the float32 conv of grouped_in_f32 (or Relax's int32 conv)
OUT_EWISE_FUSABLE = 4  # relax.OpPatternKind.kOutEWiseFusable
_LAYOUT = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}


def _quantize(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    # q = clamp(round(x * f32(1/scale)) + zp, qmin, qmax)
    a = node.attrs
    qmin, qmax = QRANGE[a["dtype"]]
    zp = a["zero_point"]
    x = args[0] if ins[0].dtype == "f32" else cx.emit(R.astype(args[0], "float32"))
    y = cx.emit(R.round(R.multiply(x, cx.const(inverse_scale(a["scale"])))))
    if on_grid(cx, node, zp):  # q - zp, in float32 (an imported transformer's Q -> DQ between float ops)
        return R.clip(y, qmin - zp, qmax - zp)
    y = cx.emit(R.clip(R.add(y, cx.const(float(zp))), qmin, qmax))
    return R.astype(y, TVM_DTYPE[a["dtype"]])


def _dequantize(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    # x = (f32(q) - zp) * scale, a rounding point (``kernels.rounded``)
    from convdsl.backends.tvm.schedules.kernels import LOWEST_F32

    a = node.attrs
    src = cx.graph.inputs_of(node.id)[0].node
    if src in cx.on_grid:  # an int8 layer's q - zq, in float32 already (``on_grid``): q - zp = (q - zq) + (zq - zp)
        y, shift = args[0], cx.on_grid[src] - a["zero_point"]
        y = cx.emit(R.add(y, cx.const(float(shift)))) if shift else y
    else:
        y = cx.emit(R.subtract(R.astype(args[0], "float32"), cx.const(float(a["zero_point"]))))
    return R.maximum(cx.emit(R.multiply(y, cx.const(f32(a["scale"])))), cx.const(LOWEST_F32))


def on_grid(cx: Lowerer, node: Node, zp: int) -> bool:
    """Whether ``node``, a quantize or an int8 layer requantizing to zero point ``zp``, is lowered to ``q - zp``
    in float32 rather than to ``q`` itself: where it is not an output and every reader dequantizes it (an
    imported QDQ file's Conv -> QuantizeLinear -> DequantizeLinear -> Add, ResNet-50's block ends; the
    QuantizeLinear -> DequantizeLinear pairs between a transformer's float ops).  The value is the same integer,
    ``clip(round(y), lo - zp, hi - zp)`` = ``clip(round(y) + zp, lo, hi) - zp`` (exact in float32: both sides
    clamp wherever ``round(y) + zp`` could round; only a NaN input, whose int8 code no arithmetic defines, now
    stays NaN), so the dequantize is one multiply: the add of the zero point, the cast to int8 and back and the
    subtract are gone from the fused kernel.  Marks ``node`` in ``cx.on_grid`` for ``_dequantize``."""
    if cx.graph.is_output(node.id):
        return False
    users = cx.graph.users(node.id)
    if not users or any(cx.graph.node(u).op != "dequantize" for u, _ in users):
        return False
    cx.on_grid[node.id] = zp
    return True


def _cast(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    return R.astype(args[0], TVM_DTYPE[node.attrs["dtype"]])


def _requantize(cx: Lowerer, node: Node, acc: Expr, channel_shape: tuple[int, ...]) -> Expr:
    """int32 accumulator -> float32 (out_dtype=f32, a rounding point: ``kernels.rounded``) or
    requantized int8, per channel."""
    from convdsl.backends.tvm.schedules.kernels import LOWEST_F32

    a = node.attrs
    to_int = a["out_dtype"] != "f32"
    m = requant_multiplier(a["in_scale"], cx.param("w_scale"), a["out_scale"] if to_int else None)
    y = cx.emit(R.multiply(cx.emit(R.astype(acc, "float32")), cx.const(m.reshape(channel_shape))))
    if not to_int:
        return R.nn.relu(y) if a["relu"] else R.maximum(y, cx.const(LOWEST_F32))  # rounded(y)
    qmin, qmax = QRANGE[a["out_dtype"]]
    lo = max(qmin, a["out_zp"]) if a["relu"] else qmin
    if on_grid(cx, node, a["out_zp"]):  # q - out_zp, in float32
        return R.clip(cx.emit(R.round(y)), lo - a["out_zp"], qmax - a["out_zp"])
    y = cx.emit(R.add(cx.emit(R.round(y)), cx.const(float(a["out_zp"]))))
    return R.astype(cx.emit(R.clip(y, lo, qmax)), TVM_DTYPE[a["out_dtype"]])


def _int32_bias(cx: Lowerer, node: Node, w: np.ndarray, in_zp: int | None = None) -> np.ndarray:
    """bias - in_zp * sum(w[c]) (int64 arithmetic), refused unless every int32 sum is exact.

    The kernels add in int32, the torch simulation in float64: they agree only if no input can
    carry the accumulator out of int32, i.e. |bias[c]| + 255 * sum|w[c]| <= 2^31 - 1 (|q_x - in_zp|
    <= 255; the folded zero-point term is bounded by the same sum).  convdsl's quantize pass keeps
    its biases inside that bound (``passes.quantize.bias_limit``); a saturated bias is not."""
    in_zp = node.attrs["in_zp"] if in_zp is None else in_zp
    w2 = w.reshape(w.shape[0], -1).astype(np.int64)
    wsum = w2.sum(axis=1)
    b = cx.param("bias").astype(np.int64) if node.attrs["bias"] else np.zeros(w.shape[0], np.int64)
    total = b - in_zp * wsum
    info = np.iinfo(np.int32)
    worst = np.abs(b) + 255 * np.abs(w2).sum(axis=1)
    if worst.max(initial=0) > info.max:
        c = int(np.argmax(worst))
        raise cx.error(f"the int32 accumulator of output channel {c} can overflow: |bias| {abs(int(b[c]))} + "
                       f"255 * sum|weight| {255 * int(np.abs(w2[c]).sum())} > 2^31 - 1 (a saturated bias?)",
                       hint="quantize the float network again with convdsl's quantize pass, which raises the "
                            "weight scale of such a channel so that its bias fits")
    if total.min(initial=0) < info.min or total.max(initial=0) > info.max:
        raise cx.error("the int32 bias (with the input zero point folded in) overflows int32")
    return total.astype(np.int32)


# ---- the VNNI kernel (CPU) ----------------------------------------------------------------------------
def pack_vnni_weight(w: np.ndarray, oc: int = VNNI_OC, ic: int = VNNI_IC) -> np.ndarray:
    """int8 [O, C, KH, KW] -> [O/oc, C/ic, KH, KW, oc, ic] (zero-padded to whole blocks): VNNI's
    [16][4] bytes, or AVX2's [8][2] (widened to int16 by ``int8_layout``'s caller)."""
    o, c, kh, kw = w.shape
    ob, icb = -(-o // oc), -(-c // ic)
    full = np.zeros((ob * oc, icb * ic, kh, kw), np.int8)
    full[:o, :c] = w
    blocks = full.reshape(ob, oc, icb, ic, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    return np.ascontiguousarray(blocks)


class Int8Layout(NamedTuple):
    """One dot-product block of the int8 kernel (``int8_layout``): its output and input channels, the weights'
    dtype, and the instruction it is laid out for, which the kernel's conv block carries to schedules/int8.py
    (``INSTRUCTION_ATTR``): VNNI's ymm ``vpdpbusd`` and AVX2's ``vpmaddubsw`` share the [8][4] byte layout."""
    oc: int
    ic: int
    dtype: str
    instruction: str  # VPDPBUSD, VPDPBUSD_YMM, VPMADDUBSW or VPMADDWD


def int8_layout(w: np.ndarray | None = None) -> Int8Layout:
    """(output channels, input channels, weight dtype, instruction) of one dot-product block for the current target:
    VNNI's 16 x 4 bytes (``vpdpbusd``), or 8 x 4 for output channels a multiple of 8 and not of 16
    (``vpdpbusd`` on ymm, ``schedules.int8.register_vnni8_intrinsic``); on an AVX2 CPU without it, 8 x 4
    bytes (``vpmaddubsw`` + ``vpmaddwd``) when the int8 weights ``w`` [O, C, ...] cannot saturate vpmaddubsw's
    int16 pair sums
    (``maddubs_exact``: 7-bit weights always), else 8 x 2 int16 (``vpmaddwd``: the weights widened
    here, once, the activations widened when they are packed)."""
    target = tvm.target.Target.current(allow_none=True)
    if target is not None and target.kind.name == "llvm":
        from tvm.target import codegen

        vnni = codegen.target_has_features("avx512vnni", target)
        if not vnni and codegen.target_has_features("avx2", target):
            if w is not None and maddubs_exact(w):
                return Int8Layout(MADDUBS_OC, VNNI_IC, "int8", VPMADDUBSW)
            return Int8Layout(MADD_OC, MADD_IC, "int16", VPMADDWD)
        if vnni and VNNI_YMM and w is not None and w.shape[0] % VNNI_OC and w.shape[0] % VNNI8_OC == 0:
            # vpdpbusd on ymm: no padding to 16 channels, 8-channel output blocks
            return Int8Layout(VNNI8_OC, VNNI_IC, "int8", VPDPBUSD_YMM)
    return Int8Layout(VNNI_OC, VNNI_IC, "int8", VPDPBUSD)


def grouped_int8_layout(w: np.ndarray, groups: int) -> Int8Layout | None:
    """The dot-product block of a grouped (not depthwise) qconv2d's int8 kernel on the current target, None
    where it takes none: each output block must lie in one group and each input block too (the kernel reads
    the input blocks of its output block's group), so the groups' widths must be whole blocks: 16 x 4 on VNNI,
    or ymm's 8 x 4 for groups of a multiple of 8 and not 16 output channels (RegNet's groups of 8: one group
    per ymm block, nothing computed for another group's zeros).  On AVX2, AVX2's 8 x 4 bytes (``vpmaddubsw``)
    for weights that cannot saturate it (``maddubs_exact``: 7-bit weights), groups of a multiple of 8 output
    channels; 8-bit weights keep the float32 conv of ``grouped_in_f32`` (no grouped ``vpmaddwd`` kernel).
    RegNetY-400MF int8 on Zen 3, 7-bit weights: 7.18 -> 5.73 ms with it (a scratch A/B, outputs identical;
    before AVX2's int8 convs stayed blocked, layout.py, it measured 3-7% slower than the float32 conv)."""
    target = tvm.target.Target.current(allow_none=True)
    if not GROUPED_INT8 or groups <= 1 or target is None or target.kind.name != "llvm":
        return None
    from tvm.target import codegen

    og, cg = w.shape[0] // groups, w.shape[1]
    if codegen.target_has_features("avx512vnni", target):
        layout = Int8Layout(VNNI_OC, VNNI_IC, "int8", VPDPBUSD)
        if og % VNNI_OC:
            layout = Int8Layout(VNNI8_OC, VNNI_IC, "int8", VPDPBUSD_YMM) if VNNI_YMM else None
    elif codegen.target_has_features("avx2", target) and maddubs_exact(w):
        layout = Int8Layout(MADDUBS_OC, VNNI_IC, "int8", VPMADDUBSW)
    else:
        return None
    if layout is None or w.shape[0] % groups or og % layout.oc or cg % layout.ic:
        return None
    return layout


def use_amx(w: np.ndarray) -> bool:
    """Whether a conv/linear (groups 1) with int8 weights ``w`` [O, C, ...] takes the AMX kernel
    (``schedules/amx.py``): the current target has +amx-int8 and the layer enough input channels."""
    from convdsl.backends.tvm.schedules import amx

    return amx.has_amx_int8(tvm.target.Target.current(allow_none=True)) and amx.fits(int(w.shape[1]))


def int8_instruction(w: np.ndarray | None = None) -> str:
    """The x86 instruction the int8 kernel runs for weights ``w`` on the current target."""
    if w is not None and use_amx(w):
        return "tdpbusd"
    return int8_layout(w).instruction.removesuffix("-ymm")


def int8_instructions(graph) -> dict[str, int]:
    """{instruction: how many quantized layers of ``graph`` run it} on the current target (the manifest's
    record of what the int8 build executes): ``vpdpbusd`` / ``vpmaddubsw`` / ``vpmaddwd`` for the
    dot-product kernel (grouped convs too, ``grouped_int8_layout``), ``depthwise`` (schedules/int8_depthwise.py),
    ``grouped-f32`` (``grouped_in_f32``), ``generic`` (other grouped convs, qconv3d: Relax's int32 conv)."""
    from convdsl.backends.tvm.schedules import int8_depthwise

    counts: dict[str, int] = {}
    for node in graph.nodes():
        if node.op not in ("qconv1d", "qconv2d", "qconv3d", "qlinear"):
            continue
        w = np.asarray(graph.params[node.params["weight"]])
        groups = node.attrs.get("groups", 1)
        c = graph.in_types(node.id)[0].shape[1] if node.op != "qlinear" else None
        ow = node.types[0].shape[-1]
        if (node.op == "qconv2d" and groups == c == w.shape[0] and w.shape[1] == 1 and isinstance(c, int)
                and int8_depthwise.fits(c, w.shape[2] * w.shape[3], ow if isinstance(ow, int) else 0)):
            kind = "depthwise"
        elif node.op == "qconv2d" and (grouped := grouped_int8_layout(w, groups)) is not None:
            kind = grouped.instruction.removesuffix("-ymm")
        elif node.op == "qconv2d" and grouped_in_f32("tvm-llvm", 2, groups, w):
            kind = "grouped-f32"
        elif node.op == "qconv3d" or groups != 1:
            kind = "generic"
        else:
            kind = int8_instruction(w)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


INT16_MAX = 2**15 - 1


def maddubs_exact(w: np.ndarray) -> bool:
    """Whether ``vpmaddubsw`` sums every pair of u8 x s8 products of ``w`` [O, C, ...] (int8) exactly in
    int16, in the [8][4] layout's pairs (input channels 2k and 2k + 1 at the same tap): with activations
    in [0, 255], a pair's sum lies in [255 * (its negative weights), 255 * (its positive weights)].
    Always true for weights in [-64, 64] (2 * 255 * 64 = 32640); checked here for each layer."""
    w = np.asarray(w, np.int64)
    o, c = w.shape[:2]
    full = np.zeros((o, c + c % 2) + w.shape[2:], np.int64)
    full[:, :c] = w
    pairs = full.reshape(o, -1, 2, *w.shape[2:])
    pos = np.clip(pairs, 0, None).sum(axis=2)
    neg = np.clip(pairs, None, 0).sum(axis=2)
    return bool(255 * pos.max(initial=0) <= INT16_MAX and 255 * neg.min(initial=0) >= -INT16_MAX - 1)


def vnni_conv2d(x: te.Tensor, w: te.Tensor, bias: te.Tensor, mult: te.Tensor, *, out_channels: int,
                pads: tuple[int, int, int, int], stride: tuple[int, int], dilation: tuple[int, int], in_zp: int,
                shift: bool, out_dtype: str, out_zp: int = 0, lo: int = 0, hi: int = 0,
                relu: bool = False, out_shape: tuple[int, ...] | None = None, amx=None,
                offsets: te.Tensor | None = None, blocked: tuple[int | None, int] | None = None,
                shortcut: te.Tensor | None = None, epilogue=None, instruction: str = VPDPBUSD,
                groups: int = 1, grid: bool = False) -> te.Tensor:
    """TE: pack -> VNNI-shaped conv (int32) -> requantize, for x [N, C, H, W] u8 (i8 with ``shift``),
    w packed by ``pack_vnni_weight`` for ``instruction`` (``int8_layout``'s), which the conv block carries
    to the schedule, ``bias`` int32 [O] (zero point folded in), ``mult`` f32 [O].
    ``in_zp`` is the (shifted) u8 zero point; ``out_dtype`` float32 / uint8 / int8 with range [lo, hi];
    float32 with ``grid``: the requantized value less ``out_zp``, in float32 (a layer ``on_grid``).

    With ``out_shape`` (qlinear) x [..., K] is a matrix product over its rows (the leading axes
    flattened): the 1x1 convolution of [1, K, 1, rows], rows along the width so that the register
    tile shares each weight load among rows, the width padded on the right (``pads[3]``: rows
    computed and never stored, so that the register tile divides them), the result written in
    ``out_shape`` [..., O] itself (no reshape after it, which would keep FuseOps from appending
    the ops that follow to the epilogue).

    With ``amx`` (a ``schedules.amx.Geometry``), ``w`` is packed by ``amx.pack_weight`` and ``offsets``
    holds the taps' byte offsets (``Geometry.offsets``): the pack and the conv are AMX's
    (``schedules/amx.py``), the requantization the same.  With ``blocked`` = (ib, ob), x is in the blocked
    layout [N, C/ib, H, W, ib] (ib None: NCHW) and the result [N, O/ob, OH, OW, ob] (layout.py keeps int8 activations
    blocked between AMX convs: the pack then copies whole runs of ib channels and the requantization writes
    ob contiguous channels per pixel, where NCHW needs a transpose on each side).  With ``epilogue`` (an
    ``amx.Epilogue``, built by schedules/amx_epilogue.py for an AMX conv in the blocked layout): the conv's float
    output plus the dequantized ``shortcut``, ReLU and the next quantize, in the block loop.

    With ``groups`` > 1 (a grouped conv, not AMX; ``grouped_int8_layout``), w is [O/oc, C/groups/ic, ...] and
    output block o reads the input blocks of its group, ``o * oc // (O / groups) * (C / groups / ic) + icb``:
    the same dot products, each over its group's channels only."""
    oc_b, ic_b = int(w.shape[4]), int(w.shape[5])  # 16 x 4 (VNNI, u8 x s8) or 8 x 2 (AVX2, i16 x i16)
    wide = w.dtype == "int16"
    dense = out_shape is not None
    if dense:
        lead = [int(d) for d in x.shape[:-1]]
        w_, c_, n_, h_ = int(np.prod(lead)), int(x.shape[-1]), 1, 1

        def read(n, c, h, j):
            idx = []
            for i, d in enumerate(reversed(lead)):  # the flat row j -> x's leading indices
                outer = int(np.prod(lead[:len(lead) - i - 1]))
                idx.append(0 if d == 1 else j if outer == 1 else j % d)
                j = j // d
            return x[(*reversed(idx), c)]
    elif blocked is not None and blocked[0] is not None:
        ib = blocked[0]
        n_, c_, h_, w_ = int(x.shape[0]), int(x.shape[1]) * ib, int(x.shape[2]), int(x.shape[3])
        read = lambda n, c, h, j: x[n, c // ib, h, j, c % ib]  # noqa: E731
    else:
        n_, c_, h_, w_ = (int(d) for d in x.shape)
        read = lambda n, c, h, j: x[n, c, h, j]  # noqa: E731
    from convdsl.backends.tvm.schedules.kernels import GROUPS_ATTR

    ob, icb, kh_, kw_ = (int(d) for d in w.shape[:4])
    x_blocks = icb  # the packed input's channel blocks (a grouped conv's weights span one group's)
    if groups > 1:
        x_blocks = c_ // ic_b
        per_group, blocks_per_group = out_channels // groups // oc_b, icb
        x_block = lambda o, rc: o // per_group * blocks_per_group + rc  # noqa: E731
    else:
        x_block = lambda o, rc: rc  # noqa: E731
    pt, pb, pl, pr = pads
    (sh, sw), (dh, dw) = stride, dilation
    hp, wp = h_ + pt + pb, w_ + pl + pr
    oh_, ow_ = (hp - dh * (kh_ - 1) - 1) // sh + 1, (wp - dw * (kw_ - 1) - 1) // sw + 1
    packed = "int16" if wide else "uint8"
    zp = tvm.tirx.const(in_zp, packed)

    def pack(n, cb, h, j, c4):
        c, hh, wi = cb * ic_b + c4, h - pt, j - pl
        v = read(n, c, hh, wi)
        v = (v.astype("int32") + 128).astype("uint8") if shift else v
        inside = tvm.tirx.all(c < c_, hh >= 0, hh < h_, wi >= 0, wi < w_)
        return tvm.tirx.if_then_else(inside, v.astype(packed), zp)

    if amx is not None:
        from convdsl.backends.tvm.schedules import amx as amx_kernel

        xa = amx_kernel.pack_input(read, amx, in_zp, shift, lanes=blocked[0] if blocked is not None else None)
        if epilogue is not None:
            return amx_kernel.conv_requant_extern(xa, w, offsets, bias, mult, amx, out_channels, epilogue.out_dtype,
                                                  epilogue.out_zp, epilogue.lo, epilogue.hi, shortcut, epilogue)
        if requantizes_in_block_loop(amx, blocked, out_dtype):  # each 32 x 32 block requantized while in L1
            return amx_kernel.conv_requant_extern(xa, w, offsets, bias, mult, amx, out_channels, out_dtype, out_zp,
                                                  lo, hi)
        acc_ = amx_kernel.conv_extern(xa, w, offsets, amx)
        at = lambda n, c, i, j: acc_[n, c // amx_kernel.OC, i * amx.ww + j, c % amx_kernel.OC]  # noqa: E731
        oh_, ow_, oc_b = amx.oh, amx.ow, amx_kernel.OC
    else:
        ib = blocked[0] if blocked is not None else None
        if ib is not None and ib % ic_b == 0 and x_blocks * ic_b == c_ and not shift and not wide:
            # the blocked input already holds each group of ic_b channels as contiguous bytes (16-channel
            # blocks: 4 groups of 4): the conv reads them where they are, no copy (ResNet-50 int8, VNNI:
            # its 1x1 convs' packs, a scalar byte copy of the whole input each); padding is a copy in the
            # same layout, whole blocks of bytes per pixel
            from convdsl.backends.tvm.schedules.kernels import pad_spatial

            per = ib // ic_b
            src = pad_spatial(x, pt, pl, pb, pr, value=in_zp, name="vnni_pack", attrs={VNNI_ATTR: "pack"})
            xp = lambda n, cb, h, j, c4: src[n, cb // per, h, j, cb % per * ic_b + c4]  # noqa: E731
        else:
            xp = te.compute((n_, x_blocks, hp, wp, ic_b), pack, name="vnni_pack", attrs={VNNI_ATTR: "pack"})
        rc = te.reduce_axis((0, icb), "icb")
        rh = te.reduce_axis((0, kh_), "kh")
        rw = te.reduce_axis((0, kw_), "kw")
        r4 = te.reduce_axis((0, ic_b), "c4")
        acc = te.compute(
            (n_, ob, oh_, ow_, oc_b),
            lambda n, o, i, j, o16: te.sum(
                xp(n, x_block(o, rc), i * sh + rh * dh, j * sw + rw * dw, r4).astype("int32")
                * w[o, rc, rh, rw, o16, r4].astype("int32"), axis=[rc, rh, rw, r4]),
            name="vnni_conv", attrs={VNNI_ATTR: "conv", INSTRUCTION_ATTR: instruction,
                                     **({GROUPS_ATTR: groups} if groups > 1 else {})})
        at = lambda n, c, i, j: acc[n, c // oc_b, i, j, c % oc_b]  # noqa: E731

    def requant(n, c, i, j):
        return requantized(at(n, c, i, j), bias[c], mult[c], out_dtype=out_dtype, out_zp=out_zp, lo=lo, hi=hi,
                           relu=relu, grid=grid)

    attrs = {VNNI_ATTR: "amx_requant" if amx is not None else "requant"}
    if dense:
        def flat(*idx):  # out_shape's leading indices -> the flat row (unit axes left out: the
            j = 0        # row is then one plain index, which the register tile's region is computed from)
            for i, d in zip(idx[:-1], out_shape[:-1]):
                if int(d) > 1:
                    j = j * int(d) + i
            return requant(0, idx[-1], 0, j)

        return te.compute(tuple(out_shape), flat, name="vnni_requant", attrs=attrs)
    if blocked is not None:
        ob_ = blocked[1]
        return te.compute((n_, out_channels // ob_, oh_, ow_, ob_), lambda n, o, i, j, l: requant(n, o * ob_ + l, i, j),
                          name="vnni_requant", attrs=attrs)
    return te.compute((n_, out_channels, oh_, ow_), requant, name="vnni_requant", attrs=attrs)


def requantized(acc, bias, mult, *, out_dtype: str, out_zp: int = 0, lo: int = 0, hi: int = 0, relu: bool = False,
                grid: bool = False):
    """The requantization of one int32 accumulator ``acc`` of an output channel with int32 ``bias`` (zero point
    folded in) and float32 multiplier ``mult`` (TIR expressions): ``vnni_conv2d``'s epilogue, its arguments
    as there."""
    from convdsl.backends.tvm.schedules.kernels import rounded

    y = (acc + bias).astype("float32") * mult
    if out_dtype == "float32" and grid:
        top, bottom = (tvm.tirx.const(float(v - out_zp), "float32") for v in (hi, lo))
        return tvm.tirx.max(tvm.tirx.min(tvm.tirx.round(y), top), bottom)
    if out_dtype == "float32":
        return tvm.tirx.max(y, tvm.tirx.const(0.0, "float32")) if relu else rounded(y)
    q = tvm.tirx.round(y) + tvm.tirx.const(float(out_zp), "float32")
    q = tvm.tirx.max(tvm.tirx.min(q, tvm.tirx.const(float(hi), "float32")), tvm.tirx.const(float(lo), "float32"))
    return q.astype(out_dtype)


def requantizes_in_block_loop(amx, blocked: tuple[int | None, int] | None, out_dtype: str) -> bool:
    """Whether ``vnni_conv2d`` builds ``amx.conv_requant_extern`` (the micro-kernel's blocks requantized in its
    loop, no int32 accumulator in memory): an AMX conv (``amx``: its Geometry) writing u8 / i8 in 16-channel
    blocks.  A float output (a residual add's operand) keeps the separate requantization, into which the
    float ops FuseOps appends are inlined; the fused kernel ends in an extern, which nothing can follow."""
    from convdsl.backends.tvm.schedules import amx as amx_kernel

    return amx is not None and blocked is not None and blocked[1] == amx_kernel.OC \
        and out_dtype in amx_kernel.EXTERN_REQUANT


def _use_vnni(cx: Lowerer, node: Node) -> bool:
    return not cx.target.startswith("tvm-cuda") and node.attrs.get("groups", 1) == 1


def _vnni_layer(cx: Lowerer, node: Node, x: Expr, x_dtype: str, w: np.ndarray, pads, stride, dilation,
                out_shape: tuple[int, ...] | None = None, in_shape: tuple[int, ...] = (), blockable: bool = True,
                groups: int = 1, layout: Int8Layout | None = None) -> Expr:
    """The VNNI kernel for x [N, C, H, W] (its sizes ``in_shape``) and int8 weights [O, C / groups, KH, KW];
    returns [N, O, OH, OW] (with ``out_shape``: qlinear's x [..., C] -> ``out_shape``, see ``vnni_conv2d``);
    the AMX kernel instead where ``use_amx`` (groups 1).  ``blockable`` (a 2-D conv): its PrimFunc says how to
    build it again in the blocked layout (``INT8_CONV_ATTR``, read by schedules/layout.py).  ``layout``: the
    dot-product block (a grouped conv's ``grouped_int8_layout``); None: ``int8_layout``'s."""
    blockable = blockable and out_shape is None
    a = node.attrs
    shift = x_dtype == "i8"
    in_zp = a["in_zp"] + (128 if shift else 0)
    to_int = a["out_dtype"] != "f32"
    m = requant_multiplier(a["in_scale"], cx.param("w_scale"), a["out_scale"] if to_int else None)
    kw = dict(out_channels=w.shape[0], pads=pads, stride=stride, dilation=dilation, in_zp=in_zp, shift=shift,
              out_dtype=TVM_DTYPE[a["out_dtype"]], relu=bool(a["relu"]), out_shape=out_shape)
    amx_layer = groups == 1 and use_amx(w)
    if to_int:
        qmin, qmax = QRANGE[a["out_dtype"]]
        kw.update(out_zp=a["out_zp"], lo=max(qmin, a["out_zp"]) if a["relu"] else qmin, hi=qmax)
        # not on AMX: its u8 output is requantized in the micro-kernel's block loop (``requantizes_in_block_loop``),
        # a float one from an int32 accumulator in memory
        if not amx_layer and on_grid(cx, node, a["out_zp"]):
            kw.update(out_dtype="float32", grid=True)
    if groups > 1:
        kw["groups"] = groups
    bias = _int32_bias(cx, node, w, in_zp)
    if amx_layer:
        from convdsl.backends.tvm.schedules import amx

        shape = [int(d) for d in in_shape]
        n, c, h, width = (shape if out_shape is None else (1, shape[-1], 1, int(np.prod(shape[:-1]))))
        k = amx.row_bytes(c)
        geo = amx.Geometry(n, c, h, width, tuple(pads), tuple(stride), tuple(dilation), w.shape[2], w.shape[3], k, k)
        y = cx.emit_te(functools.partial(vnni_conv2d, amx=geo), x, cx.const(amx.pack_weight(w, k), "int8"),
                       cx.const(bias, "int32"), cx.const(m, "float32"), offsets=cx.const(geo.offsets(), "int64"),
                       **kw)
        _mark_fusable(cx, y, {INT8_CONV_ATTR: int8_conv_spec(w.shape[1], geo, kw)} if blockable else None)
        return y
    layout = int8_layout(w) if layout is None else layout
    kw["instruction"] = layout.instruction
    packed = pack_vnni_weight(w, layout.oc, layout.ic).astype(layout.dtype)
    y = cx.emit_te(vnni_conv2d, x, cx.const(packed, layout.dtype), cx.const(bias, "int32"), cx.const(m, "float32"),
                   **kw)
    _mark_fusable(cx, y, {INT8_CONV_ATTR: int8_conv_spec(w.shape[1] * groups, None, kw)} if blockable else None)
    return y


def _depthwise_kernel(cx: Lowerer, node: Node, ins: list[TensorType], w: np.ndarray) -> str | None:
    """``int8_depthwise.layout``'s kernel for a depthwise qconv2d on CPU, None for any other conv."""
    from convdsl.backends.tvm.schedules import int8_depthwise

    c, ow = ins[0].shape[1], node.types[0].shape[-1]
    if (cx.target.startswith("tvm-cuda") or node.attrs.get("groups", 1) != c or c != w.shape[0] or w.shape[1] != 1
            or not isinstance(c, int)):
        return None
    return int8_depthwise.layout(c, w.shape[2] * w.shape[3], ow if isinstance(ow, int) else 0)


def _depthwise_layer(cx: Lowerer, node: Node, x: Expr, x_dtype: str, w: np.ndarray, pads, stride, dilation,
                     kernel: str) -> Expr:
    """Depthwise qconv2d on CPU: schedules/int8_depthwise.py (exact f32 arithmetic), in NCHW along the
    output rows (``kernel`` ``nchw``) or 16 channels per vector (``nchw16c``)."""
    from convdsl.backends.tvm.schedules import int8_depthwise

    a = node.attrs
    to_int = a["out_dtype"] != "f32"
    m = requant_multiplier(a["in_scale"], cx.param("w_scale"), a["out_scale"] if to_int else None)
    kw = dict(pads=pads, stride=stride, dilation=dilation, in_zp=a["in_zp"], out_dtype=TVM_DTYPE[a["out_dtype"]],
              relu=bool(a["relu"]))
    if to_int:
        qmin, qmax = QRANGE[a["out_dtype"]]
        kw.update(out_zp=a["out_zp"], lo=max(qmin, a["out_zp"]) if a["relu"] else qmin, hi=qmax)
    fn, packed = ((int8_depthwise.depthwise_int8_nchw, int8_depthwise.pack_weight_planes(w)) if kernel == "nchw" else
                  (int8_depthwise.depthwise_int8, int8_depthwise.pack_weight(w)))
    bias = _int32_bias(cx, node, w, 0)
    exact = np.abs(bias.astype(np.int64)).max(initial=0) <= 2**24  # a float32 bias: one add (int8_depthwise._biased)
    y = cx.emit_te(fn, x, cx.const(packed, "float32"),
                   cx.const(bias.astype(np.float32), "float32") if exact else cx.const(bias, "int32"),
                   cx.const(m, "float32"), **kw)
    _mark_fusable(cx, y, {INT8_CONV_ATTR: int8_conv_spec(w.shape[0], None, kw, kind=f"depthwise_{kernel}")})
    return y


def _mark_fusable(cx: Lowerer, y: Expr, attrs: dict[str, str] | None = None) -> None:
    """op_pattern = kOutEWiseFusable on the kernel just emitted: FuseOps then fuses the elementwise
    ops after it into its epilogue (AnnotateTIROpPattern keeps a pattern that is already set); and
    ``attrs``, if any, on its PrimFunc."""
    gv = cx.bb.lookup_binding(y).args[0]
    func = cx.bb.get()[gv].with_attr("op_pattern", OUT_EWISE_FUSABLE)
    for key, value in (attrs or {}).items():
        func = func.with_attr(key, value)
    cx.bb.update_func(gv, func)


INT8_CONV_ATTR = "convdsl.int8_conv"  # PrimFunc attribute of a 2-D int8 conv: its ``int8_conv_spec``


def int8_conv_spec(in_channels: int, geo, kw: dict, kind: str = "conv") -> str:
    """The arguments of a qconv2d's kernel (its input channels, ``geo``: the ``schedules.amx.Geometry`` of an
    AMX layer or None, and the keywords ``kw``) as JSON, so that layout.py can emit the same layer in the
    blocked layout.  ``kind``: conv (``vnni_conv2d``), depthwise_nchw / depthwise_nchw16c (the
    int8_depthwise kernel it was built with, so the weights' packing is known)."""
    import dataclasses
    import json

    return json.dumps({"c": int(in_channels), "geo": dataclasses.astuple(geo) if geo is not None else None,
                       "kw": {k: v for k, v in kw.items() if k != "out_shape"}, "kind": kind})


def int8_conv_from_spec(spec: str):
    """``int8_conv_spec``'s inverse: (input channels, geometry or None, keywords, kind)."""
    import json

    from convdsl.backends.tvm.schedules import amx

    d = json.loads(spec)
    geo = None
    if d["geo"] is not None:
        n, c, h, w, pads, stride, dilation, kh, kw_, block, row = d["geo"]
        geo = amx.Geometry(n, c, h, w, tuple(pads), tuple(stride), tuple(dilation), kh, kw_, block, row)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d["kw"].items()}
    return d["c"], geo, kw, d.get("kind", "conv")


def _qconv(nd: int):
    def lower(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
        a = node.attrs
        x = args[0]
        pads = conv_padding(a, list(ins[0].shape[2:]), nd)
        w = cx.param("weight").astype(np.int8)
        kernel = _depthwise_kernel(cx, node, ins, w) if nd == 2 else None
        if kernel is not None:
            return _depthwise_layer(cx, node, x, ins[0].dtype, w, (*pads[0], *pads[1]), tuple_n(a["stride"], 2),
                                    tuple_n(a["dilation"], 2), kernel)
        if nd in (1, 2) and _use_vnni(cx, node):
            stride, dilation = tuple_n(a["stride"], nd), tuple_n(a["dilation"], nd)
            if nd == 1:  # a convolution of height 1
                n, c, length = cx.shape(ins[0])
                x = cx.emit(R.reshape(x, (n, c, 1, length)))
                y = _vnni_layer(cx, node, x, ins[0].dtype, w[:, :, None, :], (0, 0, *pads[0]), (1, *stride),
                                (1, *dilation), in_shape=(n, c, 1, length), blockable=False)
                return R.reshape(y, cx.out_shape())
            return _vnni_layer(cx, node, x, ins[0].dtype, w, (*pads[0], *pads[1]), stride, dilation,
                               in_shape=cx.shape(ins[0]))
        grouped = grouped_int8_layout(w, a["groups"]) if nd == 2 and not cx.target.startswith("tvm-cuda") else None
        if grouped is not None:
            return _vnni_layer(cx, node, x, ins[0].dtype, w, (*pads[0], *pads[1]), tuple_n(a["stride"], 2),
                               tuple_n(a["dilation"], 2), in_shape=cx.shape(ins[0]), groups=a["groups"], layout=grouped)
        if any(p for pr in pads for p in pr):  # real zero is in_zp in the int8 domain
            width = [0, 0, 0, 0] + [p for pr in pads for p in pr]
            x = cx.emit(R.nn.pad(x, width, pad_value=float(a["in_zp"])))
        data_layout, kernel_layout = _LAYOUT[nd]
        if grouped_in_f32(cx.target, nd, a["groups"], w):
            # every partial sum an integer below 2^24: the f32 conv (the layout pass's grouped template) sums
            # exactly in any order, and its value converts to the int32 accumulator exactly
            xf = cx.emit(R.astype(x, "float32"))
            accf = cx.emit(R.nn.conv2d(xf, cx.const(w.astype(np.float32), "float32"), strides=tuple_n(a["stride"], 2),
                                       padding=(0, 0, 0, 0), dilation=tuple_n(a["dilation"], 2), groups=a["groups"],
                                       data_layout="NCHW", kernel_layout="OIHW"))
            acc = cx.emit(R.astype(accf, "int32"))
        else:
            acc = cx.emit(getattr(R.nn, f"conv{nd}d")(x, cx.const(w, "int8"), strides=tuple_n(a["stride"], nd),
                                                      padding=(0,) * (2 * nd), dilation=tuple_n(a["dilation"], nd),
                                                      groups=a["groups"], data_layout=data_layout,
                                                      kernel_layout=kernel_layout, out_dtype="int32"))
        bias = _int32_bias(cx, node, w)
        if bias.any():
            acc = cx.emit(R.add(acc, cx.const(bias.reshape((1, -1) + (1,) * nd), "int32")))
        return _requantize(cx, node, acc, (1, -1) + (1,) * nd)

    return lower


def grouped_in_f32(target: str, nd: int, groups: int, w: np.ndarray) -> bool:
    """A grouped (not depthwise) qconv2d on CPU computed as a float32 conv of its integer operands: exact
    where a group's C/g x kh x kw products of |q_x| <= 255 and |w| <= 128 sum to at most 2^24, the depthwise
    kernel's bound (``int8_depthwise.MAX_TAPS``; RegNet's groups of 8, 3x3: 72 products), so that it takes the
    blocked grouped-conv template instead of TVM's generic int32 conv."""
    from convdsl.backends.tvm.schedules import int8_depthwise

    return target == "tvm-llvm" and nd == 2 and groups > 1 and w.shape[1] > 1 \
        and int(np.prod(w.shape[1:])) <= int8_depthwise.MAX_TAPS


def qlinear_row_padding(rows: int, out_channels: int, layout: Int8Layout) -> int:
    """Rows to add to a qlinear's ``rows`` (computed, never stored) so that the int8 kernel's register
    tile (``schedules.int8``: output rows x blocks of ``layout.oc`` channels, its row count a divisor of the
    rows) is as large as the accumulators allow: ViT's 197 tokens, a prime, allow only 1-row tiles
    (1 x 3 blocks on AVX2: each broadcast activation feeds 3 accumulators, each weight vector is
    loaded for one row); 198 rows take 6 x 2.  The fewest rows among the best tiles, at most 1/16
    more rows."""
    from convdsl.backends.tvm.schedules import int8 as int8_schedule

    ob = -(-out_channels // layout.oc)
    tile = {VPMADDUBSW: int8_schedule.maddubs_register_tile, VPMADDWD: int8_schedule.madd_register_tile}.get(
        layout.instruction, int8_schedule.register_tile)  # try_schedule's tile for the instruction

    def useful(extra: int) -> float:
        ow_t, ob_t = tile(ob, rows + extra)
        return ow_t * ob_t * rows / (rows + extra)

    return max(range(max(1, rows // 16) + 1), key=lambda extra: (useful(extra) + 1e-9 * (extra == 0), -extra))


def _qlinear(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    w = cx.param("weight").astype(np.int8)
    shape = cx.shape(ins[0])
    if _use_vnni(cx, node) and all(isinstance(d, int) for d in shape):  # x [..., K]: see vnni_conv2d
        rows = int(np.prod(shape[:-1]))
        pad = 0 if use_amx(w) else qlinear_row_padding(rows, w.shape[0], int8_layout(w))
        # written in the output's shape where its rows are one axis (a batch of 1: ViT's [1, 197, O]);
        # rows over several axes are not a range of one loop the register tile could be computed at
        one_axis = int(np.prod(shape[:-2])) == 1
        out = tuple(cx.out_shape()) if one_axis else (rows, w.shape[0])
        y = _vnni_layer(cx, node, args[0], ins[0].dtype, w[:, :, None, None], (0, 0, 0, pad), (1, 1), (1, 1),
                        out_shape=out, in_shape=shape)
        return y if one_axis else R.reshape(y, cx.out_shape())
    acc = cx.emit(R.matmul(args[0], cx.const(np.ascontiguousarray(w.T), "int8"), out_dtype="int32"))
    bias = _int32_bias(cx, node, w)
    if bias.any():
        acc = cx.emit(R.add(acc, cx.const(bias, "int32")))
    return _requantize(cx, node, acc, (-1,))


LOWERINGS.add("quantize", _quantize)
LOWERINGS.add("dequantize", _dequantize)
LOWERINGS.add("cast", _cast)
for _n in (1, 2, 3):
    LOWERINGS.add(f"qconv{_n}d", _qconv(_n))
LOWERINGS.add("qlinear", _qlinear)
