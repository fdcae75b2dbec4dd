"""One pass of the compiler's front end over an open document, as the editor needs it.

``analyze`` parses the text, loads its imports, elaborates every network it
defines, and collects:

- ``problems``: every located ``ConvDSLError``, with the file it belongs to.
  The front end stops at the first error; to report more, the analysis
  recovers where it can without a second parser: after a syntax error the
  top-level item holding it is blanked out (line numbers kept) and the text
  parsed again; each import is loaded on its own; a failing constant or item
  is dropped and the file loaded again; each network is elaborated on its
  own.  "unknown name" errors about names whose definition already failed
  are not repeated.
- ``notes``: what the elaborator recorded by source position (statement
  types, block instances with their params/MACs, op nodes), see
  ``convdsl.lsp.recording``.
- ``index``: the names of the file (``convdsl.lsp.index``).

Imported files are parsed and loaded once and reused while their text is
unchanged (``ModuleCache``): an edit costs one parse of the edited file and
the elaboration of its networks.

``analyze(..., defer=True)`` stops once every diagnostic is known; ``finish``
then does what only hints, hover and navigation read (the name index, each
network's statistics: params and MACs of instances and ops), so that a
server can publish the diagnostics first.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from convdsl.errors import CDLNameError, ConvDSLError, Span
from convdsl.ir.graph import Graph
from convdsl.ir.stats import LayerStat, layer_stats, totals
from convdsl.ir.types import TensorType
from convdsl.lang import ast
from convdsl.lang.elaborate import Module, Options
from convdsl.lang.parser import parse
from convdsl.lang.source import read_source
from convdsl.lsp.chunks import PieceCache
from convdsl.lsp.index import FileIndex
from convdsl.lsp.recording import Notes, RecordingElaborator, call_sites
from convdsl.lsp.tokens import Tok, lex

MAX_SYNTAX_ERRORS = 8  # reparses after syntax errors, per analysis
_UNKNOWN = re.compile(r"unknown name '([^']+)'")


@dataclass
class Problem:
    """A diagnostic before it is turned into LSP types."""

    file: str  # the file it is shown in
    span: Span
    error: ConvDSLError
    prefix: str = ""  # for an error shown away from where it happened: "in blocks/resnet.cdl:12: "
    related: list[tuple[Span, str]] = field(default_factory=list)


@dataclass
class OpNote:
    """An op node created at some source position, with its statistics."""

    node: str
    op: str
    types: list[TensorType]
    params: int
    macs: int


@dataclass
class NetworkResult:
    name: str
    graph: Graph
    rows: list[LayerStat]
    totals: dict[str, int]


class Sources:
    """Texts of .cdl files: the editor's open buffers first, then the disk."""

    def __init__(self) -> None:
        self.open: dict[str, str] = {}

    def read(self, path: str) -> str:
        text = self.open.get(path)
        return text if text is not None else read_source(path)

    def maybe(self, path: str) -> str | None:
        try:
            return self.read(path)
        except (OSError, UnicodeDecodeError):
            return None


