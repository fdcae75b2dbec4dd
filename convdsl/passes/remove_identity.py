"""remove_identity: remove ops that pass their input through unchanged.

Precondition: ``verify(graph)``; the graph is used for inference, so dropout
and drop_path (stochastic depth) are identities and are removed too.  Do not
run this pass on a graph you will train.

Postcondition: no one-input, one-output node whose op's ``identity_when``
(in the op table) holds is left; their readers (and graph outputs) read the
op's input instead.  Today that is:

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
from convdsl.ir.ops import OPS
from convdsl.ir.types import TensorType
from convdsl.passes.rewrite import bypass


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
    when = OPS[node.op].identity_when
    return when is not None and when(node.attrs, in_type, node.type)

