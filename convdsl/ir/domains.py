"""Attribute domains: the values of a number attribute that every backend runs.

An op attribute's ``Attr.domain`` is an interval written as in mathematics, optionally with a
rule on the length of a list::

    Attr("eps", "float", 1e-5, domain=Domain("(0, inf)"))        # positive and finite
    Attr("p", "float", 0.5, domain=PROBABILITY)                   # [0, 1]
    Attr("pad", "ints", 0, domain=Domain("[0, inf)"))             # each entry of a list too
    Attr("p", "float", 2.0, domain=Domain("(0, inf]"))            # +inf allowed (the max norm)

``bind_attrs`` (convdsl/ir/optable.py) checks every value against its attribute's domain, in
one place, before any shape rule or backend sees it.  Whatever the interval, every value also
lies inside what every backend can hold (``check`` refuses the rest):

- an integer fits in int32 (TVM writes attribute integers as int32 literals; PyTorch's pooling
  kernels convert strides and sizes to int);
- a float is never NaN, is infinite only where the interval is closed at that infinity
  (``(0, inf]``), and otherwise fits in float32 (|v| <= 3.4028234663852886e38), the precision
  the constants are computed in;
- a list has at most 64 entries (one per dim of a tensor of the largest rank).

An attribute without a domain admits the bounds above only (``ANY``).
Constraints between attributes or with the input's type (``output_pad < stride``, ``groups``
dividing the channels) stay in the op's ``infer``, which sees both.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
FLOAT_MAX = 3.4028234663852886e38  # the largest finite float32
MAX_LIST = 64  # entries in a list attribute: tensors have at most 64 dims (convdsl/lang/limits.py MAX_RANK)

_INTERVAL = re.compile(r"^\s*([\[(])\s*(-?inf|[-+0-9.e]+)\s*,\s*(-?inf|[-+0-9.e]+)\s*([\])])\s*$")


@dataclass(frozen=True)
class Domain:
    """An interval (``"[lo, hi]"``, ``"(lo, hi)"``, ends may be ``-inf``/``inf``) and, for list
    values, the number of entries allowed (``min_len``..``max_len``)."""

    interval: str = "(-inf, inf)"
    min_len: int = 0
    max_len: int = MAX_LIST
    name: str = ""  # how an error says it: "positive", "a probability"; default: "in <interval>"
    lo: float = field(init=False, repr=False, compare=False)
    hi: float = field(init=False, repr=False, compare=False)
    lo_closed: bool = field(init=False, repr=False, compare=False)
    hi_closed: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        m = _INTERVAL.match(self.interval)
        if m is None:
            raise ValueError(f"bad interval {self.interval!r}: write it like '[0, 1)' or '(0, inf]'")
        lo, hi = float(m.group(2)), float(m.group(3))
        if not lo <= hi:
            raise ValueError(f"empty interval {self.interval!r}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "lo_closed", m.group(1) == "[")
        object.__setattr__(self, "hi_closed", m.group(4) == "]")

    # -- one number -------------------------------------------------------------------------
    def _in_interval(self, v: float) -> bool:
        above = v >= self.lo if self.lo_closed else v > self.lo
        below = v <= self.hi if self.hi_closed else v < self.hi
        return above and below

    def admits(self, v: Any) -> bool:
        """Whether one number (an int or a float) lies in the domain and in what backends hold."""
        if isinstance(v, bool):
            return True  # booleans are checked by their kind, not by a domain
        if isinstance(v, int):
            return INT_MIN <= v <= INT_MAX and self._in_interval(v)
        if isinstance(v, float):
            if math.isnan(v):
                return False
            if math.isinf(v):
                return self._in_interval(v)  # only an interval closed at that infinity holds it
            return abs(v) <= FLOAT_MAX and self._in_interval(v)
        return True  # words and strings: their kind and choices decide

    def why_not(self, v: Any) -> str:
        """Why ``v`` (which ``admits`` refuses) is refused, to follow "<op>: <attr> ..."."""
        if isinstance(v, float) and math.isnan(v):
            return "cannot be NaN"
        if isinstance(v, (int, float)) and not self._in_interval(v):
            return f"must be {self.name or 'in ' + self.interval}"
        return "is past what every backend holds (int32 integers, finite float32 numbers)"

    def describe(self, integer: bool) -> str:
        """What the domain admits, for an error message or the docs (``expected``)."""
        lo, hi = self.lo, self.hi
        if integer:  # the int32 bounds are part of what an integer attribute admits
            lo_text = str(max(INT_MIN, math.ceil(lo))) if lo > -math.inf else str(INT_MIN)
            hi_text = str(min(INT_MAX, math.floor(hi))) if hi < math.inf else str(INT_MAX)
            if lo > -math.inf and not self.lo_closed and float(lo_text) == lo:
                lo_text = str(int(lo) + 1)
            if hi < math.inf and not self.hi_closed and float(hi_text) == hi:
                hi_text = str(int(hi) - 1)
            return f"an integer in [{lo_text}, {hi_text}]"
        infinite = (self.lo_closed and lo == -math.inf) or (self.hi_closed and hi == math.inf)
        if infinite:
            return f"a number in {self.interval}"
        unbounded = lo == -math.inf or hi == math.inf
        return f"a finite number in {self.interval}" + (", at most 3.4e38 in magnitude" if unbounded else "")

    def text(self) -> str:
        """The domain as the docs show it: the interval, and the list length when it is not the default."""
        out = self.interval
        if (self.min_len, self.max_len) != (0, MAX_LIST):
            n = str(self.min_len) if self.min_len == self.max_len else f"{self.min_len}-{self.max_len}"
            out += f", {n} entries"
        return out


ANY = Domain()
POSITIVE = Domain("[1, inf)", name="positive")  # sizes, strides, counts
NON_NEGATIVE = Domain("[0, inf)", name=">= 0")  # paddings, offsets
PROBABILITY = Domain("[0, 1]", name="a probability (0 <= p <= 1)")
POSITIVE_REAL = Domain("(0, inf)", name="positive")  # scales, standard deviations
NON_NEGATIVE_REAL = Domain("[0, inf)", name=">= 0")
