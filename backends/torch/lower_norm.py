"""Torch lowerings of the normalization layers (convdsl/ir/ops/norm.py); see common.py.

Each is one ``nn`` module whose state_dict keys are the op's parameter names;
``layernorm2d`` and the one-value-per-group case of ``groupnorm`` use helpers
from runtime.py.
"""
from __future__ import annotations

import math

from convdsl.ir.graph import Node
from convdsl.ir.types import TensorType

from convdsl.backends.torch.common import ModuleFn, TorchLowering, family, keywords, lit, module_call

LOWERINGS = family("norm")


def _bn_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    nd = {2: 1, 3: 1, 4: 2, 5: 3}[ins[0].rank]
    extra = {}
    if a["eps"] != 1e-5:
        extra["eps"] = a["eps"]
    if a["momentum"] != 0.1:
        extra["momentum"] = a["momentum"]
    if not a["affine"]:
        extra["affine"] = False
    return f"nn.BatchNorm{nd}d({ins[0].shape[1]}{keywords(**extra)})"


def _ln_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    shape = tuple(ins[0].shape[ins[0].rank - a["dims"]:])
    extra = {}
    if a["eps"] != 1e-5:
        extra["eps"] = a["eps"]
    if not a["affine"]:
        extra["elementwise_affine"] = False
    elif not a["bias"]:
        extra["bias"] = False
    return f"nn.LayerNorm({lit(shape[0] if len(shape) == 1 else shape)}{keywords(**extra)})"


def _ln2d_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = {}
    if a["eps"] != 1e-5:
        extra["eps"] = a["eps"]
    if not a["affine"]:
        extra["elementwise_affine"] = False
    return f"LayerNorm2d({ins[0].shape[1]}{keywords(**extra)})"


def one_value_per_group(node: Node, ins: list[TensorType]) -> bool:
    """groupnorm whose groups hold one value each (channels/groups x static spatial size = 1)."""
    spatial = ins[0].shape[2:]
    return (ins[0].shape[1] == node.attrs["groups"] and all(isinstance(d, int) for d in spatial)
            and math.prod(spatial) == 1)


def _gn_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = {}
    if a["eps"] != 1e-5:
        extra["eps"] = a["eps"]
    if not a["affine"]:
        extra["affine"] = False
    # one value per group: the output is the bias, computed without F.group_norm's batch-1 refusal
    cls = "GroupNormOneValue" if one_value_per_group(node, ins) else "nn.GroupNorm"
    return f"{cls}({a['groups']}, {ins[0].shape[1]}{keywords(**extra)})"


def _in_module(nd: int) -> ModuleFn:
    def module(node: Node, ins: list[TensorType]) -> str:
        a = node.attrs
        extra = {}
        if a["eps"] != 1e-5:
            extra["eps"] = a["eps"]
        if a["momentum"] != 0.1:
            extra["momentum"] = a["momentum"]
        if a["affine"]:
            extra["affine"] = True
        if a["track_running_stats"]:
            extra["track_running_stats"] = True
        return f"nn.InstanceNorm{nd}d({ins[0].shape[1]}{keywords(**extra)})"

    return module


for _name in ("batchnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d"):
    # batchnorm's backward reads its input and statistics, not its output: a relu after it may work in place
    LOWERINGS.add(_name, TorchLowering(module_call, _bn_module, output_not_saved=True))
LOWERINGS.add("layernorm", TorchLowering(module_call, _ln_module))
LOWERINGS.add("layernorm2d", TorchLowering(module_call, _ln2d_module, helpers=("LayerNorm2d",)))
LOWERINGS.add("groupnorm", TorchLowering(module_call, _gn_module, helpers_if_named=("GroupNormOneValue",)))
for _n in (1, 2, 3):
    LOWERINGS.add(f"instancenorm{_n}d", TorchLowering(module_call, _in_module(_n)))
