"""Shared pieces of the command line: the root group, option sets, value parsing.

Every option value is checked where it is parsed, before it reaches the compiler: a value of
the wrong kind, out of range, not finite, or absurdly long is a usage error (exit code 2)
that names the option and says what it takes.  ``Count``, ``Number`` and the NAME=VALUE
parsers below are shared by every command.
"""
from __future__ import annotations

import json
import math
import re
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from convdsl import __version__
from convdsl.errors import ConvDSLError, UsageError, clip
from convdsl.lang.limits import MAX_DIM, MAX_VALUE_DEPTH

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

MAX_DIGITS = 1000  # an integer option or --set value (the parser's limit for integer literals)
MAX_OPTION_TEXT = 100_000  # characters of one --set/--choose value
MAX_MEMORY = 2**62  # bytes: --max-memory above this is a typo
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Count(click.IntRange):
    """An integer option within [lo, hi] (click's own message names the option and the range)."""

    def __init__(self, lo: int = 1, hi: int = 2**31 - 1) -> None:
        super().__init__(min=lo, max=hi)


class Number(click.ParamType):
    """A finite float option within [lo, hi] (nan and inf refused: click's FloatRange lets nan through)."""

    name = "number"

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> None:
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = float(value)
        else:
            try:
                v = float(str(value).strip())
            except ValueError:
                self.fail(f"{clip(repr(value), 80)} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        below = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        if below or (self.hi is not None and v > self.hi):
            lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
            hi = "" if self.hi is None else f"<= {self.hi:g}"
            self.fail(f"{v:g} is out of range: it must be {' and '.join(x for x in (lo, hi) if x)}", param, ctx)
        return v


def _literal(text: str, what: str = "--set") -> Any:
    """A --set/--choose value: an integer, a finite number, true/false/none, a JSON list of those
    (and strings), or a bare word."""
    low = text.strip()
    expected = "an integer, a number, true, false, none, a list like [64,128] or a word"
    if len(low) > MAX_OPTION_TEXT:
        raise UsageError(f"{what} value of {len(low):,} characters", expected=f"at most {MAX_OPTION_TEXT:,}")
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if re.fullmatch(r"[-+]?\d+", low):
        if len(low.lstrip("+-")) > MAX_DIGITS:
            raise UsageError(f"{what}: an integer of {len(low):,} digits", expected=f"at most {MAX_DIGITS} digits")
        return int(low)
    try:
        value = float(low)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):  # float() also reads nan, inf, infinity and 1e400
            raise UsageError(f"{what}: {clip(text, 80)!r} is not a finite number", expected=expected)
        return value
    if low.startswith("["):
        return _json_list(low, text, what)
    return low


def safe_json(text: str, what: str) -> Any:
    """JSON read without the ways it fails on hostile text: nesting past MAX_VALUE_DEPTH (json
    recurses), integers over MAX_DIGITS (Python refuses str->int past 4,300), NaN and Infinity,
    more than MAX_OPTION_TEXT characters.  ``UsageError`` naming the option otherwise."""
    if len(text) > MAX_OPTION_TEXT:
        raise UsageError(f"{what} value of {len(text):,} characters", expected=f"at most {MAX_OPTION_TEXT:,}")
    depth = most = 0
    for c in text:
        depth += (c in "[{") - (c in "]}")
        most = max(most, depth)
    if most > MAX_VALUE_DEPTH:
        raise UsageError(f"{what}: lists nested {most} deep", expected=f"at most {MAX_VALUE_DEPTH}")

    def integer(s: str) -> int:
        if len(s.lstrip("-")) > MAX_DIGITS:
            raise ValueError(f"an integer of {len(s):,} digits")
        return int(s)

    def number(s: str) -> float:
        v = float(s)
        if not math.isfinite(v):
            raise ValueError(f"{s} is not a finite number")
        return v

    def constant(s: str):
        raise ValueError(f"{s} is not a finite number")

    try:
        return json.loads(text, parse_int=integer, parse_float=number, parse_constant=constant)
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise UsageError(f"{what}: cannot read {clip(text, 80)!r} as JSON ({clip(e, 120)})") from None


