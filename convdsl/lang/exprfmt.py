"""How CDL expressions are written: on one line with the fewest parentheses (``format_expr``).

The canonical formatter (``convdsl/lang/format.py``) prints statements with these.
"""
from __future__ import annotations

import math
from enum import IntEnum
from typing import NamedTuple

from convdsl.ir.optable import IDENT, format_number, quote
from convdsl.lang import ast

_CONSTS = {True: "true", False: "false", None: "none"}


class Prec(IntEnum):
    """Binding strength, loosest first (mirrors the grammar's rule chain)."""

    TERNARY = 1
    OR = 2
    AND = 3
    NOT = 4
    COMPARE = 5
    PIPE = 6
    LABEL = 7
    SUM = 8
    PRODUCT = 9
    UNARY = 10
    POWER = 11
    POSTFIX = 12
    ATOM = 13


def format_expr(expr: ast.Expr) -> str:
    """One expression on one line, with the fewest parentheses that parse back to it."""
    return _fmt(expr)[0]


def wrap(expr: ast.Expr, min_prec: Prec) -> str:
    """``expr`` as an operand of a place that binds at least ``min_prec``."""
    text, prec = _fmt(expr)
    return f"({text})" if prec < min_prec else text


def _fmt(e: ast.Expr) -> tuple[str, Prec]:
    match e:
        case ast.Name():
            return e.id, Prec.ATOM
        case ast.Num():
            text = _number(e.value)
            return text, Prec.UNARY if text.startswith("-") else Prec.ATOM  # `-3` parses as a negation
        case ast.Str():
            return quote(e.value), Prec.ATOM
        case ast.Const():
            return _CONSTS[e.value], Prec.ATOM
        case ast.ListExpr():
            return "[" + join(e.items) + "]", Prec.ATOM
        case ast.TupleExpr():
            return "(" + join(e.items) + ("," if len(e.items) == 1 else "") + ")", Prec.ATOM
        case ast.Call():
            args = [format_expr(a) for a in e.args] + [f"{k.name}={format_expr(k.value)}" for k in e.kwargs]
            return f"{wrap(e.func, Prec.POSTFIX)}({', '.join(args)})", Prec.POSTFIX
        case ast.Choice():
            name = [f"name={quote(e.name)}"] if e.name is not None else []
            return f"choice({', '.join([format_expr(o) for o in e.options] + name)})", Prec.POSTFIX
        case ast.Index() if isinstance(e.index, ast.Slice):
            sl = e.index
            parts = [format_expr(p) if p is not None else "" for p in (sl.start, sl.stop, sl.step)]
            text = ":".join(parts) if sl.step is not None else ":".join(parts[:2])
            return f"{wrap(e.obj, Prec.POSTFIX)}[{text}]", Prec.POSTFIX
        case ast.Index():
            return f"{wrap(e.obj, Prec.POSTFIX)}[{format_expr(e.index)}]", Prec.POSTFIX
        case ast.Attribute():
            # `3.x` would lex as the float `3.` followed by a name
            obj = f"({format_expr(e.obj)})" if isinstance(e.obj, ast.Num) else wrap(e.obj, Prec.POSTFIX)
            return f"{obj}.{e.name}", Prec.POSTFIX
        case ast.Pow():  # right-associative: the exponent may itself be a power
            return f"{wrap(e.base, Prec.POSTFIX)} ** {wrap(e.exp, Prec.UNARY)}", Prec.POWER
        case ast.Neg():
            return "-" + wrap(e.operand, Prec.UNARY), Prec.UNARY
        case ast.Not():
            return "not " + wrap(e.operand, Prec.NOT), Prec.NOT
        case ast.Arith():
            prec = Prec.SUM if all(op in ("+", "-") for op, _ in e.rest) else Prec.PRODUCT
            return chain(e.first, e.rest, prec), prec
        case ast.Compare():
            return chain(e.first, e.rest, Prec.COMPARE), Prec.COMPARE
        case ast.BoolOp():
            prec = Prec.OR if e.op == "or" else Prec.AND
            return f" {e.op} ".join(wrap(v, Prec(prec + 1)) for v in e.values), prec
        case ast.IfExp():
            text = f"{wrap(e.then, Prec.OR)} if {wrap(e.cond, Prec.OR)} else {wrap(e.orelse, Prec.TERNARY)}"
            return text, Prec.TERNARY
        case ast.Pipe():
            return " | ".join(pipe_stages(e)), Prec.PIPE
        case ast.Labeled():
            return f"{wrap(e.expr, Prec.SUM)} as {'param ' if e.param else ''}{format_label(e.label)}", Prec.LABEL
    raise TypeError(f"not a CDL expression: {e!r}")


