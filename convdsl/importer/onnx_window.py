"""Window attention in an ONNX file -> ``window_attention``: torchvision's ShiftedWindowAttentionV2 as
torch.onnx writes it, and convdsl's own export of window_attention (V1 and V2), which writes the same form.

torch.onnx writes the module as some 900 nodes under its name scope (``/features/features.1/
features.1.0/attn/...``): its continuous position bias MLP on the constant ``relative_coords_table``,
the shift mask built from sizes, the padding and shift arithmetic, and the attention itself.  Op for op
the cpb MLP would fold into a constant and lose its parameters; so the scope is imported whole.  It is
found by its anchor (a ``MatMul`` of a constant by ``Transpose(<attn>.cpb_mlp.0.weight)`` in a node named
``.../cpb_mlp/cpb_mlp.0/MatMul``), or, for convdsl's export, by the nodes' doc strings (``convdsl
window_attention {"window": [wh, ww], "shift": ..., "qkv": ..., "proj": ...}``: V1's window size, the
projection names and the training-only dropouts, which the nodes do not hold), and checked exactly:

- the scope reads one computed tensor x [N, H, W, C] and one tensor of it is read outside;
- every size computation in it is evaluated (``onnx_shapes``) with x's shape, the batch a fixed
  stand-in number so that a size that does not follow the batch shows;
- the nodes that compute with x or with a parameter (the *data* nodes) must be exactly the sequence of
  torchvision's ``shifted_window_attention`` (pad, cyclic shift, window partition, q/k/v with V2's key
  bias zeroed by ScatterND, q times the scale or V2's F.normalize and clamped logit scale, the bias
  table gathered by the index (V2: 16 sigmoid of the cpb MLP's), the shift mask, softmax, projection,
  back), each with the sizes, permutations, axes and constants window_attention computes with: the
  coordinates table equal to ``relative_coords_table`` and the index to ``relative_position_index``
  element for element, the mask to the shifted-window mask, the clamp to float32 log 100, F.normalize's
  eps 1e-12; every data node of the scope is one of them;
- the parameters are under ``<attn>.<local>``: torchvision's keys, and convdsl's.

A recorded value is used only where the nodes agree with it (a recorded shift the rolls do not compute
is replaced by the one they do).  Anything else is a located error naming the scope and the first thing
that differs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convdsl.importer.onnx_shapes import FOLDABLE, Dims, attr_value, evaluate, fold, lift
from convdsl.ir.ops.attention import relative_coords_table, relative_position_index, shift_mask

ANCHOR = "cpb_mlp/cpb_mlp.0/MatMul"
INT64_MAX = 2 ** 63 - 1


class NoMatch(Exception):
    """The scope is not the exact form (the message says what differs)."""


@dataclass
class Scope:
    prefix: str  # node-name prefix, ``/features/features.1/features.1.0/attn/``
    nid: str  # the module path and key prefix, ``features.1.0.attn``
    anchor: Any  # the cpb MLP's first MatMul
    nodes: list  # every node of the scope, in graph order
    last: Any = None  # the scope's last node (the op is added there)
    output: str | None = None  # the one value read outside
    record: dict | None = None  # convdsl's export: the attributes its doc strings record (else torchvision's)


def find_scopes(graph, env: dict) -> list[Scope]:
    """The ShiftedWindowAttentionV2 scopes of a torch.onnx graph, found by their anchor."""
    every = list(graph.node)
    producer = {o: n for n in every for o in n.output}
    out = []
    for mm in every:
        if mm.op_type != "MatMul" or not mm.name.endswith("/" + ANCHOR) or len(mm.input) != 2:
            continue
        tw = producer.get(mm.input[1])
        w = env.get(tw.input[0]) if tw is not None and tw.op_type == "Transpose" and tw.input else None
        key = getattr(w, "key", None) or ""
        table = mm.input[0]
        while table in producer and producer[table].op_type == "Identity":  # torch.onnx's shared initializers
            table = producer[table].input[0]
        if not key.endswith(".cpb_mlp.0.weight") or not hasattr(env.get(table), "array"):
            continue
        prefix = mm.name[: -len(ANCHOR)]
        out.append(_scope(every, producer, prefix, key[: -len(".cpb_mlp.0.weight")], mm))
    # convdsl's own export: nodes named <id>/<Op>, their doc strings ``convdsl window_attention {...}``
    from convdsl.importer.onnx_patterns import written

    firsts: dict[str, Any] = {}
    for n in every:
        op, rec = written(n)
        if op == "window_attention" and "/" in n.name and n.name.rsplit("/", 1)[0] not in firsts:
            firsts[n.name.rsplit("/", 1)[0]] = (n, rec)
    for nid, (n, rec) in firsts.items():
        # the scope is the op's own nodes: the graph output's Identity is named <output>/Identity, which is
        # this prefix when the network returns the attention under its label (`... as attn`)
        sc = _scope(every, producer, nid + "/", nid, n, keep=lambda m: written(m)[0] == "window_attention")
        sc.record = rec
        out.append(sc)
    return out


def _scope(every: list, producer: dict, prefix: str, nid: str, anchor, keep=None) -> Scope:
    """The nodes named under ``prefix`` (and passing ``keep``), and the nodes between two of them: torch.onnx
    writes some of the shift mask's in-place slice assignments without the module's scope (``Shape_1640``),
    read by it."""
    where = {id(n): k for k, n in enumerate(every)}
    named = [k for k, n in enumerate(every) if n.name.startswith(prefix) and (keep is None or keep(n))]
    first, last = named[0], named[-1]
    inside = set(named)
    made = {o for k in named for o in every[k].output}
    after: set[int] = set()  # nodes between first and last reading (transitively) a value of the scope
    values = set(made)
    for k in range(first, last + 1):
        if k not in inside and any(i in values for i in every[k].input):
            after.add(k)
            values.update(every[k].output)
    before: set[int] = set()  # ... and that a node of the scope reads (transitively)
    stack = [i for k in named for i in every[k].input]
    while stack:
        p = producer.get(stack.pop())
        k = where.get(id(p)) if p is not None else None
        if k is None or k in inside or k in before or not first < k < last:
            continue
        before.add(k)
        stack.extend(p.input)
    nodes = [every[k] for k in sorted(inside | (after & before))]
    return Scope(prefix, nid, anchor, nodes, nodes[-1])


@dataclass
class Ghost:
    """A data value while the scope is checked: its shape (static; the batch a stand-in) and type."""

    shape: tuple
    elem: int = 1


@dataclass
class Checked:
    """A match: the op's input (an ONNX value name), attributes and parameters (local name -> Const)."""

    x: str
    attrs: dict
    params: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)  # sizes computed in the module that nodes after it read


