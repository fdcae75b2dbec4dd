"""Normalization layers."""
from __future__ import annotations

from ...errors import ShapeError
from ..optable import Attr, Cost, Init, OpDef, ParamSpec, expect_rank
from ..types import TensorType


def _bn(nd: int) -> OpDef:
    name = f"batchnorm{nd}d" if nd else "batchnorm"

    def infer(attrs, ins):
        x = ins[0]
        expect_rank(name, x, *((nd + 2,) if nd else (2, 3, 4, 5)))
        if not isinstance(x.shape[1], int):
            raise ShapeError(f"{name} needs a static channel count", got=str(x))
        return [x]

    def params(attrs, ins):
        c = ins[0].shape[1]
        p = {}
        if attrs["affine"]:
            p["weight"] = ParamSpec((c,), Init("ones"))
            p["bias"] = ParamSpec((c,), Init("zeros"))
        p["running_mean"] = ParamSpec((c,), Init("zeros"), buffer=True)
        p["running_var"] = ParamSpec((c,), Init("ones"), buffer=True)
        p["num_batches_tracked"] = ParamSpec((), Init("zeros"), dtype="i64", buffer=True)
        return p

    return OpDef(name=name, group="normalization",
                 attrs=(Attr("eps", "float", 1e-5), Attr("momentum", "float", 0.1), Attr("affine", "bool", True)),
                 infer=infer, params=params, cost=lambda a, i, o: Cost(0, 2 * o[0].numel()),
                 doc="batch normalization over dim 1 (inference uses running statistics)"
                     + ("" if nd else "; rank picks 1d/2d/3d"),
                 example=f"x | {name}", shape_rule="out = in")


OPS = [_bn(0), _bn(1), _bn(2), _bn(3)]
