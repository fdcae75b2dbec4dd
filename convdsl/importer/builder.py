"""The flat graph an importer builds: convdsl ops with the source's instance names.

Both frontends (torch.export, ONNX) map source ops onto convdsl ops through a
``Builder``: it fills default attributes, runs the op table's normalize and
shape rule (so a wrong mapping fails here, not later), names each node with
its source instance path so parameter names equal the source's keys, and
records the module hierarchy (path -> class) the CDL writer turns into blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convdsl.errors import ConvDSLError, ModelImportError, Span
from convdsl.ir.graph import Graph, Value
from convdsl.ir.ops import OPS
from convdsl.ir.optable import REQUIRED
from convdsl.ir.types import NUMPY_DTYPE, TensorType


@dataclass
class Origin:
    """Where a source node comes from, for error messages."""

    node: str  # the source node's name
    op: str  # its op (aten target / ONNX op type)
    module: str  # its module path ("" for the root)
    span: Span | None = None


@dataclass
class Imported:
    """The result of a frontend: a flat graph plus the source's module hierarchy."""

    graph: Graph
    modules: dict[str, str]  # module path -> class name ("" is the root)
    chains: dict[str, list[str]] = field(default_factory=dict)  # node id -> module paths, outermost first
    renamed: dict[str, str] = field(default_factory=dict)  # convdsl parameter name -> source key (when they differ)
    source: str = ""


class Builder:
    def __init__(self, name: str) -> None:
        self.graph = Graph(_ident(name))
        self.modules: dict[str, str] = {"": ""}
        self.chains: dict[str, list[str]] = {}
        self.renamed: dict[str, str] = {}

    def input(self, name: str, t: TensorType) -> Value:
        nid = _ident(name)
        self.graph.add_node(nid, "input", [], {}, [t])
        self.chains[nid] = []
        return Value(nid, 0)

    def add(self, op: str, inputs: list[Value], attrs: dict[str, Any], *, id: str, chain: list[str],
            origin: Origin, params: dict[str, np.ndarray] | None = None, exact: bool = False) -> list[Value]:
        """Add a convdsl op named ``id`` (a dotted path); ``params`` by local name (weight, bias...).
        ``exact``: the op's one parameter is named ``id`` itself (CDL ``as param``), a parameter the
        source keeps on a module that also holds other modules (ViT's ``encoder.pos_embedding``)."""
        opdef = OPS[op]
        full = {a.name: attrs.get(a.name, a.default) for a in opdef.attrs}
        missing = [k for k, v in full.items() if v is REQUIRED]
        if missing:  # pragma: no cover - a bug in a mapping
            raise ModelImportError(f"{origin.op} -> {op}: no value for {missing}", origin.span)
        ins = [self.graph.type_of(v) for v in inputs]
        try:
            if opdef.normalize is not None:
                full = opdef.normalize(dict(full), ins)
            types = opdef.infer(full, ins)
            specs = opdef.param_specs(full, ins)
        except ConvDSLError as e:
            raise located(origin, f"maps to {op}, which refuses it: {e.message}", e.hint) from None
        nid = self._unique(id)
        if exact and len(specs) != 1:  # pragma: no cover - a bug in a mapping
            raise located(origin, f"maps to {op}, which has {len(specs)} parameters, not one named '{id}'")
        params = params or {}
        keys = {}
        for local, spec in specs.items():
            key = nid if exact else f"{nid}.{local}"
            keys[local] = key
            self.graph.params.declare(key, spec)
            arr = params.get(local)
            if arr is None:
                if spec.buffer:  # e.g. num_batches_tracked, which the source graph never reads
                    continue
                raise located(origin, f"maps to {op}, but its parameter '{local}' is missing")
            arr = np.asarray(arr)
            if tuple(arr.shape) != tuple(spec.shape):
                raise located(origin, f"maps to {op}, whose parameter '{local}' needs shape {list(spec.shape)}, "
                                      f"the source has {list(arr.shape)}")
            self.graph.params[key] = arr.astype(NUMPY_DTYPE.get(spec.dtype, "float32"), copy=False)
        scope = chain[-1] if chain else ""
        self.graph.add_node(nid, op, inputs, full, types, params=keys, span=origin.span, scope=scope,
                            block=self.modules.get(scope, ""))
        self.chains[nid] = list(chain)
        return [Value(nid, i) for i in range(len(types))]

    def _unique(self, id: str) -> str:
        id = id or "op"
        if id not in self.graph and not any(n.startswith(id + ".") for n in self.graph.g):
            return id
        i = 1
        while f"{id}_{i}" in self.graph:
            i += 1
        return f"{id}_{i}"

    def result(self, outputs: list[Value], names: list[str], source: str) -> Imported:
        self.graph.outputs = list(outputs)
        self.graph.output_names = [_ident(n) for n in names]
        return Imported(self.graph, self.modules, self.chains, self.renamed, source)


