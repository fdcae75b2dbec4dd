"""fold_bn: fold inference-mode batch normalization into the conv or linear before it.

Precondition: ``verify(graph)`` passes; the graph is used for inference, so
every batchnorm applies its running statistics (``running_mean``,
``running_var``) and its affine ``weight``/``bias``.

Postcondition: every batchnorm (an op marked ``folds_into_producer``) whose
input comes from a producer with per-output-channel weight and bias
(``out_channels`` in the op table: conv1d/2d/3d with any groups, depthwise
included, conv_transpose1d/2d/3d, linear) whose channels are the batchnorm's
dim 1 (so a linear's output must be rank 2) and whose output has no other
reader and is not a graph output, is gone.  The producer keeps its node
id (so its parameters keep readable names such as ``layer1.0.conv1.weight``),
gets ``bias=true`` (a new ``<id>.bias`` parameter when it had none) and its
folded weights; the batchnorm's readers (and graph outputs) now read the
producer.  Outputs agree with the unfolded graph within float rounding.  A
producer whose weight is shared with another node is left alone (folding
would change the other node too).  The batchnorm's parameters leave the store.

The per-channel factors are computed in float64, the weight product in
float32 (or the weight's dtype, if wider) and the results are cast back to the
weight's dtype.  The input graph is not modified (its arrays are never written
to).
"""
from __future__ import annotations

import numpy as np

from convdsl.ir.graph import Graph, Node, Value
from convdsl.ir.ops import OPS
from convdsl.passes.rewrite import owners, remove_nodes, sole_user


def fold_bn(graph: Graph) -> Graph:
    """A copy of ``graph`` with every foldable producer -> batchnorm pair made one op."""
    # conv(x, w, b) -> bn(mean, var, gamma, beta, eps)  =>  conv(x, w*s, (b - mean)*s + beta),  s = gamma/sqrt(var + eps)
    g = graph.copy()
    for nid in g.order():
        bn = g.node(nid)
        if bn.op not in OPS or not OPS[bn.op].folds_into_producer:  # graph inputs are no op
            continue
        (src,) = g.inputs_of(nid)
        producer = g.node(src.node)
        if _foldable(g, producer, src, nid):
            _fold(g, producer, bn)
    return g


def _foldable(g: Graph, producer: Node, src: Value, bn_id: str) -> bool:
    out = OPS[producer.op].out_channels if producer.op in OPS else None
    if out is None or set(out.params) != {"weight", "bias"} or sole_user(g, src) != bn_id:
        return False
    if out.axis % producer.type.rank != 1:  # bn normalizes dim 1 (a linear's features are dim -1)
        return False
    if "bias" not in producer.params and _bias_key(producer) in g.params:
        return False  # the name the folded bias needs is taken
    return owners(g, producer.params["weight"]) == [producer.id]


def _bias_key(producer: Node) -> str:
    return f"{producer.id}.bias"  # the torch backend names parameters <node id>.<local name>


def _fold(g: Graph, producer: Node, bn: Node) -> None:
    p = g.params
    mean = p[bn.params["running_mean"]].astype(np.float64)
    var = p[bn.params["running_var"]].astype(np.float64)
    gamma = p[bn.params["weight"]].astype(np.float64) if "weight" in bn.params else np.ones_like(mean)
    beta = p[bn.params["bias"]].astype(np.float64) if "bias" in bn.params else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.attrs["eps"])

    w_key = producer.params["weight"]
    w = p[w_key]
    b = p[producer.params["bias"]].astype(np.float64) if "bias" in producer.params else np.zeros_like(mean)
    # a new array (never written in place: the input graph shares this one); one rounding in float32 or wider
    wide = np.promote_types(w.dtype, np.float32)
    p[w_key] = _scale_out_channels(producer, w.astype(wide, copy=False), scale.astype(wide)).astype(w.dtype, copy=False)
    new_bias = ((b - mean) * scale + beta).astype(w.dtype)

    if "bias" not in producer.params:
        producer.attrs["bias"] = True
        key = _bias_key(producer)
        spec = OPS[producer.op].param_specs(producer.attrs, g.in_types(producer.id))["bias"]
        p.declare(key, spec)
        producer.params["bias"] = key
    p[producer.params["bias"]] = new_bias

    g.replace_uses(Value(bn.id, 0), Value(producer.id, 0))
    remove_nodes(g, [bn.id])


def _scale_out_channels(producer: Node, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``w`` with output channel ``o`` multiplied by ``scale[o]``."""
    if OPS[producer.op].out_channels.params["weight"] == 1:
        # weight [in, out/groups, k...]: output channel o = group * (out/groups) + j lives at [group block, j]
        groups = producer.attrs["groups"]
        cin, per_group, *k = w.shape
        blocks = w.reshape(groups, cin // groups, per_group, *k)
        s = scale.reshape(groups, 1, per_group, *([1] * len(k)))
        return (blocks * s).reshape(w.shape)
    # conv weight [out, in/groups, k...], linear weight [out, in]
    return w * scale.reshape(-1, *([1] * (w.ndim - 1)))
