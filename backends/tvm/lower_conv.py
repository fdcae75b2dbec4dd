"""TVM lowerings of the convolutions (convdsl/ir/ops/conv.py); see common.py for the entry format.

Relax's conv*d / conv*d_transpose in NCHW/OIHW; padding modes other than zeros
become gathers in front of an unpadded convolution (indexing.pad_by_index).

On CPU targets (tvm-llvm) these rewrites put convs on the blocked conv2d template of the layout pass
(schedules/layout.py) instead of TVM's generic schedule; each is a re-indexing (the same products,
summed in the template's order) and the conv's bias is added after it, as before:

- a 1x1 conv of a 1x1 image (squeeze-and-excitation after the global pool) is a matmul [N, C] x [C, O]
  (the packed dense kernel, for any channel counts);
- conv1d is a conv2d of height 1 ([N, C, L] -> [N, C, 1, L], the kernel [O, C/g, 1, k]);
- conv3d (groups 1) is a conv2d over every output depth z: the kd input depths it reads (z sd + a dd)
  stacked as kd C channels, the depth moved into the batch ([N Do, kd C, H, W], the kernel
  [O, kd C, kh, kw]): kd copies of the input (none where kd is 1: a 2-D conv of every slice);
- a transposed conv is its stride-phase (sub-pixel) decomposition: per dim, output position
  Y = s q + r (before the crop) collects the taps j with j d = r + s m_j, from input q - m_j, so
  phase r is a stride-1 correlation of the input (padded by T - 1 on both sides) with the taps of
  phase r placed at T - 1 - m_j, T = (k - 1) d // s + 1; one conv with O s^nd output channels
  (phase-major: a blocked layout's vector holds one phase's channels) computes every phase, a
  depth-to-space interleaves them, and the crop takes [pad, pad + out).
  U-Net's 2x2 / stride-2 up-convs become 1x1 convs (T = 1) to 4 O channels.  The kernel has
  s^nd T^nd taps per k^nd of the transposed conv's (k 3, s 2: 16 / 9); past ``MAX_PHASE_WORK``
  times the work (large dilations) TVM's conv_transpose stays.  Where the one conv would compute a
  crop's positions or other phases' zero taps (a pad: k 3 / s 2 / pad 1, DCGAN's k 4 / s 2 / pad 1),
  each output phase is a conv of its own taps over exactly its positions (``phase_convs``), the
  phases concatenated and interleaved with no crop (``PHASE_CONVS_BELOW``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from convdsl.ir.graph import Node
from convdsl.ir.ops.conv import (conv_padding, of_a_point, phase_convs, phase_kernel, phase_shuffle, phase_taps,
                                 phase_window, phase_work_too_big)
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.tvm.common import LowerFn, Lowerer, R, family, tvm
from convdsl.backends.tvm.indexing import pad_by_index

if TYPE_CHECKING:
    from tvm.relax import Expr

LOWERINGS = family("conv")
_LAYOUT = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}


def add_channel_bias(cx: Lowerer, y: Expr, bias: np.ndarray, rank: int) -> Expr:
    """y + bias over dim 1 of [N, C, ...]."""
    return R.add(y, cx.const(bias.reshape((1, -1) + (1,) * (rank - 2))))


def _on_cpu(cx: Lowerer) -> bool:
    return cx.target == "tvm-llvm"


def conv_nd(cx: Lowerer, x: Expr, weight: np.ndarray, nd: int, strides, pads, dilation, groups: int) -> Expr:
    """Relax conv{nd}d of x (NC...) with the constant ``weight`` (OI...), ``pads`` per dim (before, after); on
    CPU with the module docstring's rewrites (conv1d, conv3d, a 1x1 conv of a 1x1 image), since the layout
    pass's blocked template takes 2-D convs."""
    strides, dilation = tuple(strides), tuple(dilation)
    padding = tuple(lo for lo, _ in pads) + tuple(hi for _, hi in pads)
    if nd == 1 and _on_cpu(cx):
        y = R.nn.conv2d(cx.emit(R.expand_dims(x, [2])), cx.const(weight[:, :, None, :]), strides=(1,) + strides,
                        padding=(0, pads[0][0], 0, pads[0][1]), dilation=(1,) + dilation, groups=groups,
                        data_layout="NCHW", kernel_layout="OIHW")
        return R.squeeze(cx.emit(y), [2])
    if nd == 2 and groups == 1 and _on_cpu(cx) and weight.shape[2:] == (1, 1) and not any(v for pr in pads for v in pr):
        y = _pointwise_on_a_pixel(cx, x, weight)
        if y is not None:
            return y
    if nd == 3 and groups == 1 and _on_cpu(cx):
        y = _depth_stacked(cx, x, weight, strides, pads, dilation)
        if y is not None:
            return y
    data_layout, kernel_layout = _LAYOUT[nd]
    return getattr(R.nn, f"conv{nd}d")(x, cx.const(weight), strides=strides, padding=padding, dilation=dilation,
                                       groups=groups, data_layout=data_layout, kernel_layout=kernel_layout)


