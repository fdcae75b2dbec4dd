"""Small graph-editing steps shared by the passes.

Each helper edits the graph it is given; passes call them on their own
``graph.copy()``, never on the graph they received.  Parameter arrays are
never modified in place (``ParamStore.copy()`` shares them): a pass that
changes values stores a new array under the key.
"""
from __future__ import annotations

from typing import Iterable

from convdsl.ir.graph import Graph, Value


def sole_user(graph: Graph, v: Value) -> str | None:
    """The one node reading ``v``, or None when ``v`` has several readers (or one
    node reading it twice) or is a graph output: the guard of every fusion."""
    users = graph.users(v)
    if len(users) != 1 or graph.is_output(v):
        return None
    return users[0][0]


def owners(graph: Graph, key: str) -> list[str]:
    """Nodes whose parameters include store key ``key``."""
    return [n for n, d in graph.g.nodes(data=True) if key in d["node"].params.values()]


def drop_unowned_params(graph: Graph, keys: Iterable[str]) -> None:
    """Remove the store entries among ``keys`` that no node refers to any more."""
    used = {k for _, d in graph.g.nodes(data=True) for k in d["node"].params.values()}
    for key in keys:
        if key not in used:
            graph.params.remove(key)


def remove_nodes(graph: Graph, ids: Iterable[str]) -> None:
    """Delete nodes (their uses must already be gone) and the parameters only they owned."""
    keys: list[str] = []
    for nid in list(ids):
        keys.extend(graph.node(nid).params.values())
        graph.remove_node(nid)
    drop_unowned_params(graph, keys)


def bypass(graph: Graph, nid: str, src: Value) -> None:
    """Make every reader of ``nid``'s output (edges and graph outputs) read ``src``, then delete ``nid``."""
    graph.replace_uses(Value(nid, 0), src)
    remove_nodes(graph, [nid])
