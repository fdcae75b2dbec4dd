"""How CDL expressions are written: on one line with the fewest parentheses (``format_expr``).

The canonical formatter (``convdsl/lang/format.py``) prints statements with these.
"""
from __future__ import annotations

import math
from enum import IntEnum

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
            return f"{wrap(e.expr, Prec.SUM)} as {format_label(e.label)}", Prec.LABEL
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
