"""const_fold: compute at compile time what does not depend on the network's inputs.

Most values in this IR depend on a graph input.  The exceptions are the
``parameter`` op's outputs (a learned tensor; its input only places it in the
graph) and whatever is computed from them alone, e.g. ConViT's gate
``1 - sigmoid(lambda)`` or a positional table ``softmax(P)``.  This pass:

- evaluates such constant subgraphs with numpy: a node whose every input is a
  ``parameter`` and whose op is in ``EVALUATORS`` (elementwise arithmetic and
  activations, softmax, views) becomes a ``parameter`` holding the value, with
  the node's id (parameter ``<id>.weight``); chains fold step by step, and the
  ``parameter`` nodes left without readers are for ``dce`` to remove;
- folds the *attribute arithmetic* of chains of cheap ops:
  ``affine(affine(x, s1, b1), s2, b2)`` becomes ``affine(x, s1*s2, b1*s2 + b2)``
  (``neg`` is ``affine(-1, 0)``; a result of ``affine(1, 0)`` disappears), and
  consecutive ``reshape``/``flatten``/``squeeze``/``unsqueeze`` become one
  ``reshape`` (0 keeps an input dim such as a symbolic batch, -1 takes the
  rest, other symbolic dims are written as sizes; a chain that ends at its
  input's shape disappears).

Precondition: ``verify(graph)`` passes; the graph is used for inference (a
folded parameter stores ``f(weight)``, not ``weight``).

Postcondition: no evaluable node reads only parameters; no affine/neg reads
another affine/neg, and no view op reads another view op, unless the first one
has other readers or is a graph output (folding would compute it twice).
Folded nodes keep the id of the last op of the chain.  View folding is exact;
affine folding and numpy evaluation round differently from the unfolded
graph, within float tolerance.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from convdsl.errors import ConvDSLError
from convdsl.ir.graph import Graph, Node
from convdsl.ir.ops import OPS
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.types import NUMPY_DTYPE, Size, TensorType
from convdsl.passes.rewrite import bypass, sole_user

AFFINES = frozenset({"affine", "neg"})
VIEWS = frozenset({"reshape", "flatten", "squeeze", "unsqueeze"})
CONSTANT = "parameter"  # the op whose value does not depend on its input


def _softmax(n: Node, a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=n.attrs["dim"], keepdims=True))
    return e / e.sum(axis=n.attrs["dim"], keepdims=True)


def _sum(n: Node, *xs: np.ndarray) -> np.ndarray:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


# op -> numpy evaluation (node, input arrays in float64) -> output array; static shapes only
EVALUATORS: dict[str, Callable[..., np.ndarray]] = {
    "identity": lambda n, a: a,
    "neg": lambda n, a: -a,
    "affine": lambda n, a: a * n.attrs["scale"] + n.attrs["shift"],
    "relu": lambda n, a: np.maximum(a, 0.0),
    "relu6": lambda n, a: np.clip(a, 0.0, 6.0),
    "sigmoid": lambda n, a: 0.5 * (1.0 + np.tanh(0.5 * a)),  # no overflow for large |a|
    "tanh": lambda n, a: np.tanh(a),
    "softmax": _softmax,
    "add": _sum,
    "sub": lambda n, a, b: a - b,
    "mul": lambda n, a, b: a * b,
    "div": lambda n, a, b: a / b,
    "reshape": lambda n, a: a.reshape(n.type.shape),
    "flatten": lambda n, a: a.reshape(n.type.shape),
    "squeeze": lambda n, a: a.reshape(n.type.shape),
    "unsqueeze": lambda n, a: a.reshape(n.type.shape),
    "permute": lambda n, a: np.transpose(a, normalize_dims("permute", n.attrs["dims"], a.ndim)),
    "transpose": lambda n, a: np.swapaxes(a, n.attrs["dim0"], n.attrs["dim1"]),
}


def const_fold(graph: Graph) -> Graph:
    """A copy of ``graph`` with constant subgraphs evaluated and affine and view chains folded."""
    g = graph.copy()
    for nid in g.order():  # producers first, so a chain folds into its last node step by step
        node = g.node(nid)
        if _fold_constant(g, node):
            continue
        if node.op in AFFINES:
            _fold_affine(g, node)
        elif node.op in VIEWS:
            _fold_view(g, node)
    return g


def _fold_constant(g: Graph, node: Node) -> bool:
    # f(parameter(w1), parameter(w2), ...)  =>  parameter(f(w1, w2, ...))
    if CONSTANT not in OPS or node.op not in EVALUATORS or len(node.types) != 1 or not node.type.is_static():
        return False
    ins = g.inputs_of(node.id)
    if not ins or any(g.node(v.node).op != CONSTANT for v in ins):
        return False
    if node.type.numel() > sum(g.type_of(v).numel() for v in ins):
        return False  # a broadcast would store more than it saves
    anchor = g.inputs_of(ins[0].node)[0]  # what places the first constant in the graph
    attrs = {"shape": tuple(node.type.shape), "init": "zeros", "scale": 0.0}
    key = f"{node.id}.weight"  # the torch backend names parameters <node id>.<local name>
    try:
        if OPS[CONSTANT].infer(attrs, [g.type_of(anchor)]) != [node.type] or key in g.params:
            return False
    except ConvDSLError:
        return False
    args = [g.params[g.node(v.node).params["weight"]].astype(np.float64) for v in ins]
    value = np.asarray(EVALUATORS[node.op](node, *args)).astype(NUMPY_DTYPE.get(node.type.dtype, "float32"))
    spec = OPS[CONSTANT].param_specs(attrs, [g.type_of(anchor)])["weight"]
    node.op, node.attrs, node.params = CONSTANT, attrs, {"weight": key}
    g.params.declare(key, spec)
    g.params[key] = value
    g.set_inputs(node.id, [anchor])
    return True


def _scale_shift(node: Node) -> tuple[float, float]:
    return (-1.0, 0.0) if node.op == "neg" else (node.attrs["scale"], node.attrs["shift"])


def _fold_affine(g: Graph, node: Node) -> None:
    # affine(affine(x, s1, b1), s2, b2)  =>  affine(x, s1*s2, b1*s2 + b2)
    (src,) = g.inputs_of(node.id)
    inner = g.node(src.node)
    if inner.op not in AFFINES or sole_user(g, src) != node.id:
        return
    (s1, b1), (s2, b2) = _scale_shift(inner), _scale_shift(node)
    (x,) = g.inputs_of(inner.id)
    node.op, node.attrs = "affine", {"scale": s1 * s2, "shift": b1 * s2 + b2}
    g.set_inputs(node.id, [x])
    g.remove_node(inner.id)
    if node.attrs == {"scale": 1.0, "shift": 0.0}:
        bypass(g, node.id, x)


def _fold_view(g: Graph, node: Node) -> None:
    # view2(view1(x))  =>  reshape(x, shape of view2)
    (src,) = g.inputs_of(node.id)
    inner = g.node(src.node)
    if inner.op not in VIEWS or sole_user(g, src) != node.id:
        return
    (x,) = g.inputs_of(inner.id)
    x_type = g.type_of(x)
    if x_type == node.type:
        g.remove_node(inner.id)
        bypass(g, node.id, x)
        return
    spec = reshape_spec(x_type, node.type)
    if spec is None:
        return
    node.op, node.attrs = "reshape", {"shape": spec}
    g.set_inputs(node.id, [x])
    g.remove_node(inner.id)


def reshape_spec(src: TensorType, dst: TensorType) -> tuple[int | Size, ...] | None:
    """A ``reshape`` shape that takes ``src`` to ``dst``, or None when the
    symbolic dims do not allow one (checked with reshape's own shape rule):
    [N, L, 6] -> [L, N, 6] is (-1, Size("N"), 6)."""
    spec: list[int | Size] = []
    for i, d in enumerate(dst.shape):
        if i < src.rank and src.shape[i] == d and not isinstance(d, int):
            spec.append(0)  # keep the (symbolic) input dim
        elif isinstance(d, int):
            spec.append(d)
        else:  # the first other symbolic dim is -1, the rest are written as sizes (reshape([L, -1, 6]))
            spec.append(-1 if -1 not in spec else Size(d))
    attrs = {"shape": tuple(spec)}
    try:
        (out,) = OPS["reshape"].infer(attrs, [src])
    except ConvDSLError:  # the reshape rule refuses this spelling: leave the chain as it is
        return None
    return tuple(spec) if out == dst else None
