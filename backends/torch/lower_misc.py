"""Torch lowerings of the misc ops (convdsl/ir/ops/misc.py); see common.py for the entry format.

All are one expression over torch/F; only prelu and parameter own state
(an nn.PReLU, and an nn.ParameterDict whose one key is `weight`).
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.ops.misc import dynamic_groups, flip_dims, rot90_dims
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.types import TensorType

from convdsl.backends.torch.common import TorchLowering, family, keywords, lit, module_call

LOWERINGS = family("misc")


def _rot90(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    k = node.attrs["k"] % 4
    if k == 0:
        return args[0]
    return f"torch.rot90({args[0]}, {k}, {lit(rot90_dims(node.attrs, ins[0]))})"


def _flip(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"torch.flip({args[0]}, {lit(flip_dims(node.attrs, ins[0]))})"


def _glu(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"F.glu({args[0]}, dim={node.attrs['dim']})"


def _prelu_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    n = 1 if a["shared"] else ins[0].shape[1]
    return f"nn.PReLU({n}{keywords(init=a['init']) if a['init'] != 0.25 else ''})"


def _amax(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    dims = normalize_dims("amax", node.attrs["dims"], ins[0].rank)
    keep = keywords(keepdim=True) if node.attrs["keepdim"] else ""
    return f"torch.amax({args[0]}, dim={lit(dims)}{keep})"


def _vector_norm(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    dims = normalize_dims("vector_norm", a["dims"], ins[0].rank)
    keep = keywords(keepdim=True) if a["keepdim"] else ""
    return f"torch.linalg.vector_norm({args[0]}, {lit(a['p'])}, dim={lit(dims)}{keep})"


def _dynamic_filter(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    # unfold x to [N, C*k*k, H*W] -> [N, G, C/G, k*k, H*W]; kernels [Nk, G*k*k, H, W] -> [Nk, G, 1, k*k, H*W];
    # multiply, sum the taps, and view the result as x's shape
    c, g, taps = dynamic_groups(node.attrs, ins)
    k, d = node.attrs["k"], node.attrs["dilation"]
    x, w = args
    patches = f"F.unfold({x}, {k}{keywords(dilation=d) if d != 1 else ''}, padding={d * (k // 2)})"
    return (f"({patches}.unflatten(1, {lit((g, c // g, taps))}) * {w}.flatten(2).unflatten(1, {lit((g, 1, taps))}))"
            f".sum(3).reshape({x}.shape)")


def _parameter_module(node: Node, ins: list[TensorType]) -> str:
    shape = node.types[0].shape
    return f"nn.ParameterDict({{'weight': nn.Parameter(torch.empty({lit(tuple(shape))}))}})"


def _parameter_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}['weight']"


LOWERINGS.add("rot90", TorchLowering(_rot90))
LOWERINGS.add("flip", TorchLowering(_flip))
LOWERINGS.add("glu", TorchLowering(_glu))
LOWERINGS.add("prelu", TorchLowering(module_call, _prelu_module))
LOWERINGS.add("amax", TorchLowering(_amax))
LOWERINGS.add("vector_norm", TorchLowering(_vector_norm))
LOWERINGS.add("dynamic_filter", TorchLowering(_dynamic_filter))
LOWERINGS.add("parameter", TorchLowering(_parameter_call, _parameter_module, param_call=lambda node, ins, p, args: p))
