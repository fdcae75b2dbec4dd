"""TVM commands: options of `compile` for the tvm-* backends, `bench`, and `tvm info`.

`compile --backend tvm-llvm|tvm-cuda` takes --target-json, --arch, --tune,
--db and --no-db; they are attached to the compile command here, so that the
TVM options live with the TVM backend's command line.
"""
from __future__ import annotations

import functools
import json

import click

from convdsl.errors import UsageError
from convdsl.cli.common import Count, program_graph, check_target_options, main, max_memory_bytes, program_options, weights_options

# tvm-llvm's (backends/tvm/targets.py) and tvm-cuda's (backend.CUDA_PRECISIONS), not imported: it would load TVM;
# each backend refuses, with the reason, the ones it has no kernels for (f16 on CPUs, int8 on GPUs)
PRECISIONS = ("f32", "f16", "bf16", "int8")

TVM_OPTIONS = [
    click.Option(["--target-json"], default=None, metavar="JSON",
                 help='tvm-*: TVM target as JSON, e.g. \'{"kind": "llvm", "mcpu": "znver4"}\' (default: this machine).'),
    click.Option(["--arch"], default=None, metavar="SM",
                 help="tvm-cuda: GPU architecture, e.g. sm_80 (default: the visible GPU's, else sm_90)."),
    click.Option(["--tune"], type=Count(0, 10**6), default=0, metavar="TRIALS",
                 help="tvm-*: MetaSchedule trials per kernel not yet in the tuning database (0: no tuning)."),
    click.Option(["--db"], default=None, metavar="DIR",
                 help="tvm-*: tuning database folder (default: $CONVDSL_TUNING_DB or ~/.cache/convdsl/tuning)."),
    click.Option(["--no-db", "no_db"], is_flag=True, help="tvm-*: apply no tuning records, neither MetaSchedule's nor the template knobs (fully untuned: the analytic model)."),
    click.Option(["--dynamic-batch", "dynamic_batch"], is_flag=True,
                 help="tvm-llvm: the batch symbol (N) stays symbolic: one library runs any batch size; an error "
                      "where that cannot be.  Default: a dynamic batch unless --bind N=B fixes it (static B), "
                      "or --tune, --precision bf16/int8, tvm-cuda or your MetaSchedule records need static "
                      "shapes, or an op needs the size (then N=1, with a note saying why)."),
    click.Option(["--precision"], type=click.Choice(PRECISIONS), default=None,
                 help="tvm-llvm: f32 (default); bf16 (convs and matmuls on bf16 operands, f32 accumulation: "
                      "needs AVX512_BF16); int8 (the int8 kernels of a program from `convdsl quantize`).  "
                      "tvm-cuda: f32 (default); f16 (f16 activations, f32 accumulation, tensor cores); bf16 "
                      "(conv/matmul on bf16 operands, sm_80+); no int8.  Recorded as tvm.precision."),
    click.Option(["--no-winograd", "no_winograd"], is_flag=True,
                 help="tvm-llvm: every conv direct (default: f32 3x3 stride-1 convs as Winograd F(4x4, 3x3), and on "
                      "an AVX2 CPU without VNNI int8 ones as the exact integer Winograd F(2x2, 3x3), where it is "
                      "faster; the manifest's tvm.winograd_convs counts them)."),
    click.Option(["--no-amx", "no_amx"], is_flag=True,
                 help="tvm-llvm: no AMX tiles: --precision int8 on VNNI, bf16 on vdpbf16ps (default: int8 convs and "
                      "linears with more than 32 input channels, bf16 convs with more than 16, on AMX tiles where the "
                      "CPU has AMX; the manifest's tvm.amx says whether)."),
]
_NAMES = ("target_json", "arch", "tune", "db", "no_db", "precision", "dynamic_batch", "no_winograd", "no_amx")


def tvm_backend(name: str, *, target_json=None, arch=None, tune=0, db=None, no_db=False, progress=True,
                precision=None, dynamic_batch=False, bound=(), no_winograd=False, no_amx=False):
    check_target_options(target_json, arch)  # before TVM is loaded
    from convdsl.backends.tvm import backend

    if tune < 0:
        raise UsageError("--tune counts trials and must be >= 0", got=str(tune))
    if tune and no_db:
        raise UsageError("--tune stores its results in the database; it cannot be combined with --no-db")
    return backend(name, target_json=target_json, arch=arch, tune=tune, db=db, use_db=not no_db, progress=progress,
                   precision=precision, dynamic_batch=dynamic_batch, bound=tuple(bound),
                   winograd=not no_winograd, amx=not no_amx)


