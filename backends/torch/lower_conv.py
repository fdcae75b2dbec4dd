"""Torch lowerings of the convolutions (convdsl/ir/ops/conv.py); see common.py for the entry format.

Convolutions are ``nn.Conv*d`` / ``nn.ConvTranspose*d`` modules; asymmetric
padding (pad=same with an even kernel, explicit pairs) becomes an ``F.pad``
in front of an unpadded convolution.
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.torch.common import CallFn, ModuleFn, TorchLowering, family, keywords, lit, module_call

LOWERINGS = family("conv")


def _conv_pads(node: Node, ins: list[TensorType], nd: int) -> list[tuple[int, int]]:
    return conv_padding(node.attrs, list(ins[0].shape[2:]), nd)


def _conv_module(nd: int) -> ModuleFn:
    def module(node: Node, ins: list[TensorType]) -> str:
        a = node.attrs
        pads = _conv_pads(node, ins, nd)
        symmetric = all(lo == hi for lo, hi in pads)
        padding = tuple(lo for lo, _ in pads) if symmetric else 0
        k = tuple_n(a["k"], nd)
        extra = {}
        if a["stride"] != 1:
            extra["stride"] = tuple_n(a["stride"], nd)
        if padding != 0 and any(padding):
            extra["padding"] = padding
        if a["dilation"] != 1:
            extra["dilation"] = tuple_n(a["dilation"], nd)
        if a["groups"] != 1:
            extra["groups"] = a["groups"]
        if not a["bias"]:
            extra["bias"] = False
        if symmetric and a["pad_mode"] != "zeros" and any(padding):
            extra["padding_mode"] = a["pad_mode"]
        cls = "Conv3dBf16OnCpu" if nd == 3 and ins[0].dtype == "bf16" else f"nn.Conv{nd}d"  # a torch bug: runtime.py
        return f"{cls}({ins[0].shape[1]}, {a['out']}, {lit(k if len(set(k)) > 1 else k[0])}{keywords(**extra)})"

    return module


def _conv_call(nd: int) -> CallFn:
    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        pads = _conv_pads(node, ins, nd)
        if all(lo == hi for lo, hi in pads):
            return f"{mod}({args[0]})"
        flat = tuple(p for lo_hi in reversed(pads) for p in lo_hi)  # F.pad wants last dim first
        mode = node.attrs["pad_mode"]
        mode = "constant" if mode == "zeros" else mode
        return f"{mod}(F.pad({args[0]}, {lit(flat)}, mode={mode!r}))"

    return call


def _conv_t_module(nd: int) -> ModuleFn:
    def module(node: Node, ins: list[TensorType]) -> str:
        a = node.attrs
        extra = {}
        for key, name in (("stride", "stride"), ("pad", "padding"), ("output_pad", "output_padding"),
                          ("dilation", "dilation")):
            default = 1 if key in ("stride", "dilation") else 0
            if a[key] != default:
                extra[name] = tuple_n(a[key], nd)
        if a["groups"] != 1:
            extra["groups"] = a["groups"]
        if not a["bias"]:
            extra["bias"] = False
        k = tuple_n(a["k"], nd)
        return (f"nn.ConvTranspose{nd}d({ins[0].shape[1]}, {a['out']}, {lit(k if len(set(k)) > 1 else k[0])}"
                f"{keywords(**extra)})")

    return module


for _n in (1, 2, 3):
    # autograd keeps a conv's input, not its output: a relu or add after it may work in place
    LOWERINGS.add(f"conv{_n}d", TorchLowering(_conv_call(_n), _conv_module(_n), output_not_saved=True,
                                              helpers_if_named=("Conv3dBf16OnCpu",) if _n == 3 else ()))
    LOWERINGS.add(f"conv_transpose{_n}d", TorchLowering(module_call, _conv_t_module(_n)))