BATCH = 9973  # the batch while sizes are evaluated: a prime no size of the model is likely to equal


class _Walk:
    def __init__(self, scope: Scope, graph, env: dict, consumers: dict, x: str, x_shape: tuple, opsets) -> None:
        self.s, self.env, self.opsets = scope, env, opsets
        self.ids = {id(n) for n in scope.nodes}
        self.consumers = consumers
        self.outside = {o.name for o in graph.output}
        self.val: dict[str, Any] = {x: Ghost(tuple(x_shape))}
        self.data: list = []  # the data nodes, in graph order
        self.seen: set[int] = set()  # data nodes the walk accounted for
        self.x = x
        self.producer = {o: n for n in scope.nodes for o in n.output}
        self._evaluate()
        self.data_ids = {id(n) for n in self.data}

    # ---- values ------------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        if not name:
            return None
        if name in self.val:
            return self.val[name]
        v = self.env.get(name)
        if hasattr(v, "array"):
            return v
        if isinstance(v, Dims):
            s = lift(v)
            if isinstance(s, Dims):
                raise NoMatch(f"{name} is a size that depends on the batch, computed outside the module")
            return s
        raise NoMatch(f"the module reads {name}, a tensor computed outside it other than its input")

    @staticmethod
    def _param(v: Any) -> bool:
        return hasattr(v, "array") and bool(getattr(v, "key", None)) and v.array.dtype.kind in "fc"

    def _evaluate(self) -> None:
        """Every size node evaluated (arrays), every data node given its output shape (Ghost)."""
        for node in self.s.nodes:
            if node.op_type == "Constant":
                continue
            ins = [self.get(i) for i in node.input]
            attrs = {a.name: attr_value(a) for a in node.attribute}
            ghosts = {k: v for k, v in enumerate(ins) if isinstance(v, Ghost)}
            if node.op_type in ("Shape", "Size"):
                out = fold(node.op_type, attrs, [None if isinstance(v, Ghost) else _array(v) for v in ins],
                           {k: g.shape for k, g in ghosts.items()})
                self.val[node.output[0]] = _static(out)
                continue
            if ghosts or any(self._param(v) for v in ins):
                self.data.append(node)
                for o, g in zip(node.output, self._infer(node, ins)):
                    self.val[o] = g
                continue
            arrays = [_array(v) for v in ins]
            try:
                if node.op_type in FOLDABLE:
                    outs = [_static(fold(node.op_type, attrs, arrays, {}))]
                else:
                    outs = evaluate(node, arrays, self.opsets)
            except ValueError as e:
                raise NoMatch(f"{node.op_type} node {node.name} cannot be evaluated ({e})") from None
            for o, v in zip(node.output, outs):
                self.val[o] = np.asarray(v)

    def _infer(self, node, ins: list) -> list[Ghost]:
        from onnx import defs, helper, numpy_helper, shape_inference

        opset = next((o.version for o in self.opsets if o.domain in ("", "ai.onnx")), 17)
        types, data = {}, {}
        for name, v in zip(node.input, ins):
            if not name:
                continue
            if isinstance(v, Ghost):
                types[name] = helper.make_tensor_type_proto(v.elem, list(v.shape))
            else:
                a = _array(v)
                types[name] = helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
                if a.dtype.kind in "iu":
                    data[name] = numpy_helper.from_array(a)
        try:
            schema = defs.get_schema(node.op_type, opset, "")
            got = shape_inference.infer_node_outputs(schema, node, types, data)
        except Exception as e:  # onnx raises its own kinds
            raise NoMatch(f"{node.op_type} node {node.name}: no static output shape ({str(e)[:120]})") from None
        out = []
        for o in node.output:
            t = got.get(o)
            dims = t.tensor_type.shape.dim if t is not None else None
            if dims is None or not all(d.HasField("dim_value") for d in dims):
                raise NoMatch(f"{node.op_type} node {node.name}: no static output shape")
            out.append(Ghost(tuple(int(d.dim_value) for d in dims), t.tensor_type.elem_type))
        return out

    # ---- the walk ----------------------------------------------------------------------------
    def readers(self, name: str) -> list:
        """The data nodes reading ``name`` (Shape / Size nodes read only its shape)."""
        users = self.consumers.get(name, [])
        if name == self.x:  # the input: the block reads it too (the residual)
            users = [u for u in users if id(u) in self.ids]
        for u in users:
            if id(u) not in self.ids:
                raise NoMatch(f"{name} is read outside the module ({u.name})")
        if name in self.outside:
            raise NoMatch(f"{name} is a graph output inside the module")
        return [u for u in users if u.op_type not in ("Shape", "Size")]

    def next(self, name: str, op: str, n: int = 1):
        users = self.readers(name)
        if len(users) != n or any(u.op_type != op for u in users):
            got = ", ".join(f"{u.op_type} {u.name}" for u in users) or "nothing"
            raise NoMatch(f"{name} should be read by {n} {op} node(s), not {got}")
        for u in users:
            self.seen.add(id(u))
        return users[0] if n == 1 else users

    def made(self, name: str, op: str):
        """The data node of type ``op`` computing ``name``, read by one data node (a side branch: the cpb
        MLP, the logit scale, the bias)."""
        n = self.producer.get(name)
        if n is None or n.op_type != op or id(n) not in self.data_ids:
            raise NoMatch(f"{name} should be computed by {op}, not {n.op_type if n is not None else 'a constant'}")
        if len(self.readers(name)) != 1:
            raise NoMatch(f"{name} should be read once")
        self.seen.add(id(n))
        return n

    def const(self, name: str) -> np.ndarray:
        """A constant: a size evaluated here, a Constant node, or an initializer that is no parameter
        (named as exporters name constants: ``<id>/const``, ``onnx::Mul_12``; a parameter's key has
        neither, and a parameter read as a number would be lost)."""
        v = self.get(name)
        key = getattr(v, "key", None) or ""
        if isinstance(v, Ghost) or v is None or (key and "/" not in key and "::" not in key
                                                 and not key.endswith((".relative_coords_table",
                                                                       ".relative_position_index"))):
            raise NoMatch(f"{name} should be a constant")
        return _array(v)

    def ints(self, name: str) -> list[int]:
        a = self.const(name)
        if a.dtype.kind not in "iu":
            raise NoMatch(f"{name} should be integers, not {a.dtype}")
        return [int(i) for i in a.reshape(-1)]

    def param(self, name: str, local: str):
        v = self.get(name)
        key = f"{self.s.nid}.{local}"
        if not self._param(v) or v.key != key:
            raise NoMatch(f"{name} should be the parameter {key}, not {getattr(v, 'key', None) or 'a computed value'}")
        return v

    def shape(self, name: str) -> tuple:
        v = self.get(name)
        return v.shape if isinstance(v, Ghost) else tuple(_array(v).shape)

    def other(self, node, name: str) -> str:
        """The input of a binary node that is not ``name``."""
        if list(node.input).count(name) != 1 or len(node.input) != 2:
            raise NoMatch(f"{node.name} should read {name} once, with one other input")
        return node.input[1] if node.input[0] == name else node.input[0]


