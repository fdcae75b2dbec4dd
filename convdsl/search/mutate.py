"""Mutation operators that edit the *program* of a candidate, never a built network.

Each operator finds its sites in the candidate's program (the space text after earlier mutations)
and changes one:

- ``change_choice``: another option of a value choice (``choice(16, 24, 32)``);
- ``swap_block``: another option of a choice between layers, e.g. the token mixer among
  conv / attention / FFT / SSM blocks;
- ``scale_width``: an integer literal (or the selected choice option) in a width position
  (``out``, ``c``, ``width``, ``dim``... of an op or block call, a parameter default, an
  assignment ``width = 32``) times 0.5-2, rounded to a multiple of 4 or 8; a ratio
  (``mlp_ratio``, ``expand``) +-1;
- ``scale_depth``: a depth (``repeat N``, ``range(N)`` of a loop, ``depth=`` ...) +-1;
- ``add_skip``: ``x = x | f | g`` -> ``x = x + (x | f | g)``;
- ``remove_skip``: ``x + (x | f | g)`` -> ``x | f | g``.

Only sites the candidate reaches are mutated (the selected option of a choice, blocks a network
uses), so a mutation changes the network.  The child is printed back to canonical text and must
pass the same front end as user code (``SearchSpace.check``); a refused child is counted, never
raised past the search.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from convdsl.ir.ops import OPS
from convdsl.lang import ast
from convdsl.lang.parser import parse
from convdsl.search.space import Genotype, SearchSpace, is_node, reachable, render

OPERATORS = ("change_choice", "swap_block", "scale_width", "scale_depth", "add_skip", "remove_skip")

WIDTH_NAMES = {"out", "c", "ch", "channels", "width", "dim", "d_model", "hidden", "features", "filters",
               "embed_dim", "out_channels", "mid", "base"}
RATIO_NAMES = {"mlp_ratio", "ratio", "expand", "expand_ratio", "expansion", "t"}
DEPTH_NAMES = {"depth", "n", "layers", "blocks", "repeats", "num_layers", "num_blocks", "n_layers"}
WIDTH_FACTORS = (0.5, 0.75, 1.25, 1.5, 2.0)


def role_of(name: str | None) -> str | None:
    """width | ratio | depth for a hyper-parameter name (trailing digits ignored: depth1)."""
    if not name:
        return None
    base = re.sub(r"[_\d]+$", "", name.lower())
    if name in RATIO_NAMES or base in RATIO_NAMES or base.endswith("ratio"):
        return "ratio"
    if name in DEPTH_NAMES or base in DEPTH_NAMES or base.startswith("depth") or base.endswith("depth"):
        return "depth"
    if name in WIDTH_NAMES or base in WIDTH_NAMES or base.endswith(("width", "channels", "_dim")):
        return "width"
    return None


def scale_width(value: int, factor: float) -> int:
    """value * factor rounded to a hardware-friendly multiple (8 from 24 up, 4 from 8 up)."""
    x = value * factor
    m = 8 if x >= 24 else 4 if x >= 8 else 1
    return max(1, int(round(x / m)) * m)


@dataclass
class Site:
    kind: str  # width | ratio | depth | add_skip | remove_skip
    get: Callable[[], Any]
    set: Callable[[Any], None]
    line: int
    what: str


class _Finder:
    """Collects the mutation sites of the reachable part of a program."""

    def __init__(self, program: ast.Program, selection: dict[str, int], live: set[str]) -> None:
        self.selection = selection
        self.blocks = {i.name: i for i in program.items if isinstance(i, ast.BlockDef)}
        self.sites: list[Site] = []
        for item in program.items:
            if isinstance(item, ast.NetworkDef):
                self._params(item.hyper)
                self._body(item.body)
            elif isinstance(item, (ast.BlockDef, ast.FuncDef, ast.ConstDef)) and item.name in live:
                if isinstance(item, ast.ConstDef):
                    self._expr(item.value, item.name, _attr(item, "value"))
                    continue
                self._params(item.params)
                if isinstance(item.body, list):
                    self._body(item.body)
                else:
                    self._expr(item.body, None, _attr(item, "body"))

    def _params(self, params: list[Any]) -> None:
        for p in params:
            if isinstance(p, ast.Param) and p.default is not None:
                self._expr(p.default, p.name, _attr(p, "default"))

    def _body(self, stmts: list[Any]) -> None:
        for s in stmts:
            if isinstance(s, ast.Assign):
                self._expr(s.value, s.targets[0] if len(s.targets) == 1 else None, _attr(s, "value"))
                self._skips(s, "value", s.targets)
            elif isinstance(s, ast.Return):
                for i in range(len(s.values)):
                    self._expr(s.values[i], None, _item(s.values, i))
                    self._skips(s, i, None)
            elif isinstance(s, ast.For):
                self._expr(s.iter, None, _attr(s, "iter"))
                self._body(s.body)
            elif isinstance(s, ast.Repeat):
                self._expr(s.count, "depth", _attr(s, "count"))
                self._body(s.body)
            elif isinstance(s, ast.If):
                for i, (cond, body) in enumerate(s.branches):
                    self._expr(cond, None, lambda v, i=i, s=s: s.branches.__setitem__(i, (v, s.branches[i][1])))
                    self._body(body)
                if s.orelse:
                    self._body(s.orelse)

    def _skips(self, stmt: Any, slot: Any, targets: list[str] | None) -> None:
        get = (lambda: getattr(stmt, slot)) if isinstance(slot, str) else (lambda: stmt.values[slot])
        put = _attr(stmt, slot) if isinstance(slot, str) else _item(stmt.values, slot)
        value = get()
        line = stmt.span.line if stmt.span else 0
        if isinstance(value, ast.Arith) and len(value.rest) == 1 and value.rest[0][0] == "+":
            left, right = value.first, value.rest[0][1]
            for ident, other in ((left, right), (right, left)):
                if isinstance(ident, ast.Name) and _starts_with(other, ident.id):
                    self.sites.append(Site("remove_skip", get, lambda _v, put=put, other=other: put(other), line,
                                           f"remove the skip around line {line}"))
                    break
        elif targets and len(targets) == 1 and isinstance(value, ast.Pipe) and len(value.stages) >= 2 \
                and isinstance(value.stages[0], ast.Name) and value.stages[0].id == targets[0]:
            name = targets[0]
            self.sites.append(Site("add_skip", get, lambda v, put=put, name=name: put(
                ast.Arith(ast.Name(name), [("+", v)])), line, f"add a skip around line {line}"))

    def _expr(self, e: Any, name: str | None, put: Callable[[Any], None]) -> None:
        line = e.span.line if getattr(e, "span", None) is not None else 0
        if isinstance(e, ast.Num):
            role = role_of(name)
            if role and isinstance(e.value, int) and not isinstance(e.value, bool) and e.value > 0:
                self.sites.append(Site(role, lambda e=e: e.value, lambda v, put=put: put(ast.Num(v)), line,
                                       f"{name} at line {line}"))
            return
        if isinstance(e, ast.Choice):
            i = self.selection.get(e.key, 0)
            if 0 <= i < len(e.options):
                self._expr(e.options[i], name or e.key, _item(e.options, i))
            return
        if isinstance(e, ast.Call):
            f = e.func.id if isinstance(e.func, ast.Name) else None
            names = self._positional_names(f)
            for i, a in enumerate(e.args):
                pname = "depth" if f == "range" and len(e.args) == 1 else names[i] if i < len(names) else None
                self._expr(a, pname, _item(e.args, i))
            for k in e.kwargs:
                self._expr(k.value, k.name, _attr(k, "value"))
            return
        if isinstance(e, ast.Labeled):
            self._expr(e.expr, name, _attr(e, "expr"))
            return
        if isinstance(e, ast.IfExp):
            self._expr(e.then, name, _attr(e, "then"))
            self._expr(e.orelse, name, _attr(e, "orelse"))
            return
        if isinstance(e, ast.Pipe):
            for i in range(len(e.stages)):
                self._expr(e.stages[i], None, _item(e.stages, i))
            return
        if isinstance(e, (ast.Arith, ast.Compare)):  # numbers in arithmetic are not widths
            self._expr(e.first, None, _attr(e, "first"))
            for i, (op, x) in enumerate(e.rest):
                self._expr(x, None, lambda v, i=i, e=e, op=op: e.rest.__setitem__(i, (op, v)))
            return
        if isinstance(e, (ast.ListExpr, ast.TupleExpr)):
            for i in range(len(e.items)):
                self._expr(e.items[i], None, _item(e.items, i))
            return
        if is_node(e):  # Index, Attribute, Neg, Not, Pow, BoolOp: only look for calls inside
            for f in ("obj", "index", "operand", "base", "exp"):
                if hasattr(e, f):
                    self._expr(getattr(e, f), None, _attr(e, f))
            if isinstance(e, ast.BoolOp):
                for i in range(len(e.values)):
                    self._expr(e.values[i], None, _item(e.values, i))

    def _positional_names(self, f: str | None) -> list[str]:
        if f is None:
            return []
        if f in self.blocks:
            return [p.name for p in self.blocks[f].params]
        if f in OPS:
            return [a.name for a in OPS[f].attrs]
        return []


def _attr(obj: Any, name: str) -> Callable[[Any], None]:
    return lambda v: setattr(obj, name, v)


def _item(lst: list, i: int) -> Callable[[Any], None]:
    return lambda v: lst.__setitem__(i, v)


def _starts_with(e: Any, name: str) -> bool:
    """Is ``e`` a pipe (or a labeled pipe) fed by the value ``name``?"""
    if isinstance(e, ast.Labeled):
        return _starts_with(e.expr, name)
    if isinstance(e, ast.Pipe):
        head = e.stages[0]
        return (isinstance(head, ast.Name) and head.id == name) or _starts_with(head, name)
    return False


def _is_layer(e: Any, layers: set[str]) -> bool:
    """Is a choice option a layer (a block or op, maybe called with hyper-parameters)?"""
    if isinstance(e, ast.Labeled):
        return _is_layer(e.expr, layers)
    if isinstance(e, ast.Pipe):
        return _is_layer(e.stages[0], layers)
    if isinstance(e, ast.Call):
        return _is_layer(e.func, layers)
    return isinstance(e, ast.Name) and e.id in layers


def choice_kinds(program: ast.Program) -> dict[str, str]:
    """``block`` for a choice among layers (a block type), else ``value``."""
    from convdsl.search.space import choices_of

    layers = set(OPS) | {i.name for i in program.items if isinstance(i, (ast.BlockDef, ast.FuncDef))}
    return {k: "block" if all(_is_layer(o, layers) for o in c.options) else "value"
            for k, c in choices_of(program).items()}


@dataclass
class Mutation:
    child: Genotype
    operator: str
    detail: str


class NoSite(Exception):
    pass


def mutate(space: SearchSpace, parent: Genotype, rng: random.Random,
           operators: tuple[str, ...] = OPERATORS) -> Mutation:
    """One random mutation of ``parent``: an operator drawn uniformly among those that have a site,
    then a site and a change drawn uniformly.  The child is not checked here."""
    program = parse(parent.program, space.file)
    selection = dict(parent.selection)
    active, live = reachable(program, selection)
    kinds = choice_kinds(program)
    finder = _Finder(program, selection, live)
    by_op: dict[str, list[Any]] = {op: [] for op in operators}
    for key in active:
        n = len(_choice(program, key).options)
        op = "swap_block" if kinds.get(key) == "block" else "change_choice"
        if n > 1 and op in by_op:
            by_op[op].append(key)
    for site in finder.sites:
        op = {"width": "scale_width", "ratio": "scale_width", "depth": "scale_depth"}.get(site.kind, site.kind)
        if op in by_op:
            by_op[op].append(site)
    usable = [op for op in operators if by_op[op]]
    if not usable:
        raise NoSite("no operator has a site in this program")
    op = rng.choice(usable)
    target = rng.choice(by_op[op])
    if op in ("change_choice", "swap_block"):
        c = _choice(program, target)
        old = selection[target]
        new = rng.choice([i for i in range(len(c.options)) if i != old])
        selection[target] = new
        from convdsl.lang.format import format_expr

        detail = f"{target}: {format_expr(c.options[old])} -> {format_expr(c.options[new])}"
        return Mutation(Genotype(parent.program, selection), op, detail)
    site: Site = target
    if site.kind == "width":
        old = site.get()
        options = sorted({scale_width(old, f) for f in WIDTH_FACTORS} - {old})
        new = rng.choice(options)
        site.set(new)
        detail = f"{site.what}: {old} -> {new}"
    elif site.kind in ("ratio", "depth"):
        old = site.get()
        new = rng.choice([v for v in (old - 1, old + 1) if v >= 1])
        site.set(new)
        detail = f"{site.what}: {old} -> {new}"
    else:
        site.set(site.get())
        detail = site.what
    return Mutation(Genotype(render(program), selection), op, detail)


def _choice(program: ast.Program, key: str) -> ast.Choice:
    from convdsl.search.space import choices_of

    return choices_of(program)[key]
