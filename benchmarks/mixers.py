"""Token mixers side by side: latency and peak memory vs sequence length, and
FFT long convolution vs direct convolution vs kernel size.  One run:

    python benchmarks/mixers.py [--quick] [--threads 2]
    python benchmarks/mixers.py --lengths 16384 --only attention "selective scan" --rounds 3 --no-fft-sweep

(--rounds R: the rows of a length alternate R times, each keeping its best; the ratios
are then taken within one run on a loaded machine, where rows measured minutes apart
are not comparable.)

Every mixer is a one-op CDL program compiled by convdsl's torch backend, so
this measures what users get; the selective scan also on tvm-llvm (its TIR scan).  Each configuration runs in a fresh subprocess
and reports its peak resident memory above the process baseline (after the
model is built), so numbers include the mixer's temporaries.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

WIDTH = 64
LENGTHS = [256, 1024, 4096, 16384]
KERNELS = [7, 15, 31, 63, 127, 255, 511, 1024]

PROGRAMS = {
    "attention (mhsa, 4 heads)": "network m(x: f32[1, {L}, {C}]) {{\n    return x | mhsa(heads=4)\n}}",
    "FFT mixing (global_filter, HxW=L)": "network m(x: f32[1, {C}, {S}, {S}]) {{\n    return x | global_filter()\n}}",
    "FFT long conv (fft_conv, K=L)": "network m(x: f32[1, {C}, {L}]) {{\n    return x | fft_conv()\n}}",
    "LTI SSM (s4d, state 64)": "network m(x: f32[1, {C}, {L}]) {{\n    return x | s4d(state=64)\n}}",
    "selective scan (state 16)": "network m(x: f32[1, {C}, {L}]) {{\n    return x | selective_scan(state=16)\n}}",
}
# rows run on tvm-llvm as well (the fused TIR scan of backends/tvm/lower_ssm.py)
TVM_ROWS = {"selective scan (state 16)": "selective scan, tvm-llvm (TIR scan)"}

CHILD = r"""
import json, os, resource, statistics, sys, time
os.environ["TVM_NUM_THREADS"] = "{threads}"
import torch
torch.set_num_threads({threads})
from convdsl.lang.elaborate import elaborate
from convdsl.backends.torch import build_module
from convdsl.artifact import make_inputs
g = elaborate({text!r})
if {tvm!r}:
    import convdsl.backends.tvm as ctvm
    m = ctvm.backend("tvm-llvm", progress=False).build_module(g)
    x = make_inputs(g)
else:
    m = build_module(g)
    x = [torch.from_numpy(a) for a in make_inputs(g)]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # built model and inputs
with torch.inference_mode():
    m(*x)
    times = []
    deadline = time.perf_counter() + {budget}
    for _ in range({repeat}):
        t0 = time.perf_counter(); m(*x); times.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"ms": min(times) * 1e3, "median_ms": statistics.median(times) * 1e3, "peak_mib": peak / 1024, "extra_mib": (peak - base) / 1024}}))
