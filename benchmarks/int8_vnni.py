"""int8 on x86 (AVX-512 VNNI) against float32, in one run.

    python benchmarks/int8_vnni.py [--model examples/resnet18.cdl] [--size 224] [--repeat 10]

The network is folded (O2) and quantized by convdsl's quantizer (minmax calibration on
random batches: the speed does not depend on the weights' values); then, at batch 1:

- latency, timed round-robin: torch eager float32, tvm-llvm float32 (the build as it is,
  with whatever schedules build.py applies), the torch simulation of the int8 network,
  and tvm-llvm int8 (the VNNI kernels, scheduled by ``schedules/int8.py`` through build.py), and on a
  CPU with AMX-INT8 tvm-llvm int8 on AMX tiles (``--precision int8``: ``schedules/amx.py``);
- agreement of tvm-llvm int8 with the torch simulation: the final output, and every
  int8 tensor of the network in quantization steps (a build with every node as output);
- GOP/s of the int8 kernel alone for the distinct convolutions of the network.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import tvm

from convdsl.api import load_graph
from convdsl.backends.torch import build_module
from convdsl.backends.tvm.bench import _torch_entry, _tvm_entry
from convdsl.backends.tvm.schedules import int8
from convdsl.backends.tvm.targets import AMX_INT8_FLAGS, cpu_flags
from convdsl.backends.tvm.tir_pipeline import pipeline
from convdsl.passes import run_passes
from convdsl.passes.quantize import quantize


def timed(entries: list, repeat: int, min_ms: float = 20.0) -> None:
    for _, e in entries:
        for _ in range(2):
            e.call()
    reps = {}
    for name, e in entries:
        t0 = time.perf_counter()
        e.call()
        reps[name] = max(1, int(min_ms / max((time.perf_counter() - t0) * 1e3, 1e-3)))
    for _ in range(repeat):
        for name, e in entries:
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                e.call()
            e.samples.append((time.perf_counter() - t0) * 1e3 / reps[name])


def agreement(q, x: np.ndarray) -> dict:
    """tvm-llvm int8 against the torch simulation, every node's output."""
    from convdsl.backends.torch import build_module
    from convdsl.backends.tvm import backend
    from convdsl.ir.graph import Value

    p = q.copy()
    p.outputs = [Value(n.id) for n in q.nodes() if n.op != "input"]
    p.output_names = [v.node for v in p.outputs]
    with torch.no_grad():
        want = [t.numpy() for t in build_module(p)(torch.from_numpy(x))]
    got = backend("tvm-llvm", progress=False, use_db=False).build_module(p)(x)
    steps, equal, total, float_rel = 0, 0, 0, 0.0
    for y, ref in zip(got, want):
        y = np.asarray(y)
        if y.dtype.kind in "iu":
            steps = max(steps, int(np.abs(y.astype(np.int64) - ref.astype(np.int64)).max()))
            equal += int((y == ref).sum())
            total += y.size
        else:
            float_rel = max(float_rel, float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30)))
    return {"int8_tensors_max_steps": steps, "int8_elements_equal": f"{equal}/{total}", "float_max_rel": float_rel}


