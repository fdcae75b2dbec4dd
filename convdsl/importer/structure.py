"""Flat imported graph -> a readable CDL program: blocks, loops, labels.

The module hierarchy of the source (``Imported.chains``: each node's chain of
module instances) is rebuilt as CDL:

- every module class whose instances have the same graph up to
  hyper-parameters becomes one ``block``; the hyper-parameters that differ
  between instances (channels, strides...) are its arguments, those that are
  the same everywhere stay literals.  A class seen once, and containers
  (``nn.Sequential``, ``nn.ModuleList``), are written inline;
- instance names become ``as`` labels, so parameter names are the source's
  keys (``layer1.0.conv1.weight``);
- runs of identical block calls labelled ``prefix.i``, ``prefix.i+1``... become
  ``for`` loops;
- chains of single-use values become pipes, ``add`` becomes ``a + b``.

Signatures are computed bottom-up: a body is rendered with a *hole* for every
attribute value (and every argument of an inner block call), instances with
the same text are the same block, and their hole values decide arguments.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from convdsl.ir.graph import Graph, Value
from convdsl.ir.ops import OPS
from convdsl.ir.optable import REQUIRED, format_value
from convdsl.lang.printer import KEYWORDS

from convdsl.importer.builder import Imported

BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}
HINTS = {"out": "c", "k": "k", "stride": "stride", "groups": "groups"}


@dataclass(frozen=True)
class Hole:
    index: int
    hint: str
    sym: bool = False  # printed as a bare word (pad=same)


@dataclass
class Item:
    """One thing in a body: an op node, or a call of a child block instance."""

    nodes: list[str]
    inputs: list[Value]
    outputs: list[Value]
    node: str | None = None  # op item
    instance: str | None = None  # call item (module path)
    first: int = 0


@dataclass
class Body:
    """A rendered body: statements as token lists (strings and Holes), plus the hole values."""

    params: list[str]  # input variable names
    stmts: list[list[Any]]
    values: list[Any] = field(default_factory=list)
    hints: list[Hole] = field(default_factory=list)


def _snake(name: str) -> str:
    name = name.rsplit(".", 1)[-1]
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    s = re.sub(r"\W", "_", s)
    return s if s and not s[0].isdigit() else f"b_{s}"


def _reserved(name: str) -> bool:
    from convdsl.lang.builtins import BUILTINS

    return name in OPS or name in KEYWORDS or name in BUILTINS or name in ("network", "block", "x")


def _label(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) and text not in KEYWORDS else f'"{text}"'


class Writer:
    def __init__(self, imp: Imported) -> None:
        self.imp = imp
        self.g: Graph = imp.graph
        self._by_order = list(self.g.order())
        self.order = {nid: i for i, nid in enumerate(self._by_order)}
        ops = set(self.g.g.nodes)
        # an op is a leaf of the instance tree: a scope below an op's name (timm's BatchNormAct2d `bn1`
        # holds `bn1.act`; in ONNX both are only name scopes) cannot become a block instance
        self.candidates = {p for p, cls in imp.modules.items() if p and _candidate(cls)
                           and not any(".".join(p.split(".")[:i]) in ops for i in range(1, p.count(".") + 1))}
        self.members: dict[str, list[str]] = defaultdict(list)  # instance -> node ids
        for nid, chain in imp.chains.items():
            for p in chain:
                if p in self.candidates:
                    self.members[p].append(nid)
        for p in self.members:
            self.members[p].sort(key=self.order.__getitem__)
        for p in [p for p in self.members if not self._convex(self.members[p])]:
            # a name scope whose ops are interleaved with ops outside it (convdsl's own export: the
            # unlabeled relu between "f.a" and "f.b" is not in scope "f") is no call: written inline
            self.candidates.discard(p)
            del self.members[p]
        self.is_block: dict[str, str] = {}  # instance path -> block name
        self.blocks: list[tuple[str, list[str], Body, str]] = []  # (name, arguments, body, class)
        self._resolved: dict[str, dict[int, str | None]] = {}  # block -> hole index -> argument name

    def _convex(self, members: list[str]) -> bool:
        """One call with inputs and outputs: every input exists before its first op (ModuleList
        items applied to different tensors are not), and no path leaves it and comes back."""
        inside = set(members)
        lo, hi = self.order[members[0]], self.order[members[-1]]
        outside_reached: set[str] = set()
        for nid in self._by_order[lo:hi + 1]:
            feeds = {v.node for v in self.g.inputs_of(nid)}
            if nid in inside:
                if feeds & outside_reached or any(self.order[f] > lo for f in feeds - inside):
                    return False
            elif feeds & (inside | outside_reached):
                outside_reached.add(nid)
        return True

    # -- items ------------------------------------------------------------------------------
    def _child(self, nid: str, scope: str) -> str | None:
        """The outermost candidate instance below ``scope`` on the node's chain."""
        chain = self.imp.chains.get(nid, [])
        start = chain.index(scope) + 1 if scope in chain else 0
        for p in chain[start:]:
            if p in self.candidates and p != scope and (not scope or p.startswith(scope + ".")):
                return p
        return None

    def items(self, scope: str, nodes: list[str]) -> list[Item]:
        """Items of ``scope``: its own ops, block calls of its child instances, and the items of
        inlined children (recursively)."""
        out: list[Item] = []
        by_child: dict[str, list[str]] = defaultdict(list)
        for nid in nodes:
            c = self._child(nid, scope)
            if c is None:
                node = self.g.node(nid)
                out.append(Item([nid], self.g.inputs_of(nid), [Value(nid, i) for i in range(len(node.types))],
                                node=nid, first=self.order[nid]))
            else:
                by_child[c].append(nid)
        for c, members in by_child.items():
            if c in self.is_block:
                out.append(self._call_item(c, members))
            else:
                out.extend(self.items(c, members))
        out.sort(key=lambda it: it.first)
        return out

    def _call_item(self, c: str, members: list[str]) -> Item:
        inside = set(members)
        inputs: list[Value] = []
        outputs: list[Value] = []
        for nid in members:
            for v in self.g.inputs_of(nid):
                if v.node not in inside and v not in inputs:
                    inputs.append(v)
            for i in range(len(self.g.node(nid).types)):
                v = Value(nid, i)
                if self.g.is_output(v) or any(u not in inside for u, _ in self.g.users(v)):
                    outputs.append(v)
        if not outputs:
            # nothing outside reads the instance (a dead branch the source keeps, e.g. a search space's
            # unchosen input): it returns its values that nothing reads, so the call has a result to
            # assign and the block a non-empty `return`
            outputs = [Value(nid, i) for nid in members for i in range(len(self.g.node(nid).types))
                       if not self.g.users(Value(nid, i))]
        return Item(members, inputs, outputs, instance=c, first=self.order[members[0]])

    # -- rendering ----------------------------------------------------------------------------
    def render(self, scope: str, nodes: list[str], inputs: list[Value], outputs: list[Value],
               input_names: list[str]) -> Body:
        """The body of ``scope`` with a hole for every hyper-parameter value."""
        body = Body(list(input_names), [])
        names = dict(zip(inputs, input_names))
        taken = set(input_names)
        items = self.items(scope, nodes)
        uses: dict[Value, int] = defaultdict(int)
        for it in items:
            for v in it.inputs:
                uses[v] += 1
        for v in outputs:
            uses[v] += 1
        last_use: dict[Value, int] = {}
        for i, it in enumerate(items):
            for v in it.inputs:
                last_use[v] = i
        for v in outputs:
            last_use[v] = len(items)

        def fresh(base: str) -> str:
            base = re.sub(r"\W", "_", base.rsplit(".", 1)[-1]) or "y"
            if base[0].isdigit() or _reserved(base):
                base = "y" if base[0].isdigit() else base + "_"
            name, i = base, 2
            while name in taken:
                name, i = f"{base}{i}", i + 1
            taken.add(name)
            return name

        chain: list[Any] | None = None  # tokens of the statement being built
        chain_out: Value | None = None
        chain_src: str | None = None
        pending: list[list[Any]] = []

        def flush() -> None:
            nonlocal chain, chain_out
            if chain is None:
                return
            v = chain_out
            # reuse the source variable's name when nothing reads it afterwards (x = x | ...)
            target = chain_src if chain_src is not None and chain_src in reusable else fresh(self._base(v))
            names[v] = target
            pending.append([target, " = "] + chain)
            chain, chain_out = None, None

        reusable: set[str] = set()
        for i, it in enumerate(items):
            expr = self._expr(it, scope, body)
            single = len(it.inputs) == 1 and len(it.outputs) == 1
            if chain is not None and single and it.inputs[0] == chain_out and uses[chain_out] == 1:
                chain += [" | "] + expr
                chain_out = it.outputs[0]
                continue
            flush()
            args = [names[v] for v in it.inputs]
            reusable = {names[v] for v in it.inputs if last_use.get(v) == i and v not in outputs}
            if it.node is not None and self.g.node(it.node).op in BINARY and len(args) == 2:  # add(a, b, c) stays one op
                start = [f" {BINARY[self.g.node(it.node).op]} ".join(args)]
            elif len(args) == 1:
                start = [args[0], " | "] + expr
            elif len(args) == 0:
                start = expr
            else:
                start = ["(" + ", ".join(args) + ") | "] + expr
            if len(it.outputs) == 1:
                chain, chain_out = start, it.outputs[0]
                chain_src = args[0] if len(args) == 1 else None
                if chain_src is None and reusable:
                    chain_src = next(iter(reusable)) if len(reusable) == 1 else None
            else:
                targets = [fresh(self._base(v) + f"_{k}") for k, v in enumerate(it.outputs)]
                for v, t in zip(it.outputs, targets):
                    names[v] = t
                pending.append([", ".join(targets), " = "] + start)
        flush()
        pending.append(["return " + ", ".join(names[v] for v in outputs)])
        body.stmts = pending
        return body

    def _base(self, v: Value) -> str:
        node = self.g.node(v.node)
        return node.id.rsplit(".", 1)[-1] if node.params else "y"

    def _expr(self, it: Item, scope: str, body: Body) -> list[Any]:
        rel = (lambda p: p[len(scope) + 1:] if scope and p.startswith(scope + ".") else p)
        if it.instance is not None:
            name = self.is_block[it.instance]
            values = self.instance_values[it.instance]
            holes = []
            for h, v in zip(self.block_holes[name], values):
                body.values.append(v)
                hole = Hole(len(body.values) - 1, h.hint, h.sym)
                body.hints.append(hole)
                holes.append(hole)
            toks: list[Any] = [f"{name}("]
            for k, hole in enumerate(holes):
                toks += ([", "] if k else []) + [hole]
            return toks + [f") as {_label(rel(it.instance))}"]
        node = self.g.node(it.node)
        op = OPS[node.op]
        toks = [f"{node.op}("]
        first, positional = True, True
        for a in op.attrs:
            v = node.attrs.get(a.name, a.default)
            body.values.append(v)
            hole = Hole(len(body.values) - 1, a.name, "sym" in a.kind.split("|"))
            body.hints.append(hole)
            # required attributes positionally while no keyword came before (qconv2d's in_scale follows k=...)
            positional = positional and (first or a.default is REQUIRED)
            toks += ([] if first else [", "]) + ([] if positional else [f"{a.name}="]) + [hole]
            first = False
        toks.append(")")
        if node.params:
            toks.append(f" as {'param ' if node.exact_param else ''}{_label(rel(node.id))}")
        return toks

    # -- blocks -----------------------------------------------------------------------------------
    def build(self) -> str:
        self.instance_values: dict[str, list[Any]] = {}
        self.block_holes: dict[str, list[Hole]] = {}
        depth = sorted(self.members, key=lambda p: -p.count("."))
        by_sig: dict[str, list[str]] = defaultdict(list)
        bodies: dict[str, Body] = {}
        # bottom-up: a class's instances are compared once their children are decided
        for level in sorted({p.count(".") for p in self.members}, reverse=True):
            for p in [q for q in depth if q.count(".") == level]:
                members = self.members[p]
                call = self._call_item(p, members)
                names = ["x"] if len(call.inputs) == 1 else [f"x{i}" for i in range(len(call.inputs))]
                body = self.render(p, members, call.inputs, call.outputs, names)
                bodies[p] = body
                key = self.imp.modules[p] + "\n" + _text(body, None)
                by_sig[key].append(p)
            for key, insts in list(by_sig.items()):
                if len(insts) >= 2 and not any(i in self.is_block for i in insts):
                    self._make_block(key, insts, bodies)
        return self._network()

    def _make_block(self, key: str, insts: list[str], bodies: dict[str, Body]) -> None:
        cls = key.split("\n", 1)[0]
        base = _snake(cls)
        if _reserved(base):
            base += "_block"
        name, i = base, 2
        used = {b[0] for b in self.blocks}
        while name in used:
            name, i = f"{base}_{i}", i + 1
        body = bodies[insts[0]]
        n = len(body.values)
        cols = [[bodies[p].values[k] for p in insts] for k in range(n)]
        varying = [k for k in range(n) if any(not _same(c, cols[k][0]) for c in cols[k])]
        # one argument per distinct column of values; named after the attribute
        args: list[tuple[str, Hole, list]] = []
        arg_of: dict[int, str] = {}
        # an argument must not shadow a block its body calls (ONNX scopes f.a/f.b/f.c make blocks a, b, c)
        taken = {"x"} | {f"x{i}" for i in range(10)} | used
        for k in varying:
            for nm, h, col in args:
                if all(_same(a, b) for a, b in zip(col, cols[k])):
                    arg_of[k] = nm
                    break
            else:
                hint = body.hints[k].hint
                base_nm = HINTS.get(hint, hint)
                if _reserved(base_nm):
                    base_nm += "_"
                nm, j = base_nm, 2
                while nm in taken:
                    nm, j = f"{base_nm}{j}", j + 1
                taken.add(nm)
                args.append((nm, body.hints[k], cols[k]))
                arg_of[k] = nm
        for idx, p in enumerate(insts):
            self.is_block[p] = name
            self.instance_values[p] = [col[idx] for _, _, col in args]
        self.block_holes[name] = [h for _, h, _ in args]
        resolved = {k: (arg_of[k] if k in arg_of else None) for k in range(n)}
        self.blocks.append((name, [a[0] for a in args], body, cls))
        self._resolved[name] = resolved

    def _network(self) -> str:
        g = self.g
        top = [nid for nid in g.order() if g.node(nid).op != "input"]
        names = [nid for nid in g.inputs]
        body = self.render("", top, [Value(n, 0) for n in g.inputs], list(g.outputs), names)
        out = [f"# imported by convdsl from {self.imp.source}" if self.imp.source else "# imported by convdsl"]
        if self.imp.renamed:
            out.append("# parameters whose convdsl name differs from the source's key (convdsl <- source):")
            out += [f"#   {k} <- {v}" for k, v in sorted(self.imp.renamed.items())]
        for name, params, b, cls in self.blocks:
            out.append("")
            out.append(f"# {cls}")
            resolved = self._resolved[name]
            out.append(f"block {name}({', '.join(params)})({', '.join(b.params)}) {{")
            out += ["    " + s for s in _lines(b, lambda h: resolved.get(h.index))]
            out.append("}")
        out.append("")
        sig = []
        for nid in g.inputs:
            t = g.node(nid).type
            sig.append(f"{nid}: {t.dtype}[{', '.join(str(d) for d in t.shape)}]")
        out.append(f"network {g.name}({', '.join(sig)}) {{")
        out += ["    " + s for s in _lines(body, lambda h: None)]
        out.append("}")
        return "\n".join(out) + "\n"

