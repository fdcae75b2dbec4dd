"""Torch lowering of ``linear`` (convdsl/ir/ops/linear.py): an ``nn.Linear``; see common.py."""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.types import TensorType

from convdsl.backends.torch.common import TorchLowering, family, keywords, module_call

LOWERINGS = family("linear")


def _linear_module(node: Node, ins: list[TensorType]) -> str:
    extra = {} if node.attrs["bias"] else {"bias": False}
    return f"nn.Linear({ins[0].shape[-1]}, {node.attrs['out']}{keywords(**extra)})"


LOWERINGS.add("linear", TorchLowering(module_call, _linear_module, output_not_saved=True))
