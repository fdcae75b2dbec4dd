"""Torch lowerings of the misc ops (see lowering.py for the entry format).

All are one expression over torch/F; only prelu and parameter own state
(an nn.PReLU, and an nn.ParameterDict whose one key is `weight`).
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.ops.misc import dynamic_groups, flip_dims, rot90_dims
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.types import TensorType

from convdsl.backends.torch.lowering import TorchLowering, _kw, _r


def _rot90(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    k = node.attrs["k"] % 4
    if k == 0:
        return args[0]
    return f"torch.rot90({args[0]}, {k}, {_r(rot90_dims(node.attrs, ins[0]))})"


def _flip(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"torch.flip({args[0]}, {_r(flip_dims(node.attrs, ins[0]))})"


def _glu(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"F.glu({args[0]}, dim={node.attrs['dim']})"


def _prelu_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    n = 1 if a["shared"] else ins[0].shape[1]
    return f"nn.PReLU({n}{_kw(init=a['init']) if a['init'] != 0.25 else ''})"


def _module_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}({args[0]})"


def _amax(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    dims = normalize_dims("amax", node.attrs["dims"], ins[0].rank)
    keep = _kw(keepdim=True) if node.attrs["keepdim"] else ""
    return f"torch.amax({args[0]}, dim={_r(dims)}{keep})"


def _vector_norm(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    dims = normalize_dims("vector_norm", a["dims"], ins[0].rank)
    keep = _kw(keepdim=True) if a["keepdim"] else ""
    return f"torch.linalg.vector_norm({args[0]}, {_r(a['p'])}, dim={_r(dims)}{keep})"


def _dynamic_filter(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    # unfold x to [N, C*k*k, H*W] -> [N, G, C/G, k*k, H*W]; kernels [Nk, G*k*k, H, W] -> [Nk, G, 1, k*k, H*W];
    # multiply, sum the taps, and view the result as x's shape
    c, g, taps = dynamic_groups(node.attrs, ins)
    k, d = node.attrs["k"], node.attrs["dilation"]
    x, w = args
    patches = f"F.unfold({x}, {k}{_kw(dilation=d) if d != 1 else ''}, padding={d * (k // 2)})"
    return (f"({patches}.unflatten(1, {_r((g, c // g, taps))}) * {w}.flatten(2).unflatten(1, {_r((g, 1, taps))}))"
            f".sum(3).reshape({x}.shape)")


def _parameter_module(node: Node, ins: list[TensorType]) -> str:
    shape = node.types[0].shape
    return f"nn.ParameterDict({{'weight': nn.Parameter(torch.empty({_r(tuple(shape))}))}})"


def _parameter_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}['weight']"


LOWERINGS: dict[str, TorchLowering] = {
    "rot90": TorchLowering(_rot90),
    "flip": TorchLowering(_flip),
    "glu": TorchLowering(_glu),
    "prelu": TorchLowering(_module_call, _prelu_module),
    "amax": TorchLowering(_amax),
    "vector_norm": TorchLowering(_vector_norm),
    "dynamic_filter": TorchLowering(_dynamic_filter),
    "parameter": TorchLowering(_parameter_call, _parameter_module),
}