def _extend_compile() -> None:
    """Add the TVM options to `convdsl compile`; they turn the backend name into a configured backend."""
    cmd = main.commands["compile"]
    cmd.params.extend(TVM_OPTIONS)
    original = cmd.callback

    @functools.wraps(original)
    def callback(**kwargs):
        opts = {k: kwargs.pop(k) for k in _NAMES}
        backend = kwargs.get("backend")
        if isinstance(backend, str) and backend.startswith("tvm-"):
            bound = [pair.split("=", 1)[0].strip() for pair in kwargs.get("bind") or ()]
            opts["dynamic_batch"] = True if opts["dynamic_batch"] else None  # None: when nothing is lost by it
            kwargs["backend"] = tvm_backend(backend, **opts, bound=bound)
        elif any(v for v in opts.values()):
            given = ", ".join("--" + k.replace("_", "-") for k, v in opts.items() if v)
            raise UsageError(f"only the TVM backends take {given}", hint="add --backend tvm-llvm or tvm-cuda")
        result = original(**kwargs)
        for note in getattr(kwargs["backend"], "notes", ()):
            click.echo(f"note: {note}", err=True)
        return result

    cmd.callback = callback


def _extend_run() -> None:
    """`convdsl run net.cdl --backend tvm-llvm --precision bf16` (an artifact folder has its precision)."""
    cmd = main.commands["run"]
    cmd.params.append(next(o for o in TVM_OPTIONS if o.name == "precision"))
    original = cmd.callback

    @functools.wraps(original)
    def callback(**kwargs):
        precision = kwargs.pop("precision")
        backend = kwargs.get("backend")
        if precision is not None:
            if not (isinstance(backend, str) and backend.startswith("tvm-")):
                raise UsageError("only the TVM backends take --precision", hint="add --backend tvm-llvm")
            kwargs["backend"] = tvm_backend(backend, precision=precision)
        return original(**kwargs)

    cmd.callback = callback


_extend_compile()
_extend_run()


def _table(rows: list[dict]) -> None:
    from convdsl.cli.common import stdout_console
    from rich.table import Table

    t = Table(title=f"{rows[0]['network']}, batch {rows[0]['batch']}", title_justify="left")
    for col, just in (("backend", "left"), ("median ms", "right"), ("p10-p90 ms", "right"), ("spread", "right"),
                      ("speedup vs torch", "right"), ("threads", "right"), ("cores busy", "right"), ("build s", "right"),
                      ("note", "left")):
        t.add_column(col, justify=just)
    for r in rows:
        if r.get("median_ms") is None:
            t.add_row(r["backend"], "-", "-", "-", "-", str(r.get("threads") or "-"), "-", f"{r['compile_s']:.1f}",
                      r["note"])
            continue
        sp, busy = r.get("speedup_vs_torch"), r.get("cores_busy")
        t.add_row(r["backend"], f"{r['median_ms']:.3f}", f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}", f"{r['spread_pct']:.0f}%",
                  f"{sp:.2f}x" if sp is not None else "-", str(r.get("threads") or "-"),
                  f"{busy:.2f}" if busy is not None else "-", f"{r['compile_s']:.1f}", r["note"])
    stdout_console().print(t)


def _profile_tables(profs: dict, top: int) -> None:
    from convdsl.cli.common import stdout_console
    from rich.table import Table

    for backend, rows in profs.items():
        total = sum(r["ms"] for r in rows)
        t = Table(title=f"{backend}: time per kernel (one call, {total:.2f} ms in {len(rows)} kernels)",
                  title_justify="left")
        for col in ("kernel", "calls", "ms", "%"):
            t.add_column(col, justify="left" if col == "kernel" else "right")
        for r in rows[:top]:
            t.add_row(r["kernel"], str(r["calls"]), f"{r['ms']:.3f}", f"{r['percent']:.1f}")
        if len(rows) > top:
            rest = rows[top:]
            t.add_row(f"({len(rest)} more)", str(sum(r["calls"] for r in rest)), f"{sum(r['ms'] for r in rest):.3f}",
                      f"{sum(r['percent'] for r in rest):.1f}")
        stdout_console().print(t)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@click.option("--backends", default="torch,tvm-llvm", show_default=True, metavar="A,B,...",
              help="torch, torch-compile, torch-cuda, tvm-llvm, tvm-llvm-tuned, tvm-cuda, tvm-cuda-tuned.")
