"""Source text -> parse tree -> AST.

The grammar lives in ``grammar/cdl.lark`` (shipped as ``convdsl.grammar``).
A small postlexer decides which newlines end statements, so programs read
like Python without significant indentation.  Raw lark errors are turned into
``CDLSyntaxError`` with a caret and the tokens that were expected.
"""
from __future__ import annotations

import functools
from importlib import resources
from typing import Iterator

from lark import Discard, Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from convdsl.errors import CDLSyntaxError, ConvDSLError, ResourceError, Span, remember_source
from convdsl.lang import ast
from convdsl.lang.limits import MAX_SOURCE

MAX_NESTING = 64  # brackets deeper than this are refused before parsing
# Statements and expressions nested deeper than this (parse-tree levels: `- - - x`, `not not p`,
# `a ** b ** c`, `for` in `for`, ...) are refused after parsing, before any recursive walk: it
# keeps the AST builder, the formatter and the elaborator far from Python's recursion limit.
MAX_DEPTH = 200
MAX_INT_DIGITS = 1000  # longer integer literals are refused (Python refuses str<->int past 4300)
# Tokens of one source: lark's LALR parser with positions takes ~25-100 us a token, so a 4 MiB
# file of "1, 1, 1, ..." (2 million tokens) parsed for minutes.  The largest example has under
# 1,000 tokens; 100,000 parse in a few seconds.
MAX_TOKENS = 100_000

# tokens after which a newline never ends a statement
_CONTINUE_AFTER = {"LPAR", "LSQB", "LBRACE", "COMMA", "VBAR", "EQUAL", "ADDOP", "MULOP", "COMPOP", "COLON",
                   "MORETHAN", "LESSTHAN", "AND", "OR", "NOT", "IF", "ELSE", "IN", "AS", "RETURN", "_NL", "__ANY"}
# tokens that end an operand: a '-' after one of them subtracts
_OPERAND_END = {"NAME", "INT", "FLOAT", "STRING", "RPAR", "RSQB", "TRUE", "FALSE", "NONE"}
# tokens before which a newline is dropped (the line continues the previous one)
_CONTINUE_BEFORE = {"VBAR", "AS", "ELSE", "ELIF", "RBRACE"}

_PRETTY = {
    "_NL": "end of line", "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'",
    "COMMA": "','", "VBAR": "'|'", "EQUAL": "'='", "COLON": "':'", "DOT": "'.'", "ADDOP": "'+' or '-'",
    "MULOP": "'*', '/', '//', '%' or '@'", "COMPOP": "a comparison", "MINUS": "'-'", "$END": "end of file",
    "__ANON_0": "'**'", "STAR": "'*'", "DBLSTAR": "'**'",
}