class ModuleCache:
    """Loaded imports, reused while every file they read is unchanged."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[dict[str, str], dict[str, Module]]] = {}  # import target -> (texts, modules)
        self.indexes: dict[str, tuple[str, FileIndex | None]] = {}  # path -> (text, index)
        self.pieces = PieceCache()  # the open documents' items, parsed
        self.networks: dict[tuple[str, str], tuple] = {}  # (file, network) -> (key, names used, replay)

    def modules_for(self, target: str, sources: Sources) -> dict[str, Module] | None:
        entry = self.entries.get(target)
        if entry is None:
            return None
        texts, modules = entry
        if all(sources.maybe(p) == t for p, t in texts.items()):
            return modules
        del self.entries[target]
        return None

    def index(self, path: str, sources: Sources) -> FileIndex | None:
        """The name index of any file (imports of the open documents, workspace files)."""
        text = sources.maybe(path)
        if text is None:
            return None
        hit = self.indexes.get(path)
        if hit is not None and hit[0] == text:
            return hit[1]
        self.indexes[path] = (text, None)  # an import cycle sees None instead of recursing
        try:
            program = parse(text, path)
        except ConvDSLError:
            return None
        except RecursionError:
            return None
        index = FileIndex(path, program, lex(text), lambda p: self.index(p, sources))
        self.indexes[path] = (text, index)
        return index


@dataclass
class Analysis:
    path: str
    text: str
    program: ast.Program | None = None
    tokens: list[Tok] = field(default_factory=list)
    index: FileIndex | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: Notes = field(default_factory=Notes)
    ops: dict[tuple, list[OpNote]] = field(default_factory=dict)  # op application position -> nodes
    networks: list[NetworkResult] = field(default_factory=list)
    modules: dict[str, Module] = field(default_factory=dict)
    module: Module | None = None  # this file, loaded
    notes_of_last: Notes = field(default_factory=Notes)  # what the last network elaborated recorded
    ops_of_last: dict[tuple, list[OpNote]] = field(default_factory=dict)
    import_texts: dict[str, str] = field(default_factory=dict)  # every imported file read, and its text
    clean_parse: bool = False  # parsed without a syntax error (no item blanked out)
    later: list[Callable[[], None]] = field(default_factory=list)  # what ``finish`` does


def finish(a: Analysis) -> Analysis:
    """Do the work ``analyze(..., defer=True)`` left (once; in order)."""
    while a.later:
        a.later.pop(0)()
    return a


def analyze(path: str, text: str, sources: Sources, cache: ModuleCache, defer: bool = False) -> Analysis:
    """Everything the editor shows about ``text`` (the buffer of ``path``, an absolute path); with
    ``defer``, only up to the diagnostics: the caller runs ``finish`` on it before anything else."""
    a = Analysis(path, text)
    _analyze(a, sources, cache)
    return a if defer else finish(a)


def _analyze(a: Analysis, sources: Sources, cache: ModuleCache) -> None:
    path, text = a.path, a.text
    failed: set[str] = set()  # names whose definition failed: "unknown name" errors about them are noise
    pieces = cache.pieces.parse(text, path)
    if pieces is not None:
        a.program, a.tokens = pieces
    else:
        a.tokens = lex(text)
        a.program = _parse_recovering(a, failed)
    if a.program is None:
        return
    a.clean_parse = not a.problems
    a.later.append(lambda: _index(a, sources, cache))
    imports_ok = _load_recovering(a, sources, cache, failed)
    if a.module is None:
        return
    for net in a.program.networks():
        key = _network_key(a, net, failed, imports_ok)
        hit = cache.networks.get((path, net.name))
        if hit is not None and hit[0] is not None and hit[0] == key(hit[1]):
            _replay(a, hit[2])
            continue
        before = len(a.problems), len(a.networks)
        used = _elaborate_network(a, net, sources, failed, imports_ok)
        cache.networks[(path, net.name)] = (key(used), used, _Replay(a, before))


def _index(a: Analysis, sources: Sources, cache: ModuleCache) -> None:
    assert a.program is not None
    a.index = FileIndex(a.path, a.program, a.tokens, lambda p: cache.index(p, sources))
    cache.indexes[a.path] = (a.text, a.index)


class _Replay:
    """What elaborating one network added to an analysis, to add again while nothing it read changed."""

    def __init__(self, a: Analysis, before: tuple[int, int]) -> None:
        self.problems = a.problems[before[0]:]
        self.networks = a.networks[before[1]:]
        self.notes = a.notes_of_last  # set by _elaborate_network
        self.ops = a.ops_of_last


def _replay(a: Analysis, r: _Replay) -> None:
    a.problems += r.problems
    a.networks += r.networks
    a.notes.merge(r.notes)
    for k, v in r.ops.items():
        a.ops.setdefault(k, []).extend(v)


def _network_key(a: Analysis, net: ast.NetworkDef, failed: set[str], imports_ok: bool):
    """A function of the names a network used -> everything its elaboration depends on: the text and
    first line of the network and of every item of this file it looked up, all constants of the file
    (they are evaluated on load), the imported modules (cached objects, replaced when their text changes),
    and what the error reporting depends on."""
    lines = a.text.split("\n")
    items = {getattr(it, "name", None): it for it in a.program.items} if a.program else {}

    def text_of(item) -> tuple[int, str]:
        start = item.span.line
        end = item.span.end_line if item.span.end_line else len(lines) + 1
        return start, "\n".join(lines[start - 1:max(start, end - 1)])

    consts = tuple(text_of(it) for it in items.values() if isinstance(it, ast.ConstDef))
    imports = tuple(sorted(a.import_texts.items()))

    def key(used: set[tuple[str, str]] | None):
        if used is None:
            return None
        # a name looked up and not found here must stay not found: a new definition changes the result
        mine = tuple(sorted((n, text_of(items[n]) if n in items else None) for f, n in used if f == a.path))
        return (text_of(net), mine, consts, imports, tuple(sorted(failed)), imports_ok)

    return key


# ---- parsing -------------------------------------------------------------------------------
def _parse_recovering(a: Analysis, failed: set[str]) -> ast.Program | None:
    text = a.text
    for _ in range(MAX_SYNTAX_ERRORS):
        try:
            return parse(text, a.path)
        except RecursionError:
            return None
        except ConvDSLError as err:
            span = err.span or Span(a.path, 1, 1)
            a.problems.append(Problem(a.path, span, err))
            blanked = _blank_item(text, span.line, span.column, a.tokens, failed)
            if blanked == text:
                return None
            text = blanked
    return None


def _item_starts(tokens: list[Tok]) -> list[int]:
    """Lines where a top-level item seems to start: a keyword or ``NAME =`` at column 1."""
    starts = []
    for i, t in enumerate(tokens):
        if t.column != 1:
            continue
        if t.type in ("IMPORT", "BLOCK", "NETWORK", "DEF") or \
                (t.type == "NAME" and i + 1 < len(tokens) and tokens[i + 1].type == "EQUAL"):
            starts.append(t.line)
    return starts


def _blank_item(text: str, line: int, column: int, tokens: list[Tok], failed: set[str]) -> str:
    """``text`` with the top-level item around ``line`` replaced by blank lines."""
    starts = _item_starts(tokens)
    before = [s for s in starts if s <= line]
    if before and before[-1] == line and column == 1 and len(before) > 1:
        before = before[:-1]  # an error at the very start of an item: the previous one is unclosed
    first = before[-1] if before else 1
    after = [s for s in starts if s > line]
    end = after[0] if after else None
    lines = text.split("\n")
    stop = (end - 1) if end else len(lines)
    for t in tokens:  # the name the item defined
        if t.line == first and t.type == "NAME":
            failed.add(t.text)
            break
    return "\n".join("" if first - 1 <= i < stop else ln for i, ln in enumerate(lines))


# ---- loading -----------------------------------------------------------------------------
def _options() -> Options:
    return Options(first_choice=True)  # a search space is checked with the first option of each choice


def _elaborator(sources: Sources, modules: dict[str, Module], reads: dict[str, str] | None = None):
    def loader(p: str) -> str:
        t = sources.read(p)
        if reads is not None:
            reads[p] = t
        return t

    el = RecordingElaborator(_options(), loader)
    el.modules.update(modules)
    return el


def _load_recovering(a: Analysis, sources: Sources, cache: ModuleCache, failed: set[str]) -> bool:
    """Load the file's imports one by one, then its items; drop what fails.  True if every import loaded."""
    program = a.program
    assert program is not None
    items = list(program.items)
    imports_ok = True
    for imp in [i for i in items if isinstance(i, ast.Import)]:
        target = str(((Path(a.path).parent if not a.path.startswith("<") else Path.cwd()) / imp.path).resolve())
        cached = cache.modules_for(target, sources)
        if cached is not None:
            a.modules.update(cached)
            a.import_texts.update(cache.entries[target][0])
            continue
        reads: dict[str, str] = {}
        el = _elaborator(sources, a.modules, reads)
        try:
            el.load_module(ast.Program([imp], program.file), a.path)
        except RecursionError:
            items.remove(imp)
            imports_ok = False
            continue
        except ConvDSLError as err:
            a.import_texts.update(reads)
            _report(a, err, imp.span, failed, True)
            items.remove(imp)
            imports_ok = False
            continue
        loaded = {p: m for p, m in el.modules.items() if p != a.path}
        cache.entries[target] = (reads, loaded)
        a.import_texts.update(reads)
        a.modules.update(loaded)
    for _ in range(len(items) + 1):
        el = _elaborator(sources, a.modules)
        try:
            a.module = el.load_module(ast.Program(items, program.file, program.comments), a.path)
            a.modules[a.path] = a.module
            return imports_ok
        except RecursionError:
            return imports_ok
        except ConvDSLError as err:
            bad = _item_of(err, items, a.path)
            _report(a, err, None, failed, True)
            if bad is None:
                return imports_ok
            failed.add(getattr(bad, "name", ""))
            items.remove(bad)
    return imports_ok


