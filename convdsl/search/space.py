"""A search space is a CDL program with ``choice(...)``; a candidate is a program plus a selection.

A candidate (``Genotype``) is the program text of its space (which mutations may have edited:
widths, depths, skips) and one option index per choice.  *Resolving* it replaces every choice by
its selected option and drops the blocks nothing uses, which gives a plain program; that text,
run through the same front end as user code (parse, elaborate, verify), is what is trained, hashed
and written out.  Nothing here works on Python objects of a built network: the program is the
genotype.

Anonymous choices are keyed by ``line:col``, which moves when a mutation reformats the program;
``SearchSpace`` therefore writes every key into the program once (``name="12:5"``) so keys stay
stable however the text is edited.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from convdsl.errors import ConvDSLError, Span, UsageError, remember_source
from convdsl.ir.graph import Graph
from convdsl.ir.verify import verify
from convdsl.lang import ast
from convdsl.lang.elaborate import Options, load_program, pick_network, stack_room
from convdsl.lang.source import read_source
from convdsl.lang.format import format_program
from convdsl.lang.parser import parse

Selection = dict[str, int]


def read_space_file(path: str | Path) -> str:
    """The text of a space (or reference) file: a regular UTF-8 file of bounded size (``read_source``);
    a file that is not UTF-8 is refused at its first bad byte, with the line shown."""
    try:
        return read_source(str(path))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raw = bytes(e.object)
        line = raw.count(b"\n", 0, e.start) + 1
        start = raw.rfind(b"\n", 0, e.start) + 1
        column = len(raw[start:e.start].decode("utf-8", "replace")) + 1
        remember_source(str(path), raw.decode("utf-8", "replace"))
        raise UsageError(f"{path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} cannot be decoded",
                         Span(str(path), line, column), hint="save the file as UTF-8") from None


# ---- generic AST walking ----------------------------------------------------------------------
def is_node(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def iter_nodes(root: Any) -> Iterator[Any]:
    """Every AST node under ``root`` (itself included), depth first, in field order."""
    stack = [root]
    while stack:
        n = stack.pop()
        if is_node(n):
            yield n
            kids = [getattr(n, f.name) for f in dataclasses.fields(n) if f.name != "span"]
        elif isinstance(n, (list, tuple)):
            kids = list(n)
        else:
            continue
        stack.extend(reversed(kids))


def replace_nodes(root: Any, fn: Callable[[Any], Any | None]) -> Any:
    """A copy of ``root`` in which each node ``n`` for which ``fn(n)`` is not None is replaced by
    that result (not walked further); ``fn`` sees the original nodes."""

    def rec(x: Any) -> Any:
        if is_node(x):
            new = fn(x)
            if new is not None:
                return new
            changes = {f.name: rec(getattr(x, f.name)) for f in dataclasses.fields(x) if f.name != "span"}
            return dataclasses.replace(x, **changes)
        if isinstance(x, list):
            return [rec(i) for i in x]
        if isinstance(x, tuple):
            return tuple(rec(i) for i in x)
        return x

    return rec(root)


def choices_of(program: ast.Program) -> dict[str, ast.Choice]:
    """Every choice in the program by key (the first one of a key shared by several)."""
    out: dict[str, ast.Choice] = {}
    for n in iter_nodes(program.items):
        if isinstance(n, ast.Choice):
            out.setdefault(n.key, n)
    return out


def referenced_names(root: Any) -> set[str]:
    return {n.id for n in iter_nodes(root) if isinstance(n, ast.Name)}


# ---- resolution -------------------------------------------------------------------------------
def resolve(program: ast.Program, selection: Mapping[str, int]) -> ast.Program:
    """The plain program: every choice replaced by its selected option (nested choices too)."""

    def pick(n: Any) -> Any | None:
        if isinstance(n, ast.Choice):
            i = selection.get(n.key, 0)
            if not 0 <= i < len(n.options):
                raise UsageError(f"choice '{n.key}' has no option {i}", n.span)
            return replace_nodes(n.options[i], pick)
        return None

    items = replace_nodes(program.items, pick)
    return prune_unused(ast.Program(items, program.file, list(program.comments)))


def prune_unused(program: ast.Program) -> ast.Program:
    """Drop blocks, functions and constants no network reaches (with the comments on their lines
    and the comment lines right above them, except the file's opening comment), so a resolved
    program shows only what it runs."""
    defs = {i.name: i for i in program.items if isinstance(i, (ast.BlockDef, ast.FuncDef, ast.ConstDef))}
    live: set[str] = set()
    todo = [n for i in program.items if isinstance(i, ast.NetworkDef) for n in referenced_names(i)]
    while todo:
        name = todo.pop()
        if name in live or name not in defs:
            continue
        live.add(name)
        todo.extend(referenced_names(defs[name]))
    dead = [i for n, i in defs.items() if n not in live]
    if not dead:
        return program
    drop: set[int] = set()
    comment_lines = {c[0] for c in program.comments}
    header = 1
    while header in comment_lines:  # the file's opening comment is nobody's leading comment
        header += 1
    for item in dead:
        if item.span is None:
            continue
        end = getattr(item, "end_line", 0) or item.span.end_line or item.span.line
        drop.update(range(item.span.line, end + 1))
        line = item.span.line - 1
        while line in comment_lines and line >= header:  # its leading comment
            drop.add(line)
            line -= 1
    items = [i for i in program.items if not (isinstance(i, (ast.BlockDef, ast.FuncDef, ast.ConstDef))
                                                and i.name not in live)]
    comments = [c for c in program.comments if c[0] not in drop]
    return ast.Program(items, program.file, comments)


def active_choices(program: ast.Program, selection: Mapping[str, int]) -> list[str]:
    """Keys of the choices the selected program can reach (see ``reachable``)."""
    return reachable(program, selection)[0]


def reachable(program: ast.Program, selection: Mapping[str, int]) -> tuple[list[str], set[str]]:
    """(choice keys, names of blocks/functions/constants) the selected program can reach: inside a
    choice only the selected option is followed, and only definitions reached from a network."""
    defs = {i.name: i for i in program.items if isinstance(i, (ast.BlockDef, ast.FuncDef, ast.ConstDef))}
    seen_defs: set[str] = set()
    found: list[str] = []
    todo: list[Any] = [i for i in program.items if isinstance(i, ast.NetworkDef)]
    while todo:
        stack = [todo.pop()]
        while stack:
            n = stack.pop()
            if isinstance(n, ast.Choice):
                if n.key not in found:
                    found.append(n.key)
                i = selection.get(n.key, 0)
                if 0 <= i < len(n.options):
                    stack.append(n.options[i])
                continue
            if isinstance(n, ast.Name) and n.id in defs and n.id not in seen_defs:
                seen_defs.add(n.id)
                todo.append(defs[n.id])
            if is_node(n):
                stack.extend(getattr(n, f.name) for f in dataclasses.fields(n) if f.name != "span")
            elif isinstance(n, (list, tuple)):
                stack.extend(n)
    return sorted(found), seen_defs


# ---- printing ---------------------------------------------------------------------------------
def render(program: ast.Program, comments: bool = True) -> str:
    """Canonical CDL text (``convdsl fmt``'s layout)."""
    if not comments:
        program = ast.Program(program.items, program.file, [])
    try:
        return format_program(program)
    except Exception:
        if not comments or not program.comments:
            raise
        return format_program(ast.Program(program.items, program.file, []))  # comments never block a mutant


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---- candidates -------------------------------------------------------------------------------
@dataclass
class Genotype:
    """A point of the search: the (possibly mutated) space program and one option per choice."""

    program: str  # canonical CDL text, still with its choices
    selection: Selection

    def to_json(self) -> str:
        return json.dumps(self.selection, sort_keys=True)


@dataclass
class Checked:
    """A genotype that passed the front end."""

    genotype: Genotype
    text: str  # the resolved plain program (with the space's comments)
    hash: str  # sha256 of the resolved program without comments
    graph_hash: str  # sha256 of the elaborated network printed flat: equal for programs that build the same network
    params: int
    macs: int
    active: list[str]  # choice keys the candidate reaches (mutations change these)
    graph: Graph = field(repr=False, default=None)  # type: ignore[assignment]


class Rejected(Exception):
    """A mutant or sample that the front end (or a limit) refused; never stops a search."""

    def __init__(self, reason: str, message: str, text: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason  # syntax | elaborate | verify | data | too_big | format | duplicate
        self.message = message
        self.text = text


def _stage_of(e: ConvDSLError) -> str:
    from convdsl.errors import CDLSyntaxError

    return "syntax" if isinstance(e, CDLSyntaxError) else "elaborate"


class SearchSpace:
    """A CDL program with choices, the file it came from (for imports and messages) and the network
    searched.  ``check`` runs a genotype through the front end; ``sample`` draws one at random."""

    def __init__(self, text: str, file: str = "<space>", network: str | None = None,
                 sources: dict[str, str] | None = None, max_params: int | None = None,
                 fits: Callable[[Graph], None] | None = None) -> None:
        self.file = file
        self.sources: dict[str, str] = dict(sources or {})
        self.max_params = max_params
        self.fits = fits
        program = parse(text, file)
        named = replace_nodes(program.items, lambda n: _named_choice(n) if isinstance(n, ast.Choice) else None)
        self.program = ast.Program(named, file, list(program.comments))
        self.network = pick_network_name(self.program, network)
        self.text = render(self.program)  # the canonical space, every choice named
        self.choices = choices_of(self.program)
        self._check_imports()

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> "SearchSpace":
        return cls(read_space_file(path), str(path), **kw)

    # the front end ------------------------------------------------------------------------
    def loader(self, path: str) -> str:
        """Imported files: served from ``sources`` (so a remote worker needs no files), read and
        remembered the first time."""
        if path not in self.sources:
            self.sources[path] = read_source(path)
        return self.sources[path]

    def elaborate(self, text: str, options: Options | None = None) -> tuple[Graph, Any]:
        return elaborate_text(text, self.file, self.network, options or Options(), self.loader)

    def _check_imports(self) -> None:
        """Choices must live in the space file itself: those of imported files could not be
        written into the resolved program."""
        g, el = self.elaborate(self.text, Options(first_choice=True))
        foreign = sorted(set(el.choices_seen) - set(self.choices))
        if foreign:
            c = el.choices_seen[foreign[0]]
            raise UsageError(f"choice '{foreign[0]}' is in an imported file ({c.span.file if c.span else '?'})",
                             hint="write the choices of a search space in the space file itself")

    def check(self, genotype: Genotype, program: ast.Program | None = None) -> Checked:
        """Resolve, print, parse, elaborate, verify: a ``Checked`` candidate or ``Rejected``."""
        try:
            prog = program if program is not None else parse(genotype.program, self.file)
            missing = [k for k in choices_of(prog) if k not in genotype.selection]
            if missing:
                raise Rejected("elaborate", f"choice '{missing[0]}' has no selection")
            plain = resolve(prog, genotype.selection)
            text = render(plain)
            bare = render(plain, comments=False)
        except Rejected:
            raise
        except ConvDSLError as e:
            raise Rejected(_stage_of(e), e.render()) from None
        except Exception as e:  # the printer is part of the front end too
            raise Rejected("format", f"{type(e).__name__}: {e}") from None
        try:
            g, _ = self.elaborate(text)
        except ConvDSLError as e:
            raise Rejected(_stage_of(e), e.render(), text) from None
        except (RecursionError, MemoryError) as e:
            raise Rejected("elaborate", f"{type(e).__name__}: {e}", text) from None
        try:
            verify(g)
        except ConvDSLError as e:
            raise Rejected("verify", e.render(), text) from None
        if self.fits is not None:
            try:
                self.fits(g)
            except ConvDSLError as e:
                raise Rejected("data", e.render(), text) from None
        params = g.params.count()
        if self.max_params is not None and params > self.max_params:
            raise Rejected("too_big", f"{params:,} parameters > --max-params {self.max_params:,}", text)
        from convdsl.ir.stats import summary

        macs = int(summary(g).get("macs", 0))
        from convdsl.lang.printer import print_graph

        return Checked(genotype, text, text_hash(bare), text_hash(print_graph(g)), params, macs,
                       active_choices(prog, genotype.selection), g)

    # sampling -----------------------------------------------------------------------------
    def initial(self) -> Genotype:
        return Genotype(self.text, {k: 0 for k in sorted(self.choices)})

    def sample(self, rng: random.Random) -> Genotype:
        """Every choice drawn uniformly (keys in sorted order, so a seed gives one sample)."""
        return Genotype(self.text, {k: rng.randrange(len(self.choices[k].options)) for k in sorted(self.choices)})

    def size(self) -> int:
        n = 1
        for c in self.choices.values():
            n *= len(c.options)
        return n


def _named_choice(c: ast.Choice) -> ast.Choice:
    named = ast.Choice([replace_nodes(o, lambda n: _named_choice(n) if isinstance(n, ast.Choice) else None)
                        for o in c.options], c.key, c.span)
    return named


def pick_network_name(program: ast.Program, name: str | None) -> str:
    nets = program.networks()
    if not nets:
        raise UsageError(f"{program.file} defines no network")
    if name is None:
        if len(nets) > 1:
            raise UsageError(f"{program.file} defines several networks: {', '.join(n.name for n in nets)}",
                             hint="pick one with --network NAME")
        return nets[0].name
    if name not in [n.name for n in nets]:
        raise UsageError(f"no network '{name}' in {program.file}")
    return name


def elaborate_text(text: str, file: str, network: str | None, options: Options,
                   loader: Callable[[str], str] | None = None) -> tuple[Graph, Any]:
    """``lang.elaborate.elaborate`` with an import loader: (graph, elaborator)."""
    from convdsl.errors import ResourceError

    el, mod = load_program(text, file, options, loader)
    net = pick_network(mod, network)
    try:
        with stack_room():
            g = el.elaborate_network(mod, net)
    except RecursionError:
        raise ResourceError("program nests too deeply to elaborate", net.span) from None
    g.source_hash = text_hash(text)
    g.choices = sorted(el.choices_seen)
    return g, el
