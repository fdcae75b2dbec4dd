"""Problems found by the analysis -> LSP diagnostics."""
from __future__ import annotations

from lsprotocol import types as lsp

from convdsl.lsp.analysis import Problem
from convdsl.lsp.convert import Lines

SOURCE = "convdsl"


def message(p: Problem) -> str:
    """The error as the terminal shows it, without the location and caret (the editor underlines)."""
    err = p.error
    out = [p.prefix + err.message]
    if err.expected is not None:
        out.append(f"expected: {err.expected}")
    if err.got is not None:
        out.append(f"got: {err.got}")
    out += [f"note: {n}" for n in err.notes]
    if err.hint:
        out.append(f"hint: {err.hint}")
    return "\n".join(out)


def to_diagnostic(p: Problem, lines: Lines, uri_of) -> lsp.Diagnostic:
    related = []
    for span, text in p.related:
        other = uri_of(span.file)
        if other is not None:
            related.append(lsp.DiagnosticRelatedInformation(
                lsp.Location(other[0], other[1].range(span)), text))
    return lsp.Diagnostic(range=lines.range(p.span), message=message(p), severity=lsp.DiagnosticSeverity.Error,
                          source=SOURCE, code=p.error.kind, related_information=related or None)
