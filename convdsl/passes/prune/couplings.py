"""Coupling rules: how each op's channels relate to its inputs' channels.

An op's ``OpDef.prune`` (convdsl/ir/optable.py) says which kind it is:

- ``keep_channels(along, params)``: channel c of input 0 is channel c of the
  output when the channels lie on an axis ``along`` accepts (activations,
  norms, pools, per-channel filters...): interpreted here by ``keep``;
- ``PRUNE_RULE``: a rule of its own in ``COUPLINGS`` below (producers,
  elementwise joins, views, reductions...);
- ``opaque(why)``: not understood: the widths it reads and writes are pinned,
  as for any op without a stated kind.

A rule gives every output a ``Space`` and records couplings (``b.union``),
pins (``b.pin``), members that criteria score (``b.member``) and balanced
constraints (``b.balanced``).  The rules and the removal rules in
``apply.py`` are two halves of one contract: whatever a rule leaves
prunable, ``apply.py`` can slice.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from convdsl.ir.graph import Graph, Node, Value
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.ops.shape import split_sizes, squeeze_dims
from convdsl.ir.optable import AxisFn, OpDef, Prune, on_axis
from convdsl.passes.prune.spaces import Builder, RuleTable, Space

Rule = Callable[[Builder, Node], None]
COUPLINGS: RuleTable[Rule] = RuleTable("pruning coupling rule")
MAX_FLAT = 1 << 22  # flattening more features than this per sample is left opaque


def shared_params(graph: Graph) -> set[str]:
    """Nodes whose parameter keys another node also uses (tied weights: never sliced)."""
    owners: dict[str, list[str]] = {}
    for node in graph.nodes():
        for key in node.params.values():
            owners.setdefault(key, []).append(node.id)
    return {n for ns in owners.values() if len(ns) > 1 for n in ns}


# ---- building blocks -----------------------------------------------------------------------
def passthrough(along: AxisFn | None = None) -> Rule:
    """Channel i of the output is channel i of input 0 (same axis) when ``along`` accepts the
    axis: activations, norms, pools..."""

    def rule(b: Builder, node: Node) -> None:
        (s, t), *rest = b.inputs(node)
        for r, _ in rest:  # extra inputs (none for these ops) keep their widths
            b.pin(r.ids, f"{node.op} ({node.id}) extra input")
        if s.axis is None or (along is not None and not along(node.attrs, s.axis, t)):
            return b.opaque(node, f"{node.op} ({node.id}) acts along the channel axis")
        for i in range(len(node.types)):
            b.set_out(node, i, s)

    return rule


def keep(prune: Prune) -> Rule:
    """The rule of a ``keep_channels`` op: ``passthrough``, and its ``scale`` parameter (a
    batchnorm's weight) a member the bn_scale criterion reads."""
    through = passthrough(prune.along)
    if prune.scale is None:
        return through

    def rule(b: Builder, node: Node) -> None:
        through(b, node)
        if prune.scale in node.params and b.space(Value(node.id, 0)).axis is not None:
            b.member(node, Value(node.id, 0), "norm")

    return rule


def rule_for(op: OpDef) -> Rule | None:
    """The coupling rule of ``op``, or None when it is opaque (or states nothing, or its rule is
    missing: an op the analysis does not understand can cost compression, never correctness)."""
    p = op.prune
    if p is None or p.kind == "opaque":
        return None
    if p.kind == "keep":
        return keep(p)
    return COUPLINGS.get(op.name)


def consume(b: Builder, node: Node, port: int, axis: int) -> Space | None:
    """The space a producer reads its input channels from (weight columns), or None (pinned)."""
    s, t = b.inputs(node)[port]
    if s.axis != axis:
        b.pin(s.ids, f"{node.op} ({node.id}) reads channels on another axis")
        return None
    return s


def produce(b: Builder, node: Node, axis: int) -> Space:
    s = b.new_space(node.types[0], axis)
    b.set_out(node, 0, s)
    b.member(node, Value(node.id, 0), "out")
    return s


def _grouped(b: Builder, node: Node, s_in: Space | None, groups: int) -> None:
    """conv / conv_transpose output space given ``groups``."""
    out_t = node.types[0]
    cin = b.graph.in_types(node.id)[0].shape[1]
    if groups == 1:
        produce(b, node, 1)
        return
    if s_in is None:
        return b.opaque(node, f"{node.op} ({node.id}): grouped conv over channels that cannot change")
    if groups == cin:  # depthwise: input channel c owns output channels c*m .. c*m+m-1
        m = out_t.shape[1] // cin
        s = Space(1, np.repeat(s_in.ids, m))
        b.set_out(node, 0, s)
        b.member(node, Value(node.id, 0), "out")
        return
    produce(b, node, 1)  # grouped: the same count kept in every group, on both sides
    b.balanced.append((b.graph.inputs_of(node.id)[0], groups))
    b.balanced.append((Value(node.id, 0), groups))


@COUPLINGS.register("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv(b: Builder, node: Node) -> None:
    """conv and conv_transpose: input channels are weight columns (rows for transposed),
    outputs a fresh space; depthwise couples each input channel with its outputs."""
    _grouped(b, node, consume(b, node, 0, 1), node.attrs["groups"])


@COUPLINGS.register("linear")
def linear(b: Builder, node: Node) -> None:
    (s, t), = b.inputs(node)
    last = t.rank - 1
    if s.axis is not None and s.axis != last:  # mixes another dim; channels pass through
        b.set_out(node, 0, s)
        return
    produce(b, node, node.types[0].rank - 1)


@COUPLINGS.register("patch_embed")
def patch_embed(b: Builder, node: Node) -> None:
    consume(b, node, 0, 1)
    produce(b, node, 2)


@COUPLINGS.register("mhsa")
def mhsa(b: Builder, node: Node) -> None:
    """Input channels are in_proj columns; heads are whole units inside the op; the output
    (out_proj rows) is a space of its own (``apply.py`` splits out_proj off when it shrinks)."""
    ins = b.inputs(node)
    consume(b, node, 0, 2)
    per_head_mask = len(ins) > 1 and ins[1][1].rank == 3
    for s, _ in ins[1:]:
        b.pin(s.ids, f"mask of {node.id}")
    heads, dim = node.attrs["heads"], node.attrs["dim"]
    hs = Space(2, np.repeat(b.fresh(heads), dim // heads))
    b.spaces[("heads", node.id)] = hs
    b.member(node, ("heads", node.id), "heads")
    if per_head_mask:
        b.pin(hs.ids, f"{node.id} has a per-head mask")
    produce(b, node, 2)


@COUPLINGS.register("groupnorm")
def groupnorm(b: Builder, node: Node) -> None:
    passthrough(on_axis(1))(b, node)
    s = b.space(Value(node.id, 0))
    g = node.attrs["groups"]
    if s.axis == 1 and 1 < g < s.size:  # groups == C is per-channel (groups follows C)
        b.balanced.append((Value(node.id, 0), g))


@COUPLINGS.register("pos_embed")
def pos_embed(b: Builder, node: Node) -> None:
    if node.attrs["kind"] != "learned":
        return b.opaque(node, f"{node.id}: a sinusoidal table depends on the channel count")
    passthrough(on_axis(2))(b, node)


# ---- elementwise joins ------------------------------------------------------------------------
@COUPLINGS.register("add", "sub", "mul", "div")
def join(b: Builder, node: Node) -> None:
    """add/sub/mul/div with broadcasting: inputs full-size along the output's channel axis
    share their channels; an input broadcast along it (size 1) is not coupled."""
    out_t = node.types[0]
    r = out_t.rank
    ins = b.inputs(node)
    cands = set()
    for s, t in ins:
        if s.axis is not None:
            a = s.axis + r - t.rank
            if t.shape[s.axis] == out_t.shape[a] and t.shape[s.axis] != 1:
                cands.add(a)
    if len(cands) != 1:
        return b.opaque(node, f"{node.op} ({node.id}) joins channels on different axes")
    a = cands.pop()
    n = out_t.shape[a]
    out_ids, pin_out = None, False
    for s, t in ins:
        k = a - (r - t.rank)
        size = t.shape[k] if k >= 0 else 1
        if s.axis is not None and s.axis == k and size == n:
            if out_ids is None:
                out_ids = s.ids
            else:
                b.union(out_ids, s.ids)
        elif size == 1:
            if s.axis is not None and t.shape[s.axis] != 1:  # its channels spread over another dim
                b.pin(s.ids, f"{node.op} ({node.id}) broadcasts channels over another axis")
        else:
            b.pin(s.ids, f"{node.op} ({node.id}) mixes channel layouts")
            pin_out = True
    if pin_out:
        b.pin(out_ids, f"{node.op} ({node.id}) mixes channel layouts")
    b.set_out(node, 0, Space(a, out_ids))


# ---- shape ops ----------------------------------------------------------------------------------
@COUPLINGS.register("concat")
def concat(b: Builder, node: Node) -> None:
    ins = b.inputs(node)
    d = normalize_dims("concat", node.attrs["dim"], node.types[0].rank)[0]
    if all(s.axis == d for s, _ in ins):  # along channels: the output lists the inputs' channels
        b.set_out(node, 0, Space(d, np.concatenate([s.ids for s, _ in ins])))
        return
    axes = {s.axis for s, _ in ins}
    if len(axes) == 1 and None not in axes and len({s.size for s, _ in ins}) == 1:
        for s, _ in ins[1:]:
            b.union(ins[0][0].ids, s.ids)
        b.set_out(node, 0, ins[0][0])
        return
    b.opaque(node, f"concat ({node.id}) joins inputs whose channels lie on different axes")


@COUPLINGS.register("split")
def split(b: Builder, node: Node) -> None:
    (s, t), = b.inputs(node)
    d = normalize_dims("split", node.attrs["dim"], t.rank)[0]
    if s.axis is None:
        return b.opaque(node)
    if s.axis != d:
        for i in range(len(node.types)):
            b.set_out(node, i, s)
        return
    start = 0
    for i, n in enumerate(split_sizes(node.attrs, t)):
        b.set_out(node, i, Space(d, s.ids[start:start + n]))
        start += n


def _blocks(ids: np.ndarray, dims: list[int], pos: int) -> np.ndarray | None:
    """Element ids of a merged dim ``prod(dims)`` whose ``pos``-th factor carries the channels."""
    total = math.prod(dims)
    if total > MAX_FLAT:
        return None
    inner = math.prod(dims[pos + 1:])
    return ids[(np.arange(total) // inner) % dims[pos]]


@COUPLINGS.register("flatten")
def flatten(b: Builder, node: Node) -> None:
    (s, t), = b.inputs(node)
    if s.axis is None:
        return b.opaque(node)
    start = normalize_dims("flatten", node.attrs["start"], t.rank)[0]
    end = normalize_dims("flatten", node.attrs["end"], t.rank)[0]
    if s.axis < start:
        return b.set_out(node, 0, s)
    if s.axis > end:
        return b.set_out(node, 0, Space(s.axis - (end - start), s.ids))
    dims = list(t.shape[start:end + 1])
    ids = _blocks(s.ids, dims, s.axis - start) if all(isinstance(x, int) for x in dims) else None
    if ids is None:
        return b.opaque(node, f"flatten ({node.id}) merges channels with symbolic or huge dims")
    b.set_out(node, 0, Space(start, ids))


@COUPLINGS.register("reshape")
def reshape(b: Builder, node: Node) -> None:
    """Kept when the dims before the channel axis are unchanged and the channel dim stays
    (or merges with static dims after it); anything else is opaque."""
    (s, t), = b.inputs(node)
    out = node.types[0].shape
    a = s.axis
    if a is None or len(out) <= a or tuple(out[:a]) != tuple(t.shape[:a]):
        return b.opaque(node, f"reshape ({node.id}) moves the channel axis")
    if out[a] == t.shape[a]:
        return b.set_out(node, 0, Space(a, s.ids))
    rest = t.shape[a:]
    for m in range(2, len(rest) + 1):
        dims = list(rest[:m])
        if all(isinstance(x, int) for x in dims) and math.prod(dims) == out[a]:
            ids = _blocks(s.ids, dims, 0)
            if ids is not None:
                return b.set_out(node, 0, Space(a, ids))
    b.opaque(node, f"reshape ({node.id}) splits the channel axis")


@COUPLINGS.register("permute")
def permute(b: Builder, node: Node) -> None:
    (s, t), = b.inputs(node)
    if s.axis is None:
        return b.opaque(node)
    dims = node.attrs["dims"]
    perm = normalize_dims("permute", (dims,) if isinstance(dims, int) else dims, t.rank)
    b.set_out(node, 0, Space(perm.index(s.axis), s.ids))


@COUPLINGS.register("transpose")
def transpose(b: Builder, node: Node) -> None:
    (s, t), = b.inputs(node)
    if s.axis is None:
        return b.opaque(node)
    d0 = normalize_dims("transpose", node.attrs["dim0"], t.rank)[0]
    d1 = normalize_dims("transpose", node.attrs["dim1"], t.rank)[0]
    axis = d1 if s.axis == d0 else d0 if s.axis == d1 else s.axis
    b.set_out(node, 0, Space(axis, s.ids))


@COUPLINGS.register("squeeze")
def squeeze(b: Builder, node: Node) -> None:
    (s, t), = b.inputs(node)
    drop = squeeze_dims(node.attrs, t)
    if s.axis is None or s.axis in drop:
        return b.opaque(node)
    b.set_out(node, 0, Space(s.axis - sum(1 for d in drop if d < s.axis), s.ids))


@COUPLINGS.register("unsqueeze")
def unsqueeze(b: Builder, node: Node) -> None:
    (s, t), = b.inputs(node)
    if s.axis is None:
        return b.opaque(node)
    d = normalize_dims("unsqueeze", node.attrs["dim"], t.rank + 1)[0]
    b.set_out(node, 0, Space(s.axis + (1 if d <= s.axis else 0), s.ids))


@COUPLINGS.register("select")
def select(b: Builder, node: Node) -> None:
    (s, t), = b.inputs(node)
    d = node.attrs["dim"] % t.rank
    if s.axis is None or s.axis == d:
        return b.opaque(node, f"select ({node.id}) picks along the channel axis")
    b.set_out(node, 0, Space(s.axis - (1 if d < s.axis else 0), s.ids))


@COUPLINGS.register("mean", "amax", "vector_norm")
def reduce(b: Builder, node: Node) -> None:
    """mean / amax / vector_norm over ``dims``: kept when the channel axis is not reduced."""
    (s, t), = b.inputs(node)
    dims = normalize_dims(node.op, node.attrs["dims"], t.rank)
    if s.axis is None or s.axis in dims:
        return b.opaque(node, f"{node.op} ({node.id}) reduces over channels")
    shift = 0 if node.attrs["keepdim"] else sum(1 for d in dims if d < s.axis)
    b.set_out(node, 0, Space(s.axis - shift, s.ids))


@COUPLINGS.register("prelu")
def prelu(b: Builder, node: Node) -> None:
    passthrough(None if node.attrs["shared"] else on_axis(1))(b, node)


@COUPLINGS.register("pixel_shuffle")
def pixel_shuffle(b: Builder, node: Node) -> None:
    (s, t), = b.inputs(node)
    r2 = node.attrs["factor"] ** 2
    if s.axis != t.rank - 3:
        return b.opaque(node)
    blocks = s.ids.reshape(-1, r2)  # output channel c <- input channels c*r^2 .. c*r^2 + r^2 - 1
    for j in range(1, r2):
        b.union(blocks[:, 0], blocks[:, j])
    b.set_out(node, 0, Space(s.axis, blocks[:, 0].copy()))


@COUPLINGS.register("pixel_unshuffle")
def pixel_unshuffle(b: Builder, node: Node) -> None:
    (s, t), = b.inputs(node)
    if s.axis != t.rank - 3:
        return b.opaque(node)
    b.set_out(node, 0, Space(s.axis, np.repeat(s.ids, node.attrs["factor"] ** 2)))


COUPLINGS.add("layernorm", passthrough())  # weight/bias follow the channel axis when it is normalized over
