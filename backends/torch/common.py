"""What every torch family file (``lower_<family>.py``) uses: the entry type and
the helpers that write PyTorch source.

An entry (``TorchLowering``) returns *source text*; the code generator
(``codegen.py``) joins the pieces into one readable module, which is also what
the in-memory ``nn.Module`` is built from, so there is one path only.

- ``module(node, in_types)`` -> constructor source for the ``nn.Module`` that
  owns the node's parameters (e.g. ``nn.Conv2d(3, 64, 7, stride=2, padding=3,
  bias=False)``), or None for stateless ops.  Its ``state_dict`` keys must be
  exactly the op's parameter names (``weight``, ``bias``, ``running_mean``...).
- ``call(node, in_types, mod, args)`` -> the forward expression; ``mod`` is the
  module reference (``self.layer1["0"].conv1``) or None, ``args`` the input
  variable names.  Multi-output ops return a tuple expression.
- ``helpers``: names of classes/functions the generated file must include
  (their source is copied in, so generated code imports only torch): those of
  ``runtime.py`` and any a family file defines in its own ``HELPERS``;
  ``helpers_if_named``: those included only when the node's code names them (a
  special case's helper, e.g. ``GroupNormOneValue``).
- ``param_call(node, in_types, param, args)`` -> the forward expression of an op whose one
  parameter is named by the node id itself (CDL ``op as param name``): the generator registers
  that parameter on the parent module (``self.encoder.pos_embedding = nn.Parameter(...)``, the
  key a source model's state_dict has) and ``param`` is the reference to it; None: the op cannot
  be named that way in this backend.
- ``alias``: the output is the input under another name (no line in forward).
- ``sizes``: ``call`` also takes ``sources``, where the network's inputs give each
  symbol when the code runs (``{"N": ("x", 0, 1)}``: ``x.shape[0] // 1``), for
  symbolic sizes its own inputs do not hold (a reshape of ``[L*N, C]`` to ``[N, L, C]``).
- ``output_not_saved``: autograd does not keep this op's output for its
  backward, so a reader that is its only user may overwrite it in place
  (``torch.relu_``, ``x.add_(y)``), as torchvision does.

Only ``repr()`` of validated attribute values and sanitized identifiers ever
reach the generated text: a .cdl author cannot inject code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from convdsl.errors import LoweringError
from convdsl.ir.graph import Node
from convdsl.ir.ops import OPS
from convdsl.ir.types import TensorType

from convdsl.backends.registry import Lowerings

ModuleFn = Callable[[Node, list[TensorType]], "str | None"]
CallFn = Callable[[Node, list[TensorType], "str | None", list[str]], str]


@dataclass(frozen=True)
class TorchLowering:
    call: CallFn
    module: ModuleFn | None = None
    helpers: tuple[str, ...] = ()
    helpers_if_named: tuple[str, ...] = ()
    alias: bool = False
    output_not_saved: bool = False
    sizes: bool = False
    param_call: Callable[[Node, list[TensorType], str, list[str]], str] | None = None


def family(name: str) -> Lowerings[TorchLowering]:
    """The table of one family file: ``LOWERINGS = family("conv")`` in ``lower_conv.py``."""
    return Lowerings("torch", name)


def lit(v: Any) -> str:
    """Python literal for an attribute value (ints, floats, bools, tuples, validated words).
    An infinity a domain admits (vector_norm's ``p=inf``) is ``math.inf``: repr() writes ``inf``,
    a name generated code does not define; NaN is in no domain."""
    if isinstance(v, float):
        if math.isinf(v):
            return "math.inf" if v > 0 else "-math.inf"
        if math.isnan(v):
            raise LoweringError("NaN reached the torch code generator", hint="no attribute domain admits NaN")
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(lit(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def keywords(**kwargs: Any) -> str:
    """``, k=v, ...`` for the keyword arguments given (an empty string for none)."""
    return "".join(f", {k}={lit(v)}" for k, v in kwargs.items())


def module_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    """``mod(x, ...)``: the forward line of an op that is one module."""
    return f"{mod}({', '.join(args)})"


def template(text: str) -> CallFn:
    """A stateless op written as a template over ``{x}``/``{a}``/``{b}`` and the attributes."""

    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        fields = {k: lit(v) for k, v in node.attrs.items()}
        fields.update(x=args[0] if args else "", a=args[0] if args else "", b=args[1] if len(args) > 1 else "")
        return text.format(**fields)

    return call


def changed(node: Node, names: tuple[str, ...]) -> dict:
    """The attributes among ``names`` that differ from the op's defaults (helper defaults match)."""
    op = OPS[node.op]
    return {n: node.attrs[n] for n in names if node.attrs[n] != op.attr(n).default}
