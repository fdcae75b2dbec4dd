"""dce: dead-code elimination.

Precondition: ``verify(graph)`` passes.

Postcondition: every node left is a graph input or contributes to a graph
output; nodes that do not are gone, and so are the parameters only they
owned.  Graph inputs stay even when unused (they are the network's
signature).  A multi-output node stays whole while any of its outputs is read.
"""
from __future__ import annotations

import networkx as nx

from convdsl.ir.graph import Graph
from convdsl.passes.rewrite import remove_nodes


def dce(graph: Graph) -> Graph:
    """A copy of ``graph`` without the nodes no output depends on."""
    # f(x) with no path to an output  =>  (nothing)
    g = graph.copy()
    live: set[str] = set(g.inputs)
    for v in g.outputs:
        live.add(v.node)
        live |= nx.ancestors(g.g, v.node)
    remove_nodes(g, [nid for nid in g.order() if nid not in live])
    return g
