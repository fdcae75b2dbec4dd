"""Torch lowerings of the FFT mixing ops (see lowering.py for the entry format).

Each op becomes one helper module from ``runtime.py`` (GlobalFilter2d,
AdaptiveFilter2d, LongConv1d); the forward line is ``mod(x)``.
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.ops import OPS
from convdsl.ir.ops.fft import filter_size, image_dims
from convdsl.ir.types import TensorType

from convdsl.backends.torch.lowering import TorchLowering, _kw, _r


def changed(node: Node, names: tuple[str, ...]) -> dict:
    """The attributes among ``names`` that differ from the op's defaults (helper defaults match)."""
    op = OPS[node.op]
    return {n: node.attrs[n] for n in names if node.attrs[n] != op.attr(n).default}


def module_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}({args[0]})"


def _channels_last(node: Node) -> dict:
    return {"channels_last": True} if node.attrs["layout"] == "nhwc" else {}


def _global_filter(node: Node, ins: list[TensorType]) -> str:
    c, _, _ = image_dims("global_filter", node.attrs, ins[0])
    h, w = filter_size(node.attrs, ins[0])
    return f"GlobalFilter2d({_r(c)}, {_r(h)}, {_r(w)}{_kw(**_channels_last(node))})"


def _adaptive_filter(node: Node, ins: list[TensorType]) -> str:
    c, _, _ = image_dims("adaptive_filter", node.attrs, ins[0])
    extra = changed(node, ("blocks", "hidden_factor", "sparsity", "slope", "residual"))
    return f"AdaptiveFilter2d({_r(c)}{_kw(**extra, **_channels_last(node))})"


def _fft_conv(node: Node, ins: list[TensorType]) -> str:
    extra = changed(node, ("causal", "bias", "skip"))
    return f"LongConv1d({_r(ins[0].shape[1])}, {_r(node.attrs['kernel_len'])}{_kw(**extra)})"


LOWERINGS: dict[str, TorchLowering] = {
    "global_filter": TorchLowering(module_call, _global_filter, helpers=("GlobalFilter2d",)),
    "adaptive_filter": TorchLowering(module_call, _adaptive_filter, helpers=("AdaptiveFilter2d",)),
    "fft_conv": TorchLowering(module_call, _fft_conv, helpers=("fast_fft_len", "fft_long_conv", "LongConv1d")),
}
