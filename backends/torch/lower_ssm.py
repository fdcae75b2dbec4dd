"""Torch lowerings of the state-space ops (convdsl/ir/ops/ssm.py); see common.py for the entry format.

Each op becomes one helper module from ``runtime.py`` (S4D, SGConv,
SelectiveScan); the forward line is ``mod(x)``.
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.types import TensorType

from convdsl.backends.torch.common import TorchLowering, changed, family, keywords, lit, module_call

LOWERINGS = family("ssm")


def _s4d(node: Node, ins: list[TensorType]) -> str:
    return f"S4D({lit(ins[0].shape[1])}, state={lit(node.attrs['state'])}{keywords(**changed(node, ('bidirectional',)))})"


def _sgconv(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = changed(node, ("decay", "interp", "bidirectional"))
    return f"SGConv({lit(ins[0].shape[1])}, {lit(a['kernel_dim'])}, {lit(a['n_scales'])}{keywords(**extra)})"


def _selective_scan(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = changed(node, ("d_conv", "bidirectional"))
    return f"SelectiveScan({lit(ins[0].shape[1])}, state={lit(a['state'])}, dt_rank={lit(a['dt_rank'])}{keywords(**extra)})"


LOWERINGS.add("s4d", TorchLowering(module_call, _s4d, helpers=("fast_fft_len", "fft_long_conv", "cached_kernel", "S4D")))
LOWERINGS.add("sgconv", TorchLowering(module_call, _sgconv,
                                      helpers=("fast_fft_len", "fft_long_conv", "cached_kernel", "SGConv")))
LOWERINGS.add("selective_scan", TorchLowering(module_call, _selective_scan, helpers=("SelectiveScan",)))
