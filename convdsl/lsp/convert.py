"""Positions between the compiler and LSP.

The compiler counts 1-based lines and 1-based columns in characters (code
points); LSP counts 0-based lines and 0-based columns in UTF-16 code units.
"""
from __future__ import annotations

from lsprotocol import types as lsp

from convdsl.errors import Span
from convdsl.ir.optable import format_value
from convdsl.ir.stats import human_count
from convdsl.ir.types import TensorType


class Lines:
    """The lines of one text, for converting columns."""

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")  # the lexer counts '\n' only

    def text(self, line: int) -> str:
        """1-based line, '' past the end."""
        return self.lines[line - 1] if 1 <= line <= len(self.lines) else ""

    def position(self, line: int, column: int) -> lsp.Position:
        """1-based (line, column) -> LSP position, clamped to the text."""
        line = max(1, min(line, len(self.lines)))
        text = self.lines[line - 1]
        col = max(0, min(column - 1, len(text)))
        return lsp.Position(line - 1, _utf16_len(text[:col]))

    def end_of_line(self, line: int) -> lsp.Position:
        return self.position(line, len(self.text(line).rstrip("\r")) + 1)

    def from_lsp(self, p: lsp.Position) -> tuple[int, int]:
        """LSP position -> 1-based (line, column)."""
        line = min(p.line + 1, len(self.lines))
        text = self.lines[line - 1] if line >= 1 else ""
        units, col = 0, 0
        while col < len(text) and units < p.character:
            units += 2 if ord(text[col]) > 0xFFFF else 1
            col += 1
        return line, col + 1

    def range(self, span: Span) -> lsp.Range:
        """The range a span covers; a span without an end covers the word (or character) at its start."""
        start = self.position(span.line, span.column)
        if span.end_line is not None and span.end_column is not None and \
                (span.end_line, span.end_column) > (span.line, span.column):
            if span.end_column == 1 and span.end_line > span.line:  # a statement's span ends after its newlines
                last = span.end_line - 1
                while last > span.line and not self.text(last).strip():
                    last -= 1
                end = self.end_of_line(last)
            else:
                end = self.position(span.end_line, span.end_column)
        else:
            text = self.text(span.line)
            i = span.column - 1
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                j += 1
            end = self.position(span.line, (j if j > i else i + 1) + 1)
        return lsp.Range(start, end)


def _utf16_len(s: str) -> int:
    return sum(2 if ord(c) > 0xFFFF else 1 for c in s)


def type_text(t: TensorType | tuple | list) -> str:
    if isinstance(t, TensorType):
        return str(t)
    return "(" + ", ".join(type_text(x) for x in t) + ")"


def types_summary(types: list) -> str:
    """Types a statement produced over all its runs: one, two, or first ... last."""
    distinct: list[str] = []
    for t in types:
        s = type_text(t)
        if s not in distinct:
            distinct.append(s)
    if not distinct:
        return ""
    if len(distinct) <= 2:
        return " | ".join(distinct)
    return f"{distinct[0]} … {distinct[-1]} ({len(distinct)} shapes)"


def value_text(v) -> str:
    """A value a parameter was bound to, as CDL would write it."""
    if isinstance(v, TensorType) or (isinstance(v, tuple) and v and all(isinstance(x, TensorType) for x in v)):
        return type_text(v)
    if hasattr(v, "args") and hasattr(v, "name"):  # a layer: an op or block, maybe with arguments
        return v.name if not v.args and not getattr(v, "kwargs", ()) else f"{v.name}(…)"
    return format_value(v)


def cost_text(params: int, macs: int) -> str:
    return f"{params:,} params · {human_count(macs, 'MACs')}"
