"""``verify(graph)``: the IR's invariants, checked after every pass in tests
and debug mode.  A failure names the node and its .cdl location."""
from __future__ import annotations

import math

import networkx as nx

from convdsl.errors import IRError
from convdsl.ir.graph import Graph
from convdsl.ir.ops import OPS


def verify(graph: Graph) -> Graph:
    """Check acyclicity, ports, shapes (re-inferred) and parameters; return the graph."""
    g = graph.g
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        raise IRError(f"graph has a cycle through {cycle[0][0]!r}", graph.node(cycle[0][0]).span)
    for inp in graph.inputs:
        if inp not in g or graph.node(inp).op != "input":
            raise IRError(f"graph input {inp!r} is not an input node")
    if not graph.outputs:
        raise IRError("graph has no outputs")
    for v in graph.outputs:
        if v.node not in g or v.out >= len(graph.node(v.node).types):
            raise IRError(f"graph output {v} does not exist")
    declared: set[str] = set()
    for nid in graph.order():
        node = graph.node(nid)
        where = node.span
        if node.op == "input":
            if g.in_degree(nid):
                raise IRError(f"input node {nid!r} has incoming edges", where)
            continue
        op = OPS.get(node.op)
        if op is None:
            raise IRError(f"node {nid!r} has unknown op {node.op!r}", where)
        edges = sorted(g.in_edges(nid, data=True), key=lambda e: e[2]["port"])
        ports = [d["port"] for _, _, d in edges]
        if ports != list(range(len(ports))):
            raise IRError(f"node {nid!r} has ports {ports}, expected 0..{len(ports) - 1}", where)
        lo, hi = op.inputs
        if len(ports) < lo or (hi is not None and len(ports) > hi):
            raise IRError(f"node {nid!r} ({node.op}) has {len(ports)} inputs", where)
        for u, _, d in edges:
            if d["out"] >= len(graph.node(u).types):
                raise IRError(f"edge {u}->{nid} reads output {d['out']} that does not exist", where)
        ins = graph.in_types(nid)
        try:
            expect = op.infer(node.attrs, ins)
        except Exception as e:  # a pass produced attrs the shape rule rejects
            raise IRError(f"node {nid!r} ({node.op}) no longer type-checks: {e}", where) from None
        if list(expect) != list(node.types):
            raise IRError(f"node {nid!r} ({node.op}) records types {[str(t) for t in node.types]} "
                          f"but its inputs give {[str(t) for t in expect]}", where)
        specs = op.param_specs(node.attrs, ins)
        if set(specs) != set(node.params):
            raise IRError(f"node {nid!r} has params {sorted(node.params)}, op expects {sorted(specs)}", where)
        for local, key in node.params.items():
            if key not in graph.params:
                raise IRError(f"parameter {key!r} of node {nid!r} is missing from the store", where)
            have = graph.params.specs[key].shape
            if tuple(have) != tuple(specs[local].shape):
                raise IRError(f"parameter {key!r} has shape {list(have)}, op expects {list(specs[local].shape)}", where)
            if graph.params.is_materialized(key):
                arr = graph.params[key]
                if tuple(arr.shape) != tuple(have):
                    raise IRError(f"parameter {key!r} array has shape {list(arr.shape)}, spec says {list(have)}", where)
                if arr.dtype.kind == "f" and arr.size and not math.isfinite(float(abs(arr).max())):
                    raise IRError(f"parameter {key!r} has non-finite values", where)
            declared.add(key)
    extra = set(graph.params.names()) - declared
    if extra:
        raise IRError(f"parameters not owned by any node: {sorted(extra)[:5]}")
    return graph
