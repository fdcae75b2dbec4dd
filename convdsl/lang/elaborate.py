"""AST -> graph IR.

Elaboration runs the program's hyper-parameter code (arithmetic, loops,
conditionals, block calls) and emits one graph node per op application, with
its checked output types, parameters and source span.  Nothing is left of
the hyper-parameter language in the graph.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from convdsl.errors import (ChoiceError, CDLNameError, CDLTypeError, ConvDSLError, ResourceError, ShapeError, Span,
                            UsageError, did_you_mean, format_count)
from convdsl.ir.graph import Graph, Value
from convdsl.ir.ops import OPS
from convdsl.ir.optable import OpDef, Symbol, bind_attrs, format_value
from convdsl.ir.types import Size, TensorType, dim_symbols, size_arith, size_dim, size_value
from convdsl.lang import ast, limits
from convdsl.lang.parser import parse
from convdsl.lang.builtins import BUILTINS, Builtin
from convdsl.lang.memory import MemoryBudget
from convdsl.lang.limits import (DEFAULT_MAX_BYTES, MAX_ATTR_ITEMS, MAX_BLOCK_DEPTH, MAX_DIM, MAX_DIM_TEXT,
                                 MAX_EVAL_DEPTH, MAX_IMPORT_DEPTH, MAX_INT_BITS, MAX_LOOP_ITERATIONS, MAX_NAME,
                                 MAX_NODES, MAX_RANK, MAX_SEQ_LEN, MAX_STEPS, MAX_VALUE_DEPTH, MAX_VALUE_SIZE,
                                 MAX_WORK, WORK_PER_EVAL, WORK_PER_NODE, WORK_PER_STEP,
                                 CHARS_PER_WORK)
from convdsl.lang.source import bad_byte, read_program, read_source
from convdsl.lang.values import (BlockLayer, FuncRef, Layer, ListValue, Namespace, OpLayer, SeqLayer, Tensor, TupleValue,
                                 describe, measure)

# An instance name is dotted segments; a segment may hold what a PyTorch state_dict key segment
# holds in practice (RegNet's "block1-0", "fc:0", "a/b", "w[0]"): printable ASCII but '.',
# white space, and the characters CDL strings and labels give a meaning ('"', '\\', '{', '}').
_SEGMENT = r"[A-Za-z0-9_!#$%&'()*+,/:;<=>?@\[\]^`|~-]+"
_LABEL_RE = re.compile(rf"{_SEGMENT}(\.{_SEGMENT})*")  # fullmatch: "$" would let a final "\n" through


class ParamLabel(str):
    """The label of ``op as param name``: the op's one parameter is named ``<scope>.name`` itself
    (a parameter a source model keeps on a non-leaf module: ViT's ``encoder.pos_embedding``),
    rather than ``<scope>.name.<local>``."""


def _refuse_param_label(label: str | None, what: str, span: Span | None) -> None:
    if isinstance(label, ParamLabel):
        raise CDLTypeError(f"'as param {label}': {what} is not one op with one parameter", span,
                           expected="an op with exactly one parameter (class_token, pos_embed, layer_scale, "
                                    "parameter...)", hint=f"name it with 'as {label}'")


class _Return(Exception):
    def __init__(self, values: list[Any]) -> None:
        self.values = values


@dataclass
class Module:
    """One parsed .cdl file and its top-level names."""

    program: ast.Program
    path: str
    names: dict[str, Any] = field(default_factory=dict)  # blocks, defs, consts, imports

    def lookup(self, name: str) -> Any:
        return self.names.get(name, _MISSING)


_MISSING = object()


@dataclass
class Frame:
    """A block body or network body being executed."""

    module: Module
    locals: dict[str, Any]
    scope: list[str]
    block: str
    sizes: dict[str, Any] = field(default_factory=dict)  # a network's symbols (N in f32[N, ...]) as values


@dataclass
class Options:
    choices: Mapping[str, Any] | None = None  # choice key -> index (int) or value; "first" picks the first option
    overrides: Mapping[str, Any] = field(default_factory=dict)  # network hyper-parameters
    bind: Mapping[str, int] = field(default_factory=dict)  # concrete symbolic dims for size checks
    concrete: bool = False  # inputs take the sizes in bind as fixed dims (symbols still recorded): shape rules see them
    max_bytes: int = DEFAULT_MAX_BYTES
    seed: int = 0
    first_choice: bool = False


class Elaborator:
    def __init__(self, options: Options | None = None, loader: Callable[[str], str] | None = None) -> None:
        self.opts = options or Options()
        for sym, size in self.opts.bind.items():  # the CLI checks --bind; the API's callers too
            if not _is_int(size) or not 1 <= size <= MAX_DIM:
                raise UsageError(f"symbol {sym} bound to {describe(size)}", expected="a whole size from 1 to 2**62",
                                 hint="a size of 0 or less would take bytes off the memory check")
        self.loader = loader or read_source
        self.graph = Graph()
        self.depth = 0
        self.call_stack: list[tuple[str, Span | None]] = []
        self.counters: dict[str, dict[str, int]] = {}
        self.used_scopes: set[str] = set()
        self.node_prefixes: set[str] = set()  # "a" and "a.b" for node "a.b.c": names an op node may not take
        self.memory = MemoryBudget(self.opts.max_bytes, self.opts.bind)  # what --max-memory bounds
        self.modules: dict[str, Module] = {}
        self.importing: list[str] = []
        self.choices_seen: dict[str, ast.Choice] = {}
        self.steps = 0
        self.nesting = 0  # eval() calls in progress
        self.work = 0  # see limits.MAX_WORK

    # ---- what a program may cost (convdsl/lang/limits.py) -----------------------
    def charge(self, units: int, span: Span | None) -> None:
        """Count elaboration work; refuse the program where the total passes ``MAX_WORK``."""
        self.work += units
        if self.work > MAX_WORK:
            raise ResourceError("elaboration would take too long: the program builds too much "
                                "(nodes, list items or characters, expressions evaluated)", span,
                                expected=f"at most {MAX_WORK:,} units of work (a few seconds)",
                                hint="loops, recursion and repeated lists multiply; shrink the counts")

    def sized(self, value: Any, span: Span | None) -> Any:
        """A list, tuple or string the program just built: refused when too large or too deep
        (counted through aliasing, see values.measure); its items are charged as work."""
        size, depth = measure(value)
        if size > MAX_VALUE_SIZE:
            raise ResourceError(f"value too large: {format_count(size)} items counted through nested lists", span,
                                expected=f"at most {MAX_VALUE_SIZE:,}", hint="a list repeated inside a list multiplies")
        if depth > MAX_VALUE_DEPTH:
            raise ResourceError(f"lists nested more than {MAX_VALUE_DEPTH} deep", span)
        self.charge(len(value) // CHARS_PER_WORK if isinstance(value, str) else len(value), span)
        return value

    # ---- modules and imports ----------------------------------------------
    def load_module(self, program: ast.Program, path: str) -> Module:
        mod = Module(program, path)
        self.modules[path] = mod
        self.importing.append(path)
        try:
            for item in program.items:
                if isinstance(item, ast.Import):
                    self._import(mod, item)
            for item in program.items:
                if isinstance(item, ast.BlockDef):
                    self._define(mod, item.name, BlockLayer(item, mod, span=item.span), item.span)
                elif isinstance(item, ast.FuncDef):
                    self._define(mod, item.name, FuncRef(item, mod), item.span)
            for item in program.items:
                if isinstance(item, ast.ConstDef):
                    frame = Frame(mod, {}, [], "")
                    self._define(mod, item.name, self.eval(item.value, frame), item.span)
        finally:
            self.importing.pop()
        return mod

    def _define(self, mod: Module, name: str, value: Any, span: Span | None) -> None:
        if name in OPS:
            raise CDLNameError(f"'{name}' is a built-in op and cannot be redefined", span,
                               hint=f"choose another name, e.g. my_{name}")
        prev = mod.names.get(name)
        if prev is not None and getattr(prev, "module", None) is mod and not isinstance(prev, Namespace):
            raise CDLNameError(f"'{name}' is defined twice in this file", span)
        mod.names[name] = value

    def _import(self, mod: Module, item: ast.Import) -> None:
        base = Path(mod.path).parent if not mod.path.startswith("<") else Path.cwd()
        if "\0" in item.path:
            raise CDLNameError(f"cannot import {item.path!r}: the path contains a NUL byte", item.span)
        key = os.path.realpath(base / item.path)  # never raises on a symlink loop (the read does)
        if key in self.importing:
            raise CDLNameError(f"circular import of {item.path!r}", item.span,
                               notes=["import chain: " + " -> ".join(self.importing + [key])])
        if len(self.importing) >= MAX_IMPORT_DEPTH:
            raise ResourceError(f"imports nested more than {MAX_IMPORT_DEPTH} files deep", item.span,
                                notes=["import chain: " + " -> ".join(self.importing[:4] + ["..."])])
        if key not in self.modules:
            try:
                text = self.loader(key)
            except OSError as e:
                raise CDLNameError(f"cannot import {item.path!r}: {e.strerror or e}", item.span,
                                   hint=f"paths are relative to {base}") from None
            except UnicodeDecodeError as e:
                line, column, what = bad_byte(e)
                raise CDLNameError(f"cannot import {item.path!r}: not UTF-8 text ({what} at {key}:{line}:{column})",
                                   item.span, expected="a .cdl source file in UTF-8") from None
            self.load_module(parse(text, key) if key.endswith(".cdl") else self._parse_import(text, key, item), key)
        imported = self.modules[key]
        if item.alias:
            mod.names[item.alias] = Namespace(item.alias, imported.names)
        else:
            self.charge(len(imported.names), item.span)  # 10**5 imports of a file of 10**5 names
            for name, value in imported.names.items():
                if not isinstance(value, Namespace):
                    mod.names.setdefault(name, value)

    def _parse_import(self, text: str, key: str, item: ast.Import) -> ast.Program:
        """Parse an imported file that is not named ``*.cdl`` (its real path, links resolved): it
        may be any file on the machine (``import "/etc/passwd"``, ``/proc/self/environ``), so
        until it has parsed as CDL an error shows neither its lines nor the tokens it found, only
        where the problem is and what CDL expected there.  A ``.cdl`` file is a CDL source and
        its errors show its lines, as the main file's do."""
        try:
            return parse(text, key, show_lines=False)
        except ConvDSLError as err:
            where = f" at {err.span}" if err.span is not None else ""
            raise type(err)(f"cannot import {item.path!r}: {err.kind}{where}", item.span, expected=err.expected,
                            notes=["the imported file's text is not shown: it did not parse as CDL"],
                            hint="if it is a .cdl file, `convdsl fmt FILE` shows the line") from None

    # ---- networks -----------------------------------------------------------
    def elaborate_network(self, mod: Module, net: ast.NetworkDef) -> Graph:
        g = self.graph
        g.name = net.name
        g.source_file = mod.path
        frame = Frame(mod, {}, [], net.name)
        known = {p.name for p in net.params}
        _check_unique(net.params, f"network {net.name}")
        for k in self.opts.overrides:
            if k not in known:
                raise UsageError(f"network {net.name} has no parameter '{k}'",
                                 hint=did_you_mean(k, known) or f"its parameters: {', '.join(sorted(known))}")
        for p in net.params:
            if isinstance(p, ast.InputParam):
                dims = tuple(self.opts.bind.get(d, d) if self.opts.concrete and isinstance(d, str) else d for d in p.dims)
                t = TensorType(dims, p.dtype)
                self._check_type(t, p.span, f"input {p.name}")
                self.memory.add([t], 0, 0, p.span, f"input {p.name}")
                if p.name in g:
                    raise CDLNameError(f"input name '{p.name}' is already used by a node", p.span,
                                       hint="declare the inputs before parameters whose defaults use layers")
                nid = g.add_node(p.name, "input", [], {"name": p.name}, [t], span=p.span)
                frame.locals[p.name] = Tensor(Value(nid), t)
                for d in p.dims:
                    if isinstance(d, str):
                        g.symbols.setdefault(d, self.opts.bind.get(d, 1))
                        frame.sizes.setdefault(d, self.opts.bind[d] if self.opts.concrete and d in self.opts.bind
                                               else Size(d))
            elif p.name in self.opts.overrides:
                frame.locals[p.name] = self.opts.overrides[p.name]
            elif p.default is not None:
                frame.locals[p.name] = self.eval(p.default, frame)
            else:
                raise CDLNameError(f"network parameter '{p.name}' has no value", p.span,
                                   hint=f"give it a default ({p.name}=...) or pass --set {p.name}=...")
        outputs = self.run_body(net.body, frame, net.span)
        if not outputs:
            raise CDLTypeError(f"network {net.name} returns nothing", net.span, hint="end the body with: return x")
        for i, (v, expr) in enumerate(outputs):
            if not isinstance(v, Tensor):
                raise CDLTypeError("a network must return tensors", expr.span, expected="a tensor", got=describe(v))
            g.outputs.append(v.value)
            name = _written_name(expr)
            if name is None or name in g.output_names:
                name = f"out{i}" if i else "out"
            g.output_names.append(name)
        g.params.seed = self.opts.seed
        return g

    def run_body(self, body: list[ast.Stmt], frame: Frame, span: Span | None) -> list[tuple[Any, ast.Expr]]:
        try:
            self.exec_block(body, frame)
        except _Return as r:
            return r.values
        return []

    # ---- statements -----------------------------------------------------------
    def exec_block(self, body: list[ast.Stmt], frame: Frame) -> None:
        for stmt in body:
            self.exec(stmt, frame)

    def exec(self, stmt: ast.Stmt, frame: Frame) -> None:
        if isinstance(stmt, ast.Assign):
            value = self.eval(stmt.value, frame)
            if stmt.index is not None:
                value = self.replaced_item(stmt, value, frame)
            self.assign(stmt.targets, value, frame, stmt.span)
        elif isinstance(stmt, ast.Return):
            values = [(self.eval(e, frame), e) for e in stmt.values]
            if len(values) == 1 and isinstance(values[0][0], tuple):
                values = [(v, stmt.values[0]) for v in values[0][0]]
            raise _Return(values)
        elif isinstance(stmt, ast.For):
            seq = self.eval(stmt.iter, frame)
            if not isinstance(seq, (list, tuple, range)):
                raise CDLTypeError("'for' needs a list or range", stmt.iter.span, expected="a list", got=describe(seq))
            if len(seq) > MAX_LOOP_ITERATIONS:
                raise ResourceError(f"loop of {len(seq):,} iterations", stmt.iter.span)
            for item in seq:
                self._step(stmt.iter.span)
                self.assign(stmt.targets, item, frame, stmt.span)
                self.exec_block(stmt.body, frame)
        elif isinstance(stmt, ast.Repeat):
            n = self.eval(stmt.count, frame)
            if not _is_int(n) or n < 0:
                raise CDLTypeError("'repeat' needs a non-negative integer", stmt.count.span,
                                   expected="an integer >= 0", got=describe(n))
            if n > MAX_LOOP_ITERATIONS:
                raise ResourceError(f"repeat of {n:,} iterations", stmt.count.span)
            for _ in range(n):
                self._step(stmt.count.span)
                self.exec_block(stmt.body, frame)
        elif isinstance(stmt, ast.If):
            for cond, body in stmt.branches:
                if self.truth(self.eval(cond, frame), cond):
                    self.exec_block(body, frame)
                    return
            if stmt.orelse is not None:
                self.exec_block(stmt.orelse, frame)
        elif isinstance(stmt, ast.Assert):
            if not self.truth(self.eval(stmt.cond, frame), stmt.cond):
                raise CDLTypeError(stmt.message or "assertion failed", stmt.cond.span or stmt.span,
                                   hint=None if stmt.message else 'say why: assert cond, "message"')
        else:  # pragma: no cover - grammar has no other statements
            raise CDLTypeError(f"unknown statement {type(stmt).__name__}", getattr(stmt, "span", None))

    def replaced_item(self, stmt: ast.Assign, value: Any, frame: Frame) -> ListValue:
        """``l[i] = v``: a copy of the list ``l`` with item ``i`` replaced (lists are values: a list
        bound elsewhere, a constant or a caller's argument, never changes)."""
        name = stmt.targets[0]
        old = self.lookup(name, frame)
        if old is _MISSING:
            raise self.unknown_name(name, stmt.span, frame)
        if not isinstance(old, (list, tuple)) or isinstance(old, Tensor):
            raise CDLTypeError(f"only a list's items can be assigned; '{name}' is {describe(old)}", stmt.span)
        idx = self._need(self.eval(stmt.index, frame), frame, stmt.index.span)
        if not _is_int(idx):
            raise CDLTypeError("a list index must be an integer", stmt.index.span, got=describe(idx))
        if not -len(old) <= idx < len(old):
            raise CDLTypeError(f"index {idx} out of range for a list of {len(old)}", stmt.index.span)
        new = list(old)
        new[idx] = value
        return self.sized(ListValue(new), stmt.span)

    def assign(self, targets: list[str], value: Any, frame: Frame, span: Span | None) -> None:
        for t in targets:
            if t in OPS or t in BUILTINS:
                raise CDLNameError(f"'{t}' is a built-in name and cannot be assigned", span,
                                   hint=f"choose another name, e.g. {t}_out")
        if len(targets) == 1:
            frame.locals[targets[0]] = value
            return
        if not isinstance(value, (list, tuple)) or len(value) != len(targets):
            n = len(value) if isinstance(value, (list, tuple)) else 1
            raise CDLTypeError(f"cannot unpack {describe(value)} into {len(targets)} names", span,
                               expected=f"{len(targets)} values", got=f"{n}")
        for t, v in zip(targets, value):
            frame.locals[t] = v

    def truth(self, v: Any, expr: ast.Expr) -> bool:
        if isinstance(v, (bool, int, float)) or v is None:
            return bool(v)
        if isinstance(v, Symbol):
            raise self.unknown_name(v.name, v.span or expr.span, None)
        raise CDLTypeError("a condition must be a boolean or number", expr.span, got=describe(v))

    # ---- expressions ------------------------------------------------------------
    def eval(self, e: ast.Expr, frame: Frame, label: str | None = None) -> Any:
        self.nesting += 1
        try:
            if self.nesting > MAX_EVAL_DEPTH:
                raise ResourceError(f"expressions and calls nested more than {MAX_EVAL_DEPTH:,} deep", e.span,
                                    notes=[f"calls in progress: {self._chain()}"] if self.call_stack else [],
                                    hint="recursion inside deep expressions multiplies; give names to the parts")
            self.charge(WORK_PER_EVAL, e.span)
            method = getattr(self, "eval_" + type(e).__name__)
            return method(e, frame, label) if label is not None else method(e, frame)
        finally:
            self.nesting -= 1

    def eval_Num(self, e: ast.Num, frame: Frame) -> Any:
        return e.value

    def eval_Str(self, e: ast.Str, frame: Frame) -> Any:
        return e.value

    def eval_Const(self, e: ast.Const, frame: Frame) -> Any:
        return e.value

    def eval_ListExpr(self, e: ast.ListExpr, frame: Frame) -> Any:
        return self.sized(ListValue([self.eval(x, frame) for x in e.items]), e.span)

    def eval_TupleExpr(self, e: ast.TupleExpr, frame: Frame) -> Any:
        return self.sized(TupleValue([self.eval(x, frame) for x in e.items]), e.span)

    def eval_Name(self, e: ast.Name, frame: Frame, label: str | None = None) -> Any:
        v = self.lookup(e.id, frame)
        if v is _MISSING:
            return Symbol(e.id, e.span)
        if label is not None:
            if isinstance(v, (OpLayer, BlockLayer, SeqLayer)):
                return v.with_label(label)
            raise CDLTypeError("only layers and applications can be named with 'as'", e.span, got=describe(v))
        return v

    def lookup(self, name: str, frame: Frame) -> Any:
        if name in frame.locals:
            return frame.locals[name]
        v = frame.module.lookup(name)
        if v is not _MISSING:
            return v
        if name in frame.sizes:  # after everything the program binds: a symbol shadows nothing
            return frame.sizes[name]
        op = OPS.get(name)
        if op is not None:
            return OpLayer(op)
        if name in BUILTINS:
            return BUILTINS[name]
        return _MISSING

    def unknown_name(self, name: str, span: Span | None, frame: Frame | None) -> CDLNameError:
        pool: list[str] = list(OPS) + list(BUILTINS)
        if frame is not None:
            pool += list(frame.locals) + list(frame.module.names)
        hint = did_you_mean(name, pool)
        if hint is None and frame is not None and frame.locals:
            local = sorted(frame.locals)
            hint = "names defined here: " + ", ".join(local[:8]) + (", ..." if len(local) > 8 else "")
        return CDLNameError(f"unknown name '{name}'", span, hint=hint)

    def _need(self, v: Any, frame: Frame, span: Span | None) -> Any:
        """Reject unbound bare words wherever a real value is required."""
        if isinstance(v, Symbol):
            raise self.unknown_name(v.name, v.span or span, frame)
        return v

    def eval_Choice(self, e: ast.Choice, frame: Frame) -> Any:
        self.choices_seen[e.key] = e
        sel = self.opts.choices or {}
        if e.key in sel:
            pick = sel[e.key]
            opts = [self.eval(o, frame) for o in e.options]
            if _is_int(pick) and 0 <= pick < len(opts):
                return opts[pick]
            for o in opts:
                if o == pick:
                    return o
            raise ChoiceError(f"choice '{e.key}' has no option {pick!r}", e.span,
                              expected=", ".join(format_value(o) for o in opts))
        if self.opts.first_choice:
            return self.eval(e.options[0], frame)
        raise ChoiceError(
            "this program is a search space: choice(...) is not resolved", e.span,
            expected="a plain program", got=f"choice with {len(e.options)} options",
            hint=f"fix it with --choose {e.key}=INDEX, or explore it with `convdsl search`",
        )

    def eval_Index(self, e: ast.Index, frame: Frame) -> Any:
        obj = self._need(self.eval(e.obj, frame), frame, e.obj.span)
        if isinstance(obj, Tensor):
            raise CDLTypeError("tensors cannot be indexed in CDL", e.span,
                               hint="use split(...), reshape(...) or permute(...) ops")
        if not isinstance(obj, (list, tuple)):
            raise CDLTypeError("only lists can be indexed", e.obj.span, got=describe(obj))
        if isinstance(e.index, ast.Slice):
            part = obj[self.slice_of(e.index, frame)]
            return self.sized(TupleValue(part) if isinstance(obj, tuple) else ListValue(part), e.span)
        idx = self._need(self.eval(e.index, frame), frame, e.index.span)
        if not _is_int(idx):
            raise CDLTypeError("a list index must be an integer", e.index.span, got=describe(idx))
        if not -len(obj) <= idx < len(obj):
            raise CDLTypeError(f"index {idx} out of range for a list of {len(obj)}", e.index.span)
        return obj[idx]

    def slice_of(self, sl: ast.Slice, frame: Frame) -> slice:
        """``start:stop:step`` of a list, as Python slices (negative counts from the end)."""
        parts = []
        for part in (sl.start, sl.stop, sl.step):
            v = None if part is None else self._need(self.eval(part, frame), frame, part.span)
            if v is not None and not _is_int(v):
                raise CDLTypeError("a slice takes integers", part.span, expected="l[start:stop:step] with integers",
                                   got=describe(v))
            parts.append(v)
        if parts[2] == 0:
            raise CDLTypeError("a slice step cannot be zero", sl.step.span)
        return slice(*parts)

    def eval_Attribute(self, e: ast.Attribute, frame: Frame) -> Any:
        obj = self._need(self.eval(e.obj, frame), frame, e.obj.span)
        if isinstance(obj, Namespace):
            if e.name not in obj.names:
                raise CDLNameError(f"module '{obj.name}' has no '{e.name}'", e.span,
                                   hint=did_you_mean(e.name, obj.names))
            return obj.names[e.name]
        if isinstance(obj, Tensor):
            t = obj.type
            props = {"shape": ListValue(size_value(d) for d in t.shape), "rank": t.rank, "dtype": t.dtype,
                     "channels": size_value(t.shape[1]) if t.rank >= 2 else None}
            if e.name in props and props[e.name] is not None:
                return props[e.name]
            raise CDLNameError(f"a tensor has no property '{e.name}'", e.span, hint=did_you_mean(e.name, props))
        raise CDLTypeError(f"{describe(obj)} has no property '{e.name}'", e.span)

    def eval_Neg(self, e: ast.Neg, frame: Frame) -> Any:
        v = self._need(self.eval(e.operand, frame), frame, e.operand.span)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v
        if isinstance(v, Tensor):
            return self.apply_op(OPS["neg"], [v], {}, None, e.span, frame)
        if isinstance(v, Size):
            return self.size_op("*", v, -1, e.span, e.span)
        raise CDLTypeError("'-' needs a number or tensor", e.span, got=describe(v))

    def eval_Not(self, e: ast.Not, frame: Frame) -> Any:
        return not self.truth(self.eval(e.operand, frame), e.operand)

    def eval_BoolOp(self, e: ast.BoolOp, frame: Frame) -> Any:
        for sub in e.values:
            v = self.truth(self.eval(sub, frame), sub)
            if e.op == "or" and v:
                return True
            if e.op == "and" and not v:
                return False
        return e.op == "and"

    def eval_Compare(self, e: ast.Compare, frame: Frame) -> Any:
        left = self._need(self.eval(e.first, frame), frame, e.first.span)
        for op, rexpr in e.rest:
            right = self._need(self.eval(rexpr, frame), frame, rexpr.span)
            if op in ("<", ">", "<=", ">=") and (isinstance(left, Size) or isinstance(right, Size)):
                raise CDLTypeError(f"'{op}' cannot order a symbolic size", e.span, got=f"{describe(left)} and {describe(right)}",
                                   hint="a symbol's value is known only when the network runs; compare with == / !=, "
                                        "or give that dim a number in the input's type")
            if op in ("<", ">", "<=", ">=") and not (_is_num(left) and _is_num(right)):
                raise CDLTypeError(f"'{op}' compares numbers", e.span, got=f"{describe(left)} and {describe(right)}")
            if isinstance(left, Tensor) or isinstance(right, Tensor):
                raise CDLTypeError("tensors cannot be compared at elaboration time", e.span,
                                   hint="compare their shapes: channels(x) == 64")
            self.charge(min(measure(left)[0], measure(right)[0]), e.span)  # lists compare item by item
            ok = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
                  ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}[op](left, right)
            if not ok:
                return False
            left = right
        return True

    def eval_IfExp(self, e: ast.IfExp, frame: Frame, label: str | None = None) -> Any:
        branch = e.then if self.truth(self.eval(e.cond, frame), e.cond) else e.orelse
        if label is None:
            return self.eval(branch, frame)
        return self._eval_named(branch, frame, label, e.span)

    def eval_Pow(self, e: ast.Pow, frame: Frame) -> Any:
        a = self._need(self.eval(e.base, frame), frame, e.base.span)
        b = self._need(self.eval(e.exp, frame), frame, e.exp.span)
        if not (_is_num(a) and _is_num(b)):
            raise CDLTypeError("'**' needs numbers", e.span, got=f"{describe(a)} and {describe(b)}")
        if _is_int(b) and b > 4096 or abs(a) > 1e6 and b > 64:
            raise ResourceError("exponent too large", e.exp.span)
        try:
            r = a**b
        except (OverflowError, ZeroDivisionError) as ex:
            raise CDLTypeError(f"'**' failed: {ex}", e.span) from None
        if isinstance(r, complex):
            raise CDLTypeError("'**' of a negative number to a fractional power", e.span,
                               got=f"{format_value(a)} ** {format_value(b)}", hint="the result would be complex")
        return _check_number(r, e.span)

    def eval_Arith(self, e: ast.Arith, frame: Frame) -> Any:
        acc = self._need(self.eval(e.first, frame), frame, e.first.span)
        for op, rexpr in e.rest:
            right = self._need(self.eval(rexpr, frame), frame, rexpr.span)
            acc = self.binop(op, acc, right, e.span, rexpr.span, frame)
        return acc

    def binop(self, op: str, a: Any, b: Any, span: Span | None, rspan: Span | None, frame: Frame) -> Any:
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
                return self.tensor_scalar(op, a, b, span, rspan, frame)
            opname = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul"}.get(op)
            if opname is None:
                raise CDLTypeError(f"'{op}' is not defined for tensors", span, hint="tensors support + - * / @")
            return self.apply_op(OPS[opname], [a, b], {}, None, span, frame)
        if op == "+" and isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) + len(b) > MAX_SEQ_LEN or measure(a)[0] + measure(b)[0] > MAX_VALUE_SIZE:
                raise ResourceError(f"list too long: {len(a) + len(b):,} items", span,
                                    expected=f"at most {MAX_SEQ_LEN:,} items, {MAX_VALUE_SIZE:,} counted through nesting")
            return self.sized(ListValue(list(a) + list(b)), span)
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            if len(a) + len(b) > MAX_SEQ_LEN:
                raise ResourceError(f"string too long: {len(a) + len(b):,} characters", span,
                                    expected=f"at most {MAX_SEQ_LEN:,}")
            return self.sized(a + b, span)
        if op == "*" and isinstance(a, (list, tuple)) and _is_int(b):
            if len(a) * b > MAX_SEQ_LEN or measure(a)[0] * b > MAX_VALUE_SIZE:
                raise ResourceError(f"list too long: {format_count(len(a) * b)} items", span,
                                    expected=f"at most {MAX_SEQ_LEN:,} items, {MAX_VALUE_SIZE:,} counted through nesting")
            return self.sized(ListValue(list(a) * max(b, 0)), span)
        if isinstance(a, Size) or isinstance(b, Size):
            return self.size_op(op, a, b, span, rspan)
        if not (_is_num(a) and _is_num(b)):
            raise CDLTypeError(f"'{op}' needs numbers", span, got=f"{describe(a)} and {describe(b)}")
        try:
            if op == "+":
                return _check_number(a + b, span)
            if op == "-":
                return _check_number(a - b, span)
            if op == "*":
                return _check_number(a * b, span)
            if op == "/":
                return a / b
            if op == "//":
                return a // b
            if op == "%":
                return a % b
        except ZeroDivisionError:
            raise CDLTypeError("division by zero", rspan) from None
        except OverflowError:
            raise ResourceError(f"'{op}' overflows: the numbers are too large", span) from None
        raise CDLTypeError(f"'{op}' is not defined for numbers", span, hint="'@' multiplies tensors")

    def size_op(self, op: str, a: Any, b: Any, span: Span | None, rspan: Span | None) -> Any:
        """Arithmetic on symbolic sizes (``dim(x, 0) * 4``, ``N // 4``): a size or an integer, in
        the canonical form shape rules use, so ``(4 * N) / 4`` is ``N`` again."""
        for v in (a, b):
            if not (isinstance(v, Size) or _is_int(v)):
                raise CDLTypeError(f"'{op}' between a symbolic size and {describe(v)}", span,
                                   expected="sizes and integers", got=f"{describe(a)} and {describe(b)}",
                                   hint="a symbolic size (a dim of f32[N, ...]) combines with integers and other sizes")
        try:
            r = size_arith(op, a, b)
        except ZeroDivisionError:
            raise CDLTypeError("division by zero", rspan) from None
        except ValueError as ex:
            sym = min(dim_symbols(size_dim(a)) | dim_symbols(size_dim(b)))
            raise CDLTypeError(f"'{op}' on a symbolic size: {ex}", span, got=f"{describe(a)} and {describe(b)}",
                               hint=f"'//' is the floor division ({size_arith('//', a, b)}); or give {sym} a "
                                    "number in the input's type" if op == "/" else
                                    f"symbolic sizes take + - * / and //; give {sym} a number in the input's type "
                                    "for the rest") from None
        if isinstance(r, Size) and len(r.dim) > MAX_DIM_TEXT:
            raise ResourceError(f"a symbolic size of {len(r.dim):,} characters", span,
                                expected=f"symbolic sizes up to {MAX_DIM_TEXT} characters")
        return r

    def tensor_scalar(self, op: str, a: Any, b: Any, span: Span | None, rspan: Span | None, frame: Frame) -> Any:
        """``x * c``, ``x / c``, ``x + c``, ``x - c``, ``c * x``, ``c + x``, ``c - x``: one ``affine`` node
        (scale, shift).  The number must be finite, and so must what the node computes with."""
        tensor_left = isinstance(a, Tensor)
        t, scalar = (a, b) if tensor_left else (b, a)
        where = rspan if tensor_left else span
        if not _is_num(scalar) or op not in ("*", "+", "-", "/"):
            raise CDLTypeError(f"'{op}' between a tensor and {describe(scalar)}", span,
                               expected="two tensors, or a tensor and a number with * / + -",
                               hint="tensor arithmetic takes two tensors or a tensor and a number")
        if op == "/" and not tensor_left:
            raise CDLTypeError("cannot divide a number by a tensor", span, hint="a tensor can be divided by a number, not a number by a tensor")
        if op == "/" and scalar == 0:
            raise CDLTypeError("division of a tensor by zero", where, got="0")
        try:
            c = float(scalar)
        except OverflowError:
            c = math.inf
        if op == "*":
            scale, shift = c, 0.0
        elif op == "/":
            scale, shift = 1.0 / c, 0.0
        elif op == "+":
            scale, shift = 1.0, c
        else:
            scale, shift = (1.0, -c) if tensor_left else (-1.0, c)  # x - c, c - x
        if not (math.isfinite(scale) and math.isfinite(shift)):
            raise CDLTypeError(f"'{op}' of a tensor and {describe(scalar)}: the result is not a finite number", where,
                               expected="a number whose scale or shift fits a float (|v| < 1.8e308, not 0 below 1e-308)",
                               got=describe(scalar))
        return self.apply_op(OPS["affine"], [t], {"scale": scale, "shift": shift}, None, span, frame)

    # ---- layers, calls and pipes -------------------------------------------------------
    def eval_Labeled(self, e: ast.Labeled, frame: Frame, outer: str | None = None) -> Any:
        label = self.label_text(e.label, frame)
        if outer:
            label = f"{outer}.{label}"
        if e.param:
            label = ParamLabel(label)
        return self._eval_named(e.expr, frame, label, e.label.span)

    def _eval_named(self, inner: ast.Expr, frame: Frame, label: str, span: Span | None) -> Any:
        """``inner as label``: calls and layers take the name; any other
        expression is elaborated inside a scope called ``label``."""
        if isinstance(inner, (ast.Call, ast.Name, ast.Labeled, ast.IfExp)):
            return self.eval(inner, frame, label)
        _refuse_param_label(label, "this expression", span)
        frame.scope.append(label)
        self._claim_scope(frame, span)
        try:
            v = self.eval(inner, frame)
        finally:
            frame.scope.pop()
        if isinstance(v, (OpLayer, BlockLayer, SeqLayer)):
            return v.with_label(label)
        return v

    def label_text(self, label: ast.Label, frame: Frame) -> str:
        parts = []
        for p in label.parts:
            if isinstance(p, str):
                parts.append(p)
            else:
                v = self._need(self.eval(p, frame), frame, label.span)
                if not (_is_int(v) or isinstance(v, str)):
                    raise CDLTypeError("label parts must be integers or strings", label.span, got=describe(v))
                parts.append(str(v))
        text = "".join(parts)
        self.charge(len(text) // CHARS_PER_WORK, label.span)
        if len(text) > MAX_NAME:
            raise CDLNameError(f"instance name of {len(text):,} characters", label.span,
                               expected=f"at most {MAX_NAME} characters")
        if not _LABEL_RE.fullmatch(text):
            raise CDLNameError(f"bad instance name {text!r}", label.span,
                               expected="dotted segments of printable ASCII without spaces, quotes, backslashes or braces: "
                                        "conv1, layer1.0, \"block1-0\"",
                               got=repr(text))
        return text

    def eval_Call(self, e: ast.Call, frame: Frame, label: str | None = None) -> Any:
        func = self.eval(e.func, frame)
        if isinstance(func, Symbol):
            raise self.unknown_name(func.name, e.func.span, frame)
        args = [self.eval(a, frame) for a in e.args]
        kwargs = {k.name: self.eval(k.value, frame) for k in e.kwargs}
        if isinstance(func, Builtin):
            if label is not None:
                raise CDLTypeError(f"'{func.name}' is a function, not a layer; it cannot be named", e.span)
            for a, ax in zip(args, e.args):
                self._need(a, frame, ax.span)
            for k in e.kwargs:
                self._need(kwargs[k.name], frame, k.value.span)
            try:
                return func.fn(self, e, *args, **kwargs)
            except ConvDSLError as err:
                raise err.with_span(e.span)
            except TypeError as err:
                raise CDLTypeError(f"bad arguments to {func.name}(): {err}", e.span, hint=func.usage) from None
            except (ValueError, ArithmeticError) as err:  # min([]), int(inf), make_divisible(v, 0) ...
                raise CDLTypeError(f"{func.name}() cannot take these values: {err}", e.span,
                                   got=", ".join(describe(a) for a in args), hint=func.usage) from None
        if isinstance(func, FuncRef):
            return self.call_func(func, args, kwargs, e, frame, label)
        if not isinstance(func, (OpLayer, BlockLayer, SeqLayer)):
            raise self._hidden(e.func, func) or CDLTypeError(f"{describe(func)} cannot be called", e.func.span)
        # leading tensors are inputs; the rest are hyper-parameters
        inputs: list[Tensor] = []
        rest = list(args)
        while rest and (isinstance(rest[0], Tensor) or _is_tensor_tuple(rest[0])):
            first = rest.pop(0)
            inputs.extend(first if isinstance(first, tuple) else [first])
        for a, ax in zip(rest, e.args[len(args) - len(rest):]):
            if isinstance(a, Tensor) or _is_tensor_tuple(a):
                raise CDLTypeError("tensor inputs must come before hyper-parameters", ax.span,
                                   hint=f"write {func.name}(x, ...) or x | {func.name}(...)")
        if isinstance(func, SeqLayer) and (rest or kwargs):
            raise CDLTypeError("a pipeline of layers takes no hyper-parameters", e.span)
        if isinstance(func, BlockLayer) and len(func.args) + len(rest) > len(func.block.params):
            raise CDLTypeError(f"{func.name} takes at most {len(func.block.params)} hyper-parameters, "
                               f"got {len(func.args) + len(rest)}", e.span,
                               expected=", ".join(p.name for p in func.block.params) or "none")
        layer = func.with_args(rest, kwargs, e.span) if (rest or kwargs) else func
        layer = layer.with_label(label)
        if not inputs:
            if isinstance(layer, OpLayer):
                self._validate_op_args(layer, e.span)
            return layer
        return self.apply(layer, inputs, e.span, frame)

    def _hidden(self, e: ast.Expr, value: Any) -> CDLNameError | None:
        """The error for a call or pipe stage whose name is a built-in function or op hidden by a
        parameter, variable or constant of the same name (``network n(..., channels=[64, 128])``
        then ``channels(x)``): it says which name hides which built-in, not just that a list
        cannot be called."""
        name = e.id if isinstance(e, ast.Name) else None
        if name is None or not (name in BUILTINS or name in OPS):
            return None
        what = f"the built-in function {BUILTINS[name].usage or name}" if name in BUILTINS else f"the op {name}"
        return CDLNameError(f"'{name}' here is {describe(value)}: a parameter, variable or constant named "
                            f"'{name}' hides {what}", e.span,
                            hint=f"rename the parameter or variable '{name}' (e.g. {name}_ or n_{name})")

    def _validate_op_args(self, layer: OpLayer, span: Span | None) -> None:
        """Catch misspelled or extra hyper-parameters where they are written, before any input arrives."""
        names = {a.name for a in layer.op.attrs}
        for k, _ in layer.kwargs:
            if k not in names:
                raise CDLTypeError(f"{layer.op.name} has no hyper-parameter '{k}'", span,
                                   expected=", ".join(sorted(names)) or "no hyper-parameters", got=k,
                                   hint=did_you_mean(k, names))
        if len(layer.args) > len(layer.op.attrs):
            raise CDLTypeError(f"{layer.op.name} takes at most {len(layer.op.attrs)} hyper-parameters", span,
                               got=f"{len(layer.args)}")

    def _check_bare_words(self, layer: OpLayer, frame: Frame) -> None:
        """A bare word given to a hyper-parameter that takes no words (``conv2d(widht)``)
        is a misspelled name, not a bad value: say so, where it was written."""
        given = list(zip(layer.op.attrs, layer.args)) + [(layer.op.attr(k), v) for k, v in layer.kwargs]
        for attr, v in given:
            if isinstance(v, Symbol) and attr is not None and not {"sym", "any"} & set(attr.kind.split("|")):
                raise self.unknown_name(v.name, v.span or layer.span, frame)

    def call_func(self, func: FuncRef, args: list, kwargs: dict, e: ast.Call, frame: Frame,
                  label: str | None = None) -> Any:
        """Call a ``def``.  A def that returns a layer applies like an op or block: leading tensors
        it has no parameters for are the layer's inputs (``bn2(y, 0.3)`` is ``y | bn2(0.3)``).
        ``f(...) as name`` names what the def builds: a layer it returns takes the name (an op is
        named, a pipeline becomes a scope), and ops it applies to tensors passed in are built
        inside the scope ``name``.  A def that returns anything else cannot be named."""
        fn = func.func
        _refuse_param_label(label, f"def {fn.name}", e.span)
        lead = 0
        while lead < len(args) and (isinstance(args[lead], Tensor) or _is_tensor_tuple(args[lead])):
            lead += 1
        if lead and self._fills(fn.params, args[lead:], kwargs):
            layer, _ = self._run_def(func, args[lead:], kwargs, e, frame, None)  # no tensors: builds nothing
            if isinstance(layer, (OpLayer, BlockLayer, SeqLayer)):
                inputs = [t for a in args[:lead] for t in (a if isinstance(a, tuple) else (a,))]
                return self.apply(layer.with_label(label), inputs, e.span, frame)
        value, scoped = self._run_def(func, args, kwargs, e, frame, label)
        if label is None or scoped:
            return value
        if not isinstance(value, (OpLayer, BlockLayer, SeqLayer)):
            raise CDLTypeError(f"'{fn.name}(...) as {label}': {fn.name} returns {describe(value)}, which has no "
                               "parameters to name", e.span, expected="a def that returns a layer or builds ops",
                               hint=f"drop 'as {label}'")
        return value.with_label(label)

    @staticmethod
    def _fills(params: list[ast.Param], args: list, kwargs: dict) -> bool:
        """Whether ``args`` and ``kwargs`` alone give every parameter without a default."""
        if len(args) > len(params):
            return False
        return all(i < len(args) or p.name in kwargs or p.default is not None for i, p in enumerate(params))

    def _run_def(self, func: FuncRef, args: list, kwargs: dict, e: ast.Call, frame: Frame,
                 label: str | None) -> tuple[Any, bool]:
        """The def's value, and whether it was built inside the scope ``label`` (tensors passed in)."""
        fn = func.func
        builds = any(isinstance(a, Tensor) or _is_tensor_tuple(a) for a in [*args, *kwargs.values()])
        self._enter(fn.name, e.span)
        try:
            local = self.bind_params(fn.params, args, kwargs, func.module, fn.name, e.span)
            if label is not None and builds:
                scope = frame.scope + label.split(".")
                sub = Frame(func.module, local, scope, frame.block)
                self._claim_scope(sub, e.span)
                return self.eval(fn.body, sub), True
            return self.eval(fn.body, Frame(func.module, local, frame.scope, frame.block)), False
        finally:
            self._leave()

    def eval_Pipe(self, e: ast.Pipe, frame: Frame) -> Any:
        cur = self.eval(e.stages[0], frame)
        if isinstance(cur, Symbol):
            raise self.unknown_name(cur.name, e.stages[0].span, frame)
        if isinstance(cur, (OpLayer, BlockLayer, SeqLayer)):
            layers = [cur] + [self.eval_stage(s, frame) for s in e.stages[1:]]
            seq = SeqLayer.of(tuple(layers), span=e.span)
            if seq.ops > MAX_NODES:
                raise ResourceError(f"this pipeline applies {format_count(seq.ops)} ops, more than the "
                                    f"{MAX_NODES:,} nodes a network may have", e.span,
                                    hint="a pipeline repeated inside a pipeline multiplies")
            if seq.depth > MAX_EVAL_DEPTH // 4:
                raise ResourceError(f"pipelines nested more than {MAX_EVAL_DEPTH // 4} deep", e.span)
            return seq
        if isinstance(cur, list) and cur and all(isinstance(x, Tensor) for x in cur):
            cur = tuple(cur)
        if not (isinstance(cur, Tensor) or _is_tensor_tuple(cur)):
            raise CDLTypeError("a pipe starts with a tensor (or a layer)", e.stages[0].span, got=describe(cur))
        for s in e.stages[1:]:
            layer = self.eval_stage(s, frame)
            cur = self.apply(layer, list(cur) if isinstance(cur, tuple) else [cur], s.span, frame)
        return cur

    def eval_stage(self, s: ast.Expr, frame: Frame) -> Layer:
        v = self.eval(s, frame)
        if isinstance(v, Symbol):
            raise self.unknown_name(v.name, s.span, frame)
        if not isinstance(v, (OpLayer, BlockLayer, SeqLayer)):
            hidden = self._hidden(s, v)
            if hidden is not None:
                raise hidden
            raise CDLTypeError("each stage after '|' must be a layer", s.span, expected="an op or block, e.g. relu or conv2d(64, 3)",
                               got=describe(v))
        if isinstance(v, OpLayer):
            self._validate_op_args(v, s.span)
        return v

    def apply(self, layer: Layer, inputs: list[Tensor], span: Span | None, frame: Frame) -> Any:
        if isinstance(layer, OpLayer):
            self._check_bare_words(layer, frame)
            for v in (*layer.args, *(v for _, v in layer.kwargs)):
                if isinstance(v, (list, tuple)) and not _is_tensor_tuple(v) and measure(v)[0] > MAX_ATTR_ITEMS:
                    raise CDLTypeError(f"{layer.op.name}: a hyper-parameter list of {format_count(measure(v)[0])} items",
                                       layer.span or span, expected=f"at most {MAX_ATTR_ITEMS:,} items")
            try:
                attrs = bind_attrs(layer.op, list(layer.args), dict(layer.kwargs))
            except ConvDSLError as err:
                raise err.with_span(layer.span or span)
            except OverflowError:  # an integer given where a float is taken, past float's range
                raise CDLTypeError(f"{layer.op.name}: a hyper-parameter does not fit a float", layer.span or span,
                                   expected="numbers within +-1.8e308") from None
            return self.apply_op(layer.op, inputs, attrs, layer.label, layer.span or span, frame)
        if isinstance(layer, SeqLayer):
            _refuse_param_label(layer.label, "a pipeline", span)
            if layer.label:
                frame.scope.append(layer.label)
                self._claim_scope(frame, span)
            try:
                cur: Any = tuple(inputs) if len(inputs) > 1 else inputs[0]  # several: its first stage's inputs
                for sub in layer.layers:
                    cur = self.apply(sub, list(cur) if isinstance(cur, tuple) else [cur], sub.span or span, frame)
                return cur
            finally:
                if layer.label:
                    frame.scope.pop()
        return self.apply_block(layer, inputs, span, frame)

    def apply_block(self, layer: BlockLayer, inputs: list[Tensor], span: Span | None, frame: Frame) -> Any:
        block = layer.block
        n_in = 1 if block.inputs is None else len(block.inputs)
        if len(inputs) != n_in:
            raise CDLTypeError(f"block {block.name} takes {n_in} input tensor(s), got {len(inputs)}", span,
                               expected=f"{n_in} ({', '.join(block.inputs)})" if block.inputs else f"{n_in}",
                               got=f"{len(inputs)}", notes=[f"{block.name} is defined at {block.span}"],
                               hint=f"pass them all: {block.name}({', '.join(block.inputs)})" if block.inputs else None)
        local = self.bind_params(block.params, list(layer.args), dict(layer.kwargs), layer.module, block.name,
                                 layer.span or span)
        _refuse_param_label(layer.label, f"block {block.name}", span or layer.span)
        name = layer.label or self.auto_name(frame, block.name)
        self._enter(block.name, span)
        scope = frame.scope + name.split(".")
        sub = Frame(layer.module, local, scope, block.name)
        self._claim_scope(sub, span)
        self.graph.scopes[".".join(scope)] = block.name  # for drawing block clusters
        try:
            if block.inputs is None:
                body = self.eval(block.body, sub)
                if isinstance(body, Symbol):
                    raise self.unknown_name(body.name, block.body.span, sub)
                if not isinstance(body, (OpLayer, BlockLayer, SeqLayer)):
                    raise CDLTypeError(f"the body of block {block.name} must be a layer pipeline",
                                       block.body.span, got=describe(body))
                return self.apply(body, inputs, span, sub)
            for nm, t in zip(block.inputs, inputs):
                local[nm] = t
            outs = self.run_body(block.body, sub, block.span)
            if not outs:
                raise CDLTypeError(f"block {block.name} returns nothing", block.span, hint="end it with: return y")
            for v, ex in outs:
                if not (isinstance(v, Tensor)):
                    raise CDLTypeError(f"block {block.name} must return tensors", ex.span, got=describe(v))
            vals = [v for v, _ in outs]
            return vals[0] if len(vals) == 1 else tuple(vals)
        finally:
            self._leave()

    def bind_params(self, params: list[ast.Param], args: list, kwargs: dict, module: Module, what: str,
                    span: Span | None) -> dict[str, Any]:
        if len(args) > len(params):
            raise CDLTypeError(f"{what} takes at most {len(params)} hyper-parameters, got {len(args)}", span,
                               expected=", ".join(p.name for p in params) or "none")
        _check_unique(params, what)
        names = [p.name for p in params]
        for k in kwargs:
            if k not in names:
                raise CDLTypeError(f"{what} has no parameter '{k}'", span, expected=", ".join(names) or "none",
                                   got=k, hint=did_you_mean(k, names))
        local: dict[str, Any] = {}
        frame = Frame(module, local, [], what)
        for i, p in enumerate(params):
            if i < len(args):
                if p.name in kwargs:
                    raise CDLTypeError(f"{what}: '{p.name}' given twice", span)
                local[p.name] = args[i]
            elif p.name in kwargs:
                local[p.name] = kwargs[p.name]
            elif p.default is not None:
                local[p.name] = self.eval(p.default, frame)
            else:
                raise CDLTypeError(f"{what} needs '{p.name}'", span, expected=f"{what}({', '.join(names)})",
                                   got="no value for " + p.name)
        return local

    def _step(self, span: Span | None) -> None:
        self.charge(WORK_PER_STEP, span)
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise ResourceError(f"elaboration takes more than {MAX_STEPS:,} steps (loop iterations and calls)", span,
                                hint="loops or recursive calls multiply; shrink the counts")

    def _enter(self, name: str, span: Span | None) -> None:
        self._step(span)
        self.depth += 1
        self.call_stack.append((name, span))
        if self.depth > MAX_BLOCK_DEPTH:
            chain = self._chain()
            raise ResourceError(f"blocks nested more than {MAX_BLOCK_DEPTH} deep (recursion?)", span,
                                notes=[f"call chain: {chain}"], hint="a recursive block needs a depth parameter that reaches a base case")

    def _chain(self) -> str:
        names = [n for n, _ in self.call_stack]
        return " -> ".join(names[:6]) + (" -> ..." if len(names) > 6 else "")

    def _leave(self) -> None:
        self.depth -= 1
        self.call_stack.pop()

    # ---- naming -------------------------------------------------------------------
    def auto_name(self, frame: Frame, base: str) -> str:
        key = ".".join(frame.scope)
        counts = self.counters.setdefault(key, {})
        n = counts.get(base, 0)
        while True:
            name = base if n == 0 else f"{base}_{n}"
            n += 1
            full = f"{key}.{name}" if key else name
            if full not in self.graph and full not in self.used_scopes and full not in self.node_prefixes:
                counts[base] = n
                return name

    def _node_above(self, path: str) -> str | None:
        """An op node whose name is a proper dotted prefix of ``path`` (an op cannot also be a scope)."""
        parts = path.split(".")
        for i in range(1, len(parts)):
            p = ".".join(parts[:i])
            if p in self.graph:
                return p
        return None

    def _claim_scope(self, frame: Frame, span: Span | None) -> None:
        path = ".".join(frame.scope)
        if path in self.graph:
            raise CDLNameError(f"instance name '{path}' is already used", span, hint="give this instance another name with 'as'")
        above = self._node_above(path)
        if above is not None:
            raise CDLNameError(f"instance name '{path}' is inside '{above}', which is an op or input, not a block",
                               span, hint="give this instance another name with 'as'")
        self.used_scopes.add(path)

    # ---- ops --------------------------------------------------------------------
    def apply_op(self, op: OpDef, inputs: list[Tensor], attrs: dict, label: str | None, span: Span | None,
                 frame: Frame) -> Any:
        lo, hi = op.inputs
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            want = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi is not None else f"at least {lo}"
            raise CDLTypeError(f"{op.name} takes {want} input tensor(s), got {len(inputs)}", span,
                               hint=f"example: {op.example}" if op.example else None)
        in_types = [t.type for t in inputs]
        try:
            if op.normalize is not None:
                attrs = op.normalize(dict(attrs), in_types)
            out_types = op.infer(attrs, in_types)
            specs = op.param_specs(attrs, in_types)
        except ConvDSLError as err:
            raise err.with_span(span)
        except (ValueError, ZeroDivisionError, OverflowError, IndexError, TypeError) as err:
            raise ShapeError(f"{op.name}: invalid hyper-parameters for these inputs ({err})", span,
                             got=", ".join(str(t) for t in in_types)) from None
        for t in out_types:
            self._check_type(t, span, f"output of {op.name}")
            if any(isinstance(d, int) and d <= 0 for d in t.shape):
                raise ShapeError(f"{op.name} would produce an empty tensor {t}", span,
                                 got="inputs " + ", ".join(str(x) for x in in_types),
                                 hint="the input is too small for this kernel/stride, or a size is zero")
        mem = self.memory
        try:
            workspace = op.workspace(attrs, [mem.bound(t) for t in in_types], [mem.bound(t) for t in out_types])
        except (ValueError, ZeroDivisionError, OverflowError, IndexError, TypeError) as err:
            raise ShapeError(f"{op.name}: invalid hyper-parameters for these inputs ({err})", span,
                             got=", ".join(str(t) for t in in_types)) from None
        param_bytes = sum(mem.nbytes(TensorType(tuple(s.shape), s.dtype)) for s in specs.values())
        mem.add(out_types, param_bytes, workspace, span, f"output of {op.name}", op.name)
        if len(self.graph) >= MAX_NODES:
            raise ResourceError(f"more than {MAX_NODES:,} nodes", span, expected=f"at most {MAX_NODES:,} ops in a network",
                                hint="loops, recursion and repeated pipelines multiply")
        self.charge(WORK_PER_NODE, span)
        name = label or self.auto_name(frame, op.name)
        nid = ".".join(frame.scope + [name])
        if nid in self.graph or (label and nid in self.used_scopes):
            raise CDLNameError(f"instance name '{nid}' is already used", span, hint="each 'as' name must be unique in its block")
        above = self._node_above(nid)
        if nid in self.node_prefixes or above is not None:
            # an op instance is a leaf: "a" and "a.b" cannot both be ops (their state_dict keys would nest)
            other = above or next(n for n in self.graph.g if n.startswith(nid + "."))
            raise CDLNameError(f"instance name '{nid}' clashes with '{other}'", span,
                               hint="an op cannot also be a scope of other instances; rename one of them with 'as'")
        if isinstance(label, ParamLabel) and len(specs) != 1:
            raise CDLTypeError(f"'as param {label}' names an op's one parameter; {op.name} here has "
                               f"{len(specs)}" + (f" ({', '.join(specs)})" if specs else ""), span,
                               expected="an op with exactly one parameter (class_token, pos_embed(kind=learned), "
                                        "layer_scale, parameter...)", hint=f"name it with 'as {label}'")
        # a parameter's key is <node id>.<local name>, or the node id itself for `as param`
        params = {local: nid if isinstance(label, ParamLabel) else f"{nid}.{local}" for local in specs}
        self.graph.add_node(nid, op.name, [t.value for t in inputs], attrs, out_types, params=params, span=span,
                            scope=".".join(frame.scope), block=frame.block)
        for local, spec in specs.items():
            self.graph.params.declare(params[local], spec)
        parent = nid.rpartition(".")[0]
        if parent and parent not in self.node_prefixes:  # else its own prefixes are there too
            parts = nid.split(".")
            self.node_prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
        outs = tuple(Tensor(Value(nid, i), t) for i, t in enumerate(out_types))
        return outs[0] if len(outs) == 1 else outs

    def _check_type(self, t: TensorType, span: Span | None, what: str) -> None:
        """Refuse an output type no backend can hold, before anything formats or multiplies it:
        rank over 64 (numpy and torch), a dimension over 2**62, a symbolic size too long to read."""
        if t.rank > MAX_RANK:
            raise ShapeError(f"{what} would have rank {t.rank:,}", span, expected=f"rank at most {MAX_RANK} (as numpy and torch)")
        for d in t.shape:
            if isinstance(d, int) and d > MAX_DIM:
                raise ResourceError(f"{what} would have a dimension of {format_count(d)}", span,
                                    expected="dimensions up to 2**62", hint="check the sizes and their arithmetic")
            if isinstance(d, str) and len(d) > MAX_DIM_TEXT:
                raise ShapeError(f"{what} would have a symbolic size of {len(d):,} characters", span,
                                 expected=f"symbolic sizes up to {MAX_DIM_TEXT} characters",
                                 got=d[:60] + "...", hint="bind the symbol to a number (--bind) or simplify the shapes")


def _written_name(expr: ast.Expr) -> str | None:
    """The name a returned expression has in the program: ``return logits`` -> logits; ``return
    x | linear(10) as fc`` -> fc (a plain label on the last stage); None for anything else."""
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Pipe):
        expr = expr.stages[-1]
    if isinstance(expr, ast.Labeled) and not expr.label.quoted and len(expr.label.parts) == 1:
        part = expr.label.parts[0]
        plain = isinstance(part, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part)
        return part if plain and part not in OPS and part not in BUILTINS else None
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_number(v: Any, span: Span | None) -> Any:
    """Refuse integers so large that printing or multiplying them is the cost."""
    if _is_int(v) and v.bit_length() > MAX_INT_BITS:
        raise ResourceError(f"integer too large (over 2**{MAX_INT_BITS})", span,
                            hint="hyper-parameters are sizes and counts; check the arithmetic")
    return v