def _item_of(err: ConvDSLError, items: list, path: str):
    if err.span is None or err.span.file != path:
        return None
    line = err.span.line
    best = None
    for it in items:
        if it.span is not None and it.span.line <= line:
            best = it
    return best


# ---- networks ------------------------------------------------------------------------------
def _elaborate_network(a: Analysis, net: ast.NetworkDef, sources: Sources, failed: set[str],
                       imports_ok: bool) -> set[tuple[str, str]] | None:
    """Elaborate one network into ``a``; returns the top-level names it looked up (None: do not cache)."""
    el = _elaborator(sources, a.modules)
    assert a.module is not None
    a.notes_of_last, a.ops_of_last = el.notes, {}
    try:
        g = el.elaborate_network(a.module, net)
    except RecursionError:
        a.problems.append(Problem(a.path, net.span or Span(a.path, 1, 1),
                                  ConvDSLError("program nests too deeply to elaborate")))
        return None
    except ConvDSLError as err:
        _report(a, err, net.span, failed, imports_ok)
        _note_ops(a, el, {})  # what was built before the error still shows its types
        a.notes.merge(el.notes)
        return el.used
    result = NetworkResult(net.name, g, [], {})
    ops = _note_ops(a, el, {})
    a.notes.merge(el.notes)
    a.networks.append(result)
    a.later.append(lambda: _count(result, el.notes.instances, ops))
    return el.used