def _array(v: Any) -> np.ndarray:
    return np.asarray(v.array if hasattr(v, "array") else v)


def _static(v: Any) -> np.ndarray:
    v = lift(v)
    if isinstance(v, Dims):
        raise NoMatch(f"a size of the module is not static ({v})")
    return np.asarray(v)


def _attr_of(node, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return attr_value(a)
    return default


# ---- torchvision's shifted_window_attention, node by node --------------------------------------------
def _reshape(w: _Walk, name: str, target: list[int]) -> str:
    rs = w.next(name, "Reshape")
    got = w.ints(rs.input[1])
    have = w.shape(name)
    copied = [k < len(have) and g == 0 and have[k] == t for k, (g, t) in enumerate(zip(got, target))]
    if w.shape(rs.output[0]) != tuple(target) or _attr_of(rs, "allowzero", 0) \
            or any(g not in (t, -1) and not cp for g, t, cp in zip(got, target, copied)) \
            or len(got) != len(target) or got.count(-1) > 1:
        raise NoMatch(f"{rs.name} should reshape to {target}, not {got}")
    return rs.output[0]


def _transpose(w: _Walk, name: str, perm: list[int]) -> str:
    tr = w.next(name, "Transpose")
    if list(_attr_of(tr, "perm", [])) != perm:
        raise NoMatch(f"{tr.name} should permute {perm}, not {list(_attr_of(tr, 'perm', []))}")
    return tr.output[0]


def _slice(w: _Walk, sl) -> tuple[int, int, int]:
    """A Slice on one axis with step 1: (axis, start, end) with start/end clamped into the axis."""
    ins = list(sl.input) + [""] * (5 - len(sl.input))
    axes = w.ints(ins[3]) if ins[3] else None
    steps = w.ints(ins[4]) if ins[4] else [1]
    starts, ends = w.ints(ins[1]), w.ints(ins[2])
    shape = w.shape(sl.input[0])
    if axes is None or len(axes) != 1 or len(starts) != 1 or len(ends) != 1 or steps != [1]:
        raise NoMatch(f"{sl.name} should slice one axis with step 1")
    axis = axes[0] % len(shape)
    size = shape[axis]

    def clamp(i: int) -> int:
        return min(max(i + size if i < 0 else i, 0), size)

    return axis, clamp(starts[0]), clamp(ends[0])


def _roll(w: _Walk, name: str, shape: tuple) -> tuple[str, dict[int, int]]:
    """torch.roll as torch.onnx writes it, Concat(Slice(x, a:), Slice(x, :a)) per axis: the value after
    the rolls and {axis: shift} (torch.roll's shift, modulo the size)."""
    shifts: dict[int, int] = {}
    while name != w.s.output:
        users = w.readers(name)
        if len(users) != 2 or any(u.op_type != "Slice" for u in users):
            return name, shifts
        parts = [_slice(w, u) for u in users]
        cat = [w.consumers.get(u.output[0], []) for u in users]
        if any(len(c) != 1 or c[0].op_type != "Concat" for c in cat) or cat[0][0] is not cat[1][0]:
            return name, shifts
        concat = cat[0][0]
        first = next((p for u, p in zip(users, parts) if u.output[0] == concat.input[0]), None)
        second = next((p for u, p in zip(users, parts) if u.output[0] == concat.input[1]), None)
        if first is None or second is None or len(concat.input) != 2:
            raise NoMatch(f"{concat.name} should join the two slices of a roll")
        axis, a, end = first
        size = shape[axis]
        if second != (axis, 0, a) or end != size or _attr_of(concat, "axis") % len(shape) != axis or axis in shifts:
            raise NoMatch(f"{concat.name} should be a roll: x[a:] then x[:a] along one axis")
        w.seen.update({id(users[0]), id(users[1]), id(concat)})
        shifts[axis] = (-a) % size
        name = concat.output[0]
    return name, shifts


def _normalize(w: _Walk, name: str) -> str:
    """F.normalize(t, dim=-1) as torch.onnx writes it: t / Expand(Clip(ReduceL2(t, -1), min=1e-12))."""
    users = w.readers(name)
    red = next((u for u in users if u.op_type == "ReduceL2"), None)
    div = next((u for u in users if u.op_type == "Div"), None)
    if len(users) != 2 or red is None or div is None or div.input[0] != name:
        raise NoMatch(f"{name} should be normalized (ReduceL2 and Div), read by "
                      f"{', '.join(u.op_type for u in users)}")
    rank = len(w.shape(name))
    axes = list(_attr_of(red, "axes", [])) or (w.ints(red.input[1]) if len(red.input) > 1 and red.input[1] else [])
    if [a % rank for a in axes] != [rank - 1] or _attr_of(red, "keepdims", 1) != 1:
        raise NoMatch(f"{red.name} should be the L2 norm over the last dim, kept")
    w.seen.update({id(red), id(div)})
    clip = w.next(red.output[0], "Clip")
    lo = w.const(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else None
    if lo is None or lo.size != 1 or np.float32(lo.reshape(-1)[0]) != np.float32(1e-12) \
            or (len(clip.input) > 2 and clip.input[2]):
        raise NoMatch(f"{clip.name} should be F.normalize's max(norm, 1e-12)")
    denom = clip.output[0]
    users = w.readers(denom)
    if len(users) == 1 and users[0].op_type == "Expand":
        ex = w.next(denom, "Expand")
        if tuple(w.ints(ex.input[1])) != w.shape(name):
            raise NoMatch(f"{ex.name} should expand the norm to {list(w.shape(name))}")
        denom = ex.output[0]
    if div.input[1] != denom:
        raise NoMatch(f"{div.name} should divide {name} by its norm")
    return div.output[0]


def _table_bias(w: _Walk, name: str, wh: int, ww: int, heads: int) -> str:
    """``name`` = table[index].view(T, T, -1).permute(2, 0, 1).unsqueeze(0) with the relative position index
    of a wh x ww window (checked exactly): the gathered table's value name."""
    t = wh * ww
    un = w.made(name, "Unsqueeze")
    if (w.ints(un.input[1]) if len(un.input) > 1 else list(_attr_of(un, "axes", []))) != [0]:
        raise NoMatch(f"{un.name} should unsqueeze dim 0")
    tr = w.made(un.input[0], "Transpose")
    rs = w.made(tr.input[0], "Reshape")
    ga = w.made(rs.input[0], "Gather")
    if list(_attr_of(tr, "perm", [])) != [2, 0, 1] or w.shape(rs.output[0]) != (t, t, heads) \
            or w.shape(ga.input[0]) != ((2 * wh - 1) * (2 * ww - 1), heads) or _attr_of(ga, "axis", 0) != 0:
        raise NoMatch(f"{ga.name}: the bias table should be gathered by the relative position index into "
                      f"[{t}, {t}, {heads}] and permuted to [heads, T, T]")
    index = w.const(ga.input[1])
    want = np.asarray(relative_position_index(wh, ww)).reshape(-1)
    if index.dtype.kind not in "iu" or index.shape != want.shape or not np.array_equal(index, want):
        raise NoMatch(f"{ga.name}: the index is not the relative position index of a {wh}x{ww} window")
    return ga.input[0]


def _cpb_bias(w: _Walk, name: str, wh: int, ww: int, heads: int) -> dict:
    """``name`` = 16 sigmoid(cpb_mlp(coords).view(-1, heads)[index]...) (SwinV2's); the MLP's parameters
    (checked: the coordinates exactly)."""
    mul = w.made(name, "Mul")
    sig = None
    for i in (0, 1):
        v = w.get(mul.input[1 - i])
        if not isinstance(v, Ghost) and _array(v).size == 1 and float(_array(v).reshape(-1)[0]) == 16.0:
            sig = w.made(mul.input[i], "Sigmoid")
    if sig is None:
        raise NoMatch(f"{mul.name} should be 16 * sigmoid(...)")
    table = _table_bias(w, sig.input[0], wh, ww, heads)
    rs0 = w.made(table, "Reshape")
    if w.shape(rs0.input[0]) != (1, 2 * wh - 1, 2 * ww - 1, heads):
        raise NoMatch(f"{rs0.name} should read the cpb MLP's [1, {2 * wh - 1}, {2 * ww - 1}, {heads}]")
    mm2 = w.made(rs0.input[0], "MatMul")
    w2 = w.param(w.made(mm2.input[1], "Transpose").input[0], "cpb_mlp.2.weight")
    relu = w.made(mm2.input[0], "Relu")
    add = w.made(relu.input[0], "Add")
    mm1 = next((w.made(i, "MatMul") for i in add.input if isinstance(w.get(i), Ghost)), None)
    if mm1 is None:
        raise NoMatch(f"{add.name} should add the cpb MLP's first bias")
    b1 = w.param(w.other(add, mm1.output[0]), "cpb_mlp.0.bias")
    w1 = w.param(w.made(mm1.input[1], "Transpose").input[0], "cpb_mlp.0.weight")
    coords = _array(w.get(mm1.input[0]))
    want = relative_coords_table(wh, ww)
    if coords.shape != want.shape or coords.dtype != want.dtype or not np.array_equal(coords, want):
        raise NoMatch(f"{mm1.name}: the cpb MLP's input is not SwinV2's relative coordinates table of a "
                      f"{wh}x{ww} window")
    for tw in (w.made(mm2.input[1], "Transpose"), w.made(mm1.input[1], "Transpose")):
        if list(_attr_of(tw, "perm", [1, 0])) != [1, 0]:
            raise NoMatch(f"{tw.name} should transpose the weight")
    if w1.array.shape[1] != 2 or b1.array.shape != w1.array.shape[:1] or w2.array.shape != (heads, w1.array.shape[0]):
        raise NoMatch("the cpb MLP should be Linear(2, hidden) - ReLU - Linear(hidden, heads, bias=False)")
    return {"cpb_mlp.0.weight": w1, "cpb_mlp.0.bias": b1, "cpb_mlp.2.weight": w2}


def _window(w: _Walk) -> tuple[bool, int, int, int]:
    """(v2, wh, ww, heads): V2 from its coordinates table (the cpb MLP's input) and logit_scale; V1 (only
    convdsl's export, which records the window) from the record and the bias table's shape."""
    s, rec = w.s, w.s.record
    logit = w.env.get(s.nid + ".logit_scale")
    if logit is not None:
        logit = w.param(s.nid + ".logit_scale", "logit_scale")
        if logit.array.ndim != 3 or logit.array.shape[1:] != (1, 1):
            raise NoMatch(f"{s.nid}.logit_scale should be [heads, 1, 1]")
        coords = next((w.get(n.input[0]) for n in w.data if n.op_type == "MatMul" and n.input[1] in w.producer
                       and w.producer[n.input[1]].op_type == "Transpose"
                       and w.producer[n.input[1]].input[0] == s.nid + ".cpb_mlp.0.weight"), None)
        coords = _array(coords) if coords is not None and not isinstance(coords, Ghost) else np.zeros(0)
        if coords.ndim != 4 or coords.shape[0] != 1 or coords.shape[3] != 2 or min(coords.shape[1:3]) < 3 \
                or coords.shape[1] % 2 == 0 or coords.shape[2] % 2 == 0:
            raise NoMatch("the cpb MLP's input should be a [1, 2wh-1, 2ww-1, 2] table")
        return True, (coords.shape[1] + 1) // 2, (coords.shape[2] + 1) // 2, int(logit.array.shape[0])
    win = rec.get("window") if rec is not None else None
    table = w.env.get(s.nid + ".relative_position_bias_table")
    if not (isinstance(win, list) and len(win) == 2 and all(type(i) is int and i > 0 for i in win)) \
            or table is None or getattr(table, "array", np.zeros(0)).ndim != 2:
        raise NoMatch("no window size: neither SwinV2's coordinates table nor convdsl's record and bias table")
    wh, ww = win
    if table.array.shape[0] != (2 * wh - 1) * (2 * ww - 1):
        raise NoMatch(f"{table.key} should have {(2 * wh - 1) * (2 * ww - 1)} rows for a {wh}x{ww} window")
    return False, wh, ww, int(table.array.shape[1])


def check(w: _Walk) -> Checked:
    """The walk over torchvision's shifted_window_attention (with logit_scale and cpb_mlp: V2), node by node."""
    s, rec = w.s, w.s.record or {}
    b, h, wd, c = w.shape(w.x)
    v2, wh, ww, heads = _window(w)
    qkv_name, proj_name = rec.get("qkv", "qkv"), rec.get("proj", "proj")
    if not all(isinstance(n, str) and n.isidentifier() for n in (qkv_name, proj_name)):
        raise NoMatch("the recorded projection names are no identifiers")
    if c % heads:
        raise NoMatch(f"{c} channels do not split into {heads} heads")
    d, t = c // heads, wh * ww
    # pad to whole windows
    ph, pw = (wh - h % wh) % wh, (ww - wd % ww) % ww
    hp, wp = h + ph, wd + pw
    cur = w.x
    users = w.readers(cur)
    if len(users) == 1 and users[0].op_type == "Pad":
        pad = w.next(cur, "Pad")
        pads = w.ints(pad.input[1]) if len(pad.input) > 1 else list(_attr_of(pad, "pads", []))
        fill = w.const(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        if pads != [0, 0, 0, 0, 0, ph, pw, 0] or _attr_of(pad, "mode", "constant") != "constant" \
                or np.any(fill != 0) or len(pad.input) > 3 and pad.input[3]:
            raise NoMatch(f"{pad.name} should zero-pad H, W to multiples of the window: "
                          f"[0, 0, 0, 0, 0, {ph}, {pw}, 0], not {pads}")
        cur = pad.output[0]
    elif ph or pw:
        raise NoMatch(f"the input [{h}, {wd}] should be padded to whole {wh}x{ww} windows")
    cur, rolls = _roll(w, cur, (b, hp, wp, c))
    sh, sw = rolls.get(1, 0), rolls.get(2, 0)
    if set(rolls) - {1, 2}:
        raise NoMatch("the cyclic shift should roll H and W only")
    sh, sw = (hp - sh) % hp, (wp - sw) % wp  # torchvision rolls by -shift
    if sh >= wh or sw >= ww or (sh and wh >= hp) or (sw and ww >= wp):
        raise NoMatch(f"a shift of {[sh, sw]} is no Swin shift of a {wh}x{ww} window over [{hp}, {wp}]")
    shifted = bool(sh or sw)
    nh, nw = hp // wh, wp // ww
    nwin = nh * nw
    cur = _reshape(w, cur, [b, nh, wh, nw, ww, c])
    cur = _transpose(w, cur, [0, 1, 3, 2, 4, 5])
    cur = _reshape(w, cur, [b * nwin, t, c])
    # q, k, v (V2: the key's third of the bias zeroed)
    params: dict[str, Any] = {}
    mm = w.next(cur, "MatMul")
    if mm.input[0] != cur:
        raise NoMatch(f"{mm.name} should multiply the windows by the qkv weight")
    params[f"{qkv_name}.weight"] = w.param(w.made(mm.input[1], "Transpose").input[0], f"{qkv_name}.weight")
    if params[f"{qkv_name}.weight"].array.shape != (3 * c, c):
        raise NoMatch(f"{qkv_name}.weight should be [{3 * c}, {c}]")
    cur = mm.output[0]
    users = w.readers(cur)
    qkv_bias = len(users) == 1 and users[0].op_type == "Add"
    if qkv_bias:
        add = w.next(cur, "Add")
        bias = w.other(add, cur)
        if v2:
            sc = w.made(bias, "ScatterND")
            idx, upd = w.const(sc.input[1]), w.const(sc.input[2])
            if idx.shape != (c, 1) or not np.array_equal(idx.reshape(-1), np.arange(c, 2 * c)) \
                    or upd.shape != (c,) or np.any(upd != 0) or _attr_of(sc, "reduction", "none") != "none":
                raise NoMatch(f"{sc.name} should zero the key's third of the q/k/v bias")
            bias = sc.input[0]
        params[f"{qkv_name}.bias"] = w.param(bias, f"{qkv_name}.bias")
        cur = add.output[0]
    cur = _reshape(w, cur, [b * nwin, t, 3, heads, d])
    cur = _transpose(w, cur, [2, 0, 3, 1, 4])
    parts = w.next(cur, "Gather", 3)
    qkv = {}
    for g in parts:
        i = w.ints(g.input[1])
        if len(i) != 1 or w.const(g.input[1]).ndim != 0 or _attr_of(g, "axis", 0) != 0 or i[0] in qkv:
            raise NoMatch(f"{g.name} should take q, k or v (a scalar index on axis 0)")
        qkv[i[0]] = g.output[0]
    if sorted(qkv) != [0, 1, 2]:
        raise NoMatch("q, k and v should be parts 0, 1, 2")
    scale = None
    if v2:
        q, k, v = _normalize(w, qkv[0]), _normalize(w, qkv[1]), qkv[2]
    else:  # q * scale
        q, k, v = qkv[0], qkv[1], qkv[2]
        mul = w.next(q, "Mul")
        f = w.const(w.other(mul, q))
        if f.size != 1 or f.dtype != np.float32:
            raise NoMatch(f"{mul.name} should scale q by a float32 number")
        f = np.float32(f.reshape(-1)[0])
        said = rec.get("scale")
        if type(said) in (int, float) and np.float32(said) == f:
            scale = float(said)
        elif f != np.float32(d ** -0.5):
            scale = float(str(f))
        q = mul.output[0]
    kt = _transpose(w, k, [0, 1, 3, 2])
    logits = w.next(q, "MatMul")
    if list(logits.input) != [q, kt] or w.readers(kt) != [logits]:
        raise NoMatch(f"{logits.name} should be q times k transposed")
    cur = logits.output[0]
    if v2:  # times exp(min(logit_scale, log 100))
        mul = w.next(cur, "Mul")
        ex = w.made(w.other(mul, cur), "Exp")
        clip = w.made(ex.input[0], "Clip")
        hi = w.const(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
        if clip.input[0] != s.nid + ".logit_scale" or (len(clip.input) > 1 and clip.input[1]) or hi is None \
                or hi.size != 1 or np.float32(hi.reshape(-1)[0]) != np.float32(math.log(100.0)):
            raise NoMatch(f"{clip.name} should clamp logit_scale at log 100")
        params["logit_scale"] = w.param(clip.input[0], "logit_scale")
        cur = mul.output[0]
    # + the position bias
    add = w.next(cur, "Add")
    if v2:
        params.update(_cpb_bias(w, w.other(add, cur), wh, ww, heads))
    else:
        table = _table_bias(w, w.other(add, cur), wh, ww, heads)
        params["relative_position_bias_table"] = w.param(table, "relative_position_bias_table")
    cur = add.output[0]
    if shifted:
        cur = _reshape(w, cur, [b, nwin, heads, t, t])
        madd = w.next(cur, "Add")
        mask = w.const(w.other(madd, cur))
        want = shift_mask(hp, wp, wh, ww, sh, sw).astype(np.float32)[None, :, None]
        if mask.shape != want.shape or not np.array_equal(mask.astype(np.float32), want):
            raise NoMatch(f"{madd.name}: the mask is not the shifted-window mask of shift {[sh, sw]}")
        cur = _reshape(w, madd.output[0], [b * nwin, heads, t, t])
    sm = w.next(cur, "Softmax")
    if _attr_of(sm, "axis", -1) not in (-1, 3):
        raise NoMatch(f"{sm.name} should be over the last dim")
    av = w.next(sm.output[0], "MatMul")
    if list(av.input) != [sm.output[0], v] or w.readers(v) != [av]:
        raise NoMatch(f"{av.name} should be the attention times v")
    cur = _transpose(w, av.output[0], [0, 2, 1, 3])
    cur = _reshape(w, cur, [b * nwin, t, c])
    mm = w.next(cur, "MatMul")
    params[f"{proj_name}.weight"] = w.param(w.made(mm.input[1], "Transpose").input[0], f"{proj_name}.weight")
    if mm.input[0] != cur or params[f"{proj_name}.weight"].array.shape != (c, c):
        raise NoMatch(f"{mm.name} should be the output projection [{c}, {c}]")
    cur = mm.output[0]
    users = w.readers(cur)
    proj_bias = len(users) == 1 and users[0].op_type == "Add"
    if proj_bias:
        add = w.next(cur, "Add")
        params[f"{proj_name}.bias"] = w.param(w.other(add, cur), f"{proj_name}.bias")
        cur = add.output[0]
    cur = _reshape(w, cur, [b, nh, nw, wh, ww, c])
    cur = _transpose(w, cur, [0, 1, 3, 2, 4, 5])
    cur = _reshape(w, cur, [b, hp, wp, c])
    cur, back = _roll(w, cur, (b, hp, wp, c))
    if {a: r for a, r in back.items() if r} != {a: r for a, r in ((1, sh), (2, sw)) if r}:
        raise NoMatch(f"the shift back should roll by {[sh, sw]}")
    while cur != s.output:  # x[:, :H, :W]
        sl = w.next(cur, "Slice")
        axis, start, end = _slice(w, sl)
        if start != 0 or axis not in (1, 2):
            raise NoMatch(f"{sl.name} should crop the padding (x[:, :H, :W])")
        cur = sl.output[0]
    if w.shape(cur) != (b, h, wd, c):
        raise NoMatch(f"the output should be [{b}, {h}, {wd}, {c}], not {list(w.shape(cur))}")
    left = [n for n in w.data if id(n) not in w.seen and not _shape_only(w, n)]
    if left:
        raise NoMatch(f"{left[0].op_type} node {left[0].name} is not part of the window attention")
    # the shift as written when convdsl's record says one the nodes compute (a side one window covers
    # is not shifted: the op's rule), else the one the nodes compute
    said = rec.get("shift")
    if isinstance(said, list) and len(said) == 2 and all(type(i) is int for i in said) \
            and 0 <= said[0] < wh and 0 <= said[1] < ww \
            and (said[0] if wh < hp else 0, said[1] if ww < wp else 0) == (sh, sw):
        sh, sw = said
    attrs = {"heads": heads, "window": wh if wh == ww else (wh, ww), "shift": sh if sh == sw else (sh, sw),
             "qkv_bias": qkv_bias, "proj_bias": proj_bias, "v2": v2, "scale": scale}
    if qkv_name != "qkv":
        attrs["qkv"] = qkv_name
    if proj_name != "proj":
        attrs["proj"] = proj_name
    for k in ("dropout", "proj_dropout"):  # training-only: recorded, no number of the file depends on them
        p = rec.get(k)
        if type(p) in (int, float) and 0 <= p < 1:
            attrs[k] = float(p)
    return Checked(w.x, attrs, params)


def _shape_only(w: _Walk, node) -> bool:
    """A data node whose outputs only Shape / Size nodes read (torch.onnx's size of a slice of the bias)."""
    return all(u.op_type in ("Shape", "Size") for o in node.output for u in w.consumers.get(o, []))


def match(scope: Scope, graph, env: dict, consumers: dict, opsets, x_shape) -> Checked:
    """Check ``scope`` (its input x has shape ``x_shape``, the batch symbolic or not); NoMatch if not exact."""
    ids = {id(n) for n in scope.nodes}
    made_here = {o for n in scope.nodes for o in n.output}
    inputs, outputs = [], []
    graph_outputs = {o.name for o in graph.output}
    for n in scope.nodes:
        for i in n.input:
            if i and not hasattr(env.get(i), "array") and not isinstance(env.get(i), Dims) \
                    and i not in made_here and i not in inputs:
                inputs.append(i)
        for o in n.output:
            if o and (o in graph_outputs or any(id(u) not in ids for u in consumers.get(o, []))):
                outputs.append(o)
    if len(inputs) != 1:
        raise NoMatch(f"the module should read one computed tensor, not {len(inputs)}: {inputs[:3]}")
    if len(x_shape) != 4 or not all(isinstance(s, int) for s in x_shape[1:]):
        raise NoMatch(f"the input should be [N, H, W, C] with static H, W, C, not {list(x_shape)}")
    shape = (x_shape[0] if isinstance(x_shape[0], int) else BATCH,) + tuple(x_shape[1:])
    walk = _Walk(scope, graph, env, consumers, inputs[0], shape, opsets)
    data = [o for o in outputs if isinstance(walk.val.get(o), Ghost)]
    if len(data) != 1:
        raise NoMatch(f"one tensor of the module should be read outside it, not {len(data)}")
    scope.output = data[0]
    got = check(walk)
    # sizes computed in the module that nodes after it read (torch.onnx shares them): their values
    for o in outputs:
        if o != scope.output and o in walk.val:
            vals = np.asarray(walk.val[o]).reshape(-1)
            if vals.dtype.kind in "iu" and any(v and v % BATCH == 0 for v in vals.tolist()):
                raise NoMatch(f"{o}, a size read outside the module, depends on the batch")
            got.sizes[o] = np.asarray(walk.val[o])
    return got
