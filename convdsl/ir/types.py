"""Tensor types: a shape of dimensions and a dtype.

A dimension is an ``int`` or a symbol (``str``) such as ``"N"`` for the batch.
Shape rules that combine a symbol with arithmetic produce a symbolic
expression string in a canonical form (``"4*N"``, ``"H*W"``, ``"(H-1)//2+1"``);
two symbolic dims are equal only if their canonical texts are equal.  Concrete
sizes are obtained with ``bind``, or with ``dim_eval`` for symbol values of any
kind (run-time sizes in generated code, TVM shape variables).

In the hyper-parameter language a symbolic dim is a ``Size`` value (``dim(x, 0)``
on ``f32[N, ...]``, or the name ``N`` in the network's body): it adds, subtracts,
multiplies and divides (``size_arith``) and may stand in a shape list
(``reshape([4 * N, 16, 8, 8])``).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

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
        if pos >= len(toks):
            raise ValueError(f"bad symbolic dim {text!r}")
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
    exact = dim_div_exact(a, b)  # "4*H*W" // "W" is "4*H", not an opaque floor division
    return exact if exact is not None else _dim(_lin_floordiv(_lin(a), _lin(b)))


def dim_sub(a: Dim, b: Dim) -> Dim:
    return dim_add(a, dim_mul(b, -1))


def _monomials(x: _Lin) -> list[tuple[int, list[str]]] | None:
    """x as a sum of coef * (product of plain symbols) terms (the constant is the empty product),
    or None when it holds an opaque atom (a floor division, a product of sums)."""
    out = []
    for k, v in x.items():
        if not v:
            continue
        if k and not _FACTORS.fullmatch(k):
            return None
        out.append((v, k.split("*") if k else []))
    return out


def dim_div_exact(a: Dim, b: Dim) -> Dim | None:
    """``a / b`` when it is a whole size for every value of the symbols, else None:
    "4*N" / 4 -> "N", "4*H*W" / "W" -> "4*H", "4*N" / "N" -> 4, "N" / 4 -> None."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b if b and a % b == 0 else None
    la, lb = _lin(a), _lin(b)
    cb = _const(lb)
    if cb is not None:
        return _dim({k: v // cb for k, v in la.items()}) if cb and all(v % cb == 0 for v in la.values()) else None
    if _text(la) == _text(lb):
        return 1
    terms, div = _monomials(la), _monomial(lb)
    if terms is not None and div is not None and div[0] > 0:
        out: _Lin = {"": 0}
        for coef, factors in terms:
            left = Counter(factors)
            left.subtract(div[1])
            if coef % div[0] or any(n < 0 for n in left.values()):
                return None
            out = _lin_add(out, {"*".join(sorted(left.elements())): coef // div[0]} if +left
                           else {"": coef // div[0]})
        return _dim(out)
    for k, v in la.items():  # a multiple of a sum: (2*N+2) / (N+1) -> 2
        if v and k in lb and lb[k] and v % lb[k] == 0:
            q = v // lb[k]
            return q if _text(la) == _text({kk: vv * q for kk, vv in lb.items()}) else None
    return None


def dim_eval(d: Dim, values: Mapping[str, Any]) -> Any:
    """``d`` computed from ``values`` of its symbols with ``+ - * //``: ints, run-time size
    expressions (generated code), TVM ``tir`` variables.  A symbol without a value raises KeyError."""
    if isinstance(d, int):
        return d
    if d in values:
        return values[d]

    def ev(node):
        if isinstance(node, int):
            return node
        if isinstance(node, str):
            return values[node]
        if node[0] == "neg":
            return -ev(node[1])
        a, b = ev(node[1]), ev(node[2])
        return a + b if node[0] == "+" else a * b if node[0] == "*" else a // b

    return ev(_parse(d))


def symbol_sources(shape: Iterable[Dim]) -> dict[str, tuple[int, int]]:
    """Where a run-time shape gives each symbol: ``{S: (i, c)}`` when dim i is ``c*S``
    (S = shape[i] // c), the plainest dim first: [4*N, N, 8] -> {"N": (1, 1)}."""
    found: dict[str, tuple[int, int]] = {}
    for i, d in enumerate(shape):
        try:
            coef, factors = dim_factors(d)
        except ValueError:  # not a dim expression: a Graph built in Python may name a dim anything
            continue
        if len(factors) == 1 and _FACTORS.fullmatch(factors[0]) and coef > 0:
            if factors[0] not in found or coef < found[factors[0]][1]:
                found[factors[0]] = (i, coef)
    return found


def dim_symbols(d: Dim) -> set[str]:
    """The symbols ``d`` is written with."""
    return set() if isinstance(d, int) else {t for t in _tokens(d) if t[0].isalpha() or t[0] == "_"}


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


# ---- symbolic sizes as values ------------------------------------------------
@dataclass(frozen=True)
class Size:
    """A symbolic dim as a value of the hyper-parameter language: ``dim(x, 0)`` on
    ``f32[N, 64, 8, 8]`` is ``Size("N")``; arithmetic keeps the canonical form, so
    ``dim(x, 0) * 4`` is ``Size("4*N")``.  Written as CDL it is its text (an expression
    over the network's symbols); in an op's attributes it is a dim of a shape list."""

    dim: str

    def __str__(self) -> str:
        return self.dim


def size_value(d: Dim) -> "int | Size":
    """A dim as a language value: ints stay ints, symbolic dims become ``Size``."""
    return d if isinstance(d, int) else Size(d)


def size_dim(v: "int | Size") -> Dim:
    return v.dim if isinstance(v, Size) else v


def size_arith(op: str, a: "int | Size", b: "int | Size") -> "int | Size":
    """``a op b`` for sizes and integers (at least one a ``Size``): ``+ - *`` always, ``//`` as a
    floor division (exact ones simplify: ``4*N // 4`` is ``N``), ``/`` only when it divides
    for every value of the symbols.  Raises ValueError saying why not."""
    x, y = size_dim(a), size_dim(b)
    if op == "+":
        return size_value(dim_add(x, y))
    if op == "-":
        return size_value(dim_sub(x, y))
    if op == "*":
        return size_value(dim_mul(x, y))
    if op in ("/", "//"):
        if y == 0:
            raise ZeroDivisionError
        q = dim_div_exact(x, y)
        if q is None and op == "/":
            raise ValueError(f"{x} is not a multiple of {y} for every {', '.join(sorted(dim_symbols(x) | dim_symbols(y)))}")
        return size_value(q if q is not None else dim_floordiv(x, y))
    raise ValueError(f"'{op}' is not defined for symbolic sizes")


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
