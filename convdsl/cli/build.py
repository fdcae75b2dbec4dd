"""Commands that build and run: compile, run."""
from __future__ import annotations

import click

from convdsl.errors import UsageError
from convdsl.cli.common import main, program_graph, program_options


def optimize_options(f):
    """--opt and --passes: graph rewrites applied after loading weights, before the backend."""
    f = click.option("--passes", "passes", default=None, metavar="A,B,...",
                     help="Passes to run by name, in order, after --opt (e.g. fold_bn,dce).")(f)
    f = click.option("--opt", "opt", default=None, metavar="NAME",
                     help="Optimization pipeline: O0 (none), O1 (no-op and dead-code removal), "
                          "O2 (also BN folding, CSE, constant folding); an unknown name lists them all.")(f)
    return f


def _optimize(g, opt, passes):
    from convdsl.passes import PassRecord, run_passes

    steps = [s for s in (opt, passes) if s]
    if not steps:
        return g
    log: list[PassRecord] = []
    g = run_passes(g, ",".join(steps), log=log)
    for rec in log:
        (n0, n1), (p0, p1) = rec.nodes, rec.params
        click.echo(f"  {rec.name}: {n0} -> {n1} nodes, {p0:,} -> {p1:,} params", err=True)
    return g


@main.command(name="compile")
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@click.option("--backend", "-b", default="torch", show_default=True, help="Code generator: torch.")
@click.option("--output", "-o", "out", required=True, type=click.Path(file_okay=False), help="Artifact folder to write.")
@click.option("--weights", "-w", type=click.Path(dir_okay=False), help="Trained weights (.safetensors).")
@optimize_options
def compile_cmd(file, network, sets, choose, bind, max_memory, seed, backend, out, weights, opt, passes):
    """Compile FILE to an artifact folder (generated code, weights, manifest)."""
    from convdsl.artifact import write_artifact

    g = program_graph(file, network, sets, choose, bind, max_memory, seed, weights=weights)
    g = _optimize(g, opt, passes)
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
@optimize_options
def run(target, network, sets, choose, bind, max_memory, seed, backend, weights, inputs, batch, save, opt, passes):
    """Run a compiled artifact folder (or a .cdl file) on inputs; print the outputs."""
    from pathlib import Path

    from convdsl.artifact import run_artifact_or_program

    if (opt or passes) and Path(target).is_dir():
        raise UsageError("--opt and --passes apply to a .cdl file; an artifact folder is already compiled",
                         hint="give the options to `convdsl compile` instead")

    result = run_artifact_or_program(target, backend=backend, weights=weights, inputs=list(inputs), batch=batch,
                                     graph_loader=lambda: _optimize(
                                         program_graph(target, network, sets, choose, bind, max_memory, seed,
                                                       weights=weights),
                                         opt, passes))
    click.echo(f"ran {result['network']} on {result['backend']} in {result['ms']:.2f} ms")
    for name, arr in result["outputs"].items():
        flat = arr.reshape(-1)
        preview = ", ".join(f"{v:.4f}" for v in flat[:5])
        click.echo(f"  {name}: {list(arr.shape)} {arr.dtype} mean={arr.mean():.5f} std={arr.std():.5f} [{preview}{', ...' if flat.size > 5 else ''}]")
    if save:
        import numpy as np

        np.save(save, next(iter(result["outputs"].values())))
        click.echo(f"saved {save}")
