"""Per-layer statistics of a graph: output shapes, parameters, MACs, FLOPs, memory.

Every number comes from the op table: parameter counts from the ``ParamSpec``s
a node declared, MACs/FLOPs from ``OpDef.cost`` called on *bound* (concrete)
tensor types.  Symbolic dims take the graph's default bindings (``N=1``)
unless ``bind`` overrides them.

Conventions (the ones fvcore/ptflops users expect):

- ``params`` counts parameter elements, trainable or frozen, and never buffers
  (running statistics); it equals ``graph.params.count()``.  A parameter shared
  by several nodes is counted once, on the first node that uses it.
- ``macs`` are multiply-accumulates of conv/linear/matmul-like ops; ``flops``
  are all floating-point operations (a MAC is 2 FLOPs; norms, activations and
  adds add their own).
- ``act_bytes`` is the size of a node's outputs; the total is the sum over all
  nodes (what a training step keeps), not the peak of an inference schedule;
  ``peak_activation_bytes`` is that peak (liveness over the topological order).
- ``param_bytes`` is the storage of parameters *and* buffers (the weights file).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from rich.console import Console
from rich.table import Table
from rich.text import Text

from convdsl.errors import IRError
from convdsl.ir.graph import Graph, Node, Value
from convdsl.ir.ops import OPS
from convdsl.ir.types import DTYPE_BYTES, TensorType, bind_dim


@dataclass(frozen=True)
class LayerStat:
    """One row of the statistics table: one op node of the graph."""

    name: str  # node id
    op: str
    group: str  # OpDef.group
    scope: str  # block-instance path ("layer1.0"), "" at network level
    block: str  # block name of that scope
    shapes: tuple[tuple[int, ...], ...]  # bound output shapes, one per output
    dtypes: tuple[str, ...]
    params: int  # parameter elements (trainable + frozen), buffers excluded
    trainable_params: int
    buffers: int  # buffer elements (running stats, counters)
    macs: int
    flops: int
    act_bytes: int  # bytes of this node's outputs
    param_bytes: int  # bytes of its parameters and buffers

    @property
    def top_scope(self) -> str:
        """First component of the scope: the group used by ``by_block`` views."""
        return self.scope.split(".", 1)[0] if self.scope else ""


TOTAL_KEYS = ("params", "trainable_params", "buffers", "macs", "flops", "act_bytes", "param_bytes")


def bindings(graph: Graph, bind: Mapping[str, int] | None = None) -> dict[str, int]:
    """Symbol values used for counting: the graph's defaults, overridden by ``bind``."""
    return {**graph.symbols, **(dict(bind) if bind else {})}


def bind_type(t: TensorType, bind: Mapping[str, int]) -> TensorType:
    """``t`` with every symbolic dim replaced by its concrete value."""
    return TensorType(tuple(bind_dim(d, bind) for d in t.shape), t.dtype)


def layer_stats(graph: Graph, bind: Mapping[str, int] | None = None) -> list[LayerStat]:
    """One ``LayerStat`` per op node (inputs skipped), in ``graph.nodes()`` order."""
    b = bindings(graph, bind)
    seen: set[str] = set()  # store keys already counted (shared parameters)
    rows = []
    for node in graph.nodes():
        if node.op == "input":
            continue
        rows.append(_row(graph, node, b, seen))
    return rows


def _row(graph: Graph, node: Node, b: Mapping[str, int], seen: set[str]) -> LayerStat:
    opdef = OPS.get(node.op)
    if opdef is None:
        raise IRError(f"node '{node.id}' has unknown op '{node.op}'", node.span,
                      hint="the op table (convdsl/ir/ops) defines every op")
    ins = [bind_type(t, b) for t in graph.in_types(node.id)]
    outs = [bind_type(t, b) for t in node.types]
    cost = opdef.cost(node.attrs, ins, outs)

    params = trainable = buffers = pbytes = 0
    for key in node.params.values():
        if key in seen:
            continue
        seen.add(key)
        spec = graph.params.specs.get(key)
        if spec is None:
            raise IRError(f"node '{node.id}' refers to parameter '{key}', which the store does not hold", node.span)
        n = math.prod(spec.shape)
        pbytes += n * DTYPE_BYTES.get(spec.dtype, 4)
        if spec.buffer:
            buffers += n
        else:
            params += n
            trainable += n if spec.trainable else 0

    return LayerStat(
        name=node.id,
        op=node.op,
        group=opdef.group,
        scope=node.scope,
        block=node.block,
        shapes=tuple(tuple(int(d) for d in t.shape) for t in outs),
        dtypes=tuple(t.dtype for t in outs),
        params=params,
        trainable_params=trainable,
        buffers=buffers,
        macs=int(cost.macs),
        flops=int(cost.flops),
        act_bytes=sum(t.nbytes() for t in outs),
        param_bytes=pbytes,
    )


