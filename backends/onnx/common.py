"""Helpers shared by the ONNX export families: their tables, padding, linear layers, activations."""
from __future__ import annotations

import math
from typing import Mapping

from convdsl.ir.types import TensorType

from convdsl.backends.onnx.export import ExportFn, Exporter
from convdsl.backends.registry import Lowerings


def family(name: str, entries: Mapping[str, ExportFn] | None = None) -> Lowerings[ExportFn]:
    """The table of one family file: ``EXPORTS = family("pool", {op: fn, ...})`` in ``lower_pool.py``."""
    table: Lowerings[ExportFn] = Lowerings("onnx", name)
    for op, fn in (entries or {}).items():
        table.add(op, fn)
    return table


def pad_spatial(cx: Exporter, x: str, t: TensorType, pads: list[tuple[int, int]], mode: str,
                value: float = 0.0) -> str:
    """Pad the spatial dims (2 and after) of [N, C, *spatial]; mode zeros/reflect/replicate/circular."""
    if not any(p for pr in pads for p in pr):
        return x
    nd = len(pads)
    if mode == "circular":  # wrap around: [x[-lo:], x, x[:hi]] along each dim
        for i, (lo, hi) in enumerate(pads):
            axis = 2 + i
            parts = []
            if lo:
                parts.append(cx.op("Slice", [x, cx.ints([-lo]), cx.ints([2 ** 62]), cx.ints([axis])]))
            parts.append(x)
            if hi:
                parts.append(cx.op("Slice", [x, cx.ints([0]), cx.ints([hi]), cx.ints([axis])]))
            x = cx.op("Concat", parts, axis=axis)
        return x
    onnx_mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}[mode]
    full = [0, 0] + [lo for lo, _ in pads] + [0, 0] + [hi for _, hi in pads]
    inputs = [x, cx.ints(full)]
    if mode == "zeros" and value != 0.0:
        inputs.append(cx.scalar(value, t))
    return cx.op("Pad", inputs, mode=onnx_mode)


def linear(cx: Exporter, x: str, t: TensorType, weight: str, bias: str | None) -> str:
    """y = x W^T + b: Gemm for a [N, in] input, else MatMul with W^T (an initializer) and Add."""
    if t.rank == 2:
        return cx.op("Gemm", [x, weight] + ([bias] if bias else []), transB=1)
    wt = cx.op("Transpose", [weight], perm=[1, 0])
    y = cx.op("MatMul", [x, wt])
    return cx.op("Add", [y, bias]) if bias else y


def gelu(cx: Exporter, x: str, t: TensorType, approximate: str = "none") -> str:
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = cx.op("Mul", [cx.op("Mul", [x, x]), x])
        inner = cx.op("Mul", [cx.op("Add", [x, cx.op("Mul", [x3, cx.scalar(0.044715, t)])]),
                              cx.scalar(math.sqrt(2.0 / math.pi), t)])
        return cx.op("Mul", [cx.op("Mul", [x, cx.scalar(0.5, t)]),
                             cx.op("Add", [cx.op("Tanh", [inner]), cx.scalar(1.0, t)])])
    # 0.5 x (1 + erf(x / sqrt 2))
    erf = cx.op("Erf", [cx.op("Mul", [x, cx.scalar(1.0 / math.sqrt(2.0), t)])])
    return cx.op("Mul", [cx.op("Mul", [x, cx.scalar(0.5, t)]), cx.op("Add", [erf, cx.scalar(1.0, t)])])


def silu(cx: Exporter, x: str) -> str:
    return cx.op("Mul", [x, cx.op("Sigmoid", [x])])
