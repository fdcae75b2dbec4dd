"""The compiler's elaborator, taking notes for the editor.

``RecordingElaborator`` is ``convdsl.lang.elaborate.Elaborator`` unchanged,
except that it remembers, by source position, what the editor shows:

- the tensors each statement assigned or returned (inlay hints, hover on values);
- the values a block or def parameter was bound to, per call (hover on parameters);
- every block instance: which block, where it was called, the op nodes it
  created (its params and MACs come from those nodes' statistics);
- the op nodes created at each source position (hover on an op call);
- for an error raised inside a block or def, the chain of call sites it
  unwound through, so that an error inside an imported file can also be
  shown where the importing file called it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from convdsl.errors import ConvDSLError, Span
from convdsl.ir.types import TensorType
from convdsl.lang import ast
from convdsl.lang.elaborate import Elaborator
from convdsl.lang.values import BlockLayer, Tensor

Pos = tuple[str, int, int]  # (file, line, column) of a source position


def pos(span: Span | None) -> Pos | None:
    return (span.file, span.line, span.column) if span is not None else None


@dataclass
class Instance:
    """One application of a block."""

    block: ast.BlockDef
    file: str  # where the block is defined
    call: Span | None  # where it was applied
    nodes: list[str]  # op nodes it created, nested blocks included
    scope: str = ""  # instance path, e.g. "layer1.0"
    inputs: list[TensorType] = field(default_factory=list)
    outputs: list[TensorType] = field(default_factory=list)
    params: int | None = None  # from the statistics of its nodes, once its network elaborated without error
    macs: int | None = None


@dataclass
class Notes:
    """What one elaboration recorded; all keyed by source position."""

    values: dict[tuple[Pos, str], list[TensorType | tuple]] = field(default_factory=dict)  # (stmt, name) -> types
    returns: dict[Pos, list[list[TensorType]]] = field(default_factory=dict)  # return expr -> types per run
    params: dict[Pos, list[Any]] = field(default_factory=dict)  # Param span -> bound values
    instances: list[Instance] = field(default_factory=list)
    op_nodes: dict[Pos, list[str]] = field(default_factory=dict)  # op application -> node ids
    node_log: list[str] = field(default_factory=list)  # every op node, in creation order

    def merge(self, other: "Notes") -> None:
        for k, v in other.values.items():
            self.values.setdefault(k, []).extend(v)
        for k, v in other.returns.items():
            self.returns.setdefault(k, []).extend(v)
        for k, v in other.params.items():
            self.params.setdefault(k, []).extend(v)
        self.instances.extend(other.instances)
        for k, v in other.op_nodes.items():
            self.op_nodes.setdefault(k, []).extend(v)


MAX_NOTES = 64  # values kept per position (a loop body runs many times)


def _types(value: Any) -> TensorType | tuple | None:
    if isinstance(value, Tensor):
        return value.type
    if isinstance(value, tuple) and value and all(isinstance(v, Tensor) for v in value):
        return tuple(v.type for v in value)
    return None


class RecordingElaborator(Elaborator):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes = Notes()
        self.used: set[tuple[str, str]] = set()  # (module path, name): top-level names the program looked up

    def lookup(self, name: str, frame) -> Any:
        if name not in frame.locals:
            self.used.add((frame.module.path, name))
        return super().lookup(name, frame)

    def assign(self, targets: list[str], value: Any, frame, span: Span | None) -> None:
        super().assign(targets, value, frame, span)
        key = pos(span)
        if key is None:
            return
        parts = [value] if len(targets) == 1 else list(value)
        for name, v in zip(targets, parts):
            t = _types(v)
            if t is not None:
                slot = self.notes.values.setdefault((key, name), [])
                if len(slot) < MAX_NOTES:
                    slot.append(t)

    def run_body(self, body: list, frame, span: Span | None) -> list:
        outs = super().run_body(body, frame, span)
        for value, expr in outs:
            key = pos(expr.span)
            t = _types(value)
            if key is not None and t is not None:
                slot = self.notes.returns.setdefault(key, [])
                if len(slot) < MAX_NOTES:
                    slot.append([t] if isinstance(t, TensorType) else list(t))
        return outs

    def bind_params(self, params: list, args: list, kwargs: dict, module, what: str, span: Span | None) -> dict:
        local = super().bind_params(params, args, kwargs, module, what, span)
        for p in params:
            key = pos(p.span)
            if key is not None and p.name in local:
                slot = self.notes.params.setdefault(key, [])
                if len(slot) < MAX_NOTES:
                    v = local[p.name]
                    slot.append(_types(v) or v)
        return local

    def apply_op(self, op, inputs, attrs, label, span, frame) -> Any:
        out = super().apply_op(op, inputs, attrs, label, span, frame)
        first = out[0] if isinstance(out, tuple) else out
        self.notes.node_log.append(first.value.node)
        key = pos(span)
        if key is not None:
            self.notes.op_nodes.setdefault(key, []).append(first.value.node)
        return out

    def apply_block(self, layer: BlockLayer, inputs: list, span: Span | None, frame) -> Any:
        start = len(self.notes.node_log)
        try:
            out = super().apply_block(layer, inputs, span, frame)
        except ConvDSLError as err:
            _unwound(err, layer.span or span)
            raise
        nodes = self.notes.node_log[start:]
        outs = [out] if isinstance(out, Tensor) else list(out) if isinstance(out, tuple) else []
        scope = _common_scope([self.graph.node(n).scope for n in nodes])
        self.notes.instances.append(Instance(layer.block, layer.module.path, layer.span or span, nodes, scope,
                                             [t.type for t in inputs], [t.type for t in outs if isinstance(t, Tensor)]))
        return out

    def call_func(self, func, args, kwargs, e, frame, label=None) -> Any:
        try:
            return super().call_func(func, args, kwargs, e, frame, label)
        except ConvDSLError as err:
            _unwound(err, e.span)
            raise


def _unwound(err: ConvDSLError, span: Span | None) -> None:
    """Note a call site the error passed through (innermost first)."""
    chain = err.__dict__.setdefault("call_sites", [])
    if span is not None:
        chain.append(span)


def call_sites(err: ConvDSLError) -> list[Span]:
    return list(err.__dict__.get("call_sites", []))


def _common_scope(scopes: list[str]) -> str:
    if not scopes:
        return ""
    parts = scopes[0].split(".")
    for s in scopes[1:]:
        other = s.split(".")
        n = 0
        while n < min(len(parts), len(other)) and parts[n] == other[n]:
            n += 1
        parts = parts[:n]
    return ".".join(parts)