class _Postlexer:
    """Drop the newlines that do not end a statement; count bracket depth."""

    always_accept = ("_NL",)

    def __init__(self, file: str) -> None:
        self.file = file
        self.pow_type = "__ANON_0"  # lark's name for the "**" terminal; set by _lark()
        self.open: list[Token] = []  # '(' and '[' not yet closed, for the hint of a syntax error
        self.record: list[Token] | None = None  # receives the lexer's tokens (parse(..., tokens=))

    def _merge_pow(self, stream: Iterator[Token]) -> Iterator[Token]:
        """Join two adjacent '*' into '**'.  The basic lexer tries MULOP's
        alternatives before the longer "**" literal, so ``2**3`` arrives as
        two MULOP tokens."""
        star: Token | None = None
        for tok in stream:
            if star is not None:
                if tok.type == "MULOP" and tok == "*" and tok.start_pos == star.end_pos:
                    yield Token(self.pow_type, "**", star.start_pos, star.line, star.column,
                                tok.end_line, tok.end_column, tok.end_pos)
                    star = None
                    continue
                yield star
                star = None
            if tok.type == "MULOP" and tok == "*":
                star = tok
                continue
            yield tok
        if star is not None:
            yield star

    @staticmethod
    def _param_keyword(stream: Iterator[Token]) -> Iterator[Token]:
        """``as param name``: the name ``param`` between ``as`` and a label is the PARAM keyword
        (``as param`` alone, and every other ``param``, stay a name)."""
        prev: Token | None = None
        held: Token | None = None
        for tok in stream:
            if held is not None:
                yield Token.new_borrow_pos("PARAM", "param", held) if tok.type in ("NAME", "STRING") else held
                held = None
            elif tok.type == "NAME" and tok == "param" and prev is not None and prev.type == "AS":
                held = prev = tok
                continue
            yield tok
            prev = tok
        if held is not None:
            yield held

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        if self.record is not None:
            stream = _recorded(stream, self.record)
        stream = self._param_keyword(self._merge_pow(stream))
        self.open = []
        depth = 0
        prev: Token | None = None
        pending: Token | None = None  # a newline waiting to see the next token
        count = 0
        for tok in stream:
            t = tok.type
            count += 1
            if count > MAX_TOKENS:
                raise ResourceError(f"source of more than {MAX_TOKENS:,} tokens", Span(self.file, tok.line, tok.column),
                                    expected=f"at most {MAX_TOKENS:,} names, numbers and symbols in one file",
                                    hint="split the program into files (import), or compute long lists with range()")
            if t == "MINUS" and pending is None and prev is not None and prev.type in _OPERAND_END:
                # lark types every '-' as the unary MINUS (the string literal wins over ADDOP's
                # regexp); after an operand it is the binary operator
                tok = Token.new_borrow_pos("ADDOP", "-", tok)
                t = "ADDOP"
            if t == "_NL":
                if depth > 0 or prev is None or prev.type in _CONTINUE_AFTER or prev.type == self.pow_type:
                    continue
                pending = pending or tok
                continue
            if pending is not None:
                if t in _CONTINUE_BEFORE and t != "RBRACE":
                    pass  # '| stage' / 'as name' / 'else' / 'elif' on the next line continues
                else:
                    yield pending
                    prev = pending
                pending = None
            if t == "RBRACE" and prev is not None and prev.type not in ("_NL", "LBRACE"):
                yield Token.new_borrow_pos("_NL", "\n", tok)
            if t == "INT" and len(tok) > MAX_INT_DIGITS:
                raise ResourceError(f"integer literal of {len(tok):,} digits", Span(self.file, tok.line, tok.column),
                                    expected=f"at most {MAX_INT_DIGITS} digits")
            if t in ("LPAR", "LSQB", "LBRACE"):
                if t != "LBRACE":
                    depth += 1
                    self.open.append(tok)
                if depth > MAX_NESTING:
                    raise ResourceError(
                        f"brackets nested more than {MAX_NESTING} deep",
                        Span(self.file, tok.line, tok.column),
                        hint="split the expression into named values",
                    )
            elif t in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
                if self.open:
                    self.open.pop()
            yield tok
            prev = tok
        if prev is not None and prev.type != "_NL":
            yield Token("_NL", "\n", line=prev.end_line or prev.line, column=(prev.end_column or prev.column))


def _recorded(stream: Iterator[Token], out: list[Token]) -> Iterator[Token]:
    for tok in stream:
        out.append(tok)
        yield tok


def grammar_text() -> str:
    return resources.files("convdsl.grammar").joinpath("cdl.lark").read_text()


@functools.lru_cache(maxsize=None)
def _lark() -> Lark:
    parser = Lark(
        grammar_text(),
        parser="lalr",
        lexer="basic",
        propagate_positions=True,
        maybe_placeholders=True,
        postlex=_Postlexer("<cdl>"),
        cache=True,
    )
    parser.options.postlex.pow_type = next(  # type: ignore[union-attr]
        t.name for t in parser.terminals if t.pattern.value == "**")
    _pass_through(parser)
    return parser


def _pass_through(parser: Lark) -> None:
    """Reduce each one-symbol alternative of a ``?rule`` (``?sum: product``: the precedence chain,
    ~13 reductions for every operand) straight to its child.  lark wraps them like every rule in
    position propagation, which on a lone child that already has its positions changes nothing
    the tree shows; those calls were a fifth of a parse."""
    from lark.parse_tree_builder import ExpandSingleChild, PropagatePositions

    callbacks = parser.parser.parser.parser.callbacks  # the LALR parser's: rule -> reduce function
    for rule, callback in callbacks.items():
        if rule.options.expand1 and not rule.alias and len(rule.expansion) == 1 \
                and isinstance(callback, PropagatePositions) and isinstance(callback.node_builder, ExpandSingleChild):
            callbacks[rule] = _only_child


def _only_child(children: list):
    return children[0]


