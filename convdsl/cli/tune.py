"""`convdsl tune`: measure the knobs of convdsl's CPU templates for a network's kernels.

Each distinct kernel workload of FILE's ``--precision`` build (a conv, depthwise conv, GEMM or
int8 conv, keyed by shape, strides, dtypes and ISA) is built with the knob settings nearest to the analytic model's,
checked against the model's kernel, timed, and the fastest is recorded in the user's template
database (``templates.json`` under $CONVDSL_TUNING_DB or ~/.cache/convdsl/tuning, or --db),
which every later tvm-llvm build consults before the shipped database and the model.
"""
from __future__ import annotations

import click

from convdsl.errors import UsageError
from convdsl.cli.common import Count, program_graph, check_target_options, main, program_options, weights_options


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@click.option("--trials", type=Count(1, 10**4), default=8, show_default=True, help="Knob settings measured per workload.")
@click.option("--rounds", type=Count(1, 10**4), default=7, show_default=True, help="Timing rounds (the minimum is kept).")
@click.option("--target-json", default=None, metavar="JSON", help="TVM target as JSON (default: this machine).")
@click.option("--db", default=None, metavar="DIR", help="Tuning root (default: $CONVDSL_TUNING_DB or ~/.cache/convdsl/tuning).")
@click.option("--force", is_flag=True, help="Tune workloads that already have a record too.")
# the choices are targets.PRECISIONS, not imported here: it would load TVM
@click.option("--precision", type=click.Choice(("f32", "bf16", "int8")), default="f32", show_default=True,
              help="Tune the kernels of this precision's build (as `convdsl compile --precision`): bf16's "
                   "vdpbf16ps templates; int8's VNNI templates (FILE quantized by `convdsl quantize`).")
@click.option("--no-amx", "no_amx", is_flag=True, help="The build without AMX tiles (as `convdsl compile --no-amx`).")
@weights_options("Trained weights (.safetensors).")
def tune(file, network, sets, choose, bind, max_memory, seed, trials, rounds, target_json, db, force, precision,
         no_amx, weights):
    """Tune convdsl's CPU template knobs for FILE's kernels (tvm-llvm) into the user's database."""
    check_target_options(target_json, None)  # before TVM is loaded
    from convdsl.cli.common import stdout_console

    from convdsl.backends.tvm.backend import check_precision_of
    from convdsl.backends.tvm.schedules import template_tuner as tt, tophub
    from convdsl.backends.tvm.targets import check_available, host_can_run, make_target

    if trials < 1 or rounds < 1:
        raise UsageError("--trials and --rounds must be >= 1", got=f"{trials}, {rounds}")
    spec = make_target("tvm-llvm", target_json=target_json, precision=precision, amx=not no_amx)
    check_available(spec)
    why = host_can_run(spec.config)
    if why:
        raise UsageError(f"tuning measures kernels on this machine, which cannot run {spec.describe()}: {why}")
    g = program_graph(file, network, sets, choose, bind, max_memory, seed, weights=weights)
    check_precision_of(g, precision)
    path = tophub.user_db_path(db)
    results = tt.tune_network(g, spec, trials, db_file=path, rounds=rounds, force=force, precision=precision)
    console = stdout_console()
    console.print(tt.summary_table(results, f"{file}: template knobs ({spec.describe()})"))
    tuned = [r for r in results if r.best_ms]
    if tuned:
        before = sum(r.analytic_ms for r in tuned)
        after = sum(r.best_ms for r in tuned)
        console.print(f"{len(tuned)} workloads tuned: {before:.3f} ms -> {after:.3f} ms of kernel time "
                      f"({before / after:.2f}x; each workload once); records in {path}")
    else:
        console.print(f"nothing to tune: every workload has a record in {path} (--force tunes again)")