@click.option("--batch", type=Count(1, 2**20), default=1, show_default=True, help="Size of every symbolic dim (unless --bind gives it).")
@weights_options("Trained weights (.safetensors).")
@click.option("--repeat", type=Count(1, 10**6), default=20, show_default=True, help="Timed rounds (one sample per backend per round).")
@click.option("--warmup", type=Count(0, 10**6), default=3, show_default=True, help="Untimed calls per backend first.")
@click.option("--tune", type=Count(0, 10**6), default=0, metavar="TRIALS", help="Trials per task for the *-tuned backends.")
@click.option("--db", default=None, metavar="DIR", help="Tuning database folder for the *-tuned backends.")
@click.option("--profile", is_flag=True, help="Also print the time of each kernel of the TVM modules.")
@click.option("--top", type=Count(1, 10**6), default=15, show_default=True, help="Kernels shown per profile.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects with backend, median_ms, ...).")
@click.option("--threads", type=Count(1, 4096), default=None, metavar="N",
              help="Threads for torch and TVM alike (default: each library's own, the cores this process may use).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="f32", show_default=True,
              help="Precision of the tvm-llvm rows, and of the tvm-cuda rows when not f32 (see `convdsl compile "
                   "--precision`); torch rows stay f32.")
@click.option("--no-amx", "no_amx", is_flag=True, help="--precision int8/bf16: no AMX tiles (VNNI, vdpbf16ps).")
def bench(file, network, sets, choose, bind, max_memory, seed, backends, batch, weights, repeat, warmup, tune, db,
          profile, top, as_json, threads, precision, no_amx):
    """Time FILE on several backends in one run: median latency, spread, speedup vs torch eager."""
    if threads is not None:
        if threads < 1:
            raise click.BadParameter("must be at least 1", param_hint="--threads")
        import os

        import torch

        os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts
        torch.set_num_threads(threads)
    from convdsl.artifact import make_inputs
    from convdsl.lang.memory import check_memory
    from convdsl.backends.tvm.bench import bench as run_bench, profiles, summarize

    g = program_graph(file, network, sets, choose, bind, max_memory, seed, weights=weights)
    given = {b.split("=", 1)[0].strip() for b in bind}
    g.symbols = {s: (v if s in given else batch) for s, v in g.symbols.items()}
    check_memory(g, g.symbols, max_memory_bytes(max_memory))  # --max-memory at the --batch size too
    arrays = make_inputs(g, batch, seed)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    log = (lambda s: click.echo(s, err=True))
    entries = run_bench(g, names, arrays, repeat=repeat, warmup=warmup, tune=tune, db=db, progress=not as_json, log=log,
                        precision=precision, amx=not no_amx)
    rows = summarize(entries, g, batch)
    import torch

    for r in rows:  # what each library ran with, so that ratios can be read fairly
        r["threads"] = torch.get_num_threads() if r["backend"].startswith("torch") else _tvm_threads()
    profs = profiles(entries) if profile else {}
    if as_json:
        out = rows if not profile else [dict(r, profile=profs.get(r["backend"])) for r in rows]
        click.echo(json.dumps(out, indent=2))
        return
    _table(rows)
    if profile:
        _profile_tables(profs, top)


def _tvm_threads() -> int | None:
    """Threads of TVM's CPU thread pool (None when TVM is not loaded)."""
    import sys

    if "tvm" not in sys.modules:
        return None
    import tvm

    try:
        return int(tvm.get_global_func("runtime.NumThreads")())
    except Exception:  # an older runtime without the query
        return None


@main.group()
def tvm() -> None:
    """TVM backend: targets and the tuning database."""


@tvm.command()
@click.option("--backend", "-b", default="tvm-llvm", show_default=True, help="tvm-llvm or tvm-cuda.")
@click.option("--target-json", default=None, metavar="JSON", help="Target to describe instead of the default.")
@click.option("--arch", default=None, metavar="SM", help="tvm-cuda: GPU architecture.")
@click.option("--db", default=None, metavar="DIR", help="Tuning database root.")
def info(backend, target_json, arch, db):
    """Show the target a compile would use, the TVM version and the tuning database."""
    from convdsl.backends.tvm.backend import tvm_versions
    from convdsl.backends.tvm.targets import host_can_run, make_target
    from convdsl.backends.tvm.tuning import db_dir

    check_target_options(target_json, arch)
    spec = make_target(backend, target_json=target_json, arch=arch)
    folder = db_dir(spec, db)
    records = folder / "database_tuning_record.json"
    n = sum(1 for _ in open(records)) if records.exists() else 0
    why = host_can_run(spec.config)
    click.echo(f"backend:   {backend}")
    click.echo(f"target:    {spec.describe()}")
    click.echo(f"runs here: {'yes' if not why else 'no (' + why + ')'}")
    click.echo("versions:  " + ", ".join(f"{k} {v}" for k, v in tvm_versions().items()))
    click.echo(f"database:  {folder} ({n} tuning records)")
