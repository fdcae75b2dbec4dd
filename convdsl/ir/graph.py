"""The graph IR: a ``networkx.MultiDiGraph`` wrapped in one small class.

Nodes are op instances keyed by a unique, readable id (``layer1.0.conv1``).
Each node carries a ``Node`` record: op name, attributes, output types,
parameter names and the .cdl span it came from.  Edges ``u -> v`` carry
``port`` (which input of ``v``) and ``out`` (which output of ``u``), because
networkx keeps no edge order.  Inputs are nodes of op ``input``; outputs are a
list of ``Value``s.  Parameters live in a ``ParamStore`` keyed by stable
dotted names that become the state_dict keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, NamedTuple

import networkx as nx

from convdsl.errors import Span
from convdsl.ir.params import ParamStore
from convdsl.ir.types import TensorType


class Value(NamedTuple):
    """One output of one node."""

    node: str
    out: int = 0


@dataclass
class Node:
    id: str
    op: str
    attrs: dict[str, Any]
    types: list[TensorType]  # one per output
    params: dict[str, str] = field(default_factory=dict)  # local name ("weight") -> store key
    span: Span | None = None
    scope: str = ""  # dotted path of the block instance that created it ("layer1.0")
    block: str = ""  # block name for that scope ("basic"), used for drawing clusters
    seq: int = 0  # creation order, the tie-breaker of the deterministic topological order

    @property
    def type(self) -> TensorType:
        return self.types[0]

    @property
    def exact_param(self) -> bool:
        """Whether the node's one parameter is named by the node's id itself (CDL ``op as param
        name``: a parameter the source model keeps on a non-leaf module, ViT's
        ``encoder.pos_embedding``), rather than ``<id>.<local name>``."""
        return len(self.params) == 1 and next(iter(self.params.values())) == self.id


# What a layer that must run a network, but may not import a backend (calibration, pruning
# criteria that need data, training), is given: graph -> torch.nn.Module in eval mode, e.g.
# convdsl.backends.torch.build_module.
ModuleBuilder = Callable[["Graph"], Any]


class Graph:
    def __init__(self, name: str = "network") -> None:
        self.name = name
        self.g = nx.MultiDiGraph()
        self.inputs: list[str] = []
        self.outputs: list[Value] = []
        self.output_names: list[str] = []
        self.params = ParamStore()
        self.source_file: str | None = None
        self.source_hash: str | None = None
        self.symbols: dict[str, int] = {}  # default bindings of symbolic dims, e.g. {"N": 1}
        self.scopes: dict[str, str] = {}  # block instance path -> block name (the front end's; drawn as clusters)
        self.choices: list[str] = []  # keys of the choice(...)s met while elaborating (none: a plain program)
        self._seq = 0

    # -- building -----------------------------------------------------------
    def add_node(
        self,
        id: str,
        op: str,
        inputs: list[Value],
        attrs: dict[str, Any],
        types: list[TensorType],
        *,
        params: dict[str, str] | None = None,
        span: Span | None = None,
        scope: str = "",
        block: str = "",
    ) -> str:
        if id in self.g:
            raise ValueError(f"duplicate node id {id!r}")
        self._seq += 1
        node = Node(id, op, dict(attrs), list(types), dict(params or {}), span, scope, block, self._seq)
        self.g.add_node(id, node=node)
        for port, v in enumerate(inputs):
            self.g.add_edge(v.node, id, port=port, out=v.out)
        if op == "input":
            self.inputs.append(id)
        return id

    def unique_id(self, base: str) -> str:
        if base not in self.g:
            return base
        i = 1
        while f"{base}_{i}" in self.g:
            i += 1
        return f"{base}_{i}"

    def remove_node(self, id: str) -> None:
        self.g.remove_node(id)
        if id in self.inputs:
            self.inputs.remove(id)

    def set_inputs(self, id: str, inputs: list[Value]) -> None:
        """Replace all incoming edges of ``id``."""
        for u, _, k in list(self.g.in_edges(id, keys=True)):
            self.g.remove_edge(u, id, k)
        for port, v in enumerate(inputs):
            self.g.add_edge(v.node, id, port=port, out=v.out)

    def replace_uses(self, old: Value, new: Value) -> None:
        """Point every use of ``old`` (edges and graph outputs) at ``new``."""
        for _, v, k, d in list(self.g.out_edges(old.node, keys=True, data=True)):
            if d["out"] == old.out:
                self.g.remove_edge(old.node, v, k)
                self.g.add_edge(new.node, v, port=d["port"], out=new.out)
        self.outputs = [new if o == old else o for o in self.outputs]

    # -- queries ------------------------------------------------------------
    def node(self, id: str) -> Node:
        return self.g.nodes[id]["node"]

    def __contains__(self, id: str) -> bool:
        return id in self.g

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def nodes(self) -> Iterator[Node]:
        """Nodes in the deterministic topological order."""
        for id in self.order():
            yield self.node(id)

    def order(self) -> list[str]:
        """Topological order, ties broken by creation order: derived, never assumed.

        When every edge runs from an older node to a newer one (a graph as the front end builds
        it), that order is the creation order itself: the oldest node left never waits for an
        input.  Checking the edges is much cheaper than the sort (4,500 nodes: 3 ms against 60)."""
        seq = {n: node.seq for n, node in self.g.nodes(data="node")}
        if all(seq[u] < seq[v] for u, v in self.g.edges()):
            return sorted(seq, key=seq.__getitem__)
        return list(nx.lexicographical_topological_sort(self.g, key=seq.__getitem__))

    def inputs_of(self, id: str) -> list[Value]:
        edges = sorted(self.g.in_edges(id, data=True), key=lambda e: e[2]["port"])
        return [Value(u, d["out"]) for u, _, d in edges]

    def in_types(self, id: str) -> list[TensorType]:
        return [self.type_of(v) for v in self.inputs_of(id)]

    def type_of(self, v: Value) -> TensorType:
        return self.node(v.node).types[v.out]

    def users(self, v: Value | str) -> list[tuple[str, int]]:
        """(consumer node, port) pairs reading ``v``; a node id means all its outputs."""
        node, out = (v, None) if isinstance(v, str) else (v.node, v.out)
        res = [(c, d["port"]) for _, c, d in self.g.out_edges(node, data=True) if out is None or d["out"] == out]
        return sorted(res, key=lambda t: (self.node(t[0]).seq, t[1]))

    def is_output(self, v: Value | str) -> bool:
        if isinstance(v, str):
            return any(o.node == v for o in self.outputs)
        return v in self.outputs

    def input_types(self) -> list[TensorType]:
        return [self.node(i).type for i in self.inputs]

    def output_types(self) -> list[TensorType]:
        return [self.type_of(v) for v in self.outputs]

    def ops_used(self) -> list[str]:
        return sorted({n.op for n in self.nodes()})

    def copy(self) -> "Graph":
        """Structural copy; parameter arrays are shared until replaced."""
        other = Graph(self.name)
        other.g = nx.MultiDiGraph()
        for n, d in self.g.nodes(data=True):
            node = d["node"]
            other.g.add_node(n, node=replace(node, attrs=dict(node.attrs), types=list(node.types), params=dict(node.params)))
        for u, v, d in self.g.edges(data=True):
            other.g.add_edge(u, v, **d)
        other.inputs = list(self.inputs)
        other.outputs = list(self.outputs)
        other.output_names = list(self.output_names)
        other.params = self.params.copy()
        other.source_file = self.source_file
        other.source_hash = self.source_hash
        other.symbols = dict(self.symbols)
        other.scopes = dict(self.scopes)
        other.choices = list(self.choices)
        other._seq = self._seq
        return other

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self)} nodes, {self.params.count():,} params>"

    # -- Jupyter display (convdsl/ir/display.py: the picture and the statistics table) --
    def _repr_svg_(self) -> str | None:
        from convdsl.ir.display import graph_svg

        return graph_svg(self)

    def _repr_html_(self) -> str:
        from convdsl.ir.display import graph_html

        return graph_html(self)