def kernel_gops(q, size_of) -> list[tuple[str, float, float]]:
    """(shape, ms, GOP/s) of the scheduled int8 kernel alone for each distinct qconv2d."""
    from tvm import te

    import convdsl.backends.tvm.lowering  # noqa: F401
    from convdsl.backends.tvm.lower_quant import vnni_conv2d
    from convdsl.ir.ops.conv import conv_padding

    target = tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server"})
    dev = tvm.cpu()
    seen, rows = set(), []
    for node in q.nodes():
        if node.op != "qconv2d":
            continue
        n, c, h, w = size_of(q.in_types(node.id)[0])
        a = node.attrs
        k, s = (v if isinstance(v, int) else v[0] for v in (a["k"], a["stride"]))
        key = (c, h, w, a["out"], k, s)
        if key in seen:
            continue
        seen.add(key)
        (pt, pb), (pl, pr) = conv_padding(a, [h, w], 2)
        xs = te.placeholder((1, c, h, w), "uint8")
        ws = te.placeholder((-(-a["out"] // 16), -(-c // 4), k, k, 16, 4), "int8")
        bs, ms = te.placeholder((a["out"],), "int32"), te.placeholder((a["out"],), "float32")
        y = vnni_conv2d(xs, ws, bs, ms, out_channels=a["out"], pads=(pt, pb, pl, pr), stride=(s, s), dilation=(1, 1),
                        in_zp=128, shift=False, out_dtype="uint8", out_zp=0, lo=0, hi=255, relu=True)
        sch = tvm.s_tir.Schedule(te.create_prim_func([xs, ws, bs, ms, y]))
        assert int8.try_schedule(sch, target)
        lib = tvm.compile(sch.mod, target=target, tir_pipeline=pipeline(target)).jit()  # as a build compiles it
        rng = np.random.default_rng(0)
        args = [tvm.runtime.tensor(rng.integers(0, 100, [int(d) for d in t.shape]).astype(str(t.dtype)), dev)
                for t in (xs, ws, bs, ms, y)]
        sec = lib.time_evaluator("main", dev, number=10, repeat=5)(*args).median
        _, _, oh, ow = (int(d) for d in y.shape)
        macs = oh * ow * a["out"] * c * k * k
        rows.append((f"{c}x{h}x{w} -> {a['out']}, k{k} s{s}", sec * 1e3, 2 * macs / sec / 1e9))
    return rows


def load_at_size(path: str, size: int):
    """The model with its 224x224 input changed to size x size (imports resolved from its folder)."""
    from pathlib import Path

    file = Path(path).resolve()
    src = file.read_text().replace("224, 224", f"{size}, {size}")
    return load_graph(src.replace('import "', f'import "{file.parent}/'))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="examples/resnet18.cdl")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--no-fp32-tvm", action="store_true", help="skip the (slow when untuned) float32 TVM build")
    args = ap.parse_args()

    g = run_passes(load_at_size(args.model, args.size), "O2")
    rng = np.random.default_rng(0)
    shape = (1, 3, args.size, args.size)
    calib = [rng.standard_normal((4, *shape[1:])).astype(np.float32) for _ in range(2)]
    q = quantize(g, calib, build=build_module)
    x = rng.standard_normal(shape).astype(np.float32)

    entries = [("torch eager f32", _torch_entry(g, [x], "torch"))]
    if not args.no_fp32_tvm:
        entries.append(("tvm-llvm f32", _tvm_entry(g, [x], "tvm-llvm", 0, None, False)))
    entries += [("torch int8 simulation", _torch_entry(q, [x], "torch")),
                ("tvm-llvm int8 (VNNI)", _tvm_entry(q, [x], "tvm-llvm", 0, None, False, "int8", amx=False))]
    if AMX_INT8_FLAGS <= cpu_flags():
        entries.append(("tvm-llvm int8 (AMX)", _tvm_entry(q, [x], "tvm-llvm", 0, None, False, "int8", amx=True)))
    timed(entries, args.repeat)
    med = {name: float(np.median(e.samples)) for name, e in entries}
    low = {name: float(np.percentile(e.samples, 10)) for name, e in entries}
    print(f"\n{g.name} {shape}, batch 1, {args.repeat} round-robin samples (median, 10th percentile):")
    for name, e in entries:
        print(f"  {name:24s} {med[name]:9.2f} ms {low[name]:9.2f} ms   compile {e.compile_s:5.1f} s   "
              f"int8 speedup {med[name] / med['tvm-llvm int8 (VNNI)']:6.2f}x (p10: "
              f"{low[name] / low['tvm-llvm int8 (VNNI)']:5.2f}x)")

    with torch.no_grad():
        want = dict(entries)["torch int8 simulation"].call().numpy()
    for name, e in entries:
        if name.startswith("tvm-llvm int8"):
            out = e.call()
            got = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
            print(f"  final output: max |{name} - torch simulation| = {np.abs(got - want).max():.3g} "
                  f"(output scale {np.abs(want).max():.3g})")
    print("  every node:", agreement(q, x))

    print("\nint8 kernel alone (pack + VNNI conv + requantize), per distinct conv:")
    for shape_s, ms, gops in kernel_gops(q, lambda t: tuple(int(d) if isinstance(d, int) else 1 for d in t.shape)):
        print(f"  {shape_s:28s} {ms:7.3f} ms {gops:7.1f} GOP/s")


if __name__ == "__main__":
    main()
