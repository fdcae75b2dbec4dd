"""The canonical CDL formatter (``convdsl fmt``), in the gofmt habit.

``format_program`` prints an ``ast.Program`` back as CDL text in one canonical
layout; ``format_source`` parses then prints.  Two properties are tested:
``parse(format_source(t)) == parse(t)`` and ``format_source`` is idempotent.

Layout: 4-space indents, one blank line between top-level items (runs of
imports or of constants keep the source's choice), at most one blank line
between statements, minimal parentheses, lines of at most ``MAX_WIDTH`` (100)
columns where a break is defined:

* a pipe that would pass the width, or whose stages carry comments, gets one
  ``| stage`` per continuation line, one indent deeper (``block f(c) =`` and
  ``def f(c) =`` then start the pipe on the next line);
* a ``network``, ``block`` or ``def`` signature that would pass the width
  wraps its parameters, as many per line as fit, aligned after the ``(``;
* a list assigned to a name that would pass the width gets one item per line.

Other long lines (a long call or list) stay long.

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
from convdsl.lang import ast
from convdsl.lang.exprfmt import Prec, chain, chain_prec, format_expr, join, pipe_stages, wrap
from convdsl.lang.parser import parse

INDENT = "    "
MAX_WIDTH = 100

Node = Union[ast.Item, ast.Stmt]


def format_source(text: str, file: str = "<string>") -> str:
    """Parse CDL text and print it in canonical form."""
    return format_program(parse(text, file))


def format_program(program: ast.Program) -> str:
    """Print a program in canonical form, with its comments."""
    notes = _CommentPlacer().place(program)
    return _Printer(notes).program(program)


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
            return [node.cond]
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
    def __init__(self, notes: Notes) -> None:
        self.notes = notes

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
        """``head {`` + body; the caller adds the closing line."""
        return [self._with_comment(f"{indent}{head} {{", self.notes.header.get(id(body)))] + \
            self._body(body, indent + INDENT)

    def _node(self, node: Node, indent: str) -> list[str]:
        if _bodies(node):
            return self._compound(node, indent)
        lines = self._simple(node, indent)
        lines[-1] = self._with_comment(lines[-1], self.notes.trailing.get(id(node)))
        return lines

    def _simple(self, node: Node, indent: str) -> list[str]:
        match node:
            case ast.Import():
                alias = f" as {node.alias}" if node.alias is not None else ""
                return [f"{indent}import {quote(node.path)}{alias}"]
            case ast.ConstDef():
                return self._valued(node, indent, f"{node.name} = ", node.value)
            case ast.FuncDef():
                return self._valued(node, indent, _signature(indent, f"def {node.name}", node.params, " = "), node.body)
            case ast.BlockDef():
                return self._valued(node, indent, _signature(indent, f"block {node.name}", node.params, " = "),
                                    node.body)
            case ast.Assign() if node.index is not None:
                return self._valued(node, indent, f"{node.targets[0]}[{format_expr(node.index)}] = ", node.value)
            case ast.Assign():
                return self._valued(node, indent, f"{', '.join(node.targets)} = ", node.value)
            case ast.Return() if len(node.values) == 1:
                return self._valued(node, indent, "return ", node.values[0])
            case ast.Return():
                return [f"{indent}return {join(node.values)}"]
            case ast.Assert():
                message = f", {quote(node.message)}" if node.message is not None else ""
                return [f"{indent}assert {format_expr(node.cond)}{message}"]
        raise TypeError(f"not a CDL statement: {node!r}")

    def _compound(self, node: Node, indent: str) -> list[str]:
        match node:
            case ast.BlockDef():
                head = _signature(indent, f"block {node.name}", node.params, f"({', '.join(node.inputs or [])}) {{")
                lines = self._braced(head[:-2], node.body, indent)
            case ast.NetworkDef():
                head = _signature(indent, f"network {node.name}", node.params, " {")
                lines = self._braced(head[:-2], node.body, indent)
            case ast.For():
                lines = self._braced(f"for {', '.join(node.targets)} in {format_expr(node.iter)}", node.body, indent)
            case ast.Repeat():
                lines = self._braced(f"repeat {format_expr(node.count)}", node.body, indent)
            case ast.If():
                lines = []
                for j, (cond, body) in enumerate(node.branches):
                    lines += self._braced(f"{'} elif' if j else 'if'} {format_expr(cond)}", body, indent)
                if node.orelse is not None:
                    lines += self._braced("} else", node.orelse, indent)
            case _:
                raise TypeError(f"not a CDL statement: {node!r}")
        return lines + [indent + "}"]

    def _valued(self, node: Node, indent: str, prefix: str, value: ast.Expr) -> list[str]:
        """``prefix`` + ``value``.  A pipe that is too long, or whose stages
        carry comments, gets one stage per continuation line; a block or def
        then starts its pipe on a line of its own."""
        *head, last = (indent + prefix).split("\n")  # a wrapped signature: its lines carry their indents
        line = last + format_expr(value)
        comments = self.notes.stages.get(id(node), {})
        if isinstance(value, ast.ListExpr) and len(line) > MAX_WIDTH and value.items:  # a table: a row per line
            return head + [last + "["] + [indent + INDENT + format_expr(item) + "," for item in value.items] + \
                [indent + "]"]
        inner = indent + INDENT
        if isinstance(value, ast.IfExp) and len(line) > MAX_WIDTH:
            # a if c else b if d else e: one "value if condition else" per line
            arms, rest = [], value
            while isinstance(rest, ast.IfExp):
                arms.append(f"{wrap(rest.then, Prec.OR)} if {wrap(rest.cond, Prec.OR)} else")
                rest = rest.orelse
            arms.append(wrap(rest, Prec.TERNARY))
            if isinstance(node, (ast.BlockDef, ast.FuncDef)):
                return head + [last.rstrip()] + [inner + arm for arm in arms]
            return head + [last + arms[0]] + [inner + arm for arm in arms[1:]]
        if (isinstance(value, ast.Arith) and isinstance(value.rest[-1][1], ast.Pipe) and len(line) > MAX_WIDTH
                and not isinstance(node, (ast.BlockDef, ast.FuncDef))):
            # x + (x | a | b ...): the parenthesized pipe breaks like a pipe of its own
            op, pipe = value.rest[-1]
            before = chain(value.first, value.rest[:-1], chain_prec(value)) if value.rest[:-1] else \
                wrap(value.first, Prec(chain_prec(value) + 1))
            lines = self._pipe_lines(pipe, f"{last}{before} {op} (", inner, {})
            return head + lines[:-1] + [lines[-1] + ")"]
        if not isinstance(value, ast.Pipe) or (len(line) <= MAX_WIDTH and not comments):
            return head + [line]
        if isinstance(node, (ast.BlockDef, ast.FuncDef)):  # the pipe starts on a line of its own
            return head + [last.rstrip()] + self._pipe_lines(value, inner, inner, comments, own_line=True)
        return head + self._pipe_lines(value, last, inner, comments)

    def _pipe_lines(self, pipe: ast.Pipe, first: str, inner: str, comments: dict, own_line: bool = False) -> list[str]:
        """A long pipe from ``first`` on: continuation lines put their '|' under the first one, or
        one indent deeper (``inner``) when the first line holds only the first stage or the pipe
        has ``own_line``."""
        texts = pipe_stages(pipe)
        cont = inner + "| "
        if not own_line and len(_pipe_groups(pipe, texts, comments, len(first), len(cont))[0]) > 1:
            cont = " " * (len(first) + len(texts[0]) + 1) + "| "
        lines = []
        for k, group in enumerate(_pipe_groups(pipe, texts, comments, len(first), len(cont))):
            text = (first if k == 0 else cont) + " | ".join(texts[i] for i in group)
            lines.append(self._with_comment(text, comments.get(group[-1])))
        return lines

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


def _pipe_groups(pipe: ast.Pipe, texts: list[str], comments: dict, first: int, cont: int) -> list[list[int]]:
    """The stages of a long pipe, line by line: the lines the source gave them (a line of
    conv | batchnorm | relu stays one), a stage with a comment ending its line, and a line that
    would pass ``MAX_WIDTH`` filled greedily instead.  ``first`` and ``cont`` are the columns
    the first and the continuation lines start at."""
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
            width = start + len(" | ".join(texts[j] for j in [*cur, i]))
            if cur and width > MAX_WIDTH:
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


def _signature(indent: str, name: str, params: list[ast.Param | ast.InputParam], tail: str) -> str:
    """``name(params)tail``, its parameters wrapped when the line would pass ``MAX_WIDTH``: as many
    per line as fit, continuation lines aligned after the ``(`` (the indent of the first line is
    the caller's; later lines carry theirs)."""
    one = f"{name}({_params(params)}){tail}"
    if len(indent + one) <= MAX_WIDTH or len(params) < 2:
        return one
    parts = [_param(p) for p in params]
    align = " " * (len(indent) + len(name) + 1)
    lines, cur = [], f"{name}({parts[0]}"
    for k, part in enumerate(parts[1:], 1):
        end = f"){tail}" if k == len(parts) - 1 else ","
        if len((indent if not lines else "") + cur + ", " + part + end) <= MAX_WIDTH:
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
