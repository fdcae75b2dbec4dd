"""Import an ONNX file: ONNX graph -> flat convdsl graph.

Each ONNX op maps onto a convdsl op by the table ``ONNX`` below; initializers
keep their names, which are the source's parameter keys in files written by
``torch.onnx.export`` and by convdsl's own exporter, so a node is named by
its weight's key prefix (``layer1.0.conv1``).  The module hierarchy comes
from node-name scopes: ``/layer1/layer1.0/conv1/Conv`` (torch.onnx) and
``layer1.0.conv1/Conv`` (convdsl) both place the node in ``layer1.0``.
Composite patterns are matched before the table: GELU's erf form
(``x * 0.5 * (1 + erf(x / sqrt 2))``) becomes ``gelu``; ``MatMul(x, W^T) +
b`` becomes ``linear``.  What has no mapping is a ``ModelImportError`` naming
the node, its op type and its scope.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from convdsl.errors import ModelImportError, SourceError, Span, UsageError
from convdsl.ir.graph import Value
from convdsl.ir.types import TensorType

from convdsl.importer.builder import Builder, Imported, Origin, einsum, index_buffer, located, take
from convdsl.importer.onnx_patterns import View, find as find_patterns, simplest as _simplest, training_attrs, written
from convdsl.importer.onnx_shapes import FOLDABLE, Const, Dims, attr_value, evaluate, fold, lift, reshape_spec
from convdsl.importer import onnx_quant, onnx_window

ONNX_TO_DTYPE = {1: "f32", 10: "f16", 16: "bf16", 11: "f64", 3: "i8", 2: "u8", 6: "i32", 7: "i64", 9: "bool"}


class Ctx:
    def __init__(self, b: Builder, node, chain: list[str], origin: Origin, env: dict, consumers: dict) -> None:
        self.b, self.node, self.chain, self.origin, self.env, self.consumers = b, node, chain, origin, env, consumers
        self.attrs = {a.name: attr_value(a) for a in node.attribute}

    def arg(self, i: int) -> Any:
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        return self.env[self.node.input[i]]

    def tensor(self, i: int) -> Value:
        v = self.arg(i)
        if isinstance(v, Value):
            return v
        raise located(self.origin, f"input {i} is a constant where convdsl needs a computed tensor")

    def const(self, i: int) -> np.ndarray:
        v = self.arg(i)
        if isinstance(v, Const):
            return v.array
        raise located(self.origin, f"input {i} must be a constant (an initializer) for a convdsl mapping")

    def type(self, v: Value) -> TensorType:
        return self.b.graph.type_of(v)

    def add(self, op: str, inputs: list[Value], attrs: dict | None = None, params: dict | None = None,
            id: str | None = None, exact: bool = False):
        attrs = {**(attrs or {}), **training_attrs(op, self.node)}  # init / trainable convdsl's exporter recorded
        outs = self.b.add(op, inputs, attrs, id=id or self.default_id(op), chain=self.chain,
                          origin=self.origin, params=params, exact=exact)
        return outs[0] if len(outs) == 1 else outs

    def written_as(self, *ops: str) -> str | None:
        """The convdsl op convdsl's exporter recorded for this node (its doc string), if one of ``ops``:
        how the importer tells apart ops that export alike (transpose / permute, flatten / reshape,
        adaptive / plain pooling).  Other exporters' files take the general op."""
        op = written(self.node)[0]  # the op, before any attributes recorded after it
        return op if op in ops else None

    def default_id(self, op: str) -> str:
        scope = self.chain[-1] if self.chain else ""
        return f"{scope}.{op}" if scope else op

    def owner(self, **params: Const | None) -> tuple[str | None, dict]:
        """Node id from the first parameter's key (``<id>.<local>``), and the arrays by local name."""
        pid = None
        arrays = {}
        for local, c in params.items():
            if c is None:
                continue
            arrays[local] = c.array
            if pid is None and c.key and c.key.endswith("." + local):
                pid = c.key[: -len(local) - 1]
        return pid, arrays


def _ints(v):
    v = list(v)
    return v[0] if len(set(v)) == 1 else tuple(v)


Mapping = Callable[[Ctx], Any]
ONNX: dict[str, Mapping] = {}


def onnx_op(*names: str):
    def register(fn):
        for n in names:
            ONNX[n] = fn
        return fn

    return register


