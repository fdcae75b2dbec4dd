"""Parse a file item by item, reusing the items whose text did not change.

An edit usually touches one top-level item; parsing the whole file again is
most of the cost of an edit to a long file.  Here the file is cut before
every line that starts a top-level item (a keyword or ``NAME =`` at column
1), each piece is parsed on its own by the compiler's parser — padded with
newlines so that every line and column is the one of the whole file — and
cached by (first line, text).  The pieces' items and comments, joined, are
the program the whole-file parse gives.  When a piece does not parse (a
syntax error, or a cut that fell inside a multi-line construct), the caller
parses the whole file instead, so errors are always the whole-file parse's.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace

from convdsl.errors import ConvDSLError, Span, remember_source
from convdsl.lang import ast
from convdsl.lang.parser import parse
from convdsl.lsp.tokens import Tok, lex

ITEM_START = re.compile(r"(import|block|network|def)\b|[A-Za-z_][A-Za-z0-9_]*[ \t]*=(?!=)")
MAX_PIECES = 4096  # cached pieces, over all files


class PieceCache:
    def __init__(self) -> None:
        self.pieces: OrderedDict[tuple[str, int, str], tuple[list, list, list[Tok]]] = OrderedDict()

    def parse(self, text: str, path: str) -> tuple[ast.Program, list[Tok]] | None:
        """The program and tokens of ``text``, or None when some piece does not parse alone."""
        lines = text.split("\n")
        starts = [i for i, ln in enumerate(lines) if ITEM_START.match(ln)]
        if not starts or starts[0] != 0:
            starts.insert(0, 0)
        starts.append(len(lines))
        items: list = []
        comments: list = []
        tokens: list[Tok] = []
        offsets = [0]
        for ln in lines:
            offsets.append(offsets[-1] + len(ln) + 1)
        for first, stop in zip(starts, starts[1:]):
            piece = "\n".join(lines[first:stop])
            key = (path, first, piece)
            hit = self.pieces.get(key)
            if hit is None:
                padded = "\n" * first + piece
                try:
                    program = parse(padded, path)
                except (ConvDSLError, RecursionError):
                    remember_source(path, text)
                    return None
                toks = [replace(t, offset=t.offset - first + offsets[first]) for t in lex(padded)
                        if t.line > first]  # the padding's newline token goes
                _close_last_item(program.items, path, _end_line(lines, toks, stop))
                hit = (program.items, program.comments, toks)
                self.pieces[key] = hit
                if len(self.pieces) > MAX_PIECES:
                    self.pieces.popitem(last=False)
            else:
                self.pieces.move_to_end(key)
            items += hit[0]
            comments += hit[1]
            tokens += hit[2]
        remember_source(path, text)  # the pieces each remembered themselves as the file
        return ast.Program(items, path, comments), tokens


def _end_line(lines: list[str], toks: list[Tok], stop: int) -> int | None:
    """Where a whole-file parse ends a piece's last item: the next line after its last token that is
    not blank (a comment, or the next item); None at the end of the file."""
    if stop >= len(lines):
        return None
    last = max((t.end_line for t in toks if t.type != "_NL"), default=0)
    for n in range(last + 1, stop + 1):  # 1-based lines
        if lines[n - 1].strip():
            return n
    return stop + 1


def _close_last_item(items: list, path: str, next_line: int | None) -> None:
    """The last item of a piece ends where the next piece starts (as in a whole-file parse)."""
    if not items or next_line is None:
        return
    last = items[-1]
    if last.span is not None and last.span.end_line is None:
        last.span = Span(path, last.span.line, last.span.column, next_line, 1)
        if hasattr(last, "end_line") and not last.end_line:
            last.end_line = next_line