def _check_unique(params: list, what: str) -> None:
    seen: set[str] = set()
    for p in params:
        if p.name in seen:
            raise CDLNameError(f"{what}: parameter '{p.name}' is declared twice", p.span,
                               hint="give each parameter and input its own name")
        seen.add(p.name)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_tensor_tuple(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) > 0 and all(isinstance(x, Tensor) for x in v)


# ---- entry points -------------------------------------------------------------------
FRAMES_PER_EVAL = 8  # Python frames per nested eval(), at most (measured: 6 through a graph block call)


def stack_room():
    """Room on Python's stack for ``MAX_EVAL_DEPTH`` nested evaluations: programs nested that
    deep are legal (64 recursive blocks, each in an expression), and the elaborator refuses
    deeper ones itself, at the expression, before Python would."""
    return limits.stack_room(FRAMES_PER_EVAL * MAX_EVAL_DEPTH)


def load_program(text: str, file: str = "<string>", options: Options | None = None,
                 loader: Callable[[str], str] | None = None) -> tuple[Elaborator, Module]:
    el = Elaborator(options, loader)
    path = file if file.startswith("<") else str(Path(file).resolve())
    program = parse(text, file)
    try:
        with stack_room():
            mod = el.load_module(program, path)
    except RecursionError:
        raise ResourceError("program nests too deeply to elaborate", Span(file, 1, 1)) from None
    return el, mod


