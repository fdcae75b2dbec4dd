"""Go to definition, find references, rename, and the outline of a file."""
from __future__ import annotations

import re
from typing import Callable, Iterable

from lsprotocol import types as lsp

from convdsl.ir.ops import OPS
from convdsl.lang import ast
from convdsl.lang.builtins import BUILTINS
from convdsl.lsp.convert import Lines, types_summary
from convdsl.lsp.index import Def, FileIndex, Occurrence, statements
from convdsl.lsp.recording import pos
from convdsl.lsp.tokens import KEYWORDS, Tok
from convdsl.lsp.view import FileView

UriOf = Callable[[str], "tuple[str, Lines] | None"]  # path -> (uri, lines) of a file
RENAMEABLE = ("block", "def", "const", "value", "param", "input", "loop", "network")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _location(d: Def | None, uri_of: UriOf) -> lsp.Location | None:
    if d is None:
        return None
    target = uri_of(d.file)
    if target is None:
        return None
    uri, lines = target
    return lsp.Location(uri, _tok_range(lines, d.tok))


def _tok_range(lines: Lines, t: Tok) -> lsp.Range:
    return lsp.Range(lines.position(t.line, t.column), lines.position(t.line, t.end_column))


def definition(index: FileIndex, line: int, column: int, uri_of: UriOf) -> lsp.Location | None:
    occ = index.at(line, column)
    if occ is not None:
        return _location(occ.target, uri_of)
    for imp, path in index.imports:  # on the path of an import: the file
        if imp.span is not None and imp.span.line == line:
            target = uri_of(path)
            if target is not None:
                return lsp.Location(target[0], lsp.Range(lsp.Position(0, 0), lsp.Position(0, 0)))
    return None


def references(index: FileIndex, line: int, column: int, others: Iterable[FileIndex], uri_of: UriOf,
               include_declaration: bool = True) -> list[lsp.Location]:
    occ = index.at(line, column)
    if occ is None or occ.target is None:
        return []
    symbol = occ.target.symbol
    local = occ.target.owner is not None and occ.target.kind != "param"
    files = [index] if local else _unique([index, *others])
    out = []
    for ix in files:
        target = uri_of(ix.path)
        if target is None:
            continue
        for o in ix.occurrences_of(symbol):
            if o.role == "def" and not include_declaration:
                continue
            out.append(lsp.Location(target[0], _tok_range(target[1], o.tok)))
    return out


def _unique(indexes: list[FileIndex]) -> list[FileIndex]:
    seen, out = set(), []
    for ix in indexes:
        if ix is not None and ix.path not in seen:
            seen.add(ix.path)
            out.append(ix)
    return out


class RenameRefused(Exception):
    """A rename that would break the program; the message says why."""


def prepare_rename(index: FileIndex, line: int, column: int, lines: Lines) -> lsp.Range | None:
    occ = _renameable(index, line, column)
    return _tok_range(lines, occ.tok)


def _renameable(index: FileIndex, line: int, column: int) -> Occurrence:
    occ = index.at(line, column)
    if occ is None or occ.target is None:
        raise RenameRefused("only blocks, defs, constants, parameters and values can be renamed")
    if occ.target.file != index.path:
        raise RenameRefused(f"'{occ.tok.text}' is defined in another file; rename it there")
    if occ.target.kind not in RENAMEABLE:
        raise RenameRefused(f"a {occ.target.kind} cannot be renamed")
    return occ


def rename(index: FileIndex, line: int, column: int, new_name: str, lines: Lines, uri: str) -> lsp.WorkspaceEdit:
    occ = _renameable(index, line, column)
    if not _IDENT.match(new_name) or new_name in KEYWORDS:
        raise RenameRefused(f"'{new_name}' is not a name")
    if new_name in OPS or new_name in BUILTINS:
        raise RenameRefused(f"'{new_name}' is a built-in name")
    d = occ.target
    clash = index.scope_at(d.tok.line) if d.owner is not None else None
    taken = set(clash.locals) if clash is not None else set(index.visible())
    if new_name in taken and new_name != d.name:
        raise RenameRefused(f"'{new_name}' is already defined here")
    edits = [lsp.TextEdit(_tok_range(lines, o.tok), new_name) for o in index.occurrences_of(d.symbol)]
    return lsp.WorkspaceEdit(changes={uri: edits})


# ---- outline ----------------------------------------------------------------------------------
def document_symbols(view: FileView) -> list[lsp.DocumentSymbol]:
    index = view.index
    if index is None:
        return []
    out = []
    for s in index.scopes:
        it = s.item
        toks = index.tokens[s.first:s.last]
        if not toks:
            continue
        last = next((t for t in reversed(toks) if t.type != "_NL"), toks[-1])
        rng = lsp.Range(view.lines.position(toks[0].line, toks[0].column),
                        view.lines.position(last.end_line, last.end_column))
        name_tok = index.tokens[s.name_tok] if s.name_tok is not None else toks[0]
        sel = _tok_range(view.lines, name_tok)
        if isinstance(it, ast.Import):
            out.append(lsp.DocumentSymbol(name=f'import "{it.path}"', kind=lsp.SymbolKind.Module, range=rng,
                                          selection_range=sel, detail=it.alias or None))
            continue
        kind = {ast.BlockDef: lsp.SymbolKind.Class, ast.NetworkDef: lsp.SymbolKind.Module,
                ast.FuncDef: lsp.SymbolKind.Function, ast.ConstDef: lsp.SymbolKind.Constant}[type(it)]
        detail = {ast.BlockDef: "block", ast.NetworkDef: "network", ast.FuncDef: "def", ast.ConstDef: "const"}[type(it)]
        children = []
        if isinstance(it, (ast.BlockDef, ast.NetworkDef)) and isinstance(it.body, list):
            seen = set()
            for stmt in statements(it.body):
                if isinstance(stmt, ast.Assign) and stmt.span is not None:
                    for name in stmt.targets:
                        if name in seen:
                            continue
                        seen.add(name)
                        defs = [d for d in s.locals.get(name, []) if d.node is stmt]
                        if not defs:
                            continue
                        types = view.notes.values.get((pos(stmt.span), name), [])
                        r = _tok_range(view.lines, defs[0].tok)
                        children.append(lsp.DocumentSymbol(name=name, kind=lsp.SymbolKind.Variable, range=r,
                                                           selection_range=r, detail=types_summary(types) or None))
        out.append(lsp.DocumentSymbol(name=it.name, kind=kind, range=rng, selection_range=sel, detail=detail,
                                      children=children or None))
    return out
