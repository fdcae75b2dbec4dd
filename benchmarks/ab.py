"""A/B of two convdsl source trees on one network's tvm-llvm build: is a change faster?

    python benchmarks/ab.py resnet50 int8 /path/to/tree-a /path/to/tree-b [--launches 6] [--rounds 6]
    python benchmarks/ab.py mobilenet_v2 int8 /work/main@off /tmp/wt@off   # "@off": CONVDSL_TOPHUB=off (no database)
    python benchmarks/ab.py resnet50 int8 /work/main /work/main@GLIBC_TUNABLES=glibc.malloc.hugetlb=1  # one setting

A tree is ``path[@setting,...]``: each setting ``off`` (no database) or ``NAME=VALUE``, an environment variable of
that tree's processes (the same source against itself under another setting: transparent huge pages, the thread
pool's ``TVM_THREAD_POOL_SPIN_COUNT``).

Each launch starts one process per tree (``peers.py --child``, the tree first on PYTHONPATH), builds the same
program (peers.py's network, batchnorm statistics from the calibration batch, quantized by convdsl for int8) and
times alternating blocks; the order of the two trees swaps every launch.  A process's speed varies from launch to
launch (docs/tvm.md, "Zen 3 (AVX2), eleventh session": one of two processes of the same build ran 21.7 ms while
its partner ran 13.6), so one launch is no evidence for a few percent: the verdict is the median of the launches'
B / A ratios, with their range.  The two builds' outputs are compared too (a schedule change should not move them).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

from convdsl.backends.tvm.schedules.tophub import ENV as TOPHUB_ENV  # noqa: E402


def tree_env(tree: str, base: dict[str, str]) -> dict[str, str]:
    """The environment of ``tree``'s processes (``path[@setting,...]``): ``base`` with the tree first on PYTHONPATH,
    ``off`` as CONVDSL_TOPHUB=off, each ``NAME=VALUE`` set (a value may hold "=": only the first one splits)."""
    path, _, settings = tree.partition("@")
    env = dict(base, PYTHONPATH=path)
    for setting in filter(None, settings.split(",")):
        if setting == "off":
            env[TOPHUB_ENV] = "off"
            continue
        name, eq, value = setting.partition("=")
        if not eq or not name.isidentifier():
            raise SystemExit(f"{tree}: a setting is 'off' or NAME=VALUE, not {setting!r}")
        env[name] = value
    return env


def start(tree: str, spec: dict) -> peers.Proc:
    """peers.py's child process for ``tree`` (``tree_env``), after it reported READY."""
    p = peers.Proc(spec["row"], spec, tree_env(tree, dict(os.environ)))
    if not p.ready():
        raise SystemExit(f"{tree}: the build {p.note}")
    return p


def launch(trees: list[str], spec: dict, work: Path, rounds: int) -> tuple[list[float], float]:
    """One launch: both processes built, ``rounds`` alternating blocks; (median ms of ``trees[0]``, of ``trees[1]``),
    max |difference of their outputs|."""
    procs = [start(t, {**spec, "output": str(work / f"out{i}.npy")}) for i, t in enumerate(trees)]
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            procs[i].run()
    for p in procs:
        p.quit()
    a, b = (np.load(work / f"out{i}.npy") for i in range(2))
    return [float(np.median(p.ms)) for p in procs], float(np.abs(a - b).max())


def summary(ratios: list[float]) -> str:
    return f"median B/A {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f} ({len(ratios)} launches)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("net", choices=sorted(peers.ALL_NETS))
    ap.add_argument("precision", choices=("f32", "int8"))
    ap.add_argument("tree_a")
    ap.add_argument("tree_b")
    ap.add_argument("--launches", type=int, default=6, help="fresh process pairs (the order swaps every launch)")
    ap.add_argument("--rounds", type=int, default=6, help="alternating blocks per process and launch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-ms", type=float, default=400.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="convdsl-ab-"))
    g = peers.load_graph(args.net)
    calib = peers.calibration_inputs(g, peers.CALIB_SAMPLES)
    g = peers.bn_from_calibration(g, calib)
    program = peers.convdsl_int8(g, calib) if args.precision == "int8" else g
    cdl, weights = peers.save_program(program, work / "program")
    np.save(work / "x.npy", calib[0])
    spec = {"row": f"convdsl {args.precision}", "threads": args.threads, "input": str(work / "x.npy"), "cdl": cdl,
            "weights": weights, "block_ms": args.block_ms}
    print(peers.machine(), flush=True)
    ratios = []
    for i in range(args.launches):
        order = [args.tree_a, args.tree_b] if i % 2 == 0 else [args.tree_b, args.tree_a]
        (first, second), diff = launch(order, spec, work, args.rounds)
        a, b = (first, second) if i % 2 == 0 else (second, first)
        ratios.append(b / a)
        print(f"launch {i + 1}: A {a:.3f} ms, B {b:.3f} ms, B/A {b / a:.3f}, max |A - B| {diff:.3g}, "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"{args.net} {args.precision}: {summary(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
