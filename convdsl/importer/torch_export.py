"""Import a PyTorch module through ``torch.export``: ATen graph -> flat convdsl graph.

``torch.export`` (the documented route to PyTorch 2 graphs) traces the module
with a symbolic batch.  Each ATen op maps onto a convdsl op by the table
``ATEN`` below; parameters and buffers keep their state_dict keys (a node is
named by its parameter's key prefix: ``layer1.0.conv1``); ``nn_module_stack``
gives every node its chain of module instances, from which the CDL writer
rebuilds blocks.  Modules whose whole sub-graph is one convdsl op
(``nn.MultiheadAttention`` -> mhsa, torchvision's ShiftedWindowAttention ->
window_attention) are collapsed by the table ``MODULES``.
What has no mapping is a ``ModelImportError`` naming the node, its op and its
module path, located at the source line that created it.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from convdsl.errors import ModelImportError, Span, TraceError
from convdsl.ir.graph import Value
from convdsl.ir.ops.attention import CPB_HIDDEN
from convdsl.ir.types import TensorType

from convdsl.importer.builder import Builder, Imported, Origin, einsum, index_buffer, located, take

TORCH_DTYPES = {"torch.float32": "f32", "torch.float16": "f16", "torch.bfloat16": "bf16", "torch.float64": "f64",
                "torch.int64": "i64", "torch.int32": "i32", "torch.bool": "bool", "torch.uint8": "u8", "torch.int8": "i8"}
PASS_THROUGH = {"clone", "contiguous", "alias", "detach", "lift_fresh_copy", "_assert_tensor_metadata", "dropout_",
                "feature_dropout", "alpha_dropout"}
IGNORED = {"_assert_scalar", "sym_constrain_range_for_size", "_assert_tensor_metadata"}


@dataclass
class Param:
    """A parameter or buffer placeholder (state_dict key and value), not yet owned by an op."""

    key: str
    array: np.ndarray
    stored: tuple | None = None  # the shape the module holds it in, when ``array`` is a view of it


@dataclass
class Sym:
    """A symbolic size read with x.shape[i] (the batch)."""

    name: str


@dataclass
class Expanded:
    """expand() of a parameter: becomes part of a class_token when concatenated."""

    param: Param


class Ctx:
    """What a mapping sees: the builder, the fx node, its origin and chain, and helpers."""

    def __init__(self, b: Builder, node, chain: list[str], origin: Origin, state: dict[str, np.ndarray]) -> None:
        self.b, self.node, self.chain, self.origin, self.state = b, node, chain, origin, state

    @property
    def scope(self) -> str:
        return self.chain[-1] if self.chain else ""

    def out_shape(self) -> tuple:
        return _shape(self.node.meta["val"])

    def add(self, op: str, inputs: list[Value], attrs: dict | None = None, params: dict | None = None,
            id: str | None = None, exact: bool = False) -> Value | list[Value]:
        outs = self.b.add(op, inputs, attrs or {}, id=id or self.default_id(op), chain=self.chain,
                          origin=self.origin, params=params, exact=exact)
        return outs[0] if len(outs) == 1 else outs

    def default_id(self, op: str) -> str:
        """A stateless op inside a leaf module (nn.ReLU at layer1.0.relu) takes the module's path;
        others are named after the op inside their module."""
        scope = self.scope
        if scope and self.b.modules.get(scope, "").startswith("torch.nn.modules.") \
                and not _is_container(self.b.modules[scope]):
            return scope
        return f"{scope}.{op}" if scope else op

    def owner(self, *params: "Param | None", local: tuple[str, ...]) -> tuple[str, dict]:
        """The node id that makes each param's key ``<id>.<local>``, and the arrays by local name."""
        prefix = None
        arrays = {}
        for p, name in zip(params, local):
            if p is None:
                continue
            if not isinstance(p, Param) or not p.key.endswith("." + name):
                got = p.key if isinstance(p, Param) else "a computed tensor"
                raise located(self.origin, f"expects its {name} to be a parameter named '<module>.{name}', got {got}",
                              "convdsl ops own their weights; compute the weight outside the model")
            pre = p.key[: -len(name) - 1]
            if prefix is not None and pre != prefix:
                raise located(self.origin, f"its parameters belong to different modules ({prefix}, {pre})")
            prefix = pre
            arrays[name] = p.array
        return prefix or self.default_id("op"), arrays

    def tensor(self, v: Any) -> Value:
        """A tensor input; a free parameter becomes a `parameter` node named by its key."""
        if isinstance(v, Value):
            return v
        if isinstance(v, Param):
            return self.free_param(v)
        raise located(self.origin, f"needs a tensor input, got {_describe(v)}")

    def free_param(self, p: Param) -> Value:
        if p.key in self.b.graph:
            return Value(p.key, 0)
        x = next(iter(self.b.graph.inputs))
        shape = tuple(int(d) for d in p.array.shape) or (1,)
        out = self.b.add("parameter", [Value(x, 0)], {"shape": shape, "init": "zeros"}, id=p.key, chain=self.chain,
                         origin=self.origin, params={"weight": p.array.reshape(shape)}, exact=True)[0]
        if out.node != p.key:  # pragma: no cover - a node already has that name
            self.b.renamed[out.node] = p.key
        return out

    def type(self, v: Value) -> TensorType:
        return self.b.graph.type_of(v)