def peak_activation_bytes(graph: Graph, bind: Mapping[str, int] | None = None) -> int:
    """Peak bytes of tensors alive at once in one inference pass, in ``graph.nodes()`` order.

    Liveness: a tensor is allocated when its node runs and freed after its last reader has run
    (the network's inputs are alive from the start, its outputs to the end); while a node runs,
    its inputs and its outputs are all alive.  No tensor shares memory with another (no
    in-place ops), no op's working memory is counted: it is what a framework that frees tensors
    as soon as they are dead holds, e.g. ~10 MB for ResNet-50 at batch 1 where the sum over
    nodes is ~150 MB."""
    b = bindings(graph, bind)
    order = [n.id for n in graph.nodes()]
    step = {nid: i for i, nid in enumerate(order)}
    outputs = set(graph.outputs)
    last: dict[Value, int] = {}
    size: dict[Value, int] = {}
    for node in graph.nodes():
        for i, t in enumerate(node.types):
            v = Value(node.id, i)
            size[v] = bind_type(t, b).nbytes()
            users = [step[u] for u, _ in graph.users(v)]
            last[v] = len(order) if v in outputs else max(users, default=step[node.id])
    live = sum(size[Value(nid)] for nid in graph.inputs)
    peak = live
    for i, nid in enumerate(order):
        node = graph.node(nid)
        if node.op != "input":
            live += sum(size[Value(nid, k)] for k in range(len(node.types)))
        peak = max(peak, live)
        freed = [v for v in graph.inputs_of(nid) if last[v] == i] if node.op != "input" else []
        freed += [Value(nid, k) for k in range(len(node.types)) if last[Value(nid, k)] == i]
        live -= sum(size[v] for v in set(freed))
    return peak


def totals(rows: list[LayerStat]) -> dict[str, int]:
    """Column sums of ``rows`` (keys: ``TOTAL_KEYS`` plus ``layers``)."""
    out = {k: sum(getattr(r, k) for r in rows) for k in TOTAL_KEYS}
    out["layers"] = len(rows)
    return out


def summary(graph: Graph, bind: Mapping[str, int] | None = None,
            rows: list[LayerStat] | None = None) -> dict[str, Any]:
    """Whole-network numbers: inputs/outputs with bound shapes, and ``totals``.

    Pass ``rows`` from ``layer_stats(graph, bind)`` to avoid recounting.
    """
    b = bindings(graph, bind)
    if rows is None:
        rows = layer_stats(graph, b)

    def tensor(name: str, t: TensorType) -> dict[str, Any]:
        return {"name": name, "shape": [bind_dim(d, b) for d in t.shape],
                "symbolic_shape": [d for d in t.shape], "dtype": t.dtype}

    outputs = []
    for i, (v, t) in enumerate(zip(graph.outputs, graph.output_types())):
        name = graph.output_names[i] if i < len(graph.output_names) else f"out{i}"
        outputs.append({**tensor(name, t), "node": v.node})
    return {
        "network": graph.name,
        "bind": b,
        "inputs": [tensor(i, graph.node(i).type) for i in graph.inputs],
        "outputs": outputs,
        **totals(rows),
    }


