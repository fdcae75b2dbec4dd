"""CDL in Jupyter: ``%load_ext convdsl.notebook``, then write networks in ``%%cdl`` cells.

    %%cdl net --backend torch
    network tiny(x: f32[N, 3, 32, 32]) {
        return x | conv2d(16, 3, pad=1) | relu | global_avgpool(keepdim=false) | linear(10)
    }

The cell is elaborated like a .cdl file (imports are relative to the
notebook's folder); its network is compiled and bound to ``net`` (default:
the network's name), and shown as its graph picture and statistics table.
A mistake in the cell is shown as the compiler reports it, with the caret
under the bad token, and no Python traceback.

Options: ``--network NAME`` (a cell with several networks), ``--backend``
(any of ``convdsl compile``'s backends, default ``torch``; ``graph`` binds the
graph IR itself), ``--set NAME=VALUE`` (network hyper-parameters), ``--quiet``
(bind without displaying).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from convdsl.errors import ConvDSLError, UsageError

_cells = 0  # numbers the cells' pseudo file names, so error locations say which cell


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="%%cdl", add_help=False, exit_on_error=False)
    p.add_argument("name", nargs="?")
    p.add_argument("--network", "-n")
    p.add_argument("--backend", "-b", default="torch")
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument("--quiet", "-q", action="store_true")
    return p


def cdl(line: str, cell: str, namespace: dict | None = None) -> Any:
    """The ``%%cdl`` cell magic (also callable directly: ``cdl("net", text, globals())``)."""
    global _cells
    _cells += 1
    try:
        return _run(line, cell, namespace, f"<cell {_cells}>")
    except ConvDSLError as err:
        print(err.render(), file=sys.stderr)  # the compiler's report, caret included; no traceback
        return None


def _run(line: str, cell: str, namespace: dict | None, file: str) -> Any:
    from convdsl.api import compile as compile_graph
    from convdsl.ir.verify import verify
    from convdsl.lang.elaborate import Options, elaborate

    try:
        args = _parser().parse_args(shlex.split(line))
    except (argparse.ArgumentError, SystemExit, ValueError) as e:
        raise UsageError(f"%%cdl: {e}", hint="%%cdl [NAME] [--network N] [--backend torch|graph|...] "
                                            "[--set K=V] [--quiet]") from None
    overrides = {}
    for item in args.sets:
        if "=" not in item:
            raise UsageError(f"--set takes NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _value(v)
    # a leading newline stands for the %%cdl line, so error lines count as the cell shows them
    graph = verify(elaborate("\n" + cell, file, args.network, Options(overrides=overrides)))
    if args.backend == "graph":
        result: Any = graph
    else:
        result = compile_graph(graph, args.backend)  # shows its graph (convdsl.ir.display.attach_display)
    if namespace is not None:
        namespace[args.name or graph.name] = result
    if not args.quiet:
        from IPython.display import display

        display(result)
    return None


def _value(text: str) -> Any:
    """A --set value: a number, true/false/none, a JSON list, or a bare word."""
    text = text.strip()
    words = {"true": True, "false": False, "none": None}
    if text in words:
        return words[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_ipython_extension(ipython) -> None:
    """``%load_ext convdsl.notebook``: registers the ``%%cdl`` cell magic."""

    def magic(line: str, cell: str) -> None:
        return cdl(line, cell, ipython.user_ns)

    ipython.register_magic_function(magic, magic_kind="cell", magic_name="cdl")