def _describe(v: Any) -> str:
    return type(v).__name__ if not isinstance(v, (int, float)) else repr(v)


def _shape(val) -> tuple:
    """Static dims as ints; the batch symbol as "N", an expression of it as convdsl writes one ("896*N")."""
    return tuple(int(d) if _is_static(d) else _sym_text(d) for d in val.shape)


def _sym_text(d) -> str:
    expr = getattr(getattr(d, "node", None), "expr", None)
    if expr is None or getattr(expr, "is_Symbol", False):
        return "N"
    return re.sub(r"\b[a-z]+\d+\b", "N", str(expr)).replace(" ", "")


def _is_static(d) -> bool:
    try:
        int(d)
        return not hasattr(d, "node") or d.node.is_constant()
    except Exception:
        return False


def _is_container(cls: str) -> bool:
    return cls.rsplit(".", 1)[-1] in ("Sequential", "ModuleList", "ModuleDict")


def _span(node) -> Span | None:
    trace = node.meta.get("stack_trace") or ""
    found = re.findall(r'File "([^"]+)", line (\d+)', trace)
    if not found:
        return None
    file, line = found[-1]
    return Span(file, int(line), 1)


# ---- the ATen table ------------------------------------------------------------------------
Mapping = Callable[..., Any]
ATEN: dict[str, Mapping] = {}


def aten(*names: str):
    def register(fn):
        for n in names:
            ATEN[n] = fn
        return fn

    return register


def _ints(v, n: int) -> Any:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    if len(v) == 1:
        return v[0]
    return v[0] if len(set(v)) == 1 else tuple(v)


