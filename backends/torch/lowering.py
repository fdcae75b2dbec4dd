"""Torch lowering table: op name -> how to write it in PyTorch source.

Each entry returns *source text*; the code generator (``codegen.py``) joins
the pieces into one readable module, which is also what the in-memory
``nn.Module`` is built from, so there is one path only.

- ``module(node, in_types)`` -> constructor source for the ``nn.Module`` that
  owns the node's parameters (e.g. ``nn.Conv2d(3, 64, 7, stride=2, padding=3,
  bias=False)``), or None for stateless ops.  Its ``state_dict`` keys must be
  exactly the op's parameter names (``weight``, ``bias``, ``running_mean``...).
- ``call(node, in_types, mod, args)`` -> the forward expression; ``mod`` is the
  module reference (``self.layer1["0"].conv1``) or None, ``args`` the input
  variable names.  Multi-output ops return a tuple expression.
- ``helpers``: names of classes/functions in ``runtime.py`` the generated file
  must include (their source is copied in, so generated code imports only torch).

Only ``repr()`` of validated attribute values and sanitized identifiers ever
reach the generated text: a .cdl author cannot inject code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from convdsl.errors import LoweringError
from convdsl.ir.graph import Node
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

ModuleFn = Callable[[Node, list[TensorType]], str | None]
CallFn = Callable[[Node, list[TensorType], str | None, list[str]], str]


@dataclass(frozen=True)
class TorchLowering:
    call: CallFn
    module: ModuleFn | None = None
    helpers: tuple[str, ...] = ()


def _r(v) -> str:
    """Python literal for an attribute value (ints, floats, bools, tuples, validated words)."""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_r(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def _kw(**kwargs) -> str:
    return "".join(f", {k}={_r(v)}" for k, v in kwargs.items())


# ---- convolution ------------------------------------------------------------
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
        return f"nn.Conv{nd}d({ins[0].shape[1]}, {a['out']}, {_r(k if len(set(k)) > 1 else k[0])}{_kw(**extra)})"

    return module


def _conv_call(nd: int) -> CallFn:
    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        pads = _conv_pads(node, ins, nd)
        if all(lo == hi for lo, hi in pads):
            return f"{mod}({args[0]})"
        flat = tuple(p for lo_hi in reversed(pads) for p in lo_hi)  # F.pad wants last dim first
        mode = node.attrs["pad_mode"]
        mode = "constant" if mode == "zeros" else mode
        return f"{mod}(F.pad({args[0]}, {_r(flat)}, mode={mode!r}))"

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
        return f"nn.ConvTranspose{nd}d({ins[0].shape[1]}, {a['out']}, {_r(k if len(set(k)) > 1 else k[0])}{_kw(**extra)})"

    return module


def _module_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}({', '.join(args)})"


def _fn(template: str) -> CallFn:
    """A stateless op written as a template over ``{x}``/``{a}``/``{b}`` and attrs."""

    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        fields = {k: _r(v) for k, v in node.attrs.items()}
        fields.update(x=args[0] if args else "", a=args[0] if args else "", b=args[1] if len(args) > 1 else "")
        return template.format(**fields)

    return call


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
    return f"nn.BatchNorm{nd}d({ins[0].shape[1]}{_kw(**extra)})"


def _linear_module(node: Node, ins: list[TensorType]) -> str:
    extra = {} if node.attrs["bias"] else {"bias": False}
    return f"nn.Linear({ins[0].shape[-1]}, {node.attrs['out']}{_kw(**extra)})"


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


TORCH_LOWERINGS: dict[str, TorchLowering] = {
    **{f"conv{n}d": TorchLowering(_conv_call(n), _conv_module(n)) for n in (1, 2, 3)},
    **{f"conv_transpose{n}d": TorchLowering(_module_call, _conv_t_module(n)) for n in (1, 2, 3)},
    **{name: TorchLowering(_module_call, _bn_module) for name in ("batchnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d")},
    "linear": TorchLowering(_module_call, _linear_module),
    "identity": TorchLowering(_fn("{x}")),
    "relu": TorchLowering(_fn("torch.relu({x})")),
    "relu6": TorchLowering(_fn("F.relu6({x})")),
    "leaky_relu": TorchLowering(_fn("F.leaky_relu({x}, {slope})")),
    "gelu": TorchLowering(_gelu_call),
    "silu": TorchLowering(_fn("F.silu({x})")),
    "sigmoid": TorchLowering(_fn("torch.sigmoid({x})")),
    "tanh": TorchLowering(_fn("torch.tanh({x})")),
    "hardswish": TorchLowering(_fn("F.hardswish({x})")),
    "hardsigmoid": TorchLowering(_fn("F.hardsigmoid({x})")),
    "neg": TorchLowering(_fn("-{x}")),
    "affine": TorchLowering(_affine_call),
    "add": TorchLowering(_add_call),
    "sub": TorchLowering(_fn("{a} - {b}")),
    "mul": TorchLowering(_fn("{a} * {b}")),
    "div": TorchLowering(_fn("{a} / {b}")),
    "matmul": TorchLowering(_fn("torch.matmul({a}, {b})")),
}


def lowering_for(node: Node, target: str = "torch") -> TorchLowering:
    entry = TORCH_LOWERINGS.get(node.op)
    if entry is None:
        raise LoweringError(
            f"op '{node.op}' has no lowering for the {target} backend", node.span,
            hint="supported ops: " + ", ".join(sorted(TORCH_LOWERINGS)),
        )
    return entry