def located(origin: Origin, message: str, hint: str | None = None) -> ModelImportError:
    where = f" in module '{origin.module}'" if origin.module else " at the top level"
    return ModelImportError(f"node '{origin.node}' ({origin.op}){where}: {message}", origin.span, hint=hint)


def _ident(name: str) -> str:
    import re

    s = re.sub(r"\W", "_", name)
    return s if s and not s[0].isdigit() else f"v_{s}"


def index_buffer(b: Builder, key: str | None, index: np.ndarray, size: Any) -> bool:
    """Whether a constant integer index read from the source's buffer ``key`` (None: a buffer with no
    name) becomes a ``take`` holding that buffer (``take``): rank >= 1, every position in [0, size), and
    read once (a second reader would need the same key twice).  Otherwise the positions are written as
    an ``index_select`` list."""
    return index.dtype.kind in "iu" and index.ndim >= 1 and isinstance(size, int) and index.size > 0 and \
        int(index.min()) >= 0 and int(index.max()) < size and (key is None or b._unique(key) == key)


def take(cx: Any, x: Value, dim: int, key: str | None, index: np.ndarray, stored: tuple | None = None,
         owner: str | None = None) -> Value:
    """``x`` gathered along ``dim`` by an index buffer: ``take`` holding the buffer as the source holds it
    (shape ``stored``, named ``key`` exactly: ``as param "<key>"``, so the compiled state_dict has the
    source's buffer key; ``key=None``: named by the scope), then a reshape when the source read a view
    of it (MaxViT's ``relative_position_index.view(-1)``).  The program stays short however large the
    table (LeViT: 38,416 positions per attention) and the positions travel in net.safetensors.
    ``owner``: the key is ``<owner>.index``, take's own parameter name (convdsl's ONNX export of take)."""
    t = cx.type(x)
    stored = tuple(stored) if stored is not None else tuple(index.shape)
    out = cx.add("take", [x], {"shape": stored, "dim": dim}, {"index": index.reshape(stored)},
                 id=owner or key or cx.default_id("take"), exact=key is not None and owner is None)
    if stored != tuple(index.shape):
        out = cx.add("reshape", [out], {"shape": tuple(t.shape[:dim]) + tuple(index.shape) + tuple(t.shape[dim + 1:])})
    return out


def einsum(cx: Any, equation: str, a: Value, b: Value) -> Value:
    """A two-operand einsum that is a batched matrix product (every index is a batch index of both
    operands and the output, the one contracted index, or the one free index of one operand), as
    ``permute -> matmul -> permute``: MaxViT's ``"B G H I D, B G H J D -> B G H I J"``.  ``cx`` is a
    frontend's context (``add``, ``type``, ``origin``); anything else is a located error."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    parts = lhs.split(",")
    ta, tb = cx.type(a), cx.type(b)
    why = None
    if not arrow or len(parts) != 2 or "." in eq:
        why = "only explicit two-operand equations ('ij,jk->ik') map"
    else:
        ia, ib = parts
        if len(ia) != ta.rank or len(ib) != tb.rank:
            why = "the equation's subscripts do not match the operands' ranks"
        elif len(set(ia)) != len(ia) or len(set(ib)) != len(ib) or len(set(out)) != len(out):
            why = "a repeated subscript (a diagonal) has no convdsl op"
        else:
            batch = [c for c in out if c in ia and c in ib]
            contracted = [c for c in ia if c in ib and c not in out]
            free_a = [c for c in ia if c not in ib]
            free_b = [c for c in ib if c not in ia]
            if len(contracted) != 1 or len(free_a) != 1 or len(free_b) != 1 or \
                    any(c not in out for c in free_a + free_b) or len(out) != len(batch) + 2:
                why = "only batched matrix products (one contracted and one free index per operand) map"
    if why is not None:
        raise located(cx.origin, f"einsum '{equation}': {why}")
    k, i, j = contracted[0], free_a[0], free_b[0]

    def perm(x: Value, have: str, want: list[str]) -> Value:
        dims = tuple(have.index(c) for c in want)
        return x if dims == tuple(range(len(dims))) else cx.add("permute", [x], {"dims": dims})

    y = cx.add("matmul", [perm(a, ia, batch + [i, k]), perm(b, ib, batch + [k, j])])
    return perm(y, "".join(batch + [i, j]), list(out))
