"""Inlay hints: the output type of each statement, params and MACs on block and network headers.

    y = x | conv2d(c, 3) | relu  : f32[N, 64, 56, 56]
    network resnet18(...) {      11,689,512 params · 1.82 GMACs

A statement that runs several times (in a loop, or in a block with several
instances) shows the shapes it produced: one, two, or the first and last.
"""
from __future__ import annotations

from lsprotocol import types as lsp

from convdsl.lang import ast
from convdsl.lsp.convert import cost_text, types_summary
from convdsl.lsp.index import statements
from convdsl.lsp.recording import pos
from convdsl.lsp.view import FileView


def inlay_hints(view: FileView, first_line: int = 1, last_line: int | None = None) -> list[lsp.InlayHint]:
    program = view.program
    if program is None:
        return []
    out: list[tuple[int, int, str, lsp.InlayHintKind]] = []
    for item in program.items:
        if isinstance(item, ast.NetworkDef):
            _network(view, item, out)
            _body(view, item.body, out)
        elif isinstance(item, ast.BlockDef):
            _block(view, item, out)
            if isinstance(item.body, list):
                _body(view, item.body, out)
    hints = []
    for line, column, label, kind in sorted(out):
        if line < first_line or (last_line is not None and line > last_line):
            continue
        hints.append(lsp.InlayHint(position=view.lines.position(line, column), label=label, kind=kind,
                                   padding_left=True))
    return hints


def _header_end(view: FileView, item) -> tuple[int, int] | None:
    """Just after the '{' that opens the item's body (or the end of a one-line block's header line)."""
    if view.index is None:
        return None
    for s in view.index.scopes:
        if s.item is item:
            for t in view.index.tokens[s.first:s.last]:
                if t.type == "LBRACE":
                    return t.line, t.end_column
            first = view.index.tokens[s.first] if s.first < len(view.index.tokens) else None
            if first is not None:
                return first.line, len(view.lines.text(first.line).rstrip()) + 1
    return None


def _network(view: FileView, net: ast.NetworkDef, out: list) -> None:
    result = next((n for n in view.networks if n.name == net.name), None)
    where = _header_end(view, net)
    if result is None or where is None:
        return
    out.append((*where, cost_text(result.totals["params"], result.totals["macs"]), lsp.InlayHintKind.Parameter))


def _block(view: FileView, block: ast.BlockDef, out: list) -> None:
    instances = [i for i in view.instances_of(block) if i.params is not None]  # in networks that elaborated
    where = _header_end(view, block)
    if not instances or where is None:
        return
    params = sum(i.params for i in instances)
    macs = sum(i.macs for i in instances)
    if len(instances) == 1:
        label = cost_text(params, macs)
    elif len({(i.params, i.macs) for i in instances}) == 1:
        label = f"{len(instances)} instances × {cost_text(instances[0].params, instances[0].macs)}"
    else:
        label = f"{len(instances)} instances: {cost_text(params, macs)} in all"
    if block.inputs is None and isinstance(block.body, ast.Pipe | ast.Call | ast.Name | ast.Labeled) \
            and block.body.span is not None and block.body.span.end_line is not None:
        # block f(c) = pipeline: the output type and the cost at the end of the pipeline
        types = [tuple(i.outputs) if len(i.outputs) != 1 else i.outputs[0] for i in instances]
        label = f"→ {types_summary(types)} · {label}"
        out.append((block.body.span.end_line, block.body.span.end_column, label, lsp.InlayHintKind.Type))
        return
    out.append((*where, label, lsp.InlayHintKind.Parameter))


def _body(view: FileView, body: list, out: list) -> None:
    for stmt in statements(body):
        if isinstance(stmt, ast.Assign):
            key = pos(stmt.span)
            end = stmt.value.span
            if key is None or end is None or end.end_line is None:
                continue
            parts = []
            for name in stmt.targets:
                types = view.notes.values.get((key, name))
                if types:
                    parts.append(types_summary(types))
            if parts:
                out.append((end.end_line, end.end_column, ": " + ", ".join(parts), lsp.InlayHintKind.Type))
        elif isinstance(stmt, ast.Return):
            for e in stmt.values:
                runs = view.notes.returns.get(pos(e.span)) if e.span is not None else None
                if runs and e.span.end_line is not None:
                    types = [r[0] if len(r) == 1 else tuple(r) for r in runs]
                    out.append((e.span.end_line, e.span.end_column, "→ " + types_summary(types),
                                lsp.InlayHintKind.Type))
