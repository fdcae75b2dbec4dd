"""Built-in functions of the hyper-parameter language (``channels(x)``, ``range(n)``...).

Each runs at elaboration time on plain values; none of them reaches the graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from convdsl.errors import CDLTypeError, ResourceError, ShapeError, format_count
from convdsl.ir.types import Size, size_value
from convdsl.lang.limits import MAX_LOOP_ITERATIONS, MAX_SEQ_LEN, MAX_VALUE_SIZE
from convdsl.lang.values import FuncRef, ListValue, Namespace, Tensor, describe, measure


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
    return size_value(t.shape[1])


def _dim(el, e, x, i):
    t = _tensor_arg("dim", x).type
    if not _is_int(i) or not -t.rank <= i < t.rank:
        raise CDLTypeError(f"dim index out of range for {t}", got=describe(i))
    return size_value(t.shape[i])  # a symbolic dim is a Size: dim(x, 0) * 4, reshape([dim(x, 0), -1])


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
    return el.sized(ListValue(r), e.span)


def _built(el, e, size: int, make: Callable[[], list]) -> list:
    """A list a builtin makes, refused before it is made when ``size`` (an upper bound of its
    values.measure) is over the limit."""
    if size > MAX_VALUE_SIZE:
        raise ResourceError(f"the result would hold {format_count(size)} items counted through nested lists",
                            expected=f"at most {MAX_VALUE_SIZE:,}")
    return el.sized(ListValue(make()), e.span)


def _enumerate(el, e, x, start=0):
    x = _seq("enumerate")(x)
    if not _is_int(start):
        raise CDLTypeError("enumerate() start must be an integer", got=describe(start))
    return _built(el, e, 3 * len(x) + measure(x)[0] + 64, lambda: [ListValue([i + start, v]) for i, v in enumerate(x)])


def _zip(el, e, *xs):
    xs = [_seq("zip")(x) for x in xs]
    rows = min((len(x) for x in xs), default=0)
    return _built(el, e, rows * (1 + len(xs)) + sum(measure(x)[0] for x in xs),
                  lambda: [ListValue(t) for t in zip(*xs)])


def _str(el, e, x):
    """str() of a number, string, boolean, none or a list of those (Python's spelling)."""
    if isinstance(x, (Tensor, FuncRef, Namespace)) or hasattr(x, "with_label"):
        raise CDLTypeError("str() takes a number, string, boolean, none or list", got=describe(x))
    if measure(x)[0] > MAX_SEQ_LEN:
        raise ResourceError(f"str() of a value of {format_count(measure(x)[0])} items", expected=f"at most {MAX_SEQ_LEN:,}")
    text = str(x)
    if len(text) > MAX_SEQ_LEN:
        raise ResourceError(f"str() would make {len(text):,} characters", expected=f"at most {MAX_SEQ_LEN:,}")
    return el.sized(text, e.span)


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


def _items(a: tuple) -> list | tuple:
    """min(list) or min(a, b, ...)."""
    return a[0] if len(a) == 1 and isinstance(a[0], (list, tuple)) else a


def _charged(el, e, items):
    el.charge(10 * len(items), e.span)  # one pass over the items, a Python-level check of each
    return items


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
        Builtin("shape", lambda el, e, x: ListValue(size_value(d) for d in _tensor_arg("shape", x).type.shape),
                "shape(x) -> list"),
        Builtin("range", _range, "range(n), range(a, b), range(a, b, step)"),
        Builtin("len", lambda el, e, x: len(_seq("len")(x)), "len(list)"),
        Builtin("enumerate", _enumerate, "enumerate(list)"),
        Builtin("zip", _zip, "zip(a, b)"),
        Builtin("reversed", lambda el, e, x: el.sized(ListValue(reversed(_seq("reversed")(x))), e.span), "reversed(list)"),
        Builtin("sum", lambda el, e, x: sum(_num("sum", v) for v in _charged(el, e, _seq("sum")(x))), "sum(list)"),
        Builtin("min", lambda el, e, *a: min(_num("min", v) for v in _charged(el, e, _items(a))), "min(a, b, ...)"),
        Builtin("max", lambda el, e, *a: max(_num("max", v) for v in _charged(el, e, _items(a))), "max(a, b, ...)"),
        Builtin("abs", lambda el, e, x: abs(_num("abs", x)), "abs(x)"),
        Builtin("int", lambda el, e, x: int(_num("int", x)), "int(x) truncates"),
        Builtin("float", lambda el, e, x: float(_num("float", x)), "float(x)"),
        Builtin("round", lambda el, e, x: int(round(_num("round", x))), "round(x)"),
        Builtin("ceil", lambda el, e, x: math.ceil(_num("ceil", x)), "ceil(x)"),
        Builtin("floor", lambda el, e, x: math.floor(_num("floor", x)), "floor(x)"),
        Builtin("sqrt", lambda el, e, x: math.sqrt(_num("sqrt", x)) if x >= 0 else (_ for _ in ()).throw(CDLTypeError("sqrt of a negative number")), "sqrt(x)"),
        Builtin("log2", lambda el, e, x: math.log2(x) if _num("log2", x) > 0 else (_ for _ in ()).throw(CDLTypeError("log2 of a non-positive number")), "log2(x)"),
        Builtin("str", _str, "str(x)"),
        Builtin("make_divisible", _make_divisible, "make_divisible(v, divisor=8)"),
    ]
}
