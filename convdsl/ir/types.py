"""Tensor types: a shape of dimensions and a dtype.

A dimension is an ``int`` or a symbol (``str``) such as ``"N"`` for the batch.
Shape rules that combine a symbol with arithmetic produce a symbolic
expression string like ``"N*4"``; two symbolic dims are equal only if their
texts are equal.  Concrete sizes are obtained with ``bind``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

Dim = int | str

DTYPES = ("f32", "f16", "bf16", "f64", "i8", "u8", "i32", "i64", "bool")
FLOAT_DTYPES = ("f32", "f16", "bf16", "f64")
DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i8": 1, "u8": 1, "i32": 4, "i64": 8, "bool": 1}
NUMPY_DTYPE = {"f32": "float32", "f16": "float16", "f64": "float64", "i8": "int8", "u8": "uint8",
               "i32": "int32", "i64": "int64", "bool": "bool", "bf16": "float32"}
TORCH_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i8": "int8",
               "u8": "uint8", "i32": "int32", "i64": "int64", "bool": "bool"}


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str = "f32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape: Iterable[Dim]) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self, bind: Mapping[str, int] | None = None) -> int:
        return math.prod(bind_dim(d, bind) for d in self.shape)

    def nbytes(self, bind: Mapping[str, int] | None = None) -> int:
        return self.numel(bind) * DTYPE_BYTES.get(self.dtype, 4)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def bind_dim(d: Dim, bind: Mapping[str, int] | None = None) -> int:
    """Concrete value of a dim; unknown symbols count as 1 (a batch of one)."""
    if isinstance(d, int):
        return d
    bind = bind or {}
    if d in bind:
        return bind[d]
    return _evaluate(_parse(d), bind)


# ---- symbolic dims --------------------------------------------------------
# A symbolic dim is kept in a canonical affine form: const + sum(coef * atom),
# where an atom is a symbol ("H"), a product of atoms ("H*W") or a floor
# division that did not simplify ("(H-1)//2").  Canonical text makes equal
# sizes compare equal: conv(pad=1, k=3) on H gives back exactly "H".

_Lin = dict  # atom text -> coefficient; "" holds the constant


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c.isalnum() or c == "_":
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                j += 1
            out.append(text[i:j])
            i = j
        elif text.startswith("//", i):
            out.append("//")
            i += 2
        elif c in "+-*()":
            out.append(c)
            i += 1
        else:
            raise ValueError(f"bad symbolic dim {text!r}")
    return out


def _parse(text: str):
    """Text -> nested tuples ('+', a, b) | ('*', a, b) | ('//', a, b) | ('neg', a) | int | str."""
    toks = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def atom():
        nonlocal pos
        tok = toks[pos]
        pos += 1
        if tok == "(":
            v = expr()
            pos += 1  # ')'
            return v
        if tok == "-":
            return ("neg", atom())
        return int(tok) if tok.isdigit() else tok

    def term():
        nonlocal pos
        v = atom()
        while peek() in ("*", "//"):
            op = toks[pos]
            pos += 1
            v = (op, v, atom())
        return v

    def expr():
        nonlocal pos
        v = term()
        while peek() in ("+", "-"):
            op = toks[pos]
            pos += 1
            r = term()
            v = ("+", v, r) if op == "+" else ("+", v, ("neg", r))
        return v

    return expr()


def parse_dim(text: str):
    """A symbolic dim's text as a tree: ``('+', a, b)``, ``('*', a, b)``, ``('//', a, b)``,
    ``('neg', a)``, an int or a symbol name (what a backend evaluates over its own values)."""
    return _parse(text)


def _evaluate(node, bind: Mapping[str, int]) -> int:
    if isinstance(node, int):
        return node
    if isinstance(node, str):
        return bind.get(node, 1)
    op = node[0]
    if op == "neg":
        return -_evaluate(node[1], bind)
    a, b = _evaluate(node[1], bind), _evaluate(node[2], bind)
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    return a // b if b else 0


def _lin(d: Dim) -> _Lin:
    if isinstance(d, int):
        return {"": d}
    return _to_lin(_parse(d))


def _to_lin(node) -> _Lin:
    if isinstance(node, int):
        return {"": node}
    if isinstance(node, str):
        return {node: 1}
    op = node[0]
    if op == "neg":
        return {k: -v for k, v in _to_lin(node[1]).items()}
    a, b = _to_lin(node[1]), _to_lin(node[2])
    if op == "+":
        return _lin_add(a, b)
    if op == "*":
        return _lin_mul(a, b)
    return _lin_floordiv(a, b)


def _const(x: _Lin) -> int | None:
    return x.get("", 0) if all(k == "" for k in x) else None


def _lin_add(a: _Lin, b: _Lin) -> _Lin:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return {k: v for k, v in out.items() if v != 0 or k == ""}


def _lin_mul(a: _Lin, b: _Lin) -> _Lin:
    ca, cb = _const(a), _const(b)
    if ca is not None:
        return {k: v * ca for k, v in b.items() if v * ca != 0 or k == ""}
    if cb is not None:
        return {k: v * cb for k, v in a.items() if v * cb != 0 or k == ""}
    fa, fb = _monomial(a), _monomial(b)
    if fa is not None and fb is not None:  # c1*N * c2*L -> (c1*c2)*L*N, factors sorted
        return {"*".join(sorted(fa[1] + fb[1])): fa[0] * fb[0], "": 0}
    return {f"({_text(a)})*({_text(b)})": 1, "": 0}


_FACTORS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\*[A-Za-z_][A-Za-z0-9_]*)*")


def _monomial(x: _Lin) -> tuple[int, list[str]] | None:
    """coef * a product of plain symbols, if x is one."""
    terms = [(k, v) for k, v in x.items() if k and v]
    if len(terms) != 1 or x.get("", 0) != 0 or not _FACTORS.fullmatch(terms[0][0]):
        return None
    return terms[0][1], terms[0][0].split("*")


def _lin_floordiv(a: _Lin, b: _Lin) -> _Lin:
    cb = _const(b)
    if cb is not None and cb != 0 and all(v % cb == 0 for v in a.values()):
        return {k: v // cb for k, v in a.items()}
    if cb == 1:
        return a
    return {f"({_text(a)})//{_text(b) if cb is not None else '(' + _text(b) + ')'}": 1, "": 0}


def _text(x: _Lin) -> str:
    parts = []
    for k in sorted(k for k in x if k):
        v = x[k]
        if v == 0:
            continue
        term = k if abs(v) == 1 else f"{abs(v)}*{k}"
        parts.append(("-" if v < 0 else "+") + term)
    c = x.get("", 0)
    if c or not parts:
        parts.append(("-" if c < 0 else "+") + str(abs(c)))
    text = "".join(parts)
    return text[1:] if text.startswith("+") else text


def _dim(x: _Lin) -> Dim:
    c = _const(x)
    return c if c is not None else _text(x)


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    return _dim(_lin_mul(_lin(a), _lin(b)))


def dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return _dim(_lin_add(_lin(a), _lin(b)))


def dim_floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    return _dim(_lin_floordiv(_lin(a), _lin(b)))


def dim_factors(d: Dim) -> tuple[int, list[str]]:
    """``d`` as a number times symbolic factors: 12 -> (12, []), "4*N" -> (4, ["N"]),
    "H*W" -> (1, ["H", "W"]); a dim that is not such a product is one factor of its own."""
    if isinstance(d, int):
        return d, []
    mono = _monomial(_lin(d))
    return (mono[0], mono[1]) if mono is not None and mono[0] > 0 else (1, [d])


def dims_prod(dims: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def bind_some(d: Dim, sizes: Mapping[str, int]) -> Dim:
    """``d`` with the symbols in ``sizes`` replaced by their sizes, the others kept:
    ``bind_some("H*N", {"H": 8}) == "8*N"``, ``bind_some("N", {"N": 2}) == 2``."""
    if isinstance(d, int):
        return d

    def ev(node) -> Dim:
        if isinstance(node, int):
            return node
        if isinstance(node, str):
            return sizes.get(node, node)
        if node[0] == "neg":
            return dim_mul(-1, ev(node[1]))
        a, b = ev(node[1]), ev(node[2])
        return dim_add(a, b) if node[0] == "+" else dim_mul(a, b) if node[0] == "*" else dim_floordiv(a, b)

    return ev(_parse(d))
