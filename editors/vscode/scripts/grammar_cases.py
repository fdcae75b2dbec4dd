"""Turn .cdl files into grammar test files for ``vscode-tmgrammar-test``, with the compiler as the referee.

    python editors/vscode/scripts/grammar_cases.py OUT_DIR FILE.cdl ...

Each file is copied line by line into ``OUT_DIR``, every line followed by
assertions (``#   ^^^^ support.function.op.cdl``) of the scope the TextMate
grammar must give each token.  What each token *is* comes from the
compiler's own lexer (``convdsl.lsp.tokens``), the op table and the parser's
comment scan, never from the grammar under test, so the test checks that
the colouring agrees with the compiler on every example.
"""
from __future__ import annotations

import sys
from pathlib import Path

from convdsl.ir.ops import OPS
from convdsl.lang.ast import DTYPE_NAMES
from convdsl.lang.builtins import BUILTINS
from convdsl.lang.parser import parse
from convdsl.lsp.tokens import Tok, lex

FIXED = {
    "IMPORT": "keyword.declaration.cdl", "BLOCK": "keyword.declaration.cdl", "NETWORK": "keyword.declaration.cdl",
    "DEF": "keyword.declaration.cdl", "AS": "keyword.other.as.cdl",
    **{k: "keyword.control.cdl" for k in ("FOR", "IN", "REPEAT", "IF", "ELIF", "ELSE", "RETURN", "ASSERT")},
    **{k: "keyword.operator.logical.cdl" for k in ("AND", "OR", "NOT")},
    **{k: "constant.language.cdl" for k in ("TRUE", "FALSE", "NONE")},
    "INT": "constant.numeric.cdl", "FLOAT": "constant.numeric.cdl", "STRING": "string.quoted.double.cdl",
    "VBAR": "keyword.operator.pipe.cdl",
}
DEFINES = {"BLOCK": "entity.name.type.block.cdl", "NETWORK": "entity.name.type.network.cdl",
           "DEF": "entity.name.function.cdl"}


def expected(text: str) -> list[tuple[int, int, int, str]]:
    """(line, column, length, scope) that the grammar must give, 1-based like the lexer."""
    toks = [t for t in lex(text) if t.type != "_NL"]
    out = []
    depth = 0
    for i, t in enumerate(toks):
        prev: Tok | None = toks[i - 1] if i else None
        nxt: Tok | None = toks[i + 1] if i + 1 < len(toks) else None
        if t.type == "LPAR":
            depth += 1
        elif t.type == "RPAR":
            depth = max(0, depth - 1)
        scope = FIXED.get(t.type)
        if t.type == "NAME":
            scope = _name_scope(t, prev, nxt, depth)
        if scope is not None and t.end_line == t.line:
            out.append((t.line, t.column, t.end_column - t.column, scope))
    for line, col, body in parse(text, "<cases>").comments:
        out.append((line, col, len(body), "comment.line.number-sign.cdl"))
    return sorted(out)


def _name_scope(t: Tok, prev: Tok | None, nxt: Tok | None, depth: int) -> str | None:
    if prev is not None and prev.type in DEFINES:
        return DEFINES[prev.type]
    if prev is not None and prev.type == "AS":
        return "entity.name.label.cdl"
    keyword_arg = nxt is not None and nxt.type == "EQUAL"
    if keyword_arg:
        return "variable.parameter.cdl" if depth > 0 else None
    if prev is not None and prev.type == "DOT":
        return None
    if t.text in DTYPE_NAMES and nxt is not None and nxt.type == "LSQB":
        return "storage.type.dtype.cdl"
    if t.text in OPS:
        return "support.function.op.cdl"
    if t.text in BUILTINS:
        return "support.function.builtin.cdl"
    return None


def case(text: str, title: str) -> str:
    marks: dict[int, list[tuple[int, int, str]]] = {}
    for line, col, length, scope in expected(text):
        marks.setdefault(line, []).append((col, length, scope))
    out = [f'# SYNTAX TEST "source.cdl" "{title}"']
    for n, line in enumerate(text.split("\n"), 1):
        out.append(line)
        for col, length, scope in marks.get(n, []):
            if col == 1:  # the '#' of the assertion takes column 1: point at it with '<-'
                out.append("# <" + "-" * length + " " + scope)
            else:
                out.append("#" + " " * (col - 2) + "^" * length + " " + scope)
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in argv[1:]:
        p = Path(f)
        name = "__".join(p.parts[-3:]) if len(p.parts) >= 3 else p.name
        (out_dir / name).write_text(case(p.read_text(), str(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
