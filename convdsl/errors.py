"""User-facing errors.

Every mistake a .cdl author can make surfaces as a ``ConvDSLError``: it knows
the source span, renders the offending line with a caret, says what was
expected and what was found, and offers a hint.  The CLI prints ``render()``
and exits with ``exit_code``; no Python traceback reaches the user.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable


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


def forget_source(file: str) -> None:
    """Stop showing lines of ``file`` (an imported file that turned out not to be CDL)."""
    _SOURCES.pop(file, None)


def source_line(file: str, line: int) -> str | None:
    text = _SOURCES.get(file)
    if text is None:
        return None
    lines = text.split("\n")  # the lexer counts '\n' only; splitlines() also splits at \f, \v, \x1c...
    return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else None


def format_count(n: int | float) -> str:
    """A number for a message: ``1,234,567`` up to 15 digits, ``about 1.3e+215`` beyond.  Never
    fails: Python refuses ``str()`` of integers over 4,300 digits and ``float()`` over 1e308."""
    if isinstance(n, float):
        return f"{n:,.1f}" if math.isfinite(n) and abs(n) < 1e15 else f"{n:.3g}"
    if abs(n) < 10**15:
        return f"{n:,}"
    exp = math.log10(abs(n))  # exact enough for an int of any size
    mantissa = 10 ** (exp - math.floor(exp))
    return f"about {'-' if n < 0 else ''}{mantissa:.1f}e+{math.floor(exp)}"


def format_bytes(n: int | float) -> str:
    """A byte count for a message: MiB below 1 GiB, GiB above; huge values abbreviated."""
    if abs(n) < 1024:
        return f"{n} bytes"
    if abs(n) < 1024**2:
        return f"{n / 1024:,.1f} KiB"
    if abs(n) < 1024**3:
        return f"{n / 1024**2:,.1f} MiB"
    gib = n / 1024**3 if abs(n) < 2**1000 else n // 1024**3  # int // int: no float overflow
    return f"{format_count(gib) if isinstance(gib, int) else f'{gib:,.1f}'} GiB"


def clip(text: Any, limit: int = 2000) -> str:
    """``text`` cut to ``limit`` characters: an error message never prints megabytes."""
    text = str(text)
    if len(text) <= limit:
        return text
    return text[: limit - 40] + f" ... ({len(text) - limit + 40:,} more characters)"


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
        out = [f"{head}{self.kind}: {clip(self.message)}"]
        if self.span is not None:
            text = source_line(self.span.file, self.span.line)
            if text is not None:
                out += _caret_lines(text, self.span)
        if self.expected is not None:
            out.append(f"  expected: {clip(self.expected)}")
        if self.got is not None:
            out.append(f"  got:      {clip(self.got)}")
        for note in self.notes[:20]:
            out.append(f"  note: {clip(note)}")
        if self.hint:
            out.append(f"  hint: {clip(self.hint)}")
        return "\n".join(out).translate(_VISIBLE)

    def __str__(self) -> str:
        return self.render()


# Control characters a source line or a message may carry, made visible one character for one
# (carets stay aligned): a hostile file must not send escape sequences to the user's terminal,
# nor reorder what it shows with bidirectional overrides ("Trojan Source").
_VISIBLE = {c: 0x2400 + c for c in range(32) if c not in (9, 10)}
_VISIBLE.update({0x7F: 0x2421, **{c: 0xFFFD for c in range(0x80, 0xA0)},
                 **{c: 0xFFFD for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}})

SHOWN_LINE = 160  # longest source line shown whole; of a longer one, the part around the column


def _caret_lines(text: str, span: Span) -> list[str]:
    """The source line (a window of it when long) and a caret under the span."""
    gutter = f"{span.line:>4} | "
    text = text.rstrip("\n")
    column = max(1, span.column or 1)
    width = 1
    if span.end_line == span.line and span.end_column:
        width = max(1, span.end_column - column)
    if len(text) > SHOWN_LINE:  # a minified or generated line: show the part around the column
        start = max(0, min(column - 1 - SHOWN_LINE // 3, len(text) - SHOWN_LINE))
        lead = "..." if start else ""
        text = lead + text[start:start + SHOWN_LINE] + ("..." if start + SHOWN_LINE < len(text) else "")
        column = column - start + len(lead)
    width = min(width, max(1, len(text) - column + 1))
    pad = "".join(c if c == "\t" else " " for c in text[: column - 1])  # keep tabs aligned
    pad += " " * (column - 1 - len(pad))
    return [gutter + text, " " * len(gutter) + pad + "^" * width]


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
    """The graph IR broke an invariant (raised by ``verify``): a pass that could not keep the graph
    valid, or loaded weights that hold NaN or infinity."""

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


class ArtifactError(UsageError):
    """A compiled folder refused before anything in it is loaded: malformed, tampered, untrusted."""

    kind = "artifact error"
