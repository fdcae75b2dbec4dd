"""Completion, on half-typed text.

What may come at the cursor is read off the tokens before it (the text need
not parse); what names exist comes from the file's last good index:

- inside the parentheses of an op or block call, at an argument: its keyword
  arguments not given yet (``stride=`` with the default as detail), then names;
- after ``name=`` of an op attribute that takes words: those words (``pad=same``);
- after ``m.`` where ``m`` is an import alias: the names of that file;
- elsewhere: values and parameters of the enclosing item, blocks, defs and
  constants of the file and its imports, ops (their doc as detail), builtins
  and keywords.
"""
from __future__ import annotations

from lsprotocol import types as lsp

from convdsl.ir.ops import OPS
from convdsl.ir.opdocs import signature as op_signature
from convdsl.ir.optable import REQUIRED, format_value
from convdsl.lang import ast
from convdsl.lang.builtins import BUILTINS
from convdsl.lang.format import format_expr
from convdsl.lsp.hover import attr_text
from convdsl.lsp.index import Def, FileIndex
from convdsl.lsp.tokens import KEYWORDS, Tok, lex

_KIND = {"block": lsp.CompletionItemKind.Class, "network": lsp.CompletionItemKind.Module,
         "def": lsp.CompletionItemKind.Function, "const": lsp.CompletionItemKind.Constant,
         "import": lsp.CompletionItemKind.Module, "param": lsp.CompletionItemKind.Variable,
         "input": lsp.CompletionItemKind.Variable, "value": lsp.CompletionItemKind.Variable,
         "loop": lsp.CompletionItemKind.Variable, "size": lsp.CompletionItemKind.Variable}


def complete(text: str, line: int, column: int, index: FileIndex | None) -> lsp.CompletionList:
    """Completions at 1-based (line, column) of ``text``; ``index`` is the file's last good index."""
    lines = text.split("\n")
    offset = sum(len(x) + 1 for x in lines[:line - 1]) + column - 1
    toks = lex(text[:offset])
    if toks and toks[-1].type == "NAME" and toks[-1].offset + len(toks[-1].text) == offset:
        toks = toks[:-1]  # the word being typed: the client filters by it
    items: list[lsp.CompletionItem] = []
    if index is not None and len(toks) >= 2 and toks[-1].type == "DOT" and toks[-2].type == "NAME":
        path = index.aliases.get(toks[-2].text)
        other = index.imported(path) if path else None
        if other is not None:
            items = [_def_item(d) for d in other.visible().values()]
        return lsp.CompletionList(is_incomplete=False, items=items)
    call = _enclosing_call(toks)
    scope = index.scope_at(line) if index is not None else None
    if call is not None:
        callee, given, keyword = call
        if keyword is not None:
            items += _words(callee, keyword)
        elif toks and toks[-1].type in ("LPAR", "COMMA"):
            items += _keywords(callee, given, index, scope)
    items += _names(index, scope)
    return lsp.CompletionList(is_incomplete=False, items=items)


def _enclosing_call(toks: list[Tok]) -> tuple[str, set[str], str | None] | None:
    """(callee name, keywords already given, keyword being valued) of the call the cursor is in."""
    depth = 0
    given: set[str] = set()
    keyword = toks[-2].text if len(toks) >= 2 and toks[-1].type == "EQUAL" and toks[-2].type == "NAME" else None
    for i in range(len(toks) - 1, -1, -1):
        t = toks[i]
        if t.type in ("RPAR", "RSQB"):
            depth += 1
        elif t.type in ("LPAR", "LSQB"):
            if depth == 0:
                if t.type == "LPAR" and i > 0 and toks[i - 1].type == "NAME":
                    return toks[i - 1].text, given, keyword
                return None
            depth -= 1
        elif t.type in ("LBRACE", "RBRACE"):
            return None
        elif t.type == "EQUAL" and depth == 0 and i > 0 and toks[i - 1].type == "NAME":
            given.add(toks[i - 1].text)
    return None


