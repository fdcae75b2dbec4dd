"""Lowering tables: for each backend, op name -> how to emit that op.

An op defined in ``convdsl/ir/ops/<family>.py`` is lowered, for each backend,
in ``backends/<backend>/lower_<family>.py``.  A family file makes its own
``Lowerings(backend, family)``, adds its entries to it (``add``, or the
``register`` decorator) and imports only its backend's ``common.py`` and the
core; the backend's ``lowering.py`` joins the family tables, listed there,
into one ``LoweringTable``.  No module adds entries to another module's
table, so importing a family file has no effect elsewhere and there are no
import cycles.

Checked while the tables are built (``RegistryError``): an op lowered twice,
an entry for an op that does not exist, and an op lowered in another family's
file.  ``LoweringTable.missing()`` names the ops with neither an entry nor a
stated reason (``Lowerings.skip(op, why)``); tests/test_op_registry.py runs it
for every backend.  Any backend (torch, tvm, and the ONNX exporter) uses these
two classes; the entry type is the backend's own.
"""
from __future__ import annotations

from typing import Iterable, TypeVar

from convdsl.errors import LoweringError
from convdsl.ir.graph import Node
from convdsl.ir.ops import FAMILY
from convdsl.ir.registry import OpMapping, OpTable, RegistryError

E = TypeVar("E")


class Lowerings(OpTable[E]):
    """The entries of one family file: ``backends/<backend>/lower_<family>.py``."""

    def __init__(self, backend: str, family: str) -> None:
        super().__init__(f"{backend} lowering (backends/{backend}/lower_{family}.py)")
        self.backend, self.family = backend, family

    def _check_new(self, op: str) -> None:
        super()._check_new(op)
        home = FAMILY[op]
        if home != self.family:
            raise RegistryError(f"'{op}' is defined in convdsl/ir/ops/{home}.py: its {self.backend} lowering "
                                f"belongs in backends/{self.backend}/lower_{home}.py, not lower_{self.family}.py")


class LoweringTable(OpMapping[E]):
    """One backend's lowering table, joined from its family files' ``Lowerings``."""

    def __init__(self, backend: str, families: Iterable[Lowerings[E]]) -> None:
        super().__init__()
        self.backend = backend
        self.family_of: dict[str, str] = {}
        for fam in families:
            if fam.backend != backend:
                raise RegistryError(f"the {backend} table was given {fam.what}")
            for op in [*fam, *fam.skipped]:
                if op in self.family_of:  # a family file listed twice
                    raise RegistryError(f"{backend} lowering for '{op}' given twice")
                self.family_of[op] = fam.family
            self._entries.update(fam.items())
            self.skipped.update(fam.skipped)

    def without(self, *ops: str) -> "LoweringTable[E]":
        """A copy of the table without the entries of ``ops`` (what a forgotten lowering looks like)."""
        out: LoweringTable[E] = LoweringTable(self.backend, [])
        out._entries = {op: e for op, e in self._entries.items() if op not in ops}
        out.skipped, out.family_of = dict(self.skipped), {op: f for op, f in self.family_of.items() if op not in ops}
        return out

    def replacing(self, op: str, entry: E) -> "LoweringTable[E]":
        """A copy of the table with ``op``'s entry replaced (a deliberately broken lowering, in tests)."""
        if op not in self._entries:
            raise RegistryError(f"{self.backend} has no lowering for '{op}' to replace")
        out = self.without()
        out._entries[op] = entry
        return out

    def lookup(self, node: Node, target: str | None = None) -> E:
        """The entry for ``node``'s op; a located ``LoweringError`` naming the supported ops if none."""
        entry = self._entries.get(node.op)
        if entry is None:
            why = self.skipped.get(node.op)
            message = f"op '{node.op}' has no lowering for the {target or self.backend} backend"
            raise LoweringError(
                message + (f": {why}" if why else ""),
                node.span, hint="supported ops: " + ", ".join(sorted(self._entries)), notes=[f"node {node.id}"],
            )
        return entry

    def __repr__(self) -> str:
        return f"<LoweringTable {self.backend}: {len(self)} ops, {len(self.skipped)} skipped>"
