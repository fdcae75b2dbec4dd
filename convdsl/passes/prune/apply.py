"""Physical removal: masks -> a smaller graph with sliced parameters.

``apply_masks`` walks the graph in topological order; for each node whose
input or output channels shrink it rewrites the channel attributes (``out``,
``groups``, ``dim``, ``heads``, split sizes, reshape targets), slices every
parameter along its channel axis (always into new arrays: the input graph's
arrays are shared by ``copy()`` and never written) and re-infers the output
types from the op table.  An op whose ``OpDef.prune`` is ``keep_channels`` has
its per-channel parameters (``params``, with their axes) sliced with the
channels; an op marked ``PRUNE_RULE`` has a rule of its own in ``APPLY``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from convdsl.errors import IRError, UsageError, did_you_mean
from convdsl.ir.graph import Graph, Node, Value
from convdsl.ir.ops import OPS
from convdsl.ir.ops.attention import mha_names
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.optable import OpDef
from convdsl.ir.verify import verify
from convdsl.passes.prune.groups import Dependencies, Key, analyze, fingerprint
from convdsl.passes.prune.spaces import RuleTable

Masks = dict[str, np.ndarray]
Removal = Callable[[Graph, "Node", "Ctx"], None]
APPLY: RuleTable[Removal] = RuleTable("pruning removal rule")


class PruneError(UsageError):
    """A mask or pruning setting that cannot be applied."""

    kind = "prune error"


class Ctx:
    """Which channels survive, looked up by the original graph's values."""

    def __init__(self, deps: Dependencies, kept: np.ndarray, graph: Graph, dry: bool = False) -> None:
        self.deps, self.kept, self.g, self.dry = deps, kept, graph, dry
        self.alias: dict[Value, Value] = {}  # nodes added by apply -> the value whose channels they carry
        self.moved: dict[Value, Value] = {}  # original value -> the added node's value that now carries it

    def keep(self, key: Key) -> np.ndarray | None:
        """Kept channel positions of ``key`` (sorted), or None when all stay."""
        key = self.alias.get(key, key)
        s = self.deps.spaces.get(key)
        if s is None or s.axis is None or not s.size:
            return None
        k = self.kept[self.deps.labels[s.ids]]
        return None if k.all() else np.flatnonzero(k)

    def axis(self, key: Key) -> int | None:
        s = self.deps.spaces.get(self.alias.get(key, key))
        return None if s is None else s.axis

    def keep_in(self, node: Node, port: int) -> np.ndarray | None:
        return self.keep(self.g.inputs_of(node.id)[port])

    def axis_in(self, node: Node, port: int) -> int | None:
        return self.axis(self.g.inputs_of(node.id)[port])

    def keep_out(self, node: Node, i: int = 0) -> np.ndarray | None:
        return self.keep(Value(node.id, i))

    def shape(self, node: Node, local: str) -> tuple[int, ...]:
        return tuple(self.g.params.specs[node.params[local]].shape)

    def array(self, node: Node, local: str) -> np.ndarray:
        return self.g.params[node.params[local]]

    def put(self, node: Node, local: str, shape: tuple[int, ...], make: Callable[[], np.ndarray]) -> None:
        """Give parameter ``local`` a new ``shape`` and the array ``make()`` builds (skipped when dry)."""
        key = node.params[local]
        if self.dry:
            self.g.params.set_spec(key, replace(self.g.params.specs[key], shape=tuple(shape)))
            return
        arr = np.ascontiguousarray(make())
        if arr.shape != tuple(shape):
            raise IRError(f"prune: {key} became {list(arr.shape)}, expected {list(shape)}", node.span)
        self.g.params[key] = arr


def kept_units(deps: Dependencies, masks: Masks) -> np.ndarray:
    """Masks -> a bool per unit; checks names, ranges, pinned units and balanced cells."""
    kept = np.ones(len(deps.unit_group), bool)
    groups = deps.by_name()
    for name, keep in masks.items():
        g = groups.get(name)
        if g is None:
            raise PruneError(f"mask for unknown group '{name}'", hint=did_you_mean(name, groups))
        keep = np.unique(np.asarray(keep, np.int64))
        if not len(keep) or keep[0] < 0 or keep[-1] >= g.size:
            raise PruneError(f"mask of group '{name}' must keep 1 to {g.size} channels in 0..{g.size - 1}",
                             got=f"{len(keep)} indices")
        k = np.zeros(g.size, bool)
        k[keep] = True
        if (g.pinned & ~k).any():
            raise PruneError(f"mask of group '{name}' removes channels that cannot change",
                             notes=g.reasons[:5])
        if g.cells is not None and not k.all():
            counts = np.bincount(g.cells, weights=k)
            if len(set(counts.tolist())) != 1:
                raise PruneError(f"mask of group '{name}' must keep the same number of channels in each "
                                 f"of its {len(counts)} blocks (grouped conv or groupnorm)")
        kept[g.units] = k
    return kept