def pick_network(mod: Module, name: str | None) -> ast.NetworkDef:
    nets = mod.program.networks()
    if not nets:
        raise UsageError(f"{mod.program.file} defines no network", hint="add: network name(x: f32[N, 3, 32, 32]) { ... }")
    if name is None:
        if len(nets) > 1:
            raise UsageError(f"{mod.program.file} defines several networks: {', '.join(n.name for n in nets)}",
                             hint="pick one with --network NAME")
        return nets[0]
    for n in nets:
        if n.name == name:
            return n
    raise UsageError(f"no network '{name}' in {mod.program.file}", hint=did_you_mean(name, [n.name for n in nets]))


def elaborate(text: str, file: str = "<string>", network: str | None = None, options: Options | None = None) -> Graph:
    """Source text -> verified graph IR of one network."""
    el, mod = load_program(text, file, options)
    net = pick_network(mod, network)
    try:
        with stack_room():
            g = el.elaborate_network(mod, net)
    except RecursionError:
        raise ResourceError("program nests too deeply to elaborate", net.span) from None
    g.source_hash = hashlib.sha256(text.encode()).hexdigest()
    g.choices = sorted(el.choices_seen)
    return g


def elaborate_file(path: str | os.PathLike, network: str | None = None, options: Options | None = None) -> Graph:
    return elaborate(read_program(path), str(Path(path)), network, options)