def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _candidate(cls: str) -> bool:
    """Module classes that may become blocks: anything but PyTorch's own layers and containers."""
    return not cls.startswith("torch.nn.modules.")


def _text(body: Body, resolve) -> str:
    out = []
    for s in body.stmts:
        out.append("".join(t if isinstance(t, str) else f"<{t.hint}>" for t in s))
    return "\n".join(out)


def _lines(body: Body, arg_for) -> list[str]:
    """Statements as text: holes become argument names or literal values; keyword arguments
    equal to the op's default are dropped; runs of identical labelled calls become loops."""
    lines = []
    for s in body.stmts:
        parts = []
        for i, t in enumerate(s):
            if isinstance(t, str):
                parts.append(t)
                continue
            arg = arg_for(t)
            parts.append(arg if arg is not None else format_value(body.values[t.index], words=t.sym))
        lines.append(_drop_defaults("".join(parts)))
    return _loops([stmt for line in lines for stmt in _pipe_loops(line)])


_CALL = re.compile(r"\b([a-z_][a-z0-9_]*)\(")


def _drop_defaults(line: str) -> str:
    """Remove ``name=value`` arguments of ops that equal the op's default (value printed as CDL)."""
    out, i = [], 0
    for m in _CALL.finditer(line):
        op = OPS.get(m.group(1))
        if op is None or m.start() < i:
            continue
        start = m.end()
        depth, j = 1, start
        while j < len(line) and depth:
            depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(line[j], 0)
            j += 1
        args = _split_args(line[start:j - 1])
        kept = []
        for pos, a in enumerate(args):
            key, eq, val = a.partition("=")
            if not eq and pos == 0 and len(args) == 1 or not eq and pos == 0 and all("=" in r for r in args[1:]):
                key, val = op.attrs[0].name, a  # the first attribute, written positionally
            attr = op.attr(key.strip()) if (eq or pos == 0) else None
            if attr is not None and attr.default is not REQUIRED and \
                    val.strip() == format_value(attr.default, words="sym" in attr.kind.split("|")):
                continue
            kept.append(a)
        out.append(line[i:start] + ", ".join(kept) + ")")
        i = j
    out.append(line[i:])
    text = "".join(out)
    return re.sub(r"\b([a-z_][a-z0-9_]*)\(\)", lambda m: m.group(1) if m.group(1) in OPS else m.group(0), text)


