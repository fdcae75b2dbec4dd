"""The verify command: differential checks of a user's program on generated inputs."""
from __future__ import annotations

import sys

import click

from convdsl.errors import UsageError
from convdsl.cli.common import Count, program_graph, main, program_options, weights_options

KNOWN = ("torch", "torch-export", "tvm-llvm", "tvm-llvm-bf16", "tvm-llvm-int8", "tvm-llvm-direct", "tvm-cuda")


@main.command(name="verify")
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@click.option("--backends", "-b", default=None, metavar="A,B",
              help="Backends to compare with torch eager: torch (the standalone artifact), torch-export, "
                   "tvm-llvm, tvm-llvm-bf16 (--precision bf16, bf16's tolerance), tvm-llvm-int8 (--precision int8 of a "
                   "quantized program: AMX tiles where the CPU has them), tvm-llvm-direct (--no-winograd: "
                   "every conv direct).  Default: torch, plus tvm-llvm "
                   "when TVM is installed.")
@click.option("--opt", default=None, metavar="NAME", help="Also check each backend after this pipeline (O1, O2); "
                                                          "torch after each of its passes in turn.")
@click.option("--passes", default=None, metavar="A,B", help="Also check torch after each of these passes alone.")
@click.option("--examples", "-e", type=Count(1, 10**6), default=50, show_default=True,
              help="Inputs to try: seeds 0.. (the first are zeros, ones, large, negative, tiny, spiky).")
@click.option("--batch", type=Count(1, 2**20), default=2, show_default=True, help="Size of every symbolic dim in the inputs.")
@weights_options("Trained weights (.safetensors).")
@click.option("--randomize/--no-randomize", default=None,
              help="Random values for constant-initialized parameters (batchnorm statistics, zero biases) so "
                   "that folding them is tested.  Default: on without --weights, off with.")
@click.option("--first-choice", is_flag=True, help="Verify a search space at the first option of every choice.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(file, network, sets, choose, bind, max_memory, seed, backends, opt, passes, examples, batch, weights,
               randomize, first_choice, as_json):
    """Check that backends and passes compute what torch eager computes on FILE.

    Prints one row per backend/pass: max abs/rel error over the inputs, the tolerance,
    the seed of the worst input and pass/fail.  Exits 1 when any disagrees."""
    from convdsl.verify import differential as D
    from convdsl.verify.report import render, to_json

    names = [b.strip() for b in backends.split(",") if b.strip()] if backends else \
        ["torch"] + (["tvm-llvm"] if D.tvm_available("tvm-llvm") else [])
    for b in names:
        if b not in KNOWN:
            from convdsl.errors import did_you_mean

            raise UsageError(f"unknown backend '{b}' for verify", hint=did_you_mean(b, KNOWN)
                             or f"backends: {', '.join(KNOWN)}")
    if examples < 1:
        raise UsageError("--examples must be at least 1")
    g = program_graph(file, network, sets, choose, bind, max_memory, seed, weights=weights, first_choice=first_choice)
    if randomize if randomize is not None else weights is None:
        g = D.randomize_constants(g, seed)
    pass_list = [p.strip() for p in passes.split(",") if p.strip()] if passes else []
    variants = D.standard_variants(g, backends=names, opt=opt, passes=pass_list, batch=batch)
    report = D.check(g, variants, range(examples), batch=batch)
    if as_json:
        click.echo(to_json(report))
    else:
        from convdsl.cli.common import stdout_console

        title = (f"verify {g.name} ({file}): {examples} input(s), batch {batch}, seeds 0..{examples - 1}; "
                 f"reference: {report.reference}")
        render(report, stdout_console(), title=title)
    if not report.ok:
        sys.exit(1)
