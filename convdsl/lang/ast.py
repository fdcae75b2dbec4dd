"""CDL abstract syntax: dataclasses named after grammar rules, built from the
lark parse tree by ``ASTBuilder``.  Every node keeps its ``span``; spans never
take part in equality, so ``parse(fmt(p)) == parse(p)`` compares programs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from lark import Token, Transformer, v_args

from convdsl.errors import CDLSyntaxError, Span


def _span() -> Any:
    return field(default=None, compare=False, repr=False)


# ---- expressions ------------------------------------------------------------
@dataclass
class Name:
    id: str
    span: Span | None = _span()


@dataclass
class Num:
    value: int | float
    span: Span | None = _span()


@dataclass
class Str:
    value: str
    span: Span | None = _span()


@dataclass
class Const:
    """true / false / none"""

    value: bool | None
    span: Span | None = _span()


@dataclass
class ListExpr:
    items: list["Expr"]
    span: Span | None = _span()


@dataclass
class TupleExpr:
    items: list["Expr"]
    span: Span | None = _span()


@dataclass
class Keyword:
    name: str
    value: "Expr"
    span: Span | None = _span()


@dataclass
class Call:
    func: "Expr"
    args: list["Expr"]
    kwargs: list[Keyword]
    span: Span | None = _span()


@dataclass
class Choice:
    """``choice(a, b, c)``: a search decision; ``name=`` gives it a stable key."""

    options: list["Expr"]
    name: str | None = None
    span: Span | None = _span()

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        return f"{self.span.line}:{self.span.column}" if self.span else "?"


@dataclass
class Slice:
    """``start:stop:step`` inside ``l[...]``; a missing part is None."""

    start: "Expr | None"
    stop: "Expr | None"
    step: "Expr | None"
    span: Span | None = _span()


@dataclass
class Index:
    obj: "Expr"
    index: "Expr"
    span: Span | None = _span()


@dataclass
class Attribute:
    obj: "Expr"
    name: str
    span: Span | None = _span()


@dataclass
class Neg:
    operand: "Expr"
    span: Span | None = _span()


@dataclass
class Not:
    operand: "Expr"
    span: Span | None = _span()


@dataclass
class Arith:
    """``first op1 e1 op2 e2 ...`` left to right, flat so long chains need no recursion."""

    first: "Expr"
    rest: list[tuple[str, "Expr"]]
    span: Span | None = _span()


@dataclass
class Pow:
    base: "Expr"
    exp: "Expr"
    span: Span | None = _span()


@dataclass
class Compare:
    first: "Expr"
    rest: list[tuple[str, "Expr"]]
    span: Span | None = _span()


@dataclass
class BoolOp:
    op: str  # and | or
    values: list["Expr"]
    span: Span | None = _span()


@dataclass
class IfExp:
    then: "Expr"
    cond: "Expr"
    orelse: "Expr"
    span: Span | None = _span()


@dataclass
class Pipe:
    stages: list["Expr"]
    span: Span | None = _span()


@dataclass
class Label:
    """An instance name: plain, or a string with ``{expr}`` parts (``"layer{i}"``)."""

    parts: list[Union[str, "Expr"]]
    quoted: bool = False
    span: Span | None = _span()


@dataclass
class Labeled:
    expr: "Expr"
    label: Label
    span: Span | None = _span()
    param: bool = False  # `as param name`: the op's one parameter is named exactly <scope>.name


Expr = Union[Name, Num, Str, Const, ListExpr, TupleExpr, Call, Choice, Index, Attribute, Neg, Not, Arith, Pow,
             Compare, BoolOp, IfExp, Pipe, Labeled]


# ---- statements -------------------------------------------------------------
@dataclass
class Assign:
    targets: list[str]
    value: Expr
    span: Span | None = _span()
    index: Expr | None = None  # ``l[i] = v``: targets is [l]; l is rebound to a copy with item i replaced


@dataclass
class Return:
    values: list[Expr]
    span: Span | None = _span()


@dataclass
class For:
    targets: list[str]
    iter: Expr
    body: list["Stmt"]
    span: Span | None = _span()


@dataclass
class Repeat:
    count: Expr
    body: list["Stmt"]
    span: Span | None = _span()


@dataclass
class If:
    branches: list[tuple[Expr, list["Stmt"]]]
    orelse: list["Stmt"] | None
    span: Span | None = _span()


@dataclass
class Assert:
    cond: Expr
    message: str | None
    span: Span | None = _span()
    message_span: Span | None = _span()  # where the message string is (the formatter keeps line ends)


Stmt = Union[Assign, Return, For, Repeat, If, Assert]


# ---- top level ----------------------------------------------------------------
@dataclass
class Param:
    name: str
    default: Expr | None = None
    span: Span | None = _span()


@dataclass
class InputParam:
    name: str
    dtype: str
    dims: list[int | str]
    span: Span | None = _span()


@dataclass
class Import:
    path: str
    alias: str | None = None
    span: Span | None = _span()


@dataclass
class BlockDef:
    """``block f(p) = expr`` (a pipeline of layers; ``inputs`` is None) or
    ``block f(p)(x, y) { ... }`` (named values, any DAG)."""

    name: str
    params: list[Param]
    inputs: list[str] | None
    body: Expr | list[Stmt]
    span: Span | None = _span()
    end_line: int = field(default=0, compare=False, repr=False)


@dataclass
class NetworkDef:
    name: str
    params: list[Param | InputParam]
    body: list[Stmt]
    span: Span | None = _span()
    end_line: int = field(default=0, compare=False, repr=False)

    @property
    def inputs(self) -> list[InputParam]:
        return [p for p in self.params if isinstance(p, InputParam)]

    @property
    def hyper(self) -> list[Param]:
        return [p for p in self.params if isinstance(p, Param)]


@dataclass
class FuncDef:
    name: str
    params: list[Param]
    body: Expr
    span: Span | None = _span()


@dataclass
class ConstDef:
    name: str
    value: Expr
    span: Span | None = _span()


Item = Union[Import, BlockDef, NetworkDef, FuncDef, ConstDef]


@dataclass
class Program:
    items: list[Item]
    file: str = field(default="<string>", compare=False)
    comments: list[tuple[int, int, str]] = field(default_factory=list, compare=False, repr=False)  # (line, col, text)

    def blocks(self) -> dict[str, BlockDef]:
        return {i.name: i for i in self.items if isinstance(i, BlockDef)}

    def networks(self) -> list[NetworkDef]:
        return [i for i in self.items if isinstance(i, NetworkDef)]


DTYPE_NAMES = ("f32", "f16", "bf16", "f64", "i8", "u8", "i32", "i64", "bool")


def unescape(token: str) -> str:
    body = token[1:-1]
    out, i = [], 0
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


@v_args(meta=True)
class ASTBuilder(Transformer):
    """Parse tree -> AST.  ``parse_label`` parses the ``{expr}`` parts of
    quoted labels with the same grammar (no eval)."""

    __visit_tokens__ = False  # no token callbacks: tokens pass as they are, unlooked-up

    def __init__(self, file: str, parse_expr: Any) -> None:
        super().__init__()
        self.file = file
        self.parse_expr = parse_expr
        # lark's v_args wraps a rule method anew (functools.update_wrapper) each time it is looked
        # up, i.e. per tree node: look each up once; the transformer finds them here first
        self.rules: dict[str, Any] = {}  # rule name -> method taking (meta, children)
        for klass in type(self).__mro__:
            for name, attr in vars(klass).items():
                if hasattr(attr, "visit_wrapper") and name not in self.rules:
                    self.rules[name] = self.__dict__[name] = getattr(self, name)

    def _sp(self, meta: Any) -> Span | None:
        if getattr(meta, "empty", True):
            return None
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tsp(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    # top level
    def start(self, meta, items):
        return Program(list(items), self.file)

    def import_stmt(self, meta, c):
        return Import(unescape(c[0]), str(c[1]) if c[1] is not None else None, self._sp(meta))

    def seq_block(self, meta, c):
        name, params, body = c
        return BlockDef(str(name), params or [], None, body, self._sp(meta), meta.end_line)

    def graph_block(self, meta, c):
        name, params, inputs, body = c
        return BlockDef(str(name), params or [], inputs or [], body, self._sp(meta), meta.end_line)

    def network_def(self, meta, c):
        name, params, body = c
        return NetworkDef(str(name), params or [], body, self._sp(meta), meta.end_line)

    def def_stmt(self, meta, c):
        name, params, body = c
        return FuncDef(str(name), params or [], body, self._sp(meta))

    def const_stmt(self, meta, c):
        return ConstDef(str(c[0]), c[1], self._sp(meta))

    def params(self, meta, c):
        return [p for p in c if p is not None]

    def param(self, meta, c):
        return Param(str(c[0]), None, self._sp(meta))

    def param_default(self, meta, c):
        return Param(str(c[0]), c[1], self._sp(meta))

    def input_param(self, meta, c):
        dtype, dims = c[1]
        return InputParam(str(c[0]), dtype, dims, self._sp(meta))

    def tensor_type(self, meta, c):
        dtype_tok = c[0]
        if str(dtype_tok) not in DTYPE_NAMES:
            raise CDLSyntaxError(
                f"unknown dtype '{dtype_tok}'",
                self._tsp(dtype_tok),
                expected="one of " + ", ".join(DTYPE_NAMES),
                got=str(dtype_tok),
            )
        return str(dtype_tok), [d for d in c[1:] if d is not None]

    def dim(self, meta, c):
        t = c[0]
        return int(t) if t.type == "INT" else str(t)

    def names(self, meta, c):
        return [str(t) for t in c if t is not None]

    # statements
    def body(self, meta, c):
        return list(c)

    def assign(self, meta, c):
        values = [e for e in c[1:] if e is not None]
        if len(values) == 1:
            return Assign(c[0], values[0], self._sp(meta))
        first, last = values[0].span, values[-1].span
        span = Span(first.file, first.line, first.column, last.end_line, last.end_column) if first and last else None
        return Assign(c[0], TupleExpr(values, span), self._sp(meta))

    def return_stmt(self, meta, c):
        return Return([e for e in c if e is not None], self._sp(meta))

    def for_stmt(self, meta, c):
        return For(c[0], c[1], c[2], self._sp(meta))

    def repeat_stmt(self, meta, c):
        return Repeat(c[0], c[1], self._sp(meta))

    def if_stmt(self, meta, c):
        cond, body, *rest = c
        orelse = rest.pop() if rest and (rest[-1] is None or isinstance(rest[-1], list)) else None
        branches = [(cond, body)] + [b for b in rest]
        return If(branches, orelse, self._sp(meta))

    def elif_clause(self, meta, c):
        return (c[0], c[1])

    def assert_stmt(self, meta, c):
        message = c[1]
        return Assert(c[0], unescape(message) if message is not None else None, self._sp(meta),
                      self._tsp(message) if message is not None else None)

    # expressions
    def ifexp(self, meta, c):
        return IfExp(c[0], c[1], c[2], self._sp(meta))

    def or_op(self, meta, c):
        return BoolOp("or", list(c), self._sp(meta))

    def and_op(self, meta, c):
        return BoolOp("and", list(c), self._sp(meta))

    def not_op(self, meta, c):
        return Not(c[0], self._sp(meta))

    def compare(self, meta, c):
        return Compare(c[0], [(str(c[i]), c[i + 1]) for i in range(1, len(c), 2)], self._sp(meta))

    def pipe(self, meta, c):
        stages: list = []
        for s in c:  # flatten nested pipes written with parentheses? no: keep them; flatten only direct chains
            stages.append(s)
        return Pipe(stages, self._sp(meta))

    def labeled(self, meta, c):
        return Labeled(c[0], c[1], self._sp(meta))

    def param_labeled(self, meta, c):
        return Labeled(c[0], c[2], self._sp(meta), param=True)

    def label(self, meta, c):
        tok = c[0]
        if tok.type == "NAME":
            return Label([str(tok)], False, self._tsp(tok))
        return Label(self._label_parts(tok), True, self._tsp(tok))

    def _label_parts(self, tok: Token) -> list:
        text = unescape(tok)
        parts: list = []
        i = 0
        while i < len(text):
            j = text.find("{", i)
            if j < 0:
                parts.append(text[i:])
                break
            if j > i:
                parts.append(text[i:j])
            k = text.find("}", j)
            if k < 0:
                raise CDLSyntaxError("unclosed '{' in label", self._tsp(tok), expected="'}'", got=text)
            inner = text[j + 1 : k].strip()
            if not inner:
                raise CDLSyntaxError("empty '{}' in label", self._tsp(tok), hint='write e.g. "layer{i}"')
            parts.append(self.parse_expr(inner, self._tsp(tok)))
            i = k + 1
        return parts

    def arith(self, meta, c):
        return Arith(c[0], [(str(c[i]), c[i + 1]) for i in range(1, len(c), 2)], self._sp(meta))

    def neg(self, meta, c):
        if isinstance(c[0], Num):
            return Num(-c[0].value, self._sp(meta))
        return Neg(c[0], self._sp(meta))

    def pow(self, meta, c):
        return Pow(c[0], c[1], self._sp(meta))

    def call(self, meta, c):
        func, arglist = c[0], c[1] or []
        args = [a for a in arglist if not isinstance(a, Keyword)]
        kwargs = [a for a in arglist if isinstance(a, Keyword)]
        span = self._sp(meta)
        seen = set()
        for k in kwargs:
            if k.name in seen:
                raise CDLSyntaxError(f"keyword '{k.name}' given twice", k.span)
            seen.add(k.name)
        first_kw = next((i for i, a in enumerate(arglist) if isinstance(a, Keyword)), None)
        if first_kw is not None and any(not isinstance(a, Keyword) for a in arglist[first_kw:]):
            bad = next(a for a in arglist[first_kw:] if not isinstance(a, Keyword))
            raise CDLSyntaxError("positional argument after a keyword argument", getattr(bad, "span", span),
                                 hint="put positional values first: f(x, 3, stride=2)")
        if isinstance(func, Name) and func.id == "choice":
            name = None
            for k in kwargs:
                if k.name != "name" or not isinstance(k.value, Str):
                    raise CDLSyntaxError("choice(...) takes options and an optional name=\"...\"", k.span)
                name = k.value.value
            if not args:
                raise CDLSyntaxError("choice() needs at least one option", span, hint="choice(3, 5, 7)")
            return Choice(args, name, span)
        return Call(func, args, kwargs, span)

    def arguments(self, meta, c):
        return [a for a in c if a is not None]

    def kwarg(self, meta, c):
        return Keyword(str(c[0]), c[1], self._sp(meta))

    def index(self, meta, c):
        return Index(c[0], c[1], self._sp(meta))

    def slice(self, meta, c):
        start, stop, step = (list(c) + [None, None, None])[:3]
        return Slice(start, stop, step, self._sp(meta))

    def item_assign(self, meta, c):
        return Assign([str(c[0])], c[2], self._sp(meta), index=c[1])

    def attribute(self, meta, c):
        return Attribute(c[0], str(c[1]), self._sp(meta))

    def name(self, meta, c):
        return Name(str(c[0]), self._tsp(c[0]))

    def int_lit(self, meta, c):
        return Num(int(c[0]), self._tsp(c[0]))

    def float_lit(self, meta, c):
        return Num(float(c[0]), self._tsp(c[0]))

    def str_lit(self, meta, c):
        return Str(unescape(c[0]), self._tsp(c[0]))

    def true_lit(self, meta, c):
        return Const(True, self._sp(meta))

    def false_lit(self, meta, c):
        return Const(False, self._sp(meta))

    def none_lit(self, meta, c):
        return Const(None, self._sp(meta))

    def list_lit(self, meta, c):
        return ListExpr([e for e in c if e is not None], self._sp(meta))

    def tuple_lit(self, meta, c):
        return TupleExpr([e for e in c if e is not None], self._sp(meta))
