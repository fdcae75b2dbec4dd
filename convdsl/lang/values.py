"""Values that exist while a program is elaborated.

Hyper-parameters are plain Python ints, floats, bools, strings, lists and
tuples; the lists and tuples a program builds are ``ListValue``/``TupleValue``,
which know their size counted through aliasing (``[b] * 1000`` of a ``b`` of
1,000 items has size 10**6) and their nesting depth, so that the elaborator can
refuse a value before printing, comparing or copying it costs hours.  Besides those: ``Tensor`` (an output of a graph node), layer values
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
from convdsl.ir.types import Size, TensorType
from convdsl.lang import ast

__all__ = ["Tensor", "OpLayer", "BlockLayer", "SeqLayer", "Layer", "FuncRef", "Namespace", "Symbol", "describe",
           "ListValue", "TupleValue", "measure"]


def measure(v: Any) -> tuple[int, int]:
    """(size, depth) of a value: items counted through every level and every alias, a string
    as 1 + len/8, an integer by its digits; depth 0 for a scalar, 1 for a flat list."""
    if isinstance(v, (ListValue, TupleValue)):
        return v.size, v.depth
    if isinstance(v, str):
        return 1 + len(v) // 8, 0
    if isinstance(v, int):
        return 1 + v.bit_length() // 64, 0
    if isinstance(v, (list, tuple)):  # made outside the elaborator (--set values, op outputs): small
        return _measure_items(v)
    return 1, 0


def _measure_items(items: list | tuple) -> tuple[int, int]:
    size, depth = len(items), 1
    kinds = set(map(type, items))  # at C speed: lists of numbers (range(10**6)) are the common large case
    if kinds <= {int, bool}:
        return size + len(items) + sum(map(int.bit_length, items)) // 64, depth
    if kinds <= {float}:
        return size + len(items), depth
    for x in items:
        s, d = measure(x)
        size += s
        if d >= depth:
            depth = d + 1
    return size, depth


class ListValue(list):
    """A list built by a program, with its ``size`` and ``depth`` (see ``measure``)."""

    __slots__ = ("size", "depth")

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.size, self.depth = _measure_items(self)


class TupleValue(tuple):
    """A tuple built by a program, with its ``size`` and ``depth`` (see ``measure``)."""

    def __init__(self, items: Any = ()) -> None:
        self.size, self.depth = _measure_items(self)


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
    ops: int = field(default=0, compare=False)  # op applications it expands to (blocks count 1)
    depth: int = field(default=1, compare=False)  # pipelines nested in pipelines

    @staticmethod
    def of(layers: tuple, span: Any = None) -> "SeqLayer":
        subs = [x for x in layers if isinstance(x, SeqLayer)]
        return SeqLayer(layers, span=span, ops=sum(x.ops if isinstance(x, SeqLayer) else 1 for x in layers),
                        depth=1 + max((x.depth for x in subs), default=0))

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
    if isinstance(v, Size):
        return f"the symbolic size {v.dim}"
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
