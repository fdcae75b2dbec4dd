"""A dynamic batch against static builds on tvm-llvm, in one run.

    nice python benchmarks/dynamic_batch.py [--model examples/resnet18.cdl] [--batches 1,4] [--rounds 10] [--threads T]

Builds the network once with its batch symbol kept symbolic (``--dynamic-batch``: one library
for every N) and once per batch size with N bound (``--bind N=B``, the static default), checks
that the dynamic library gives the static one's outputs, then times them round-robin (a
shuffled order per round, each sample enough calls for ~50 ms): median and minimum per call
in ms, and dynamic / static.  Also prints how many kernels each build scheduled with
convdsl's own schedules (a dynamic build must schedule as many) and the build times.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown CPU"
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} CPUs, {' '.join(isa)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "examples" / "resnet18.cdl"))
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None,
                    help="TVM worker threads (1: immune to other jobs' threads on a shared machine)")
    args = ap.parse_args()
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    import tvm
    from tvm.runtime.vm import VirtualMachine

    from convdsl.api import load_graph
    from convdsl.artifact import make_inputs
    from convdsl.backends.tvm.build import BuildOptions, build
    from convdsl.backends.tvm.targets import configure_thread_pool, make_target

    configure_thread_pool()
    print(f"CPU: {cpu()}; TVM threads: {os.environ.get('TVM_NUM_THREADS', 'default')}")
    graph = load_graph(args.model)
    spec = make_target("tvm-llvm")
    dev = tvm.cpu()
    builds = {}
    for name, opts in [("dynamic", BuildOptions(progress=False, dynamic=("N",)))] + \
            [(f"static N={b}", BuildOptions(progress=False, bind={"N": b})) for b in batches]:
        t0 = time.perf_counter()
        built = build(graph, spec, opts)
        builds[name] = (built, VirtualMachine(built.executable, dev))
        print(f"{name:>12}: built in {time.perf_counter() - t0:6.1f} s, {built.functions} kernels, "
              f"{built.own} scheduled by convdsl's schedules, {built.scheduled} from the tuning database, "
              f"{built.templates_from_db} template knobs from a database")

    entries = []  # (label, fn)
    for b in batches:
        x = make_inputs(graph, b)
        args_ = [tvm.runtime.tensor(a, dev) for a in x]
        dyn, static = builds["dynamic"][1]["main"], builds[f"static N={b}"][1]["main"]
        want, got = static(*args_).numpy(), dyn(*args_).numpy()
        err = float(np.abs(want - got).max() / max(1.0, np.abs(want).max()))
        print(f"N={b}: max |dynamic - static| / scale = {err:.2e}")
        entries += [(f"N={b} static", lambda f=static, a=args_: f(*a)), (f"N={b} dynamic", lambda f=dyn, a=args_: f(*a))]

    reps = {}
    for label, fn in entries:
        fn()
        t0 = time.perf_counter()
        fn()
        reps[label] = max(1, int(50 / max((time.perf_counter() - t0) * 1e3, 1e-3)))
    samples: dict[str, list[float]] = {label: [] for label, _ in entries}
    for _ in range(args.rounds):
        order = list(entries)
        random.shuffle(order)
        for label, fn in order:
            t0 = time.perf_counter()
            for _ in range(reps[label]):
                fn()
            samples[label].append((time.perf_counter() - t0) * 1e3 / reps[label])
    print(f"\n{Path(args.model).name}, {args.rounds} rounds (ms per call)")
    print(f"{'':14} {'median':>9} {'min':>9}   dynamic / static (median)")
    for b in batches:
        s, d = samples[f"N={b} static"], samples[f"N={b} dynamic"]
        for label, xs in ((f"N={b} static", s), (f"N={b} dynamic", d)):
            ratio = f"   {statistics.median(d) / statistics.median(s):.3f}" if xs is d else ""
            print(f"{label:14} {statistics.median(xs):9.3f} {min(xs):9.3f}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
