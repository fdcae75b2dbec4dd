"""The canonical CDL formatter (``convdsl fmt``), in the gofmt habit.

``format_program`` prints an ``ast.Program`` back as CDL text in one canonical
layout; ``format_source`` parses then prints.  Two properties are tested:
``parse(format_source(t)) == parse(t)`` and ``format_source`` is idempotent.

Layout: 4-space indents, one blank line between top-level items (runs of
imports or of constants keep the source's choice), at most one blank line
between statements, minimal parentheses, and lines of at most ``MAX_WIDTH``
(100) columns, a trailing comment included when breaking makes room for it.
Only a name, number, string or comment longer than a line passes the width.
A line that would pass it breaks where the grammar continues a line:

* a pipe: its stages keep the lines the source gave them (``conv | batchnorm |
  relu`` on a line stays one), a line too long is filled again, continuation
  lines start with ``|`` under the first one (one indent deeper when the first
  line holds the first stage only; ``block f(c) =`` and ``def f(c) =`` then
  start the pipe on the next line); a stage with a comment ends its line;
* a ``network``, ``block`` or ``def`` signature wraps its parameters, as many
  per line as fit, aligned after the ``(``;
* a list assigned to a name gets one item per line (a table);
* anything else, and a stage or item still too long, breaks inside as
  ``exprfmt.Breaker`` says: call arguments and list items filled after the
  bracket (or on a line of their own one indent deeper, or one per line with a
  trailing comma), operator chains after an operator, conditionals after
  ``else``, ``return a, b`` and ``assert c, "message"`` after the comma.

Comments come from ``Program.comments`` (line, column, text).  The AST keeps
where statements start but not where a ``}`` or an ``else`` sits, so comments
are placed by position and indentation (see ``_CommentPlacer``):

* a comment on its own line leads the statement or item that follows it; after
  the last statement of a body it stays inside the body (before ``}``) when it
  is indented deeper than the statement that opened the body;
* a comment on a statement's lines trails the statement (two spaces, ``#``),
  or its pipe stage when each stage has at most one; one on a ``{`` header
  line trails the header;
* a comment on a ``}`` line is treated as if on its own line before the ``}``,
  and one between an if-branch and ``else`` goes to the top of the else body.

Every comment is printed exactly once and in source order.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence, Union

from convdsl.ir.optable import quote
from convdsl.lang import ast, limits
from convdsl.lang.exprfmt import Breaker, Prec, Piece, format_expr, pipe_stages
from convdsl.lang.parser import MAX_DEPTH, parse

INDENT = "    "
MAX_WIDTH = 100
_FRAMES_PER_LEVEL = 12  # Python frames the printer and the line breaker take per level of an expression

Node = Union[ast.Item, ast.Stmt]


def format_source(text: str, file: str = "<string>", width: int = MAX_WIDTH) -> str:
    """Parse CDL text and print it in canonical form."""
    return format_program(parse(text, file), width)


def format_program(program: ast.Program, width: int = MAX_WIDTH) -> str:
    """Print a program in canonical form, with its comments, in lines of at most ``width``
    columns where a line can break (the canonical form is ``MAX_WIDTH``; tests use others)."""
    notes = _CommentPlacer().place(program)
    with _stack_room():
        return _Printer(notes, width).program(program)


def _stack_room():
    """Room for breaking an expression nested as deep as the parser allows (``MAX_DEPTH``
    levels, a few Python frames each)."""
    return limits.stack_room(_FRAMES_PER_LEVEL * MAX_DEPTH)


# ---- where each comment goes --------------------------------------------------
class Comment(NamedTuple):
    line: int
    col: int
    text: str


@dataclass
class Notes:
    """Comments by place; keys are ``id()`` of statements or of body lists."""

    leading: dict[int, list[Comment]] = field(default_factory=dict)  # own lines before a statement
    trailing: dict[int, Comment] = field(default_factory=dict)  # end of a simple statement's last line
    stages: dict[int, dict[int, Comment]] = field(default_factory=dict)  # end of a pipe stage's line, by index
    header: dict[int, Comment] = field(default_factory=dict)  # end of the `{` line opening a body
    closing: dict[int, list[Comment]] = field(default_factory=dict)  # own lines before a body's `}`
    end: list[Comment] = field(default_factory=list)  # after the last item


class _At(NamedTuple):
    """A place in the source that is not a node of its own (an assert's message)."""

    span: object


def _pos(node: object) -> tuple[int, int]:
    span = getattr(node, "span", None)
    return (span.line, span.column) if span is not None else (0, 0)


def _end_line(node: object) -> int:
    """Last line of an expression or parameter (spans of expressions are exact)."""
    span = getattr(node, "span", None)
    if span is None:
        return 0
    return span.end_line or span.line


def _head_nodes(node: Node) -> list[object]:
    """The expressions and parameters written before a statement's body."""
    match node:
        case ast.Assign() | ast.ConstDef():
            return [node.value]
        case ast.Return():
            return list(node.values)
        case ast.Assert():
            return [node.cond, _At(node.message_span)]
        case ast.For():
            return [node.iter]
        case ast.Repeat():
            return [node.count]
        case ast.If():
            return [node.branches[0][0]]
        case ast.FuncDef():
            return [*node.params, node.body]
        case ast.BlockDef():
            return [*node.params] + ([] if isinstance(node.body, list) else [node.body])
        case ast.NetworkDef():
            return list(node.params)
    return []  # Import: one line


def _head_last_line(node: Node) -> int:
    return max([_pos(node)[0]] + [_end_line(n) for n in _head_nodes(node)])


def _bodies(node: Node) -> list[list[ast.Stmt]]:
    """The statement lists a node encloses in braces (none for a simple statement)."""
    match node:
        case ast.For() | ast.Repeat() | ast.NetworkDef():
            return [node.body]
        case ast.BlockDef() if isinstance(node.body, list):
            return [node.body]
        case ast.If():
            return [body for _, body in node.branches] + ([node.orelse] if node.orelse is not None else [])
    return []


def _inner_starts(node: Node) -> Iterator[tuple[int, int]]:
    """Start of every statement and elif condition nested in ``node``."""
    if isinstance(node, ast.If):
        yield from (_pos(cond) for cond, _ in node.branches[1:])
    for body in _bodies(node):
        for stmt in body:
            yield _pos(stmt)
            yield from _inner_starts(stmt)


class _CommentPlacer:
    def __init__(self) -> None:
        self.notes = Notes()

    def place(self, program: ast.Program) -> Notes:
        comments = sorted(Comment(*c) for c in program.comments)
        self.notes.end = self._body(program.items, comments)
        return self.notes

    def _body(self, stmts: Sequence[Node], comments: list[Comment]) -> list[Comment]:
        """Place the comments that lie within one body; return those after its
        last statement, which the caller puts before the closing `}`."""
        starts = [_pos(s) for s in stmts]
        head: list[list[Comment]] = [[] for _ in stmts]  # on a statement's own lines
        inner: list[list[Comment]] = [[] for _ in stmts]  # inside a statement's braces
        after: list[Comment] = []
        closed = -1  # a comment went past this statement's `}`: later ones cannot go back in
        for c in comments:
            i = bisect_right(starts, (c.line, c.col)) - 1
            if not stmts:
                after.append(c)
            elif i < 0:
                self._leading(stmts[0]).append(c)
            elif c.line <= _head_last_line(stmts[i]):
                head[i].append(c)
            elif _bodies(stmts[i]) and i != closed and self._inside(stmts[i], c):
                inner[i].append(c)
            else:
                closed = i
                (self._leading(stmts[i + 1]) if i + 1 < len(stmts) else after).append(c)
        for stmt, on_head, in_body in zip(stmts, head, inner):
            if _bodies(stmt):
                self._compound(stmt, on_head, in_body)
            elif on_head:
                self._simple(stmt, on_head)
        return after

    def _simple(self, stmt: Node, comments: list[Comment]) -> None:
        """Comments on a simple statement's lines: one per pipe stage when that
        fits, else the last trails the statement and the others move above it
        (given its line, so no blank line opens between)."""
        by_stage = _by_stage(stmt, comments)
        if by_stage is not None:
            self.notes.stages[id(stmt)] = by_stage
            return
        *others, self.notes.trailing[id(stmt)] = comments
        self._leading(stmt).extend(c._replace(line=_pos(stmt)[0]) for c in others)

    @staticmethod
    def _inside(stmt: Node, c: Comment) -> bool:
        """Is a comment after ``stmt``'s header still within its braces?"""
        return c.col > _pos(stmt)[1] or any(start > (c.line, c.col) for start in _inner_starts(stmt))

    def _compound(self, stmt: Node, on_head: list[Comment], in_body: list[Comment]) -> None:
        bodies = _bodies(stmt)
        if on_head:  # the first trails the `{` line, the others open the body
            self.notes.header[id(bodies[0])] = on_head[0]
            in_body = on_head[1:] + in_body
        if not isinstance(stmt, ast.If):
            self.notes.closing[id(bodies[0])] = self._body(bodies[0], in_body)
            return
        # split among the branches by the positions of the elif conditions
        conds = [_pos(cond) for cond, _ in stmt.branches]
        per_branch: list[list[Comment]] = [[] for _ in conds]
        for c in in_body:
            j = max(bisect_right(conds, (c.line, c.col)) - 1, 0)
            cond = stmt.branches[j][0]
            if j > 0 and c.line <= _end_line(cond) and id(bodies[j]) not in self.notes.header:
                self.notes.header[id(bodies[j])] = c
            else:
                per_branch[j].append(c)
        last = len(conds) - 1
        for j, (comments, body) in enumerate(zip(per_branch, bodies)):
            if j < last or stmt.orelse is None:
                self.notes.closing[id(body)] = self._body(body, comments)
                continue
            # `else` has no position: what lies between the last branch's
            # statements and the else body's first one opens the else body
            cut = _first_at_or_after(comments, stmt.orelse)
            carry = self._body(body, comments[:cut]) + comments[cut:]
            self.notes.closing[id(body)] = []
            self.notes.closing[id(stmt.orelse)] = self._body(stmt.orelse, carry)

    def _leading(self, stmt: Node) -> list[Comment]:
        return self.notes.leading.setdefault(id(stmt), [])


def _single_value(node: Node) -> ast.Expr | None:
    """The value of ``x = v``, ``return v``, ``block f() = v``, ``def f() = v``."""
    match node:
        case ast.Assign() | ast.ConstDef():
            return node.value
        case ast.FuncDef():
            return node.body
        case ast.BlockDef() if not isinstance(node.body, list):
            return node.body
        case ast.Return() if len(node.values) == 1:
            return node.values[0]
    return None


def _by_stage(stmt: Node, comments: list[Comment]) -> dict[int, Comment] | None:
    """Comments on the lines of a multi-line pipe, by stage, when each stage
    has at most one and they are not all on the last stage."""
    pipe = _single_value(stmt)
    if not isinstance(pipe, ast.Pipe):
        return None
    starts = [_pos(s) for s in pipe.stages]
    by_stage: dict[int, Comment] = {}
    for c in comments:
        k = max(bisect_right(starts, (c.line, c.col)) - 1, 0)
        if k in by_stage:
            return None
        by_stage[k] = c
    return None if set(by_stage) == {len(starts) - 1} else by_stage


def _first_at_or_after(comments: list[Comment], body: list[ast.Stmt]) -> int:
    """Index of the first comment at or after the first statement of ``body``."""
    if not body:
        return len(comments)
    start = _pos(body[0])
    return next((i for i, c in enumerate(comments) if (c.line, c.col) >= start), len(comments))


# ---- statements and items -----------------------------------------------------
class _Printer:
    def __init__(self, notes: Notes, width: int) -> None:
        self.notes = notes
        self.width = width
        self.breaker = Breaker(width)

    def program(self, program: ast.Program) -> str:
        lines: list[str] = []
        prev: Node | None = None
        prev_end: int | None = None
        for item in program.items:
            group = self.notes.leading.get(id(item), [])
            first_line = group[0].line if group else _pos(item)[0]
            if prev is not None and (not _same_run(prev, item) or _gap(prev_end, first_line)):
                lines.append("")
            lines += self._comments(group, "", None)
            if group and _gap(group[-1].line, _pos(item)[0]):
                lines.append("")
            lines += self._node(item, "")
            prev, prev_end = item, self._src_end(item)
        lines += self._comments(self.notes.end, "", prev_end)
        return "".join(line + "\n" for line in lines)

    def _comments(self, comments: list[Comment], indent: str, prev_end: int | None) -> list[str]:
        """Own-line comments, keeping one blank line where the source had any."""
        lines: list[str] = []
        for c in comments:
            if _gap(prev_end, c.line):
                lines.append("")
            lines.append(indent + c.text)
            prev_end = c.line
        return lines

    def _body(self, stmts: list[ast.Stmt], indent: str) -> list[str]:
        lines: list[str] = []
        prev_end: int | None = None  # no blank line right after `{`
        for stmt in stmts:
            group = self.notes.leading.get(id(stmt), [])
            lines += self._comments(group, indent, prev_end)
            if _gap(group[-1].line if group else prev_end, _pos(stmt)[0]):
                lines.append("")
            lines += self._node(stmt, indent)
            prev_end = self._src_end(stmt)
        return lines + self._comments(self.notes.closing.get(id(stmts), []), indent, prev_end)

    def _braced(self, head: str, body: list[ast.Stmt], indent: str) -> list[str]:
        """``head {`` + body; the caller adds the closing line.  A head of several lines (a
        wrapped signature or condition) carries the indents of its later lines."""
        *first, last = f"{indent}{head} {{".split("\n")
        return first + [self._with_comment(last, self.notes.header.get(id(body)))] + \
            self._body(body, indent + INDENT)

    def _header(self, indent: str, keyword: str, expr: ast.Expr, body: list[ast.Stmt]) -> str:
        """``keyword expr``, the expression broken when the line (with `` {`` and a comment on
        it) would pass the width."""
        comment = self.notes.header.get(id(body))
        start = len(indent + keyword) + 1
        self.breaker.budget = Breaker.BUDGET
        lines = self._fitted(lambda tail: self.breaker.lines(expr, start, len(indent), tail + 2), start,
                             len(comment.text) + 2 if comment is not None else 0)
        return "\n".join([f"{keyword} {lines[0]}", *lines[1:]])

    def _fitted(self, layout, col: int, comment: int) -> list[str]:
        """``layout(tail)`` leaving room for a trailing comment of ``comment`` columns, when that
        room makes the lines fit; else as if there were no comment (it would not fit anyway)."""
        lines = layout(comment)
        if comment and self.breaker.overflow(lines, col, comment):
            lines = layout(0)
        return lines

    def _node(self, node: Node, indent: str) -> list[str]:
        if _bodies(node):
            return self._compound(node, indent)
        comment = self.notes.trailing.get(id(node))
        self.breaker.budget = Breaker.BUDGET
        lines = self._fitted(lambda tail: self._simple(node, indent, tail), 0,
                             len(comment.text) + 2 if comment is not None else 0)
        lines[-1] = self._with_comment(lines[-1], comment)
        return lines

    def _simple(self, node: Node, indent: str, tail: int) -> list[str]:
        """A simple statement in lines; ``tail``: columns a comment takes after the last one."""
        match node:
            case ast.Import():
                alias = f" as {node.alias}" if node.alias is not None else ""
                return [f"{indent}import {quote(node.path)}{alias}"]
            case ast.ConstDef():
                return self._valued(node, indent, f"{node.name} = ", node.value, tail)
            case ast.FuncDef():
                return self._valued(node, indent, self._signature(indent, f"def {node.name}", node.params, " = "),
                                    node.body, tail)
            case ast.BlockDef():
                return self._valued(node, indent, self._signature(indent, f"block {node.name}", node.params, " = "),
                                    node.body, tail)
            case ast.Assign() if node.index is not None:
                return self._valued(node, indent, f"{node.targets[0]}[{format_expr(node.index)}] = ", node.value,
                                    tail)
            case ast.Assign():
                return self._valued(node, indent, f"{', '.join(node.targets)} = ", node.value, tail)
            case ast.Return() if len(node.values) == 1:
                return self._valued(node, indent, "return ", node.values[0], tail)
            case ast.Return():
                return self._listed(indent, "return ", [Piece(", ", ",", "", "", v) for v in node.values], tail)
            case ast.Assert():
                message = [Piece(", ", ",", "", quote(node.message), None)] if node.message is not None else []
                return self._listed(indent, "assert ", [Piece("", "", "", "", node.cond), *message], tail)
        raise TypeError(f"not a CDL statement: {node!r}")

    def _compound(self, node: Node, indent: str) -> list[str]:
        match node:
            case ast.BlockDef():
                head = self._signature(indent, f"block {node.name}", node.params,
                                       f"({', '.join(node.inputs or [])}) {{")
                lines = self._braced(head[:-2], node.body, indent)
            case ast.NetworkDef():
                head = self._signature(indent, f"network {node.name}", node.params, " {")
                lines = self._braced(head[:-2], node.body, indent)
            case ast.For():
                head = self._header(indent, f"for {', '.join(node.targets)} in", node.iter, node.body)
                lines = self._braced(head, node.body, indent)
            case ast.Repeat():
                lines = self._braced(self._header(indent, "repeat", node.count, node.body), node.body, indent)
            case ast.If():
                lines = []
                for j, (cond, body) in enumerate(node.branches):
                    lines += self._braced(self._header(indent, "} elif" if j else "if", cond, body), body, indent)
                if node.orelse is not None:
                    lines += self._braced("} else", node.orelse, indent)
            case _:
                raise TypeError(f"not a CDL statement: {node!r}")
        return lines + [indent + "}"]

    def _valued(self, node: Node, indent: str, prefix: str, value: ast.Expr, tail: int) -> list[str]:
        """``prefix`` + ``value``, broken as the module docstring says when it would pass the width
        (``tail``: columns a trailing comment takes).  A pipe whose stages carry comments gets one
        stage per continuation line; a block or def starts a broken pipe or conditional on a line
        of its own."""
        *head, last = (indent + prefix).split("\n")  # a wrapped signature: its lines carry their indents
        comments = self.notes.stages.get(id(node), {})
        line = last + format_expr(value)
        if len(line) + tail <= self.width and not (comments and isinstance(value, ast.Pipe)):
            return head + [line]
        inner = indent + INDENT
        own_line = isinstance(node, (ast.BlockDef, ast.FuncDef))
        if isinstance(value, ast.ListExpr) and value.items:  # a table: a row per line
            rows: list[str] = []
            for item in value.items:
                got = self.breaker.lines(item, len(inner), len(inner), 1)
                rows += [inner + got[0], *got[1:]]
                rows[-1] += ","
            return head + [last + "["] + rows + [indent + "]"]
        if isinstance(value, ast.Pipe) and own_line:
            return head + [last.rstrip()] + self._pipe_lines(value, inner, inner, comments, tail, own_line=True)
        if isinstance(value, ast.Pipe):
            return head + self._pipe_lines(value, last, inner, comments, tail)
        if isinstance(value, ast.IfExp) and own_line:
            got = self.breaker.arms(value, len(inner), len(inner), tail)
            return head + [last.rstrip(), inner + got[0], *got[1:]]
        got = self.breaker.lines(value, len(last), len(indent), tail)
        return head + [last + got[0], *got[1:]]

    def _listed(self, indent: str, keyword: str, items: list[Piece], tail: int) -> list[str]:
        """``return a, b`` and ``assert c, "message"``: the items filled after the keyword."""
        start = len(indent + keyword)
        got = self.breaker.fill(items, start, start, len(indent), tail)
        return [indent + keyword + got[0], *got[1:]]

    def _pipe_lines(self, pipe: ast.Pipe, first: str, inner: str, comments: dict, tail: int = 0,
                    own_line: bool = False) -> list[str]:
        """A long pipe from ``first`` on: continuation lines put their '|' under the first one, or
        one indent deeper (``inner``) when the first line holds only the first stage or the pipe
        has ``own_line``.  A stage too long for a line of its own is broken inside."""
        texts = pipe_stages(pipe)
        tails = {k: len(c.text) + 2 for k, c in comments.items()}
        if tail:
            tails[len(texts) - 1] = tail
        lines = self._pipe_layout(pipe, texts, first, inner, inner + "| ", comments, tails, own_line)
        if not own_line and lines[0][len(first):].startswith(texts[0] + " | "):  # '|' under the first one, unless that passes the width more
            aligned = self._pipe_layout(pipe, texts, first, inner, " " * (len(first) + len(texts[0]) + 1) + "| ",
                                        comments, tails, own_line)
            over = [self.breaker.overflow(x, 0, 0) for x in (aligned, lines)]
            lines = aligned if over[0] <= over[1] else lines
        return lines

    def _pipe_layout(self, pipe: ast.Pipe, texts: list[str], first: str, inner: str, cont: str, comments: dict,
                     tails: dict[int, int], own_line: bool) -> list[str]:
        """The stages of a long pipe in lines, continuation lines starting with ``cont``."""
        groups = _pipe_groups(pipe, texts, comments, tails, len(first), len(cont), self.width)
        lines = []
        for k, group in enumerate(groups):
            start = first if k == 0 else cont
            block = [start + " | ".join(texts[i] for i in group)]
            if len(group) == 1 and len(block[0]) + tails.get(group[0], 0) > self.width:
                # a broken stage closes its brackets under the line's start: the statement, or the '|'
                ind = len(start) - 2 if k else len(inner) if own_line else len(inner) - len(INDENT)
                got = self.breaker.lines(pipe.stages[group[0]], len(start), ind, tails.get(group[0], 0), Prec.LABEL)
                block = [start + got[0], *got[1:]]
            block[-1] = self._with_comment(block[-1], comments.get(group[-1]))
            lines += block
        return lines

    def _signature(self, indent: str, name: str, params: list[ast.Param | ast.InputParam], tail: str) -> str:
        return _signature(indent, name, params, tail, self.width)

    @staticmethod
    def _with_comment(line: str, comment: Comment | None) -> str:
        return f"{line}  {comment.text}" if comment is not None else line

    def _src_end(self, node: Node) -> int:
        """The source line a node ends on, as the canonical layout would put it:
        exact for formatter output, which is what idempotence needs."""
        end = _head_last_line(node)
        if not _bodies(node):
            return end
        conds = node.branches[1:] if isinstance(node, ast.If) else []
        for j, body in enumerate(_bodies(node)):
            if 0 < j <= len(conds):  # `} elif c {`: the condition's line is known
                end = max(end + 1, _end_line(conds[j - 1][0]))
            elif j > 0:  # `} else {` right after the branch before it
                end += 1
            if body:
                end = max(end, self._src_end(body[-1]))
            end = max([end] + [c.line for c in self.notes.closing.get(id(body), [])])
        return end + 1


def _pipe_groups(pipe: ast.Pipe, texts: list[str], comments: dict, tails: dict[int, int], first: int, cont: int,
                 width: int) -> list[list[int]]:
    """The stages of a long pipe, line by line: the lines the source gave them (a line of
    conv | batchnorm | relu stays one), a stage with a comment ending its line, and a line that
    would pass ``width`` filled greedily instead.  ``first`` and ``cont`` are the columns
    the first and the continuation lines start at; ``tails[k]``: columns of a comment after stage k."""
    groups: list[list[int]] = [[0]]
    for k in range(1, len(texts)):
        new_line = _pos(pipe.stages[k])[0] > _end_line(pipe.stages[k - 1]) or (k - 1) in comments
        if new_line:
            groups.append([k])
        else:
            groups[-1].append(k)
    out: list[list[int]] = []
    for group in groups:
        cur: list[int] = []
        for i in group:
            start = first if not out else cont
            end = start + len(" | ".join(texts[j] for j in [*cur, i])) + tails.get(i, 0)
            if cur and end > width:
                out.append(cur)
                cur = []
            cur.append(i)
        out.append(cur)
    return out


def _gap(prev_end: int | None, line: int) -> bool:
    """Did the source have a blank line between ``prev_end`` and ``line``?"""
    return prev_end is not None and line > prev_end + 1


def _same_run(prev: Node, item: Node) -> bool:
    """Consecutive imports, or constants, may sit without blank lines."""
    return type(prev) is type(item) and isinstance(item, (ast.Import, ast.ConstDef))


def _signature(indent: str, name: str, params: list[ast.Param | ast.InputParam], tail: str, width: int) -> str:
    """``name(params)tail``, its parameters wrapped when the line would pass ``width``: as many
    per line as fit, continuation lines aligned after the ``(`` (the indent of the first line is
    the caller's; later lines carry theirs)."""
    one = f"{name}({_params(params)}){tail}"
    if len(indent + one) <= width or len(params) < 2:
        return one
    parts = [_param(p) for p in params]
    align = " " * (len(indent) + len(name) + 1)
    lines, cur = [], f"{name}({parts[0]}"
    for k, part in enumerate(parts[1:], 1):
        end = f"){tail}" if k == len(parts) - 1 else ","
        if len((indent if not lines else "") + cur + ", " + part + end) <= width:
            cur += ", " + part
        else:
            lines.append(cur + ",")
            cur = align + part
    return "\n".join(lines + [cur + f"){tail}"])


def _params(params: list[ast.Param | ast.InputParam]) -> str:
    return ", ".join(_param(p) for p in params)


def _param(p: ast.Param | ast.InputParam) -> str:
    if isinstance(p, ast.InputParam):
        return f"{p.name}: {p.dtype}[{', '.join(str(d) for d in p.dims)}]"
    return p.name if p.default is None else f"{p.name}={format_expr(p.default)}"
