"""Commands that look at a program: check, fmt, stats, graph, print."""
from __future__ import annotations

import json
import stat
import sys

import click

from convdsl import __version__
from convdsl.cli.common import main, parse_bind, program_graph, program_options

@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
def check(file, network, sets, choose, bind, max_memory, seed):
    """Parse, elaborate and shape-check FILE; print inputs, outputs, params, FLOPs."""
    from convdsl.ir.stats import layer_stats, summary

    g, space = _looked_at(file, network, sets, choose, bind, max_memory, seed, quiet=True)
    s = summary(g, None)
    click.echo(f"{file}: network {g.name} OK")
    if space:
        click.echo(f"  {_space_note(space)}")
    for i in s["inputs"]:
        click.echo(f"  input  {i['name']}: {i['dtype']}[{', '.join(map(str, i['symbolic_shape']))}]")
    for o in s["outputs"]:
        click.echo(f"  output {o['name']}: {o['dtype']}[{', '.join(map(str, o['symbolic_shape']))}]")
    click.echo(f"  {len(layer_stats(g))} ops, {s['params']:,} params, {s['macs']:,} MACs, {s['flops']:,} FLOPs"
               f" (at {', '.join(f'{k}={v}' for k, v in g.symbols.items()) or 'static shapes'})")


def _looked_at(file, network, sets, choose, bind, max_memory, seed, quiet=False):
    """The graph the commands that look at a program (check, stats, graph, print) show: a search
    space is shown with the first option of every open choice, and they say so (on stderr, so
    that what they print stays a table, a graph or a program); commands that build refuse it."""
    from convdsl.errors import ChoiceError

    try:
        return program_graph(file, network, sets, choose, bind, max_memory, seed), []
    except ChoiceError:
        g = program_graph(file, network, sets, choose, bind, max_memory, seed, first_choice=True)
        given = {c.split("=", 1)[0].strip() for c in choose}
        space = [k for k in g.choices if k not in given]
        if not quiet:
            click.echo(f"note: {file}: {_space_note(space)}", err=True)
        return g, space


def _space_note(space: list[str]) -> str:
    keys = ", ".join(space[:8]) + (", ..." if len(space) > 8 else "")
    return (f"search space: {len(space)} open choice(s) ({keys}); shown with the first option of each "
            "(--choose KEY=INDEX picks another)")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--write", "-w", is_flag=True,
              help="Rewrite the files in place (atomically; mode kept; through a symbolic link to its file).")
@click.option("--check", "check_only", is_flag=True, help="Exit 1 if a file is not formatted; change nothing.")
def fmt(files, write, check_only):
    """Print FILES in canonical format (gofmt-style); a folder stands for every .cdl file in it.

    The canonical layout: 4-space indents, lines of at most 100 columns (a trailing comment
    included) unless a name, number, string or comment is longer.  A long pipe keeps the lines its
    stages were written on (a line still too long is filled again), continuation lines put their
    '|' under the first one; a long signature wraps its parameters after the '('; a list assigned
    to a name gets a row per line; other long lines break inside: call arguments and list items
    after the bracket (aligned, else one indent deeper, else one per line with a trailing comma),
    operators at the end of a line, conditionals after 'else'.  See docs/language.md."""
    from pathlib import Path

    from convdsl.lang.format import format_source

    unformatted = []
    expanded = []
    for f in files:
        expanded += sorted(str(p) for p in Path(f).rglob("*.cdl") if p.is_file()) if Path(f).is_dir() else [f]
    for f in expanded:
        text = _read_cdl(f)
        out = format_source(text, f)
        if check_only:
            if out != text:
                unformatted.append(f)
                click.echo(f"would reformat {f}", err=True)
        elif write:
            if out != text:
                write_in_place(f, out)
                click.echo(f"formatted {f}", err=True)
        else:
            click.echo(out, nl=False)
    if unformatted:
        sys.exit(1)


def _read_cdl(path: str) -> str:
    """A .cdl file as every command reads its main file (``read_program``): a regular file of
    bounded size; one that is not UTF-8 is a syntax error at its first bad byte."""
    from convdsl.lang.source import read_program

    return read_program(path)


