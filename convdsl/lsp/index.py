"""Names in one CDL file: where each is defined and what each occurrence refers to.

Built from the parser's AST (items, parameters, statements and their spans)
and the token stream (exact columns of every name).  Scoping follows the
elaborator: a name inside a block, network or def body is first a parameter,
input or value assigned in that body, then a top-level name of the file,
then a name from an imported file (the file's own definitions win, then
imports in order), then an op or builtin; anything else is a bare word
(``pad=same``, a symbolic dim).

A *symbol* is what rename and find-references group together: a top-level
definition, or one name inside one item (every assignment of ``h`` in a
network body is the same symbol).
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from convdsl.ir.ops import OPS
from convdsl.lang import ast
from convdsl.lsp.tokens import Tok, index_at

SymbolId = tuple[str, int, str]  # (file, line of the owning item or of the definition, name)


@dataclass(frozen=True)
class Def:
    """A definition: a top-level item, an import alias, or a name local to an item."""

    name: str
    kind: str  # block | network | def | const | import | param | input | value | loop | size
    file: str
    tok: Tok  # the name as written
    owner: "ast.Item | None" = None  # the item a local belongs to; None at top level
    node: object = None  # the AST node: the item, the Param, the statement

    @property
    def symbol(self) -> SymbolId:
        if self.owner is None:
            return (self.file, self.tok.line, self.name)
        return (self.file, _start(self.owner)[0], self.name)


@dataclass
class Occurrence:
    """One name token and what it means."""

    tok: Tok
    role: str  # def | ref | kwarg | attr | label | dim
    target: Def | None = None  # what it refers to (for def: itself)
    op: str | None = None  # the op it names, or (kwarg) the op being called
    callee: Def | None = None  # kwarg: the block or def being called
    item: "ast.Item | None" = None


@dataclass
class ItemScope:
    item: ast.Item
    first: int  # token index range [first, last)
    last: int
    locals: dict[str, list[Def]] = field(default_factory=dict)
    name_tok: int | None = None  # token index of the item's own name
    sizes: dict[str, Def] = field(default_factory=dict)  # a network's symbols (N in f32[N, ...]): values in its body


class FileIndex:
    """Definitions and occurrences of one parsed file."""

    def __init__(self, path: str, program: ast.Program, tokens: list[Tok],
                 load: Callable[[str], "FileIndex | None"]) -> None:
        self.path = path
        self.program = program
        self.tokens = tokens
        self._load = load  # index of an imported file, by absolute path (None if it cannot be read or parsed)
        self.globals: dict[str, Def] = {}
        self.imports: list[tuple[ast.Import, str]] = []  # (item, absolute path)
        self.aliases: dict[str, str] = {}  # import alias -> absolute path
        self.scopes: list[ItemScope] = []
        self.occurrences: list[Occurrence] = []
        self._visible: dict[str, Def] | None = None  # visible() while building
        self._build()

    # ---- queries ------------------------------------------------------------------
    def at(self, line: int, column: int) -> Occurrence | None:
        for occ in self.occurrences:
            if occ.tok.contains(line, column):
                return occ
        return None

    def scope_at(self, line: int) -> ItemScope | None:
        for s in self.scopes:
            first = self.tokens[s.first] if s.first < len(self.tokens) else None
            last = self.tokens[s.last - 1] if 0 < s.last <= len(self.tokens) else None
            if first and last and first.line <= line <= last.end_line:
                return s
        return None

    def visible(self, seen: set[str] | None = None) -> dict[str, Def]:
        """Top-level names usable in this file: its own, then those of its plain imports."""
        seen = seen if seen is not None else set()
        seen.add(self.path)
        out = dict(self.globals)
        for imp, path in self.imports:
            if imp.alias or path in seen:
                continue
            other = self._load(path)
            if other is not None:
                for name, d in other.visible(seen).items():
                    out.setdefault(name, d)
        return out

    def imported(self, path: str) -> "FileIndex | None":
        """The index of another file (an import of this one)."""
        return self._load(path)

    def resolve_global(self, name: str) -> Def | None:
        return self.visible().get(name)

    def occurrences_of(self, symbol: SymbolId) -> Iterator[Occurrence]:
        for occ in self.occurrences:
            if occ.target is not None and occ.target.symbol == symbol:
                yield occ

    # ---- building -------------------------------------------------------------------
    def _build(self) -> None:
        items = self.program.items
        starts = [index_at(self.tokens, *_start(it)) for it in items] + [len(self.tokens)]
        for it, first, last in zip(items, starts, starts[1:]):
            self.scopes.append(ItemScope(it, first, last))
        # top-level definitions first: bodies may use names defined further down
        for s in self.scopes:
            self._define_item(s)
        for s in self.scopes:
            self._walk_item(s)
        self.occurrences.sort(key=lambda o: (o.tok.line, o.tok.column))

    def _tok(self, i: int) -> Tok | None:
        return self.tokens[i] if 0 <= i < len(self.tokens) else None

    def _name_after(self, i: int, last: int) -> int | None:
        for j in range(i, last):
            if self.tokens[j].type == "NAME":
                return j
        return None

    def _define_item(self, s: ItemScope) -> None:
        it = s.item
        if isinstance(it, ast.Import):
            base = Path(self.path).parent if not self.path.startswith("<") else Path.cwd()
            target = str((base / it.path).resolve())
            self.imports.append((it, target))
            if it.alias:
                j = next((k for k in range(s.first, s.last) if self.tokens[k].type == "AS"), None)
                j = self._name_after(j + 1, s.last) if j is not None else None
                if j is not None:
                    d = Def(it.alias, "import", self.path, self.tokens[j], None, it)
                    self.globals[it.alias] = d
                    self.aliases[it.alias] = target
                    self.occurrences.append(Occurrence(d.tok, "def", d, item=it))
            return
        kind = {ast.BlockDef: "block", ast.NetworkDef: "network", ast.FuncDef: "def", ast.ConstDef: "const"}[type(it)]
        j = self._name_after(s.first, s.last)
        if j is None or self.tokens[j].text != it.name:
            return
        d = Def(it.name, kind, self.path, self.tokens[j], None, it)
        self.globals.setdefault(it.name, d)
        self.occurrences.append(Occurrence(d.tok, "def", d, item=it))
        s.name_tok = j

    def _walk_item(self, s: ItemScope) -> None:
        it = s.item
        if isinstance(it, ast.Import):
            return
        done: set[int] = set()  # token indices already classified
        if s.name_tok is not None:
            done.add(s.name_tok)
        params = getattr(it, "params", None) or []
        for p in params:
            j = index_at(self.tokens, p.span.line, p.span.column) if p.span else None
            if j is None or j >= s.last or self.tokens[j].text != p.name:
                continue
            kind = "input" if isinstance(p, ast.InputParam) else "param"
            self._add_local(s, Def(p.name, kind, self.path, self.tokens[j], it, p), j, done)
            if isinstance(p, ast.InputParam) and p.span and p.span.end_line:
                for k in range(j + 1, s.last):
                    t = self.tokens[k]
                    if (t.line, t.column) >= (p.span.end_line, p.span.end_column):
                        break
                    if t.type == "NAME":
                        size = s.sizes.setdefault(t.text, Def(t.text, "size", self.path, t, it, p))
                        self.occurrences.append(Occurrence(t, "dim", size, item=it))
                        done.add(k)
        if isinstance(it, ast.BlockDef) and it.inputs is not None:
            self._block_inputs(s, done)
        body = it.body if isinstance(it, (ast.BlockDef, ast.NetworkDef)) and isinstance(it.body, list) else []
        for stmt in statements(body):
            self._stmt_targets(s, stmt, done)
        for defs in s.locals.values():
            defs.sort(key=lambda d: (d.tok.line, d.tok.column))
        self._classify(s, done)

    def _add_local(self, s: ItemScope, d: Def, j: int, done: set[int]) -> None:
        s.locals.setdefault(d.name, []).append(d)
        self.occurrences.append(Occurrence(d.tok, "def", d, item=s.item))
        done.add(j)

    def _block_inputs(self, s: ItemScope, done: set[int]) -> None:
        """``block f(params)(x, y) {``: the names in the second parentheses."""
        depth, groups = 0, 0
        for k in range(s.first, s.last):
            t = self.tokens[k]
            if t.type == "LBRACE":
                return
            if t.type == "LPAR":
                depth += 1
                if depth == 1:
                    groups += 1
            elif t.type == "RPAR":
                depth -= 1
            elif t.type == "NAME" and depth == 1 and groups == 2:
                self._add_local(s, Def(t.text, "input", self.path, t, s.item, s.item), k, done)

    def _stmt_targets(self, s: ItemScope, stmt, done: set[int]) -> None:
        if not isinstance(stmt, (ast.Assign, ast.For)) or stmt.span is None:
            return
        k = index_at(self.tokens, stmt.span.line, stmt.span.column)
        if isinstance(stmt, ast.For):
            k += 1  # past 'for'
        kind = "loop" if isinstance(stmt, ast.For) else "value"
        for name in stmt.targets:
            t = self._tok(k)
            if t is None or t.type != "NAME" or t.text != name:
                return
            self._add_local(s, Def(name, kind, self.path, t, s.item, stmt), k, done)
            k += 2  # past the ','

    def _classify(self, s: ItemScope, done: set[int]) -> None:
        stack: list[int] = []  # indices of open '(' / '['
        for k in range(s.first, s.last):
            t = self.tokens[k]
            if t.type in ("LPAR", "LSQB"):
                stack.append(k)
                continue
            if t.type in ("RPAR", "RSQB"):
                if stack:
                    stack.pop()
                continue
            if t.type != "NAME" or k in done:
                continue
            prev, nxt = self._tok(k - 1), self._tok(k + 1)
            if prev is not None and prev.type == "DOT":
                self.occurrences.append(self._attribute(k, s))
            elif prev is not None and prev.type == "AS" and k > s.first + 1:
                self.occurrences.append(Occurrence(t, "label", item=s.item))
            elif nxt is not None and nxt.type == "EQUAL" and stack and self.tokens[stack[-1]].type == "LPAR":
                self.occurrences.append(self._kwarg(k, stack[-1], s))
            else:
                target = self.resolve(t.text, s, t)
                op = t.text if target is None and t.text in OPS else None
                self.occurrences.append(Occurrence(t, "ref", target, op=op, item=s.item))

    def resolve(self, name: str, scope: ItemScope | None, at: Tok | None = None) -> Def | None:
        """What ``name`` means inside ``scope`` (None: at top level) at token ``at``."""
        if scope is not None and name in scope.locals:
            defs = scope.locals[name]  # in source order
            if at is None:
                return defs[0]
            k = bisect_right(defs, (at.line, at.column), key=lambda d: (d.tok.line, d.tok.column))
            return defs[k - 1] if k else defs[0]
        if self._visible is None:
            self._visible = self.visible()
        d = self._visible.get(name)
        if d is None and scope is not None and name in scope.sizes:  # as the elaborator: after what the file binds
            return scope.sizes[name]
        return d  # None: an op, a builtin or a bare word

    def _callee(self, lpar: int, scope: ItemScope) -> tuple[Def | None, str | None]:
        """The block/def or op called by the '(' at ``lpar``."""
        f = self._tok(lpar - 1)
        if f is None or f.type != "NAME":
            return None, None
        dot = self._tok(lpar - 2)
        if dot is not None and dot.type == "DOT":
            occ = self._attribute(lpar - 1, scope)
            return occ.target, None
        d = self.resolve(f.text, scope, f)
        if d is None and f.text in OPS:
            return None, f.text
        return d, None

    def _kwarg(self, k: int, lpar: int, scope: ItemScope) -> Occurrence:
        t = self.tokens[k]
        callee, op = self._callee(lpar, scope)
        target = None
        if callee is not None and isinstance(callee.node, (ast.BlockDef, ast.FuncDef)):
            target = self._param_of(callee, t.text)
        return Occurrence(t, "kwarg", target, op=op, callee=callee, item=scope.item)

    def _param_of(self, callee: Def, name: str) -> Def | None:
        index = self if callee.file == self.path else self._load(callee.file)
        if index is None:
            return None
        for s in index.scopes:
            if s.item is callee.node:
                defs = s.locals.get(name)
                return defs[0] if defs and defs[0].kind == "param" else None
        return None

    def _attribute(self, k: int, scope: ItemScope) -> Occurrence:
        """``m.conv_bn``: a name of the file imported ``as m``; any other ``.name`` is a property."""
        t = self.tokens[k]
        obj = self._tok(k - 2)
        if obj is not None and obj.type == "NAME" and (self._tok(k - 3) is None or self._tok(k - 3).type != "DOT"):
            d = self.resolve(obj.text, scope, obj)
            if d is not None and d.kind == "import" and d.name in self.aliases and d.file == self.path:
                other = self._load(self.aliases[d.name])
                target = other.visible().get(t.text) if other is not None else None
                return Occurrence(t, "ref", target, item=scope.item)
        return Occurrence(t, "attr", item=scope.item)



def _start(item) -> tuple[int, int]:
    return (item.span.line, item.span.column) if item.span else (1, 1)


def statements(body: list) -> Iterator:
    """Every statement of a body, nested ones included (for / repeat / if bodies)."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.For, ast.Repeat)):
            yield from statements(stmt.body)
        elif isinstance(stmt, ast.If):
            for _, b in stmt.branches:
                yield from statements(b)
            if stmt.orelse:
                yield from statements(stmt.orelse)
