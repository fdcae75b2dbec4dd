"""Compression in one run: accuracy where it is meaningful, speed where it is.

    python benchmarks/compress.py [--epochs 8] [--finetune 4] [--quick]

(a) digits-sized ResNet and MobileNet-style nets trained with convdsl's trainer:
    validation accuracy, params and MACs for baseline, fold_bn, pruned at
    30/50/70% MACs (before and after fine-tuning) and int8.
(b) the zoo's resnet18 and mobilenet_v2 at 224x224: measured latency on torch
    eager at batch 1 and 16 for baseline, fold_bn and pruned 30/50/70% MACs,
    plus tvm-llvm (untuned) when the TVM backend is installed.
"""
from __future__ import annotations

import argparse
import statistics
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
    train(g, data, epochs, seed=0, progress=False)
    base = size(g)
    print(f"\n{path}  (trained {epochs} epochs in {time.perf_counter() - t0:.0f} s)")
    print(f"  {'variant':28s} {'val acc':>7s} {'params':>10s} {'MACs':>13s}")
    print(row("baseline", g, evaluate(g, data)["accuracy"], base))
    folded = run_passes(g, "fold_bn")
    print(row("fold_bn", folded, evaluate(folded, data)["accuracy"], base))
    for r in RATIOS:
        p = prune(g, ratio=r, criterion="l1", target="macs", round_to=1)
        print(row(f"pruned {r:.0%} MACs (l1)", p, evaluate(p, data)["accuracy"], base))
        train(p, data, finetune, seed=0, progress=False, lr=1e-3)
        print(row(f"  + fine-tuned {finetune} epochs", p, evaluate(p, data)["accuracy"], base))
    try:
        from convdsl.passes.quantize import calibration_batches, quantize
    except ImportError:
        print("  int8: quantization pass not available")
        return
    q = quantize(folded, calibration_batches("digits"), method="percentile")
    print(row("int8 (percentile calib.)", q, evaluate(q, data)["accuracy"], base))


def latency_ms(model, x, repeat: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            model(x)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def tvm_runner(g):
    try:
        from convdsl.api import backend_module

        return backend_module("tvm-llvm").runner(g)
    except Exception:
        return None


def speed_table(path: str, quick: bool) -> None:
    g = load_graph(path)
    print(f"\n{path}: latency (median, ms); speedup relative to baseline")
    variants = [("baseline", g), ("fold_bn", run_passes(g, "O2"))]
    for r in RATIOS:
        variants.append((f"pruned {r:.0%} MACs", run_passes(prune(g, ratio=r, criterion="l1", round_to=8), "O2")))
    base_macs = summary(g)["macs"]
    header = f"  {'variant':22s} {'MACs':>6s}" + "".join(f" {'eager bs' + str(b):>16s}" for b in (1, 16))
    use_tvm = not quick and tvm_runner(load_graph("examples/digits_cnn.cdl")) is not None
    if use_tvm:
        header += f" {'tvm-llvm bs1':>16s}"
    print(header)
    ref: dict[str, float] = {}
    for name, v in variants:
        m = build_module(v)
        line = f"  {name:22s} {summary(v)['macs'] / base_macs:6.1%}"
        for b in (1, 16):
            x = torch.randn(b, 3, 224, 224)
            t = latency_ms(m, x, 5 if b == 16 else 15)
            key = f"eager{b}"
            ref.setdefault(key, t)
            line += f" {t:8.2f} ({ref[key] / t:4.2f}x)"
        if use_tvm:
            run = tvm_runner(v)
            x = [np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)]
            run(x)
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                run(x)
                ts.append(time.perf_counter() - t0)
            t = statistics.median(ts) * 1e3
            ref.setdefault("tvm", t)
            line += f" {t:8.1f} ({ref['tvm'] / t:4.2f}x)"
        print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--finetune", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="fewer epochs, no TVM, torch speed only")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.quick:
        args.epochs, args.finetune = 2, 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("(a) accuracy on digits (8x8, 1,438 train / 359 validation images)")
    for path in ("examples/digits_cnn.cdl", "examples/digits_mobilenet.cdl"):
        accuracy_table(path, args.epochs, args.finetune)
    print("\n(b) speed at 224x224 (random weights; speed does not depend on them)")
    for path in ("examples/resnet18.cdl", "examples/mobilenet_v2.cdl"):
        speed_table(path, args.quick)


if __name__ == "__main__":
    main()
