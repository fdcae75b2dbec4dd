"""Torch lowerings of the FFT mixing ops (convdsl/ir/ops/fft.py); see common.py for the entry format.

Each op becomes one helper module from ``runtime.py`` (GlobalFilter2d,
AdaptiveFilter2d, LongConv1d); the forward line is ``mod(x)``.
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.ops.fft import filter_size, image_dims
from convdsl.ir.types import TensorType

from convdsl.backends.torch.common import TorchLowering, changed, family, keywords, lit, module_call

LOWERINGS = family("fft")


def _channels_last(node: Node) -> dict:
    return {"channels_last": True} if node.attrs["layout"] == "nhwc" else {}


def _global_filter(node: Node, ins: list[TensorType]) -> str:
    c, _, _ = image_dims("global_filter", node.attrs, ins[0])
    h, w = filter_size(node.attrs, ins[0])
    return f"GlobalFilter2d({lit(c)}, {lit(h)}, {lit(w)}{keywords(**_channels_last(node))})"


def _adaptive_filter(node: Node, ins: list[TensorType]) -> str:
    c, _, _ = image_dims("adaptive_filter", node.attrs, ins[0])
    extra = changed(node, ("blocks", "hidden_factor", "sparsity", "slope", "residual"))
    return f"AdaptiveFilter2d({lit(c)}{keywords(**extra, **_channels_last(node))})"


def _fft_conv(node: Node, ins: list[TensorType]) -> str:
    extra = changed(node, ("causal", "bias", "skip"))
    return f"LongConv1d({lit(ins[0].shape[1])}, {lit(node.attrs['kernel_len'])}{keywords(**extra)})"


LOWERINGS.add("global_filter", TorchLowering(module_call, _global_filter, helpers=("GlobalFilter2d",)))
LOWERINGS.add("adaptive_filter", TorchLowering(module_call, _adaptive_filter, helpers=("AdaptiveFilter2d",)))
LOWERINGS.add("fft_conv", TorchLowering(module_call, _fft_conv,
                                        helpers=("fast_fft_len", "fft_long_conv", "LongConv1d")))