def check_target_options(target_json: str | None, arch: str | None) -> None:
    """--target-json and --arch of the TVM commands, checked before TVM reads them."""
    if target_json is not None:
        safe_json(target_json, "--target-json")
    if arch is not None and not re.fullmatch(r"sm_\d{2,4}a?", arch):
        raise UsageError(f"--arch {clip(arch, 40)}: not a CUDA architecture", expected="sm_XY, e.g. sm_80 or sm_90a")


def _json_list(low: str, text: str, what: str) -> list:
    """A JSON list of numbers, strings, booleans, null and lists (read by ``safe_json``)."""
    value = safe_json(low, what)
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            raise UsageError(f"{what}: {clip(text, 80)!r} holds a JSON object", expected="lists of numbers, strings, booleans")
    if not isinstance(value, list):
        raise UsageError(f"cannot read {clip(text, 80)!r} as a list", hint="write e.g. [64,128]")
    return value


def parse_pairs(items: tuple[str, ...], what: str) -> dict[str, Any]:
    """``--set k=v`` style options -> {k: literal value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"{what} takes NAME=VALUE, got {clip(item, 80)!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _literal(v, f"{what} {clip(k.strip(), 40)}")
    return out


def parse_bind(items: tuple[str, ...]) -> dict[str, int]:
    """--bind SYM=SIZE: a symbol name and a whole size from 1 to 2**62.  A size of 0 or less would
    make shapes empty and memory estimates negative (a way around --max-memory)."""
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        k, v = k.strip(), v.strip()
        expected = "SYM=SIZE with SIZE a whole number from 1 to 2**62, e.g. N=16"
        if not sep or not _NAME.fullmatch(k):
            raise UsageError(f"--bind takes SYM=SIZE, got {clip(item, 80)!r}", expected=expected)
        if not re.fullmatch(r"\d{1,19}", v) or not 1 <= int(v) <= MAX_DIM:
            raise UsageError(f"--bind {k}={clip(v, 40)}: not a size", expected=expected, got=clip(v, 80))
        out[k] = int(v)
    return out


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_bytes(text: str | None) -> int | None:
    """--max-memory SIZE: a positive number with an optional unit (K, M, G, T, P; KiB or KB: both
    binary), at most 2**62 bytes; exact (no float rounding), never 0 (which meant 'default')."""
    if text is None:
        return None
    expected = "a size above 0, e.g. 4GiB, 512MiB, 1.5G or 100000000 (bytes), at most 2**62 bytes"
    m = re.fullmatch(r"\s*(\d{1,30}(?:\.\d{1,30})?)\s*([KMGTP]?)(i?B?)\s*", text, re.I)
    if not m or (m.group(3) and not m.group(2) and m.group(3).lower() != "b"):
        raise UsageError(f"cannot read memory size {clip(text, 80)!r}", expected=expected)
    try:
        n = int(Decimal(m.group(1)) * _UNITS[m.group(2).upper()])
    except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
        raise UsageError(f"cannot read memory size {clip(text, 80)!r}", expected=expected) from None
    if not 1 <= n <= MAX_MEMORY:
        raise UsageError(f"--max-memory {clip(text, 80)}: {'0 bytes' if n < 1 else 'more than 2**62 bytes'}",
                         expected=expected)
    return n


def max_memory_bytes(text: str | None) -> int:
    """--max-memory in bytes (the default when not given)."""
    from convdsl.lang.limits import DEFAULT_MAX_BYTES

    n = parse_bytes(text)
    return DEFAULT_MAX_BYTES if n is None else n


def program_options(f):
    """Options shared by every command that elaborates a program."""
    f = click.option("--network", "-n", help="Network to use when the file defines several.")(f)
    f = click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a network hyper-parameter.")(f)
    f = click.option("--choose", multiple=True, metavar="KEY=INDEX", help="Resolve a choice(...) (key = name or line:col).")(f)
    f = click.option("--bind", multiple=True, metavar="SYM=SIZE", help="Size of a symbolic dim, e.g. N=16 (default 1).")(f)
    f = click.option("--max-memory", default=None, metavar="SIZE",
                     help="Refuse a network whose run would need more: parameters + every tensor + the largest op's "
                          "working memory, at the --bind sizes (default 16GiB).")(f)
    f = click.option("--seed", type=Count(0, 2**63 - 1), default=0, show_default=True,
                     help="Seed of the deterministic initialization.")(f)
    return f


PIPED_WIDTH = 100_000  # a table piped or redirected is as wide as its rows: never cut, never folded


def stdout_console(**kwargs):
    """The rich console every table of the CLI prints on: the terminal's width on a terminal; when
    stdout is a pipe or a file, plain rows as wide as they need (rich would otherwise cut them to
    80 columns: numbers ending mid-digit, names folded mid-word)."""
    from rich.console import Console

    console = Console(highlight=False, **kwargs)
    if console.is_terminal:
        return console
    return Console(highlight=False, width=PIPED_WIDTH, soft_wrap=False, **kwargs)


_WEIGHTS_META = "convdsl.weights"  # ctx.meta key: the --weights-map rules and --non-strict of this command


def weights_options(help: str = "Trained weights (.safetensors).", required: bool = False):
    """``--weights`` and how it is read: ``--weights-map`` renames the file's keys, ``--non-strict``
    ignores what the network does not have.  The two travel in the click context to ``_graph``."""
    def remember(key):
        def callback(ctx, param, value):
            ctx.meta.setdefault(_WEIGHTS_META, {})[key] = value
            return value
        return callback

    def decorate(f):
        f = click.option("--non-strict", is_flag=True, expose_value=False, callback=remember("non_strict"),
                         help="Load a file that does not fit exactly: ignore its keys the network does not have "
                              "(e.g. buffers the program derives itself) and keep the initialization of parameters "
                              "it lacks; both are listed.  Shapes must still match.")(f)
        f = click.option("--weights-map", multiple=True, metavar="REGEX=REPL", expose_value=False,
                         callback=remember("renames"),
                         help="Rename the file's keys before loading (Python re.sub, applied in order), e.g. "
                              "'^module\\.=' or 'block(\\d)-(\\d)=block\\1_\\2'.")(f)
        return click.option("--weights", "-w", required=required, type=click.Path(dir_okay=False), help=help)(f)
    return decorate


def _load_weights(g, weights) -> None:
    from convdsl.ir.weights import fit_weights

    ctx = click.get_current_context(silent=True)
    how = ctx.meta.get(_WEIGHTS_META, {}) if ctx is not None else {}
    report = fit_weights(g, weights, strict=not how.get("non_strict", False), renames=how.get("renames", ()))
    if report.renamed:
        click.echo(f"--weights-map renamed {len(report.renamed):,} key(s) of {weights}", err=True)
    if report.derived:
        click.echo(f"{weights}: {len(report.derived):,} buffer(s) the network derives itself "
                   f"({report.derived[0].rsplit('.', 1)[-1]}, ...) equal what it derives; not stored", err=True)
    for note in report.notes():
        click.echo(f"warning: --non-strict: {note}", err=True)


def program_graph(file: str, network, sets, choose, bind, max_memory, seed, weights=None, first_choice=False,
                  concrete=False):
    """The verified graph that a command's ``program_options`` (and ``--weights``) describe."""
    from convdsl.ir.verify import verify
    from convdsl.lang.elaborate import Options, elaborate_file

    binding = parse_bind(bind)
    opts = Options(choices=parse_pairs(choose, "--choose") or None, overrides=parse_pairs(sets, "--set"), bind=binding,
                   max_bytes=max_memory_bytes(max_memory), seed=seed, first_choice=first_choice,
                   concrete=concrete)
    g = elaborate_file(file, network, opts)
    unknown = sorted(set(binding) - set(g.symbols))
    if unknown:
        from convdsl.errors import did_you_mean

        raise UsageError(f"--bind {unknown[0]}: network {g.name} has no symbolic dimension '{unknown[0]}'",
                         hint=did_you_mean(unknown[0], g.symbols) or
                         (f"its symbols: {', '.join(sorted(g.symbols))}" if g.symbols else "its shapes are all static"))
    if weights:
        _load_weights(g, weights)
    return verify(g)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConvDSLError as e:
            click.echo(e.render(), err=True)
            sys.exit(e.exit_code)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="convdsl")
def main() -> None:
    """convdsl: a compiler for neural networks written as text (.cdl)."""