def apply_masks(graph: Graph, masks: Masks, deps: Dependencies | None = None, *, shapes_only: bool = False) -> Graph:
    """A new graph without the channels ``masks`` drop (group name -> kept channel indices;
    groups not named keep everything).  All-keep masks give an identical copy.

    ``shapes_only=True`` rewrites attributes, types and parameter specs exactly as the full
    removal does but leaves the changed parameters unmaterialized and skips ``verify``: what
    counting MACs and params needs (the MACs search measures many candidates that way)."""
    if deps is None:
        deps = analyze(graph)
    elif deps.fingerprint != fingerprint(graph):
        raise PruneError("the dependency analysis was computed on a different graph", hint="call analyze(graph) again")
    kept = kept_units(deps, masks)
    g = graph.copy()
    if kept.all():
        return g
    ctx = Ctx(deps, kept, g, dry=shapes_only)
    for nid in graph.order():
        node = g.node(nid)
        if node.op == "input":
            continue
        keys = [*g.inputs_of(nid), *(Value(nid, i) for i in range(len(node.types))), ("heads", nid)]
        if all(ctx.keep(k) is None for k in keys):
            continue
        rule = removal_for(OPS[node.op])
        if rule is None:
            if node.params:
                raise IRError(f"prune: no removal rule for {node.op} ({nid}) although its channels change",
                              node.span)
        else:
            rule(g, node, ctx)
        node.types = list(OPS[node.op].infer(node.attrs, g.in_types(nid)))
        _check(ctx, node)
    return g if shapes_only else verify(g)


def _check(ctx: Ctx, node: Node) -> None:
    for i, t in enumerate(node.types):
        v = Value(node.id, i)
        a, keep = ctx.axis(v), ctx.keep(v)
        if v in ctx.moved:
            t = ctx.g.type_of(ctx.moved[v])
        if a is not None and keep is not None and t.shape[a] != len(keep):
            raise IRError(f"prune: {node.op} ({node.id}) gives {t} but {len(keep)} channels were kept on axis {a}",
                          node.span)


# ---- helpers ---------------------------------------------------------------------------------
def take(ctx: Ctx, node: Node, local: str, idx: np.ndarray | None, axis: int) -> None:
    """Slice parameter ``local`` of ``node`` along ``axis`` (into a new array)."""
    if idx is None or local not in node.params:
        return
    shape = list(ctx.shape(node, local))
    shape[axis] = len(idx)
    ctx.put(node, local, tuple(shape), lambda: np.take(ctx.array(node, local), idx, axis=axis))


def per_channel(params: dict[str, int]) -> Removal:
    """Ops whose parameters carry one entry per channel of input 0 (``name -> axis``)."""

    def rule(g: Graph, node: Node, ctx: Ctx) -> None:
        keep = ctx.keep_in(node, 0)
        for name, axis in params.items():
            take(ctx, node, name, keep, axis)

    return rule


def nothing(g: Graph, node: Node, ctx: Ctx) -> None:
    """Parameter-free ops whose attributes do not mention channel counts."""


def removal_for(op: OpDef) -> Removal | None:
    """How ``op``'s node changes when its channels do: its ``keep_channels`` parameters sliced, or
    its rule in ``APPLY``; None for an opaque op (its channels never change, see couplings.py)."""
    p = op.prune
    if p is None or p.kind == "opaque":
        return None
    if p.kind == "keep":
        return per_channel(dict(p.params)) if p.params else nothing
    return APPLY.get(op.name)


# ---- convolutions and linear layers ------------------------------------------------------------------
def _group_local(keep: np.ndarray, groups: int, per_group: int) -> np.ndarray:
    """Kept global channel indices -> [groups, kept per group] indices local to each group."""
    local = keep.reshape(groups, -1) - (np.arange(groups) * per_group)[:, None]
    if (local < 0).any() or (local >= per_group).any():
        raise IRError("prune: kept channels are not balanced over the conv groups")
    return local


