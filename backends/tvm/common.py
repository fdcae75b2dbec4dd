"""What every TVM family file (``lower_<family>.py``) uses: the lowering context, the
entry type, dtype names and TVM itself, imported on first use.

An entry is ``fn(cx, node, args, ins) -> expr | list[expr]``:

- ``cx`` is the ``Lowerer`` (block builder, target name, weights as numpy),
- ``args`` the Relax values of the node's inputs (in port order),
- ``ins`` their convdsl types with every symbolic dim bound to a size.

It returns the node's output(s); the driver binds each to a variable named
after the node.  Entries emit intermediate bindings with ``cx.emit``.

Weights are bound as constants (``cx.const``): the compiled library is
self-contained, and anything that depends only on weights (batchnorm scale
and shift, transposed linear weights, interpolation matrices, SSM kernels,
DFT matrices) is computed once, at lowering, in float64 NumPy, never per call.

TVM is imported on first use (``tvm``, ``relax``, ``R`` = ``relax.op``, ``te``,
``topi`` below are stand-ins that import the module when an attribute is
read): importing a family file needs no TVM, so the lowering tables, and the
completeness test over them, load on a machine without it.  Family files
therefore never read a TVM attribute at import time.
"""
from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from convdsl.errors import LoweringError
from convdsl.ir.graph import Graph, Node, Value
from convdsl.ir.types import FLOAT_DTYPES, TensorType, bind_dim

from convdsl.backends.registry import LoweringTable, Lowerings

if TYPE_CHECKING:
    from tvm.relax import Expr


class DynamicShapeError(LoweringError):
    """An op or a TVM pass that needs a size where a dynamic-batch build has a shape variable."""


class LazyModule:
    """A module imported when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<module {self._name}, imported on first use>"


tvm = LazyModule("tvm")
relax = LazyModule("tvm.relax")
R = LazyModule("tvm.relax.op")
te = LazyModule("tvm.te")
topi = LazyModule("tvm.topi")

LowerFn = Callable[["Lowerer", Node, "list[Expr]", list[TensorType]], "Expr | list[Expr]"]

# convdsl dtype -> TVM dtype
TVM_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i8": "int8", "u8": "uint8",
             "i32": "int32", "i64": "int64", "bool": "bool"}


def family(name: str) -> Lowerings[LowerFn]:
    """The table of one family file: ``LOWERINGS = family("conv")`` in ``lower_conv.py``."""
    return Lowerings("tvm", name)


class Lowerer:
    """Lowers one graph with a lowering table; entries use its helpers."""

    def __init__(self, graph: Graph, table: LoweringTable[LowerFn], target: str = "tvm-llvm",
                 bind: dict[str, int] | None = None, dynamic: tuple[str, ...] = (), precision: str = "f32") -> None:
        self.graph = graph
        self.table = table
        self.target = target
        # the build's compute precision (f32 | bf16 | int8; f16 on GPUs): most lowerings emit f32
        # Relax and leave the precision to the layout pass; those with their own kernels read it
        self.precision = precision
        self.bind = {**graph.symbols, **(bind or {})}
        # symbols kept symbolic: Relax shape variables (int64), sizes given at run time
        self.dynamic = {s: tvm.tirx.Var(s, "int64") for s in dynamic}
        self.bb = relax.BlockBuilder()
        self.node: Node | None = None
        # int8 layers lowered to their quantized value less its zero point, in float32 (lower_quant's
        # ``on_grid``: every reader dequantizes): node id -> that zero point, for the readers' lowerings
        self.on_grid: dict[str, int] = {}

    # -- helpers for entries ----------------------------------------------------------
    def shape(self, t: TensorType) -> tuple:
        """The dims of ``t``: sizes, or (with ``dynamic`` symbols) TIR expressions of their shape variables."""
        return tuple(self.dim(d) for d in t.shape)

    def dim(self, d) -> Any:
        if not isinstance(d, (int, str)):  # already a TIR expression (``ins`` carry them)
            return d
        if isinstance(d, int) or not self.dynamic or not (symbols_of(d) & self.dynamic.keys()):
            return bind_dim(d, self.bind)
        return evaluate_dim(d, {**self.bind, **self.dynamic})

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
        return self.bb.emit_te(fn, *args, primfunc_name_hint=ident(self.node.op), **kwargs)

    def out_shape(self, i: int = 0) -> tuple[int, ...]:
        return self.shape(self.node.types[i])

    def error(self, message: str, hint: str | None = None) -> LoweringError:
        return LoweringError(f"{self.node.op} on {self.target}: {message}", self.node.span, hint=hint)

    def dynamic_error(self, e: Exception) -> LoweringError:
        """An entry that needs a size where the dynamic symbols have none."""
        names = ", ".join(self.dynamic)
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return DynamicShapeError(f"{self.node.op} on {self.target}: cannot be compiled with a dynamic {names} ({why})",
                                 self.node.span, hint=f"compile with static shapes: leave out --dynamic-batch "
                                                      f"(--bind {names}=B for a batch of B)")

    def _hint(self) -> str:
        return ident(self.node.id) if self.node is not None else ""

    # -- driver --------------------------------------------------------------------------
    def lower(self):
        """The Relax IRModule of the graph: one function ``main`` (weights as constants)."""
        g = self.graph
        params = []
        for name in g.inputs:
            t = g.node(name).type
            params.append(relax.Var(ident(name), relax.TensorType(self.shape(t), TVM_DTYPE[t.dtype])))
        values: dict[Value, Expr] = {Value(n, 0): v for n, v in zip(g.inputs, params)}
        with self.bb.function("main", params):
            with self.bb.dataflow():
                for node in g.nodes():
                    if node.op == "input":
                        continue
                    self.node = node
                    args = [values[v] for v in g.inputs_of(node.id)]
                    ins = [t.with_shape(self.shape(t)) for t in g.in_types(node.id)]
                    entry = self.table.lookup(node, self.target)
                    try:
                        outs = entry(self, node, args, ins)
                    except Exception as e:  # noqa: BLE001 - static shapes lower, a dynamic batch may not
                        if not self.dynamic or isinstance(e, LoweringError):
                            raise
                        raise self.dynamic_error(e) from None
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


def symbols_of(d: str) -> set[str]:
    """The symbol names a symbolic dim's text mentions."""
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", d))


def evaluate_dim(d: str, values: dict[str, Any]) -> Any:
    """A symbolic dim's text evaluated over ``values`` (sizes or TIR expressions)."""
    from convdsl.ir.types import parse_dim

    def ev(node):
        if isinstance(node, int):
            return node
        if isinstance(node, str):
            return values.get(node, 1)
        if node[0] == "neg":
            return -ev(node[1])
        a, b = ev(node[1]), ev(node[2])
        if node[0] == "+":
            return a + b
        if node[0] == "*":
            return a * b
        return tvm.tirx.floordiv(a, b)

    return ev(parse_dim(d))


def ident(text: str) -> str:
    """A readable identifier for Relax variables and kernel names."""
    s = re.sub(r"\W", "_", text)
    return s if s and not s[0].isdigit() else f"v_{s}"
