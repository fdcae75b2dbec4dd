"""Torch lowerings of the state-space ops (see lowering.py for the entry format).

Each op becomes one helper module from ``runtime.py`` (S4D, SGConv,
SelectiveScan); the forward line is ``mod(x)``.
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.types import TensorType

from convdsl.backends.torch.lower_fft import changed, module_call
from convdsl.backends.torch.lowering import TorchLowering, _kw, _r


def _s4d(node: Node, ins: list[TensorType]) -> str:
    return f"S4D({_r(ins[0].shape[1])}, state={_r(node.attrs['state'])}{_kw(**changed(node, ('bidirectional',)))})"


def _sgconv(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = changed(node, ("decay", "interp", "bidirectional"))
    return f"SGConv({_r(ins[0].shape[1])}, {_r(a['kernel_dim'])}, {_r(a['n_scales'])}{_kw(**extra)})"


def _selective_scan(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = changed(node, ("d_conv", "bidirectional"))
    return f"SelectiveScan({_r(ins[0].shape[1])}, state={_r(a['state'])}, dt_rank={_r(a['dt_rank'])}{_kw(**extra)})"


LOWERINGS: dict[str, TorchLowering] = {
    "s4d": TorchLowering(module_call, _s4d, helpers=("fast_fft_len", "fft_long_conv", "cached_kernel", "S4D")),
    "sgconv": TorchLowering(module_call, _sgconv, helpers=("fast_fft_len", "fft_long_conv", "cached_kernel", "SGConv")),
    "selective_scan": TorchLowering(module_call, _selective_scan, helpers=("SelectiveScan",)),
}
