"""The int8 transformer ops on tvm-llvm against the float ops they replace, ViT-S sizes, in one run.

    TVM_NUM_THREADS=2 python benchmarks/qtransformer.py [--rounds 7] [--profile]

Pairs (each: float first, then the int8 op; timed in alternating rounds of 20 calls, the median of
the rounds' medians; the inputs already on the device, as ``convdsl bench`` times):

- attention core: packed_attention (f32 [1, 197, 1152], 6 heads) vs qattention (u8 [1, 197, 1152] -> u8)
- layer norm:     layernorm | quantize (f32 [1, 197, 384] -> u8) vs qlayernorm
- gelu:           gelu | quantize (f32 [1, 197, 1536] -> u8) vs qgelu

``--profile`` adds the per-kernel times (``runtime.profile``) of each build and of mhsa(heads=6) on
f32 [1, 197, 384], whose core (Q K^T, softmax, P V: its projections write the heads' layouts, no
copies) is what qattention replaces in the int8 ViT-S.

``--vit`` adds the whole ViT-S/16 (examples/vit_b_16.cdl at hidden 384, 6 heads, MLP 1536; seeded
weights, O2, quantized by ``quantize`` on 2 random calibration batches): whether tvm-llvm's output
equals the torch simulation's, its latency (median of 15 calls) and its kernels' time grouped.
"""
from __future__ import annotations

import argparse
import os
import subprocess

import numpy as np

from convdsl.backends.tvm import backend
from convdsl.backends.tvm.runtime import profile
from convdsl.ir.verify import verify
from convdsl.lang.elaborate import elaborate

PAIRS = {
    "attention core": (("f32", [1, 197, 1152], "packed_attention(heads=6)"),
                       ("u8", [1, 197, 1152], "qattention(heads=6, in_scale=0.01, in_zp=128, out_dtype=u8, "
                                              "out_scale=0.02, out_zp=128)")),
    "layer norm": (("f32", [1, 197, 384], "layernorm | quantize(0.03, 128)"),
                   ("f32", [1, 197, 384], "qlayernorm(x_scale=0.001, out_scale=0.03, out_zp=128)")),
    "gelu": (("f32", [1, 197, 1536], "gelu | quantize(0.02, 10)"),
             ("f32", [1, 197, 1536], "qgelu(out_scale=0.02, out_zp=10)")),
}
MHSA = ("f32", [1, 197, 384], "mhsa(heads=6)")


def _runner(spec, seed: int = 0):
    dtype, shape, body = spec
    text = f"network t(x: {dtype}[{', '.join(map(str, shape))}]) {{\n    return x | {body}\n}}\n"
    g = verify(elaborate(text, "<bench>"))
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, shape).astype(np.uint8) if dtype == "u8" else rng.standard_normal(shape).astype(np.float32)
    r = backend("tvm-llvm", use_db=False, progress=False).runner(g)
    return r, r.prepare([x])


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _vit() -> None:
    import collections

    import torch

    from convdsl.api import load_graph
    from convdsl.backends.torch import build_module
    from convdsl.passes import run_passes
    from convdsl.passes.quantize import quantize

    g = run_passes(load_graph("examples/vit_b_16.cdl", overrides={"hidden": 384, "heads": 6, "mlp_dim": 1536},
                              bind={"N": 1}), "O2")
    rng = np.random.default_rng(0)
    q = quantize(g, [rng.standard_normal((2, 3, 224, 224)).astype(np.float32) for _ in range(2)], build=build_module)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = build_module(q)(torch.from_numpy(x)).numpy()
    r = backend("tvm-llvm", precision="int8", use_db=False, progress=False).runner(q)  # the int8 kernels (AMX / VNNI)
    got = np.asarray(r([x])[0])
    print(f"ViT-S int8: tvm-llvm == torch simulation: {np.array_equal(got, want)} "
          f"(max |difference| {float(np.abs(got - want).max()):.3g})")
    args = r.prepare([x])
    print(f"ViT-S int8 tvm-llvm: {float(np.median(r.time_ms(args, repeat=15))):.2f} ms (median of 15); {_load()}")
    groups: dict[str, float] = collections.defaultdict(float)
    for row in profile(r, args, repeat=5):
        k = row["kernel"]
        key = ("qattention (its kernels)" if k.startswith(("qattention", "matmul", "fused_matmul")) else
               "qlinear with a qgelu epilogue" if "qlinear" in k and "qgelu" in k else
               "qlinear (with an add epilogue)" if "qlinear" in k else "qlayernorm" if "qlayernorm" in k else
               "VM builtins" if k.startswith("vm.") else "other")
        groups[key] += row["ms"]
    for key, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"    {key:40s} {ms:7.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--vit", action="store_true")
    args = ap.parse_args()
    print(f"uptime: {_load()}; TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}")
    for name, (fa, fb) in PAIRS.items():
        (ra, aa), (rb, ab) = _runner(fa), _runner(fb)
        ta, tb = [], []
        for _ in range(args.rounds):
            ta.append(np.median(ra.time_ms(aa, repeat=20, min_ms=2.0)))
            tb.append(np.median(rb.time_ms(ab, repeat=20, min_ms=2.0)))
        a, b = float(np.median(ta)), float(np.median(tb))
        print(f"{name:15s} float {a * 1e3:7.0f} us   int8 op {b * 1e3:7.0f} us   int8 / float {b / a:.2f}", flush=True)
        if args.profile:
            for r, x, label in ((ra, aa, fa[2]), (rb, ab, fb[2])):
                print(f"  {label}")
                for row in profile(r, x, repeat=7):
                    if not row["kernel"].startswith("vm.builtin"):
                        print(f"    {row['kernel']:60s} {row['ms'] * 1e3:7.1f} us")
    if args.vit:
        _vit()
    if args.profile:
        r, x = _runner(MHSA)
        print(f"  {MHSA[2]} on f32 {MHSA[1]}")
        for row in profile(r, x, repeat=7):
            if not row["kernel"].startswith("vm.builtin"):
                print(f"    {row['kernel']:60s} {row['ms'] * 1e3:7.1f} us")
    print(f"uptime: {_load()}")


if __name__ == "__main__":
    main()
