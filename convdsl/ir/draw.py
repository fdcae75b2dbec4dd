"""The network as a picture: Graphviz DOT text, rendered by the ``dot`` executable.

One box per op (its name, op and output type), colored by the op's group in
the op table; block instances become nested clusters labeled ``layer1.0
(basic)``; inputs and outputs are drawn bold.  Every string that reaches the
DOT text goes through ``dot_string`` or ``html_text``: names come from .cdl
authors, and a label must never be able to end its own quoting.  DOT node
ids are synthetic (``n0``, ``n1`` ...), so user names only ever appear inside
labels and tooltips.
"""
from __future__ import annotations

import itertools
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from convdsl.errors import UsageError
from convdsl.ir.graph import Graph, Node
from convdsl.ir.ops import OPS
from convdsl.ir.optable import format_value
from convdsl.ir.types import TensorType

# Fill color per OpDef.group; unknown groups fall back to DEFAULT_FILL.
GROUP_COLORS: dict[str, str] = {
    "convolution": "#a6c8ec",
    "linear": "#c9b3e6",
    "attention": "#f4a5a5",
    "normalization": "#fbe29a",
    "activation": "#b9e4b0",
    "pooling": "#fcc48f",
    "resampling": "#e3c7a8",
    "arithmetic": "#f6bcd9",
    "shape": "#dcdcdc",
    "fft": "#9fdde6",
    "ssm": "#d9d98c",
    "regularization": "#eeeeee",
    "quantization": "#b3e0d0",
}
DEFAULT_FILL = "#ffffff"
IO_FILL = "#e8e8e8"
CLUSTER_FILLS = ("#f6f8fb", "#edf1f7", "#e4eaf3")  # by nesting depth, cycling

IMAGE_FORMATS = ("svg", "png", "pdf")
TEXT_FORMATS = ("dot", "gv")
EDGE_LABELS = ("auto", "all", "none")


# -- escaping --------------------------------------------------------------------

def _clean(s: str) -> str:
    # control characters are invalid in XML (HTML labels) and useless in DOT
    return "".join(c if c >= " " or c in "\n\t" else "\ufffd" for c in str(s))


def dot_string(s: str) -> str:
    """``s`` as a double-quoted DOT string (an escString in labels and tooltips).

    Backslashes are doubled so that Graphviz's ``\\n``/``\\N``/``\\G`` escapes cannot
    be smuggled in; quotes are escaped; newlines become ``\\n``.
    """
    s = _clean(s).replace("\\", "\\\\").replace('"', '\\"')
    s = s.replace("\r\n", "\n").replace("\n", "\\n").replace("\t", " ")
    return f'"{s}"'


def html_text(s: str) -> str:
    """``s`` as text inside a Graphviz HTML-like label (``<...>``).

    Markup characters become entities.  Graphviz still expands ``\\N``/``\\G`` in
    HTML text (after decoding entities, so ``&#92;`` does not help): backslashes
    are doubled here too.
    """
    s = _clean(s).replace("\\", "\\\\")
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = s.replace('"', "&quot;").replace("'", "&#39;").replace("\t", " ")
    return s.replace("\n", "<br/>")


# -- building --------------------------------------------------------------------

@dataclass
class _Cluster:
    scope: str
    block: str = ""
    nodes: list[str] = field(default_factory=list)  # DOT node ids, in graph order
    children: dict[str, "_Cluster"] = field(default_factory=dict)


def _type_text(t: TensorType) -> str:
    return str(t)


def _local_name(node: Node) -> str:
    """Node name relative to its block instance (the cluster label gives the rest)."""
    prefix = node.scope + "."
    return node.id[len(prefix):] if node.scope and node.id.startswith(prefix) else node.id


def _tooltip(node: Node) -> str:
    lines = [f"{node.id}: {node.op}"]
    lines += [f"{k}={format_value(v)}" for k, v in node.attrs.items()]
    lines += [f"out{i}: {t}" if len(node.types) > 1 else f"out: {t}" for i, t in enumerate(node.types)]
    if node.span is not None:
        lines.append(str(node.span))
    return "\n".join(lines)


