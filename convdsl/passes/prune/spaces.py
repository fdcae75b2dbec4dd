"""The vocabulary of the pruning analysis: channel spaces, members, and the ``Builder``
the coupling rules (couplings.py) write into while ``analyze`` (groups.py) walks a graph.

Also ``RuleTable``: the per-op tables of couplings.py and apply.py, which accept
only ops whose ``OpDef.prune`` is ``PRUNE_RULE`` (the other ops' channel behaviour
is data on their definition).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, TypeVar

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from convdsl.ir.graph import Graph, Node, Value
from convdsl.ir.ops import OPS
from convdsl.ir.registry import OpTable, RegistryError
from convdsl.ir.types import TensorType

E = TypeVar("E")

Key = Hashable  # a Value, or ("heads", node id) for a space inside one op


@dataclass(frozen=True)
class Space:
    """The channels of one value: ``ids[i]`` is the element id of channel ``i`` along ``axis``."""

    axis: int | None
    ids: np.ndarray

    @property
    def size(self) -> int:
        return len(self.ids)


NO_SPACE = Space(None, np.zeros(0, np.int64))


@dataclass(frozen=True)
class Member:
    """A node whose parameters hold one row (or scale) per channel of ``key``: what criteria score."""

    node: str
    key: Key
    role: str  # "out" (filters of a conv/linear...), "heads" (an attention head's q/k/v rows), "norm" (a BN scale)


class Builder:
    """What the coupling rules write into while walking the graph in topological order."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.n = 0
        self.spaces: dict[Key, Space] = {}
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self._pins: list[tuple[np.ndarray, str]] = []
        self.members: list[Member] = []
        self.balanced: list[tuple[Key, int]] = []

    # -- element ids -------------------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        ids = np.arange(self.n, self.n + n, dtype=np.int64)
        self.n += n
        return ids

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Channel ``i`` of ``a`` and of ``b`` share one fate."""
        if len(a) != len(b):
            raise ValueError(f"coupling spaces of different sizes ({len(a)} and {len(b)})")
        if len(a):
            self._pairs.append((a, b))

    def pin(self, ids: np.ndarray, reason: str) -> None:
        if len(ids):
            self._pins.append((ids, reason))

    # -- spaces ----------------------------------------------------------------------------
    def space(self, v: Value) -> Space:
        return self.spaces.get(v, NO_SPACE)

    def inputs(self, node: Node) -> list[tuple[Space, TensorType]]:
        return [(self.space(v), self.graph.type_of(v)) for v in self.graph.inputs_of(node.id)]

    def set_out(self, node: Node, i: int, space: Space) -> None:
        self.spaces[Value(node.id, i)] = space

    def new_space(self, t: TensorType, axis: int | None) -> Space:
        """Fresh ids for ``t``'s channels along ``axis`` (none if the size is symbolic)."""
        if axis is None or axis >= t.rank or not isinstance(t.shape[axis], int):
            return NO_SPACE
        return Space(axis, self.fresh(t.shape[axis]))

    def opaque(self, node: Node, why: str | None = None) -> None:
        """An op whose channel structure is not understood: the widths it reads stay, and its
        outputs have no known channel axis (whatever joins them keeps its width too)."""
        reason = why or f"{node.op} ({node.id}) is not understood by the pruning analysis"
        for s, _ in self.inputs(node):
            self.pin(s.ids, reason)
        for i in range(len(node.types)):
            self.set_out(node, i, NO_SPACE)

    def member(self, node: Node, key: Key, role: str) -> None:
        self.members.append(Member(node.id, key, role))

    # -- results -------------------------------------------------------------------------------
    def components(self) -> tuple[np.ndarray, int]:
        if self._pairs:
            a = np.concatenate([p[0] for p in self._pairs])
            b = np.concatenate([p[1] for p in self._pairs])
        else:
            a = b = np.zeros(0, np.int64)
        m = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(self.n, self.n))
        count, labels = connected_components(m, directed=False)
        return labels.astype(np.int64), int(count)

    def pinned_units(self, labels: np.ndarray, count: int) -> tuple[np.ndarray, dict[int, set[str]]]:
        pinned = np.zeros(count, bool)
        reasons: dict[int, set[str]] = {}
        for ids, why in self._pins:
            units = np.unique(labels[ids])
            pinned[units] = True
            for u in units.tolist():
                reasons.setdefault(u, set()).add(why)
        return pinned, reasons


class RuleTable(OpTable[E]):
    """Per-op rules of passes/prune, only for ops marked ``PRUNE_RULE`` in the op table."""

    def _check_new(self, op: str) -> None:
        super()._check_new(op)
        kind = OPS[op].prune.kind if OPS[op].prune is not None else None
        if kind != "rule":
            raise RegistryError(f"{self.what} for '{op}', whose OpDef.prune is {kind!r}: only ops marked "
                                "PRUNE_RULE have rules here (the others' behaviour is data on their OpDef)")