@aten("conv1d", "conv2d", "conv3d")
def _conv(cx: Ctx, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    nd = w.array.ndim - 2
    pid, params = cx.owner(w, b, local=("weight", "bias"))
    pad = padding if isinstance(padding, str) else _ints(padding, nd)
    k = tuple(int(s) for s in w.array.shape[2:])
    return cx.add(f"conv{nd}d", [cx.tensor(x)], {"out": int(w.array.shape[0]), "k": k[0] if len(set(k)) == 1 else k,
                                                 "stride": _ints(stride, nd), "pad": pad,
                                                 "dilation": _ints(dilation, nd), "groups": int(groups),
                                                 "bias": b is not None}, params, id=pid)


@aten("convolution")
def _convolution(cx: Ctx, x, w, b, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        return _conv_t(cx, x, w, b, stride, padding, output_padding, groups, dilation)
    return _conv(cx, x, w, b, stride, padding, dilation, groups)


@aten("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv_t(cx: Ctx, x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    nd = w.array.ndim - 2
    pid, params = cx.owner(w, b, local=("weight", "bias"))
    k = tuple(int(s) for s in w.array.shape[2:])
    return cx.add(f"conv_transpose{nd}d", [cx.tensor(x)],
                  {"out": int(w.array.shape[1]) * int(groups), "k": k[0] if len(set(k)) == 1 else k,
                   "stride": _ints(stride, nd), "pad": _ints(padding, nd), "output_pad": _ints(output_padding, nd),
                   "dilation": _ints(dilation, nd), "groups": int(groups), "bias": b is not None}, params, id=pid)


def _bn(cx: Ctx, x, w, b, mean, var, momentum, eps):
    if not isinstance(mean, Param):
        raise located(cx.origin, "batch norm without running statistics (training mode) has no inference form",
                      "call model.eval() before importing")
    pid, params = cx.owner(w, b, mean, var, local=("weight", "bias", "running_mean", "running_var"))
    nbt = cx.state.get(f"{pid}.num_batches_tracked")
    if nbt is not None:
        params["num_batches_tracked"] = nbt
    return cx.add("batchnorm", [cx.tensor(x)], {"eps": float(eps), "momentum": float(momentum or 0.1),
                                                "affine": w is not None}, params, id=pid)


@aten("batch_norm")
def _batch_norm(cx, x, w, b, mean, var, training, momentum, eps, cudnn=True):
    return _bn(cx, x, w, b, mean, var, momentum, eps)


@aten("_native_batch_norm_legit_no_training")
def _bn_no_training(cx, x, w, b, mean, var, momentum, eps):
    return [_bn(cx, x, w, b, mean, var, momentum, eps), None, None]


@aten("layer_norm")
def _layer_norm(cx: Ctx, x, shape, w=None, b=None, eps=1e-5, cudnn=True):
    pid, params = cx.owner(w, b, local=("weight", "bias"))
    return cx.add("layernorm", [cx.tensor(x)], {"dims": len(shape), "eps": float(eps), "affine": w is not None,
                                                "bias": b is not None}, params, id=pid if params else None)


@aten("group_norm")
def _group_norm(cx: Ctx, x, groups, w=None, b=None, eps=1e-5, cudnn=True):
    pid, params = cx.owner(w, b, local=("weight", "bias"))
    return cx.add("groupnorm", [cx.tensor(x)], {"groups": int(groups), "eps": float(eps), "affine": w is not None},
                  params, id=pid if params else None)


@aten("linear")
def _linear(cx: Ctx, x, w, b=None):
    pid, params = cx.owner(w, b, local=("weight", "bias"))
    return cx.add("linear", [cx.tensor(x)], {"out": int(w.array.shape[0]), "bias": b is not None}, params, id=pid)


def _simple(op: str, **fixed):
    def fn(cx: Ctx, x, *rest, **kw):
        return cx.add(op, [cx.tensor(x)], dict(fixed))

    return fn


for _name, _op in (("relu", "relu"), ("relu_", "relu"), ("silu", "silu"), ("silu_", "silu"), ("sigmoid", "sigmoid"),
                   ("sigmoid_", "sigmoid"), ("tanh", "tanh"), ("erf", "erf"), ("hardswish", "hardswish"),
                   ("hardswish_", "hardswish"), ("hardsigmoid", "hardsigmoid"), ("hardsigmoid_", "hardsigmoid"),
                   ("neg", "neg"), ("relu6", "relu6")):
    ATEN[_name] = _simple(_op)


@aten("hardtanh", "hardtanh_")
def _hardtanh(cx: Ctx, x, lo=-1.0, hi=1.0):
    if (lo, hi) != (0.0, 6.0):
        raise located(cx.origin, f"hardtanh({lo}, {hi}) has no convdsl op (relu6 is hardtanh(0, 6))")
    return cx.add("relu6", [cx.tensor(x)])


@aten("gelu", "gelu_")
def _gelu(cx: Ctx, x, approximate="none"):
    return cx.add("gelu", [cx.tensor(x)], {"approximate": approximate})


@aten("leaky_relu", "leaky_relu_")
def _leaky(cx: Ctx, x, slope=0.01):
    return cx.add("leaky_relu", [cx.tensor(x)], {"slope": float(slope)})


@aten("softmax", "_softmax")
def _softmax(cx: Ctx, x, dim, *rest):
    return cx.add("softmax", [cx.tensor(x)], {"dim": int(dim)})


@aten("dropout", "native_dropout")
def _dropout(cx: Ctx, x, p=0.5, train=False):
    return x if p == 0 else cx.add("dropout", [cx.tensor(x)], {"p": float(p)})


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _binary(op: str, scalar: Callable[[float], dict] | None):
    def fn(cx: Ctx, a, b, alpha=1):
        if alpha != 1:
            raise located(cx.origin, f"{op} with alpha={alpha} has no convdsl op")
        if _is_num(b) and scalar is not None:
            return cx.add("affine", [cx.tensor(a)], scalar(float(b)))
        if _is_num(a) and op in ("add", "mul"):
            return cx.add("affine", [cx.tensor(b)], scalar(float(a)))
        return cx.add(op, [cx.tensor(a), cx.tensor(b)])

    return fn


ATEN["add"] = ATEN["add_"] = _binary("add", lambda v: {"shift": v})
ATEN["sub"] = ATEN["sub_"] = _binary("sub", lambda v: {"shift": -v})
ATEN["mul"] = ATEN["mul_"] = _binary("mul", lambda v: {"scale": v})
ATEN["div"] = ATEN["div_"] = _binary("div", lambda v: {"scale": 1.0 / v})
ATEN["matmul"] = ATEN["bmm"] = _binary("matmul", None)


@aten("addcmul")
def _addcmul(cx: Ctx, x, t1, t2, value=1):
    # x + value * t1 * t2 (timm's GlobalResponseNorm: x.addcmul(gamma, x * nx) + beta...)
    prod = cx.add("mul", [cx.tensor(t1), cx.tensor(t2)])
    if value != 1:
        prod = cx.add("affine", [prod], {"scale": float(value)})
    return cx.add("add", [cx.tensor(x), prod])


@aten("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices")
def _max_pool(cx: Ctx, x, k, stride=(), padding=0, dilation=1, ceil_mode=False):
    nd = len(k) if isinstance(k, (list, tuple)) else 2
    out = cx.add(f"maxpool{nd}d", [cx.tensor(x)], {"k": _ints(k, nd), "stride": _ints(stride, nd) if stride else None,
                                                   "pad": _ints(padding, nd), "dilation": _ints(dilation, nd),
                                                   "ceil_mode": bool(ceil_mode)})
    return [out, None] if cx.node.target.__name__.startswith("max_pool2d_with_indices") else out


@aten("avg_pool1d", "avg_pool2d", "avg_pool3d")
def _avg_pool(cx: Ctx, x, k, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor=None):
    if divisor is not None:
        raise located(cx.origin, "avg_pool with divisor_override has no convdsl op")
    nd = len(k) if isinstance(k, (list, tuple)) else 2
    return cx.add(f"avgpool{nd}d", [cx.tensor(x)], {"k": _ints(k, nd), "stride": _ints(stride, nd) if stride else None,
                                                    "pad": _ints(padding, nd), "ceil_mode": bool(ceil_mode),
                                                    "count_include_pad": bool(count_include_pad)})


@aten("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d")
def _adaptive_avg(cx: Ctx, x, out):
    nd = len(out) if isinstance(out, (list, tuple)) else 1
    return cx.add(f"adaptive_avgpool{nd}d", [cx.tensor(x)], {"out": _ints(out, nd)})


@aten("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")
def _adaptive_max(cx: Ctx, x, out):
    nd = len(out) if isinstance(out, (list, tuple)) else 1
    return [cx.add(f"adaptive_maxpool{nd}d", [cx.tensor(x)], {"out": _ints(out, nd)}), None]


@aten("mean", "amax")
def _reduce(cx: Ctx, x, dims=None, keepdim=False, dtype=None):
    op = "mean" if cx.node.target.__name__.startswith("mean") else "amax"
    t = cx.type(cx.tensor(x))
    dims = list(range(t.rank)) if dims is None or dims == [] else dims
    return cx.add(op, [cx.tensor(x)], {"dims": _ints(dims, 0) if len(dims) == 1 else tuple(dims),
                                       "keepdim": bool(keepdim)})


@aten("flatten")
def _flatten(cx: Ctx, x, start=0, end=-1):
    return cx.add("flatten", [cx.tensor(x)], {"start": int(start), "end": int(end)})


@aten("view", "reshape", "_unsafe_view", "unflatten", "view_as", "reshape_as", "expand_as")
def _view(cx: Ctx, x, *rest):
    if isinstance(x, Param) and x.array is not None and x.array.dtype.kind in "iu":
        return Param(x.key, x.array.reshape(cx.out_shape()), x.stored or x.array.shape)  # a constant (see _index)
    v = cx.tensor(x)
    t = cx.type(v)
    out = cx.out_shape()
    if tuple(t.shape) == out:
        return v
    spec = [0 if (not isinstance(d, int) and i < t.rank and t.shape[i] == d) else (-1 if not isinstance(d, int) else d)
            for i, d in enumerate(out)]  # a dim copied as it is (0), the one that depends on the batch (-1)
    if spec.count(-1) > 1:
        raise located(cx.origin, f"reshape to {list(out)}: more than one size depends on the batch")
    return cx.add("reshape", [v], {"shape": tuple(spec)})


@aten("index")
def _index(cx: Ctx, x, indices):
    """``x[..., idx]`` with one constant integer index (a buffer: MaxViT's relative position index,
    EfficientFormer's and LeViT's [N, N] attention bias index) -> ``take`` holding the buffer under its
    key (``builder.take``); an index that is no buffer, or one read twice, -> index_select (and a reshape
    when the index has more than one dim)."""
    given = [(d, i) for d, i in enumerate(indices) if i is not None]
    if len(given) != 1 or not isinstance(given[0][1], Param) or given[0][1].array is None or \
            given[0][1].array.dtype.kind not in "iu" or given[0][1].array.ndim < 1:
        raise located(cx.origin, "indexing has a convdsl mapping only with one constant integer index "
                                 "(index_select)")
    d, idx = given[0]
    v = cx.tensor(x)
    t = cx.type(v)
    if index_buffer(cx.b, idx.key, idx.array, t.shape[d]):
        return take(cx, v, d, idx.key, idx.array, idx.stored)
    flat = cx.add("index_select", [v], {"index": tuple(int(i) % t.shape[d] for i in idx.array.reshape(-1)), "dim": d})
    if idx.array.ndim == 1:
        return flat
    return cx.add("reshape", [flat], {"shape": tuple(t.shape[:d]) + tuple(idx.array.shape) + tuple(t.shape[d + 1:])})


@aten("einsum")
def _einsum(cx: Ctx, equation, operands, path=None):
    if len(operands) != 2:
        raise located(cx.origin, f"einsum '{equation}' with {len(operands)} operands has no convdsl mapping")
    return einsum(cx, equation, cx.tensor(operands[0]), cx.tensor(operands[1]))


@aten("permute")
def _permute(cx: Ctx, x, dims):
    return cx.add("permute", [cx.tensor(x)], {"dims": tuple(int(d) for d in dims)})


@aten("transpose", "swapaxes", "swapdims")
def _transpose(cx: Ctx, x, a, b):
    return cx.add("transpose", [cx.tensor(x)], {"dim0": int(a), "dim1": int(b)})


@aten("t")
def _t(cx: Ctx, x):
    return cx.add("transpose", [cx.tensor(x)], {"dim0": 0, "dim1": 1})


@aten("squeeze")
def _squeeze(cx: Ctx, x, dims=None):
    v = cx.tensor(x)
    t = cx.type(v)
    dims = [dims] if isinstance(dims, int) else dims
    if dims is not None:
        dims = [d for d in dims if t.shape[d] == 1]
        if not dims:
            return v
    return cx.add("squeeze", [v], {"dims": None if dims is None else (dims[0] if len(dims) == 1 else tuple(dims))})


@aten("unsqueeze")
def _unsqueeze(cx: Ctx, x, dim):
    return cx.add("unsqueeze", [cx.tensor(x)], {"dim": int(dim)})


@aten("cat", "concat")
def _cat(cx: Ctx, tensors, dim=0):
    if len(tensors) == 2 and isinstance(tensors[0], Expanded):  # cat([cls.expand(N, -1, -1), x], 1)
        p = tensors[0].param
        return cx.add("class_token", [cx.tensor(tensors[1])], {"tokens": int(p.array.shape[1])},
                      {"class_token": p.array}, id=p.key, exact=True)
    return cx.add("concat", [cx.tensor(t) for t in tensors], {"dim": int(dim)})


@aten("expand")
def _expand(cx: Ctx, x, size, implicit=False):
    if isinstance(x, Param):
        return Expanded(x)
    v = cx.tensor(x)
    if tuple(cx.type(v).shape) == cx.out_shape():
        return v
    raise located(cx.origin, "expand of a computed tensor has no convdsl op (broadcasting ops expand implicitly)")


@aten("split", "split_with_sizes")
def _split(cx: Ctx, x, sizes, dim=0):
    v = cx.tensor(x)
    outs = cx.add("split", [v], {"sizes": sizes if isinstance(sizes, int) else tuple(sizes), "dim": int(dim)})
    return outs if isinstance(outs, list) else [outs]


@aten("chunk")
def _chunk(cx: Ctx, x, chunks, dim=0):
    outs = cx.add("split", [cx.tensor(x)], {"chunks": int(chunks), "dim": int(dim)})
    return outs if isinstance(outs, list) else [outs]


@aten("unbind")
def _unbind(cx: Ctx, x, dim=0):
    v = cx.tensor(x)
    n = cx.type(v).shape[dim]
    outs = cx.add("split", [v], {"chunks": int(n), "dim": int(dim)}) if n > 1 else [v]
    outs = outs if isinstance(outs, list) else [outs]
    return [cx.add("squeeze", [o], {"dims": int(dim)}) for o in outs]


@aten("select")
def _select(cx: Ctx, x, dim, index):
    return cx.add("select", [cx.tensor(x)], {"index": int(index), "dim": int(dim)})


@aten("slice")
def _slice(cx: Ctx, x, dim=0, start=None, end=None, step=1):
    v = cx.tensor(x)
    t = cx.type(v)
    size = t.shape[dim]
    start = 0 if start is None else int(start)
    if not isinstance(size, int):
        if start == 0 and (end is None or end >= 2 ** 62) and step == 1:
            return v
        raise located(cx.origin, "slicing the batch has no convdsl op")
    end = size if end is None else min(int(end), size)
    start, end = start % size if start < 0 else start, end % size if end < 0 else end
    if step != 1:  # Swin's PatchMerging x[..., 0::2, 1::2, :]: a gather of every step-th position
        keep = list(range(size))[start:end:step]
        return cx.add("index_select", [v], {"index": tuple(keep), "dim": int(dim) % cx.type(v).rank})
    if (start, end) == (0, size):
        return v
    sizes = [s for s in (start, end - start, size - end) if s > 0]
    parts = cx.add("split", [v], {"sizes": tuple(sizes), "dim": int(dim)})
    parts = parts if isinstance(parts, list) else [parts]
    return parts[1 if start > 0 else 0]


@aten("constant_pad_nd", "pad")
def _pad(cx: Ctx, x, pad, *rest):
    mode = rest[0] if rest and isinstance(rest[0], str) else "constant"
    value = rest[-1] if rest and _is_num(rest[-1]) else 0.0
    v = cx.tensor(x)
    if not any(int(p) for p in pad):
        return v  # Swin's PatchMerging pads H and W to even sizes: nothing when they already are
    while len(pad) >= 2 and not int(pad[-1]) and not int(pad[-2]):
        pad = pad[:-2]  # F.pad lists the last dim first: trailing zero pairs are the leading dims
    nd = len(pad) // 2
    if cx.type(v).rank - 2 < nd:
        raise located(cx.origin, "padding the channel or batch dim has no convdsl op")
    pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(nd)][::-1]  # F.pad lists the last dim first
    spatial = cx.type(v).rank - 2
    pairs = [(0, 0)] * (spatial - nd) + pairs
    mode = {"constant": "zeros", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}[mode]
    return cx.add("pad", [v], {"pad": tuple(p for pr in pairs for p in pr), "mode": mode, "value": float(value or 0.0)})


@aten("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d", "upsample_linear1d",
      "upsample_trilinear3d", "upsample_bicubic2d")
def _upsample(cx: Ctx, x, size=None, *rest):
    name = cx.node.target.__name__.split(".")[0]
    mode = {"nearest": "nearest", "bilinear": "bilinear", "linear": "linear", "trilinear": "trilinear",
            "bicubic": "bicubic"}[re.sub(r"upsample_|\d+d", "", name)]
    align = bool(rest[0]) if mode != "nearest" and rest and isinstance(rest[0], bool) else False
    scales = rest[-1] if rest and isinstance(rest[-1], (list, tuple)) else None
    attrs = {"mode": mode, "align_corners": align}
    if size is not None:
        attrs["size"] = _ints(size, 0) if len(size) == 1 else tuple(int(s) for s in size)
    elif scales:
        attrs["scale"] = float(scales[0]) if len(set(scales)) == 1 else tuple(float(s) for s in scales)
    else:
        attrs["size"] = tuple(cx.out_shape()[2:])
    return cx.add("upsample", [cx.tensor(x)], attrs)


@aten("pixel_shuffle")
def _pixel_shuffle(cx: Ctx, x, r):
    return cx.add("pixel_shuffle", [cx.tensor(x)], {"factor": int(r)})


@aten("scaled_dot_product_attention")
def _sdpa(cx: Ctx, q, k, v, mask=None, dropout=0.0, causal=False, scale=None, enable_gqa=False):
    # softmax(q k^T * scale [+ mask]) v, written with convdsl's matmul/softmax (exact, readable)
    if causal:
        raise located(cx.origin, "scaled_dot_product_attention(is_causal=True) outside nn.MultiheadAttention has no "
                                 "convdsl mapping", "use mhsa(mask=causal) in CDL")
    q, k, v = cx.tensor(q), cx.tensor(k), cx.tensor(v)
    d = cx.type(q).shape[-1]
    s = float(scale) if scale is not None else 1.0 / math.sqrt(d)
    kt = cx.add("transpose", [k], {"dim0": -2, "dim1": -1})
    logits = cx.add("affine", [cx.add("matmul", [q, kt])], {"scale": s})
    if mask is not None:
        m = cx.tensor(mask)
        if cx.type(m).dtype == "bool":
            raise located(cx.origin, "a boolean attention mask has no convdsl mapping outside nn.MultiheadAttention")
        logits = cx.add("add", [logits, m])
    return cx.add("matmul", [cx.add("softmax", [logits], {"dim": -1}), v])


@aten("linalg_vector_norm")
def _vector_norm(cx: Ctx, x, p=2.0, dims=None, keepdim=False, dtype=None):
    return cx.add("vector_norm", [cx.tensor(x)], {"p": float(p), "dims": tuple(dims) if len(dims) > 1 else dims[0],
                                                  "keepdim": bool(keepdim)})


@aten("glu")
def _glu(cx: Ctx, x, dim=-1):
    return cx.add("glu", [cx.tensor(x)], {"dim": int(dim)})


@aten("prelu", "_prelu_kernel")
def _prelu(cx: Ctx, x, w):
    pid, params = cx.owner(w, local=("weight",))
    return cx.add("prelu", [cx.tensor(x)], {"shared": w.array.size == 1, "init": 0.25}, params, id=pid)


@aten("flip")
def _flip(cx: Ctx, x, dims):
    return cx.add("flip", [cx.tensor(x)], {"dims": tuple(dims) if len(dims) > 1 else dims[0]})


@aten("roll")
def _roll(cx: Ctx, x, shifts, dims=()):
    """torch.roll along given dims (timm Swin's cyclic shift) as split + concat, which is exact:
    roll(x, s, d) = concat([x[-s:], x[:-s]], d).  A roll of the flattened tensor (no dims) is refused."""
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims or len(dims) != len(shifts) or not all(isinstance(s, int) for s in shifts):
        raise located(cx.origin, "torch.roll without dims (of the flattened tensor) or with computed shifts has "
                                 "no convdsl op")
    v = cx.tensor(x)
    for s, d in zip(shifts, dims):
        t = cx.type(v)
        d = int(d) % t.rank
        n = t.shape[d]
        if not isinstance(n, int) or d == 0:
            raise located(cx.origin, "torch.roll along the batch or a symbolic dim has no convdsl op")
        s %= n
        if s:
            head, tail = cx.add("split", [v], {"dim": d, "sizes": (n - s, s)})
            v = cx.add("concat", [tail, head], {"dim": d})
    return v


# ---- modules mapped as a whole ----------------------------------------------------------------------
def _mha(cx: Ctx, mod, path: str, inputs: list[Value]):
    if not getattr(mod, "batch_first", False):
        raise located(cx.origin, "nn.MultiheadAttention(batch_first=False) takes [L, N, C]; convdsl's attention "
                                 "takes [N, L, C]", "construct it with batch_first=True")
    if not mod._qkv_same_embed_dim:
        raise located(cx.origin, "nn.MultiheadAttention with kdim/vdim different from embed_dim as self-attention")
    params = {"in_proj_weight": mod.in_proj_weight, "out_proj.weight": mod.out_proj.weight}
    if mod.in_proj_bias is not None:
        params["in_proj_bias"] = mod.in_proj_bias
    if mod.out_proj.bias is not None:
        params["out_proj.bias"] = mod.out_proj.bias
    attrs = {"heads": mod.num_heads, "dim": mod.embed_dim, "qkv_bias": mod.in_proj_bias is not None,
             "proj_bias": mod.out_proj.bias is not None, "dropout": float(mod.dropout)}
    op = "mhsa" if len(inputs) == 1 else "cross_attention"
    if op == "cross_attention":
        inputs = inputs[:2]
    return op, attrs, {k: v.detach().numpy() for k, v in params.items()}, inputs


def _swin_attention(cx: Ctx, mod, path: str, inputs: list[Value]):
    """torchvision's ShiftedWindowAttention and ShiftedWindowAttentionV2 (v2=true: cosine attention,
    logit_scale, cpb_mlp; its relative_coords_table buffer is derived like relative_position_index)."""
    import torch

    params = {n: p.detach().numpy() for n, p in mod.named_parameters()}
    window, shift = list(mod.window_size), list(mod.shift_size)
    attrs = {"heads": mod.num_heads, "window": window[0] if len(set(window)) == 1 else tuple(window),
             "shift": shift[0] if len(set(shift)) == 1 else tuple(shift), "qkv_bias": "qkv.bias" in params,
             "proj_bias": "proj.bias" in params, "dropout": float(mod.attention_dropout),
             "proj_dropout": float(mod.dropout)}
    if "logit_scale" in params:
        mlp = getattr(mod, "cpb_mlp", None)
        shapes = [tuple(p.shape) for p in mlp.parameters()] if mlp is not None else []
        if shapes != [(CPB_HIDDEN, 2), (CPB_HIDDEN,), (mod.num_heads, CPB_HIDDEN)] or \
                not isinstance(mlp[1], torch.nn.ReLU):
            raise located(cx.origin, f"a ShiftedWindowAttentionV2 whose cpb_mlp is not Linear(2, {CPB_HIDDEN}) - "
                                     f"ReLU - Linear({CPB_HIDDEN}, heads, bias=False) has no convdsl op")
        attrs["v2"] = True
    return "window_attention", attrs, params, inputs[:1]


def _layernorm2d(cx: Ctx, mod, path: str, inputs: list[Value]):
    """A LayerNorm over the channels of [N, C, H, W] (permute, layer_norm, permute in the graph)."""
    affine = mod.weight is not None
    if affine != (mod.bias is not None) or tuple(mod.normalized_shape) != (cx.type(inputs[0]).shape[1],):
        raise located(cx.origin, "a LayerNorm2d with a weight but no bias has no convdsl op")
    params = {"weight": mod.weight.detach().numpy(), "bias": mod.bias.detach().numpy()} if affine else {}
    return "layernorm2d", {"eps": float(mod.eps), "affine": affine}, params, inputs[:1]


MODULES: dict[str, Callable] = {
    "torch.nn.modules.activation.MultiheadAttention": _mha,
    "torchvision.models.swin_transformer.ShiftedWindowAttention": _swin_attention,
    "torchvision.models.swin_transformer.ShiftedWindowAttentionV2": _swin_attention,
    "torchvision.models.convnext.LayerNorm2d": _layernorm2d,  # whole: its permutes would take its name
    "timm.layers.norm.LayerNorm2d": _layernorm2d,
}


# ---- the driver ----------------------------------------------------------------------------------
def _dtype(val) -> str:
    d = str(val.dtype)
    if d not in TORCH_DTYPES:
        raise ModelImportError(f"input dtype {d} has no convdsl dtype")
    return TORCH_DTYPES[d]


def export_program(module, example_inputs: tuple, dynamic_batch: bool = True):
    """torch.export with a symbolic batch (falling back to the static shapes when the model fixes it)."""
    import torch

    module = module.eval()
    errors = []
    for dynamic in ((True, False) if dynamic_batch else (False,)):
        shapes = None
        if dynamic:
            n = torch.export.Dim("N", min=1, max=4096)
            shapes = tuple({0: n} for _ in example_inputs)
        try:
            with torch.no_grad():
                return torch.export.export(module, tuple(example_inputs), dynamic_shapes=shapes), dynamic
        except Exception as e:  # torch raises many kinds; the last one is reported
            errors.append(e)
    e = errors[-1]
    text = str(e).strip().splitlines()
    first = next((line for line in text if line.strip()), type(e).__name__)
    kind = "data-dependent control flow" if "data-dependent" in str(e) or "GuardOnDataDependent" in type(e).__name__ \
        or "Could not guard" in str(e) else "a construct torch.export cannot trace"
    raise TraceError(f"torch.export cannot trace {type(module).__name__}: {kind}", notes=[first[:300]],
                     hint="convdsl imports what torch.export can capture as one graph; make the control flow "
                          "depend on shapes or constants, or export the model to ONNX yourself") from None


def import_exported(ep, module, name: str, dynamic: bool) -> Imported:
    import torch

    b = Builder(name)
    gm = ep.graph_module
    sig = ep.graph_signature
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict(keep_vars=False).items()}
    consts = {k: v.detach().cpu().numpy() for k, v in getattr(ep, "constants", {}).items() if hasattr(v, "detach")}
    kinds = {}
    for spec in sig.input_specs:
        kinds[spec.arg.name] = (spec.kind.name, spec.target)
    for path, mod in module.named_modules():
        b.modules[path] = f"{type(mod).__module__}.{type(mod).__qualname__}"
    env: dict[str, Any] = {}
    groups: dict[str, list] = {}  # module path -> fx nodes inside a module mapped as a whole
    mapped_paths = {p for p, c in b.modules.items() if c in MODULES}
    node_group: dict[str, str] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        paths = [p for p, _ in stack.values()]
        if not isinstance(node.meta.get("val"), torch.Tensor):
            continue  # size arithmetic (operator.mul on the batch...) is evaluated as usual, outside the group
        if node.op == "call_function" and _target_name(node) in PASS_THROUGH and node.args and \
                getattr(node.args[0], "name", None) not in node_group:
            continue  # an alias of the module's input (Swin's x) is that input, not a tensor it computes
        for p in paths:
            if p in mapped_paths:
                node_group[node.name] = p
                groups.setdefault(p, []).append(node)
                break
    emitted: dict[str, Value] = {}
    user_index = 0
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        chain = [p for p, _ in stack.values() if p]
        module_path = chain[-1] if chain else ""
        origin = Origin(node.name, str(node.target) if node.op == "call_function" else node.op, module_path, _span(node))
        if node.op == "placeholder":
            kind, target = kinds.get(node.name, ("USER_INPUT", None))
            if kind == "USER_INPUT":
                val = node.meta["val"]
                shape = tuple("N" if (dynamic and i == 0) else int(d) for i, d in enumerate(val.shape))
                env[node.name] = b.input(f"x{user_index}" if user_index else "x", TensorType(shape, _dtype(val)))
                user_index += 1
            elif kind in ("PARAMETER", "BUFFER"):
                arr = state.get(target)
                if arr is None:  # a non-persistent buffer
                    arr = dict(module.named_buffers()).get(target)
                    arr = arr.detach().cpu().numpy() if arr is not None else None
                env[node.name] = Param(target, arr)
            elif kind == "CONSTANT_TENSOR":
                env[node.name] = Param(target, consts[target])
            else:
                raise located(origin, f"input of kind {kind} is not supported")
            continue
        if node.op == "output":
            outs = node.args[0]
            values = []
            for o in outs:
                v = env.get(o.name) if hasattr(o, "name") else o
                if not isinstance(v, Value):
                    v = Ctx(b, node, [], origin, state).tensor(v)
                values.append(v)
            return b.result(values, ["y" if len(values) == 1 else f"y{i}" for i in range(len(values))], "")
        if node.op != "call_function":
            raise located(origin, f"fx node kind {node.op} is not supported")
        if node.name in node_group:
            path = node_group[node.name]
            members = {n.name for n in groups[path]}
            if any(u.name not in members for u in node.users):
                if path in emitted:
                    raise located(origin, f"module {path} returns more than one tensor used outside it")
                mod = module.get_submodule(path)
                ext = []
                for n in groups[path]:
                    for a in n.all_input_nodes:
                        if a.name not in members and isinstance(env.get(a.name), Value) and env[a.name] not in ext:
                            ext.append(env[a.name])
                gchain = chain[: chain.index(path)] if path in chain else chain
                cx = Ctx(b, node, gchain, origin, state)
                op, attrs, params, inputs = MODULES[b.modules[path]](cx, mod, path, ext)
                v = b.add(op, inputs, attrs, id=path, chain=gchain, origin=origin, params=params)[0]
                emitted[path] = v
                env[node.name] = v
            continue
        target = node.target
        if target in (operator.getitem,):
            seq, i = node.args
            env[node.name] = _get(env, seq)[i]
            continue
        if target in (operator.mul, operator.add, operator.floordiv, operator.sub):
            env[node.name] = Sym("N")
            continue
        name = getattr(target, "__name__", str(target)).split(".")[0]
        if name == "sym_size":
            x, d = node.args
            val = env[x.name]
            t = b.graph.type_of(val) if isinstance(val, Value) else None
            env[node.name] = Sym(str(t.shape[d])) if t is not None and not isinstance(t.shape[d], int) \
                else int(t.shape[d]) if t is not None else Sym("N")
            continue
        if name in IGNORED:
            continue
        args = [_resolve(env, a) for a in node.args]
        kwargs = {k: _resolve(env, v) for k, v in node.kwargs.items()}
        if name in PASS_THROUGH:
            env[node.name] = args[0]
            continue
        fn = ATEN.get(name)
        if fn is None:
            raise located(origin, f"has no convdsl mapping (aten.{name})",
                          "supported ATen ops: " + ", ".join(sorted(ATEN)))
        cx = Ctx(b, node, chain, origin, state)
        try:
            env[node.name] = fn(cx, *args, **kwargs)
        except TypeError as e:
            raise located(origin, f"unexpected arguments for the mapping ({e})") from None
    raise ModelImportError("the exported graph has no output")  # pragma: no cover


def _target_name(node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _get(env, seq):
    return env[seq.name] if hasattr(seq, "name") else seq


def _resolve(env, a):
    if hasattr(a, "name") and hasattr(a, "op"):
        return env.get(a.name)
    if isinstance(a, (list, tuple)):
        return type(a)(_resolve(env, x) for x in a)
    if hasattr(a, "node") and hasattr(a, "__int__"):  # a SymInt
        return Sym("N")
    dtype = type(a).__name__
    if dtype == "dtype" or dtype == "device" or dtype == "layout" or dtype == "memory_format":
        return str(a)
    return a


def import_module(module, example_inputs: tuple, name: str | None = None, dynamic_batch: bool = True) -> Imported:
    """An ``nn.Module`` and example inputs -> the flat imported graph."""
    ep, dynamic = export_program(module, example_inputs, dynamic_batch)
    return import_exported(ep, module, name or _snake(type(module).__name__), dynamic)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


__all__ = ["import_module", "import_exported", "export_program", "ATEN", "MODULES"]