def _bound(cx: Lowerer, x: Expr) -> tuple[Expr, list | None]:
    """``x`` as a bound variable (emitted if it is an expression) and its shape, its dims after the first static
    (``layout.batch_shape``; None otherwise)."""
    from convdsl.backends.tvm.schedules.layout import batch_shape

    x = x if isinstance(x, tvm.relax.Var) else cx.emit(x)
    return x, batch_shape(x)


def _pointwise_on_a_pixel(cx: Lowerer, x: Expr, weight: np.ndarray) -> Expr | None:
    """A 1x1 conv of a 1x1 image (squeeze-and-excitation's convs after the global pool) as the matmul it is,
    [N, C] x [C, O]: the layout pass's packed dense kernel for any channel counts (the blocked conv template
    needs channels that 16 / 8 / 4 divide, RegNet's 110 and 26 went to TVM's generic schedule)."""
    x, shape = _bound(cx, x)
    if shape is None or len(shape) != 4 or shape[2:] != [1, 1]:
        return None
    o, c = weight.shape[:2]
    y = cx.emit(R.matmul(cx.emit(R.reshape(x, [-1, c])), cx.const(np.ascontiguousarray(weight[:, :, 0, 0].T))))
    return R.reshape(y, [-1, o, 1, 1])


def _depth_stacked(cx: Lowerer, x: Expr, weight: np.ndarray, strides, pads, dilation) -> Expr | None:
    """conv3d as a conv2d over every output depth (module docstring): the kd input depths of output depth z
    (z sd + a dd, a < kd) stacked as channels, the depth moved into the batch."""
    x, shape = _bound(cx, x)
    if shape is None:
        return None
    o, c, kd = weight.shape[:3]
    (sd, sh, sw), (dd, dh, dw) = strides, dilation
    (d0, d1), (h0, h1), (w0, w1) = pads
    depth = shape[2] + d0 + d1
    out_d = (depth - dd * (kd - 1) - 1) // sd + 1
    if out_d < 1:
        return None
    if d0 or d1:
        x = cx.emit(R.nn.pad(x, [0, 0, 0, 0, d0, d1, 0, 0, 0, 0]))
    taps = [x if kd == 1 and sd == 1 and out_d == depth else
            cx.emit(R.strided_slice(x, [2], [a * dd], [a * dd + (out_d - 1) * sd + 1], [sd])) for a in range(kd)]
    xs = taps[0] if kd == 1 else cx.emit(R.concat(taps, axis=1))  # [N, kd C, Do, H, W], channels (a, c)
    h, w = shape[3:]
    xs = cx.emit(R.reshape(cx.emit(R.permute_dims(xs, [0, 2, 1, 3, 4])), [-1, kd * c, h, w]))
    w2 = np.ascontiguousarray(weight.transpose(0, 2, 1, 3, 4).reshape(o, kd * c, *weight.shape[3:]))
    y = cx.emit(R.nn.conv2d(xs, cx.const(w2), strides=(sh, sw), padding=(h0, w0, h1, w1), dilation=(dh, dw),
                            data_layout="NCHW", kernel_layout="OIHW"))
    oh, ow = _bound(cx, y)[1][2:]
    return R.permute_dims(cx.emit(R.reshape(y, [-1, out_d, o, oh, ow])), [0, 2, 1, 3, 4])


