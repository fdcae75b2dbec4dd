"""TVM lowering table: op name -> a function that emits Relax IR for one node.

The graph is lowered directly with a ``relax.BlockBuilder`` (no detour through
PyTorch): one Relax function ``main`` whose parameters are the network inputs,
one dataflow binding (or a few) per graph node, in the graph's deterministic
topological order.

An entry is ``fn(cx, node, args, ins) -> expr | list[expr]``:

- ``cx`` is the ``Lowerer`` (block builder, target name, weights as numpy),
- ``args`` the Relax values of the node's inputs (in port order),
- ``ins`` their convdsl types with every symbolic dim bound to a size.

It returns the node's output(s); the driver binds each to a variable named
after the node.  Entries emit intermediate bindings with ``cx.emit``.

Weights are bound as constants (``cx.const``): the compiled library is
self-contained, and anything that depends only on weights (batchnorm scale
and shift, transposed linear weights, interpolation matrices, SSM kernels,
DFT matrices) is computed once here, in float64 NumPy, never per call.

Shapes are static: symbolic dims (the batch ``N``) are bound to the sizes in
``graph.symbols`` (``--bind N=8``) before lowering.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import numpy as np
import tvm
from tvm import relax

from convdsl.errors import LoweringError
from convdsl.ir.graph import Graph, Node, Value
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import FLOAT_DTYPES, TensorType, bind_dim

R = relax.op
Expr = relax.Expr
LowerFn = Callable[["Lowerer", Node, list[Expr], list[TensorType]], "Expr | list[Expr]"]

# convdsl dtype -> TVM dtype
TVM_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i8": "int8", "u8": "uint8",
             "i32": "int32", "i64": "int64", "bool": "bool"}


class Lowerer:
    """Lowers one graph; entries use its helpers."""

    def __init__(self, graph: Graph, target: str = "tvm-llvm", bind: dict[str, int] | None = None) -> None:
        self.graph = graph
        self.target = target
        self.bind = {**graph.symbols, **(bind or {})}
        self.bb = relax.BlockBuilder()
        self.node: Node | None = None

    # -- helpers for entries ----------------------------------------------------------
    def shape(self, t: TensorType) -> tuple[int, ...]:
        return tuple(bind_dim(d, self.bind) for d in t.shape)

    def param(self, name: str) -> np.ndarray:
        """The weight ``name`` (local name: ``weight``, ``bias``...) of the node being lowered."""
        return np.asarray(self.graph.params[self.node.params[name]])

    def has_param(self, name: str) -> bool:
        return name in self.node.params

    def const(self, arr: np.ndarray | float, dtype: str | None = None) -> Expr:
        """A constant; float by default, in the dtype the node computes in (``compute_dtype``)."""
        dtype = dtype or self.compute_dtype()
        return relax.const(np.ascontiguousarray(np.asarray(arr, dtype=dtype)), dtype)

    def compute_dtype(self) -> str:
        """The TVM dtype of the node's first floating-point input (float32 when none is float):
        what its weights and constants are stored in (an f64 network has f64 weights)."""
        if self.node is not None:
            for t in self.graph.in_types(self.node.id):
                if t.dtype in FLOAT_DTYPES:
                    return TVM_DTYPE[t.dtype]
        return "float32"

    def emit(self, expr: Expr, hint: str = "") -> Expr:
        return self.bb.emit(expr, name_hint=hint or self._hint())

    def emit_te(self, fn: Callable, *args: Any, **kwargs: Any) -> Expr:
        return self.bb.emit_te(fn, *args, primfunc_name_hint=_ident(self.node.op), **kwargs)

    def out_shape(self, i: int = 0) -> tuple[int, ...]:
        return self.shape(self.node.types[i])

    def error(self, message: str, hint: str | None = None) -> LoweringError:
        return LoweringError(f"{self.node.op} on {self.target}: {message}", self.node.span, hint=hint)

    def _hint(self) -> str:
        return _ident(self.node.id) if self.node is not None else ""

    # -- driver --------------------------------------------------------------------------
    def lower(self) -> tvm.IRModule:
        g = self.graph
        params = []
        for name in g.inputs:
            t = g.node(name).type
            params.append(relax.Var(_ident(name), relax.TensorType(self.shape(t), TVM_DTYPE[t.dtype])))
        values: dict[Value, Expr] = {Value(n, 0): v for n, v in zip(g.inputs, params)}
        with self.bb.function("main", params):
            with self.bb.dataflow():
                for node in g.nodes():
                    if node.op == "input":
                        continue
                    self.node = node
                    args = [values[v] for v in g.inputs_of(node.id)]
                    ins = [t.with_shape(self.shape(t)) for t in g.in_types(node.id)]
                    outs = lowering_for(node, self.target)(self, node, args, ins)
                    outs = outs if isinstance(outs, list) else [outs]
                    if len(outs) != len(node.types):  # pragma: no cover - a bug in an entry
                        raise self.error(f"lowering produced {len(outs)} outputs, the op has {len(node.types)}")
                    for i, o in enumerate(outs):
                        if not isinstance(o, relax.Var):
                            o = self.bb.emit(o, name_hint=self._hint() + (f"_{i}" if len(outs) > 1 else ""))
                        values[Value(node.id, i)] = o
                self.node = None
                results = [values[v] for v in g.outputs]
                out = self.bb.emit_output(results[0] if len(results) == 1 else relax.Tuple(results))
            self.bb.emit_func_output(out)
        return self.bb.get()


def _ident(text: str) -> str:
    """A readable identifier for Relax variables and kernel names."""
    s = re.sub(r"\W", "_", text)
    return s if s and not s[0].isdigit() else f"v_{s}"


def lower_graph(graph: Graph, target: str = "tvm-llvm", bind: dict[str, int] | None = None) -> tvm.IRModule:
    """convdsl graph -> Relax IRModule with one function ``main`` (weights as constants)."""
    return Lowerer(graph, target, bind).lower()


# ---- convolution ------------------------------------------------------------------------
_LAYOUT = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}
_CONV = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}
_CONV_T = {1: R.nn.conv1d_transpose, 2: R.nn.conv2d_transpose, 3: R.nn.conv3d_transpose}


def add_channel_bias(cx: Lowerer, y: Expr, bias: np.ndarray, rank: int) -> Expr:
    """y + bias over dim 1 of [N, C, ...]."""
    return R.add(y, cx.const(bias.reshape((1, -1) + (1,) * (rank - 2))))


def _conv(nd: int) -> LowerFn:
    def lower(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
        a = node.attrs
        x = args[0]
        pads = conv_padding(a, list(ins[0].shape[2:]), nd)
        if a["pad_mode"] != "zeros" and any(p for pr in pads for p in pr):
            from convdsl.backends.tvm.lower_shape import pad_by_index  # circular / reflect / replicate as gathers

            x = pad_by_index(cx, x, ins[0], pads, a["pad_mode"])
            pads = [(0, 0)] * nd
        data_layout, kernel_layout = _LAYOUT[nd]
        y = _CONV[nd](x, cx.const(cx.param("weight")), strides=tuple_n(a["stride"], nd),
                      padding=tuple(lo for lo, _ in pads) + tuple(hi for _, hi in pads),
                      dilation=tuple_n(a["dilation"], nd), groups=a["groups"],
                      data_layout=data_layout, kernel_layout=kernel_layout)
        if a["bias"]:
            y = add_channel_bias(cx, cx.emit(y), cx.param("bias"), nd + 2)
        return y

    return lower


def _conv_transpose(nd: int) -> LowerFn:
    def lower(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
        a = node.attrs
        p = tuple_n(a["pad"], nd)
        s, opad = tuple_n(a["stride"], nd), tuple_n(a["output_pad"], nd)
        lo, hi, extra = p, p, (0,) * nd
        if any(o >= si for o, si in zip(opad, s)):
            # TVM wants output_pad < stride; torch (and the op table) allow it up to the dilation.
            # output_pad only extends the output at the end, so crop less there instead:
            #   pad (p, p) + output_pad o  =>  pad (p, max(p - o, 0)), then o - p zero rows appended
            # (rows no input reaches; the bias is added after)
            hi = tuple(max(pi - o, 0) for pi, o in zip(p, opad))
            extra = tuple(max(o - pi, 0) for pi, o in zip(p, opad))
            opad = (0,) * nd
        data_layout, _ = _LAYOUT[nd]
        kernel_layout = "IO" + data_layout[2:]  # torch's [C_in, C_out/groups, *k]
        y = _CONV_T[nd](args[0], cx.const(cx.param("weight")), strides=s, padding=lo + hi,
                        output_padding=opad, dilation=tuple_n(a["dilation"], nd),
                        groups=a["groups"], data_layout=data_layout, kernel_layout=kernel_layout)
        if any(extra):
            y = R.nn.pad(cx.emit(y), [0, 0, 0, 0] + [w for e in extra for w in (0, e)])
        if a["bias"]:
            y = add_channel_bias(cx, cx.emit(y), cx.param("bias"), nd + 2)
        return y

    return lower


# ---- linear and arithmetic -----------------------------------------------------------------
def _linear(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    # y = x W^T + b, with W^T transposed once here
    y = R.matmul(args[0], cx.const(cx.param("weight").T))
    if node.attrs["bias"]:
        y = R.add(cx.emit(y), cx.const(cx.param("bias")))
    return y


def _unary(fn: Callable[[Expr], Expr]) -> LowerFn:
    return lambda cx, node, args, ins: fn(args[0])


def _scalar(cx: Lowerer, v: float, t: TensorType) -> Expr:
    return cx.const(v, TVM_DTYPE[t.dtype])


def _relu6(cx, node, args, ins):
    return R.clip(args[0], 0.0, 6.0)


def _leaky_relu(cx, node, args, ins):
    return R.nn.leakyrelu(args[0], node.attrs["slope"])


def _gelu(cx, node, args, ins):
    return R.nn.gelu_tanh(args[0]) if node.attrs["approximate"] == "tanh" else R.nn.gelu(args[0])


def _hardsigmoid(cx, node, args, ins):
    # relu6(x + 3) / 6
    t = ins[0]
    return R.divide(R.clip(cx.emit(R.add(args[0], _scalar(cx, 3.0, t))), 0.0, 6.0), _scalar(cx, 6.0, t))


def _hardswish(cx, node, args, ins):
    return R.multiply(args[0], cx.emit(_hardsigmoid(cx, node, args, ins)))


def _affine(cx, node, args, ins):
    s, b = node.attrs["scale"], node.attrs["shift"]
    y = args[0]
    if s != 1.0:
        y = R.multiply(y, _scalar(cx, s, ins[0]))
    if b != 0.0:
        y = R.add(cx.emit(y) if s != 1.0 else y, _scalar(cx, b, ins[0]))
    return y


def _add(cx, node, args, ins):
    y = args[0]
    for i, b in enumerate(args[1:]):
        y = R.add(y, b)
        if i < len(args) - 2:
            y = cx.emit(y)
    return y


def _binary(fn: Callable[[Expr, Expr], Expr]) -> LowerFn:
    return lambda cx, node, args, ins: fn(args[0], args[1])


def _softmax(cx, node, args, ins):
    return R.nn.softmax(args[0], axis=node.attrs["dim"] % ins[0].rank)


def _identity(cx, node, args, ins):
    return args[0]


# ---- normalization -------------------------------------------------------------------------
def _batchnorm(cx: Lowerer, node: Node, args: list[Expr], ins: list[TensorType]) -> Expr:
    # inference: (x - mean) / sqrt(var + eps) * w + b  =  x * scale + shift
    c = ins[0].shape[1]
    var = cx.param("running_var").astype(np.float64)
    mean = cx.param("running_mean").astype(np.float64)
    scale = 1.0 / np.sqrt(var + node.attrs["eps"])
    w = cx.param("weight").astype(np.float64) if node.attrs["affine"] else np.ones(c)
    b = cx.param("bias").astype(np.float64) if node.attrs["affine"] else np.zeros(c)
    shape = (1, c) + (1,) * (ins[0].rank - 2)
    y = cx.emit(R.multiply(args[0], cx.const((scale * w).reshape(shape))))
    return R.add(y, cx.const((b - mean * scale * w).reshape(shape)))


def _affine_or(cx: Lowerer, name: str, shape: tuple[int, ...], fill: float,
               as_shape: tuple[int, ...] | None = None) -> Expr:
    arr = cx.param(name) if cx.has_param(name) else np.full(shape, fill)
    return cx.const(arr if as_shape is None else arr.reshape(as_shape))


def _layer_norm(cx: Lowerer, x: Expr, t: TensorType, axes: list[int], weight: Expr, bias: Expr, eps: float) -> Expr:
    """Relax's layer_norm (float32 and float16 only); float64 in two passes, as ``normalize_groups``."""
    if TVM_DTYPE[t.dtype] != "float64":
        return R.nn.layer_norm(x, weight, bias, axes=axes, epsilon=eps)
    d = cx.emit(R.subtract(x, cx.emit(R.mean(x, axis=axes, keepdims=True))))
    var = cx.emit(R.mean(cx.emit(R.multiply(d, d)), axis=axes, keepdims=True))
    y = cx.emit(R.multiply(d, cx.emit(R.rsqrt(cx.emit(R.add(var, cx.const(eps)))))))
    return R.add(cx.emit(R.multiply(y, weight)), bias)