"""


def measure(text: str, threads: int, repeat: int, budget: float, timeout: float, tvm: bool = False) -> dict | None:
    code = CHILD.format(text=text, threads=threads, repeat=repeat, budget=budget, tvm=tvm)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(r: dict | None) -> str:
    return f"{r['ms']:10.2f} ms {r['extra_mib']:8.0f} MiB" if r else f"{'timeout':>13} {'':>12}"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    model = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")]
    flags = [ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")]
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if flags and f in flags[0]]
    return f"{model[0] if model else 'unknown'} ({', '.join(simd)}), {os.cpu_count()} CPUs"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer lengths and kernels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-tvm", action="store_true", help="skip the tvm-llvm rows")
    ap.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 256 1K 4K 16K)")
    ap.add_argument("--only", nargs="+", metavar="TEXT", help="rows whose name contains one of these (attention kept)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the rows this many times, keep each row's best")
    ap.add_argument("--no-fft-sweep", action="store_true", help="skip part 2 (fft_conv vs direct conv)")
    args = ap.parse_args()
    lengths = args.lengths or (LENGTHS[:2] if args.quick else LENGTHS)
    kernels = KERNELS[::3] if args.quick else KERNELS
    rows = []  # (row name, program template, tvm)
    for name, tmpl in PROGRAMS.items():
        if args.only and not name.startswith("attention") and not any(o in name for o in args.only):
            continue
        rows.append((name, tmpl, False))
        if name in TVM_ROWS and not args.no_tvm:
            rows.append((TVM_ROWS[name], tmpl, True))
    print(f"width {WIDTH}, batch 1, {args.threads} threads; best-of-N latency (robust to other jobs on the"
          f" machine) and peak memory above the built model's baseline (RSS); CPU: {cpu_name()}, load average"
          f" {load()} at the start\n")
    print("1. mixers vs sequence length" + (f" ({args.rounds} alternating rounds, best of each)" if args.rounds > 1 else ""))
    results: dict[str, dict[int, dict | None]] = {name: {} for name, _, _ in rows}
    for L in lengths:
        for _ in range(args.rounds):
            for name, tmpl, tvm in rows:
                r = measure(tmpl.format(L=L, C=WIDTH, S=int(math.isqrt(L))), args.threads, repeat=5, budget=20.0,
                            timeout=600 if tvm else 300, tvm=tvm)
                best = results[name].get(L)
                results[name][L] = r if best is None or (r is not None and r["ms"] < best["ms"]) else best
    print(f"{'mixer':36s}" + "".join(f"{'L=' + str(L):>25s}" for L in lengths))
    for name, _, _ in rows:
        print(f"{name:36s}" + "".join(f"{fmt(results[name][L]):>25s}" for L in lengths), flush=True)
    att = results["attention (mhsa, 4 heads)"]
    L = lengths[-1]
    print(f"\nat L={L:,}: speedup over attention")
    for name, row in results.items():
        if name.startswith("attention") or not row.get(L) or not att.get(L):
            continue
        print(f"   {name:36s} {att[L]['ms'] / row[L]['ms']:8.1f}x faster, memory +{row[L]['extra_mib']:.0f} vs"
              f" +{att[L]['extra_mib']:.0f} MiB")
    if len(lengths) > 1:
        print("\nmemory growth from the shortest to the longest length (x{} tokens):".format(lengths[-1] // lengths[0]))
        for name, row in results.items():
            if row.get(lengths[0]) and row.get(L):
                print(f"   {name:36s} +{row[lengths[0]]['extra_mib']:.0f} -> +{row[L]['extra_mib']:.0f} MiB")
    print(f"load average at the end: {load()}")
    if args.no_fft_sweep:
        return

    print("\n2. FFT long conv vs direct depthwise conv (L=4096, causal kernel of size K)")
    print(f"{'K':>6s} {'direct conv1d':>25s} {'fft_conv':>25s} {'fft/direct':>11s}")
    crossover = None
    for k in kernels:
        direct = measure(f"network m(x: f32[1, {WIDTH}, 4096]) {{\n    return x | conv1d({WIDTH}, {k}, groups=depthwise, pad=[{k - 1}, 0])\n}}",
                         args.threads, 7, 10.0, 300)
        fft = measure(f"network m(x: f32[1, {WIDTH}, 4096]) {{\n    return x | fft_conv(kernel_len={k})\n}}",
                      args.threads, 7, 10.0, 300)
        ratio = f"{fft['ms'] / direct['ms']:11.2f}" if fft and direct else ""
        print(f"{k:>6d} {fmt(direct):>25s} {fmt(fft):>25s} {ratio}", flush=True)
        if crossover is None and fft and direct and fft["ms"] < direct["ms"]:
            crossover = k
    print(f"\ncrossover: fft_conv is faster from K = {crossover}" if crossover else "\nno crossover in this range")


if __name__ == "__main__":
    main()
