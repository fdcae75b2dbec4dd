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

A long network or block (one piece of thousands of lines) is cut again, at
its statements (``_split``): its header and closing line are parsed as an
item with an empty body, and each run of statements on its own inside a
stand-in header, so that an edit re-parses only the statements around it.
A cut is made only where the whole parse must end a statement (brackets
closed, the line before ends an operand or a ``}``, the line starts a
statement); every piece parsing alone is then the whole parse, as for items.
"""
from __future__ import annotations

import functools
import re
from collections import OrderedDict
from dataclasses import replace

from convdsl.errors import ConvDSLError, Span, remember_source
from convdsl.lang import ast
from convdsl.lang.parser import parse
from convdsl.lsp.tokens import Tok, lex

ITEM_START = re.compile(r"(import|block|network|def)\b|[A-Za-z_][A-Za-z0-9_]*[ \t]*=(?!=)")
MAX_PIECES = 4096  # cached pieces, over all files
SPLIT_LINES = 80  # an item longer than this is cut at its statements
SEGMENT_LINES = 40  # statements are parsed in runs of about this many lines
STAND_IN = "network __piece__() {"  # the header a run of statements is parsed inside
# a cut before a line: the line before ends with one of these, the line starts with one of those
_ENDS = {"NAME", "INT", "FLOAT", "STRING", "RPAR", "RSQB", "TRUE", "FALSE", "NONE", "RBRACE"}
_STARTS = {"NAME", "RETURN", "FOR", "REPEAT", "IF", "ASSERT"}


class PieceCache:
    def __init__(self) -> None:
        self.pieces: OrderedDict[tuple, tuple] = OrderedDict()

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
            hit = self._get(key)
            if hit is None:
                hit = self._split(lines, first, stop, offsets, path) if stop - first > SPLIT_LINES else None
                if hit is None:
                    hit = self._piece(lines, first, stop, offsets, path)
                if hit is _FAILED:
                    remember_source(path, text)
                    return None
                self._put(key, hit)
            items += hit[0]
            comments += hit[1]
            tokens += hit[2]
        remember_source(path, text)  # the pieces each remembered themselves as the file
        return ast.Program(items, path, comments), tokens

    def _get(self, key: tuple):
        hit = self.pieces.get(key)
        if hit is not None:
            self.pieces.move_to_end(key)
        return hit

    def _put(self, key: tuple, value) -> None:
        self.pieces[key] = value
        if len(self.pieces) > MAX_PIECES:
            self.pieces.popitem(last=False)

    def _piece(self, lines: list[str], first: int, stop: int, offsets: list[int], path: str):
        """Items, comments and tokens of ``lines[first:stop]``, parsed alone (``_FAILED``: it does not parse)."""
        padded = "\n" * first + "\n".join(lines[first:stop])
        raw: list = []
        try:
            program = parse(padded, path, tokens=raw)
        except (ConvDSLError, RecursionError):
            return _FAILED
        toks = _toks(raw, first, None, offsets[first] - first)  # the padding's newline token goes
        _close_last_item(program.items, path, _end_line(lines, toks, stop))
        return program.items, program.comments, toks

    def _split(self, lines: list[str], first: int, stop: int, offsets: list[int], path: str):
        """The one item of ``lines[first:stop]`` parsed as a header and runs of statements: None when it
        cannot be cut (not one network or block of many statements), ``_FAILED`` when a run does not parse."""
        cut = _statement_cuts(lines, first, stop)
        if cut is None:
            return None
        body, runs, close = cut
        # the header and the closing line, around an empty body
        skeleton = "\n".join(lines[first:body] + [""] * (close - body) + lines[close:stop])
        key = ("skeleton", path, first, skeleton)
        head = self._get(key)
        if head is None:
            try:
                program = parse("\n" * first + skeleton, path)
            except (ConvDSLError, RecursionError):
                return _FAILED
            if len(program.items) != 1 or program.items[0].body:
                return None
            head = (program.items[0], program.comments,
                    _lex_lines(lines, first, body, offsets, follow=True), _lex_lines(lines, close, stop, offsets, False))
            self._put(key, head)
        item, head_comments, head_toks, close_toks = head
        statements: list = []
        comments = [c for c in head_comments if c[0] <= body]
        toks = list(head_toks)
        for a, b in zip(runs, runs[1:] + [close]):
            run = self._run(lines, a, b, offsets, path)
            if run is None or run is _FAILED:
                return run
            statements += run[0]
            comments += run[1]
            toks += run[2]
        comments += [c for c in head_comments if c[0] > close]
        toks += close_toks
        whole = replace(item, body=statements)
        _close_last_item([whole], path, _end_line(lines, toks, stop))
        return [whole], comments, toks

    def _run(self, lines: list[str], a: int, b: int, offsets: list[int], path: str):
        """The statements of ``lines[a:b]`` (inside a body; line ``b`` starts the next statement or closes
        the body), parsed inside a stand-in header, and closed where line ``b`` starts: every statement
        ends where the whole parse ends it."""
        text = "\n".join(lines[a:b])
        indent = _indent(lines[b])
        key = ("run", path, a, text, indent)
        hit = self._get(key)
        if hit is None:
            head = "\n" * (a - 1) + STAND_IN + "\n"
            raw: list = []
            try:
                program = parse(head + text + "\n" + indent + "}", path, tokens=raw)
            except (ConvDSLError, RecursionError):
                return _FAILED
            if [getattr(it, "name", None) for it in program.items] != ["__piece__"]:
                return None
            # the tokens of lines[a:b]: the stand-in's go, the last newline runs on to where line b starts
            hit = (program.items[0].body, program.comments, _toks(raw, a, b, offsets[a] - len(head)))
            self._put(key, hit)
        return hit


_FAILED = ([], [], [])  # a piece that does not parse alone


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" \t\f"))]


def _toks(raw: list, after: int, upto: int | None, shift: int) -> list[Tok]:
    """The lexer's tokens that start on lines ``after + 1`` to ``upto`` (1-based), as ``Tok``s with
    their offsets moved by ``shift`` (as ``convdsl.lsp.tokens.lex`` makes them)."""
    return [Tok(t.type, str(t), t.line, t.column, t.end_line, t.end_column, t.start_pos + shift)
            for t in raw if t.line > after and (upto is None or t.line <= upto)]


def _lex_lines(lines: list[str], a: int, b: int, offsets: list[int], follow: bool) -> list[Tok]:
    """The tokens of ``lines[a:b]`` as lexing the whole file gives them: with ``follow``, the newline
    token at the end runs on to where line ``b`` starts (the padding's newline token goes)."""
    text = "\n" * a + "\n".join(lines[a:b]) + ("\n" + _indent(lines[b]) if follow else "")
    return [replace(t, offset=t.offset - a + offsets[a]) for t in lex(text) if t.line > a]


@functools.lru_cache(maxsize=1 << 16)
def _line_types(line: str) -> tuple[str, ...]:
    """Token types of one line (tokens never span lines; comments and newlines dropped)."""
    return tuple(t.type for t in lex(line) if t.type != "_NL")


def _statement_cuts(lines: list[str], first: int, stop: int) -> tuple[int, list[int], int] | None:
    """Where a network or graph block filling ``lines[first:stop]`` may be cut: the first line of its
    body, the lines starting each run of statements (the first is the body's), and its closing line
    (a lone ``}``, followed by nothing but blanks and comments).  None when it is not such an item."""
    types = _line_types(lines[first])
    if not types or types[0] not in ("NETWORK", "BLOCK"):
        return None
    braces = brackets = 0
    header_end = close = None
    last = ""
    cuts: list[int] = []
    for i in range(first, stop):
        types = _line_types(lines[i])
        if close is not None:
            if types:
                return None
            continue
        if not types:
            continue
        at_statement = header_end is not None and braces == 1 and brackets == 0
        if at_statement and types == ("RBRACE",):
            if last not in _ENDS:
                return None
            close = i
            continue
        if at_statement and last in _ENDS and types[0] in _STARTS:
            cuts.append(i)
        for t in types:
            if t == "LBRACE":
                braces += 1
            elif t == "RBRACE":
                braces -= 1
            elif t in ("LPAR", "LSQB"):
                brackets += 1
            elif t in ("RPAR", "RSQB"):
                brackets -= 1
        if braces < 0 or brackets < 0:
            return None
        if header_end is None and braces:
            if braces != 1 or brackets or types[-1] != "LBRACE":
                return None
            header_end = i
        last = types[-1]
    if header_end is None or close is None:
        return None
    body = next(i for i in range(header_end + 1, stop) if lines[i].strip())
    runs = [body]
    for c in cuts:
        if c - runs[-1] >= SEGMENT_LINES:
            runs.append(c)
    if len(runs) < 2:
        return None
    return body, runs, close


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
