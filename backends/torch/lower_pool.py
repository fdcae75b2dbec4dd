"""Torch lowerings of pooling and resampling (convdsl/ir/ops/pool.py); see common.py.

All are one expression over torch/F.  Max-pooling also runs on int8 tensors
(the quantize pass leaves it between quantized layers): pooled as float, which
is exact, because CUDA has no uint8/int8 max-pool kernels.
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.ops.quant import INT_DTYPES
from convdsl.ir.types import TORCH_DTYPE, TensorType

from convdsl.backends.torch.common import CallFn, TorchLowering, family, keywords, lit, template

LOWERINGS = family("pool")


def _pool_call(kind: str, nd: int) -> CallFn:
    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        a = node.attrs
        extra = {}
        if a["stride"] is not None:
            extra["stride"] = a["stride"]
        if a["pad"] != 0:
            extra["padding"] = a["pad"]
        if kind == "max" and a["dilation"] != 1:
            extra["dilation"] = a["dilation"]
        if a["ceil_mode"]:
            extra["ceil_mode"] = True
        if kind == "avg" and not a["count_include_pad"]:
            extra["count_include_pad"] = False
        return f"F.{kind}_pool{nd}d({args[0]}, {lit(a['k'])}{keywords(**extra)})"

    return call


def _max_pool_call(nd: int) -> CallFn:
    """Float inputs the usual way; an int8 input pooled as float and converted back."""
    pool = _pool_call("max", nd)

    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        if ins[0].dtype not in INT_DTYPES:
            return pool(node, ins, mod, args)
        return f"{pool(node, ins, mod, [args[0] + '.float()'])}.to(torch.{TORCH_DTYPE[ins[0].dtype]})"

    return call


def _spatial_dims(t: TensorType) -> tuple[int, ...]:
    return tuple(range(2, t.rank))


def _global_call(reduce: str) -> CallFn:
    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        keep = node.attrs["keepdim"]
        return f"{reduce}({args[0]}, dim={lit(_spatial_dims(ins[0]))}{keywords(keepdim=True) if keep else ''})"

    return call


def _mean_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    dims = normalize_dims("mean", node.attrs["dims"], ins[0].rank)
    keep = keywords(keepdim=True) if node.attrs["keepdim"] else ""
    return f"torch.mean({args[0]}, dim={lit(dims)}{keep})"


def _upsample_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    extra = {"size": a["size"]} if a["size"] is not None else {"scale_factor": a["scale"]}
    extra["mode"] = a["mode"]
    if a["align_corners"]:
        extra["align_corners"] = True
    return f"F.interpolate({args[0]}{keywords(**extra)})"


for _n in (1, 2, 3):
    LOWERINGS.add(f"maxpool{_n}d", TorchLowering(_max_pool_call(_n)))
    LOWERINGS.add(f"avgpool{_n}d", TorchLowering(_pool_call("avg", _n)))
    for _k in ("avg", "max"):
        LOWERINGS.add(f"adaptive_{_k}pool{_n}d", TorchLowering(template(f"F.adaptive_{_k}_pool{_n}d({{x}}, {{out}})")))
LOWERINGS.add("global_avgpool", TorchLowering(_global_call("torch.mean")))
LOWERINGS.add("global_maxpool", TorchLowering(_global_call("torch.amax")))
LOWERINGS.add("mean", TorchLowering(_mean_call))
LOWERINGS.add("upsample", TorchLowering(_upsample_call))
