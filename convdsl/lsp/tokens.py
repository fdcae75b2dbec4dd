"""The token stream of a CDL text, as the compiler's own lexer sees it.

The language server needs tokens where the parser gives up: completion runs
on half-typed text, and names have to be found with their exact columns.
This lexes with the grammar of ``convdsl.grammar`` (the same terminals as
``convdsl.lang.parser``, without its postlexer, so every newline and bracket
is kept) and never fails: a character the grammar has no token for is
skipped, an unterminated string ends at its line.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from lark import Lark
from lark.exceptions import UnexpectedCharacters
from lark.lexer import LexerThread

from convdsl.lang.parser import grammar_text

MAX_SKIPS = 200  # characters the lexer may skip before the rest of the text is given up

KEYWORDS = ("import", "block", "network", "def", "for", "in", "repeat", "if", "elif", "else", "assert", "return",
            "as", "and", "or", "not", "true", "false", "none")


@dataclass(frozen=True)
class Tok:
    """One token: 1-based line and column, like ``Span``; the end column is exclusive."""

    type: str  # the grammar's terminal name: NAME, INT, STRING, LPAR, _NL, BLOCK ...
    text: str
    line: int
    column: int
    end_line: int
    end_column: int
    offset: int  # character offset of the start in the text

    def contains(self, line: int, column: int) -> bool:
        """Is (line, column) on this token, its end included (the cursor after a word is on it)?"""
        return self.line == line and self.column <= column <= self.end_column


@functools.lru_cache(maxsize=None)
def _lexer() -> Lark:
    return Lark(grammar_text(), parser="lalr", lexer="basic", propagate_positions=True, cache=True)


def lex(text: str) -> list[Tok]:
    """Every token of ``text`` (comments and blanks dropped, newlines kept as ``_NL``)."""
    lexer = _lexer().parser.lexer  # built once (Lark.lex builds a new lexer on every call)
    work = text
    for _ in range(MAX_SKIPS):
        out: list[Tok] = []
        try:
            for t in LexerThread.from_text(lexer, work).lex(None):
                out.append(Tok(t.type, str(t), t.line, t.column, t.end_line, t.end_column, t.start_pos))
            return out
        except UnexpectedCharacters as e:
            pos = e.pos_in_stream
            # blank the offending character (a lone quote: the rest of its line) and lex again
            end = pos + 1
            if work[pos] == '"':
                nl = work.find("\n", pos)
                end = len(work) if nl < 0 else nl
            work = work[:pos] + "".join(c if c == "\n" else " " for c in work[pos:end]) + work[end:]
    return out


def names(tokens: list[Tok]) -> list[Tok]:
    return [t for t in tokens if t.type == "NAME"]


def at(tokens: list[Tok], line: int, column: int) -> Tok | None:
    """The NAME, STRING or number token under a 1-based position (a word touching the cursor wins)."""
    best = None
    for t in tokens:
        if t.line > line:
            break
        if t.contains(line, column) and t.type != "_NL":
            if best is None or t.type == "NAME":
                best = t
    return best


def index_at(tokens: list[Tok], line: int, column: int) -> int:
    """Index of the first token that starts at or after (line, column)."""
    lo, hi = 0, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        t = tokens[mid]
        if (t.line, t.column) < (line, column):
            lo = mid + 1
        else:
            hi = mid
    return lo