def _keywords(callee: str, given: set[str], index: FileIndex | None, scope) -> list[lsp.CompletionItem]:
    out = []
    if callee in OPS:
        op = OPS[callee]
        for n, a in enumerate(op.attrs):
            if a.name in given:
                continue
            default = "required" if a.default is REQUIRED else \
                (a.default if isinstance(a.default, str) and "sym" in a.kind else format_value(a.default))
            out.append(lsp.CompletionItem(
                label=f"{a.name}=", kind=lsp.CompletionItemKind.Field, detail=f"{a.name}={default}",
                documentation=lsp.MarkupContent(lsp.MarkupKind.Markdown, attr_text(callee, a)),
                insert_text=f"{a.name}=", sort_text=f"0{n:02d}"))
        return out
    d = index.resolve(callee, scope) if index is not None else None
    if d is not None and isinstance(d.node, (ast.BlockDef, ast.FuncDef)):
        for n, p in enumerate(d.node.params):
            if p.name in given:
                continue
            detail = p.name if p.default is None else f"{p.name}={format_expr(p.default)}"
            out.append(lsp.CompletionItem(label=f"{p.name}=", kind=lsp.CompletionItemKind.Field, detail=detail,
                                          insert_text=f"{p.name}=", sort_text=f"0{n:02d}"))
    return out


def _words(callee: str, keyword: str) -> list[lsp.CompletionItem]:
    op = OPS.get(callee)
    a = op.attr(keyword) if op is not None else None
    if a is None or not a.choices:
        return []
    return [lsp.CompletionItem(label=w, kind=lsp.CompletionItemKind.EnumMember, detail=f"{callee}({keyword}={w})",
                               documentation=a.doc or None, sort_text=f"0{n:02d}")
            for n, w in enumerate(a.choices)]


def _def_item(d: Def) -> lsp.CompletionItem:
    node = d.node
    detail = d.kind
    if isinstance(node, (ast.BlockDef, ast.FuncDef, ast.NetworkDef)):
        params = ", ".join(p.name if getattr(p, "default", None) is None else f"{p.name}={format_expr(p.default)}"
                           for p in node.params)
        detail = f"{d.kind} {d.name}({params})"
    elif isinstance(node, ast.ConstDef):
        detail = f"{d.name} = {format_expr(node.value)}"
    return lsp.CompletionItem(label=d.name, kind=_KIND.get(d.kind, lsp.CompletionItemKind.Text), detail=detail,
                              sort_text=f"1{d.name}")


def _names(index: FileIndex | None, scope) -> list[lsp.CompletionItem]:
    out: list[lsp.CompletionItem] = []
    seen: set[str] = set()
    if scope is not None:
        for name, defs in scope.locals.items():
            seen.add(name)
            out.append(lsp.CompletionItem(label=name, kind=_KIND[defs[0].kind], detail=defs[0].kind,
                                          sort_text=f"1{name}"))
    if index is not None:
        for name, d in index.visible().items():
            if name not in seen and d.kind != "network":
                seen.add(name)
                out.append(_def_item(d))
    if scope is not None:  # a network's symbols, after what the file binds (as the elaborator looks them up)
        for name, d in scope.sizes.items():
            if name not in seen:
                seen.add(name)
                out.append(lsp.CompletionItem(label=name, kind=_KIND["size"], detail="symbolic size", sort_text=f"1{name}"))
    for name, op in OPS.items():
        doc = f"```cdl\n{op_signature(op)}\n```\n\n" + (f"example: `{op.example}`" if op.example else "")
        out.append(lsp.CompletionItem(
            label=name, kind=lsp.CompletionItemKind.Function, detail=op.doc or op_signature(op),
            label_details=lsp.CompletionItemLabelDetails(description=op.group),
            documentation=lsp.MarkupContent(lsp.MarkupKind.Markdown, doc), sort_text=f"2{name}"))
    for name, b in BUILTINS.items():
        out.append(lsp.CompletionItem(label=name, kind=lsp.CompletionItemKind.Function, detail=b.usage,
                                      sort_text=f"3{name}"))
    for kw in KEYWORDS:
        out.append(lsp.CompletionItem(label=kw, kind=lsp.CompletionItemKind.Keyword, sort_text=f"4{kw}"))
    return out
