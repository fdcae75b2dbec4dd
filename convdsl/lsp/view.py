"""What the features see of one file: its text, names, and what elaboration recorded about it.

A file's own analysis elaborates the networks it defines.  A file of blocks
and no network (``examples/blocks/resnet.cdl``) learns its shapes from the
open documents that import it: their analyses recorded the statements of its
blocks too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from convdsl.lang import ast
from convdsl.lsp.analysis import Analysis, NetworkResult, OpNote
from convdsl.lsp.convert import Lines
from convdsl.lsp.index import FileIndex
from convdsl.lsp.recording import Instance, Notes, Pos


@dataclass
class FileView:
    path: str
    text: str
    lines: Lines
    index: FileIndex | None
    analysis: Analysis | None  # the file's own, when it is open
    notes: Notes = field(default_factory=Notes)
    ops: dict[Pos, list[OpNote]] = field(default_factory=dict)
    networks: list[NetworkResult] = field(default_factory=list)

    @property
    def program(self) -> ast.Program | None:
        return self.index.program if self.index is not None else None

    def instances_of(self, block: ast.BlockDef) -> list[Instance]:
        """Instances of the block defined here at ``block``'s position."""
        if block.span is None:
            return []
        return [i for i in self.notes.instances
                if i.file == self.path and i.block.span is not None and i.block.span.line == block.span.line
                and i.block.name == block.name]

    def instances_at(self, line: int, column: int) -> list[Instance]:
        """Instances created by the call written at (line, column) of this file."""
        return [i for i in self.notes.instances if i.call is not None and i.call.file == self.path
                and (i.call.line, i.call.column) == (line, column)]


def build(path: str, text: str, index: FileIndex | None, own: Analysis | None, others: list[Analysis]) -> FileView:
    view = FileView(path, text, Lines(text), index, own)
    sources = [own] if own is not None and _mentions(own, path) else [a for a in others if _mentions(a, path)]
    for a in sources:
        view.notes.merge(a.notes)
        for k, v in a.ops.items():
            if k[0] == path:
                view.ops.setdefault(k, []).extend(v)
    if own is not None:
        view.networks = own.networks
    return view


def _mentions(a: Analysis, path: str) -> bool:
    return any(k[0][0] == path for k in a.notes.values) or any(k[0] == path for k in a.notes.returns) \
        or any(i.file == path for i in a.notes.instances)