def write_in_place(path: str, text: str) -> None:
    """Replace the file's text atomically: a temporary file beside it, with the file's mode (and
    owner, where allowed), renamed over it.  A symbolic link stays a link: its target is written."""
    import os
    import tempfile

    from convdsl.errors import UsageError

    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(real)}.", suffix=".convdsl-fmt",
                                   dir=os.path.dirname(real))
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
                fh.flush()
                os.fchmod(fh.fileno(), stat.S_IMODE(st.st_mode))
                try:
                    os.fchown(fh.fileno(), st.st_uid, st.st_gid)
                except PermissionError:  # another user's file in a folder we may write: keep our ownership
                    pass
                os.fsync(fh.fileno())
            os.replace(tmp, real)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@click.option("--format", "fmt_", type=click.Choice(["table", "tsv", "csv", "json"]), default="table", show_default=True,
              help="table: for people (full width when piped); tsv/csv: one row per op with plain numbers; "
                   "json: the whole report.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--by-block", is_flag=True, help="Group rows by top-level block instance, with subtotals (table).")
def stats(file, network, sets, choose, bind, max_memory, seed, fmt_, as_json, by_block):
    """Per-layer table: output shape, params, MACs/FLOPs, activation memory.

    \b
    params       parameter elements (trainable or frozen), never buffers (running statistics);
                 a shared parameter counts once
    MACs         multiply-accumulates of conv, linear, matmul and the matmuls inside attention
                 ops (q·k and attention·v), at the --bind sizes (symbols 1 otherwise)
    FLOPs        2 per MAC, plus the cost each other op declares in the op table (convdsl/ir/ops):
                 e.g. an add or an activation 1 per element (some more), batchnorm 2, layernorm
                 and groupnorm 5, an attention logit's softmax 5, a pooling window per output
    act. memory  bytes of a layer's outputs; the total is the SUM over layers (what a training
                 step keeps); the summary also gives the PEAK of one inference pass (tensors
                 freed after their last reader, network order, no in-place reuse)
    weights      bytes of parameters and buffers (the weights file)"""
    from convdsl.cli.common import stdout_console
    from convdsl.ir.stats import flat_rows, layer_stats, render_table, to_json

    g, _ = _looked_at(file, network, sets, choose, bind, max_memory, seed)
    rows = layer_stats(g, parse_bind(bind) or None)
    if as_json or fmt_ == "json":
        click.echo(json.dumps(to_json(g, rows), indent=2))
    elif fmt_ in ("tsv", "csv"):
        import csv

        table = flat_rows(rows)
        writer = csv.writer(sys.stdout, delimiter="\t" if fmt_ == "tsv" else ",", lineterminator="\n")
        writer.writerow(table[0].keys())
        writer.writerows(r.values() for r in table)
    else:
        render_table(g, rows, stdout_console(), by_block=by_block)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write .svg/.png/.pdf (Graphviz) or .dot.")
def graph(file, network, sets, choose, bind, max_memory, seed, output):
    """Draw the network (blocks as clusters). DOT text to stdout without -o."""
    from convdsl.ir.draw import render, to_dot

    g, _ = _looked_at(file, network, sets, choose, bind, max_memory, seed)
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
    from convdsl.lang.printer import print_graph

    g, _ = _looked_at(file, network, sets, choose, bind, max_memory, seed)
    click.echo(print_graph(g, header=f"elaborated from {file} by convdsl {__version__}"), nl=False)


@main.command()
@click.option("--markdown", is_flag=True, help="Print docs/ops.md (generated from the op table).")
def ops(markdown):
    """List every op with its syntax (or the full reference with --markdown)."""
    from convdsl.ir.opdocs import render_markdown, signature
    from convdsl.ir.ops import OPS

    if markdown:
        click.echo(render_markdown(), nl=False)
        return
    for name in sorted(OPS):
        click.echo(f"{signature(OPS[name]):60s} {OPS[name].group}")
