"""Tensor types: a shape of dimensions and a dtype.

A dimension is an ``int`` or a symbol (``str``) such as ``"N"`` for the batch.
Shape rules that combine a symbol with arithmetic produce a symbolic
expression string like ``"N*4"``; two symbolic dims are equal only if their
texts are equal.  Concrete sizes are obtained with ``bind``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

Dim = int | str

DTYPES = ("f32", "f16", "bf16", "f64", "i8", "u8", "i32", "i64", "bool")
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
    # a symbolic expression such as "N*4" or "(L+2)": evaluate with a tiny parser
    return _eval_dim_expr(d, bind)


def _eval_dim_expr(text: str, bind: Mapping[str, int]) -> int:
    tokens: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c.isalnum() or c == "_":
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                j += 1
            tokens.append(text[i:j])
            i = j
        elif text.startswith("//", i):
            tokens.append("//")
            i += 2
        else:
            tokens.append(c)
            i += 1
    pos = 0

    def atom() -> int:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            v = expr()
            pos += 1  # ')'
            return v
        if tok.isdigit():
            return int(tok)
        return bind.get(tok, 1)

    def term() -> int:
        nonlocal pos
        v = atom()
        while pos < len(tokens) and tokens[pos] in ("*", "//"):
            op = tokens[pos]
            pos += 1
            r = atom()
            v = v * r if op == "*" else v // max(r, 1)
        return v

    def expr() -> int:
        nonlocal pos
        v = term()
        while pos < len(tokens) and tokens[pos] in ("+", "-"):
            op = tokens[pos]
            pos += 1
            r = term()
            v = v + r if op == "+" else v - r
        return v

    return expr()


def _wrap(d: Dim) -> str:
    s = str(d)
    return s if isinstance(d, int) or s.isidentifier() or s.startswith("(") else f"({s})"


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 1:
        return b
    if b == 1:
        return a
    return f"{_wrap(a)}*{_wrap(b)}"


def dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if b == 0:
        return a
    if a == 0:
        return b
    return f"{_wrap(a)}+{_wrap(b)}"


def dim_floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    if b == 1:
        return a
    return f"{_wrap(a)}//{_wrap(b)}"


def dims_prod(dims: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out
