"""The ``convdsl`` command line.

Every ``ConvDSLError`` is printed as a compiler diagnostic (file:line:col,
caret, expected/got, hint) and turned into its exit code; no traceback is
shown for user mistakes.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import ConvDSLError, UsageError

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


def _pairs(items: tuple[str, ...], what: str) -> dict[str, Any]:
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


def _graph(file: str, network, sets, choose, bind, max_memory, seed, weights=None, first_choice=False):
    from .ir.verify import verify
    from .ir.weights import load_weights
    from .lang.elaborate import DEFAULT_MAX_BYTES, Options, elaborate_file

    opts = Options(choices=_pairs(choose, "--choose") or None, overrides=_pairs(sets, "--set"),
                   bind={k: int(v) for k, v in _pairs(bind, "--bind").items()},
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


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
def check(file, network, sets, choose, bind, max_memory, seed):
    """Parse, elaborate and shape-check FILE; print inputs, outputs, params, FLOPs."""
    from .ir.stats import layer_stats, summary

    g = _graph(file, network, sets, choose, bind, max_memory, seed, first_choice=False)
    s = summary(g, None)
    click.echo(f"{file}: network {g.name} OK")
    for i in s["inputs"]:
        click.echo(f"  input  {i['name']}: {i['dtype']}[{', '.join(map(str, i['shape']))}]")
    for o in s["outputs"]:
        click.echo(f"  output {o['name']}: {o['dtype']}[{', '.join(map(str, o['shape']))}]")
    click.echo(f"  {len(layer_stats(g))} ops, {s['params']:,} params, {s['macs']:,} MACs, {s['flops']:,} FLOPs"
               f" (at {', '.join(f'{k}={v}' for k, v in g.symbols.items()) or 'static shapes'})")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--write", "-w", is_flag=True, help="Rewrite the files in place.")
@click.option("--check", "check_only", is_flag=True, help="Exit 1 if a file is not formatted; change nothing.")
def fmt(files, write, check_only):
    """Print FILES in canonical format (gofmt-style)."""
    from .api import read_text
    from .lang.format import format_source

    unformatted = []
    for f in files:
        text = read_text(f)
        out = format_source(text, f)
        if check_only:
            if out != text:
                unformatted.append(f)
                click.echo(f"would reformat {f}", err=True)
        elif write:
            if out != text:
                tmp = Path(f + ".convdsl-fmt.tmp")
                tmp.write_text(out)
                tmp.replace(f)
                click.echo(f"formatted {f}", err=True)
        else:
            click.echo(out, nl=False)
    if unformatted:
        sys.exit(1)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--by-block", is_flag=True, help="Group rows by top-level block instance, with subtotals.")
def stats(file, network, sets, choose, bind, max_memory, seed, as_json, by_block):
    """Per-layer table: output shape, params, MACs/FLOPs, activation memory."""
    from rich.console import Console

    from .ir.stats import layer_stats, render_table, to_json

    g = _graph(file, network, sets, choose, bind, max_memory, seed)
    rows = layer_stats(g, _pairs(bind, "--bind") or None)
    if as_json:
        click.echo(json.dumps(to_json(g, rows), indent=2))
    else:
        render_table(g, rows, Console(), by_block=by_block)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write .svg/.png/.pdf (Graphviz) or .dot.")
def graph(file, network, sets, choose, bind, max_memory, seed, output):
    """Draw the network (blocks as clusters). DOT text to stdout without -o."""
    from .ir.draw import render, to_dot

    g = _graph(file, network, sets, choose, bind, max_memory, seed)
    if output is None:
        click.echo(to_dot(g))
    else:
        render(g, output)
        click.echo(f"wrote {output}", err=True)


@main.command(name="print")
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
def print_cmd(file, network, sets, choose, bind, max_memory, seed):
    """Print the elaborated network as flat CDL (one statement per op)."""
    from .ir.printer import print_graph

    g = _graph(file, network, sets, choose, bind, max_memory, seed)
    click.echo(print_graph(g, header=f"elaborated from {file} by convdsl {__version__}"), nl=False)


@main.command(name="compile")
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@click.option("--backend", "-b", default="torch", show_default=True, help="Code generator: torch.")
@click.option("--output", "-o", "out", required=True, type=click.Path(file_okay=False), help="Artifact folder to write.")
@click.option("--weights", "-w", type=click.Path(dir_okay=False), help="Trained weights (.safetensors).")
def compile_cmd(file, network, sets, choose, bind, max_memory, seed, backend, out, weights):
    """Compile FILE to an artifact folder (generated code, weights, manifest)."""
    from .artifact import write_artifact

    g = _graph(file, network, sets, choose, bind, max_memory, seed, weights=weights)
    files = write_artifact(g, out, backend)
    click.echo(f"compiled {g.name} ({g.params.count():,} params) with backend {backend} -> {out}/")
    for f in files:
        click.echo(f"  {f}")


@main.command()
@click.argument("target", type=click.Path())
@program_options
@click.option("--backend", "-b", default="torch", show_default=True, help="Backend when TARGET is a .cdl file.")
@click.option("--weights", "-w", type=click.Path(dir_okay=False), help="Weights when TARGET is a .cdl file.")
@click.option("--input", "inputs", multiple=True, type=click.Path(dir_okay=False), help="Input .npy file(s), in order.")
@click.option("--batch", default=1, show_default=True, help="Batch size of generated inputs (symbolic dims).")
@click.option("--save", type=click.Path(dir_okay=False), help="Save the first output as .npy.")
def run(target, network, sets, choose, bind, max_memory, seed, backend, weights, inputs, batch, save):
    """Run a compiled artifact folder (or a .cdl file) on inputs; print the outputs."""
    from .artifact import run_artifact_or_program

    result = run_artifact_or_program(target, backend=backend, weights=weights, inputs=list(inputs), batch=batch,
                                     graph_loader=lambda: _graph(target, network, sets, choose, bind, max_memory, seed,
                                                                 weights=weights))
    click.echo(f"ran {result['network']} on {result['backend']} in {result['ms']:.2f} ms")
    for name, arr in result["outputs"].items():
        flat = arr.reshape(-1)
        preview = ", ".join(f"{v:.4f}" for v in flat[:5])
        click.echo(f"  {name}: {list(arr.shape)} {arr.dtype} mean={arr.mean():.5f} std={arr.std():.5f} [{preview}{', ...' if flat.size > 5 else ''}]")
    if save:
        import numpy as np

        np.save(save, next(iter(result["outputs"].values())))
        click.echo(f"saved {save}")


if __name__ == "__main__":  # pragma: no cover
    main()