def _label(title: str, subtitle: str, types: list[TensorType]) -> str:
    shapes = "<br/>".join(f'<font point-size="9" color="#333333">{html_text(_type_text(t))}</font>' for t in types)
    return f"<<b>{html_text(title)}</b><br/>{html_text(subtitle)}<br/>{shapes}>"


def _scope_tree(graph: Graph, ids: dict[str, str]) -> _Cluster:
    root = _Cluster("", graph.name)
    blocks = graph.scopes  # scope -> block name, also for scopes holding only sub-blocks
    for node in graph.nodes():
        where = root
        parts = node.scope.split(".") if node.scope else []
        for i in range(len(parts)):
            scope = ".".join(parts[: i + 1])
            where = where.children.setdefault(scope, _Cluster(scope, block=blocks.get(scope, "")))
        if node.scope and not where.block:
            where.block = node.block
        where.nodes.append(ids[node.id])
    return root


def to_dot(graph: Graph, *, rankdir: str = "TB", edge_labels: str = "auto",
           full_names: bool = False, legend: bool = True) -> str:
    """Graphviz DOT text of ``graph``.

    - one box per op: name, op, output type(s); a tooltip lists attributes and
      the .cdl location (visible when hovering an SVG);
    - block instances are nested ``cluster_*`` subgraphs labeled
      ``scope (block)``; nodes show their name relative to the cluster unless
      ``full_names``;
    - inputs, graph outputs (extra ``output`` boxes) and the nodes producing
      them are drawn bold;
    - ``edge_labels``: ``auto`` labels an edge with its tensor type only where
      the box does not say it (a node with several outputs), ``all`` labels
      every edge, ``none`` none;
    - ``legend`` adds one box mapping colors to op groups.
    """
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise UsageError(f"unknown rankdir {rankdir!r}", expected="TB, LR, BT or RL")
    if edge_labels not in EDGE_LABELS:
        raise UsageError(f"unknown edge_labels {edge_labels!r}", expected=", ".join(EDGE_LABELS))

    order = [n.id for n in graph.nodes()]
    ids = {nid: f"n{i}" for i, nid in enumerate(order)}
    outputs = {v.node for v in graph.outputs}
    groups_used: list[str] = []

    lines = [
        f"digraph {dot_string(graph.name)} {{",
        f"  graph [rankdir={rankdir}, fontname=\"Helvetica\", fontsize=12, nodesep=0.25, ranksep=0.35,"
        f" label={dot_string(graph.name)}, labelloc=t];",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, margin="0.12,0.05"];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555", arrowsize=0.7];',
    ]

    node_lines: dict[str, str] = {}
    for nid in order:
        node = graph.node(nid)
        name = nid if full_names else _local_name(node)
        attrs = [f"label={_label(name, node.op, node.types)}", f"tooltip={dot_string(_tooltip(node))}"]
        if node.op == "input":
            attrs += [f'fillcolor="{IO_FILL}"', 'penwidth=2', 'style="rounded,filled,bold"']
        else:
            opdef = OPS.get(node.op)
            group = opdef.group if opdef is not None else ""
            if group not in groups_used:
                groups_used.append(group)
            attrs.append(f'fillcolor="{GROUP_COLORS.get(group, DEFAULT_FILL)}"')
            if nid in outputs:
                attrs += ['penwidth=2', 'style="rounded,filled,bold"']
        node_lines[ids[nid]] = f"{ids[nid]} [{', '.join(attrs)}];"

    # nodes, nested by scope
    root = _scope_tree(graph, ids)
    counter = itertools.count()

    def emit(cluster: _Cluster, indent: str, depth: int, parent_block: str) -> None:
        for dot_id in cluster.nodes:
            lines.append(indent + node_lines[dot_id])
        for child in cluster.children.values():
            # a labeled expression inside a block reuses its block's name: not an instance
            block = child.block if child.block and child.block != parent_block else ""
            title = f"{child.scope} ({block})" if block else child.scope
            lines.append(f"{indent}subgraph cluster_{next(counter)} {{")
            lines.append(f"{indent}  label={dot_string(title)}; tooltip={dot_string(title)};")
            lines.append(f'{indent}  style="rounded,filled"; color="#8899aa"; fillcolor="{CLUSTER_FILLS[depth % len(CLUSTER_FILLS)]}";'
                         ' fontsize=11; labeljust=l;')
            emit(child, indent + "  ", depth + 1, child.block or parent_block)
            lines.append(f"{indent}}}")

    emit(root, "  ", 0, graph.name)

    # graph outputs as their own boxes
    for i, (v, t) in enumerate(zip(graph.outputs, graph.output_types())):
        oname = graph.output_names[i] if i < len(graph.output_names) else f"out{i}"
        lines.append(f'  o{i} [label={_label(oname, "output", [t])}, tooltip={dot_string(f"output {oname}: {t}")},'
                     f' fillcolor="{IO_FILL}", penwidth=2, style="rounded,filled,bold"];')

    # edges, in consumer order then port order
    for nid in order:
        for port, v in enumerate(graph.inputs_of(nid)):
            src = graph.node(v.node)
            attrs = []
            if edge_labels == "all" or (edge_labels == "auto" and len(src.types) > 1):
                text = _type_text(src.types[v.out])
                if len(src.types) > 1:
                    text = f"out{v.out}: {text}"
                attrs.append(f"label={dot_string(text)}")
            lines.append(f"  {ids[v.node]} -> {ids[nid]}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    for i, v in enumerate(graph.outputs):
        src = graph.node(v.node)
        label = f" [label={dot_string(f'out{v.out}')}]" if len(src.types) > 1 else ""
        lines.append(f"  {ids[v.node]} -> o{i}{label};")

    if legend and groups_used:
        rows = "".join(
            f'<tr><td bgcolor="{GROUP_COLORS.get(g, DEFAULT_FILL)}" width="14"> </td>'
            f'<td align="left">{html_text(g or "other")}</td></tr>'
            for g in sorted(groups_used)
        )
        lines.append(f'  legend [shape=plain, style="", label=<<table border="0" cellborder="1" cellspacing="0" '
                     f'cellpadding="3"><tr><td colspan="2"><b>op groups</b></td></tr>{rows}</table>>];')

    lines.append("}")
    return "\n".join(lines) + "\n"


# -- rendering -------------------------------------------------------------------

def render(graph: Graph, path: str | Path, fmt: str | None = None, *, timeout: float = 120.0, **options) -> Path:
    """Write ``graph`` to ``path`` as DOT text or, through Graphviz ``dot``, an image.

    ``fmt`` defaults to the file suffix: ``dot``/``gv`` (text, always possible),
    ``svg``, ``png`` or ``pdf`` (need the ``dot`` executable).  ``options`` go to
    ``to_dot``.  Raises ``UsageError`` for an unknown format, a missing ``dot``,
    or a file that cannot be written.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in TEXT_FORMATS + IMAGE_FORMATS:
        raise UsageError(
            f"cannot draw to '{path}': unknown format {fmt!r}" if fmt else f"cannot draw to '{path}': no format",
            expected=", ".join(TEXT_FORMATS + IMAGE_FORMATS),
            hint="name the file with one of these suffixes, or pass the format explicitly",
        )
    text = to_dot(graph, **options)
    if fmt in TEXT_FORMATS:
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write '{path}': {e.strerror or e}") from None
        return path

    exe = shutil.which("dot")
    if exe is None:
        raise UsageError(
            f"drawing {fmt.upper()} needs Graphviz, and its 'dot' program is not on PATH",
            hint="install Graphviz (apt-get install graphviz, brew install graphviz, conda install graphviz),"
                 " or write a .dot file and render it elsewhere",
        )
    try:
        proc = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=text.encode("utf-8"),
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UsageError(f"Graphviz 'dot' took longer than {timeout:g} s to lay out {graph.name}",
                         hint="write a .dot file instead, or draw a smaller network") from None
    except OSError as e:
        raise UsageError(f"cannot run Graphviz 'dot' ({exe}): {e.strerror or e}") from None
    if proc.returncode != 0 or not path.exists():
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise UsageError(f"Graphviz 'dot' failed to write '{path}'" + (f": {err}" if err else ""),
                         hint="write a .dot file to inspect the input it was given")
    return path
