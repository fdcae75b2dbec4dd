"""Formatting through the compiler's canonical formatter (``convdsl fmt``)."""
from __future__ import annotations

from lsprotocol import types as lsp

from convdsl.errors import ConvDSLError
from convdsl.lang.format import format_source
from convdsl.lsp.convert import Lines


def format_document(text: str, path: str) -> list[lsp.TextEdit] | None:
    """One edit replacing the whole text, [] when it is already formatted, None when it does not parse."""
    try:
        out = format_source(text, path)
    except (ConvDSLError, RecursionError):
        return None
    if out == text:
        return []
    lines = Lines(text)
    end = lines.end_of_line(len(lines.lines))
    return [lsp.TextEdit(lsp.Range(lsp.Position(0, 0), end), out)]