def chain_prec(e: ast.Arith) -> Prec:
    return Prec.SUM if all(op in ("+", "-") for op, _ in e.rest) else Prec.PRODUCT


def chain(first: ast.Expr, rest: list[tuple[str, ast.Expr]], prec: Prec) -> str:
    """A flat left-to-right chain; an operand of the same level keeps its
    parentheses, since without them it would merge into this chain."""
    return " ".join([wrap(first, Prec(prec + 1))] + [f"{op} {wrap(x, Prec(prec + 1))}" for op, x in rest])


def join(items: list[ast.Expr]) -> str:
    return ", ".join(format_expr(i) for i in items)


def pipe_stages(pipe: ast.Pipe) -> list[str]:
    return [wrap(s, Prec.LABEL) for s in pipe.stages]


def _number(value: int | float) -> str:
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("NaN has no CDL literal")
    return format_number(value)


def format_label(label: ast.Label) -> str:
    """``conv1``, or ``"layer{i + 1}.{j}"`` rebuilt from the parts.  A label
    written quoted stays quoted: ``Label.quoted`` takes part in equality."""
    plain = len(label.parts) == 1 and isinstance(label.parts[0], str) and IDENT.match(label.parts[0])
    if plain and not label.quoted:
        return label.parts[0]
    return quote("".join(p if isinstance(p, str) else "{" + format_expr(p) + "}" for p in label.parts))


# ---- breaking a long expression over lines --------------------------------------------
Lines = list[str]  # the first line without its indent (it continues a line), then whole lines


class Piece(NamedTuple):
    """One item of a filled line: a call argument, an operand, a pipe stage.  ``inline`` joins it
    to the item before on the same line; when a line breaks before it, the line before ends with
    ``end`` and its line starts with ``start``."""

    inline: str
    end: str
    start: str
    prefix: str  # `name=` of a keyword argument
    expr: ast.Expr | None  # None: ``prefix`` is the whole text
    prec: Prec = Prec.TERNARY
    new_line: bool = False  # starts a line (a pipe stage its author put on a line of its own)


