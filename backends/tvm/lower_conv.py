"""TVM lowerings of the convolutions (convdsl/ir/ops/conv.py); see common.py for the entry format.

Relax's conv*d / conv*d_transpose in NCHW/OIHW; padding modes other than zeros
become gathers in front of an unpadded convolution (indexing.pad_by_index).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from convdsl.ir.graph import Node
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.tvm.common import LowerFn, Lowerer, R, family
from convdsl.backends.tvm.indexing import pad_by_index

if TYPE_CHECKING:
    from tvm.relax import Expr

LOWERINGS = family("conv")
_LAYOUT = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}


def add_channel_bias(cx: Lowerer, y: Expr, bias: np.ndarray, rank: int) -> Expr:
    """y + bias over dim 1 of [N, C, ...]."""
    return R.add(y, cx.const(bias.reshape((1, -1) + (1,) * (rank - 2))))


def _conv(nd: int) -> LowerFn:
    def lower(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
        a = node.attrs
        x = args[0]
        pads = conv_padding(a, list(ins[0].shape[2:]), nd)
        if a["pad_mode"] != "zeros" and any(p for pr in pads for p in pr):
            x = pad_by_index(cx, x, ins[0], pads, a["pad_mode"])
            pads = [(0, 0)] * nd
        data_layout, kernel_layout = _LAYOUT[nd]
        y = getattr(R.nn, f"conv{nd}d")(x, cx.const(cx.param("weight")), strides=tuple_n(a["stride"], nd),
                      padding=tuple(lo for lo, _ in pads) + tuple(hi for _, hi in pads),
                      dilation=tuple_n(a["dilation"], nd), groups=a["groups"],
                      data_layout=data_layout, kernel_layout=kernel_layout)
        if a["bias"]:
            y = add_channel_bias(cx, cx.emit(y), cx.param("bias"), nd + 2)
        return y

    return lower


def _conv_transpose(nd: int) -> LowerFn:
    def lower(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
        a = node.attrs
        p = tuple_n(a["pad"], nd)
        s, opad = tuple_n(a["stride"], nd), tuple_n(a["output_pad"], nd)
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
