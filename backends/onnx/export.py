"""ONNX export: convdsl graph -> ``onnx.ModelProto``, one op at a time.

The graph is written directly from convdsl's IR (never through
``torch.onnx.export``), with a per-op export table like the torch and TVM
lowering tables.  An entry is ``fn(cx, node, args, ins) -> name | list[name]``:

- ``cx`` is the ``Exporter`` (node builder, constants, parameters),
- ``args`` the ONNX value names of the node's inputs (in port order),
- ``ins`` their convdsl types (symbolic dims stay symbolic).

It returns the ONNX value name(s) of the node's output(s).  Entries add ONNX
nodes with ``cx.op(...)``; every ONNX node an entry adds is named
``<convdsl node id>/<OnnxOp>`` (numbered when repeated), so the ONNX graph
keeps the program's block structure as name scopes (what ``convdsl import``
reads back).  Parameters are initializers named by their store key
(``layer1.0.conv1.weight``); a value derived from weights only (transposed,
reshaped) is computed here and named after the parameter with a suffix.

Symbolic dims become ONNX ``dim_param``s: the batch ``N`` stays dynamic in the
exported model.  Reshape targets keep symbolic dims with ONNX's 0 (copy the
input dim) and -1, or read them from the input's runtime shape.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convdsl.errors import LoweringError
from convdsl.ir.graph import Graph, Node, Value
from convdsl.ir.types import FLOAT_DTYPES, TensorType, dim_eval, dim_symbols, symbol_sources

from convdsl.backends.registry import LoweringTable

OPSET = 17
# attributes that only initialize or freeze parameters: an inference file has no place for them, so the
# exporter records those that differ from the op's default in the doc strings (``Exporter.record``) and
# ``convdsl import`` gives them back (convdsl/importer/onnx_patterns.py TRAINING_ATTRS, the same table)
TRAINING_ATTRS: dict[str, tuple[str, ...]] = {
    **{f"conv{n}d": ("init", "trainable") for n in (1, 2, 3)},
    "layer_scale": ("init",),
    "prelu": ("init",),
    "parameter": ("init", "scale"),
    "selective_scan": ("dt_min", "dt_max"),
    "s4d": ("dt_min", "dt_max"),
}
DOMAIN = ""  # the default ONNX domain
ExportFn = Callable[["Exporter", Node, list[str], list[TensorType]], "str | list[str]"]

ONNX_DTYPE = {"f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
              "f64": TensorProto.DOUBLE, "i8": TensorProto.INT8, "u8": TensorProto.UINT8,
              "i32": TensorProto.INT32, "i64": TensorProto.INT64, "bool": TensorProto.BOOL}
NP_DTYPE = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i8": np.int8, "u8": np.uint8,
            "i32": np.int32, "i64": np.int64, "bool": np.bool_, "bf16": np.float32}


class Exporter:
    """Exports one graph; entries use its helpers."""

    def __init__(self, graph: Graph, exports: LoweringTable[ExportFn], opset: int = OPSET) -> None:
        self.graph = graph
        self.exports = exports  # lowering.ONNX_EXPORTS
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.node: Node | None = None
        self._recorded: dict[str, Any] = {}
        self._names: set[str] = set()
        self._shapes: dict[str, str] = {}  # value -> its Shape node output (one per value)

    # -- names -------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def _scope(self) -> str:
        return self.node.id if self.node is not None else "graph"

    # -- building ----------------------------------------------------------------------
    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> Any:
        """Add one ONNX node; returns its output name (or list of names when ``outputs`` > 1)."""
        name = self.fresh(f"{self._scope()}/{op_type}")
        outs = [self.fresh(f"{name}:{i}" if outputs > 1 else f"{name}:0") for i in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        # the convdsl op this node lowers, for the importer where two ops export alike (transpose and
        # permute, flatten and reshape, adaptive and plain pooling); runtimes ignore doc strings
        doc = f"convdsl {self.node.op}" if self.node is not None else None
        if doc is not None and self._recorded:
            doc += " " + json.dumps(self._recorded, sort_keys=True)
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, doc_string=doc, **attrs))
        return outs if outputs > 1 else outs[0]

    def record(self, **attrs: Any) -> None:
        """Attributes of the node being exported that its ONNX nodes do not hold (an identity has no
        angle, a parameter no initializer), written after the op in the doc strings of the ONNX nodes
        added next, as JSON: ``convdsl rot90 {"dims": [2, 3], "k": 0}``.  Only ``convdsl import`` reads
        them, and never for a number the file computes with; runtimes ignore doc strings."""
        self._recorded.update(attrs)

    def const(self, arr: Any, dtype: Any = None, name: str | None = None) -> str:
        """A constant initializer (floats in the node's compute dtype unless ``dtype`` is given)."""
        if dtype is None:
            dtype = NP_DTYPE[self.compute_dtype()] if np.asarray(arr).dtype.kind == "f" or isinstance(arr, float) \
                else np.asarray(arr).dtype
        a = np.array(arr, dtype=dtype, order="C")
        key = self.fresh(name or f"{self._scope()}/const")
        self.initializers[key] = numpy_helper.from_array(a, key)
        return key

    def ints(self, values) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), np.int64)

    def scalar(self, v: float, t: TensorType) -> str:
        return self.const(np.asarray(v, dtype=NP_DTYPE[t.dtype]))

    def compute_dtype(self) -> str:
        if self.node is not None:
            for t in self.graph.in_types(self.node.id):
                if t.dtype in FLOAT_DTYPES:
                    return t.dtype
        return "f32"

    def param(self, name: str, transform: Callable[[np.ndarray], np.ndarray] | None = None,
              suffix: str = "") -> str:
        """The initializer holding parameter ``name`` of the node (its store key), or a value derived
        from it alone (``transform``), named ``<key><suffix>``."""
        key = self.node.params[name]
        arr = np.asarray(self.graph.params[key])
        if transform is not None:
            arr = transform(arr)
            key = key + suffix
        if key not in self.initializers:
            self._names.add(key)
            self.initializers[key] = numpy_helper.from_array(np.ascontiguousarray(arr), key)
        return key

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.graph.params[self.node.params[name]])

    def has_param(self, name: str) -> bool:
        return name in self.node.params

    def error(self, message: str, hint: str | None = None) -> LoweringError:
        return LoweringError(f"{self.node.op} on onnx: {message}", self.node.span, hint=hint,
                             notes=[f"node {self.node.id}"])

    # -- shapes --------------------------------------------------------------------------
    def shape_of(self, x: str) -> str:
        if x not in self._shapes:
            self._shapes[x] = self.op("Shape", [x])
        return self._shapes[x]

    def dim_of(self, x: str, i: int) -> str:
        """Dim ``i`` of ``x`` at run time, as a 1-element int64 tensor."""
        return self.op("Gather", [self.shape_of(x), self.ints([i])], axis=0)

    def reshape(self, x: str, t: TensorType, target: tuple, refs: list[tuple[str, TensorType]] | None = None) -> str:
        """Reshape ``x`` (of type ``t``) to ``target`` (ints or symbolic dims).  Symbolic dims are
        ONNX 0 where ``t`` has the same dim at the same index, -1 for one other, else read at run
        time from ``x`` or a tensor in ``refs`` that has that dim."""
        spec: list[Any] = []
        unknown = []
        for i, d in enumerate(target):
            if isinstance(d, int):
                spec.append(d)
            elif i < t.rank and t.shape[i] == d:
                spec.append(0)
            else:
                spec.append(None)
                unknown.append(i)
        if len(unknown) <= 1 and not any(v == -1 for v in spec):
            return self.op("Reshape", [x, self.ints(-1 if v is None else v for v in spec)])
        pieces = []
        for i, v in enumerate(spec):
            if v is None:
                pieces.append(self._find_dim(target[i], [(x, t)] + list(refs or [])))
            elif v == 0:
                pieces.append(self.dim_of(x, i))
            else:
                pieces.append(self.ints([v]))
        return self.op("Reshape", [x, self.op("Concat", pieces, axis=0)])

    def _find_dim(self, d, candidates: list[tuple[str, TensorType]]) -> str:
        for name, t in candidates:
            for j, e in enumerate(t.shape):
                if e == d:
                    return self.dim_of(name, j)
        for name in self.graph.inputs:  # a network input with that dim
            t = self.graph.node(name).type
            for j, e in enumerate(t.shape):
                if e == d:
                    return self.dim_of(self._input_names[name], j)
        values = {}  # its symbols read from the dims that hold them (4*N: N = dim // 4), then computed
        sources = [(x, t) for x, t in candidates] + [(self._input_names[n], self.graph.node(n).type) for n in self.graph.inputs]
        for name, t in sources:
            for sym, (j, c) in symbol_sources(t.shape).items():
                if sym in dim_symbols(d) and sym not in values:
                    v = _Dyn(self, self.dim_of(name, j))
                    values[sym] = v // c if c != 1 else v
        try:
            v = dim_eval(d, values)
        except KeyError:
            raise self.error(f"cannot express the symbolic size {d} in a reshape",
                             hint="bind the symbol to a size when exporting (--bind)") from None
        return v.name if isinstance(v, _Dyn) else self.ints([v])

    def shape_tensor(self, dims: tuple, refs: list[tuple[str, TensorType]]) -> str:
        """A 1-D int64 tensor of ``dims``: constants, and symbolic dims read from ``refs``."""
        if all(isinstance(d, int) for d in dims):
            return self.ints(dims)
        return self.op("Concat", [self.ints([d]) if isinstance(d, int) else self._find_dim(d, refs) for d in dims],
                       axis=0)

    # -- driver --------------------------------------------------------------------------
    def export(self, bind_outputs: bool = False) -> onnx.ModelProto:
        g = self.graph
        self._input_names: dict[str, str] = {}
        inputs = []
        values: dict[Value, str] = {}
        for nid in g.inputs:
            t = g.node(nid).type
            name = self.fresh(nid)
            self._input_names[nid] = name
            values[Value(nid, 0)] = name
            inputs.append(value_info(name, t))
        for node in g.nodes():
            if node.op == "input":
                continue
            self.node = node
            self._recorded = _training_attrs(node)
            args = [values[v] for v in g.inputs_of(node.id)]
            outs = self.exports.lookup(node, "onnx")(self, node, args, g.in_types(node.id))
            outs = outs if isinstance(outs, list) else [outs]
            if len(outs) != len(node.types):  # pragma: no cover - a bug in an entry
                raise self.error(f"export produced {len(outs)} outputs, the op has {len(node.types)}")
            for i, o in enumerate(outs):
                values[Value(node.id, i)] = o
        self.node = None
        outputs = []
        for name, v in zip(g.output_names, g.outputs):
            out = self.fresh(name)
            self.nodes.append(helper.make_node("Identity", [values[v]], [out], name=f"{name}/Identity"))
            outputs.append(value_info(out, g.type_of(v)))
        graph = helper.make_graph(self.nodes, g.name, inputs, outputs, list(self.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(DOMAIN, self.opset)],
                                  producer_name="convdsl")
        model.ir_version = 8  # readable by ONNX Runtime and OpenVINO releases of the last years
        return model