def _layernorm(cx, node, args, ins):
    n = node.attrs["dims"]
    rank = ins[0].rank
    shape = ins[0].shape[rank - n:]
    return _layer_norm(cx, args[0], ins[0], list(range(rank - n, rank)), _affine_or(cx, "weight", shape, 1.0),
                       _affine_or(cx, "bias", shape, 0.0), node.attrs["eps"])


def _layernorm2d(cx, node, args, ins):
    c = ins[0].shape[1]
    if TVM_DTYPE[ins[0].dtype] == "float64":  # the affine part broadcasts over dim 1
        shape = (c, 1, 1)
        return _layer_norm(cx, args[0], ins[0], [1], _affine_or(cx, "weight", (c,), 1.0, shape),
                           _affine_or(cx, "bias", (c,), 0.0, shape), node.attrs["eps"])
    return R.nn.layer_norm(args[0], _affine_or(cx, "weight", (c,), 1.0), _affine_or(cx, "bias", (c,), 0.0),
                           axes=[1], epsilon=node.attrs["eps"])


def normalize_groups(cx: Lowerer, x: Expr, t: TensorType, groups: int, eps: float) -> Expr:
    """Group norm of [N, C, *spatial] without the affine part, in two passes:

        mean = E[x],  var = E[(x - mean)^2],  y = (x - mean) / sqrt(var + eps)

    over each group of C/groups channels and the spatial dims.  Relax's group_norm computes the
    variance as E[x^2] - E[x]^2, which cancels when the mean is large against the spread (300 +
    N(0, 1) inputs lose 2 digits).  Half precision is normalized in float32, as torch does."""
    shape = cx.shape(t)
    dtype = TVM_DTYPE[t.dtype]
    work = "float32" if dtype in ("float16", "bfloat16") else dtype
    if work != dtype:
        x = cx.emit(R.astype(x, work))
    xg = cx.emit(R.reshape(x, (shape[0], groups, math.prod(shape[1:]) // groups)))
    d = cx.emit(R.subtract(xg, cx.emit(R.mean(xg, axis=2, keepdims=True))))
    var = cx.emit(R.mean(cx.emit(R.multiply(d, d)), axis=2, keepdims=True))
    y = cx.emit(R.multiply(d, cx.emit(R.rsqrt(cx.emit(R.add(var, cx.const(eps, work)))))))
    y = cx.emit(R.reshape(y, shape))
    return y if work == dtype else cx.emit(R.astype(y, dtype))


def _channel_affine(cx: Lowerer, y: Expr, t: TensorType) -> Expr:
    """y * weight + bias over dim 1 (the node's affine parameters)."""
    shape = (1, t.shape[1]) + (1,) * (t.rank - 2)
    y = cx.emit(R.multiply(y, cx.const(cx.param("weight").reshape(shape))))
    return R.add(y, cx.const(cx.param("bias").reshape(shape)))


def _groupnorm(cx, node, args, ins):
    y = normalize_groups(cx, args[0], ins[0], node.attrs["groups"], node.attrs["eps"])
    return _channel_affine(cx, y, ins[0]) if node.attrs["affine"] else y


def _instancenorm(cx, node, args, ins):
    a = node.attrs
    c = ins[0].shape[1]
    if a["track_running_stats"]:  # inference uses the running statistics, like batchnorm
        if not a["affine"]:
            scale = 1.0 / np.sqrt(cx.param("running_var").astype(np.float64) + a["eps"])
            shape = (1, c) + (1,) * (ins[0].rank - 2)
            y = cx.emit(R.multiply(args[0], cx.const(scale.reshape(shape))))
            return R.add(y, cx.const((-cx.param("running_mean") * scale).reshape(shape)))
        return _batchnorm(cx, node, args, ins)
    # each (sample, channel) over its spatial extent = group norm with one channel per group
    y = normalize_groups(cx, args[0], ins[0], c, a["eps"])
    return _channel_affine(cx, y, ins[0]) if a["affine"] else y


TVM_LOWERINGS: dict[str, LowerFn] = {
    **{f"conv{n}d": _conv(n) for n in (1, 2, 3)},
    **{f"conv_transpose{n}d": _conv_transpose(n) for n in (1, 2, 3)},
    "linear": _linear,
    # activations and arithmetic
    "identity": _identity,
    "dropout": _identity,  # inference
    "relu": _unary(R.nn.relu),
    "relu6": _relu6,
    "leaky_relu": _leaky_relu,
    "gelu": _gelu,
    "silu": _unary(R.nn.silu),
    "sigmoid": _unary(R.sigmoid),
    "tanh": _unary(R.tanh),
    "hardswish": _hardswish,
    "hardsigmoid": _hardsigmoid,
    "neg": _unary(R.negative),
    "affine": _affine,
    "add": _add,
    "sub": _binary(R.subtract),
    "mul": _binary(R.multiply),
    "div": _binary(R.divide),
    "matmul": _binary(R.matmul),
    "softmax": _softmax,
    # normalization
    **{name: _batchnorm for name in ("batchnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d")},
    "layernorm": _layernorm,
    "layernorm2d": _layernorm2d,
    "groupnorm": _groupnorm,
    **{f"instancenorm{n}d": _instancenorm for n in (1, 2, 3)},
}

# op families kept in their own files, merged here (dict merge, one table)
from convdsl.backends.tvm import lower_attention, lower_fft, lower_misc, lower_pool, lower_quant, lower_shape, lower_ssm  # noqa: E402

for _family in (lower_pool, lower_shape, lower_attention, lower_fft, lower_ssm, lower_misc, lower_quant):
    TVM_LOWERINGS.update(_family.LOWERINGS)


def lowering_for(node: Node, target: str = "tvm-llvm") -> LowerFn:
    entry = TVM_LOWERINGS.get(node.op)
    if entry is None:
        raise LoweringError(
            f"op '{node.op}' has no lowering for the {target} backend", node.span,
            hint="supported ops: " + ", ".join(sorted(TVM_LOWERINGS)),
            notes=[f"node {node.id}"],
        )
    return entry
