"""Dependency groups: which channels of a graph must be removed together.

Every tensor value gets a *channel space*: the axis that carries its channels
and one element id per channel.  Each op's coupling rule (``couplings.py``:
from its ``OpDef.prune``, or a rule of its own) gives its outputs their spaces
from its inputs' (a relu's output reuses its input's ids; a conv's output
gets fresh ids) and records *couplings*: element ids that
must share a fate (the two inputs of a residual add, a depthwise conv's input
and output channel, the features a flattened channel becomes).  Connected
components of the couplings are *units*: the smallest sets of channels that
can be removed alone.  Units touching exactly the same set of spaces form a
*group*, the thing a pruning ratio and a mask apply to (the channels of a
residual stream, the hidden channels of one bottleneck, one half of a concat).

A unit is *pinned* (never removed) when it touches a network output or an op
the rules do not understand; network inputs and the outputs of such ops have
no channel space at all, so whatever is joined with them keeps its width.  An
unknown op can cost compression but never correctness.  Balanced constraints (grouped convs, groupnorm) ask
for the same number of kept channels in each block of a space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from convdsl.ir.graph import Graph, Value
from convdsl.ir.ops import OPS
from convdsl.passes.prune.couplings import rule_for, shared_params
from convdsl.passes.prune.spaces import NO_SPACE, Builder, Key, Member, Space

__all__ = ["Builder", "Dependencies", "Group", "Key", "Member", "NO_SPACE", "Space", "analyze", "fingerprint",
           "key_name", "lcm"]


@dataclass
class Group:
    """Units removed under one ratio, numbered in the order of their channels in ``anchor`` (the first
    producer's output), so a mask reads as that layer's channel indices."""

    name: str
    anchor: Key
    units: np.ndarray  # component labels, in anchor channel order
    pinned: np.ndarray  # bool per unit
    cells: np.ndarray | None  # balanced-constraint cell per unit, None when unconstrained
    members: list[Member]
    keys: list[Key]  # every space the group's channels live in, in topological order
    reasons: list[str] = field(default_factory=list)  # why units are pinned

    @property
    def size(self) -> int:
        return len(self.units)

    @property
    def prunable(self) -> bool:
        return not bool(self.pinned.all())

    @property
    def producers(self) -> list[str]:
        return list(dict.fromkeys(m.node for m in self.members if m.role != "norm"))


@dataclass
class Dependencies:
    """The result of ``analyze``: spaces, units and groups of one graph."""

    spaces: dict[Key, Space]
    labels: np.ndarray  # element id -> unit (component) label
    groups: list[Group]
    unit_group: np.ndarray  # unit -> index into groups
    unit_index: np.ndarray  # unit -> position inside its group
    balanced: list[tuple[Key, int]]  # (space, blocks) constraints, for apply's checks
    fingerprint: tuple  # (node ids, channel sizes) of the graph analyzed

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def by_name(self) -> dict[str, Group]:
        return {g.name: g for g in self.groups}


def analyze(graph: Graph) -> Dependencies:
    """Channel spaces, units and groups of ``graph`` (which is not modified)."""
    b = Builder(graph)
    shared = shared_params(graph)
    for node in graph.nodes():
        if node.op == "input":  # no known channel axis: nothing joined with an input changes width
            b.set_out(node, 0, NO_SPACE)
            continue
        rule = rule_for(OPS[node.op])
        if node.id in shared:
            b.opaque(node, f"{node.id} shares parameters with another node")
        elif rule is None:
            b.opaque(node)
        else:
            try:
                rule(b, node)
            except (KeyError, TypeError, ValueError, IndexError) as e:  # an op whose attrs changed under us
                b.opaque(node, f"{node.op} ({node.id}): coupling rule failed ({type(e).__name__}: {e})")
    for v in graph.outputs:
        b.pin(b.space(v).ids, f"network output ({v.node})")
    labels, count = b.components()
    pinned, reasons = b.pinned_units(labels, count)
    return _group(graph, b, labels, count, pinned, reasons)


def _group(graph: Graph, b: Builder, labels: np.ndarray, count: int, pinned: np.ndarray,
           reasons: dict[int, set[str]]) -> Dependencies:
    order = {nid: i for i, nid in enumerate(graph.order())}

    def rank(key: Key) -> tuple:
        node = key.node if isinstance(key, Value) else key[1]
        return (order.get(node, len(order)), 0 if isinstance(key, Value) else 1, repr(key))

    keys = sorted((k for k, s in b.spaces.items() if s.size), key=rank)
    touched: dict[int, list[Key]] = {}
    for k in keys:
        for u in np.unique(labels[b.spaces[k].ids]).tolist():
            touched.setdefault(u, []).append(k)
    by_sig: dict[tuple, list[int]] = {}
    for u in range(count):
        sig = tuple(touched.get(u, ()))
        if sig:
            by_sig.setdefault(sig, []).append(u)

    members_of: dict[Key, list[Member]] = {}
    for m in b.members:
        members_of.setdefault(m.key, []).append(m)

    groups: list[Group] = []
    unit_group = np.full(count, -1, np.int64)
    unit_index = np.full(count, -1, np.int64)
    for sig, units in by_sig.items():
        members = [m for k in sig for m in members_of.get(k, ())]
        anchor = next((m.key for m in members if m.role != "norm"), sig[0])
        ids = b.spaces[anchor].ids
        first = {}
        for pos, u in enumerate(labels[ids].tolist()):
            first.setdefault(u, pos)
        units_sorted = np.array(sorted(units, key=lambda u: first[u]), np.int64)
        why = sorted({r for u in units_sorted.tolist() for r in reasons.get(u, ())})
        groups.append(Group("", anchor, units_sorted, pinned[units_sorted], None, members, list(sig), why))
    groups.sort(key=lambda g: (rank(g.anchor), int(g.units[0])))
    _name(groups)
    for gi, g in enumerate(groups):
        unit_group[g.units] = gi
        unit_index[g.units] = np.arange(g.size)
    _cells(b, labels, groups, unit_group, unit_index)
    fp = fingerprint(graph)
    return Dependencies(b.spaces, labels, groups, unit_group, unit_index, b.balanced, fp)


def _name(groups: list[Group]) -> None:
    """A group is named after the first node producing its channels; repeats get #2, #3..."""
    seen: dict[str, int] = {}
    for g in groups:
        base = g.producers[0] if g.producers else (g.anchor.node if isinstance(g.anchor, Value) else g.anchor[1])
        if isinstance(g.anchor, tuple) and not isinstance(g.anchor, Value):
            base = f"{base}.{g.anchor[0]}"
        seen[base] = seen.get(base, 0) + 1
        g.name = base if seen[base] == 1 else f"{base}#{seen[base]}"


def _cells(b: Builder, labels: np.ndarray, groups: list[Group], unit_group: np.ndarray,
           unit_index: np.ndarray) -> None:
    """Balanced constraints -> a cell id per unit; a group whose units straddle blocks is pinned."""
    cols: dict[int, list[np.ndarray]] = {}
    for key, blocks in b.balanced:
        s = b.spaces[key]
        block = np.arange(s.size) // (s.size // blocks)
        units = labels[s.ids]
        for gi in np.unique(unit_group[units]).tolist():
            g = groups[gi]
            col = np.full(g.size, -1, np.int64)
            sel = unit_group[units] == gi
            idx, blk = unit_index[units[sel]], block[sel]
            col[idx] = blk
            straddle = np.zeros(g.size, bool)
            np.logical_or.at(straddle, idx, col[idx] != blk)
            if straddle.any() or (col < 0).any():
                g.pinned[:] = True
                g.reasons.append(f"channels of {key_name(key)} cannot be kept balanced over {blocks} blocks")
                continue
            cols.setdefault(gi, []).append(col)
    for gi, cs in cols.items():
        g = groups[gi]
        _, cell = np.unique(np.stack(cs, 1), axis=0, return_inverse=True)
        cell = cell.reshape(-1)
        sizes = np.bincount(cell)
        if len(set(sizes.tolist())) != 1:  # unequal cells cannot keep equal counts
            g.pinned[:] = True
            g.reasons.append("balanced blocks of unequal size")
            continue
        g.cells = cell


def key_name(key: Key) -> str:
    if isinstance(key, Value):
        return key.node if key.out == 0 else f"{key.node}:{key.out}"
    return f"{key[1]} ({key[0]})"


def fingerprint(graph: Graph) -> tuple:
    """What masks computed on a graph depend on: node ids and their output shapes."""
    return tuple((n.id, n.op, tuple(t.shape for t in n.types)) for n in graph.nodes())


def lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)