def _expected(tokens: set[str] | frozenset[str]) -> str:
    words = sorted({_PRETTY.get(t, f"'{t.lower()}'" if t.isupper() and len(t) < 9 else t) for t in tokens})
    if len(words) > 8:
        words = words[:8] + ["..."]
    return ", ".join(words)


def _parse_tree(text: str, file: str, record: list[Token] | None = None):
    parser = _lark()
    parser.options.postlex.file = file  # type: ignore[union-attr]
    parser.options.postlex.record = record  # type: ignore[union-attr]
    comments: list[tuple[int, int, str]] = []
    try:
        tree = parser.parse(text, on_error=None)
    except UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if e.pos_in_stream is not None and e.pos_in_stream < len(text) else "?"
        hint = "strings use double quotes" if ch == "'" else "comments start with '#'" if ch in "/;" else None
        raise CDLSyntaxError(f"unexpected character {ch!r}", Span(file, e.line, e.column),
                             expected="names, numbers, \"strings\", operators, brackets or # comments",
                             got=repr(ch), hint=hint) from None
    except UnexpectedToken as e:
        tok = e.token
        got = "end of line" if tok.type == "_NL" else "end of file" if tok.type == "$END" else repr(str(tok))
        hint = _token_hint(e)
        line = tok.line if tok.line is not None else 1
        col = tok.column if tok.column is not None else 1
        opened = parser.options.postlex.open  # type: ignore[union-attr]
        if hint is None and opened and opened[-1].line != line:
            b = opened[-1]
            hint = f"the '{b}' at line {b.line}, column {b.column} is not closed"
        raise CDLSyntaxError(f"unexpected {got}", Span(file, line, col, tok.end_line, tok.end_column),
                             expected=_expected(e.accepts or e.expected), got=got, hint=hint) from None
    except UnexpectedEOF as e:
        lines = text.split("\n")
        raise CDLSyntaxError("unexpected end of file", Span(file, len(lines), len(lines[-1]) + 1),
                             expected=_expected(set(e.expected))) from None
    except UnexpectedInput as e:  # pragma: no cover - other lark errors
        raise CDLSyntaxError(str(e).splitlines()[0], Span(file, getattr(e, "line", 1), getattr(e, "column", 1))) from None
    finally:
        parser.options.postlex.record = None  # type: ignore[union-attr]
    return tree, comments


def _token_hint(e: UnexpectedToken) -> str | None:
    tok = e.token
    accepts = e.accepts or e.expected
    if tok.type == "EQUAL" and "COMPOP" in accepts:
        return "use '==' to compare"
    if tok.type == "_NL" and "RPAR" in accepts:
        return "a '(' is not closed"
    if tok.type == "RBRACE":
        return "a statement is incomplete before '}'"
    if tok.type == "LBRACE" and "EQUAL" in accepts:
        return "blocks with a body name their inputs: block f(c)(x) { ... }"
    if str(tok) in ("elif", "else"):
        return f"'{tok}' must follow the '}}' of an if"
    return None


def parse(text: str, file: str = "<string>", *, show_lines: bool = True,
          tokens: list[Token] | None = None) -> ast.Program:
    """Parse CDL source text into an ``ast.Program``.

    Errors show the offending source line.  With ``show_lines=False`` (an imported file, which
    could be any file on the machine) lines are shown only once the whole file parsed as CDL,
    so an error never prints a line of a file that is not CDL.  ``tokens`` receives every token
    the lexer made, newlines included, before any is dropped or joined (the language server
    needs them all, and lexing twice costs as much as a third of the parse)."""
    if len(text) > MAX_SOURCE:
        raise ResourceError(f"source is larger than {MAX_SOURCE // 1024 // 1024} MiB", Span(file, 1, 1))
    if show_lines:
        remember_source(file, text)
    comments = _comments(text)
    tree, _ = _parse_tree(text, file, tokens)
    _check_depth(tree, file)
    program = _build(_builder(file, True), tree, file)
    program.comments = comments
    if not show_lines:
        remember_source(file, text)
    return program


@functools.lru_cache(maxsize=64)
def _builder(file: str, labels: bool) -> ast.ASTBuilder:
    """The AST builder of ``file`` (it holds nothing else), made once: the language server parses
    a file in pieces, each parse of a piece would set one up again."""
    return ast.ASTBuilder(file, functools.partial(parse_expr, file=file) if labels else None)


_DEEP_HINT = "split deeply nested expressions or bodies into named values, defs or blocks"


