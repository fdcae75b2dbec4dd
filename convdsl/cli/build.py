"""Commands that build and run: compile, run."""
from __future__ import annotations

from pathlib import Path

import click

from convdsl.errors import UsageError
from convdsl.cli.common import program_graph, main, program_options, weights_options


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
@click.option("--backend", "-b", default="torch", show_default=True,
              help="Code generator: torch (model.py), tvm-llvm (CPU lib.so), tvm-cuda (GPU lib.so; cross-compiles "
                   "without a GPU), onnx (model.onnx).")
@click.option("--output", "-o", "out", required=True, type=click.Path(file_okay=False), help="Artifact folder to write.")
@weights_options("Trained weights (.safetensors).")
@optimize_options
def compile_cmd(file, network, sets, choose, bind, max_memory, seed, backend, out, weights, opt, passes):
    """Compile FILE to an artifact folder (generated code, weights, manifest).

    The folder is written beside OUT and moved into place when complete; an existing OUT is
    replaced only if it is an artifact folder (or empty).  The artifact's digest (the SHA-256 of
    its manifest.json, which lists the SHA-256 of every file) is printed, and the folder is
    signed with your artifact key (see `convdsl run --help`).

    \b
    The shapes the artifact takes are printed and kept in manifest.json:
    - torch and onnx folders take every symbolic dim (N, L...) at any size;
    - tvm-llvm keeps the batch N symbolic (one lib.so for every batch) unless --bind N=B
      fixes it; --tune, --precision bf16/int8 and MetaSchedule records compile static shapes
      (N=1 unless bound) and say so; --dynamic-batch insists on a dynamic batch;
    - tvm-cuda compiles static shapes: --bind N=B for a batch of B (default 1).
    `convdsl run OUT --batch B` refuses a batch the folder was not compiled for, with the
    command that rebuilds it."""
    from convdsl.artifact import MANIFEST, artifact_files, file_hash, write_artifact
    from convdsl.outputs import output_folder
    from convdsl.trust import SIGNATURE, key_path

    output_folder(out, artifact_files)  # refused now, not after building
    g = program_graph(file, network, sets, choose, bind, max_memory, seed, weights=weights)
    g = _optimize(g, opt, passes)
    files = write_artifact(g, out, backend)
    click.echo(f"compiled {g.name} ({g.params.count():,} params) with backend {backend} -> {out}/")
    for f in files:
        click.echo(f"  {f}")
    _echo_shapes(Path(out) / MANIFEST)
    digest = file_hash(Path(out) / MANIFEST)
    click.echo(f"artifact sha256: {digest}")
    if SIGNATURE in files:
        click.echo(f"signed with your artifact key ({key_path()})")
    else:
        click.echo("not signed (no artifact key could be made here): run it with --expect-sha256 " + digest)


def _echo_shapes(manifest_path: Path) -> None:
    """The input shapes the folder takes, as its manifest records them."""
    import json

    m = json.loads(manifest_path.read_text(encoding="utf-8"))
    dynamic = m.get("dynamic", [])
    for spec in m["inputs"]:
        shape = ", ".join(str(d) for d in spec["shape"])
        syms = [d for d in spec["shape"] if isinstance(d, str)]
        how = f"any {', '.join(dict.fromkeys(syms))}" if syms else (
            "static shapes" + (f", compiled for {', '.join(f'{k} = {v}' for k, v in m['symbols'].items())}"
                               if m.get("symbols") and not dynamic else ""))
        click.echo(f"takes {spec['name']}: {spec['dtype']}[{shape}] ({how})")


RUN_HELP = """Run a compiled artifact folder (or a .cdl file) on inputs; print the outputs.

\b
Trust model of a folder (docs/artifacts.md), checked before anything in it is read or loaded:
- manifest.json lists every file with its SHA-256; its own SHA-256 is the artifact digest,
  printed by `convdsl compile`.  --expect-sha256 DIGEST refuses any other folder.
- `compile` signs each folder with your artifact key ($CONVDSL_ARTIFACT_KEY, else
  ~/.config/convdsl/artifact.key, made on first use, mode 0600); a folder signed with it
  and changed afterwards is refused.
- every listed file must be a regular file inside the folder (no '/', '..' or links) with the
  listed size and SHA-256.
- a TVM folder holds native code (lib.so), an ONNX folder a model ONNX Runtime executes: they
  run only when pinned with --expect-sha256 or signed with your key (TVM: built by this TVM for
  this machine), from a private copy of the checked bytes.  A torch folder holds no code that
  runs: the network is rebuilt from network.cdl and weights.safetensors, never from model.py.
"""


