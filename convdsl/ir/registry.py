"""Tables keyed by op name, and the checks every such table gets.

Whatever a layer above the IR knows about each op (a backend's lowerings, the
pruning rules, the random-program coverage of ``verify``) is an ``OpTable``:
entries are added one by one (``add``, or the ``register`` decorator), and

- adding an entry for an op the op table does not define is an error;
- adding a second entry for the same op is an error;
- ``missing()`` names the ops that have neither an entry nor a stated reason
  (``skip(op, why)``) — what the completeness test (tests/test_op_registry.py)
  reports per op.

A table is filled by the module that owns it, at its own import: no module
writes into another module's table.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, Mapping, TypeVar

from convdsl.errors import did_you_mean
from convdsl.ir.ops import OPS

E = TypeVar("E")


class RegistryError(Exception):
    """An op-keyed table was built wrong: a bug in convdsl (or a plug-in), never a user mistake."""


class OpMapping(Mapping[str, E], Generic[E]):
    """The reading side of an op-keyed table: ``op -> entry``, the ops ``skipped`` with a stated
    reason, and ``missing()``."""

    def __init__(self) -> None:
        self._entries: dict[str, E] = {}
        self.skipped: dict[str, str] = {}  # op -> why it has no entry

    def __getitem__(self, op: str) -> E:
        return self._entries[op]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def missing(self, ops: Mapping[str, object] = OPS) -> list[str]:
        """Ops of ``ops`` with neither an entry nor a stated reason, sorted."""
        return sorted(op for op in ops if op not in self._entries and op not in self.skipped)


class OpTable(OpMapping[E]):
    """``op name -> entry`` for one concern (``what``, e.g. "torch lowering"), filled entry by entry."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    # -- filling ----------------------------------------------------------------------
    def add(self, op: str, entry: E) -> E:
        self._check_new(op)
        self._entries[op] = entry
        return entry

    def register(self, *ops: str) -> Callable[[E], E]:
        """Decorator: ``@table.register("conv1d", "conv2d")`` adds the function for each op."""

        def add_all(entry: E) -> E:
            for op in ops:
                self.add(op, entry)
            return entry

        return add_all

    def skip(self, op: str, why: str) -> None:
        """State why ``op`` has no entry (the completeness test accepts a stated reason)."""
        self._check_new(op)
        self.skipped[op] = why

    def _check_new(self, op: str) -> None:
        if op not in OPS:
            hint = did_you_mean(op, OPS)
            raise RegistryError(f"{self.what} for '{op}', which is not an op" + (f" ({hint})" if hint else ""))
        if op in self._entries or op in self.skipped:
            raise RegistryError(f"{self.what} for '{op}' given twice")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.what}: {len(self)} ops, {len(self.skipped)} skipped>"