def _split_args(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


_LOOP = re.compile(r'^(\w+) = (\w+) \| (.+) as "(.*?)(\d+)"$')


def _loops(lines: list[str]) -> list[str]:
    """``x = x | f(a) as "p.1"``, ``x = x | f(a) as "p.2"``, ... -> one for loop."""
    out, i = [], 0
    while i < len(lines):
        m = _LOOP.match(lines[i])
        if m and m.group(1) == m.group(2):
            j = i + 1
            while j < len(lines):
                n = _LOOP.match(lines[j])
                if not (n and n.group(1) == m.group(1) and n.group(2) == m.group(1) and n.group(3) == m.group(3)
                        and n.group(4) == m.group(4) and int(n.group(5)) == int(m.group(5)) + (j - i)):
                    break
                j += 1
            if j - i >= 2:
                lo, hi = int(m.group(5)), int(m.group(5)) + (j - i)
                var = "i" if "{i}" not in m.group(3) else "j"
                out.append(f"for {var} in range({lo}, {hi}) {{" if lo else f"for {var} in range({hi}) {{")
                out.append(f'    {m.group(1)} = {m.group(1)} | {m.group(3)} as "{m.group(4)}{{{var}}}"')
                out.append("}")
                i = j
                continue
        out.append(lines[i])
        i += 1
    return out


def _pipe_stages(text: str) -> list[str]:
    """Split ``a | b | c`` at top-level pipes (not inside brackets or strings)."""
    parts, depth, cur, quoted = [], 0, "", False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "([":
            depth += 1
        elif not quoted and ch in ")]":
            depth -= 1
        if not quoted and depth == 0 and text.startswith(" | ", i):
            parts.append(cur)
            cur = ""
            i += 3
            continue
        cur += ch
        i += 1
    parts.append(cur)
    return parts


_STAGE = re.compile(r'^(.+) as "(.*?)(\d+)"$')


def _pipe_loops(line: str) -> list[str]:
    """A pipe with a run of identical block calls labelled p.i, p.i+1, ... is cut around a loop:
    ``x = x | a | f as "p.0" | f as "p.1" | b``  ->  ``x = x | a``, a for loop, ``x = x | b``."""
    target, eq, rhs = line.partition(" = ")
    if not eq or not re.fullmatch(r"\w+", target):
        return [line]
    stages = _pipe_stages(rhs)
    out: list[str] = []
    cur = [stages[0]]
    i = 1
    while i < len(stages):
        m = _STAGE.match(stages[i])
        j = i + 1
        if m and "(" in m.group(1) or (m and OPS.get(m.group(1)) is None):
            while j < len(stages):
                n = _STAGE.match(stages[j])
                if not (n and n.group(1) == m.group(1) and n.group(2) == m.group(2)
                        and int(n.group(3)) == int(m.group(3)) + (j - i)):
                    break
                j += 1
        if m and j - i >= 2:
            out.append(f"{target} = {' | '.join(cur)}")
            lo, hi = int(m.group(3)), int(m.group(3)) + (j - i)
            out.append(f"for i in range({lo}, {hi}) {{" if lo else f"for i in range({hi}) {{")
            out.append(f'    {target} = {target} | {m.group(1)} as "{m.group(2)}{{i}}"')
            out.append("}")
            cur = [target]
            i = j
            continue
        cur.append(stages[i])
        i += 1
    if out:
        if cur != [target]:
            out.append(f"{target} = {' | '.join(cur)}")
        return [o for o in out if o != f"{target} = {target}"]
    return [line]


def write_cdl(imp: Imported) -> str:
    """The imported graph as a CDL program (blocks, loops, labels), formatted by ``convdsl fmt``."""
    from convdsl.lang.format import format_source

    text = Writer(imp).build()
    return format_source(text)