@main.command(help=RUN_HELP)
@click.argument("target", type=click.Path())
@program_options
@click.option("--backend", "-b", default="torch", show_default=True,
              help="Backend when TARGET is a .cdl file: torch, tvm-llvm, tvm-cuda, onnx.")
@weights_options("Weights when TARGET is a .cdl file.")
@click.option("--input", "inputs", multiple=True, type=click.Path(dir_okay=False),
              help="Input .npy file(s), one per network input, in order; they give the sizes of symbolic dims.")
@click.option("--batch", type=click.IntRange(1, 2**31 - 1), default=None,
              help="Size of every symbolic dim of generated inputs (of a folder: of those it takes at any size, "
                   "e.g. the batch N of a tvm-llvm library; default: 1, or as the folder was compiled).")
@click.option("--expect-sha256", "expect_sha256", default=None, metavar="DIGEST",
              help="Run the folder only if its artifact digest is DIGEST (as printed by convdsl compile).")
@click.option("--save", type=click.Path(dir_okay=False), help="Save the first output as .npy.")
@optimize_options
def run(target, network, sets, choose, bind, max_memory, seed, backend, weights, inputs, batch, expect_sha256, save,
        opt, passes):
    from convdsl.artifact import run_artifact_or_program
    from convdsl.cli.common import parse_bytes, parse_pairs

    if (opt or passes) and Path(target).is_dir():
        raise UsageError("--opt and --passes apply to a .cdl file; an artifact folder is already compiled",
                         hint="give the options to `convdsl compile` instead")
    if save:
        _check_save(save)  # before running, not after

    def load(sizes):
        """The .cdl file's network: a first look (no weights, no passes), or at the sizes it runs at."""
        if sizes is None:
            return program_graph(target, network, sets, choose, bind, max_memory, seed)
        fixed = bind + tuple(f"{k}={v}" for k, v in sizes.items())
        return _optimize(program_graph(target, network, sets, choose, fixed, max_memory, seed, weights=weights,
                                concrete=True), opt, passes)

    result = run_artifact_or_program(target, backend=backend, inputs=list(inputs), batch=batch, graph_loader=load,
                                     bound=_sizes(parse_pairs(bind, "--bind")),
                                     expect_sha256=expect_sha256, max_bytes=parse_bytes(max_memory))
    art = result["artifact"]
    if art is not None and art.trusted is None:
        click.echo(f"note: {target} is not pinned, and {art.untrusted_because}: its files match its manifest, "
                   "but nothing says who made it (no code from it runs: the network is rebuilt from network.cdl)",
                   err=True)
    click.echo(f"ran {result['network']} on {result['backend']} in {result['ms']:.2f} ms")
    for name, arr in result["outputs"].items():
        flat = arr.reshape(-1)
        preview = ", ".join(f"{v:.4f}" for v in flat[:5])
        click.echo(f"  {name}: {list(arr.shape)} {arr.dtype} mean={arr.mean():.5f} std={arr.std():.5f} [{preview}{', ...' if flat.size > 5 else ''}]")
    if save:
        save_array(save, next(iter(result["outputs"].values())))
        click.echo(f"saved {save}")


def _sizes(pairs: dict) -> dict[str, int]:
    """--bind values as sizes: positive integers."""
    for k, v in pairs.items():
        if type(v) is not int or v < 1:
            raise UsageError(f"--bind {k}=... takes a positive integer size", got=str(v)[:40])
    return pairs


def _check_save(path: str) -> None:
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"--save {path}: that is a folder", hint="give a file name, e.g. --save y.npy")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--save {path}: {folder} is not a folder you can write")


def save_array(path: str, arr) -> None:
    """np.save to exactly ``path`` (no '.npy' added), written beside it and renamed into place."""
    import os
    import tempfile

    import numpy as np

    from convdsl.outputs import current_umask

    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr)
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise UsageError(f"cannot save {path}: {e.strerror or e}") from None
