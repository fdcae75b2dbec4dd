"""Generate the template databases shipped with convdsl (backends/tvm/schedules/tophub/<family>.json).

    nice python benchmarks/tophub_generate.py [--trials 16] [--nets resnet18,mobilenet_v2,resnet50,vit_s16]
                                              [--precisions f32,bf16,int8]
    python benchmarks/tophub_generate.py --analytic --family avx512-amx     # untuned: the model's knobs

One database per CPU family (``targets.cpu_family``: ``avx512`` = AVX-512 without AMX,
``avx512-amx`` = with AMX), picked from the CPU flags at build time.  Tuning measures, so it can
only fill the family of the machine it runs on: it runs the template tuner (``convdsl tune``) on
the zoo's common networks at batch 1 and merges the records into this family's file; the header
says where, when and how it was made, and its ``vendor`` limits the file to that vendor's cores
(``tophub.shipped_paths``).  ``--precisions`` tunes each precision's build: f32's templates,
bf16's ``vdpbf16ps`` templates (where the CPU has AVX512_BF16; on an AMX CPU the layers AMX tiles do
not take), int8's VNNI templates (the network quantized as benchmarks/peers.py does; without AMX, or
``--no-amx``, every int8 conv and linear).  Records are keyed by
dtypes and ISA, so the precisions' records never collide.  ``--analytic`` writes the analytic model's knobs instead,
every record and the header marked ``untuned`` (a family no machine here could tune: honest
defaults, replaced by a tuning run on such a machine).  Networks are tuned in the order given, so
a time limit (``--budget-s``) cuts the last ones.
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
    # grouped convs of 8-channel groups and 8-channel blocks (104, 440 channels): shapes the four above lack
    "regnet_y_400mf": ("examples/regnet_y_400mf.cdl", ()),
    # transposed convs as one conv per phase over 4 x 4 to 32 x 32 maps, and their int8 phases' conv (17 columns)
    "dcgan": ("examples/dcgan.cdl", ()),
    # 3x3 convs over 128 x 128 maps of 32-256 channels joined by int8 concats (peers.py's U-Net)
    "unet": ("examples/unet.cdl", ()),
}


def quantized(graph):
    """``graph`` quantized as benchmarks/peers.py's int8 rows run it (batchnorm statistics and minmax
    ranges from its N(0, 1) calibration inputs, ``convdsl quantize``'s weight bits for this CPU)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import CALIB_SAMPLES, bn_from_calibration, calibration_inputs, convdsl_int8

    calib = calibration_inputs(graph, CALIB_SAMPLES)
    return convdsl_int8(bn_from_calibration(graph, calib), calib)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--budget-s", type=float, default=1200.0, help="stop starting new networks after this")
    ap.add_argument("--prior-seconds", type=float, default=0, help="tuning time of records already in --out")
    ap.add_argument("--out", default=None, help="database file (default: the shipped one of --family)")
    ap.add_argument("--family", default=None, help="CPU family of the file (default: this machine's)")
    ap.add_argument("--analytic", action="store_true", help="write the model's knobs, marked untuned (no measuring)")
    ap.add_argument("--precisions", default="f32", help="the builds tuned, in this order: f32,bf16,int8")
    ap.add_argument("--no-amx", action="store_true", help="bf16/int8 without AMX tiles (the VNNI / vdpbf16ps layers)")
    args = ap.parse_args()
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"f32", "bf16", "int8"}:
        ap.error(f"--precisions: f32, bf16, int8 (got {args.precisions})")

    import tvm
    from rich.console import Console

    from convdsl.backends.tvm.schedules import template_tuner as tt, tophub
    from convdsl.backends.tvm.targets import cpu_family, cpu_vendor, make_target
    from convdsl.cli.common import program_graph

    console = Console(width=160)
    family = args.family or cpu_family()
    if family != cpu_family() and not args.analytic:
        console.print(f"[red]this machine is {cpu_family()}: it cannot tune {family} (use --analytic for untuned defaults)")
        return 2
    out = Path(args.out) if args.out else tophub.SHIPPED_DIR / f"{family}.json"
    load = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    done = []
    base = make_target("tvm-llvm")  # the header's target: bf16/int8 builds add their features to it
    for precision, name in [(p, n) for p in precisions for n in args.nets.split(",")]:
        label = name if precision == "f32" else f"{name} {precision}"
        if time.perf_counter() - t0 > args.budget_s:
            console.print(f"[yellow]time budget spent: {label} not tuned")
            break
        path, sets = NETS[name]
        g = program_graph(str(ROOT / path), None, sets, (), (), None, 0)
        if precision == "int8":
            g = quantized(g)
        spec = make_target("tvm-llvm", precision=precision, amx=not args.no_amx)
        t = time.perf_counter()
        if args.analytic:
            ks = tt.kernels(tt.optimized_module(g, spec, precision=precision), spec.tvm_target())
            have = tophub.read_db(out)["records"]
            tophub.write_db(out, {k: {"knobs": dict(zip(tophub.KNOBS[v.workload.kind], v.analytic)), "untuned": True}
                                  for k, v in ks.items() if k not in have}, {})
            console.print(f"{label}: {len(ks)} workloads, the model's knobs (untuned)")
            done.append(label)
            continue
        res = tt.tune_network(g, spec, args.trials, db_file=out, rounds=args.rounds, progress=sys.stderr.isatty(),
                              precision=precision)
        console.print(tt.summary_table(res, f"{label}: {time.perf_counter() - t:.0f} s"))
        done.append(label)
    header = {
        "family": family,
        "produced_by": "benchmarks/tophub_generate.py (convdsl's template tuner)",
        "cpu": tt.cpu_model(), "vendor": cpu_vendor(), "cores": os.cpu_count(), "load_avg_at_start": load,
        "target": base.describe(), "tvm": tvm.__version__, "timing": "min over rounds, weights flushed from cache",
        "date": dt.date.today().isoformat(), "trials_per_workload": args.trials, "rounds": args.rounds,
        "networks": sorted(set(tophub.read_db(out)["header"].get("networks", [])) | set(done)) if out else done,
        "precisions": sorted(set(tophub.read_db(out)["header"].get("precisions", [])) | set(precisions)) if out
        else precisions,
        "batch": 1, "tuning_seconds": round(time.perf_counter() - t0) + (args.prior_seconds or 0),
    }
    if args.analytic:
        header.update(untuned=True, tuning_seconds=0, trials_per_workload=0, rounds=0, timing="none: the analytic model's knobs",
                      produced_by="benchmarks/tophub_generate.py --analytic")
    if out is not None:
        tophub.write_db(out, {}, header)
        console.print(f"{len(tophub.read_db(out)['records'])} records in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
