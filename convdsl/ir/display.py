"""How a graph shows itself in Jupyter: the picture (``convdsl.ir.draw``) and the statistics table.

``Graph._repr_svg_`` and ``Graph._repr_html_`` call these.  Every name in the
HTML comes from a .cdl author and is escaped; the SVG is Graphviz's output of
``draw.to_dot``, which escapes its own labels.  Without Graphviz the HTML
still shows the table (and says what is missing).
"""
from __future__ import annotations

import html
import shutil
import tempfile
from pathlib import Path
from typing import Any

from convdsl.errors import ConvDSLError
from convdsl.ir.draw import render
from convdsl.ir.graph import Graph
from convdsl.ir.stats import (
    format_shapes,
    human_bytes,
    human_count,
    layer_stats,
    summary,
)

MAX_ROWS = 400  # layers listed in the HTML table; the totals always cover all of them
MAX_SVG_NODES = 3000  # larger graphs are not laid out (dot would take minutes)


def graph_svg(graph: Graph) -> str | None:
    """The graph as SVG text, or None when Graphviz is missing or the graph is too large to draw."""
    if shutil.which("dot") is None or len(graph) > MAX_SVG_NODES:
        return None
    with tempfile.TemporaryDirectory(prefix="convdsl-svg-") as d:
        try:
            path = render(graph, Path(d) / "graph.svg")
        except ConvDSLError:
            return None
        text = path.read_text(encoding="utf-8")
    start = text.find("<svg")  # drop the XML prolog and DOCTYPE: the SVG is embedded in HTML too
    return text[start:] if start >= 0 else None


def graph_html(graph: Graph, title: str | None = None) -> str:
    """A summary line, the picture, and the per-layer table (output shape, params, MACs, memory)."""
    rows = layer_stats(graph)
    s = summary(graph, None, rows)
    esc = html.escape

    def tensors(items) -> str:
        return ", ".join(f"{esc(t['name'])}: {esc(t['dtype'])}[{esc(', '.join(map(str, t['symbolic_shape'])))}]"
                         for t in items)

    head = (f"<b>{esc(title or 'network ' + graph.name)}</b> &nbsp; {tensors(s['inputs'])} &rarr; "
            f"{tensors(s['outputs'])}<br/>{s['layers']:,} ops &middot; {s['params']:,} params &middot; "
            f"{esc(human_count(s['macs'], 'MACs'))} &middot; {esc(human_count(s['flops'], 'FLOPs'))}")
    svg = graph_svg(graph)
    picture = (f'<details open><summary>graph</summary><div style="max-height:600px;overflow:auto">{svg}</div>'
               "</details>") if svg else "<p><i>(install Graphviz to see the graph)</i></p>"
    cells = []
    for r in rows[:MAX_ROWS]:
        cells.append(f"<tr><td style='text-align:left'>{esc(r.name)}</td><td style='text-align:left'>{esc(r.op)}</td>"
                     f"<td style='text-align:left'>{esc(format_shapes(r.shapes))}</td><td>{r.params:,}</td>"
                     f"<td>{r.macs:,}</td><td>{esc(human_bytes(r.act_bytes))}</td></tr>")
    more = f"<tr><td colspan='6'>… {len(rows) - MAX_ROWS} more layers</td></tr>" if len(rows) > MAX_ROWS else ""
    bind = ", ".join(f"{k}={v}" for k, v in sorted(s["bind"].items()))
    table = ("<details><summary>layers" + (f" (at {esc(bind)})" if bind else "") + "</summary>"
             "<table class='convdsl-stats'><thead><tr><th>layer</th><th>op</th><th>output shape</th><th>params</th>"
             f"<th>MACs</th><th>act. memory</th></tr></thead><tbody>{''.join(cells)}{more}</tbody>"
             f"<tfoot><tr><th>total</th><th>{s['layers']:,} ops</th><th></th><th>{s['params']:,}</th>"
             f"<th>{s['macs']:,}</th><th>{esc(human_bytes(s['act_bytes']))}</th></tr></tfoot></table></details>")
    return f"<div class='convdsl-graph'>{head}{picture}{table}</div>"


class _Shown:
    """A compiled module as a notebook shows it: its graph (picture and table), and the backend."""

    def __init__(self, graph: Graph, backend: str) -> None:
        self.graph = graph
        self.backend = backend

    def __call__(self) -> str:
        return graph_html(self.graph, f"{self.graph.name} (compiled: {self.backend})")


def attach_display(module: Any, graph: Graph, backend: str) -> Any:
    """Give a compiled module a notebook display (graph picture + statistics); its graph is kept as
    ``_convdsl_graph`` (a name no generated layer can take)."""
    try:
        object.__setattr__(module, "_repr_html_", _Shown(graph, backend))
        object.__setattr__(module, "_convdsl_graph", graph)
    except (AttributeError, TypeError):  # an object that takes no attributes: shown as its repr
        pass
    return module
