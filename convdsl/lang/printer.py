"""Graph IR -> CDL text.

Any graph (fresh from the front end, or after pruning or mutation) prints as
a flat ``network`` with one statement per node.  Every node keeps its id as
an instance label, so parameter names (and so weights files) survive the
round trip: ``elaborate(print_graph(g))`` rebuilds the same graph.  Values are
written by ``format_value`` (convdsl/ir/optable.py), the one way convdsl writes
a value as CDL.
"""
from __future__ import annotations

import keyword
import re
from typing import Any

from convdsl.ir.graph import Graph, Value
from convdsl.ir.ops import OPS
from convdsl.ir.optable import REQUIRED, OpDef, format_value
from convdsl.lang.builtins import BUILTINS

KEYWORDS = {"import", "block", "network", "def", "return", "for", "in", "repeat", "if", "elif", "else", "assert",
            "and", "or", "not", "as", "true", "false", "none", "choice"}


def format_call(op: OpDef, attrs: dict[str, Any], args: list[str]) -> str:
    """``op(args..., hyper-params)`` with defaults left out; required ones positional."""
    parts = list(args)
    keyword_mode = False
    for a in op.attrs:
        v = attrs.get(a.name, a.default)
        if a.default is not REQUIRED and v == a.default and type(v) is type(a.default):
            keyword_mode = True
            continue
        text = format_value(v, words="sym" in a.kind.split("|"))
        if not keyword_mode and len(parts) - len(args) < 2:
            parts.append(text)
        else:
            keyword_mode = True
            parts.append(f"{a.name}={text}")
    return f"{op.name}({', '.join(parts)})"


class _Names:
    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, base: str) -> str:
        name = re.sub(r"\W", "_", base)
        if not name or name[0].isdigit():
            name = "v" + name
        if name in OPS or name in KEYWORDS or keyword.iskeyword(name) or name in BUILTINS:
            name += "_"
        candidate, i = name, 1
        while candidate in self.used:
            candidate = f"{name}_{i}"
            i += 1
        self.used.add(candidate)
        return candidate


def _named_outputs(graph: Graph, var: dict[Value, str], reserved: set[str]) -> list[str]:
    """``return`` with the outputs' own names (``logits``, not the node's ``flatten_``): an output
    whose variable has another name is bound to its name first, so a reprinted graph (a compiled
    folder's network.cdl) gives the outputs the names the program gave them."""
    lines, returned = [], []
    for i, v in enumerate(graph.outputs):
        name = graph.output_names[i] if i < len(graph.output_names) else None
        if name is None or name == var[v] or name not in reserved:
            returned.append(var[v])
            continue
        reserved.discard(name)
        lines.append(f"    {name} = {var[v]}")
        returned.append(name)
    return lines + [f"    return {', '.join(returned)}"]


def _plain(name: str) -> bool:
    return (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None and name not in OPS and name not in KEYWORDS
            and not keyword.iskeyword(name) and name not in BUILTINS)


def print_graph(graph: Graph, header: str | None = None) -> str:
    names = _Names()
    var: dict[Value, str] = {}
    reserved = {n for n in graph.output_names if n not in graph.inputs and _plain(n)}  # see _named_outputs
    names.used |= reserved
    own = {v: n for v, n in zip(graph.outputs, graph.output_names) if n in reserved}  # an output's variable: its name
    for v, n in list(own.items())[::-1]:
        reserved.discard(n)
    params = []
    for nid in graph.inputs:
        t = graph.node(nid).type
        var[Value(nid)] = names.make(nid)
        dims = ", ".join(str(d) for d in t.shape)
        params.append(f"{var[Value(nid)]}: {t.dtype}[{dims}]")
    names.used |= set(graph.symbols)  # a variable named N would hide the symbol a shape list writes (reshape([4*N, -1]))
    lines = []
    if header:
        lines += [f"# {h}" for h in header.splitlines()]
    lines.append(f"network {graph.name}({', '.join(params)}) {{")
    for node in graph.nodes():
        if node.op == "input":
            continue
        op = OPS[node.op]
        args = [var[v] for v in graph.inputs_of(node.id)]
        call = format_call(op, node.attrs, args)
        label = node.id if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", node.id) else f'"{node.id}"'
        if node.exact_param:  # its one parameter is named by the node's id itself
            label = f"param {label}"
        targets = [own.pop(Value(node.id, i), None) or names.make(node.id if len(node.types) == 1 else f"{node.id}_{i}")
                   for i in range(len(node.types))]
        for i, t in enumerate(targets):
            var[Value(node.id, i)] = t
        lines.append(f"    {', '.join(targets)} = {call} as {label}")
    lines += _named_outputs(graph, var, reserved)
    lines.append("}")
    return "\n".join(lines) + "\n"