def _same_pads(cx: Ctx, a: dict, kernel, nd: int) -> list[int]:
    """ONNX auto_pad SAME_UPPER / SAME_LOWER as explicit pads (begins, then ends): the output is
    ceil(in / stride); the odd one of a pair goes to the end (UPPER) or the beginning (LOWER)."""
    shape = cx.type(cx.tensor(0)).shape[-nd:]
    strides = list(a.get("strides", [1] * nd))
    dils = list(a.get("dilations", [1] * nd))
    lo, hi = [], []
    for size, k, st, d in zip(shape, kernel, strides, dils):
        if not isinstance(size, int):
            raise located(cx.origin, f"auto_pad={a['auto_pad']} over a symbolic size has no fixed padding")
        total = max((-(-size // st) - 1) * st + (int(k) - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        lo.append(small if a["auto_pad"] == "SAME_UPPER" else big)
        hi.append(big if a["auto_pad"] == "SAME_UPPER" else small)
    return lo + hi


@onnx_op("Conv")
def _conv(cx: Ctx):
    w = cx.arg(1)
    if not isinstance(w, Const):
        raise located(cx.origin, "a convolution with a computed weight has no convdsl op")
    pid, params = cx.owner(weight=w, bias=cx.arg(2))
    return cx.add(f"conv{w.array.ndim - 2}d", [cx.tensor(0)], conv_attrs(cx, w.array.shape, cx.arg(2) is not None),
                  params, id=pid)


def conv_attrs(cx: Ctx, w_shape: tuple[int, ...], bias: bool) -> dict:
    """convdsl conv attributes of the ONNX Conv ``cx`` whose weights have the shape ``w_shape`` [O, C/g, k...]."""
    nd = len(w_shape) - 2
    a = cx.attrs
    pads = list(a.get("pads", [0] * 2 * nd))
    if a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):  # timm's padding="same" (ConvMixer)
        pads = _same_pads(cx, a, w_shape[2:], nd)
    elif a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise located(cx.origin, f"auto_pad={a['auto_pad']} is not supported; export with explicit pads")
    lo, hi = pads[:nd], pads[nd:]
    pad = _ints(lo) if lo == hi else tuple(p for pr in zip(lo, hi) for p in pr)
    k = tuple(int(s) for s in w_shape[2:])
    return {"out": int(w_shape[0]), "k": _ints(k), "stride": _ints(a.get("strides", [1] * nd)), "pad": pad,
            "dilation": _ints(a.get("dilations", [1] * nd)), "groups": int(a.get("group", 1)), "bias": bias}


@onnx_op("ConvTranspose")
def _conv_t(cx: Ctx):
    w = cx.arg(1)
    nd = w.array.ndim - 2
    a = cx.attrs
    pads = list(a.get("pads", [0] * 2 * nd))
    if pads[:nd] != pads[nd:]:
        raise located(cx.origin, "asymmetric ConvTranspose padding has no convdsl op")
    pid, params = cx.owner(weight=w, bias=cx.arg(2))
    g = int(a.get("group", 1))
    return cx.add(f"conv_transpose{nd}d", [cx.tensor(0)],
                  {"out": int(w.array.shape[1]) * g, "k": _ints(w.array.shape[2:]),
                   "stride": _ints(a.get("strides", [1] * nd)), "pad": _ints(pads[:nd]),
                   "output_pad": _ints(a.get("output_padding", [0] * nd)),
                   "dilation": _ints(a.get("dilations", [1] * nd)), "groups": g, "bias": cx.arg(2) is not None},
                  params, id=pid)


@onnx_op("Gemm")
def _gemm(cx: Ctx):
    a = cx.attrs
    w = cx.arg(1)
    if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0) or not isinstance(w, Const):
        raise located(cx.origin, "only Gemm(x, W, b) with constant W (a linear layer) has a convdsl mapping")
    weight = w.array if a.get("transB", 0) else w.array.T
    key = w.key if a.get("transB", 0) else None
    pid, params = cx.owner(weight=Const(weight, key), bias=cx.arg(2))
    return cx.add("linear", [cx.tensor(0)], {"out": int(weight.shape[0]), "bias": cx.arg(2) is not None}, params,
                  id=pid)


@onnx_op("MatMul")
def _matmul(cx: Ctx):
    b = cx.arg(1)
    if isinstance(b, Const):  # x @ W^T [+ bias]: a linear layer (the bias Add is folded in below)
        weight = np.ascontiguousarray(b.array.T)
        key = b.key[: -len(".T")] if b.key and b.key.endswith(".T") else None
        bias, add = _bias_after(cx)
        pid, params = cx.owner(weight=Const(weight, key and key if key and key.endswith(".weight") else None),
                               bias=bias)
        y = cx.add("linear", [cx.tensor(0)], {"out": int(weight.shape[0]), "bias": bias is not None}, params, id=pid)
        if add is not None:
            cx.env[add.output[0]] = y
            cx.skip.add(add.name)
        return y
    return cx.add("matmul", [cx.tensor(0), cx.tensor(1)])


def _bias_after(cx: Ctx):
    users = cx.consumers.get(cx.node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Add":
        add = users[0]
        other = add.input[1] if add.input[0] == cx.node.output[0] else add.input[0]
        c = cx.env.get(other)
        if isinstance(c, Const) and c.array.ndim == 1:
            return c, add
    return None, None


@onnx_op("BatchNormalization")
def _bn(cx: Ctx):
    pid, params = cx.owner(weight=cx.arg(1), bias=cx.arg(2), running_mean=cx.arg(3), running_var=cx.arg(4))
    if pid is None:
        pid = cx.default_id("batchnorm")
    params["num_batches_tracked"] = np.zeros((), np.int64)
    return cx.add("batchnorm", [cx.tensor(0)], {"eps": _f32(cx.attrs.get("epsilon", 1e-5)),
                                                "momentum": round(1.0 - float(cx.attrs.get("momentum", 0.9)), 6)},
                  params, id=pid)


@onnx_op("InstanceNormalization")
def _instance_norm(cx: Ctx):
    """torch.onnx's group_norm: Reshape to [N, G, -1], InstanceNormalization with constant ones and
    zeros, Reshape back, then the affine as Mul/Add: the middle step is layernorm over the trailing
    dims without an affine.  A learned scale/bias here has no mapping yet."""
    x = cx.tensor(0)
    scale, bias = cx.arg(1), cx.arg(2)
    if not (isinstance(scale, Const) and isinstance(bias, Const) and not scale.key and not bias.key
            and np.all(scale.array == 1) and np.all(bias.array == 0)):
        raise located(cx.origin, "InstanceNormalization with a learned scale or bias has no convdsl mapping yet")
    return cx.add("layernorm", [x], {"dims": cx.type(x).rank - 2, "eps": _f32(cx.attrs.get("epsilon", 1e-5)),
                                     "affine": False})


@onnx_op("LayerNormalization")
def _ln(cx: Ctx):
    x = cx.tensor(0)
    rank = cx.type(x).rank
    axis = int(cx.attrs.get("axis", -1)) % rank
    pid, params = cx.owner(weight=cx.arg(1), bias=cx.arg(2))
    return cx.add("layernorm", [x], {"dims": rank - axis, "eps": _f32(cx.attrs.get("epsilon", 1e-5)),
                                     "bias": cx.arg(2) is not None}, params, id=pid)


def _unary(op: str):
    return lambda cx: cx.add(op, [cx.tensor(0)])


for _n, _o in (("Relu", "relu"), ("Sigmoid", "sigmoid"), ("Tanh", "tanh"), ("HardSwish", "hardswish"), ("Neg", "neg")):
    ONNX[_n] = _unary(_o)


@onnx_op("Dropout")
def _dropout(cx: Ctx):
    p = _scalar(cx.arg(1)) if len(cx.node.input) > 1 else cx.attrs.get("ratio", 0.5)
    return cx.add("dropout", [cx.tensor(0)], {"p": _f32(p if p is not None else 0.5)})


@onnx_op("Identity")
def _identity(cx: Ctx):
    v = cx.arg(0)
    if isinstance(v, Const) and (cx.written_as("parameter") or not v.key):  # convdsl's parameter op
        return Const(v.array, v.key)
    return Const(v.array, cx.node.output[0]) if isinstance(v, Const) else v


@onnx_op("HardSigmoid")
def _hardsigmoid(cx: Ctx):
    if not (math.isclose(cx.attrs.get("alpha", 0.2), 1 / 6, rel_tol=1e-5) and cx.attrs.get("beta", 0.5) == 0.5):
        raise located(cx.origin, "HardSigmoid other than PyTorch's (alpha 1/6, beta 1/2) has no convdsl op")
    return cx.add("hardsigmoid", [cx.tensor(0)])


@onnx_op("LeakyRelu")
def _leaky(cx: Ctx):
    return cx.add("leaky_relu", [cx.tensor(0)], {"slope": _f32(cx.attrs.get("alpha", 0.01))})


@onnx_op("Clip")
def _clip(cx: Ctx):
    lo = cx.arg(1).array if isinstance(cx.arg(1), Const) else cx.attrs.get("min")
    hi = cx.arg(2).array if isinstance(cx.arg(2), Const) else cx.attrs.get("max")
    if lo is not None and hi is not None and float(lo) == 0.0 and float(hi) == 6.0:
        return cx.add("relu6", [cx.tensor(0)])
    if lo is not None and hi is None and float(lo) == 0.0:
        return cx.add("relu", [cx.tensor(0)])
    raise located(cx.origin, f"Clip({lo}, {hi}) has no convdsl op (relu6 is Clip(0, 6))")


@onnx_op("Einsum")
def _einsum(cx: Ctx):
    if len(cx.node.input) != 2:
        raise located(cx.origin, f"Einsum with {len(cx.node.input)} inputs has no convdsl mapping")
    return einsum(cx, cx.attrs["equation"], cx.tensor(0), cx.tensor(1))


@onnx_op("Softmax")
def _softmax(cx: Ctx):
    return cx.add("softmax", [cx.tensor(0)], {"dim": int(cx.attrs.get("axis", -1))})


def _scalar(c: Any) -> float | None:
    return float(c.array.reshape(-1)[0]) if isinstance(c, Const) and c.array.size == 1 else None


def _owned(cx: Ctx, op: str, local: str, x: Value, c: Const, attrs: dict) -> Value:
    """An op holding the one parameter ``c`` (ViT's pos_embedding, ConvNeXt's layer_scale), keyed as the
    source keys it: an op named ``<id>`` owning ``<id>.<local>`` when no other parameter lives under
    ``<id>`` (convdsl's own export); otherwise the parameter on its module, named exactly (``as param``:
    ConvNeXt's ``features.1.0.layer_scale`` beside ``features.1.0.block``, timm's ``cls_token``)."""
    suffix = "." + local
    nid = c.key[: -len(suffix)] if c.key.endswith(suffix) else c.key
    exact = nid == c.key or any(k.startswith(nid + ".") and k != c.key for k in cx.b.source_keys)
    out = cx.add(op, [x], attrs, {local: c.array}, id=c.key if exact else nid, exact=exact)
    key = out.node if exact else f"{out.node}.{local}"
    if key != c.key:  # pragma: no cover - another node took the name
        cx.b.renamed[key] = c.key
    return out


def _parameter_op(cx: Ctx, op: str, a: Any, b: Any) -> Value | None:
    """x + table [1, L, C] -> pos_embed; x * gamma ([C, 1, ...] on [N, C, ...] or [C] on [..., C]) -> layer_scale."""
    if isinstance(a, Const) and op == "mul":
        a, b = b, a
    if not (isinstance(a, Value) and isinstance(b, Const) and b.key):
        return None
    t = cx.type(a)
    shape = tuple(b.array.shape)
    if op == "add" and len(shape) == 3 and t.rank == 3 and shape == (1,) + tuple(t.shape[1:]):
        return _owned(cx, "pos_embed", "pos_embedding", a, b, {"kind": "learned"})
    if op == "mul" and t.rank >= 3 and shape == (t.shape[1],) + (1,) * (t.rank - 2) and isinstance(t.shape[1], int):
        return _owned(cx, "layer_scale", "layer_scale", a, b, {"layout": "first"})
    if op == "mul" and len(shape) == 1 and t.rank >= 2 and shape[0] == t.shape[-1] and shape[0] > 1:
        return _owned(cx, "layer_scale", "layer_scale", a, b, {"layout": "last"})
    return None


def _binary(op: str, affine: Callable[[float, bool], dict] | None):
    def fn(cx: Ctx):
        a, b = cx.arg(0), cx.arg(1)
        owned = _parameter_op(cx, op, a, b) if op in ("add", "mul") else None
        if owned is not None:
            return owned
        if affine is not None and _scalar(b) is not None and isinstance(a, Value):
            return cx.add("affine", [a], _simplest(affine(_scalar(b), False)))
        if affine is not None and _scalar(a) is not None and isinstance(b, Value) and op in ("add", "mul"):
            return cx.add("affine", [b], _simplest(affine(_scalar(a), True)))
        return cx.add(op, [_tensor(cx, a), _tensor(cx, b)])

    return fn


def _tensor(cx: Ctx, v) -> Value:
    if isinstance(v, Value):
        return v
    if isinstance(v, Const) and v.key:  # a free parameter: a `parameter` node
        if v.key in cx.b.graph:
            return Value(v.key, 0)
        x = cx.b.graph.inputs[0]
        shape = tuple(int(d) for d in v.array.shape) or (1,)
        # convdsl's own parameter op (<id>.weight, nothing else under <id>), else the key exactly
        nid = v.key[: -len(".weight")] if v.key.endswith(".weight") else v.key
        exact = nid == v.key or any(k.startswith(nid + ".") and k != v.key for k in cx.b.source_keys)
        if not exact and nid in cx.b.graph:
            return Value(nid, 0)
        out = cx.b.add("parameter", [Value(x, 0)], {"shape": shape, "init": "zeros"}, id=v.key if exact else nid,
                       chain=cx.chain, origin=cx.origin, params={"weight": v.array.reshape(shape)}, exact=exact)[0]
        key = out.node if exact else f"{out.node}.weight"
        if key != v.key:  # pragma: no cover - another node took the name
            cx.b.renamed[key] = v.key
        return out
    if isinstance(v, Const) and v.array.dtype == np.float32 and v.array.size > 1:
        # a tensor the exporter wrote as a Constant node, not an initializer: a non-persistent buffer
        # (timm Swin's attention mask) or a table computed from sizes.  It has no source key, so it is a
        # `parameter` named by its scope, its values in net.safetensors (the torch.export route writes
        # the same buffer as a `parameter` named by its buffer key).
        x = cx.b.graph.inputs[0]
        shape = tuple(int(d) for d in v.array.shape)
        return cx.add("parameter", [Value(x, 0)], {"shape": shape, "init": "zeros"}, {"weight": v.array},
                      id=cx.default_id("constant"))
    raise located(cx.origin, "a constant tensor operand has no convdsl op (only named parameters)")


ONNX["Add"] = _binary("add", lambda v, left: {"shift": v})
ONNX["Sub"] = _binary("sub", lambda v, left: {"shift": -v})
ONNX["Mul"] = _binary("mul", lambda v, left: {"scale": v})
ONNX["Div"] = _binary("div", lambda v, left: {"scale": 1.0 / v})


def _pool(kind: str):
    def fn(cx: Ctx):
        a = cx.attrs
        k = list(a["kernel_shape"])
        nd = len(k)
        pads = list(a.get("pads", [0] * 2 * nd))
        if pads[:nd] != pads[nd:]:
            raise located(cx.origin, "asymmetric pooling padding has no convdsl op")
        strides = list(a.get("strides", [1] * nd))
        if cx.written_as(f"adaptive_{kind}pool{nd}d"):  # adaptive pooling to a size that divides
            x = cx.tensor(0)
            sizes = cx.type(x).shape[-nd:]
            return cx.add(f"adaptive_{kind}pool{nd}d", [x], {"out": _ints([s // kk for s, kk in zip(sizes, k)])})
        attrs = {"k": _ints(k), "stride": None if strides == k else _ints(strides), "pad": _ints(pads[:nd]),
                 "ceil_mode": bool(a.get("ceil_mode", 0))}  # stride None: the kernel's, as nn.MaxPool2d(k)
        if kind == "max":
            attrs["dilation"] = _ints(a.get("dilations", [1] * nd))
        else:
            attrs["count_include_pad"] = bool(a.get("count_include_pad", 0))
        return cx.add(f"{kind}pool{nd}d", [cx.tensor(0)], attrs)

    return fn


ONNX["MaxPool"] = _pool("max")
ONNX["AveragePool"] = _pool("avg")


def _global_pool(kind: str):
    def fn(cx: Ctx):  # adaptive pooling to 1 (what torch.onnx writes for AdaptiveAvgPool2d(1))
        x = cx.tensor(0)
        return cx.add(f"adaptive_{kind}pool{cx.type(x).rank - 2}d", [x], {"out": 1})

    return fn


ONNX["GlobalAveragePool"] = _global_pool("avg")
ONNX["GlobalMaxPool"] = _global_pool("max")


def _axes(cx: Ctx, i: int = 1) -> list[int] | None:
    if "axes" in cx.attrs:
        return list(cx.attrs["axes"])
    v = cx.arg(i)
    return [int(a) for a in v.array.reshape(-1)] if isinstance(v, Const) else None


@onnx_op("ReduceMean", "ReduceMax", "ReduceL2")
def _reduce(cx: Ctx):
    x = cx.tensor(0)
    axes = _axes(cx) or list(range(cx.type(x).rank))
    keep = bool(cx.attrs.get("keepdims", 1))
    rank = cx.type(x).rank
    if cx.node.op_type in ("ReduceMean", "ReduceMax") and rank >= 3 and sorted(a % rank for a in axes) == \
            list(range(2, rank)):  # every spatial dim: global pooling
        return cx.add("global_avgpool" if cx.node.op_type == "ReduceMean" else "global_maxpool", [x], {"keepdim": keep})
    op = {"ReduceMean": "mean", "ReduceMax": "amax", "ReduceL2": "vector_norm"}[cx.node.op_type]
    return cx.add(op, [x], {"dims": axes[0] if len(axes) == 1 else tuple(axes), "keepdim": keep})


@onnx_op("Flatten")
def _flatten(cx: Ctx):
    """ONNX Flatten(axis=k) is always 2-D: [d0*...*d(k-1), dk*...]; axis 1 is convdsl's flatten, any other
    axis a reshape (LeViT's qkv BatchNorm runs on x.flatten(0, 1), axis 2 for a rank-3 input)."""
    x = cx.tensor(0)
    shape = cx.type(x).shape
    axis = int(cx.attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if axis == 1:
        return cx.add("flatten", [x], {"start": 1, "end": -1})
    head, tail = shape[:axis], shape[axis:]
    if all(isinstance(d, int) for d in tail):  # the batch is in the first dim: it takes the -1
        return cx.add("reshape", [x], {"shape": (-1, math.prod(tail))})
    if all(isinstance(d, int) for d in head):  # axis 0: [1, everything]
        return cx.add("reshape", [x], {"shape": (math.prod(head), -1)})
    raise located(cx.origin, f"Flatten(axis={axis}) splits symbolic sizes on both sides")  # pragma: no cover


@onnx_op("Reshape")
def _reshape(cx: Ctx):
    x = cx.tensor(0)
    shape = cx.arg(1)
    t = cx.type(x)
    if cx.written_as("flatten"):
        flat = _flattened(t, cx.b.graph.type_of, cx, shape)
        if flat is not None:
            return cx.add("flatten", [x], flat)
    if isinstance(shape, Dims):  # sizes computed from the input's shape (x.view(x.size(0), -1))
        spec = reshape_spec(shape, tuple(t.shape))
        if spec.count(-1) > 1:
            raise located(cx.origin, f"a Reshape to {shape.values.tolist()}: more than one size depends on the batch")
        return cx.add("reshape", [x], {"shape": tuple(spec)})
    if not isinstance(shape, Const):
        raise located(cx.origin, "a Reshape to a computed shape has no convdsl mapping",
                      "export the model with a static shape or a symbolic batch only")
    spec = [int(d) for d in shape.array]
    if 0 not in spec and spec and not isinstance(t.shape[0], int) and spec[0] > 0:
        raise located(cx.origin, "a Reshape that fixes the symbolic batch has no convdsl mapping")
    if len(spec) == 2 and spec[0] == 0 and t.rank > 2 and all(isinstance(d, int) for d in t.shape[1:]) and \
            spec[1] in (-1, int(np.prod(t.shape[1:]))):  # [N, ...] -> [N, rest]
        return cx.add("flatten", [x], {"start": 1, "end": -1})
    return cx.add("reshape", [x], {"shape": tuple(spec)})


def _flattened(t: TensorType, type_of, cx: Ctx, shape) -> dict | None:
    """flatten's start and end for a Reshape of ``t`` that joins dims start..end into one: the target is
    t's shape with that run replaced by its size (0 / -1 for a copied or the batch-dependent size), the
    first run that fits (``flatten(1, 2)`` of [N, H, W, C] is the target [0, H*W, C])."""
    spec = shape.values.tolist() if isinstance(shape, Dims) else [int(d) for d in cx.const(1)] \
        if isinstance(shape, Const) else None
    if spec is None or len(spec) > t.rank:
        return None
    dims = list(t.shape)

    def same(d, i: int) -> bool:
        return d == dims[i] or (d == 0 and i < len(spec)) or d == -1

    for start in range(len(spec)):
        end = start + t.rank - len(spec)
        run = dims[start:end + 1]
        joined = math.prod(run) if all(isinstance(x, int) for x in run) else None
        if all(same(d, i) for i, d in enumerate(spec[:start])) \
                and all(d == dims[end + 1 + i] for i, d in enumerate(spec[start + 1:])) \
                and (spec[start] == -1 or spec[start] == joined or (start == 0 and spec[start] == 0 and end == 0)):
            return {"start": start, "end": -1 if end == t.rank - 1 else end}
    return None


@onnx_op("Transpose")
def _transpose(cx: Ctx):
    x = cx.arg(0)
    if isinstance(x, Const):  # a transposed parameter (convdsl's linear export): stays a constant
        # a view, not a copy: MatMul takes W^T of it, which is the initializer itself again (copying ViT-H's
        # 2.5 GB of weights twice took most of its import)
        return Const(x.array.transpose(cx.attrs["perm"]), (x.key + ".T") if x.key else None)
    perm = list(cx.attrs["perm"])
    moved = [i for i, p in enumerate(perm) if p != i]
    if cx.written_as("transpose") and len(moved) == 2:
        return cx.add("transpose", [x], {"dim0": moved[0], "dim1": moved[1]})
    return cx.add("permute", [x], {"dims": tuple(perm)})


@onnx_op("Squeeze")
def _squeeze(cx: Ctx):
    axes = _axes(cx)
    return cx.add("squeeze", [cx.tensor(0)], {"dims": None if axes is None else (axes[0] if len(axes) == 1
                                                                               else tuple(axes))})


@onnx_op("Unsqueeze")
def _unsqueeze(cx: Ctx):
    axes = _axes(cx)
    x = cx.tensor(0)
    for a in sorted(axes):
        x = cx.add("unsqueeze", [x], {"dim": a})
    return x


@onnx_op("Concat")
def _concat(cx: Ctx):
    first = cx.arg(0)
    token = None
    if isinstance(first, Expanded) and len(cx.node.input) == 2 and int(cx.attrs["axis"]) == 1:
        # Concat([cls.expand(N, -1, -1), x], 1): ViT's class token (convdsl's own export names it <id>.class_token)
        token = first.param
    elif isinstance(first, Const) and first.key and first.array.ndim == 3 and first.array.shape[0] == 1 and \
            len(cx.node.input) == 2 and int(cx.attrs["axis"]) in (1, -2) and isinstance(cx.arg(1), Value) and \
            cx.type(cx.arg(1)).shape[0] == 1:
        # the same with the expand folded over a static batch of 1 (ONNX Runtime's pre-processing writes the
        # expanded [1, T, C] token as an initializer)
        token = first
    if token is not None:
        return _owned(cx, "class_token", "class_token", cx.tensor(1), token, {"tokens": int(token.array.shape[1])})
    return cx.add("concat", [cx.tensor(i) for i in range(len(cx.node.input))], {"dim": int(cx.attrs["axis"])})


@onnx_op("Split")
def _split(cx: Ctx):
    x = cx.tensor(0)
    axis = int(cx.attrs.get("axis", 0))
    sizes = cx.attrs.get("split")
    if sizes is None and isinstance(cx.arg(1), Const):
        sizes = [int(s) for s in cx.arg(1).array]
    if sizes and len(set(sizes)) == 1:  # equal parts: torch.chunk's form
        sizes = None
    attrs = {"dim": axis, "sizes": tuple(sizes)} if sizes else {"dim": axis, "chunks": len(cx.node.output)}
    outs = cx.add("split", [x], attrs)
    return outs if isinstance(outs, list) else [outs]


@onnx_op("Gather")
def _gather(cx: Ctx):
    idx = cx.arg(1)
    table = isinstance(cx.arg(0), Const)  # a parameter: its axis 0 is no batch
    x = _tensor(cx, cx.arg(0)) if table else cx.tensor(0)
    axis = int(cx.attrs.get("axis", 0)) % cx.type(x).rank
    if isinstance(idx, Const) and (table or axis > 0) and (idx.key or idx.array.ndim >= 2 or idx.array.size > 256):
        # an index buffer (LeViT's attention_bias_idxs, MaxViT's relative_position_index): `take` holding it
        # under its initializer's name; a non-persistent buffer (a Constant node) named by its scope
        size = cx.type(x).shape[axis]
        if index_buffer(cx.b, idx.key, idx.array, size):
            owner = idx.key[: -len(".index")] if idx.key and idx.key.endswith(".index") else None
            if owner is not None and any(k.startswith(owner + ".") and k != idx.key for k in cx.b.source_keys):
                owner = None  # <owner> holds other keys: a module, so the key is the buffer's own name
            return take(cx, x, axis, idx.key, idx.array, idx.stored, owner)
    if table and isinstance(idx, Const) and idx.array.ndim >= 1:
        size = cx.type(x).shape[axis]
        flat = cx.add("index_select", [x], {"index": tuple(int(i) % size for i in idx.array.reshape(-1)), "dim": axis})
        if idx.array.ndim == 1:
            return flat
        t = cx.type(x)
        shape = tuple(t.shape[:axis]) + tuple(idx.array.shape) + tuple(t.shape[axis + 1:])
        return cx.add("reshape", [flat], {"shape": shape})
    if isinstance(idx, Const) and idx.array.ndim == 0:
        return cx.add("select", [x], {"index": int(idx.array), "dim": axis})
    if isinstance(idx, Const) and idx.array.ndim == 1 and axis > 0:
        size = cx.type(x).shape[axis]
        return cx.add("index_select", [x], {"index": tuple(int(i) % size for i in idx.array), "dim": axis})
    raise located(cx.origin, "Gather with a computed or multi-dimensional index has no convdsl op "
                             "(a constant scalar index is `select`, a constant list `index_select`)")


@onnx_op("Slice")
def _slice(cx: Ctx):
    x = cx.tensor(0)
    t = cx.type(x)
    starts, ends = [int(v) for v in cx.const(1).reshape(-1)], [int(v) for v in cx.const(2).reshape(-1)]
    axes = [int(v) for v in cx.const(3).reshape(-1)] if cx.arg(3) is not None else list(range(len(starts)))
    steps = [int(v) for v in cx.const(4).reshape(-1)] if cx.arg(4) is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= t.rank
        size = t.shape[axis]
        if not isinstance(size, int):
            if (start, step) == (0, 1) and end >= 2 ** 31 - 1:
                continue
            raise located(cx.origin, "slicing the batch has no convdsl op")
        keep = list(range(size))[slice(start, end, step)]
        if keep == list(range(size)):
            continue
        if not keep:
            raise located(cx.origin, f"an empty slice of dim {axis}")
        if step == 1:  # a contiguous part: split and take it
            lo, hi = keep[0], keep[-1] + 1
            sizes = [n for n in (lo, hi - lo, size - hi) if n > 0]
            parts = cx.add("split", [x], {"sizes": tuple(sizes), "dim": axis})
            x = (parts if isinstance(parts, list) else [parts])[1 if lo > 0 else 0]
        else:
            x = cx.add("index_select", [x], {"index": tuple(keep), "dim": axis})
        t = cx.type(x)
    return x


@dataclass
class Expanded:
    """A parameter expanded over the batch (``cls_token.expand(N, -1, -1)``): a class_token once concatenated."""

    param: Const


@onnx_op("Expand")
def _expand(cx: Ctx):
    if isinstance(cx.arg(0), Const) and cx.arg(0).key and cx.arg(0).array.ndim == 3:
        return Expanded(cx.arg(0))
    x = cx.tensor(0)
    shape = cx.arg(1)
    dims = shape.values.tolist() if isinstance(shape, Dims) else [int(d) for d in cx.const(1)]
    have = list(cx.type(x).shape)
    if len(dims) <= len(have) and all(d in (1, h) for d, h in zip(dims[::-1], have[::-1])):
        return x  # expanding to the shape it has (or broadcastable 1s): nothing to do
    raise located(cx.origin, f"Expand of a computed tensor to {dims} has no convdsl op "
                             "(broadcasting ops expand implicitly)")


@onnx_op("Cast")
def _cast_tensor(cx: Ctx):
    x = cx.tensor(0)
    want = ONNX_TO_DTYPE.get(int(cx.attrs["to"]))
    if want == cx.type(x).dtype:
        return x
    return cx.add("cast", [x], {"dtype": want})


@onnx_op("Resize")
def _resize(cx: Ctx):
    """Resize -> upsample when it is one of F.interpolate's rules (what torch.onnx writes for it)."""
    x = cx.tensor(0)
    t = cx.type(x)
    a = cx.attrs
    mode, coord = a.get("mode", "nearest"), a.get("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest" and coord == "asymmetric" and a.get("nearest_mode", "round_prefer_floor") == "floor":
        attrs = {"mode": "nearest"}
    elif mode in ("linear", "cubic") and coord in ("half_pixel", "pytorch_half_pixel", "align_corners") and (
            mode == "linear" or math.isclose(a.get("cubic_coeff_a", -0.75), -0.75)):
        names = {("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear", ("cubic", 2): "bicubic"}
        name = names.get((mode, t.rank - 2))
        if name is None:
            raise located(cx.origin, f"Resize mode={mode} on a rank-{t.rank} tensor has no convdsl op")
        attrs = {"mode": name, "align_corners": coord == "align_corners"}
    else:
        raise located(cx.origin, f"Resize(mode={mode}, coordinate_transformation_mode={coord}) is none of "
                                 "F.interpolate's rules, which upsample implements")
    sizes = cx.arg(3)
    scales = cx.arg(2)
    if isinstance(sizes, (Const, Dims)) and (not isinstance(sizes, Const) or sizes.array.size):
        dims = sizes.values.tolist() if isinstance(sizes, Dims) else [int(d) for d in sizes.array]
        if any(not isinstance(d, int) for d in dims[2:]):
            raise located(cx.origin, "Resize to a size that depends on the batch has no convdsl op")
        attrs["size"] = tuple(int(d) for d in dims[2:])
    elif isinstance(scales, Const) and scales.array.size:
        sc = [float(v) for v in scales.array.reshape(-1)]
        if sc[:2] != [1.0, 1.0]:
            raise located(cx.origin, "Resize of the batch or channel dim has no convdsl op")
        attrs["scale"] = sc[2] if len(set(sc[2:])) == 1 else tuple(sc[2:])
    else:
        raise located(cx.origin, "Resize with computed scales and sizes has no convdsl mapping")
    if "size" in attrs and len(attrs["size"]) == 1:
        attrs["size"] = attrs["size"][0]
    return cx.add("upsample", [x], attrs)


@onnx_op("Pad")
def _pad(cx: Ctx):
    x = cx.tensor(0)
    pads = [int(p) for p in cx.const(1)]
    rank = cx.type(x).rank
    lo, hi = pads[:rank], pads[rank:]
    if any(lo[:2]) or any(hi[:2]):
        raise located(cx.origin, "padding the batch or channel dim has no convdsl op")
    mode = {"constant": "zeros", "reflect": "reflect", "edge": "replicate"}.get(cx.attrs.get("mode", "constant"))
    if mode is None:
        raise located(cx.origin, f"Pad mode {cx.attrs.get('mode')} has no convdsl op")
    value = _scalar(cx.arg(2)) or 0.0
    return cx.add("pad", [x], {"pad": tuple(p for pr in zip(lo[2:], hi[2:]) for p in pr), "mode": mode,
                               "value": value})


@onnx_op("DepthToSpace")
def _d2s(cx: Ctx):
    if cx.attrs.get("mode", "DCR") != "CRD":
        raise located(cx.origin, "DepthToSpace in DCR order has no convdsl op (pixel_shuffle is CRD)")
    return cx.add("pixel_shuffle", [cx.tensor(0)], {"factor": int(cx.attrs["blocksize"])})


@onnx_op("PRelu")
def _prelu(cx: Ctx):
    w = cx.arg(1)
    key = w.key[: -len(".as_channels")] if w.key and w.key.endswith(".as_channels") else w.key
    pid, params = cx.owner(weight=Const(w.array.reshape(-1), key))
    return cx.add("prelu", [cx.tensor(0)], {"shared": w.array.size == 1}, params, id=pid)


@onnx_op("Gelu")
def _gelu_op(cx: Ctx):  # opset 20's Gelu, which torch.onnx writes for nn.GELU at opset >= 20
    return cx.add("gelu", [cx.tensor(0)], {"approximate": cx.attrs.get("approximate", "none")})


ONNX["QuantizeLinear"] = onnx_quant.quantize_linear
ONNX["DequantizeLinear"] = onnx_quant.dequantize_linear


@onnx_op("Erf")
def _erf(cx: Ctx):  # GELU's whole erf form is matched first (_gelu_patterns); this is an Erf outside it
    return cx.add("erf", [cx.tensor(0)])


# ---- patterns ---------------------------------------------------------------------------------
def _gelu_patterns(graph, producer: dict, consumers: dict, env: dict) -> dict[str, tuple[str, list]]:
    """Erf-form GELU sub-graphs: output value name -> (input value name, the nodes replaced)."""
    out = {}

    def const_of(name):
        c = env.get(name)
        return float(c.array.reshape(-1)[0]) if isinstance(c, Const) and c.array.size == 1 else None

    for erf in (n for n in graph.node if n.op_type == "Erf"):
        scale = producer.get(erf.input[0])
        if scale is None or scale.op_type not in ("Div", "Mul"):
            continue
        c = const_of(scale.input[1])
        if c is None or not (math.isclose(c, math.sqrt(2), rel_tol=1e-4) if scale.op_type == "Div"
                             else math.isclose(c, 1 / math.sqrt(2), rel_tol=1e-4)):
            continue
        x = scale.input[0]
        nodes = [scale, erf]
        users = consumers.get(erf.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        nodes.append(add)
        cur = add.output[0]
        half = False
        seen_x = False
        for _ in range(3):  # up to: * x, * 0.5 (any order), or * (x * 0.5)
            users = consumers.get(cur, [])
            if len(users) != 1 or users[0].op_type != "Mul":
                break
            m = users[0]
            other = m.input[1] if m.input[0] == cur else m.input[0]
            if other == x and not seen_x:
                seen_x = True
            elif const_of(other) is not None and math.isclose(const_of(other), 0.5) and not half:
                half = True
            else:
                p = producer.get(other)
                if p is not None and p.op_type == "Mul" and x in p.input and not seen_x and not half and \
                        any(const_of(i) is not None and math.isclose(const_of(i), 0.5) for i in p.input):
                    nodes.append(p)
                    seen_x = half = True
                else:
                    break
            nodes.append(m)
            cur = m.output[0]
            if seen_x and half:
                out[cur] = (x, nodes)
                break
    return out


# ---- shape arithmetic (onnx_shapes) ------------------------------------------------------------
def _foldable(node, env: dict) -> bool:
    """Every input known at import time (constants, sizes), or a Shape of anything."""
    if node.op_type in ("Shape", "Size"):
        return True
    ins = [env.get(i) for i in node.input if i]
    if node.op_type == "Identity" and isinstance(ins[0], Const) and ins[0].key:
        return False  # a renamed parameter keeps its key (_identity)
    if node.op_type == "Gather" and isinstance(ins[0], Const) and ins[0].key and ins[0].array.dtype.kind == "f":
        return False  # a parameter table gathered by an index (a relative position bias): _gather
    return bool(ins) and all(isinstance(v, (Const, Dims)) for v in ins)


def _evaluable(node, env: dict) -> bool:
    """A node outside ``FOLDABLE`` whose inputs are all static constants and none a parameter: a size or
    index computation (``onnx_shapes.evaluate``).  A node reading a parameter (an initializer of floats:
    a weight, a learned scale) is left to its mapping, which keeps the parameter and its key."""
    ins = [env.get(i) for i in node.input if i]
    if not ins or not all(isinstance(v, Const) or (isinstance(v, Dims) and lift(v) is not v) for v in ins):
        return False
    return not any(isinstance(v, Const) and v.key and v.array.dtype.kind in "fc" for v in ins)


def _fold(cx: "Ctx", node, env: dict) -> list:
    ins, shapes = [], {}
    for i, name in enumerate(node.input):
        v = env.get(name) if name else None
        if isinstance(v, Value):
            shapes[i] = tuple(cx.type(v).shape)
        ins.append(v.array if isinstance(v, Const) else v)
    out = fold(node.op_type, cx.attrs, ins, shapes)
    if isinstance(out, Dims):
        return [out]
    src = env.get(node.input[0]) if node.input else None
    # a parameter only reshaped (timm's GRN gamma.view(1, 1, 1, -1)) is still that parameter
    key = src.key if isinstance(src, Const) and node.op_type in ("Reshape", "Unsqueeze", "Squeeze", "Cast") else None
    stored = (src.stored or tuple(src.array.shape)) if key else None
    return [Const(np.asarray(out), key, stored)]


# ---- the driver ---------------------------------------------------------------------------------------
def _scopes(name: str, known: set[str]) -> list[str]:
    """Module paths a node name places it in: ``a.b.c/Op`` (convdsl) or ``/a/a.b/c/Op`` (torch.onnx)."""
    if not name:
        return []
    if name.startswith("/"):
        parts = [p for p in name.split("/")[1:-1] if p]
        path, chain = "", []
        for p in parts:
            path = p if (not path or p.startswith(path + ".")) else f"{path}.{p}"
            chain.append(path)
        return chain
    scope = name.split("/", 1)[0]
    segs = scope.split(".")
    return [".".join(segs[:i]) for i in range(1, len(segs))]


def _scope_class(path: str) -> str:
    """A class name for an ONNX scope (none is recorded): its last non-numeric path segment."""
    for seg in reversed(path.split(".")):
        name = re.sub(r"\d+$", "", re.sub(r"\W", "_", seg))
        if name and not name.isdigit():
            return name
    return "scope"


def _f32(v: float) -> float:
    """A float32 attribute read back as the shortest decimal that rounds to it (1e-05, not 9.99e-06)."""
    return float(str(np.float32(v)))  # numpy writes the shortest decimal that rounds back (7 digits may not)


def _window_scope(b: Builder, scope, graph, env: dict, consumers: dict, opsets, file: str) -> None:
    """A ShiftedWindowAttentionV2 scope (onnx_window) as one window_attention(v2=true) named by its module
    path, once its last node is reached; a located error naming the scope and what differs if not exact."""
    chain = _scopes(scope.anchor.name, set())
    gchain = chain[: chain.index(scope.nid)] if scope.nid in chain else chain
    for c in gchain:
        b.modules.setdefault(c, "onnx." + _scope_class(c))
    origin = Origin(scope.anchor.name, scope.anchor.op_type, scope.nid, Span(file, 1, 1))
    xs = [env.get(i) for n in scope.nodes for i in n.input if isinstance(env.get(i), Value)]
    try:
        if not xs:
            raise onnx_window.NoMatch("the module reads no computed tensor")
        got = onnx_window.match(scope, graph, env, consumers, opsets, tuple(b.graph.type_of(xs[0]).shape))
    except onnx_window.NoMatch as e:
        what = "convdsl's export of window_attention" if scope.record is not None else \
            "torchvision's ShiftedWindowAttentionV2"
        raise located(origin, f"this looks like {what} ('{scope.nid}'), but it is not exactly window_attention: {e}",
                      "the form convdsl's exporter and torch.onnx write for torchvision's module is recognised, "
                      "nothing else") from None
    arrays = {local: c.array for local, c in got.params.items()}
    v = b.add("window_attention", [env[got.x]], got.attrs, id=scope.nid, chain=gchain, origin=origin,
              params=arrays)[0]
    env[scope.output] = v
    for name, a in got.sizes.items():
        env[name] = Const(a)


def load_model(path: str | os.PathLike):
    try:
        import onnx
    except ImportError:
        raise UsageError("importing .onnx files needs the onnx package", hint="pip install 'convdsl[onnx]'") from None
    p = Path_(path)
    if not p.is_file():
        raise SourceError(f"{path} does not exist")
    try:
        onnx.checker.check_model(str(p))  # from the path: no re-serialization of the loaded model
        model = onnx.load(str(p))
    except Exception as e:  # protobuf decode errors, checker errors...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(f"{path} is not a valid ONNX model ({first[:200]})",
                          hint="is the file complete? re-export it") from None
    return model


def Path_(p):
    from pathlib import Path

    return Path(p)


def import_file(path: str | os.PathLike, name: str | None = None) -> Imported:
    from onnx import numpy_helper

    model = load_model(path)
    graph = model.graph
    stem = name or re.sub(r"\W", "_", Path_(path).stem)
    b = Builder(stem)
    b.source_keys = {init.name for init in graph.initializer}
    env: dict[str, Any] = {}
    for init in graph.initializer:
        env[init.name] = Const(numpy_helper.to_array(init), init.name)
    inits = {i.name for i in graph.initializer}
    for inp in graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "N") for d in tt.shape.dim)
        shape = tuple("N" if not isinstance(d, int) and i == 0 else d for i, d in enumerate(shape))
        env[inp.name] = b.input(inp.name, TensorType(shape, ONNX_TO_DTYPE.get(tt.elem_type, "f32")))
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    skip: set[str] = set()
    file = str(path)
    quant = onnx_quant.State({o.name for o in graph.output})
    for node in graph.node:
        if node.op_type == "Constant":
            from onnx import helper

            attr = node.attribute[0]
            val = helper.get_attribute_value(attr)
            env[node.output[0]] = Const(numpy_helper.to_array(val) if hasattr(val, "dims") else np.asarray(val))
    gelus = _gelu_patterns(graph, producer, consumers, env)
    replaced = {n.name or id(n) for _, nodes in gelus.values() for n in nodes}
    matches = find_patterns(View(graph, producer, consumers, env, {o.name for o in graph.output}))
    matched = {id(n) for m in matches.values() for n in m.nodes}
    windows = onnx_window.find_scopes(graph, env)  # torchvision's ShiftedWindowAttentionV2, imported whole
    in_window = {id(n): s for s in windows for n in s.nodes}
    for i, node in enumerate(graph.node):
        scope = in_window.get(id(node))
        if scope is not None:
            if node is scope.last:
                _window_scope(b, scope, graph, env, consumers, model.opset_import, file)
            continue
        if node.op_type == "Constant" or node.name in skip:
            continue
        chain = _scopes(node.name, set())
        for c in chain:
            b.modules.setdefault(c, "onnx." + _scope_class(c))
        origin = Origin(node.name or f"#{i}", node.op_type, chain[-1] if chain else "", Span(file, 1, 1))
        cx = Ctx(b, node, chain, origin, env, consumers)
        cx.skip, cx.quant = skip, quant
        out0 = node.output[0] if node.output else None
        if out0 in gelus:
            x, _ = gelus[out0]
            env[out0] = b.add("gelu", [quant.value(cx, x)], {}, id=cx.default_id("gelu"), chain=chain,
                              origin=origin)[0]
            continue
        m = matches.get(out0)
        if m is not None and len(m.nodes) == 1 and not any(isinstance(env.get(i), (Value, onnx_quant.Deq))
                                                            for i in m.inputs):
            m = None  # one node over constants (a flip of a constant mask): evaluated below like any constant
        if m is not None:  # a composite pattern (onnx_patterns.PATTERNS) ends here
            pid, arrays = cx.owner(**m.params)
            ins = [quant.value(cx, i) for i in m.inputs]
            if not all(isinstance(i, Value) for i in ins):
                raise located(origin, f"the {m.op} pattern here reads a constant where convdsl needs a computed tensor")
            have = cx.type(ins[0]).shape
            if m.input_shape is not None and (len(have) != len(m.input_shape) or any(
                    d is not None and d != e for d, e in zip(m.input_shape, have))):
                raise located(origin, f"the {m.op} pattern here needs an input of shape {list(m.input_shape)}, "
                                      f"not {list(have)}")
            env[out0] = cx.add(m.op, ins, m.attrs, arrays, id=pid)
            continue
        if (node.name or id(node)) in replaced or (id(node) in matched and out0 not in matches):
            continue
        if node.op_type in onnx_quant.LAYERS and onnx_quant.layer(cx, conv_attrs, _bias_after) is not None:
            continue  # a quantized layer (qconv*d / qlinear) reading its int8 input itself
        if node.op_type in onnx_quant.PASSTHROUGH and onnx_quant.passthrough(cx, ONNX[node.op_type]) is not None:
            continue  # max-pooling or moving the int8 values between a DequantizeLinear and its QuantizeLinear
        quant.read_inputs(cx, node.input)  # any other reader of a DequantizeLinear gets a dequantize
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):  # never folded: they keep their integers
            env[out0] = ONNX[node.op_type](cx)
            continue
        if node.op_type in FOLDABLE and _foldable(node, env):
            try:
                result = _fold(cx, node, env)
            except ValueError as e:
                raise located(origin, f"{node.op_type} on sizes cannot be evaluated at import time ({e})",
                              "export the model with static shapes (a symbolic batch only)") from None
            for name_, v in zip(node.output, result):
                env[name_] = v
            continue
        if node.op_type not in FOLDABLE and _evaluable(node, env):
            ins = [None if not n else (env[n].array if isinstance(env[n], Const) else lift(env[n])) for n in node.input]
            try:
                result = evaluate(node, ins, model.opset_import)
            except ValueError as e:
                raise located(origin, f"{node.op_type} on constants cannot be evaluated at import time ({e})") from None
            for name_, v in zip(node.output, result):
                env[name_] = Const(v)
            continue
        if node.domain not in ("", "ai.onnx"):
            raise located(origin, f"custom-domain op {node.domain}.{node.op_type} has no convdsl mapping")
        if node.op_type in ("Shape", "Size", "ConstantOfShape", "Loop", "If", "Scan", "NonZero", "TopK", "Where"):
            raise located(origin, f"{node.op_type} (data-dependent or dynamic-shape computation) has no convdsl "
                                  "mapping", "export the model with static shapes and no control flow")
        fn = ONNX.get(node.op_type)
        if node.op_type in onnx_quant.OPERATOR_FORMAT:
            raise located(origin, f"{node.op_type} (an integer op of ONNX Runtime's QOperator format, of dynamic "
                                  "quantization, or of convdsl's export of an int8 layer with a float output) has no "
                                  "convdsl mapping",
                          "quantize the float model in the QDQ format (onnxruntime.quantization.quantize_static with "
                          "quant_format=QuantFormat.QDQ): its QuantizeLinear / DequantizeLinear pairs import as int8 "
                          "layers; a program convdsl quantized is CDL already: use its .cdl file, not its ONNX export")
        if fn is None:
            raise located(origin, f"ONNX op {node.op_type} has no convdsl mapping",
                          "supported ONNX ops: " + ", ".join(sorted(ONNX)))
        result = fn(cx)
        outs = result if isinstance(result, list) else [result]
        for name_, v in zip(node.output, outs):
            env[name_] = v
    values = []
    for o in graph.output:
        if isinstance(env.get(o.name), onnx_quant.Deq):
            origin = Origin(o.name, "DequantizeLinear", "", Span(file, 1, 1))
            quant.value(Ctx(b, producer[o.name], [], origin, env, consumers), o.name)
        v = env.get(o.name)
        if not isinstance(v, Value):
            raise ModelImportError(f"graph output {o.name} is a constant", Span(file, 1, 1))
        values.append(v)
    return b.result(values, [o.name for o in graph.output], Path_(path).name)
