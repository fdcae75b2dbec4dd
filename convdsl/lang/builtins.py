"""Built-in functions of the hyper-parameter language (``channels(x)``, ``range(n)``...).

Each runs at elaboration time on plain values; none of them reaches the graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from convdsl.errors import CDLTypeError, ResourceError, ShapeError
from convdsl.lang.limits import MAX_LOOP_ITERATIONS
from convdsl.lang.values import Tensor, describe


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Builtin:
    name: str
    fn: Callable[..., Any]
    usage: str = ""


def _tensor_arg(name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise CDLTypeError(f"{name}() needs a tensor", got=describe(x))
    return x


def _channels(el, e, x):
    t = _tensor_arg("channels", x).type
    if t.rank < 2:
        raise ShapeError("channels() needs a tensor of rank >= 2 (channels-first)", got=str(t))
    return t.shape[1]


def _dim(el, e, x, i):
    t = _tensor_arg("dim", x).type
    if not _is_int(i) or not -t.rank <= i < t.rank:
        raise CDLTypeError(f"dim index out of range for {t}", got=describe(i))
    return t.shape[i]


def _range(el, e, *a):
    if not all(_is_int(x) for x in a) or not 1 <= len(a) <= 3:
        raise CDLTypeError("range() takes 1 to 3 integers", got=", ".join(describe(x) for x in a))
    if len(a) == 3 and a[2] == 0:
        raise CDLTypeError("range() step must not be zero", got="0")
    r = range(*a)
    try:
        n = len(r)
    except OverflowError:  # more items than a machine word counts
        n = MAX_LOOP_ITERATIONS + 1
    if n > MAX_LOOP_ITERATIONS:
        raise ResourceError(f"range of more than {MAX_LOOP_ITERATIONS:,} items")
    return list(r)


def _make_divisible(el, e, v, divisor=8, min_value=None):
    """torchvision's _make_divisible: round v to a multiple of divisor, never below 90% of v."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _seq(name):
    def check(x):
        if not isinstance(x, (list, tuple)):
            raise CDLTypeError(f"{name}() needs a list", got=describe(x))
        return x
    return check


def _num(name, x):
    if not _is_num(x):
        raise CDLTypeError(f"{name}() needs a number", got=describe(x))
    return x


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in [
        Builtin("channels", _channels, "channels(x) -> size of dim 1"),
        Builtin("dim", _dim, "dim(x, i) -> size of dim i"),
        Builtin("rank", lambda el, e, x: _tensor_arg("rank", x).type.rank, "rank(x)"),
        Builtin("shape", lambda el, e, x: list(_tensor_arg("shape", x).type.shape), "shape(x) -> list"),
        Builtin("range", _range, "range(n), range(a, b), range(a, b, step)"),
        Builtin("len", lambda el, e, x: len(_seq("len")(x)), "len(list)"),
        Builtin("enumerate", lambda el, e, x, start=0: [[i + start, v] for i, v in enumerate(_seq("enumerate")(x))], "enumerate(list)"),
        Builtin("zip", lambda el, e, *xs: [list(t) for t in zip(*[_seq("zip")(x) for x in xs])], "zip(a, b)"),
        Builtin("reversed", lambda el, e, x: list(reversed(_seq("reversed")(x))), "reversed(list)"),
        Builtin("sum", lambda el, e, x: sum(_num("sum", v) for v in _seq("sum")(x)), "sum(list)"),
        Builtin("min", lambda el, e, *a: min(_num("min", v) for v in (a[0] if len(a) == 1 and isinstance(a[0], (list, tuple)) else a)), "min(a, b, ...)"),
        Builtin("max", lambda el, e, *a: max(_num("max", v) for v in (a[0] if len(a) == 1 and isinstance(a[0], (list, tuple)) else a)), "max(a, b, ...)"),
        Builtin("abs", lambda el, e, x: abs(_num("abs", x)), "abs(x)"),
        Builtin("int", lambda el, e, x: int(_num("int", x)), "int(x) truncates"),
        Builtin("float", lambda el, e, x: float(_num("float", x)), "float(x)"),
        Builtin("round", lambda el, e, x: int(round(_num("round", x))), "round(x)"),
        Builtin("ceil", lambda el, e, x: math.ceil(_num("ceil", x)), "ceil(x)"),
        Builtin("floor", lambda el, e, x: math.floor(_num("floor", x)), "floor(x)"),
        Builtin("sqrt", lambda el, e, x: math.sqrt(_num("sqrt", x)) if x >= 0 else (_ for _ in ()).throw(CDLTypeError("sqrt of a negative number")), "sqrt(x)"),
        Builtin("log2", lambda el, e, x: math.log2(x) if _num("log2", x) > 0 else (_ for _ in ()).throw(CDLTypeError("log2 of a non-positive number")), "log2(x)"),
        Builtin("str", lambda el, e, x: str(x), "str(x)"),
        Builtin("make_divisible", _make_divisible, "make_divisible(v, divisor=8)"),
    ]
}
