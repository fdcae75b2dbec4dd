"""Compression in one run: accuracy where it is meaningful, speed where it is.

    python benchmarks/compress.py [--epochs 8] [--finetune 8] [--quick] [--accuracy-only]

(a) digits-sized ResNet and MobileNet-style nets trained with convdsl's trainer:
    validation accuracy, params and MACs for baseline, fold_bn, pruned at
    30/50/70% MACs (before and after fine-tuning) and int8.
(b) the zoo's resnet18 and mobilenet_v2 at 224x224: measured latency on torch
    eager at batch 1 and 16 for baseline, fold_bn and pruned 30/50/70% MACs
    (channel counts rounded to 16: one AVX-512 vector of floats), plus tvm-llvm
    (untuned: convdsl's own schedules) and its int8 build when TVM is installed.
    Speedups are over fold_bn, which has the same passes without pruning.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from convdsl.api import load_graph
from convdsl.backends.torch import build_module
from convdsl.ir.stats import summary
from convdsl.passes import run_passes
from convdsl.passes.prune import prune
from convdsl.train import evaluate, load_dataset, train

RATIOS = (0.3, 0.5, 0.7)


def size(g) -> tuple[int, int]:
    return g.params.count(), summary(g)["macs"]


def row(name: str, g, acc: float | None, base: tuple[int, int]) -> str:
    p, m = size(g)
    acc_s = f"{acc * 100:6.2f}%" if acc is not None else "   -   "
    return f"  {name:28s} {acc_s} {p:>10,} {m:>13,}  {m / base[1]:6.1%} MACs"


def accuracy_table(path: str, epochs: int, finetune: int) -> None:
    data = load_dataset("digits", seed=0)
    g = load_graph(path)
    t0 = time.perf_counter()
    train(g, data, epochs, seed=0, progress=False, build=build_module)
    base = size(g)
    print(f"\n{path}  (trained {epochs} epochs in {time.perf_counter() - t0:.0f} s)")
    print(f"  {'variant':28s} {'val acc':>7s} {'params':>10s} {'MACs':>13s}")
    print(row("baseline", g, evaluate(g, data, build=build_module)["accuracy"], base))
    folded = run_passes(g, "fold_bn")
    print(row("fold_bn", folded, evaluate(folded, data, build=build_module)["accuracy"], base))
    for r, criterion in [(r, "l1") for r in RATIOS] + [(0.5, "taylor")]:
        kw = {"data": data, "build": build_module} if criterion == "taylor" else {}
        p = prune(g, ratio=r, criterion=criterion, target="macs", round_to=1, **kw)
        acc = evaluate(p, data, build=build_module)["accuracy"]
        print(row(f"pruned {r:.0%} MACs ({criterion})", p, acc, base))
        # the trainer's defaults, as `convdsl prune --finetune-epochs`
        train(p, data, finetune, seed=0, progress=False, build=build_module)
        acc = evaluate(p, data, build=build_module)["accuracy"]
        print(row(f"  + fine-tuned {finetune} epochs", p, acc, base))
    try:
        from convdsl.passes.quantize import quantize
        from convdsl.train import calibration_batches
    except ImportError:
        print("  int8: quantization pass not available")
        return
    q = quantize(folded, calibration_batches("digits"), method="percentile", build=build_module)
    print(row("int8 (percentile calib.)", q, evaluate(q, data, build=build_module)["accuracy"], base))


def interleaved_ms(fns: dict, rounds: int) -> dict[str, float]:
    """Best-of-`rounds` time (ms) of each fn(), timed round-robin so that load from other jobs
    hits every variant alike; the minimum is the figure least disturbed by that load."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) * 1e3 for k, v in times.items()}


def tvm_runner(g):
    try:
        from convdsl.backends import backend_module

        return backend_module("tvm-llvm").runner(g)
    except Exception as e:  # no TVM installed, or a build failure: reported, not fatal
        print(f"  (tvm-llvm unavailable: {type(e).__name__}: {str(e)[:120]})")
        return None


def speed_table(path: str, quick: bool) -> None:
    g = load_graph(path)
    folded = run_passes(g, "O2")
    variants = [("baseline", g), ("fold_bn (O2)", folded)]
    for r in RATIOS:
        variants.append((f"pruned {r:.0%} MACs", run_passes(prune(g, ratio=r, criterion="l1", round_to=16), "O2")))
    fold_macs = summary(folded)["macs"]
    print(f"\n{path}: best-of-N latency (ms), speedup over fold_bn (the same passes without pruning), and")
    print("  efficiency = speedup / MAC reduction (1.0: time falls exactly as MACs do)")
    with torch.inference_mode():
        mods = {name: build_module(v).eval() for name, v in variants}
        eager = {}
        for b in (1, 16):
            x = torch.randn(b, 3, 224, 224)
            eager[b] = interleaved_ms({n: (lambda m=m: m(x)) for n, m in mods.items()}, 7 if b == 16 else 20)
    tvm = {}
    if not quick:
        x1 = [np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)]
        runs = {}
        for name, v in variants[1:]:
            run = tvm_runner(v)
            if run is None:
                break
            runs[name] = run
        if runs:
            try:
                from convdsl.passes.quantize import quantize

                calib = [np.random.default_rng(1).standard_normal((4, 3, 224, 224)).astype(np.float32)]
                q = quantize(folded, calib, method="percentile", build=build_module)
                run = tvm_runner(q)
                if run is not None:
                    runs["int8 (of fold_bn)"] = run
            except ImportError:
                pass
            tvm = interleaved_ms({n: (lambda r=r: r(x1)) for n, r in runs.items()}, 5)
    cols = f"  {'variant':20s} {'MACs':>6s} {'eager bs1':>24s} {'eager bs16':>24s}"
    print(cols + (f" {'tvm-llvm bs1':>22s}" if tvm else ""))
    ref = "fold_bn (O2)"
    for name, v in variants + ([("int8 (of fold_bn)", folded)] if "int8 (of fold_bn)" in tvm else []):
        macs = summary(v)["macs"]
        reduction = fold_macs / macs
        line = f"  {name:20s} {macs / summary(g)['macs']:6.1%}"
        for b in (1, 16):
            if name in eager[b]:
                sp = eager[b][ref] / eager[b][name]
                line += f" {eager[b][name]:8.2f} ({sp:4.2f}x, eff {sp / reduction:4.2f})"
            else:
                line += f" {'-':>24s}"
        if tvm:
            line += f" {tvm[name]:10.1f} ({tvm[ref] / tvm[name]:4.2f}x)" if name in tvm else f" {'-':>22s}"
        print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--finetune", type=int, default=8)
    ap.add_argument("--accuracy-only", action="store_true", help="part (a) only")
    ap.add_argument("--quick", action="store_true", help="fewer epochs, no TVM, torch speed only")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.quick:
        args.epochs, args.finetune = 2, 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("(a) accuracy on digits (8x8, 1,438 train / 359 validation images)")
    for path in ("examples/digits_cnn.cdl", "examples/digits_mobilenet.cdl"):
        accuracy_table(path, args.epochs, args.finetune)
    if args.accuracy_only:
        return
    print("\n(b) speed at 224x224 (random weights; speed does not depend on them)")
    for path in ("examples/resnet18.cdl", "examples/mobilenet_v2.cdl"):
        speed_table(path, args.quick)


if __name__ == "__main__":
    main()
