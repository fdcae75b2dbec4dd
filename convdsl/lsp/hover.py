"""Hover: what the name under the cursor is.

- a value: its tensor type (every shape it took, when the statement ran several times);
- a parameter: the values it was bound to; a network input: its declared type;
- an op: its signature, doc, shape rule and example from the op table, and the
  output type of this application;
- a block: its signature and leading comment, and the params/MACs of the
  instances made here (at a call) or of all its instances (at its definition);
- a keyword argument or a bare word (``pad=same``): what the op's attribute means.
"""
from __future__ import annotations

from lsprotocol import types as lsp

from convdsl.ir.ops import OPS
from convdsl.ir.opdocs import signature as op_signature
from convdsl.ir.optable import REQUIRED, Attr, describe_kind, format_value
from convdsl.lang import ast
from convdsl.lang.builtins import BUILTINS
from convdsl.lang.format import format_expr
from convdsl.lsp.analysis import short_path
from convdsl.lsp.convert import cost_text, type_text, types_summary, value_text
from convdsl.lsp.index import Def, FileIndex, Occurrence
from convdsl.lsp.recording import Instance, pos
from convdsl.lsp.view import FileView

MAX_INSTANCES = 8  # instances listed one per line


def hover(view: FileView, line: int, column: int, load) -> lsp.Hover | None:
    """``load(path)`` gives the ``FileView`` of another file (for definitions in imports)."""
    if view.index is None:
        return None
    occ = view.index.at(line, column)
    if occ is None:
        return None
    text = _describe(view, occ, load)
    if not text:
        return None
    t = occ.tok
    rng = lsp.Range(view.lines.position(t.line, t.column), view.lines.position(t.line, t.end_column))
    return lsp.Hover(lsp.MarkupContent(lsp.MarkupKind.Markdown, text), rng)


def _code(text: str) -> str:
    return f"```cdl\n{text}\n```"


def _describe(view: FileView, occ: Occurrence, load) -> str | None:
    if occ.role == "kwarg":
        return _kwarg(occ)
    if occ.role == "label":
        return f"instance name `{occ.tok.text}`: the prefix of this layer's parameter names"
    if occ.role == "dim":
        return _size(occ.target) if occ.target is not None else None
    d = occ.target
    if d is not None:
        home = view if d.file == view.path else load(d.file)
        return _definition(home or view, d, view, occ)
    name = occ.tok.text
    if occ.op is not None:
        return _op(name, view.ops.get((view.path, occ.tok.line, occ.tok.column), []))
    if name in BUILTINS and occ.role == "ref":
        return _code(BUILTINS[name].usage or name) + "\n\nbuilt-in function (evaluated at elaboration time)"
    if occ.role == "ref":
        return _bare_word(view.index, occ)
    return None


