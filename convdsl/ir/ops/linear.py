"""Fully connected layer over the last dimension.

Lowered in backends/torch/lower_linear.py and backends/tvm/lower_linear.py; how pruning treats each op
is its ``prune=`` (PRUNE_RULE ops: convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

import math

from convdsl.errors import ShapeError
from convdsl.ir.domains import POSITIVE
from convdsl.ir.optable import PRUNE_RULE, Attr, Cost, Init, OpDef, OutChannels, ParamSpec, io_workspace
from convdsl.ir.types import TensorType


def _infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    if x.rank < 1 or not isinstance(x.shape[-1], int):
        raise ShapeError("linear needs a static last dimension", got=str(x))
    if attrs["out"] <= 0:
        raise ShapeError("linear: out features must be positive", got=str(attrs["out"]))
    return [TensorType((*x.shape[:-1], attrs["out"]), x.dtype)]


def _params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    fin, fout = ins[0].shape[-1], attrs["out"]
    bound = 1.0 / math.sqrt(fin)
    p = {"weight": ParamSpec((fout, fin), Init("uniform", (-bound, bound)))}
    if attrs["bias"]:
        p["bias"] = ParamSpec((fout,), Init("uniform", (-bound, bound)))
    return p


def _cost(attrs, ins, outs):
    macs = outs[0].numel() * ins[0].shape[-1]
    return Cost(macs, 2 * macs + (outs[0].numel() if attrs["bias"] else 0))


OPS = [
    OpDef(name="linear", group="linear", attrs=(Attr("out", "int", domain=POSITIVE), Attr("bias", "bool", True)),
          infer=_infer, params=_params, cost=_cost,
          workspace=io_workspace(per_input=1),  # a contiguous copy of a strided input
          doc="y = x W^T + b over the last dim; in-features inferred.", example="linear(1000)",
          shape_rule="[..., in] -> [..., out]",
          out_channels=OutChannels(axis=-1, params={"weight": 0, "bias": 0}), int8="qlinear", prune=PRUNE_RULE),
]
