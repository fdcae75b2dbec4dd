"""remove_identity: remove ops that pass their input through unchanged.

Precondition: ``verify(graph)``; the graph is used for inference, so dropout
and drop_path (stochastic depth) are identities and are removed too.  Do not
run this pass on a graph you will train.

Postcondition: none of the following is left; their readers (and graph
outputs) read the op's input instead:

- ``identity``, ``dropout``, ``drop_path`` (inference);
- ``affine(scale=1, shift=0)``;
- ``permute`` by the identity permutation, ``transpose(d, d)``;
- shape ops whose output type equals their input type, which for them means
  they move no element: ``reshape``, ``flatten``, ``squeeze``, ``pad`` (all
  zeros), ``pixel_shuffle``/``pixel_unshuffle`` (factor 1), ``upsample`` (to
  the same size), ``concat`` of one input, ``split`` into one piece.

Outputs are bit-for-bit those of the input graph (at inference).
"""
from __future__ import annotations

from convdsl.ir.graph import Graph, Node
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.types import TensorType
from convdsl.passes.rewrite import bypass

ALWAYS = frozenset({"identity", "dropout", "drop_path"})
SAME_TYPE_IS_IDENTITY = frozenset({"reshape", "flatten", "squeeze", "pad", "pixel_shuffle", "pixel_unshuffle",
                                   "upsample", "concat", "split"})


def remove_identity(graph: Graph) -> Graph:
    """A copy of ``graph`` without no-op nodes."""
    # noop(x)  =>  x
    g = graph.copy()
    for nid in g.order():
        node = g.node(nid)
        ins = g.inputs_of(nid)
        if len(ins) == 1 and len(node.types) == 1 and is_identity(node, g.type_of(ins[0])):
            bypass(g, nid, ins[0])
    return g


def is_identity(node: Node, in_type: TensorType) -> bool:
    """Whether a one-input, one-output ``node`` returns its input unchanged (at inference)."""
    if node.op in ALWAYS:
        return True
    if node.type != in_type:
        return False
    if node.op == "affine":
        return node.attrs["scale"] == 1.0 and node.attrs["shift"] == 0.0
    if node.op == "permute":
        dims = node.attrs["dims"]
        dims = (dims,) if isinstance(dims, int) else dims
        return list(normalize_dims("permute", dims, in_type.rank)) == list(range(in_type.rank))
    if node.op == "transpose":
        return normalize_dims("transpose", node.attrs["dim0"], in_type.rank) == \
            normalize_dims("transpose", node.attrs["dim1"], in_type.rank)
    return node.op in SAME_TYPE_IS_IDENTITY