# ---- definitions ----------------------------------------------------------------------------
def _definition(home: FileView, d: Def, here: FileView, occ: Occurrence) -> str | None:
    node = d.node
    if d.kind in ("block", "network", "def"):
        out = [_code(_signature(node))]
        doc = _leading_comment(home, node)
        if doc:
            out.append(doc)
        if d.kind == "block":
            out.append(_instances(home, here, node, occ))
        if d.kind == "network":
            res = next((n for n in home.networks if n.name == node.name), None)
            if res is not None:
                out.append(f"{cost_text(res.totals['params'], res.totals['macs'])}, {res.totals['layers']} ops")
        if d.file != here.path:
            out.append(f"defined in `{short_path(d.file, here.path)}`")
        return "\n\n".join(x for x in out if x)
    if d.kind == "const":
        out = [_code(f"{node.name} = {format_expr(node.value)}")]
        mod = home.analysis.module if home.analysis is not None else None
        if mod is not None and node.name in mod.names:
            out.append(f"= `{value_text(mod.names[node.name])}`")
        return "\n\n".join(out)
    if d.kind == "import":
        return _code(f'import "{node.path}" as {node.alias}')
    if d.kind == "size":
        return _size(d)
    if d.kind == "value":
        types = home.notes.values.get((pos(node.span), d.name), [])
        return _code(f"{d.name}: {types_summary(types) or '?'}") + _runs(types)
    if d.kind == "loop":
        return _code(f"{d.name}") + "\n\nloop variable"
    if d.kind == "input":
        if isinstance(node, ast.InputParam):
            dims = ", ".join(str(x) for x in node.dims)
            return _code(f"{d.name}: {node.dtype}[{dims}]") + "\n\nnetwork input"
        if isinstance(node, ast.BlockDef) and node.inputs:
            k = node.inputs.index(d.name) if d.name in node.inputs else 0
            types = [i.inputs[k] for i in home.instances_of(node) if k < len(i.inputs)]
            return _code(f"{d.name}: {types_summary(types) or '?'}") + f"\n\ninput of block {node.name}" + _runs(types)
    if d.kind == "param":
        p = node
        head = p.name if p.default is None else f"{p.name} = {format_expr(p.default)}"
        values = home.notes.params.get(pos(p.span), [])
        out = _code(head) + f"\n\nparameter of {d.owner.name}" if d.owner is not None else _code(head)
        if values:
            shown = []
            for v in values:
                s = value_text(v)
                if s not in shown:
                    shown.append(s)
            out += "\n\nbound to: " + ", ".join(f"`{s}`" for s in shown[:MAX_INSTANCES]) + \
                (" …" if len(shown) > MAX_INSTANCES else "")
        return out
    return None


def _runs(types: list) -> str:
    """Every distinct type of a value that was computed several times."""
    if len(types) < 2:
        return ""
    distinct = list(dict.fromkeys(type_text(t) for t in types))
    shown = "\n".join(f"- `{t}`" for t in distinct[:MAX_INSTANCES])
    more = f"\n- … {len(distinct) - MAX_INSTANCES} more" if len(distinct) > MAX_INSTANCES else ""
    return f"\n\n{len(types)} runs, {len(distinct)} shape{'s' if len(distinct) > 1 else ''}:\n{shown}{more}"


def _signature(node) -> str:
    params = ", ".join(_param(p) for p in node.params)
    if isinstance(node, ast.BlockDef):
        inputs = f"({', '.join(node.inputs)})" if node.inputs is not None else ""
        return f"block {node.name}({params}){inputs}"
    if isinstance(node, ast.NetworkDef):
        return f"network {node.name}({params})"
    return f"def {node.name}({params})"


def _param(p) -> str:
    if isinstance(p, ast.InputParam):
        return f"{p.name}: {p.dtype}[{', '.join(str(d) for d in p.dims)}]"
    return p.name if p.default is None else f"{p.name}={format_expr(p.default)}"


def _leading_comment(view: FileView, node) -> str:
    """The comment lines right above a definition."""
    program = view.program
    if program is None or node.span is None:
        return ""
    by_line = {line: text for line, col, text in program.comments if col == 1}
    out = []
    line = node.span.line - 1
    while line in by_line:
        out.append(by_line[line].lstrip("#").strip())
        line -= 1
    return " ".join(reversed(out))


def _instances(home: FileView, here: FileView, block: ast.BlockDef, occ: Occurrence) -> str:
    at_call = occ.role == "ref" and occ.tok is not None
    insts: list[Instance] = here.instances_at(occ.tok.line, occ.tok.column) if at_call else []
    what = "this call"
    if not insts:
        insts = home.instances_of(block)
        what = "all instances"
    insts = [i for i in insts if i.params is not None]  # in networks that elaborated
    if not insts:
        return ""
    total = cost_text(sum(i.params for i in insts), sum(i.macs for i in insts))
    lines = [f"**{what}**: {len(insts)} instance{'s' if len(insts) > 1 else ''}, {total}"]
    for i in insts[:MAX_INSTANCES]:
        outs = ", ".join(type_text(t) for t in i.outputs)
        lines.append(f"- `{i.scope or '(top)'}` → `{outs}`: {cost_text(i.params, i.macs)}")
    if len(insts) > MAX_INSTANCES:
        lines.append(f"- … {len(insts) - MAX_INSTANCES} more")
    return "\n".join(lines)


