"""End-to-end effect of the template database: analytic knobs vs database knobs, one run.

    nice python benchmarks/tophub_e2e.py [--nets resnet18,mobilenet_v2] [--rounds 15] [--precisions f32,bf16,int8]

Builds each network twice for tvm-llvm (with the same MetaSchedule records, if the user has
any): once with the analytic model alone (``tophub.forcing(ANALYTIC)``), once with the databases (the user's, then the shipped
one; ``--shipped-only`` hides the user's), checks both against each other, and times them
round-robin (a shuffled order per round, each sample enough calls for ~50 ms): median and
minimum per call.  ``--precisions``: each precision's build (int8: the network quantized as
tophub_generate.py does; bf16/int8 with AMX tiles where the CPU has them, ``--no-amx`` for the
vdpbf16ps / VNNI builds).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tophub_generate import NETS, ROOT, quantized  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="resnet18,mobilenet_v2")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--shipped-only", action="store_true", help="ignore the user's database")
    ap.add_argument("--precisions", default="f32")
    ap.add_argument("--no-amx", action="store_true")
    args = ap.parse_args()
    if args.shipped_only:
        os.environ["CONVDSL_TUNING_DB"] = tempfile.mkdtemp(prefix="convdsl-empty-db-")

    from convdsl.artifact import make_inputs
    from convdsl.backends.tvm import backend
    from convdsl.backends.tvm.schedules import tophub
    from convdsl.cli.common import program_graph

    for precision, name in [(p, n) for p in args.precisions.split(",") for n in args.nets.split(",")]:
        path, sets = NETS[name]
        g = program_graph(str(ROOT / path), None, sets, (), (), None, 0)
        xs = make_inputs(g, 1, 0)
        if precision == "int8":
            g = quantized(g)
        opts = dict(progress=False, precision=precision, amx=not args.no_amx)
        # both builds apply the same databases (use_db=True: with use_db=False a build takes the
        # analytic knobs, so the "database" build would measure nothing); forcing makes one analytic
        with tophub.forcing(tophub.ANALYTIC), tophub.recording() as seen_a:
            analytic = backend("tvm-llvm", **opts).runner(g)
        with tophub.recording() as seen_t:
            tuned = backend("tvm-llvm", **opts).runner(g)
        changed = sum(a[2] != b[2] for a, b in zip(seen_a, seen_t))
        ya, yt = analytic(xs)[0], tuned(xs)[0]
        err = float(np.abs(ya - yt).max()) / max(1.0, float(np.abs(ya).max()))
        runs = {"analytic": analytic, "database": tuned}
        calls = {}
        for k, f in runs.items():
            t = time.perf_counter()
            f(xs)
            calls[k] = max(1, int(0.05 / (time.perf_counter() - t)))
        samples = {k: [] for k in runs}
        order = list(runs)
        rng = random.Random(0)
        for _ in range(args.rounds):
            rng.shuffle(order)
            for k in order:
                t = time.perf_counter()
                for _ in range(calls[k]):
                    runs[k](xs)
                samples[k].append((time.perf_counter() - t) / calls[k] * 1e3)
        med = {k: statistics.median(v) for k, v in samples.items()}
        low = {k: min(v) for k, v in samples.items()}
        print(f"{name} {precision}: {changed}/{len(seen_t)} template calls use database knobs; max rel diff {err:.1e}; "
              f"analytic median {med['analytic']:.2f} ms (min {low['analytic']:.2f}), "
              f"database median {med['database']:.2f} ms (min {low['database']:.2f}); "
              f"speedup {med['analytic'] / med['database']:.3f}x median, {low['analytic'] / low['database']:.3f}x min",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