class Breaker:
    """Lays expressions out in lines of at most ``width`` columns, breaking only where the
    grammar lets a line continue (inside brackets, after an operator or ',', before '|'):

    * a call, list or tuple: first its items filled after the opening bracket, continuation
      lines aligned with the first item; where that does not fit, the items on one line of their
      own, one indent deeper, and the closing bracket under the line that opened it; else one
      item per line with a trailing comma;
    * a chain of operators (``a + b``, ``p and q``, ``x < y``): operands filled, each line
      ending with its operator, continuation lines aligned with the first operand; a last
      operand in brackets breaks inside them when the line up to its bracket fits
      (``x + (x | a | b ...)`` keeps ``x + (`` on the first line);
    * a pipe: stages filled, continuation lines starting with '|' under the first '|' (or one
      indent deeper when the first line holds the first stage only); a stage its author started
      a line with starts one (``conv | batchnorm | relu`` on a line stays together);
    * ``a if c else b if d else e``: one ``value if condition else`` per line, one indent deeper;
    * ``e as label``: ``e`` broken, the label after its last line.

    An item that does not fit on a line of its own is broken the same way, inside; a name, a
    number or a string never is.  Lines are lists of text: the first one continues the line the
    expression starts in (at column ``col``), later ones carry their own indent; ``ind`` is the
    indent of the line the expression starts in, ``tail`` how many columns follow its last line.
    """

    # Layouts compared in one statement before the breaker settles for the first one it finds:
    # under 200 in any example file; tens of thousands for expressions nested dozens of levels deep.
    BUDGET = 5_000

    def __init__(self, width: int) -> None:
        self.width = width
        self.budget = self.BUDGET
        self._memo: dict[tuple, Lines] = {}
        self._flat: dict[int, tuple[str, Prec]] = {}

    # -- flat text, measured once per node
    def flat(self, e: ast.Expr, min_prec: Prec = Prec.TERNARY) -> str:
        """``e`` on one line, parenthesized when it binds looser than ``min_prec``."""
        text, prec = self._measure(e)
        return f"({text})" if prec < min_prec else text

    def _measure(self, e: ast.Expr) -> tuple[str, Prec]:
        got = self._flat.get(id(e))
        if got is None:
            got = self._flat[id(e)] = _fmt(e)
        return got

    def overflow(self, lines: Lines, col: int, tail: int) -> int:
        """Columns past the width, over all lines (0: it fits)."""
        widths = [col + len(lines[0])] + [len(line) for line in lines[1:]]
        widths[-1] += tail
        return sum(max(0, w - self.width) for w in widths)

    def lines(self, e: ast.Expr, col: int, ind: int, tail: int = 0, min_prec: Prec = Prec.TERNARY) -> Lines:
        text = self.flat(e, min_prec)
        if col + len(text) + tail <= self.width or col >= self.width:
            return [text]  # it fits; or nothing could (this keeps very deep nesting cheap)
        key = (id(e), col, ind, tail, min_prec)
        got = self._memo.get(key)
        if got is None:
            if self._measure(e)[1] < min_prec:  # inside the parentheses the lines break freely
                inner = self._broken(e, col + 1, ind, tail + 1)
                got = ["(" + inner[0], *inner[1:]]
                got[-1] += ")"
            else:
                got = self._broken(e, col, ind, tail)
            self._memo[key] = got
        return list(got)  # callers extend the last line

    def _best(self, options: list[Lines], col: int, tail: int) -> Lines:
        """The first layout that fits, else the one that passes the width least."""
        scored = [(self.overflow(o, col, tail), k) for k, o in enumerate(options)]
        return options[min(scored)[1]] if all(s for s, _ in scored) else \
            options[next(k for s, k in scored if not s)]

    def _broken(self, e: ast.Expr, col: int, ind: int, tail: int) -> Lines:
        self.budget -= 1
        match e:
            case ast.Call():
                items = [Piece(", ", ",", "", "", a) for a in e.args] + \
                    [Piece(", ", ",", "", f"{k.name}=", k.value) for k in e.kwargs]
                return self._bracketed(self.flat(e.func, Prec.POSTFIX) + "(", items, ")", col, ind, tail)
            case ast.Choice():
                items = [Piece(", ", ",", "", "", o) for o in e.options]
                if e.name is not None:
                    items.append(Piece(", ", ",", "", f"name={quote(e.name)}", None))
                return self._bracketed("choice(", items, ")", col, ind, tail)
            case ast.ListExpr() if e.items:
                return self._bracketed("[", [Piece(", ", ",", "", "", i) for i in e.items], "]", col, ind, tail)
            case ast.TupleExpr():
                return self._bracketed("(", [Piece(", ", ",", "", "", i) for i in e.items], ")", col, ind, tail,
                                       one_comma=len(e.items) == 1)
            case ast.Labeled():
                suffix = f" as {'param ' if e.param else ''}{format_label(e.label)}"
                got = self.lines(e.expr, col, ind, tail + len(suffix), Prec.SUM)
                return [*got[:-1], got[-1] + suffix]
            case ast.Arith() | ast.Compare():
                prec = Prec.COMPARE if isinstance(e, ast.Compare) else chain_prec(e)
                items = [Piece("", "", "", "", e.first, Prec(prec + 1))] + \
                    [Piece(f" {op} ", f" {op}", "", "", x, Prec(prec + 1)) for op, x in e.rest]
                return self._chain(items, col, ind, tail)
            case ast.BoolOp():
                sub = Prec(Prec.OR + 1 if e.op == "or" else Prec.AND + 1)
                items = [Piece("" if k == 0 else f" {e.op} ", "" if k == 0 else f" {e.op}", "", "", v, sub)
                         for k, v in enumerate(e.values)]
                return self._chain(items, col, ind, tail)
            case ast.Pipe():
                return self.pipe(e, col, ind, tail)
            case ast.IfExp():
                return self.arms(e, col, ind + 4, tail)
        return [self.flat(e)]  # a name, a number, a string, `-x`, `a ** b`, `x[i]`, `x.y`: as they are

    def _bracketed(self, head: str, items: list[Piece], close: str, col: int, ind: int, tail: int,
                   one_comma: bool = False) -> Lines:
        """``head`` items ``close``, in the three layouts of the class docstring: the first that
        fits with no item broken inside, else the first that fits, else the least too wide."""
        comma = "," if one_comma else ""
        inner = ind + 4
        aligned: Lines | None = None
        nested_a = False
        start = col + len(head)
        if start < self.width:  # aligned after the bracket
            got, nested_a = self._fill(items, start, start, start, len(comma + close) + tail)
            aligned = [head + got[0], *got[1:]]
            aligned[-1] += comma + close
            if not nested_a and not self.overflow(aligned, col, tail) or self.budget < 0:
                return aligned
        flat = ", ".join(self._item_text(i) for i in items) + comma
        own_line = [head, " " * inner + flat, " " * ind + close]
        if not self.overflow(own_line, col, tail):
            return own_line
        rows, nested_r = [], False  # one per line, each with its comma
        for item in items:
            got = self._item(item, inner, inner, 1)
            nested_r = nested_r or len(got) > 1
            rows += [" " * inner + got[0], *got[1:]]
            rows[-1] += ","
        per_line = [head, *rows, " " * ind + close]
        if not nested_r and not self.overflow(per_line, col, tail):
            return per_line
        return self._best([o for o in (aligned, per_line, own_line) if o is not None], col, tail)

    def _item_text(self, item: Piece) -> str:
        return item.prefix + (self.flat(item.expr, item.prec) if item.expr is not None else "")

    def _item(self, item: Piece, col: int, ind: int, tail: int) -> Lines:
        if item.expr is None:
            return [item.prefix]
        got = self.lines(item.expr, col + len(item.prefix), ind, tail, item.prec)
        return [item.prefix + got[0], *got[1:]]

    def fill(self, items: list[Piece], col: int, cont: int, ind: int, tail: int, split_last: bool = False) -> Lines:
        """Items filled greedily from column ``col``, continuation lines at column ``cont``.  An
        item too long for a line of its own is broken: where it stands, or on a new line,
        whichever passes the width less.  ``split_last``: the last item, when bracketed, breaks
        where it stands if that fits."""
        return self._fill(items, col, cont, ind, tail, split_last)[0]

    def _fill(self, items: list[Piece], col: int, cont: int, ind: int, tail: int,
              split_last: bool = False) -> tuple[Lines, bool]:
        """``fill``, and whether an item was broken inside."""
        nested = False
        lines: Lines = [""]
        at, line_ind = col, ind
        for k, item in enumerate(items):
            after = len(items[k + 1].end) if k + 1 < len(items) else tail
            text = self._item_text(item)
            if k and not item.new_line and at + len(item.inline) + len(text) + after <= self.width:
                lines[-1] += item.inline + text
                at += len(item.inline) + len(text)
                continue
            if k:
                fits_alone = cont + len(item.start) + len(text) + after <= self.width
                here = None
                if item.new_line:
                    pass
                elif not fits_alone or (split_last and k == len(items) - 1 and _bracketed(item.expr, item.prec)):
                    here = self._item(item, at + len(item.inline), line_ind, after)
                    over = self.overflow(here, at + len(item.inline), after)
                    if over and (fits_alone or self.budget >= 0 and over > self.overflow(
                            self._item(item, cont + len(item.start), cont, after), cont + len(item.start), after)):
                        here = None
                if here is not None:
                    nested = nested or len(here) > 1
                    lines[-1] += item.inline + here[0]
                    lines += here[1:]
                    at = len(lines[-1]) if len(here) > 1 else at + len(item.inline) + len(here[0])
                    continue
                lines[-1] += item.end
                lines.append(" " * cont + item.start)
                at, line_ind = cont + len(item.start), cont
            got = self._item(item, at, line_ind, after)
            nested = nested or len(got) > 1
            lines[-1] += got[0]
            lines += got[1:]
            at = len(lines[-1]) if len(got) > 1 else at + len(got[0])
        return lines, nested

    def _chain(self, items: list[Piece], col: int, ind: int, tail: int) -> Lines:
        """Operands filled, continuation lines aligned with the first (or one indent deeper than
        the line, when that is further left)."""
        aligned = self.fill(items, col, col, ind, tail, split_last=True)
        if ind + 4 >= col or not self.overflow(aligned, col, tail) or self.budget < 0:
            return aligned
        return self._best([aligned, self.fill(items, col, ind + 4, ind, tail, split_last=True)], col, tail)

    def pipe(self, e: ast.Pipe, col: int, ind: int, tail: int) -> Lines:
        """Stages filled; continuation lines put their '|' under the first one, or one indent
        deeper when the first line holds the first stage only."""
        items = [Piece("" if k == 0 else " | ", "", "" if k == 0 else "| ", "", s, Prec.LABEL,
                       new_line=k > 0 and _starts_line(s, e.stages[k - 1]))
                 for k, s in enumerate(e.stages)]
        got = self.fill(items, col, ind + 4, ind, tail)
        first = self.flat(e.stages[0], Prec.LABEL)
        if got[0].startswith(first + " | "):
            aligned = self.fill(items, col, col + len(first) + 1, ind, tail)
            # far right, the '|' under the first one may leave no room: then one indent deeper
            got = aligned if not self.overflow(aligned, col, tail) or self.budget < 0 else \
                self._best([aligned, got], col, tail)
        return got

    def arms(self, e: ast.IfExp, col: int, cont: int, tail: int) -> Lines:
        """``a if c else b if d else e``: one ``value if condition else`` per line, the first at
        ``col``, the others at ``cont``."""
        lines: Lines = []
        rest: ast.Expr = e
        while isinstance(rest, ast.IfExp):
            at = col if not lines else cont
            cond = f" if {self.flat(rest.cond, Prec.OR)} else"
            got = self.lines(rest.then, at, cont - 4 if not lines else cont, len(cond), Prec.OR)
            got[-1] += cond
            lines += [got[0] if not lines else " " * cont + got[0], *got[1:]]
            rest = rest.orelse
        got = self.lines(rest, cont, cont, tail, Prec.TERNARY)
        return [*lines, " " * cont + got[0], *got[1:]]



def _starts_line(stage: ast.Expr, before: ast.Expr) -> bool:
    """Did the source put ``stage`` on a later line than the stage before it ends on?"""
    a, b = getattr(stage, "span", None), getattr(before, "span", None)
    return a is not None and b is not None and a.line > (b.end_line or b.line)


def _bracketed(e: ast.Expr | None, prec: Prec) -> bool:
    """Does ``e`` print inside brackets of its own (a call, a list, parentheses)?"""
    if e is None:
        return False
    return isinstance(e, (ast.Call, ast.Choice, ast.ListExpr, ast.TupleExpr)) or _fmt(e)[1] < prec
