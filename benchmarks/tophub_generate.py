"""Generate the template database shipped with convdsl (backends/tvm/schedules/tophub/).

    nice python benchmarks/tophub_generate.py [--trials 16] [--nets resnet18,mobilenet_v2,resnet50,vit_s16]

Runs the template tuner (``convdsl tune``) on the zoo's common networks at batch 1 for this
machine's CPU and merges the records into ``tophub/llvm-<isa>.json``; the header says where,
when and how it was made.  Networks are tuned in the order given, so a time limit
(``--budget-s``) cuts the last ones.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETS = {
    "resnet18": ("examples/resnet18.cdl", ()),
    "mobilenet_v2": ("examples/mobilenet_v2.cdl", ()),
    "resnet50": ("examples/resnet50.cdl", ()),
    # the ViT-S/16 of benchmarks/backends.py
    "vit_s16": ("examples/vit_b_16.cdl", ("hidden=384", "heads=6", "mlp_dim=1536")),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--budget-s", type=float, default=1200.0, help="stop starting new networks after this")
    ap.add_argument("--prior-seconds", type=float, default=0, help="tuning time of records already in --out")
    ap.add_argument("--out", default=None, help="database file (default: the shipped one for this ISA)")
    args = ap.parse_args()

    import tvm
    from rich.console import Console

    from convdsl.backends.tvm.schedules import template_tuner as tt, tophub
    from convdsl.backends.tvm.targets import make_target
    from convdsl.cli.common import program_graph

    spec = make_target("tvm-llvm")
    console = Console(width=160)
    out = Path(args.out) if args.out else None
    load = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    done = []
    for name in args.nets.split(","):
        if time.perf_counter() - t0 > args.budget_s:
            console.print(f"[yellow]time budget spent: {name} not tuned")
            break
        path, sets = NETS[name]
        g = program_graph(str(ROOT / path), None, sets, (), (), None, 0)
        if out is None:  # the ISA tag of this CPU, from one workload's key
            ks = tt.kernels(tt.optimized_module(g, spec), spec.tvm_target())
            isa = next(iter(ks.values())).workload.isa
            out = tophub.SHIPPED_DIR / f"llvm-{isa}.json"
        t = time.perf_counter()
        res = tt.tune_network(g, spec, args.trials, db_file=out, rounds=args.rounds, progress=sys.stderr.isatty())
        console.print(tt.summary_table(res, f"{name}: {time.perf_counter() - t:.0f} s"))
        done.append(name)
    header = {
        "produced_by": "benchmarks/tophub_generate.py (convdsl's template tuner)",
        "cpu": tt.cpu_model(), "cores": os.cpu_count(), "load_avg_at_start": load,
        "target": spec.describe(), "tvm": tvm.__version__, "timing": "min over rounds, weights flushed from cache",
        "date": dt.date.today().isoformat(), "trials_per_workload": args.trials, "rounds": args.rounds,
        "networks": sorted(set(tophub.read_db(out)["header"].get("networks", [])) | set(done)) if out else done,
        "batch": 1, "tuning_seconds": round(time.perf_counter() - t0) + (args.prior_seconds or 0),
    }
    if out is not None:
        tophub.write_db(out, {}, header)
        console.print(f"{len(tophub.read_db(out)['records'])} records in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
