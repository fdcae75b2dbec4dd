"""Shared pieces of the command line: the root group, option sets, value parsing."""
from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from convdsl import __version__
from convdsl.errors import ConvDSLError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _literal(text: str) -> Any:
    """A --set/--choose value: int, float, true/false, a JSON list, or a bare word."""
    low = text.strip()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if re.fullmatch(r"-?\d+", low):
        return int(low)
    try:
        return float(low)
    except ValueError:
        pass
    if low.startswith("["):
        try:
            return json.loads(low)
        except json.JSONDecodeError:
            raise UsageError(f"cannot read {text!r} as a list", hint="write e.g. [64,128]") from None
    return low


def parse_pairs(items: tuple[str, ...], what: str) -> dict[str, Any]:
    """``--set k=v`` style options -> {k: literal value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"{what} takes NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _literal(v)
    return out


def _bytes(text: str | None) -> int | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", text, re.I)
    if not m:
        raise UsageError(f"cannot read memory size {text!r}", hint="e.g. 4GiB, 512MiB")
    unit = m.group(2).upper().rstrip("B").rstrip("I")
    mult = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    return int(float(m.group(1)) * mult)


def program_options(f):
    """Options shared by every command that elaborates a program."""
    f = click.option("--network", "-n", help="Network to use when the file defines several.")(f)
    f = click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a network hyper-parameter.")(f)
    f = click.option("--choose", multiple=True, metavar="KEY=INDEX", help="Resolve a choice(...) (key = name or line:col).")(f)
    f = click.option("--bind", multiple=True, metavar="SYM=SIZE", help="Size of a symbolic dim, e.g. N=16 (default 1).")(f)
    f = click.option("--max-memory", default=None, metavar="SIZE", help="Refuse tensors/params larger than this (default 16GiB).")(f)
    f = click.option("--seed", default=0, show_default=True, help="Seed of the deterministic initialization.")(f)
    return f


def program_graph(file: str, network, sets, choose, bind, max_memory, seed, weights=None, first_choice=False):
    """The verified graph that a command's ``program_options`` (and ``--weights``) describe."""
    from convdsl.ir.verify import verify
    from convdsl.ir.weights import load_weights
    from convdsl.lang.elaborate import DEFAULT_MAX_BYTES, Options, elaborate_file

    opts = Options(choices=parse_pairs(choose, "--choose") or None, overrides=parse_pairs(sets, "--set"),
                   bind={k: int(v) for k, v in parse_pairs(bind, "--bind").items()},
                   max_bytes=_bytes(max_memory) or DEFAULT_MAX_BYTES, seed=seed, first_choice=first_choice)
    g = elaborate_file(file, network, opts)
    if weights:
        load_weights(g, weights)
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