def _count(result: NetworkResult, instances: list, ops: list[OpNote]) -> None:
    """A network's statistics, and the params and MACs of its block instances and op nodes."""
    rows = layer_stats(result.graph)
    by_id = {r.name: r for r in rows}
    for inst in instances:
        inst.params = sum(by_id[n].params for n in inst.nodes if n in by_id)
        inst.macs = sum(by_id[n].macs for n in inst.nodes if n in by_id)
    for note in ops:
        r = by_id.get(note.node)
        if r is not None:
            note.params, note.macs = r.params, r.macs
    result.rows, result.totals = rows, totals(rows)


def _note_ops(a: Analysis, el: RecordingElaborator, by_id: dict[str, LayerStat]) -> list[OpNote]:
    out = []
    for key, ids in el.notes.op_nodes.items():
        for nid in ids:
            if nid not in el.graph:
                continue
            node = el.graph.node(nid)
            r = by_id.get(nid)
            note = OpNote(nid, node.op, list(node.types), r.params if r else 0, r.macs if r else 0)
            a.ops.setdefault(key, []).append(note)
            a.ops_of_last.setdefault(key, []).append(note)
            out.append(note)
    return out


# ---- errors --------------------------------------------------------------------------------
def _report(a: Analysis, err: ConvDSLError, fallback: Span | None, failed: set[str], names_ok: bool) -> None:
    if isinstance(err, CDLNameError):
        m = _UNKNOWN.match(err.message)
        if m and (m.group(1) in failed or not names_ok):
            return
    span = err.span
    if span is None:
        span = fallback or Span(a.path, 1, 1)
    if span.file == a.path:
        a.problems.append(Problem(a.path, span, err))
        return
    _report_elsewhere(a, err, fallback)


def _report_elsewhere(a: Analysis, err: ConvDSLError, fallback: Span | None) -> None:
    """An error inside another file: shown there, and here at the outermost call site in this
    file (or the import line that brought the file in)."""
    span = err.span
    assert span is not None
    a.problems.append(Problem(span.file, span, err, related=[]))
    here = [s for s in call_sites(err) if s.file == a.path]
    site = here[-1] if here else fallback or Span(a.path, 1, 1)
    where = f"{short_path(span.file, a.path)}:{span.line}:{span.column}"
    a.problems.append(Problem(a.path, site, err, prefix=f"in {where}: ", related=[(span, "the error is here")]))


def short_path(file: str, relative_to: str) -> str:
    try:
        return str(Path(file).relative_to(Path(relative_to).parent))
    except ValueError:
        return file