def _grouped_weight(ctx: Ctx, node: Node, outer: np.ndarray | None, inner: np.ndarray | None, n_outer: int,
                    n_inner: int, transposed: bool) -> None:
    """Slice a conv weight [outer, inner/G, k...] (conv: outer = out, inner = in; transposed: the
    reverse) and set ``groups``: depthwise-like (G = outer... in) shrinks G, grouped keeps it."""
    G = node.attrs["groups"]
    shape = ctx.shape(node, "weight")
    k = shape[2:]
    cin = n_outer if transposed else n_inner
    rows = np.arange(n_outer) if outer is None else outer
    if G == 1:
        cols = np.arange(n_inner) if inner is None else inner
        new_shape = (len(rows), len(cols), *k)

        def make():
            return ctx.array(node, "weight")[rows][:, cols]
    elif G == cin:  # depthwise: one input channel per group, and it goes with its outputs
        node.attrs["groups"] = len(rows) if transposed else (cin if inner is None else len(inner))
        new_shape = (len(rows), shape[1], *k)

        def make():
            return ctx.array(node, "weight")[rows]
    else:  # grouped: the same count kept per group on both sides
        per = shape[1] if inner is None else len(inner) // G
        new_shape = (len(rows), per, *k)

        def make():
            w = ctx.array(node, "weight")[rows]
            if inner is None:
                return w
            local = _group_local(inner, G, n_inner // G)[rows // (n_outer // G)]
            return np.take_along_axis(w, local.reshape(*local.shape, *([1] * len(k))), axis=1)
    ctx.put(node, "weight", new_shape, make)


@APPLY.register("conv1d", "conv2d", "conv3d")
def conv(g: Graph, node: Node, ctx: Ctx) -> None:
    # weight [out, in/G, k...]; depthwise (G = in): input channel c owns outputs c*m .. c*m+m-1
    shape = ctx.shape(node, "weight")
    ki = ctx.keep_in(node, 0) if ctx.axis_in(node, 0) == 1 else None
    ko = ctx.keep_out(node)
    _grouped_weight(ctx, node, ko, ki, shape[0], shape[1] * node.attrs["groups"], transposed=False)
    take(ctx, node, "bias", ko, 0)
    node.attrs["out"] = ctx.shape(node, "weight")[0]


@APPLY.register("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv_transpose(g: Graph, node: Node, ctx: Ctx) -> None:
    # weight [in, out/G, k...]
    shape = ctx.shape(node, "weight")
    G = node.attrs["groups"]
    ki = ctx.keep_in(node, 0) if ctx.axis_in(node, 0) == 1 else None
    ko = ctx.keep_out(node)
    _grouped_weight(ctx, node, ki, ko, shape[0], shape[1] * G, transposed=True)
    take(ctx, node, "bias", ko, 0)
    node.attrs["out"] = ctx.shape(node, "weight")[1] * node.attrs["groups"]


@APPLY.register("linear")
def linear(g: Graph, node: Node, ctx: Ctx) -> None:
    t_in = g.in_types(node.id)[0]
    if ctx.axis_in(node, 0) == t_in.rank - 1:
        take(ctx, node, "weight", ctx.keep_in(node, 0), 1)
    if ctx.axis(Value(node.id, 0)) == node.types[0].rank - 1:
        ko = ctx.keep_out(node)
        take(ctx, node, "weight", ko, 0)
        take(ctx, node, "bias", ko, 0)
        if ko is not None:
            node.attrs["out"] = len(ko)


@APPLY.register("patch_embed")
def patch_embed(g: Graph, node: Node, ctx: Ctx) -> None:
    if ctx.axis_in(node, 0) == 1:
        take(ctx, node, "weight", ctx.keep_in(node, 0), 1)
    ko = ctx.keep_out(node)
    take(ctx, node, "weight", ko, 0)
    take(ctx, node, "bias", ko, 0)
    if ko is not None:
        node.attrs["dim"] = len(ko)


@APPLY.register("mhsa")
def mhsa(g: Graph, node: Node, ctx: Ctx) -> None:
    """in_proj columns follow the input; removing heads or output channels splits out_proj off:
    mhsa(heads', dim', proj_bias=false) with an identity out_proj, then linear(out') holding
    out_proj[kept outputs][:, kept head channels] -- exactly the original with those heads masked."""
    names = mha_names(node.attrs)
    if ctx.axis_in(node, 0) == 2:
        take(ctx, node, names.w, ctx.keep_in(node, 0), 1)
    kh, ko = ctx.keep(("heads", node.id)), ctx.keep_out(node)
    if kh is None and ko is None:
        return
    dim, hd = node.attrs["dim"], node.attrs["dim"] // node.attrs["heads"]
    kh = np.arange(dim) if kh is None else kh
    ko = np.arange(dim) if ko is None else ko
    rows = np.concatenate([kh, dim + kh, 2 * dim + kh])
    take(ctx, node, names.w, rows, 0)
    take(ctx, node, names.b, rows, 0)
    take(ctx, node, "relative_position_bias_table", kh[::hd] // hd, 1)
    has_bias = names.out_b in node.params
    w_old = None if ctx.dry else ctx.array(node, names.out_w)
    b_old = None if ctx.dry or not has_bias else ctx.array(node, names.out_b)
    ctx.put(node, names.out_w, (len(kh), len(kh)), lambda: np.eye(len(kh), dtype=np.float32))
    if has_bias:
        g.params.remove(node.params.pop(names.out_b))
    node.attrs.update(heads=len(kh) // hd, dim=len(kh), proj_bias=False)
    node.types = list(OPS["mhsa"].infer(node.attrs, g.in_types(node.id)))

    lid = g.unique_id(f"{node.id}_proj")
    attrs = {"out": len(ko), "bias": has_bias}
    specs = OPS["linear"].param_specs(attrs, node.types)
    params = {local: f"{lid}.{local}" for local in specs}
    g.add_node(lid, "linear", [], attrs, OPS["linear"].infer(attrs, node.types), params=params, span=node.span,
               scope=node.scope, block=node.block)
    lin = g.node(lid)
    for local, spec in specs.items():
        g.params.declare(params[local], spec)
    ctx.put(lin, "weight", (len(ko), len(kh)), lambda: w_old[ko][:, kh])
    if has_bias:
        ctx.put(lin, "bias", (len(ko),), lambda: b_old[ko])
    g.replace_uses(Value(node.id, 0), Value(lid, 0))
    g.set_inputs(lid, [Value(node.id, 0)])
    ctx.alias[Value(lid, 0)] = Value(node.id, 0)
    ctx.moved[Value(node.id, 0)] = Value(lid, 0)


# ---- normalization and per-channel ops ------------------------------------------------------------
@APPLY.register("groupnorm")
def groupnorm(g: Graph, node: Node, ctx: Ctx) -> None:
    keep = ctx.keep_in(node, 0)
    c = ctx.deps.spaces[g.inputs_of(node.id)[0]].size
    if node.attrs["groups"] == c:  # one channel per group: groups follows the channel count
        node.attrs["groups"] = len(keep)
    per_channel({"weight": 0, "bias": 0})(g, node, ctx)


@APPLY.register("layernorm")
def layernorm(g: Graph, node: Node, ctx: Ctx) -> None:
    t = g.in_types(node.id)[0]
    a, d = ctx.axis_in(node, 0), node.attrs["dims"]
    if a is not None and a >= t.rank - d:
        keep = ctx.keep_in(node, 0)
        take(ctx, node, "weight", keep, a - (t.rank - d))
        take(ctx, node, "bias", keep, a - (t.rank - d))


@APPLY.register("split")
def split(g: Graph, node: Node, ctx: Ctx) -> None:
    x = g.inputs_of(node.id)[0]
    keep = ctx.keep(x)
    d = normalize_dims("split", node.attrs["dim"], g.type_of(x).rank)[0]
    if keep is None or ctx.axis(x) != d:
        return
    old = [ctx.deps.spaces[Value(node.id, i)].size for i in range(len(node.types))]
    bounds = np.cumsum([0, *old])
    new = [int(((keep >= lo) & (keep < hi)).sum()) for lo, hi in zip(bounds[:-1], bounds[1:])]
    if node.attrs["chunks"] is not None and len(set(new)) == 1:
        return
    node.attrs.update(sizes=tuple(new), chunks=None)


@APPLY.register("reshape")
def reshape(g: Graph, node: Node, ctx: Ctx) -> None:
    x = g.inputs_of(node.id)[0]
    keep, a = ctx.keep(x), ctx.axis(x)
    spec = node.attrs["shape"]
    spec = [spec] if isinstance(spec, int) else list(spec)
    if keep is None or a is None or spec[a] in (0, -1):
        return
    c_old = ctx.deps.spaces[x].size
    spec[a] = spec[a] // c_old * len(keep)
    node.attrs["shape"] = tuple(spec)


APPLY.add("pos_embed", per_channel({"pos_embedding": 2}))
APPLY.add("prelu", lambda g, node, ctx: None if node.attrs["shared"] else per_channel({"weight": 0})(g, node, ctx))
for _op in ("add", "sub", "mul", "div", "mean", "amax", "vector_norm", "concat", "flatten", "permute", "transpose",
            "squeeze", "unsqueeze", "select", "pixel_shuffle", "pixel_unshuffle"):
    APPLY.add(_op, nothing)  # parameter-free, and no attribute counts channels