def to_json(graph: Graph, rows: list[LayerStat], bind: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A JSON-serializable report: ``{"network", "bind", "inputs", "outputs", "layers", "totals"}``.

    ``bind`` must be the one ``rows`` were computed with (it fixes input shapes).
    """
    s = summary(graph, bind, rows)
    tot = {k: s.pop(k) for k in (*TOTAL_KEYS, "layers")}
    tot["peak_act_bytes"] = peak_activation_bytes(graph, s["bind"])
    layers = []
    for r in rows:
        d = asdict(r)
        d["shapes"] = [list(shape) for shape in r.shapes]
        d["dtypes"] = list(r.dtypes)
        layers.append(d)
    return {**s, "layers": layers, "totals": tot}


def flat_rows(rows: list[LayerStat]) -> list[dict[str, Any]]:
    """One flat record per op for TSV/CSV: text and plain integers, no units, no separators."""
    return [{"layer": r.name, "op": r.op, "block": r.block, "output_shape": format_shapes(r.shapes),
             "dtype": ",".join(r.dtypes), "params": r.params, "buffers": r.buffers, "macs": r.macs, "flops": r.flops,
             "act_bytes": r.act_bytes, "param_bytes": r.param_bytes} for r in rows]


# -- formatting ----------------------------------------------------------------

def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_count(n: int, what: str = "") -> str:
    """(1_814_073_344, "MACs") -> '1.81 GMACs' (decimal units, as MACs/FLOPs are quoted)."""
    for div, unit in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}{what}"
    return f"{n} {what}".rstrip()


def format_shapes(shapes: tuple[tuple[int, ...], ...]) -> str:
    return ", ".join("[" + ", ".join(str(d) for d in s) + "]" for s in shapes)


def _num(n: int) -> str:
    return f"{n:,}" if n else "-"


def render_table(graph: Graph, rows: list[LayerStat], console: Console | None = None, *,
                 by_block: bool = False, bind: Mapping[str, int] | None = None) -> Table:
    """Print the statistics table of ``rows`` on ``console`` (and return the ``Table``).

    ``by_block=True`` groups consecutive rows by their top-level scope
    (``layer1``, ``layer2`` ...) and adds a subtotal line after each group.
    ``bind`` is only used to name the bindings in the title.
    """
    b = bindings(graph, bind)
    tot = totals(rows)
    where = ", ".join(f"{k}={v}" for k, v in sorted(b.items()))
    table = Table(title=f"{graph.name}" + (f"  ({where})" if where else ""), show_footer=True,
                  title_justify="left", header_style="bold", footer_style="bold")
    # numbers keep their full width (a truncated "118,013,9…" misleads); long layer
    # names and shapes fold onto a second line instead
    def col(header: str, footer: str, cells: list[str], right: bool = True) -> None:
        width = max([len(header), len(footer), *(len(c) for c in cells)])
        table.add_column(header, footer=footer, justify="right" if right else "left", no_wrap=True, min_width=width)

    table.add_column("layer", footer="total", overflow="fold", min_width=12)
    table.add_column("op", footer=f"{tot['layers']:,} ops", overflow="ellipsis", min_width=6)
    table.add_column("output shape", overflow="fold", min_width=12)
    col("params", f"{tot['params']:,}", [_num(r.params) for r in rows])
    col("MACs", f"{tot['macs']:,}", [])  # the total is the widest cell
    col("FLOPs", f"{tot['flops']:,}", [])
    col("act. memory", human_bytes(tot["act_bytes"]), [human_bytes(r.act_bytes) for r in rows])

    def add(r: LayerStat, indent: str = "") -> None:
        table.add_row(indent + r.name, r.op, format_shapes(r.shapes), _num(r.params), _num(r.macs),
                      _num(r.flops), human_bytes(r.act_bytes))

    if not by_block:
        for r in rows:
            add(r)
    else:
        groups = _consecutive_groups(rows)
        for i, (key, members) in enumerate(groups):
            if key:
                # name the block only when the group itself is one block instance
                blocks = sorted({r.block for r in members if r.scope == key})
                label = f"{key} ({', '.join(blocks)})" if blocks else key
                table.add_row(Text(label, style="bold cyan"), "", "", "", "", "", "")
            for r in members:
                add(r, "  " if key else "")
            if key:
                sub = totals(members)
                table.add_row(Text(f"  subtotal {key}", style="italic"), "", "",
                              Text(_num(sub["params"]), style="italic"), Text(_num(sub["macs"]), style="italic"),
                              Text(_num(sub["flops"]), style="italic"),
                              Text(human_bytes(sub["act_bytes"]), style="italic"), end_section=True)
            elif i + 1 < len(groups):
                table.add_section()

    line = (
        f"{tot['params']:,} params ({tot['trainable_params']:,} trainable, {tot['buffers']:,} buffer elements)"
        f" · {human_count(tot['macs'], 'MACs')} · {human_count(tot['flops'], 'FLOPs')}"
        f" · activations {human_bytes(tot['act_bytes'])} (sum), peak {human_bytes(peak_activation_bytes(graph, b))}"
        f" (inference) · weights {human_bytes(tot['param_bytes'])}"
    )
    if console is not None:
        console.print(table)
        console.print(Text(line), soft_wrap=True)  # one line, never cut: a terminal wraps it, a pipe keeps it
    return table


def _consecutive_groups(rows: list[LayerStat]) -> list[tuple[str, list[LayerStat]]]:
    """Runs of rows sharing a top-level scope, in order ("" = network level)."""
    groups: list[tuple[str, list[LayerStat]]] = []
    for r in rows:
        if groups and groups[-1][0] == r.top_scope:
            groups[-1][1].append(r)
        else:
            groups.append((r.top_scope, [r]))
    return groups