def _conv(nd: int) -> LowerFn:
    def lower(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
        a = node.attrs
        x = args[0]
        pads = conv_padding(a, list(ins[0].shape[2:]), nd)
        if a["pad_mode"] != "zeros" and any(p for pr in pads for p in pr):
            x = pad_by_index(cx, x, ins[0], pads, a["pad_mode"])
            pads = [(0, 0)] * nd
        y = conv_nd(cx, x, cx.param("weight"), nd, tuple_n(a["stride"], nd), pads, tuple_n(a["dilation"], nd),
                    a["groups"])
        if a["bias"]:
            y = add_channel_bias(cx, cx.emit(y), cx.param("bias"), nd + 2)
        return y

    return lower


# One conv per output phase (``phase_convs``: each its phase's taps over exactly its positions, then a concat)
# instead of ``phase_kernel``'s one conv (every phase's window, zero taps included, then a crop) where that does
# less than this share of the one conv's multiply-adds.
PHASE_CONVS_BELOW = 0.9


def _phase_transpose(cx: Lowerer, x: Expr, w: np.ndarray, in_shape, nd: int, stride, pad, output_pad, dilation,
                     groups: int) -> Expr | None:
    """A transposed conv as one conv + depth-to-space + crop, or as one conv per output phase + depth-to-space
    (module docstring); None where it does not apply."""
    if not all(isinstance(v, int) for v in in_shape[1:]):
        return None
    k = w.shape[2:]
    if phase_work_too_big(k, stride, dilation):
        return None
    t = phase_taps(k, stride, dilation)
    o = w.shape[1] * groups
    q, short, window = phase_window(in_shape[2:], k, stride, pad, dilation, output_pad)
    per_phase = phase_convs(w, in_shape[2:], stride, pad, dilation, output_pad, groups)
    if per_phase is not None and sum(np.prod(kr.shape[2:]) for kr in per_phase[0]) * np.prod(per_phase[2]) \
            < PHASE_CONVS_BELOW * np.prod(stride) * np.prod(t) * np.prod(q):
        kernels, pads, q = per_phase
        ys = [cx.emit(conv_nd(cx, x, kr, nd, (1,) * nd, pr, (1,) * nd, groups)) for kr, pr in zip(kernels, pads)]
        # phase-major channels, groups or not: interleaved, no crop
        return _interleave(cx, cx.emit(R.concat(ys, axis=1)), o, 1, stride, q) if len(ys) > 1 else ys[0]
    y = cx.emit(conv_nd(cx, x, phase_kernel(w, stride, dilation, groups), nd, (1,) * nd,
                        [(ti - 1, ti - 1) for ti in t], (1,) * nd, groups))
    if any(si > 1 for si in stride):
        y = _interleave(cx, y, o, groups, stride, q)
    full = [qi * si + e for qi, si, e in zip(q, stride, short)]
    if any(short):  # output_pad past the last position an input reaches: zeros
        y = cx.emit(R.nn.pad(y, [0, 0, 0, 0] + [v for e in short for v in (0, e)]))
    if any(start or stop != f for (start, stop), f in zip(window, full)):
        y = cx.emit(R.strided_slice(y, list(range(2, 2 + nd)), [a for a, _ in window], [b for _, b in window]))
    return y


def _interleave(cx: Lowerer, y: Expr, o: int, groups: int, stride, q) -> Expr:
    """The phases of a phase-major conv output interleaved (``phase_shuffle``): [N, O s.., Q..] -> [N, O, Q s..]."""
    split, dims, merged = phase_shuffle(o, groups, stride, q)
    y = cx.emit(R.reshape(y, [-1, *split[1:]]))
    y = cx.emit(R.permute_dims(y, dims))
    return cx.emit(R.reshape(y, [-1, *merged[1:]]))


def _transpose_of_a_point(cx: Lowerer, x: Expr, w: np.ndarray, in_shape, pad, output_pad, dilation,
                          groups: int) -> Expr | None:
    """A transposed conv of a point (``of_a_point``) as the matmul it is, [N, C] x [C, O k^nd] -> [N, O, *k]."""
    if not of_a_point(in_shape[2:], pad, output_pad, dilation, groups):
        return None
    c, o, k = w.shape[0], w.shape[1], w.shape[2:]
    y = cx.emit(R.matmul(cx.emit(R.reshape(x, [-1, c])), cx.const(np.ascontiguousarray(w.reshape(c, -1)))))
    return R.reshape(y, [-1, o, *k])


def _conv_transpose(nd: int) -> LowerFn:
    def lower(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
        a = node.attrs
        p = tuple_n(a["pad"], nd)
        s, opad = tuple_n(a["stride"], nd), tuple_n(a["output_pad"], nd)
        if _on_cpu(cx):
            d = tuple_n(a["dilation"], nd)
            y = _transpose_of_a_point(cx, args[0], cx.param("weight"), ins[0].shape, p, opad, d, a["groups"])
            if y is None:
                y = _phase_transpose(cx, args[0], cx.param("weight"), ins[0].shape, nd, s, p, opad, d, a["groups"])
            if y is not None:
                return add_channel_bias(cx, y, cx.param("bias"), nd + 2) if a["bias"] else y
        lo, hi, extra = p, p, (0,) * nd
        if any(o >= si for o, si in zip(opad, s)):
            # TVM wants output_pad < stride; torch (and the op table) allow it up to the dilation.
            # output_pad only extends the output at the end, so crop less there instead:
            #   pad (p, p) + output_pad o  =>  pad (p, max(p - o, 0)), then o - p zero rows appended
            # (rows no input reaches; the bias is added after)
            hi = tuple(max(pi - o, 0) for pi, o in zip(p, opad))
            extra = tuple(max(o - pi, 0) for pi, o in zip(p, opad))
            opad = (0,) * nd
        data_layout, _ = _LAYOUT[nd]
        kernel_layout = "IO" + data_layout[2:]  # torch's [C_in, C_out/groups, *k]
        y = getattr(R.nn, f"conv{nd}d_transpose")(args[0], cx.const(cx.param("weight")), strides=s, padding=lo + hi,
                        output_padding=opad, dilation=tuple_n(a["dilation"], nd),
                        groups=a["groups"], data_layout=data_layout, kernel_layout=kernel_layout)
        if any(extra):
            y = R.nn.pad(cx.emit(y), [0, 0, 0, 0] + [w for e in extra for w in (0, e)])
        if a["bias"]:
            y = add_channel_bias(cx, cx.emit(y), cx.param("bias"), nd + 2)
        return y

    return lower


for _n in (1, 2, 3):
    LOWERINGS.add(f"conv{_n}d", _conv(_n))
    LOWERINGS.add(f"conv_transpose{_n}d", _conv_transpose(_n))