def _training_attrs(node: Node) -> dict[str, Any]:
    """The node's TRAINING_ATTRS that differ from their defaults, as JSON values."""
    from convdsl.ir.ops import OPS

    out = {}
    for name in TRAINING_ATTRS.get(node.op, ()):
        attr = OPS[node.op].attr(name)
        v = node.attrs.get(name, attr.default)
        if v != attr.default and isinstance(v, (str, bool, int, float)):
            out[name] = v
    return out


def value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ONNX_DTYPE[t.dtype], [d if isinstance(d, int) else str(d)
                                                                     for d in t.shape])


class _Dyn:
    """A size known when the model runs (a 1-element int64 tensor): ``dim_eval`` computes a
    symbolic dim from its symbols' sizes with these Add/Mul/Div nodes (sizes are not negative,
    so ONNX's truncating Div is the floor division)."""

    def __init__(self, cx: Exporter, name: str) -> None:
        self.cx, self.name = cx, name

    def _in(self, v) -> str:
        return v.name if isinstance(v, _Dyn) else self.cx.ints([v])

    def _op(self, op: str, a, b) -> "_Dyn":
        return _Dyn(self.cx, self.cx.op(op, [self._in(a), self._in(b)]))

    def __add__(self, o):
        return self._op("Add", self, o)

    def __radd__(self, o):
        return self._op("Add", o, self)

    def __mul__(self, o):
        return self._op("Mul", self, o)

    def __rmul__(self, o):
        return self._op("Mul", o, self)

    def __floordiv__(self, o):
        return self._op("Div", self, o)

    def __rfloordiv__(self, o):
        return self._op("Div", o, self)

    def __neg__(self):
        return _Dyn(self.cx, self.cx.op("Neg", [self.name]))
