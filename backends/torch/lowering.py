"""The torch lowering table: op name -> how to write it in PyTorch source.

Joined from one family file per op family (``lower_<family>.py`` for the ops
of ``convdsl/ir/ops/<family>.py``); the entry format is in ``common.py``, the
table's checks in ``backends/registry.py``.  ``HELPERS`` is every class or
function generated code may include: runtime.py's and those a family file
keeps beside its lowerings (``HELPERS`` in lower_quant.py).
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.registry import RegistryError

from convdsl.backends.registry import LoweringTable
from convdsl.backends.torch import (lower_attention, lower_conv, lower_elementwise, lower_fft, lower_linear,
                                    lower_misc, lower_norm, lower_pool, lower_quant, lower_shape, lower_ssm, runtime)
from convdsl.backends.torch.common import TorchLowering

FAMILIES = (lower_conv, lower_linear, lower_norm, lower_elementwise, lower_pool, lower_shape, lower_attention,
            lower_fft, lower_ssm, lower_misc, lower_quant)

TORCH_LOWERINGS: LoweringTable[TorchLowering] = LoweringTable("torch", [f.LOWERINGS for f in FAMILIES])


def _helpers() -> dict[str, object]:
    out = dict(runtime.HELPERS)
    for f in FAMILIES:
        for name, obj in getattr(f, "HELPERS", {}).items():
            if name in out:
                raise RegistryError(f"torch helper '{name}' defined twice ({f.__name__} and another)")
            out[name] = obj
    return out


HELPERS: dict[str, object] = _helpers()


def lowering_for(node: Node, target: str = "torch") -> TorchLowering:
    return TORCH_LOWERINGS.lookup(node, target)
