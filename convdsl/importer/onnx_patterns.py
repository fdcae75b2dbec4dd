"""Composite patterns of the ONNX importer: convdsl ops ONNX has no single op for, recovered from
the exact sub-graph that convdsl's exporter (``backends/onnx/lower_<family>.py``) and torch.onnx
write for them.

``PATTERNS`` maps each convdsl op to its matcher, one per op; a matcher reads the ONNX graph
through a ``View`` and returns ``Match``es: the ONNX nodes replaced, the value names that are
the op's inputs and output, its attributes and parameters.  A match is exact or it is not made:
every value computed inside it is read only inside it, every constant has the value the form
needs, and anything else leaves the nodes to the per-op table (``onnx_import.ONNX``), which
imports the decomposition as it is.  Larger patterns are tried first; a node belongs to one
match at most.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np


@dataclass
class Match:
    op: str
    inputs: list[str]  # ONNX value names, the op's input tensors in order
    output: str  # the ONNX value the op's output replaces
    nodes: list  # the ONNX nodes replaced
    attrs: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)  # local name -> a constant (.array, .key)
    # the shape the first input must have for the nodes to compute the op (None: any size there), where
    # the nodes alone do not fix it (a Reshape to constant sizes); checked on import, a located error if not
    input_shape: tuple | None = None


@dataclass
class Param:
    """A parameter a pattern assembles (mhsa's packed in_proj_weight from its q, k, v rows)."""

    array: np.ndarray
    key: str | None


class View:
    """The ONNX graph as matchers read it: producers, readers, constants (initializers and Constant
    nodes, as ``Const``: ``.array`` and ``.key``) and attributes."""

    def __init__(self, graph, producer: dict, consumers: dict, env: dict, outputs: set[str]) -> None:
        self.graph, self.producer, self.consumers, self.env, self.outputs = graph, producer, consumers, env, outputs

    def nodes(self, op_type: str) -> Iterator:
        return (n for n in self.graph.node if n.op_type == op_type)

    def made_by(self, value: str, op_type: str):
        """The node of type ``op_type`` that computes ``value``, or None."""
        n = self.producer.get(value)
        return n if n is not None and n.op_type == op_type else None

    def only_reader(self, value: str, op_type: str | None = None):
        """The one node that reads ``value`` (of type ``op_type``), when nothing else does."""
        users = self.consumers.get(value, [])
        if len(users) != 1 or value in self.outputs or (op_type is not None and users[0].op_type != op_type):
            return None
        return users[0]

    def read_only_by(self, value: str, nodes: list) -> bool:
        ids = {id(n) for n in nodes}
        return value not in self.outputs and all(id(u) in ids for u in self.consumers.get(value, []))

    def const(self, value: str):
        c = self.env.get(value)
        return c if hasattr(c, "array") else None

    def scalar(self, value: str) -> float | None:
        c = self.const(value)
        return float(c.array.reshape(-1)[0]) if c is not None and c.array.size == 1 else None

    @staticmethod
    def attr(node, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default


Matcher = Callable[[View], list[Match]]
PATTERNS: dict[str, Matcher] = {}


def pattern(op: str, first: bool = False):
    """Register the matcher of ``op``; ``first``: tried before those registered so far (a pattern that
    contains another's sub-graph, as selective_scan contains a silu)."""
    def register(fn: Matcher) -> Matcher:
        if op in PATTERNS:  # pragma: no cover - a bug in this file
            raise ValueError(f"two ONNX import patterns for {op}")
        PATTERNS[op] = fn
        if first:
            for k in [k for k in PATTERNS if k != op]:
                PATTERNS[k] = PATTERNS.pop(k)
        return fn

    return register


def find(view: View) -> dict[str, Match]:
    """Every match, by the ONNX value its op's output replaces; a node is in one match at most."""
    out: dict[str, Match] = {}
    taken: set[int] = set()
    for matcher in PATTERNS.values():
        for m in matcher(view):
            ids = {id(n) for n in m.nodes}
            if ids & taken:
                continue
            inner = [o for n in m.nodes for o in n.output if o and o != m.output]
            if not all(view.read_only_by(o, m.nodes) for o in inner):
                continue
            taken |= ids
            out[m.output] = m
    # a match reading a value computed inside another match (a parameter placed on one) cannot be made:
    # that value is never imported; its nodes import one by one
    inner = {o for m in out.values() for n in m.nodes for o in n.output if o and o != m.output}
    return {k: m for k, m in out.items() if not set(m.inputs) & inner}


def _f32(v: float) -> float:
    return float(str(np.float32(v)))  # numpy writes the shortest decimal that rounds back (7 digits may not)


def simplest(attrs: dict) -> dict:
    """An f32 constant read back as the simplest number that rounds to it: a fraction p/q with q up to
    1000 when one does (x / 3 exported as x * 0.33333334 comes back as 1/3, as written), else the
    shortest decimal (``_f32``).  The same f32 value either way."""
    from fractions import Fraction

    out = {}
    for k, v in attrs.items():
        f = np.float32(v)
        if not np.isfinite(f) or float(v) == 0.0:
            out[k] = v
            continue
        fr = Fraction(float(f)).limit_denominator(1000)
        out[k] = float(fr) if fr and np.float32(float(fr)) == f else _f32(v)
    return out


def written(node) -> tuple[str | None, dict]:
    """The convdsl op convdsl's exporter recorded in the node's doc string and the attributes it
    recorded after it (``convdsl rot90 {"dims": [2, 3], "k": 1}``; ``Exporter.record``): (None, {})
    for other exporters' nodes.  The JSON is parsed, never evaluated; a matcher checks each recorded
    value against the computation the file holds before it uses it."""
    import json

    doc = node.doc_string or ""
    if not doc.startswith("convdsl "):
        return None, {}
    op, _, rest = doc[len("convdsl "):].partition(" ")
    try:
        extra = json.loads(rest) if rest else {}
    except ValueError:
        extra = {}
    return op, (extra if isinstance(extra, dict) else {})


# attributes that only initialize or freeze parameters, which convdsl's exporter records in the doc
# strings when they differ from the default (backends/onnx/export.py TRAINING_ATTRS, the same table); no
# number the file computes with depends on them, so a recorded value is taken once it is one the op allows
TRAINING_ATTRS: dict[str, tuple[str, ...]] = {
    **{f"conv{n}d": ("init", "trainable") for n in (1, 2, 3)},
    "layer_scale": ("init",),
    "prelu": ("init",),
    "parameter": ("init", "scale"),
    "selective_scan": ("dt_min", "dt_max"),
    "s4d": ("dt_min", "dt_max"),
}


def training_attrs(op: str, node) -> dict[str, Any]:
    """The TRAINING_ATTRS of ``op`` recorded on ``node`` by convdsl's exporter of that same op, each of
    the attribute's kind (a word among its choices, a bool, a finite number); others are dropped."""
    import math

    from convdsl.ir.ops import OPS

    wop, rec = written(node)
    if wop != op or op not in TRAINING_ATTRS:
        return {}
    out = {}
    for name in TRAINING_ATTRS[op]:
        attr, v = OPS[op].attr(name), rec.get(name)
        if attr is None or v is None:
            continue
        kind = attr.kind.split("|")
        if "sym" in kind and isinstance(v, str) and attr.choices and v in attr.choices:
            out[name] = v
        elif "bool" in kind and isinstance(v, bool):
            out[name] = v
        elif "float" in kind and type(v) in (int, float) and math.isfinite(v):
            out[name] = float(v)
    return out


def _int_list(value: Any, n: int) -> list[int] | None:
    ok = isinstance(value, list) and len(value) == n and all(type(i) is int for i in value)
    return value if ok else None


# ---- shape (backends/onnx/lower_misc.py, lower_shape.py) -----------------------------------------------
def _reversal(v: View, node) -> list[int] | None:
    """The axes a Slice reverses whole (start -1, end before the first element, step -1 on every
    axis: convdsl's and torch.onnx's torch.flip), or None."""
    if node is None or node.op_type != "Slice" or len(node.input) < 5:
        return None
    starts, ends, axes, steps = (_ints(v, node.input[i]) for i in (1, 2, 3, 4))
    if None in (starts, ends, axes, steps) or not (len(starts) == len(ends) == len(axes) == len(steps) >= 1):
        return None
    if any(s != -1 for s in starts) or any(s != -1 for s in steps) or any(e > -(2 ** 31) for e in ends):
        return None
    return axes


@pattern("rot90")
def _rot90(v: View) -> list[Match]:
    """convdsl's export of rot90 (its nodes' doc strings say ``convdsl rot90`` with k and dims): k=0 an
    Identity; k=2 a Slice reversing dims[0] and dims[1]; k=1 (k=3) a Slice reversing dims[1] (dims[0])
    then a Transpose swapping the two dims.  The recorded k and dims must be what the nodes compute."""
    out = []
    for node in v.graph.node:
        op, rec = written(node)
        k, dims = rec.get("k"), _int_list(rec.get("dims"), 2)
        if op != "rot90" or type(k) is not int or dims is None:
            continue
        a, b = dims
        if k % 4 == 0 and node.op_type == "Identity":
            out.append(Match("rot90", [node.input[0]], node.output[0], [node], {"k": k, "dims": (a, b)}))
        elif k % 4 == 2 and _reversal(v, node) == [a, b]:
            out.append(Match("rot90", [node.input[0]], node.output[0], [node], {"k": k, "dims": (a, b)}))
        elif k % 4 in (1, 3) and node.op_type == "Transpose":
            sl = v.made_by(node.input[0], "Slice")
            perm = list(v.attr(node, "perm", []))
            rank = len(perm)
            if sl is None or written(sl)[0] != "rot90" or _reversal(v, sl) != [b if k % 4 == 1 else a] \
                    or not -rank <= a < rank or not -rank <= b < rank or a % rank == b % rank:
                continue
            swap = list(range(rank))
            swap[a % rank], swap[b % rank] = swap[b % rank], swap[a % rank]
            if perm == swap:
                out.append(Match("rot90", [sl.input[0]], node.output[0], [sl, node], {"k": k, "dims": (a, b)}))
    return out


@pattern("parameter")
def _parameter(v: View) -> list[Match]:
    """convdsl's export of the parameter op: an Identity of the initializer ``<id>.weight``, marked
    ``convdsl parameter`` with the ONNX value the program placed it on (``anchor``: a graph input or a
    value computed before it), and its init and scale when not the defaults."""
    out = []
    inputs = {i.name for i in v.graph.input}
    seen: set[str] = set()  # values computed by the nodes before this one
    for node in v.graph.node:
        op, rec = written(node)
        anchor = rec.get("anchor")
        c = v.const(node.input[0]) if op == "parameter" and node.op_type == "Identity" and node.input else None
        placed = isinstance(anchor, str) and (anchor in inputs or anchor in seen) and v.const(anchor) is None
        if c is not None and placed and c.key and c.key.endswith(".weight") and c.array.ndim >= 1:
            attrs = {"shape": tuple(int(d) for d in c.array.shape), **training_attrs("parameter", node)}
            out.append(Match("parameter", [anchor], node.output[0], [node], attrs, {"weight": c}))
        seen.update(o for o in node.output if o)
    return out


@pattern("flip")
def _flip(v: View) -> list[Match]:
    """A Slice reversing whole axes: convdsl's export of flip (the dims as written) and torch.onnx's of
    torch.flip.  convdsl's nodes for another op (rot90) are left to that op."""
    out = []
    for node in v.nodes("Slice"):
        axes = _reversal(v, node)
        if axes is not None and written(node)[0] in (None, "flip") and len(set(axes)) == len(axes):
            out.append(Match("flip", [node.input[0]], node.output[0], [node],
                             {"dims": axes[0] if len(axes) == 1 else tuple(axes)}))
    return out


# ---- norms (backends/onnx/lower_norm.py) ---------------------------------------------------------
@pattern("layernorm2d")
def _layernorm2d(v: View) -> list[Match]:
    """Transpose(0, 2, 3, 1) -> LayerNormalization(axis -1) -> Transpose(0, 3, 1, 2): convdsl's
    export of layernorm2d, and torch.onnx's of torchvision's and timm's LayerNorm2d."""
    out = []
    for ln in v.nodes("LayerNormalization"):
        first = v.made_by(ln.input[0], "Transpose")
        last = v.only_reader(ln.output[0], "Transpose")
        if first is None or last is None or list(v.attr(first, "perm", [])) != [0, 2, 3, 1] \
                or list(v.attr(last, "perm", [])) != [0, 3, 1, 2] or v.attr(ln, "axis", -1) not in (-1, 3):
            continue
        w = v.const(ln.input[1])
        b = v.const(ln.input[2]) if len(ln.input) > 2 and ln.input[2] else None
        if w is None:
            continue
        if w.key is None and (b is None or b.key is None):  # the exporter's ones and zeros: no affine
            if not (np.all(w.array == 1) and (b is None or np.all(b.array == 0))):
                continue
            attrs, params = {"affine": False}, {}
        elif w.key is not None and b is not None and b.key is not None:
            attrs, params = {"affine": True}, {"weight": w, "bias": b}
        else:
            continue
        attrs["eps"] = _f32(v.attr(ln, "epsilon", 1e-5))
        out.append(Match("layernorm2d", [first.input[0]], last.output[0], [first, ln, last], attrs, params))
    return out


# ---- activations (backends/onnx/lower_elementwise.py) ----------------------------------------------
@pattern("silu")
def _silu(v: View) -> list[Match]:
    """Mul(x, Sigmoid(x)), the Sigmoid read by nothing else: convdsl's and torch.onnx's SiLU."""
    out = []
    for mul in v.nodes("Mul"):
        for i in (0, 1):
            sig = v.made_by(mul.input[i], "Sigmoid")
            if sig is not None and sig.input[0] == mul.input[1 - i]:
                out.append(Match("silu", [sig.input[0]], mul.output[0], [sig, mul], {}))
                break
    return out


# ---- attention (backends/onnx/lower_attention.py) ----------------------------------------------------
def _perm(v: View, node, perm: list[int]) -> bool:
    return node is not None and node.op_type == "Transpose" and list(v.attr(node, "perm", [])) == perm


def _ints(v: View, value: str) -> list[int] | None:
    c = v.const(value)
    return None if c is None or c.array.dtype.kind not in "iu" else [int(i) for i in c.array.reshape(-1)]


@pattern("patch_embed")
def _patch_embed(v: View) -> list[Match]:
    """Conv(kernel = stride = patch, no padding) -> Reshape([0, dim, -1]) -> Transpose(0, 2, 1): image
    [N, C, H, W] to tokens [N, L, dim], convdsl's export of patch_embed."""
    out = []
    for conv in v.nodes("Conv"):
        w = v.const(conv.input[1])
        b = v.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if w is None or w.key is None or w.array.ndim != 4 or (len(conv.input) > 2 and conv.input[2] and b is None):
            continue
        k = [int(s) for s in w.array.shape[2:]]
        if list(v.attr(conv, "strides", [1, 1])) != k or any(v.attr(conv, "pads", [0] * 4)) \
                or v.attr(conv, "group", 1) != 1 or any(d != 1 for d in v.attr(conv, "dilations", [1, 1])):
            continue
        rs = v.only_reader(conv.output[0], "Reshape")
        tr = v.only_reader(rs.output[0], "Transpose") if rs is not None else None
        dim = int(w.array.shape[0])
        if tr is None or _ints(v, rs.input[1]) != [0, dim, -1] or not _perm(v, tr, [0, 2, 1]):
            continue
        params = {"weight": w, **({"bias": b} if b is not None else {})}
        out.append(Match("patch_embed", [conv.input[0]], tr.output[0], [conv, rs, tr],
                         {"dim": dim, "patch": k[0] if k[0] == k[1] else tuple(k), "bias": b is not None}, params))
    return out


def _projection(v: View, value: str):
    """``value`` = MatMul(x, Transpose(W)) [+ b] with W, b initializers: (x, W, b or None, nodes)."""
    add = v.made_by(value, "Add")
    b = None
    nodes = []
    if add is not None:
        mm_out, other = add.input[0], add.input[1]
        if v.const(other) is None and v.const(mm_out) is not None:
            mm_out, other = other, mm_out
        b = v.const(other)
        if b is None or b.key is None or b.array.ndim != 1:
            return None
        nodes.append(add)
        value = mm_out
    mm = v.made_by(value, "MatMul")
    if mm is None:
        return None
    tw = v.made_by(mm.input[1], "Transpose")
    w = v.const(tw.input[0]) if tw is not None else None
    if w is None or w.key is None or w.array.ndim != 2 or list(v.attr(tw, "perm", [1, 0])) != [1, 0]:
        return None
    return mm.input[0], w, b, nodes + [mm, tw]


def _heads(v: View, value: str, perm: list[int]):
    """``value`` = Transpose(perm)(Reshape(p, [0, 0, heads, d])): (projection, heads, d, nodes)."""
    tr = v.made_by(value, "Transpose")
    rs = v.made_by(tr.input[0], "Reshape") if _perm(v, tr, perm) else None
    shape = _ints(v, rs.input[1]) if rs is not None else None
    if shape is None or len(shape) != 4 or shape[:2] != [0, 0]:
        return None
    proj = _projection(v, rs.input[0])
    return None if proj is None else (proj, shape[2], shape[3], [tr, rs] + proj[3])


def _split_key(key: str, part: str) -> str | None:
    """``<nid>.in_proj_weight.q`` -> ``<nid>.in_proj_weight`` (the rows the exporter split out)."""
    return key[: -len(part) - 1] if key.endswith("." + part) else None


def _scaled_dot_product(v: View, sm):
    """The core both attention patterns share, found from its Softmax: Softmax(q k^T * scale) v with q, k
    and v each in heads-first form of the same (heads, head width).  (scale, the three _heads results,
    [Mul, MatMul, Transpose, Softmax, MatMul]) or None."""
    mul = v.made_by(sm.input[0], "Mul")
    scale = v.scalar(mul.input[1]) if mul is not None else None
    logits = v.made_by(mul.input[0], "MatMul") if scale is not None else None
    kt = v.made_by(logits.input[1], "Transpose") if logits is not None else None
    av = v.only_reader(sm.output[0], "MatMul")
    if kt is None or av is None or av.input[0] != sm.output[0] or not _perm(v, kt, [0, 1, 3, 2]):
        return None
    parts = [_heads(v, value, [0, 2, 1, 3]) for value in (logits.input[0], kt.input[0], av.input[1])]
    if any(p is None for p in parts) or len({(p[1], p[2]) for p in parts}) != 1:
        return None
    return scale, parts, [mul, logits, kt, sm, av]


@pattern("mhsa")
def _attention(v: View) -> list[Match]:
    """convdsl's export of mhsa and cross_attention without masks or position biases (``mha``):
    q, k, v = heads_first(x W^T + b) for each of the packed rows (initializers ``<key>.q/.k/.v``),
    Softmax(q k^T * scale) v, heads_last, and the output projection.  Two inputs are
    cross_attention.  The parameters come back whole under the keys they were split from."""
    import math

    out = []
    for sm in v.nodes("Softmax"):
        if v.attr(sm, "axis", -1) not in (-1, 3):
            continue
        core = _scaled_dot_product(v, sm)
        if core is None:
            continue
        scale, parts, core_nodes = core
        (xq, wq, bq, _), heads, d, _ = parts[0]
        xs = [p[0][0] for p in parts]
        if xs[1] != xs[2]:
            continue
        av = core_nodes[-1]
        back = v.only_reader(av.output[0], "Transpose")
        rs = v.only_reader(back.output[0], "Reshape") if _perm(v, back, [0, 2, 1, 3]) else None
        dim = heads * d
        if rs is None or _ints(v, rs.input[1]) != [0, 0, dim]:
            continue
        mm = v.only_reader(rs.output[0], "MatMul")
        if mm is None or mm.input[0] != rs.output[0]:
            continue
        add = v.only_reader(mm.output[0], "Add")
        end = add.output[0] if add is not None else mm.output[0]
        proj = _projection(v, end)
        if proj is None or proj[0] != rs.output[0]:
            continue
        _, wo, bo, proj_nodes = proj
        keys = [_split_key(p[0][1].key, "qkv"[i]) for i, p in enumerate(parts)]
        bkeys = [_split_key(p[0][2].key, "qkv"[i]) if p[0][2] is not None else None for i, p in enumerate(parts)]
        if None in keys or len(set(keys)) != 1 or len(set(bkeys)) != 1 or (bkeys[0] is None) != (bq is None):
            continue
        wkey, bkey = keys[0], bkeys[0]
        nid, _, local = wkey.rpartition(".")
        qkv = None
        if local != "in_proj_weight":  # <nid>.<qkv>.weight
            nid, _, qkv = nid.rpartition(".")
            if local != "weight" or not qkv:
                continue
        wo_nid, _, wo_local = wo.key.rpartition(".")
        proj_name = wo_nid[len(nid) + 1:] if wo_nid.startswith(nid + ".") else None
        if wo_local != "weight" or not proj_name or (bo is not None and bo.key != f"{wo_nid}.bias"):
            continue
        cross = xs[0] != xs[1]
        op = "cross_attention" if cross else "mhsa"
        w_all = np.concatenate([p[0][1].array for p in parts])
        params = {"in_proj_weight" if qkv is None else f"{qkv}.weight": Param(w_all, wkey),
                  f"{proj_name}.weight": wo}
        if bkey is not None:
            params["in_proj_bias" if qkv is None else f"{qkv}.bias"] = \
                Param(np.concatenate([p[0][2].array for p in parts]), bkey)
        if bo is not None:
            params[f"{proj_name}.bias"] = bo
        attrs = {"heads": heads, "dim": dim, "qkv_bias": bkey is not None, "proj_bias": bo is not None}
        if not math.isclose(scale, 1.0 / math.sqrt(d), rel_tol=1e-6):
            attrs["scale"] = _f32(scale)
        if qkv is not None:
            attrs["qkv"] = qkv
        if proj_name != "out_proj":
            attrs["proj"] = proj_name
        nodes = [n for p in parts for n in p[3]] + core_nodes + [back, rs] + proj_nodes
        uniq = list({id(n): n for n in nodes}.values())
        out.append(Match(op, [xs[0], xs[1]] if cross else [xs[0]], end, uniq, attrs, params))
    return out


# ---- elementwise -----------------------------------------------------------------------------------
@pattern("affine")
def _affine(v: View) -> list[Match]:
    """Mul(x, scale) -> Add(., shift), both marked ``convdsl affine``: one affine, as written (its export
    is the two nodes when neither is the identity's 1 or 0)."""
    out = []
    for add in v.nodes("Add"):
        mul = v.made_by(add.input[0], "Mul")
        if mul is None or written(add)[0] != "affine" or written(mul)[0] != "affine":
            continue
        scale, shift = v.scalar(mul.input[1]), v.scalar(add.input[1])
        if scale is None or shift is None or v.const(mul.input[0]) is not None:
            continue
        attrs = simplest({"scale": scale, "shift": shift})
        out.append(Match("affine", [mul.input[0]], add.output[0], [mul, add], attrs))
    return out


@pattern("add")
def _sum(v: View) -> list[Match]:
    """Sum(a, b, c...): convdsl's export of an add of three or more tensors."""
    return [Match("add", list(n.input), n.output[0], [n], {}) for n in v.nodes("Sum") if len(n.input) >= 2]


def _conv_tokens(v: View, value: str):
    """``value`` = tokens(BatchNormalization(Conv(x, depthwise, no bias))): (x, conv, bn, nodes)."""
    tr = v.made_by(value, "Transpose")
    rs = v.made_by(tr.input[0], "Reshape") if _perm(v, tr, [0, 2, 1]) else None
    bn = v.made_by(rs.input[0], "BatchNormalization") if rs is not None else None
    conv = v.made_by(bn.input[0], "Conv") if bn is not None else None
    if conv is None or len(conv.input) > 2 and conv.input[2] or _ints(v, rs.input[1]) is None:
        return None
    consts = [v.const(i) for i in [conv.input[1], *bn.input[1:5]]]
    if any(c is None or c.key is None for c in consts):
        return None
    return conv.input[0], conv, bn, consts, [tr, rs, bn, conv]


@pattern("conv_attention")
def _conv_attention(v: View) -> list[Match]:
    """convdsl's export of conv_attention (CvT): for each of q, k, v a depthwise Conv + BatchNormalization
    (``<id>.conv_proj_<s>.conv/bn``) -> tokens -> linear ``<id>.proj_<s>`` -> heads; Softmax(q k^T * scale)
    v; heads back; linear ``<id>.proj``; Transpose(0, 2, 1) -> Reshape([0, C, H', W'])."""
    out = []
    for sm in v.nodes("Softmax"):
        core = _scaled_dot_product(v, sm)
        if core is None:
            continue
        scale, heads3, core_nodes = core
        av = core_nodes[-1]
        convs = [_conv_tokens(v, h[0][0]) for h in heads3]
        if any(c is None for c in convs) or len({c[0] for c in convs}) != 1:
            continue
        nid = convs[0][3][0].key[: -len(".conv_proj_q.conv.weight")]
        names = [f"{nid}.conv_proj_{s}" for s in "qkv"]
        if not all(c[3][0].key == f"{n}.conv.weight" for c, n in zip(convs, names)):
            continue
        heads, d = heads3[0][1], heads3[0][2]
        c = heads * d
        back = v.only_reader(av.output[0], "Transpose")
        rs = v.only_reader(back.output[0], "Reshape") if _perm(v, back, [0, 2, 1, 3]) else None
        mm = v.only_reader(rs.output[0], "MatMul") if rs is not None and _ints(v, rs.input[1]) == [0, 0, c] else None
        if mm is None:
            continue
        add = v.only_reader(mm.output[0], "Add")
        proj = _projection(v, add.output[0] if add is not None else mm.output[0])
        if proj is None or proj[0] != rs.output[0] or proj[1].key != f"{nid}.proj.weight":
            continue
        last = proj[3][0]
        tr = v.only_reader(last.output[0], "Transpose")
        img = v.only_reader(tr.output[0], "Reshape") if _perm(v, tr, [0, 2, 1]) else None
        shape = _ints(v, img.input[1]) if img is not None else None
        if shape is None or len(shape) != 4 or shape[0] != 0 or shape[1] not in (0, c):
            continue
        params: dict[str, Any] = {}
        for s, (_, conv, bn, consts, _) in zip("qkv", convs):
            for local, cst in zip(("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"),
                                  consts):
                params[f"conv_proj_{s}.{local}"] = cst
        qkv_bias = {h[0][2] is not None for h in heads3}
        if len(qkv_bias) != 1:
            continue
        for s, h in zip("qkv", heads3):
            params[f"proj_{s}.weight"] = h[0][1]
            if h[0][2] is not None:
                params[f"proj_{s}.bias"] = h[0][2]
        params["proj.weight"] = proj[1]
        if proj[2] is not None:
            params["proj.bias"] = proj[2]
        k = int(convs[0][3][0].array.shape[-1])
        attrs = {"heads": heads, "k": k, "stride_q": int(v.attr(convs[0][1], "strides", [1])[0]),
                 "stride_kv": int(v.attr(convs[1][1], "strides", [1])[0]), "qkv_bias": qkv_bias.pop(),
                 "proj_bias": proj[2] is not None,
                 # written out even when it is the head width's default: CvT scales by C**-0.5 (the op's doc)
                 "scale": _f32(scale)}
        nodes = [n for h, cv in zip(heads3, convs) for n in h[3] + cv[4]] + core_nodes + [back, rs]
        nodes += proj[3] + [tr, img]
        uniq = list({id(n): n for n in nodes}.values())
        out.append(Match("conv_attention", [convs[0][0]], img.output[0], uniq, attrs, params))
    return out


# ---- FFT mixing (backends/onnx/lower_fft.py: the DFTs in matmul form) ------------------------------------
def _twiddles(rows: int, cols: int, n: int, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """exp(sign * 2 pi i * r * c / n) for r < rows, c < cols, in float64 (the DFT matrices' entries)."""
    import math

    phase = (np.outer(np.arange(rows), np.arange(cols)) % n) * (2.0 * math.pi / n)
    return np.cos(phase), sign * np.sin(phase)


def _is(c, expected: np.ndarray) -> bool:
    """``c`` (a constant) holds exactly ``expected`` rounded to its dtype."""
    return c is not None and c.array.shape == expected.shape and c.array.dtype.kind == "f" \
        and np.array_equal(c.array, expected.astype(c.array.dtype))


def _complex_left(v: View, re: str, im: str):
    """(re, im) = M @ (zr, zi) for a constant complex M: re = Sub(MatMul(Mr, zr), MatMul(Mi, zi)),
    im = Add(MatMul(Mi, zr), MatMul(Mr, zi)).  (Mr, Mi, zr, zi, nodes) or None."""
    sub, add = v.made_by(re, "Sub"), v.made_by(im, "Add")
    if sub is None or add is None:
        return None
    m1, m2 = (v.made_by(i, "MatMul") for i in sub.input)
    m3, m4 = (v.made_by(i, "MatMul") for i in add.input)
    if None in (m1, m2, m3, m4):
        return None
    mr, mi = v.const(m1.input[0]), v.const(m2.input[0])
    zr, zi = m1.input[1], m2.input[1]
    if mr is None or mi is None or m3.input[:] != [m2.input[0], zr] or m4.input[:] != [m1.input[0], zi]:
        return None
    return mr, mi, zr, zi, [sub, add, m1, m2, m3, m4]


def _rfft2(v: View, re: str, im: str):
    """(re, im) = rfft2(x, norm=ortho) as lower_fft.rfft2 writes it: x @ A (W -> W//2+1 frequencies), then
    B @ . over H, every constant the ortho DFT matrix it must be.  (x, h, w, nodes) or None."""
    import math

    left = _complex_left(v, re, im)
    if left is None:
        return None
    br, bi, zr, zi, nodes = left
    mr, mi = v.made_by(zr, "MatMul"), v.made_by(zi, "MatMul")
    if mr is None or mi is None or mr.input[0] != mi.input[0]:
        return None
    ar, ai = v.const(mr.input[1]), v.const(mi.input[1])
    if ar is None or ai is None or ar.array.ndim != 2 or br.array.ndim != 2:
        return None
    w, f = ar.array.shape
    h = br.array.shape[0]
    if f != w // 2 + 1 or w < 1 or h < 1:
        return None
    wr, wi = _twiddles(w, f, w, -1.0)
    hr, hi = _twiddles(h, h, h, -1.0)
    if not (_is(ar, wr / math.sqrt(w)) and _is(ai, wi / math.sqrt(w)) and _is(br, hr / math.sqrt(h))
            and _is(bi, hi / math.sqrt(h))):
        return None
    return mr.input[0], h, w, nodes + [mr, mi]


def _irfft2(v: View, out: str, h: int, w: int):
    """out = irfft2((re, im), s=(H, W), norm=ortho) as lower_fft.irfft2 writes it (the inverse DFT over H,
    then the real inverse over W, DC and Nyquist once).  (re, im, nodes) or None."""
    import math

    sub = v.made_by(out, "Sub")
    y = v.made_by(sub.input[0], "MatMul") if sub is not None else None
    yi = v.made_by(sub.input[1], "MatMul") if sub is not None else None
    if y is None or yi is None:
        return None
    left = _complex_left(v, y.input[0], yi.input[0])
    if left is None:
        return None
    cr, ci, re, im, nodes = left
    f = w // 2 + 1
    k = np.arange(f)[:, None]
    t = np.arange(w)[None, :]
    weight = np.where((k == 0) | ((w % 2 == 0) & (k == w // 2)), 1.0, 2.0) / math.sqrt(w)
    phase = (k * t % w) * (2.0 * math.pi / w)
    hr, hi = _twiddles(h, h, h, +1.0)
    if not (_is(cr, hr / math.sqrt(h)) and _is(ci, hi / math.sqrt(h))
            and _is(v.const(y.input[1]), weight * np.cos(phase)) and _is(v.const(yi.input[1]), weight * np.sin(phase))):
        return None
    return re, im, nodes + [sub, y, yi]


def _cmul(v: View, re: str, im: str):
    """(re, im) = (ar, ai) * (br, bi): re = Sub(Mul(ar, br), Mul(ai, bi)), im = Add(Mul(ar, bi), Mul(ai, br)).
    ((ar, ai), (br, bi), nodes) or None."""
    sub, add = v.made_by(re, "Sub"), v.made_by(im, "Add")
    if sub is None or add is None:
        return None
    m1, m2 = (v.made_by(i, "Mul") for i in sub.input)
    m3, m4 = (v.made_by(i, "Mul") for i in add.input)
    if None in (m1, m2, m3, m4):
        return None
    (ar, br), (ai, bi) = m1.input, m2.input
    if list(m3.input) != [ar, bi] or list(m4.input) != [ai, br]:
        return None
    return (ar, ai), (br, bi), [sub, add, m1, m2, m3, m4]


def _nhwc(v: View, op: str, x: str, end: str):
    """An FFT filter's channels-last form: NHWC -> Transpose(0, 3, 1, 2) into the filter and
    Transpose(0, 2, 3, 1) after it, both by convdsl's exporter of ``op`` or another's.  Returns
    (layout, input, output, the two Transposes)."""
    into, back = v.made_by(x, "Transpose"), v.only_reader(end, "Transpose")
    if _perm(v, into, [0, 3, 1, 2]) and _perm(v, back, [0, 2, 3, 1]) \
            and written(into)[0] in (None, op) and written(back)[0] in (None, op):
        return "nhwc", into.input[0], back.output[0], [into, back]
    return "nchw", x, end, []


@pattern("global_filter")
def _global_filter(v: View) -> list[Match]:
    """convdsl's export of global_filter: rfft2 (matmul form) -> times the weight's real and imaginary
    parts (initializers ``<key>.real`` / ``<key>.imag``) -> irfft2, with Transposes around it for
    layout=nhwc.  The DFT constants must be the ortho DFT matrices for the filter's H and W."""
    out = []
    for sub in v.nodes("Sub"):
        if written(sub)[0] not in (None, "global_filter"):
            continue
        # the last node's two MatMul operands have the [F, W] cos / sin shape; try irfft2 for that W
        mm = v.made_by(sub.input[0], "MatMul")
        d = v.const(mm.input[1]) if mm is not None else None
        if d is None or d.array.ndim != 2:
            continue
        w = int(d.array.shape[1])
        left = v.made_by(mm.input[0], "Sub")
        first = v.made_by(left.input[0], "MatMul") if left is not None else None
        c = v.const(first.input[0]) if first is not None else None
        if c is None or c.array.ndim != 2:
            continue
        h = int(c.array.shape[0])
        inv = _irfft2(v, sub.output[0], h, w)
        prod = _cmul(v, inv[0], inv[1]) if inv is not None else None
        if prod is None:
            continue
        (sr, si), (wr, wi), cm_nodes = prod
        cr, ci = v.const(wr), v.const(wi)
        if cr is None or ci is None or not (cr.key or "").endswith(".real") or ci.key != cr.key[:-5] + ".imag":
            continue
        fwd = _rfft2(v, sr, si)
        if fwd is None or fwd[1:3] != (h, w):
            continue
        x, _, _, f_nodes = fwd
        nodes = inv[2] + cm_nodes + f_nodes
        layout, x, end, around = _nhwc(v, "global_filter", x, sub.output[0])
        nodes += around
        weight = Param(np.stack([cr.array, ci.array], axis=-1), cr.key[:-5])
        out.append(Match("global_filter", [x], end, nodes, {"layout": layout}, {"complex_weight": weight}))
    return out


def _softshrink(v: View, value: str):
    """value = Relu(x - lam) - Relu(-x - lam) (lower_fft.softshrink): (x, lam, nodes) or None."""
    sub = v.made_by(value, "Sub")
    r1, r2 = (v.made_by(i, "Relu") for i in sub.input) if sub is not None else (None, None)
    s1 = v.made_by(r1.input[0], "Sub") if r1 is not None else None
    s2 = v.made_by(r2.input[0], "Sub") if r2 is not None else None
    neg = v.made_by(s2.input[0], "Neg") if s2 is not None else None
    if s1 is None or neg is None or neg.input[0] != s1.input[0] or s1.input[1] != s2.input[1]:
        return None
    lam = v.scalar(s1.input[1])
    return None if lam is None else (s1.input[0], lam, [sub, r1, r2, s1, s2, neg])


def _block_cmm(v: View, re: str, im: str):
    """(re, im) = the two outputs of lower_fft._block_complex_matmul: Concat(zr, zi) -> Transpose ->
    Reshape -> MatMul(<w>.blocks) -> Add(<b>.blocks) -> Reshape -> Transpose -> Split.  The block matrix
    must be [[w0, w1], [-w1, w0]].  (zr, zi, (w, key), (b, key), nodes) or None."""
    split = v.made_by(re, "Split")
    if split is None or list(split.output) != [re, im] or v.attr(split, "axis") != 2:
        return None
    t2 = v.made_by(split.input[0], "Transpose")
    r2 = v.made_by(t2.input[0], "Reshape") if _perm(v, t2, [0, 1, 4, 2, 3]) else None
    add = v.made_by(r2.input[0], "Add") if r2 is not None else None
    mm = v.made_by(add.input[0], "MatMul") if add is not None else None
    r1 = v.made_by(mm.input[0], "Reshape") if mm is not None else None
    t1 = v.made_by(r1.input[0], "Transpose") if r1 is not None else None
    cat = v.made_by(t1.input[0], "Concat") if _perm(v, t1, [0, 1, 3, 4, 2]) else None
    if cat is None or len(cat.input) != 2 or v.attr(cat, "axis") != 2:
        return None
    big, bias = v.const(mm.input[1]), v.const(add.input[1])
    if big is None or bias is None or not (big.key or "").endswith(".blocks") \
            or not (bias.key or "").endswith(".blocks") or big.array.ndim != 3 or bias.array.ndim != 3:
        return None
    k, i2, o2 = big.array.shape
    i, o = i2 // 2, o2 // 2
    wr, wi = big.array[:, :i, :o], big.array[:, :i, o:]
    if i2 % 2 or o2 % 2 or not np.array_equal(big.array[:, i:, :o], -wi) \
            or not np.array_equal(big.array[:, i:, o:], wr) or bias.array.shape != (k, 1, o2) \
            or _ints(v, split.input[1]) != [o, o]:
        return None
    w = np.stack([wr, wi])
    b = np.stack([bias.array[:, 0, :o], bias.array[:, 0, o:]])
    return cat.input[0], cat.input[1], (w, big.key[:-7]), (b, bias.key[:-7]), [split, t2, r2, add, mm, r1, t1, cat]


@pattern("adaptive_filter")
def _adaptive_filter(v: View) -> list[Match]:
    """convdsl's export of adaptive_filter (AFFNet): rfft2 -> blocked Reshape -> block complex matmul
    (w1, b1) -> LeakyRelu -> block complex matmul (w2, b2) -> softshrink -> Reshape -> times the spectrum
    -> irfft2 [-> + input] (Transposes around it for nhwc).  DFT constants checked as for global_filter;
    the parameters come back from their ``<key>.blocks`` forms."""
    out = []
    for node in v.nodes("Sub"):
        if written(node)[0] not in (None, "adaptive_filter"):
            continue
        mm = v.made_by(node.input[0], "MatMul")
        d = v.const(mm.input[1]) if mm is not None else None
        left = v.made_by(mm.input[0], "Sub") if mm is not None else None
        first = v.made_by(left.input[0], "MatMul") if left is not None else None
        c = v.const(first.input[0]) if first is not None else None
        if d is None or c is None or d.array.ndim != 2 or c.array.ndim != 2:
            continue
        h, w = int(c.array.shape[0]), int(d.array.shape[1])
        inv = _irfft2(v, node.output[0], h, w)
        prod = _cmul(v, inv[0], inv[1]) if inv is not None else None
        if prod is None:
            continue
        (mr, mi), (sr, si), cm_nodes = prod
        backs = [v.made_by(m, "Reshape") for m in (mr, mi)]
        if None in backs or backs[0].input[1] != backs[1].input[1]:
            continue
        shape = _ints(v, backs[0].input[1])
        shrinks = [_softshrink(v, b.input[0]) for b in backs]
        if shape is None or len(shape) != 4 or None in shrinks or shrinks[0][1] != shrinks[1][1]:
            continue
        c_, f = shape[1], w // 2 + 1
        second = _block_cmm(v, shrinks[0][0], shrinks[1][0])
        if second is None:
            continue
        lr = [v.made_by(z, "LeakyRelu") for z in second[:2]]
        if None in lr or v.attr(lr[0], "alpha") != v.attr(lr[1], "alpha"):
            continue
        first_cmm = _block_cmm(v, lr[0].input[0], lr[1].input[0])
        if first_cmm is None:
            continue
        blocked = [v.made_by(z, "Reshape") for z in first_cmm[:2]]
        if None in blocked or [b.input[0] for b in blocked] != [sr, si] or blocked[0].input[1] != blocked[1].input[1]:
            continue
        (w1, k1), (b1, kb1), (w2, k2), (b2, kb2) = first_cmm[2], first_cmm[3], second[2], second[3]
        k, bs, hid = w1.shape[1], w1.shape[2], w1.shape[3]
        keys = [k1, kb1, k2, kb2]
        nid = k1[: -len(".w1")] if k1.endswith(".w1") else None
        if nid is None or keys != [f"{nid}.{n}" for n in ("w1", "b1", "w2", "b2")] or shape != [0, c_, h, f] \
                or c_ != k * bs or hid % bs or w2.shape != (2, k, hid, bs) or b1.shape != (2, k, hid) \
                or b2.shape != (2, k, bs) or _ints(v, blocked[0].input[1]) != [0, k, bs, h, f]:
            continue
        fwd = _rfft2(v, sr, si)
        if fwd is None or fwd[1:3] != (h, w):
            continue
        x = fwd[0]
        nodes = inv[2] + cm_nodes + backs + shrinks[0][2] + shrinks[1][2] + second[4] + lr + first_cmm[4] + blocked \
            + fwd[3]
        end = node.output[0]
        res = v.only_reader(end, "Add")
        residual = res is not None and x in res.input and written(res)[0] in (None, "adaptive_filter")
        if residual:
            nodes.append(res)
            end = res.output[0]
        layout, x, end, around = _nhwc(v, "adaptive_filter", x, end)
        nodes += around
        attrs = {"blocks": k, "hidden_factor": hid // bs, "sparsity": _f32(shrinks[0][1]),
                 "slope": _f32(v.attr(lr[0], "alpha", 0.01)), "residual": residual, "layout": layout}
        params = {"w1": Param(w1, k1), "b1": Param(b1, kb1), "w2": Param(w2, k2), "b2": Param(b2, kb2)}
        out.append(Match("adaptive_filter", [x], end, nodes, attrs, params))
    return out


# ---- state space (backends/onnx/lower_ssm.py: selective_scan's scan form) --------------------------------
# the Scan body lower_ssm._scan_body writes, one time step: inputs (h, dt, u, B, C) are in0..in4, the outer
# A_log is "A", each node's output t<k>; (op type, inputs, attributes).  h' = exp(dt A) h + dt u B with
# A = -exp(A_log), y = sum(h' C)
_SCAN_STEP = [
    ("Constant", (), (("value", (1,)),)),
    ("Constant", (), (("value", (2,)),)),
    ("Unsqueeze", ("in1", "t1"), ()),
    ("Exp", ("A",), ()),
    ("Neg", ("t3",), ()),
    ("Mul", ("t2", "t4"), ()),
    ("Exp", ("t5",), ()),
    ("Mul", ("in1", "in2"), ()),
    ("Unsqueeze", ("t7", "t1"), ()),
    ("Unsqueeze", ("in3", "t0"), ()),
    ("Mul", ("t8", "t9"), ()),
    ("Mul", ("t6", "in0"), ()),
    ("Add", ("t11", "t10"), ()),
    ("Unsqueeze", ("in4", "t0"), ()),
    ("Mul", ("t12", "t13"), ()),
    ("ReduceSum", ("t14", "t1"), (("keepdims", 0),)),
]
_SCAN_OUTPUTS = ["t12", "t15"]


def _scan_step(v: View, scan) -> str | None:
    """The outer value the body reads as A when ``scan``'s body is exactly _SCAN_STEP, else None."""
    from onnx import numpy_helper

    body = v.attr(scan, "body")
    if body is None or len(body.input) != 5 or len(body.node) != len(_SCAN_STEP):
        return None
    names = {i.name: f"in{k}" for k, i in enumerate(body.input)}
    outer = None
    for k, (node, (op, ins, attrs)) in enumerate(zip(body.node, _SCAN_STEP)):
        got = []
        for i in node.input:
            if i in names:
                got.append(names[i])
            elif "A" in ins and outer is None:
                outer = i
                got.append("A")
            else:
                return None
        have = []
        for a in node.attribute:
            val = View.attr(node, a.name)
            if hasattr(val, "dims"):
                val = tuple(int(x) for x in numpy_helper.to_array(val).reshape(-1))
            have.append((a.name, val))
        if node.op_type != op or tuple(got) != ins or tuple(sorted(have)) != attrs or len(node.output) != 1:
            return None
        names[node.output[0]] = f"t{k}"
    if [names.get(o.name) for o in body.output] != _SCAN_OUTPUTS:
        return None
    return outer


def _channels(v: View, value: str, suffix: str, ndim: int):
    c = v.const(value)
    return c if c is not None and (c.key or "").endswith(suffix) and c.array.ndim == ndim else None


def _ss_one_way(v: View, out: str):
    """``out`` = lower_ssm._one_way: [silu(causal depthwise Conv)] -> Transpose -> x_proj -> Split(dt_low, B,
    C) -> softplus(dt_proj) -> Scan(h0 = zeros, exact step body, A = -exp(A_log)) -> + D u.  A dict of the
    op's input, attributes, parameters (value, key) and nodes, or None."""
    from onnx import numpy_helper

    add = v.made_by(out, "Add")
    scan = v.made_by(add.input[0], "Scan") if add is not None else None
    mul = v.made_by(add.input[1], "Mul") if add is not None else None
    if scan is None or mul is None or len(scan.output) != 2 or scan.output[1] != add.input[0] \
            or v.attr(scan, "num_scan_inputs") != 4 or list(v.attr(scan, "scan_input_axes", [])) != [1, 1, 1, 1] \
            or list(v.attr(scan, "scan_output_axes", [])) != [2] or v.attr(scan, "directions") \
            or v.attr(scan, "scan_output_directions") or len(scan.input) != 5:
        return None
    d = _channels(v, mul.input[1], ".D.as_channels", 2)
    u = mul.input[0]
    a_name = _scan_step(v, scan)
    a_log = _channels(v, a_name, ".A_log", 2) if a_name else None
    h0, dt, ut, b, cc = scan.input
    tr = v.made_by(ut, "Transpose")
    if d is None or a_log is None or not _perm(v, tr, [0, 2, 1]) or tr.input[0] != u:
        return None
    nid = a_log.key[: -len(".A_log")]
    sp = v.made_by(dt, "Softplus")
    dadd = v.made_by(sp.input[0], "Add") if sp is not None else None
    dmm = v.made_by(dadd.input[0], "MatMul") if dadd is not None else None
    split = v.made_by(b, "Split")
    proj = v.made_by(split.input[0], "MatMul") if split is not None else None
    if dmm is None or proj is None or list(split.output) != [dmm.input[0], b, cc] or proj.input[0] != ut \
            or v.attr(split, "axis") != 2:
        return None
    xw = _channels(v, proj.input[1], ".x_proj.weight.T", 2)
    dw = _channels(v, dmm.input[1], ".dt_proj.weight.T", 2)
    db = _channels(v, dadd.input[1], ".dt_proj.bias", 1)
    c, s = a_log.array.shape
    if xw is None or dw is None or db is None or d.key != f"{nid}.D.as_channels" or d.array.shape != (c, 1):
        return None
    r = xw.array.shape[1] - 2 * s
    if r <= 0 or _ints(v, split.input[1]) != [r, s, s] or xw.key != f"{nid}.x_proj.weight.T" \
            or dw.key != f"{nid}.dt_proj.weight.T" or dw.array.shape != (r, c) or db.key != f"{nid}.dt_proj.bias":
        return None
    # h0 = ConstantOfShape(Concat(Gather(Shape(u), [0]), [c, s])) of zeros
    zeros = v.made_by(h0, "ConstantOfShape")
    cat = v.made_by(zeros.input[0], "Concat") if zeros is not None else None
    gather = v.made_by(cat.input[0], "Gather") if cat is not None and len(cat.input) == 2 else None
    shape = v.made_by(gather.input[0], "Shape") if gather is not None else None
    value = v.attr(zeros, "value") if zeros is not None else None
    if shape is None or shape.input[0] != u or _ints(v, gather.input[1]) != [0] or _ints(v, cat.input[1]) != [c, s] \
            or value is None or np.any(numpy_helper.to_array(value) != 0):
        return None
    nodes = [add, scan, mul, tr, sp, dadd, dmm, split, proj, zeros, cat, gather]
    if v.read_only_by(shape.output[0], [gather]):
        nodes.append(shape)
    params = {"x_proj.weight": Param(np.ascontiguousarray(xw.array.T), f"{nid}.x_proj.weight"),
              "dt_proj.weight": Param(np.ascontiguousarray(dw.array.T), f"{nid}.dt_proj.weight"),
              "dt_proj.bias": db, "A_log": a_log, "D": Param(d.array[:, 0].copy(), f"{nid}.D")}
    k = 0
    gate = v.made_by(u, "Mul")  # silu(causal depthwise conv)
    sig = v.made_by(gate.input[1], "Sigmoid") if gate is not None else None
    conv = v.made_by(gate.input[0], "Conv") if sig is not None and sig.input[0] == gate.input[0] else None
    if conv is not None and len(conv.input) == 3:
        w, bias = _channels(v, conv.input[1], ".conv1d.weight", 3), _channels(v, conv.input[2], ".conv1d.bias", 1)
        k = int(w.array.shape[2]) if w is not None else 0
        if w is None or bias is None or w.key != f"{nid}.conv1d.weight" or bias.key != f"{nid}.conv1d.bias" \
                or w.array.shape != (c, 1, k) or v.attr(conv, "group") != c \
                or list(v.attr(conv, "pads", [])) != [k - 1, 0] or list(v.attr(conv, "kernel_shape", [])) != [k] \
                or any(x != 1 for x in v.attr(conv, "strides", [1])) \
                or any(x != 1 for x in v.attr(conv, "dilations", [1])):
            k = 0
        else:
            params.update({"conv1d.weight": w, "conv1d.bias": bias})
            nodes += [gate, sig, conv]
            u = conv.input[0]
    attrs = {"state": s, "dt_rank": r, "d_conv": k}
    return {"x": u, "attrs": attrs, "params": params, "nodes": nodes, "nid": nid}


def _time_reversed(v: View, value: str):
    sl = v.made_by(value, "Slice")
    return sl if sl is not None and _reversal(v, sl) in ([2], [-1]) else None


@pattern("selective_scan", first=True)
def _selective_scan(v: View) -> list[Match]:
    """convdsl's export of selective_scan: the scan form (``_ss_one_way``); bidirectional adds the same
    on the time-reversed input, reversed back (Slices), with the same parameters."""
    both, one = [], []
    for add in v.nodes("Add"):
        if written(add)[0] not in (None, "selective_scan"):
            continue
        fwd = _ss_one_way(v, add.input[0])
        back_sl = _time_reversed(v, add.input[1])
        back = _ss_one_way(v, back_sl.input[0]) if fwd is not None and back_sl is not None else None
        in_sl = _time_reversed(v, back["x"]) if back is not None else None
        if in_sl is not None and in_sl.input[0] == fwd["x"] and back["attrs"] == fwd["attrs"] \
                and {k: p.key for k, p in back["params"].items()} == {k: p.key for k, p in fwd["params"].items()} \
                and all(np.array_equal(back["params"][k].array, p.array) for k, p in fwd["params"].items()):
            attrs = {**fwd["attrs"], "bidirectional": True, **training_attrs("selective_scan", add)}
            both.append(Match("selective_scan", [fwd["x"]], add.output[0],
                              fwd["nodes"] + back["nodes"] + [back_sl, in_sl, add], attrs, fwd["params"]))
        one_way = _ss_one_way(v, add.output[0])
        if one_way is not None:
            attrs = {**one_way["attrs"], "bidirectional": False, **training_attrs("selective_scan", add)}
            one.append(Match("selective_scan", [one_way["x"]], add.output[0], one_way["nodes"], attrs,
                             one_way["params"]))
    return both + one


@pattern("pixel_unshuffle")
def _pixel_unshuffle(v: View) -> list[Match]:
    """convdsl's export of pixel_unshuffle on static sizes (its nodes marked ``convdsl pixel_unshuffle``):
    Reshape([0, C, H, r, W, r]) -> Transpose(0, 1, 3, 5, 2, 4) -> Reshape([0, C*r*r, H, W]); the input must
    be [N, C, H*r, W*r] (checked on import)."""
    out = []
    for last in v.nodes("Reshape"):
        tr = v.made_by(last.input[0], "Transpose")
        first = v.made_by(tr.input[0], "Reshape") if _perm(v, tr, [0, 1, 3, 5, 2, 4]) else None
        if first is None or any(written(n)[0] != "pixel_unshuffle" for n in (first, tr, last)):
            continue
        a, b = _ints(v, first.input[1]), _ints(v, last.input[1])
        if a is None or b is None or len(a) != 6 or a[0] != 0 or a[3] != a[5] or a[3] < 1 \
                or b != [0, a[1] * a[3] * a[3], a[2], a[4]] or min(a[1:]) < 1:
            continue
        _, c, h, r, w, _ = a
        out.append(Match("pixel_unshuffle", [first.input[0]], last.output[0], [first, tr, last], {"factor": r},
                         input_shape=(None, c, h * r, w * r)))
    return out


# ---- dynamic_filter (backends/onnx/lower_misc.py) -----------------------------------------------------------
@pattern("dynamic_filter")
def _dynamic_filter(v: View) -> list[Match]:
    """convdsl's export of dynamic_filter: x padded by d*(k//2) once and grouped ([0, G, C/G, H+2r, W+2r]),
    kernels grouped ([0, G, 1, k*k, H, W]); for each tap t = ty*k + tx in order, the patch Slice at
    (ty*d, tx*d) times kernel channel t (Slice + Squeeze), summed by a chain of Adds; Reshape to x's shape."""
    import math

    out = []
    for last in v.nodes("Reshape"):
        shape = v.made_by(last.input[1], "Shape")
        if shape is None:
            continue
        x = shape.input[0]
        terms, nodes, acc = [], [last], last.input[0]
        while True:  # acc = Add(acc', term) ... term_0
            add = v.made_by(acc, "Add")
            if add is None:
                terms.append(acc)
                break
            terms.append(add.input[1])
            nodes.append(add)
            acc = add.input[0]
        terms.reverse()
        taps = len(terms)
        k = math.isqrt(taps)
        if k * k != taps or k % 2 == 0:
            continue
        muls = [v.made_by(t, "Mul") for t in terms]
        if None in muls:
            continue
        patches = [v.made_by(m.input[0], "Slice") for m in muls]
        squeezes = [v.made_by(m.input[1], "Squeeze") for m in muls]
        if None in patches or None in squeezes or len({p.input[0] for p in patches}) != 1:
            continue
        chans = [v.made_by(s.input[0], "Slice") for s in squeezes]
        if None in chans or len({c.input[0] for c in chans}) != 1:
            continue
        xp_rs, kw_rs = v.made_by(patches[0].input[0], "Reshape"), v.made_by(chans[0].input[0], "Reshape")
        pad = v.made_by(xp_rs.input[0], "Pad") if xp_rs is not None else None
        if pad is None or kw_rs is None or pad.input[0] != x or len(pad.input) != 2 \
                or v.attr(pad, "mode", "constant") != "constant":
            continue
        pads, xs, ks = _ints(v, pad.input[1]), _ints(v, xp_rs.input[1]), _ints(v, kw_rs.input[1])
        if pads is None or xs is None or ks is None or len(pads) != 8 or len(xs) != 5 or len(ks) != 6:
            continue
        r = pads[2]
        if pads != [0, 0, r, r, 0, 0, r, r] or (k == 1) != (r == 0) or (k > 1 and r % (k // 2)):
            continue
        d = r // (k // 2) if k > 1 else 1
        _, g, cg, hp, wp = xs
        h, wd = hp - 2 * r, wp - 2 * r
        if xs[0] != 0 or ks != [0, g, 1, taps, h, wd] or min(g, cg, h, wd) < 1:
            continue
        ok = True
        for t in range(taps):
            ty, tx = divmod(t, k)
            p, c, s = patches[t], chans[t], squeezes[t]
            if [_ints(v, i) for i in p.input[1:4]] != [[ty * d, tx * d], [ty * d + h, tx * d + wd], [3, 4]] \
                    or len(p.input) != 4 or len(c.input) != 4 \
                    or [_ints(v, i) for i in c.input[1:4]] != [[t], [t + 1], [3]] or _ints(v, s.input[1]) != [3]:
                ok = False
                break
        if not ok:
            continue
        nodes += muls + patches + squeezes + chans + [xp_rs, kw_rs, pad]
        if v.read_only_by(shape.output[0], [last]):
            nodes.append(shape)
        out.append(Match("dynamic_filter", [x, kw_rs.input[0]], last.output[0], nodes, {"k": k, "dilation": d},
                         input_shape=(None, g * cg, h, wd)))
    return out


# ---- glu (backends/onnx/lower_misc.py) ----------------------------------------------------------------
@pattern("glu")
def _glu(v: View) -> list[Match]:
    """Split(x, [h, h], axis=d) into (a, b) -> Mul(a, Sigmoid(b)): convdsl's export of glu(dim=d)."""
    out = []
    for mul in v.nodes("Mul"):
        sig = v.made_by(mul.input[1], "Sigmoid")
        split = v.made_by(mul.input[0], "Split") if sig is not None else None
        if split is None or list(split.output) != [mul.input[0], sig.input[0]] \
                or written(mul)[0] not in (None, "glu"):
            continue
        if len(split.input) > 1 and split.input[1]:
            sizes = _ints(v, split.input[1])
            if sizes is None or len(sizes) != 2 or sizes[0] != sizes[1] or sizes[0] < 1:
                continue
        elif v.attr(split, "split") is not None:
            continue
        out.append(Match("glu", [split.input[0]], mul.output[0], [split, sig, mul], {"dim": v.attr(split, "axis", 0)}))
    return out


# ---- long convolutions: fft_conv (backends/onnx/lower_fft.py) ------------------------------------------------
def _long_conv(v: View, conv, channels: int | None = None):
    """``conv`` = lower_fft.long_conv with a kernel of K taps: a depthwise Conv with K taps, stride and
    dilation 1, no bias input, padded K-1 (causal: all on the left; centered: K-1-K//2 on the left).
    (causal, K) or None."""
    taps = list(v.attr(conv, "kernel_shape", []))
    if conv is None or len(conv.input) != 2 or len(taps) != 1 or taps[0] < 1 \
            or any(x != 1 for x in v.attr(conv, "strides", [1])) or any(x != 1 for x in v.attr(conv, "dilations", [1])) \
            or v.attr(conv, "auto_pad", "NOTSET") != "NOTSET" or (channels is not None and v.attr(conv, "group") != channels):
        return None
    k = taps[0]
    pads = list(v.attr(conv, "pads", [0, 0]))
    if pads == [k - 1, 0]:
        return True, k
    if pads == [k - 1 - k // 2, k // 2]:
        return False, k
    return None


def _channel_param(v: View, value: str, key: str, c: int):
    """The initializer ``key`` of shape [c, 1] at ``value`` (a per-channel parameter placed on channels)."""
    p = v.const(value)
    return p if p is not None and p.key == key and p.array.shape == (c, 1) else None


def _skip_term(v: View, add, y: str, key: str, c: int):
    """``add`` = Add(y, Mul(u, <key> [c, 1])): (u, the D constant, the Mul) or None."""
    if add is None or list(add.input[:1]) != [y] or len(add.input) != 2:
        return None
    mul = v.made_by(add.input[1], "Mul")
    d = _channel_param(v, mul.input[1], key, c) if mul is not None else None
    return None if d is None else (mul.input[0], d, mul)


@pattern("fft_conv")
def _fft_conv(v: View) -> list[Match]:
    """convdsl's export of fft_conv, the long-convolution form: Conv(u, ``<key>.kernel.reversed`` [C, 1, K],
    group C, causal or centered padding) [-> Add ``<key>.bias.as_channels``] [-> Add Mul(u,
    ``<key>.D.as_channels``)].  The kernel comes back reversed again under ``<key>.kernel``."""
    out = []
    for conv in v.nodes("Conv"):
        w = v.const(conv.input[1]) if len(conv.input) == 2 else None
        if w is None or not (w.key or "").endswith(".kernel.reversed") or w.array.ndim != 3 \
                or w.array.shape[1] != 1 or written(conv)[0] not in (None, "fft_conv"):
            continue
        c, _, taps = (int(d) for d in w.array.shape)
        form = _long_conv(v, conv, c)
        if form is None or form[1] != taps:
            continue
        nid = w.key[: -len(".kernel.reversed")]
        u, y, nodes = conv.input[0], conv.output[0], [conv]
        params = {"kernel": Param(np.ascontiguousarray(w.array[:, 0, ::-1]), f"{nid}.kernel")}
        bias = skip = False
        add = v.only_reader(y, "Add")
        b = _channel_param(v, add.input[1], f"{nid}.bias.as_channels", c) if add is not None else None
        if b is not None and add.input[0] == y:
            bias, y = True, add.output[0]
            nodes.append(add)
            params["bias"] = Param(b.array[:, 0].copy(), f"{nid}.bias")
            add = v.only_reader(y, "Add")
        term = _skip_term(v, add, y, f"{nid}.D.as_channels", c)
        if term is not None and term[0] == u:
            skip, y = True, add.output[0]
            nodes += [add, term[2]]
            params["D"] = Param(term[1].array[:, 0].copy(), f"{nid}.D")
        attrs = {"kernel_len": taps, "causal": form[0], "bias": bias, "skip": skip}
        out.append(Match("fft_conv", [u], y, nodes, attrs, params))
    return out


# ---- s4d, sgconv: the kernel form (backends/onnx/lower_ssm.py) ---------------------------------------------
def _template(text: str) -> list[tuple[tuple[str, ...], str, list[str], dict]]:
    """``name = Op(a, b) attr=value ...`` per line (``a, b = Split(...)`` for a node with several
    outputs) -> (names, op, inputs, attrs); ``$x`` names a leaf (a value from outside the template, bound
    on the first reading and the same at every other), attribute values are JSON."""
    import json
    import re

    out = []
    for line in text.strip().splitlines():
        m = re.fullmatch(r"\s*(\w+(?:, \w+)*) = (\w+)\(([^)]*)\)((?: \w+=\S+)*)\s*", line)
        if m is None:  # pragma: no cover - a bug in this file
            raise ValueError(f"bad template line: {line!r}")
        names, op, ins, attrs = m.groups()
        attrs = dict(a.split("=", 1) for a in attrs.split())
        out.append((tuple(names.split(", ")), op, [i.strip() for i in ins.split(",") if i.strip()],
                    {k: json.loads(x) for k, x in attrs.items()}))
    return out


def _walk(v: View, template: list, out: str, op: str):
    """The nodes computing ``out`` exactly as ``template`` (``_template``) does, its last line the root:
    every node of the op type, inputs, outputs and attributes (all of them, as written) the line says,
    marked as ``op``'s by convdsl's exporter or not marked.  ({name or $leaf: value}, nodes) or None."""
    spec = {name: (names, t, ins, attrs) for names, t, ins, attrs in template for name in names}
    bound: dict[str, str] = {}
    nodes: list = []
    stack = [(template[-1][0][0], out)]
    while stack:
        name, value = stack.pop()
        if name in bound:
            if bound[name] != value:
                return None
            continue
        if name.startswith("$"):
            bound[name] = value
            continue
        names, t, ins, attrs = spec[name]
        node = v.made_by(value, t)
        if node is None or len(node.input) != len(ins) or len(node.output) != len(names) \
                or node.output[names.index(name)] != value or written(node)[0] not in (None, op) \
                or any(bound.get(n, o) != o for n, o in zip(names, node.output)):
            return None
        have = {a.name: View.attr(node, a.name) for a in node.attribute}
        if {k: list(x) if isinstance(x, (list, tuple)) else x for k, x in have.items()} != attrs:
            return None
        bound.update(zip(names, node.output))
        nodes.append(node)
        stack.extend(zip(ins, node.input))
    return bound, nodes


def _is_scalar(v: View, value: str, expected, dtype) -> bool:
    c = v.const(value)
    return c is not None and c.array.shape == () and c.array.dtype == dtype and c.array == dtype(expected)


def _param_leaves(v: View, bound: dict, shapes: dict[str, tuple]) -> tuple[str, dict] | None:
    """The initializers at the leaves ``$<local>`` must be ``<nid>.<local>`` of the given shapes, one nid:
    (nid, {local: constant}) or None."""
    nid, params = None, {}
    for local, shape in shapes.items():
        c = v.const(bound.get("$" + local, ""))
        if c is None or c.key is None or not c.key.endswith("." + local) or c.array.shape != shape \
                or c.array.dtype != np.float32:
            return None
        here = c.key[: -len(local) - 1]
        if nid not in (None, here):
            return None
        nid, params[local] = here, c
    return nid, params


_S4D_KERNEL = _template("""
    dt0 = Exp($log_dt)
    dt = Unsqueeze(dt0, $axis_dt)
    ar0 = Exp($log_A_real)
    ar = Neg(ar0)
    xr = Mul(dt, ar)
    xi = Mul(dt, $A_imag)
    e = Exp(xr)
    cos_xi = Cos(xi)
    e_cos = Mul(e, cos_xi)
    er = Sub(e_cos, $one)
    sin_xi = Sin(xi)
    ei = Mul(e, sin_xi)
    cr = Gather($C, $index0) axis=2
    ci = Gather($C, $index1) axis=2
    cr_er = Mul(cr, er)
    ci_ei = Mul(ci, ei)
    nr = Sub(cr_er, ci_ei)
    cr_ei = Mul(cr, ei)
    ci_er = Mul(ci, er)
    ni = Add(cr_ei, ci_er)
    ar2 = Mul(ar, ar)
    ai2 = Mul($A_imag, $A_imag)
    den = Add(ar2, ai2)
    nr_ar = Mul(nr, ar)
    ni_ai = Mul(ni, $A_imag)
    gr0 = Add(nr_ar, ni_ai)
    gr = Div(gr0, den)
    ni_ar = Mul(ni, ar)
    nr_ai = Mul(nr, $A_imag)
    gi0 = Sub(ni_ar, nr_ai)
    gi = Div(gi0, den)
    xr3 = Unsqueeze(xr, $axis_r)
    pr = Mul(xr3, $steps)
    xi3 = Unsqueeze(xi, $axis_i)
    pi = Mul(xi3, $steps)
    mag = Exp(pr)
    cos_pi = Cos(pi)
    vr = Mul(mag, cos_pi)
    sin_pi = Sin(pi)
    vi = Mul(mag, sin_pi)
    gr1 = Unsqueeze(gr, $axis1)
    kr = MatMul(gr1, vr)
    gi1 = Unsqueeze(gi, $axis1)
    ki = MatMul(gi1, vi)
    k = Sub(kr, ki)
    w = Mul(k, $two)
""")


def _s4d_kernel(v: View, weight: str):
    """``weight`` = lower_ssm._s4d_kernel's reversed S4D kernel [C, 1, L]: every node as _S4D_KERNEL, the
    parameters ``<nid>.log_dt`` [C], ``log_A_real``, ``A_imag`` [C, M], ``C`` [C, M, 2], and every constant
    what the kernel needs (steps L-1 .. 0, 1, 2, the axes and indices).  (nid, attrs, params, nodes, L) or None."""
    got = _walk(v, _S4D_KERNEL, weight, "s4d")
    if got is None:
        return None
    bound, nodes = got
    c = v.const(bound["$C"])
    steps = v.const(bound["$steps"])
    if c is None or c.array.ndim != 3 or c.array.shape[2] != 2 or steps is None or steps.array.ndim != 1:
        return None
    ch, m, _ = c.array.shape
    length = steps.array.shape[0]
    found = _param_leaves(v, bound, {"log_dt": (ch,), "log_A_real": (ch, m), "A_imag": (ch, m), "C": (ch, m, 2)})
    if found is None or not _is(steps, np.arange(length - 1, -1, -1, dtype=np.float64)) \
            or not _is_scalar(v, bound["$one"], 1.0, np.float32) or not _is_scalar(v, bound["$two"], 2.0, np.float32) \
            or not _is_scalar(v, bound["$index0"], 0, np.int64) or not _is_scalar(v, bound["$index1"], 1, np.int64) \
            or [_ints(v, bound[f"$axis{a}"]) for a in ("_dt", "_r", "_i", "1")] != [[1], [2], [2], [1]]:
        return None
    nid, params = found
    return nid, {"state": 2 * m}, params, nodes, length


def _sgconv_template(scales: int, cut: str) -> list:
    """lower_ssm._sgconv_kernel's nodes for ``scales`` pieces; ``cut``: "slice", "pad" or "" (none)."""
    lines = []
    for i in range(scales):
        lines.append(f"g{i} = Gather($kernel, $index{i}) axis=0")
        if i > 1:
            lines.append(f"u{i} = MatMul(g{i}, $up{i})")
        lines.append(f"p{i} = Mul({'u' if i > 1 else 'g'}{i}, $decay{i})")
    lines += [f"cat = Concat({', '.join(f'p{i}' for i in range(scales))}) axis=1",
              "l2 = ReduceL2(cat) axes=[1] keepdims=1", "norm = Max(l2, $eps)", "k = Div(cat, norm)"]
    last = "k"
    if cut == "slice":
        lines.append("cut = Slice(k, $start, $end, $axis_cut)")
        last = "cut"
    elif cut == "pad":
        lines.append("cut = Pad(k, $pads)")
        last = "cut"
    lines += [f"rev = Slice({last}, $r_start, $r_end, $r_axes, $r_steps)", "w = Unsqueeze(rev, $axis1)"]
    return _template("\n".join(lines))


def _sgconv_kernel(v: View, weight: str):
    """``weight`` = lower_ssm._sgconv_kernel's reversed SGConv kernel [C, 1, L]: S pieces of ``<nid>.kernel``
    [S, C, d], each upsampled by F.interpolate's matrix (``sgconv_upsampling``, linear or nearest, the
    same for all) and scaled by decay**i, normalized, cut or padded to L, reversed.  The decay comes from
    the scale of piece 1 (each scale must be float32(decay**i)); where the file holds no upsampling (S <= 2)
    or no decay (S = 1) the exporter's record of them is taken.  (nid, attrs, params, nodes, L) or None."""
    from convdsl.ir.ops.ssm import sgconv_upsampling

    un = v.made_by(weight, "Unsqueeze")
    rev = v.made_by(un.input[0], "Slice") if un is not None else None
    if rev is None or _reversal(v, rev) != [1]:
        return None
    inner = v.producer.get(rev.input[0])
    cut = {"Slice": "slice", "Pad": "pad"}.get(inner.op_type, "") if inner is not None else ""
    div = v.made_by(inner.input[0] if cut else rev.input[0], "Div")
    cat = v.made_by(div.input[0], "Concat") if div is not None else None
    if cat is None:
        return None
    scales = len(cat.input)
    got = _walk(v, _sgconv_template(scales, cut), weight, "sgconv")
    if got is None:
        return None
    bound, nodes = got
    kernel = v.const(bound["$kernel"])
    if kernel is None or kernel.array.ndim != 3 or kernel.array.shape[0] != scales:
        return None
    _, ch, d = kernel.array.shape
    found = _param_leaves(v, bound, {"kernel": (scales, ch, d)})
    full = d * 2 ** (scales - 1)
    if found is None or not _is_scalar(v, bound["$eps"], 1e-12, np.float32) or _ints(v, bound["$axis1"]) != [1] \
            or any(not _is_scalar(v, bound[f"$index{i}"], i, np.int64) for i in range(scales)):
        return None
    if cut == "slice":
        length = (_ints(v, bound["$end"]) or [0])[0]
        if _ints(v, bound["$start"]) != [0] or _ints(v, bound["$axis_cut"]) != [1] or not 0 < length < full:
            return None
    elif cut == "pad":
        pads = _ints(v, bound["$pads"]) or []
        if len(pads) != 4 or pads[:3] != [0, 0, 0] or pads[3] < 1:
            return None
        length = full + pads[3]
    else:
        length = full
    rec = written(un)[1]
    interp = rec.get("interp") if rec.get("interp") in ("linear", "nearest") else "linear"
    if scales > 2:
        ups = [v.const(bound[f"$up{i}"]) for i in range(2, scales)]
        interp = next((mode for mode in ("linear", "nearest")
                       if all(_is(u, sgconv_upsampling(d, 2 ** (i - 1), mode)) for i, u in zip(range(2, scales), ups))),
                      None)
        if interp is None:
            return None
    decay = rec.get("decay")
    if scales > 1:
        one = v.const(bound["$decay1"])
        decay = float(one.array) if one is not None and one.array.shape == () else None
        decay = simplest({"d": decay})["d"] if decay is not None else None
    if type(decay) not in (int, float) or not 0 < decay <= 1 \
            or any(not _is_scalar(v, bound[f"$decay{i}"], decay ** i, np.float32) for i in range(scales)):
        return None
    nid, params = found
    return nid, {"kernel_dim": d, "n_scales": scales, "decay": float(decay), "interp": interp}, params, nodes, length


def _lti_one_way(v: View, out: str, kernels):
    """``out`` = lower_ssm._lti_nodes one way: Add(Conv(x, w) causal depthwise with L taps, Mul(x,
    ``<nid>.D.as_channels``)), w a kernel ``kernels`` recognizes.  A dict or None."""
    add = v.made_by(out, "Add")
    conv = v.made_by(add.input[0], "Conv") if add is not None else None
    if conv is None or len(conv.input) != 2:
        return None
    kernel = kernels(v, conv.input[1])
    if kernel is None:
        return None
    nid, attrs, params, nodes, length = kernel
    c = params["C" if "C" in params else "kernel"].array.shape[0 if "C" in params else 1]
    form = _long_conv(v, conv, c)
    term = _skip_term(v, add, conv.output[0], f"{nid}.D.as_channels", c)
    if form != (True, length) or term is None or term[0] != conv.input[0]:
        return None
    params = {**params, "D": Param(term[1].array[:, 0].copy(), f"{nid}.D")}
    return {"x": conv.input[0], "w": conv.input[1], "conv": conv, "attrs": attrs, "params": params,
            "nodes": [add, conv, term[2]] + nodes}


def _lti(op: str, kernels) -> Matcher:
    """The matcher of an LTI op's kernel form: one way, or bidirectional: Add(one way on x, flip(one way on
    flip(x))) with the same kernel value (so the same parameters)."""
    def match(v: View) -> list[Match]:
        both, one = [], []
        for add in v.nodes("Add"):
            if written(add)[0] not in (None, op):
                continue
            fwd = _lti_one_way(v, add.input[0], kernels) if len(add.input) == 2 else None
            back_sl = _time_reversed(v, add.input[1]) if fwd is not None else None
            back = _lti_back(v, back_sl.input[0], fwd) if back_sl is not None else None
            in_sl = _time_reversed(v, back["x"]) if back is not None else None
            if in_sl is not None and in_sl.input[0] == fwd["x"]:
                both.append(Match(op, [fwd["x"]], add.output[0], fwd["nodes"] + back["nodes"] + [back_sl, in_sl, add],
                                  {**fwd["attrs"], "bidirectional": True, **training_attrs(op, add)}, fwd["params"]))
            one_way = _lti_one_way(v, add.output[0], kernels)
            if one_way is not None:
                one.append(Match(op, [one_way["x"]], add.output[0], one_way["nodes"],
                                 {**one_way["attrs"], "bidirectional": False, **training_attrs(op, add)},
                                 one_way["params"]))
        return both + one

    return match


def _lti_back(v: View, out: str, fwd: dict):
    """``out`` = the backward way of a bidirectional LTI op: Add(Conv(x', w), Mul(x', D)) with fwd's very
    kernel value w, Conv attributes and D initializer."""
    add = v.made_by(out, "Add")
    conv = v.made_by(add.input[0], "Conv") if add is not None else None
    if conv is None or list(conv.input) != [conv.input[0], fwd["w"]]:
        return None
    d = fwd["params"]["D"]
    term = _skip_term(v, add, conv.output[0], d.key + ".as_channels", d.array.shape[0])
    same = sorted((a.name, View.attr(conv, a.name)) for a in conv.attribute) \
        == sorted((a.name, View.attr(fwd["conv"], a.name)) for a in fwd["conv"].attribute)
    if term is None or term[0] != conv.input[0] or not same:
        return None
    return {"x": conv.input[0], "nodes": [add, conv, term[2]]}


pattern("s4d", first=True)(_lti("s4d", _s4d_kernel))
pattern("sgconv", first=True)(_lti("sgconv", _sgconv_kernel))


# ---- halo_attention (backends/onnx/lower_attention.py) ------------------------------------------------------
def _halo_template(bias: bool) -> list:
    qb, kvb = (", $q.bias", ", $kv.bias") if bias else ("", "")
    return _template(f"""
        q0 = Conv($x, $q.weight{qb}) kernel_shape=[1,1]
        q1 = Reshape(q0, $s_q1)
        q2 = Transpose(q1) perm=[0,1,3,5,4,6,2]
        qb = Reshape(q2, $s_qb)
        q = Reshape(q2, $s_q)
        kv0 = Conv($x, $kv.weight{kvb}) kernel_shape=[1,1]
        kv1 = Pad(kv0, $pads)
        kv2 = Gather(kv1, $rows) axis=2
        kv3 = Gather(kv2, $cols) axis=3
        kv4 = Reshape(kv3, $s_kv4)
        kv5 = Transpose(kv4) perm=[0,1,2,4,3,5]
        kv6 = Reshape(kv5, $s_kv6)
        kv7 = Transpose(kv6) perm=[0,1,3,4,2]
        k, v = Split(kv7, $split) axis=4
        rh0 = Gather($pos_embed.height_rel, $offset) axis=0
        rh = Transpose(rh0) perm=[0,2,1]
        rel_h = MatMul(qb, rh)
        qt = Transpose(qb) perm=[0,1,2,4,3,5]
        rw0 = Gather($pos_embed.width_rel, $offset) axis=0
        rw = Transpose(rw0) perm=[0,2,1]
        rw1 = MatMul(qt, rw)
        rel_w = Transpose(rw1) perm=[0,1,2,4,3,5]
        rh6 = Unsqueeze(rel_h, $axis6)
        rw5 = Unsqueeze(rel_w, $axis5)
        rel0 = Add(rh6, rw5)
        rel = Reshape(rel0, $s_rel)
        kt = Transpose(k) perm=[0,1,2,4,3]
        lg0 = MatMul(q, kt)
        lg1 = Mul(lg0, $scale)
        lg = Add(lg1, rel)
        sm = Softmax(lg) axis=-1
        y0 = MatMul(sm, v)
        y1 = Reshape(y0, $s_y1)
        y2 = Transpose(y1) perm=[0,1,6,2,4,3,5]
        y = Reshape(y2, $s_y)
    """)


_HALO = {bias: _halo_template(bias) for bias in (False, True)}


@pattern("halo_attention", first=True)
def _halo_attention(v: View) -> list[Match]:
    """convdsl's export of halo_attention: q and kv 1x1 Convs, the queries in b x b blocks, the keys and
    values zero-padded by the halo and gathered as (b + 2 halo)^2 windows at stride b, relative logits from
    the whole ``pos_embed.height_rel`` / ``width_rel`` tables gathered at table[k - q + win - 1], attention,
    blocks back to [N, dim, H, W].  Every shape, pad, index and the scale are checked against the sizes
    the parameters and the first Reshape give."""
    import math

    out = []
    for last in v.nodes("Reshape"):
        for bias in (False, True):
            got = _walk(v, _HALO[bias], last.output[0], "halo_attention")
            if got is not None:
                break
        if got is None:
            continue
        bound, nodes = got
        s_q1 = _ints(v, bound["$s_q1"])
        qw, rel = v.const(bound["$q.weight"]), v.const(bound["$pos_embed.height_rel"])
        if s_q1 is None or len(s_q1) != 7 or qw is None or qw.array.ndim != 4 or rel is None or rel.array.ndim != 2:
            continue
        _, heads, d, nh, b, nw, _ = s_q1
        dim, c = int(qw.array.shape[0]), int(qw.array.shape[1])
        win = (int(rel.array.shape[0]) + 1) // 2
        halo = (win - b) // 2
        if min(heads, d, nh, b, nw) < 1 or halo < 0 or win != b + 2 * halo or heads * d != dim:
            continue
        shapes = {"q.weight": (dim, c, 1, 1), "kv.weight": (2 * dim, c, 1, 1),
                  "pos_embed.height_rel": (2 * win - 1, d), "pos_embed.width_rel": (2 * win - 1, d)}
        if bias:
            shapes.update({"q.bias": (dim,), "kv.bias": (2 * dim,)})
        found = _param_leaves(v, bound, shapes)
        h, w = nh * b, nw * b
        expected = {
            "$s_q1": [0, heads, d, nh, b, nw, b], "$s_qb": [0, heads, nh * nw, b, b, d],
            "$s_q": [0, heads, nh * nw, b * b, d], "$pads": [0, 0, halo, halo, 0, 0, halo, halo],
            "$rows": list((np.arange(nh)[:, None] * b + np.arange(win)[None, :]).ravel()),
            "$cols": list((np.arange(nw)[:, None] * b + np.arange(win)[None, :]).ravel()),
            "$s_kv4": [0, 2 * dim, nh, win, nw, win], "$s_kv6": [0, heads, 2 * d, nh * nw, win * win],
            "$split": [d, d], "$offset": list((np.arange(win)[None, :] - np.arange(b)[:, None] + win - 1).ravel()),
            "$axis6": [6], "$axis5": [5], "$s_rel": [0, heads, nh * nw, b * b, win * win],
            "$s_y1": [0, heads, nh, nw, b, b, d], "$s_y": [0, dim, h, w],
        }
        offset = v.const(bound["$offset"])
        scale = v.const(bound["$scale"])
        if found is None or any(_ints(v, bound[k]) != e for k, e in expected.items()) \
                or offset.array.shape != (b, win) or scale is None or scale.array.shape != () \
                or scale.array.dtype != np.float32:
            continue
        s = float(scale.array)
        attrs = {"heads": heads, "block_size": b, "halo": halo, "dim": dim, "qkv_bias": bias,
                 "scale": None if np.float32(1.0 / math.sqrt(d)) == scale.array else simplest({"s": s})["s"]}
        out.append(Match("halo_attention", [bound["$x"]], last.output[0], nodes, attrs, found[1],
                         input_shape=(None, c, h, w)))
    return out
