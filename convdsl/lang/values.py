"""Values that exist while a program is elaborated.

Hyper-parameters are plain Python ints, floats, bools, strings, lists and
tuples.  Besides those: ``Tensor`` (an output of a graph node), layer values
(an op, a block or a pipeline of them, partially applied and not yet given
inputs), ``FuncRef`` for ``def`` functions, and ``Namespace`` for
``import ... as m``.  Bare unbound words evaluate to ``Symbol`` (``pad=same``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from convdsl.errors import format_count
from convdsl.ir.graph import Value
from convdsl.ir.optable import OpDef, Symbol
from convdsl.ir.types import TensorType
from convdsl.lang import ast

__all__ = ["Tensor", "OpLayer", "BlockLayer", "SeqLayer", "Layer", "FuncRef", "Namespace", "Symbol", "describe"]


@dataclass(frozen=True)
class Tensor:
    value: Value
    type: TensorType

    def __repr__(self) -> str:
        return f"Tensor({self.value.node}:{self.value.out} {self.type})"


@dataclass(frozen=True)
class OpLayer:
    op: OpDef
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    label: str | None = None
    span: Any = field(default=None, compare=False)

    def with_args(self, args: list, kwargs: dict, span: Any = None) -> "OpLayer":
        merged = dict(self.kwargs)
        merged.update(kwargs)
        return replace(self, args=self.args + tuple(args), kwargs=tuple(merged.items()), span=span or self.span)

    def with_label(self, label: str | None) -> "OpLayer":
        return replace(self, label=label) if label else self

    @property
    def name(self) -> str:
        return self.op.name


@dataclass(frozen=True)
class BlockLayer:
    block: ast.BlockDef
    module: Any  # the Module (namespace) the block was defined in
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    label: str | None = None
    span: Any = field(default=None, compare=False)

    def with_args(self, args: list, kwargs: dict, span: Any = None) -> "BlockLayer":
        merged = dict(self.kwargs)
        merged.update(kwargs)
        return replace(self, args=self.args + tuple(args), kwargs=tuple(merged.items()), span=span or self.span)

    def with_label(self, label: str | None) -> "BlockLayer":
        return replace(self, label=label) if label else self

    @property
    def name(self) -> str:
        return self.block.name


@dataclass(frozen=True)
class SeqLayer:
    layers: tuple
    label: str | None = None
    span: Any = field(default=None, compare=False)

    def with_label(self, label: str | None) -> "SeqLayer":
        return replace(self, label=label) if label else self

    def with_args(self, args: list, kwargs: dict, span: Any = None) -> "SeqLayer":
        return self

    @property
    def name(self) -> str:
        return "seq"


Layer = OpLayer | BlockLayer | SeqLayer


@dataclass(frozen=True)
class FuncRef:
    func: ast.FuncDef
    module: Any


@dataclass
class Namespace:
    """An imported file: ``import "blocks.cdl" as b`` then ``b.conv_bn``."""

    name: str
    names: dict[str, Any]


def describe(v: Any) -> str:
    """A short user-facing description of a value's kind."""
    if isinstance(v, Tensor):
        return f"a tensor {v.type}"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return f"the integer {v}" if abs(v) < 10**15 else f"the integer {format_count(v)}"
    if isinstance(v, float):
        return f"the number {v}"
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, Symbol):
        return f"the bare word '{v.name}'"
    if isinstance(v, (OpLayer, BlockLayer, SeqLayer)):
        return f"the layer '{v.name}'"
    if isinstance(v, tuple) and v and all(isinstance(x, Tensor) for x in v):
        return f"{len(v)} tensors"
    if isinstance(v, (list, tuple)):
        return f"a list of {len(v)}"
    if isinstance(v, FuncRef):
        return f"the function '{v.func.name}'"
    if isinstance(v, Namespace):
        return f"the module '{v.name}'"
    if v is None:
        return "none"
    return type(v).__name__
