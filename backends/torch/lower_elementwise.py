"""Torch lowerings of activations and elementwise arithmetic (convdsl/ir/ops/elementwise.py);
see common.py.  Stateless ops are one expression over torch/F; dropout and drop_path are
modules (they act while training)."""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.types import TensorType

from convdsl.backends.torch.common import TorchLowering, family, keywords, lit, module_call, template

LOWERINGS = family("elementwise")


def _add_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return " + ".join(args)


def _affine_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    s, b = node.attrs["scale"], node.attrs["shift"]
    expr = args[0] if s == 1.0 else f"{args[0]} * {s!r}"
    return expr if b == 0.0 else f"{expr} + {b!r}"


def _gelu_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    if node.attrs["approximate"] == "tanh":
        return f"F.gelu({args[0]}, approximate='tanh')"
    return f"F.gelu({args[0]})"


def _dropout_module(node: Node, ins: list[TensorType]) -> str:
    return f"nn.Dropout({node.attrs['p']!r})"


def _drop_path_module(node: Node, ins: list[TensorType]) -> str:
    mode = node.attrs["mode"]
    return f"DropPath({lit(node.attrs['p'])}{keywords(mode=mode) if mode != 'row' else ''})"


LOWERINGS.add("identity", TorchLowering(template("{x}"), alias=True))
for _name, _text in (("relu", "torch.relu({x})"), ("relu6", "F.relu6({x})"),
                     ("leaky_relu", "F.leaky_relu({x}, {slope})"), ("silu", "F.silu({x})"),
                     ("sigmoid", "torch.sigmoid({x})"), ("tanh", "torch.tanh({x})"), ("erf", "torch.erf({x})"),
                     ("hardswish", "F.hardswish({x})"), ("hardsigmoid", "F.hardsigmoid({x})"), ("neg", "-{x}"),
                     ("sub", "{a} - {b}"), ("mul", "{a} * {b}"), ("div", "{a} / {b}"),
                     ("matmul", "torch.matmul({a}, {b})"), ("softmax", "torch.softmax({x}, dim={dim})")):
    LOWERINGS.add(_name, TorchLowering(template(_text)))
LOWERINGS.add("gelu", TorchLowering(_gelu_call))
LOWERINGS.add("affine", TorchLowering(_affine_call))
# an add's backward needs none of its values: a relu or add after it may work in place
LOWERINGS.add("add", TorchLowering(_add_call, output_not_saved=True))
LOWERINGS.add("dropout", TorchLowering(module_call, _dropout_module))
LOWERINGS.add("drop_path", TorchLowering(module_call, _drop_path_module, helpers=("DropPath",)))