def _check_depth(tree: Tree, file: str) -> None:
    """Refuse a parse tree deeper than ``MAX_DEPTH``, at the first node past the limit (walked
    with an explicit stack: this check itself never recurses)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            line, column = _position(node)
            raise ResourceError(f"nested more than {MAX_DEPTH} levels deep", Span(file, line, column),
                                hint=_DEEP_HINT)
        stack.extend((c, depth + 1) for c in reversed(node.children) if isinstance(c, Tree))


def _position(node: Tree) -> tuple[int, int]:
    """Line and column where ``node`` starts (its first token when lark kept no position)."""
    while True:
        meta = node.meta
        if not getattr(meta, "empty", True):
            return meta.line, meta.column
        first = next((c for c in node.children if c is not None), None)
        if isinstance(first, Token):
            return first.line or 1, first.column or 1
        if not isinstance(first, Tree):
            return 1, 1
        node = first


def _build(builder: ast.ASTBuilder, tree, file: str) -> ast.Program:
    """Run the AST builder, re-raising the user error that lark wraps in
    ``VisitError`` (twice over for a label expression parsed inside a label)."""
    try:
        return _transform(builder, tree)
    except VisitError as e:
        orig: BaseException = e
        while isinstance(orig, VisitError):
            orig = orig.orig_exc
        if isinstance(orig, ConvDSLError):
            raise orig from None
        if isinstance(orig, RecursionError):
            raise ResourceError("program nested too deeply to parse", Span(file, 1, 1), hint=_DEEP_HINT) from None
        raise
    except RecursionError:
        raise ResourceError("program nested too deeply to parse", Span(file, 1, 1), hint=_DEEP_HINT) from None


def _transform(builder: ast.ASTBuilder, tree: Tree):
    """``builder.transform(tree)``: the same methods called in the same order (children first, left
    to right) with the same (meta, children), without lark's generator and method lookups per node
    (a sixth of a parse)."""
    rules = builder.rules

    def walk(t: Tree):
        children = []
        for c in t.children:
            if isinstance(c, Tree):
                c = walk(c)
                if c is Discard:
                    continue
            children.append(c)
        f = rules.get(t.data)
        return builder.__default__(t.data, children, t.meta) if f is None else f(t.meta, children)

    return walk(tree)


def parse_expr(text: str, span: Span | None = None, file: str = "<string>") -> ast.Expr:
    """Parse one expression (used for the ``{expr}`` parts of labels)."""
    if "\n" in text:
        raise CDLSyntaxError("a label expression must fit on one line", span)
    try:
        tree, _ = _parse_tree("_ = " + text, span.file if span else file)
    except CDLSyntaxError as e:
        e.span = span or e.span
        raise
    program = _build(_builder(span.file if span else file, False), tree, span.file if span else file)
    if len(program.items) != 1 or not isinstance(program.items[0], ast.ConstDef):
        raise CDLSyntaxError(f"not an expression: {text!r}", span)
    expr = program.items[0].value
    _respan(expr, span)
    return expr


def _respan(node, span) -> None:
    """Give an expression parsed from inside a string the string's span."""
    if span is None or not hasattr(node, "__dataclass_fields__"):
        return
    stack = [node]
    while stack:
        n = stack.pop()
        if hasattr(n, "span"):
            n.span = span
        for f in getattr(n, "__dataclass_fields__", {}):
            v = getattr(n, f)
            items = v if isinstance(v, list) else [v]
            for it in items:
                if isinstance(it, tuple):
                    stack.extend(x for x in it if hasattr(x, "__dataclass_fields__"))
                elif hasattr(it, "__dataclass_fields__"):
                    stack.append(it)


def _comments(text: str) -> list[tuple[int, int, str]]:
    """(line, column, text) of every comment: scanned here because the lexer
    drops them; strings are skipped so a '#' inside quotes is not a comment."""
    out: list[tuple[int, int, str]] = []
    if "#" not in text:
        return out
    for lineno, line in enumerate(text.split("\n"), 1):  # lark's lines: splitlines() also breaks at \x1e, \u2028...
        if "#" not in line:  # (the language server parses pieces padded with thousands of empty lines)
            continue
        in_str = False
        i = 0
        while i < len(line):
            c = line[i]
            if in_str:
                if c == "\\":
                    i += 1
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c == "#":
                out.append((lineno, i + 1, line[i:].rstrip()))
                break
            i += 1
    return out
