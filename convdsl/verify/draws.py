"""Where the generator's random choices come from.

The program generator (``programs.py``) asks a ``Draw`` for every choice it
makes: an integer in a range, one of a few options, a yes/no.  Two sources:

- ``HypothesisDraw`` wraps hypothesis' ``data.draw``; every choice is a small
  integer that shrinks towards 0, and option lists put the simplest option
  first, so a failing program shrinks to a short one with plain operators;
- ``RandomDraw`` wraps ``random.Random(seed)``: the same programs without
  hypothesis (``convdsl verify`` and scripts), reproducible from the seed.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Protocol, Sequence, TypeVar

T = TypeVar("T")


class Draw(Protocol):
    def int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]; shrinks towards lo."""

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options``; shrinks towards the first."""

    def flag(self, percent: int = 50) -> bool:
        """True with about ``percent``% probability; shrinks towards False."""

    def group(self, fn: Callable[["Draw"], T]) -> T:
        """``fn(draw)``, its choices kept together (hypothesis can drop them as a unit)."""


class RandomDraw:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def flag(self, percent: int = 50) -> bool:
        return self.rng.randrange(100) < percent

    def group(self, fn: Callable[[Draw], T]) -> T:
        return fn(self)


class HypothesisDraw:
    """Draws from a hypothesis ``st.data()`` object (or the ``draw`` of ``@st.composite``)."""

    def __init__(self, draw: Any) -> None:
        from hypothesis import strategies as st

        self._draw = draw
        self._st = st

    def int(self, lo: int, hi: int) -> int:
        return self._draw(self._st.integers(lo, hi))

    def pick(self, options: Sequence[T]) -> T:
        return options[self._draw(self._st.integers(0, len(options) - 1))]

    def flag(self, percent: int = 50) -> bool:
        # 0 shrinks to False: the value is True only in the top `percent` of 0..99
        return self._draw(self._st.integers(0, 99)) >= 100 - percent

    def group(self, fn: Callable[[Draw], T]) -> T:
        # a nested strategy is one span of the choice sequence: the shrinker deletes
        # or simplifies a whole statement at once
        @self._st.composite
        def inner(draw):
            return fn(HypothesisDraw(draw))

        return self._draw(inner())