# ---- ops and their attributes ------------------------------------------------------------------
def _op(name: str, notes: list) -> str:
    op = OPS[name]
    out = [_code(op_signature(op)), op.doc]
    if op.shape_rule:
        out.append(f"shape: `{op.shape_rule}`")
    if op.example:
        out.append(f"example: `{op.example}`")
    if notes:
        types = [n.types[0] if len(n.types) == 1 else tuple(n.types) for n in notes]
        line = f"here: `{types_summary(types)}`"
        counts = sorted({n.params for n in notes})
        if counts[-1]:
            line += f", {counts[0]:,} params" if len(counts) == 1 else f", {counts[0]:,} to {counts[-1]:,} params"
        if len(notes) > 1:
            line += f" ({len(notes)} instances)"
        out.append(line)
    return "\n\n".join(x for x in out if x)


def attr_text(op: str, a: Attr) -> str:
    default = "required" if a.default is REQUIRED else \
        (a.default if isinstance(a.default, str) and "sym" in a.kind else format_value(a.default))
    text = f"`{op}({a.name}=…)`: {describe_kind(a)}; default `{default}`"
    return text + (f"\n\n{a.doc}" if a.doc else "")


def _kwarg(occ: Occurrence) -> str | None:
    if occ.op is not None:
        a = OPS[occ.op].attr(occ.tok.text)
        return attr_text(occ.op, a) if a is not None else f"`{occ.op}` has no hyper-parameter `{occ.tok.text}`"
    if occ.target is not None and occ.callee is not None:
        p = occ.target.node
        head = p.name if p.default is None else f"{p.name} = {format_expr(p.default)}"
        return _code(head) + f"\n\nparameter of {occ.callee.kind} {occ.callee.name}"
    return None


def _size(d: Def) -> str:
    return (_code(d.name) + f"\n\nsymbolic size of network {d.owner.name}'s inputs: a value in its body, as "
            f"`dim(x, i)` gives it (`4 * {d.name}`, `reshape([{d.name}, -1])`)")


def _bare_word(index: FileIndex, occ: Occurrence) -> str | None:
    """A word no definition binds: a value of an op attribute (``pad=same``), or unknown."""
    op, attr = enclosing_attr(index, occ)
    word = occ.tok.text
    if op is not None and attr is not None:
        text = f"`{word}`: a value of {attr_text(op, attr)}"
        if attr.choices and word not in attr.choices:
            text = f"`{word}` is not a value of `{op}({attr.name}=…)`; words: {', '.join(attr.choices)}"
        return text
    return f"`{word}`: a bare word (no definition of this name is in scope)"


def enclosing_attr(index: FileIndex, occ: Occurrence) -> tuple[str | None, Attr | None]:
    """For a token inside an op call's arguments: (op name, the attribute it is the value of)."""
    toks = index.tokens
    k = next((i for i, t in enumerate(toks) if t is occ.tok), None)
    if k is None:
        return None, None
    depth, positional, keyword = 0, 0, None
    if k >= 2 and toks[k - 1].type == "EQUAL" and toks[k - 2].type == "NAME":
        keyword = toks[k - 2].text
    for i in range(k - 1, -1, -1):
        t = toks[i]
        if t.type in ("RPAR", "RSQB"):
            depth += 1
        elif t.type in ("LPAR", "LSQB"):
            if depth == 0:
                if t.type != "LPAR" or i == 0 or toks[i - 1].type != "NAME":
                    return None, None
                name = toks[i - 1].text
                if name not in OPS:
                    return None, None
                op = OPS[name]
                if keyword is not None:
                    return name, op.attr(keyword)
                return name, op.attrs[positional] if positional < len(op.attrs) else None
            depth -= 1
        elif t.type == "COMMA" and depth == 0:
            positional += 1
        elif t.type in ("LBRACE", "RBRACE"):
            return None, None
    return None, None
