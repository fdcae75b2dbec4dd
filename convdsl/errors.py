"""User-facing errors.

Every mistake a .cdl author can make surfaces as a ``ConvDSLError``: it knows
the source span, renders the offending line with a caret, says what was
expected and what was found, and offers a hint.  The CLI prints ``render()``
and exits with ``exit_code``; no Python traceback reaches the user.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Span:
    """A location in a .cdl source: 1-based line/column, plus the end."""

    file: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# Source texts by file name, so errors raised far from the parser can still
# show the offending line.  Filled by the parser; bounded by the files parsed.
_SOURCES: dict[str, str] = {}


def remember_source(file: str, text: str) -> None:
    _SOURCES[file] = text


def source_line(file: str, line: int) -> str | None:
    text = _SOURCES.get(file)
    if text is None:
        return None
    lines = text.split("\n")  # the lexer counts '\n' only; splitlines() also splits at \f, \v, \x1c...
    return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else None


def nearest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Closest spellings of ``name`` among ``candidates`` (for hints)."""
    return difflib.get_close_matches(name, sorted(set(candidates)), n=n, cutoff=0.6)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    close = nearest(name, candidates)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return None


class ConvDSLError(Exception):
    """Base of every error a user can cause. Subclasses set ``kind`` and ``exit_code``."""

    kind = "error"
    exit_code = 1

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        *,
        expected: str | None = None,
        got: str | None = None,
        hint: str | None = None,
        notes: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.expected = expected
        self.got = got
        self.hint = hint
        self.notes = list(notes or [])

    def with_span(self, span: Span | None) -> "ConvDSLError":
        if self.span is None and span is not None:
            self.span = span
        return self

    def render(self) -> str:
        head = f"{self.span}: " if self.span else ""
        out = [f"{head}{self.kind}: {self.message}"]
        if self.span is not None:
            text = source_line(self.span.file, self.span.line)
            if text is not None:
                gutter = f"{self.span.line:>4} | "
                column = self.span.column or 1
                out.append(gutter + text.rstrip("\n"))
                width = 1
                if self.span.end_line == self.span.line and self.span.end_column:
                    width = max(1, self.span.end_column - column)
                width = min(width, max(1, len(text) - column + 1))
                pad = "".join(c if c == "\t" else " " for c in text[: column - 1])  # keep tabs aligned
                pad += " " * (column - 1 - len(pad))
                out.append(" " * len(gutter) + pad + "^" * width)
        if self.expected is not None:
            out.append(f"  expected: {self.expected}")
        if self.got is not None:
            out.append(f"  got:      {self.got}")
        for note in self.notes:
            out.append(f"  note: {note}")
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class CDLSyntaxError(ConvDSLError):
    kind = "syntax error"
    exit_code = 3


class CDLNameError(ConvDSLError):
    kind = "name error"
    exit_code = 4


class CDLTypeError(ConvDSLError):
    """A wrong kind of value: a number where a tensor was needed, a bad attribute."""

    kind = "type error"
    exit_code = 5


class ShapeError(CDLTypeError):
    kind = "shape error"
    exit_code = 5


class ResourceError(ConvDSLError):
    """Refused before allocating: memory limit, recursion or nesting too deep."""

    kind = "resource error"
    exit_code = 6


class ChoiceError(ConvDSLError):
    """A program with unresolved ``choice(...)`` where a plain program was needed."""

    kind = "unresolved choice"
    exit_code = 7


class LoweringError(ConvDSLError):
    kind = "lowering error"
    exit_code = 8


class WeightsError(ConvDSLError):
    kind = "weights error"
    exit_code = 9


class IRError(ConvDSLError):
    """The graph IR broke an invariant (raised by ``verify``)."""

    kind = "IR error"
    exit_code = 10


class UsageError(ConvDSLError):
    """Bad command-line usage or file that cannot be read."""

    kind = "error"
    exit_code = 2


class ModelImportError(ConvDSLError):
    """`convdsl import`: a source op or pattern with no convdsl mapping (named with its module path)."""

    kind = "import error"
    exit_code = 11


class SourceError(ConvDSLError):
    """`convdsl import`: the source cannot be read: a corrupt .onnx file, a factory that does not exist."""

    kind = "source error"
    exit_code = 12


class TraceError(ConvDSLError):
    """`convdsl import`: torch.export cannot trace the model (data-dependent control flow, ...)."""

    kind = "trace error"
    exit_code = 13
