"""cse: common-subexpression elimination.

Precondition: ``verify(graph)`` passes.

Postcondition: no two nodes compute the same value: nodes with the same op,
attributes, output types and inputs (in port order; in either order for a
two-input op marked ``commutative`` in the op table, such as ``add`` and
``mul``) are merged into the first one in topological order, whose outputs the
others' readers (and graph outputs) now read.  Never merged: graph inputs,
nodes that own parameters (two convs with equal attributes hold different
weights), and ops marked ``random`` (they draw random numbers while training:
dropout, drop_path).  Merging is exact: the kept node
computes bit-for-bit what the removed one did.
"""
from __future__ import annotations

from typing import Any, Hashable

from convdsl.ir.graph import Graph, Node, Value
from convdsl.ir.ops import OPS


def cse(graph: Graph) -> Graph:
    """A copy of ``graph`` with each repeated computation done once."""
    # f(x) ... f(x)  =>  y = f(x) ... y
    g = graph.copy()
    seen: dict[Hashable, str] = {}
    for nid in g.order():
        node = g.node(nid)
        if node.op == "input" or OPS[node.op].random or node.params:
            continue
        key = _key(g, node)
        first = seen.setdefault(key, nid)
        if first != nid:
            for out in range(len(node.types)):
                g.replace_uses(Value(nid, out), Value(first, out))
            g.remove_node(nid)
    return g


def _key(g: Graph, node: Node) -> Hashable:
    ins = tuple(g.inputs_of(node.id))  # reflects merges made earlier in the walk
    if OPS[node.op].commutative and len(ins) == 2:  # a + b == b + a exactly; a + b + c is not c + b + a
        ins = tuple(sorted(ins))
    return node.op, _freeze(node.attrs), tuple(node.types), ins


def _freeze(v: Any) -> Hashable:
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    try:
        hash(v)
    except TypeError:
        return object()  # an unhashable attribute (an array?): equal to nothing, so never merged
    return type(v).__name__, v  # bool vs int: True == 1 would merge attrs of different meaning
