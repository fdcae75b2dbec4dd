"""Front-end speed and eager parity, in one run.

    python benchmarks/frontend.py [--quick]

1. .cdl text -> ready nn.Module for resnet50, vs torch.export.export of
   torchvision's resnet50 (goal: convdsl <= 0.2 s and >= 10x faster).
2. The same for synthetic deep networks of 100 / 1,000 / 10,000 layers
   (goal: close to linear, 10,000 layers under 10 s).
3. Eager latency of the convdsl module vs torchvision's resnet50 with the same
   weights at batch 1 and 16 (goal: ratio within 0.97-1.03).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def text_to_module(text: str, file: str):
    from convdsl.backends.torch import build_module
    from convdsl.lang.elaborate import elaborate

    return build_module(elaborate(text, file))


def stages(text: str, file: str) -> dict[str, float]:
    from convdsl.backends.torch import build_module, generate
    from convdsl.lang.elaborate import elaborate
    from convdsl.lang.parser import parse

    t0 = time.perf_counter()
    parse(text, file)
    t1 = time.perf_counter()
    g = elaborate(text, file)
    t2 = time.perf_counter()
    gen = generate(g)
    t3 = time.perf_counter()
    build_module(g, gen)
    t4 = time.perf_counter()
    return {"parse": t1 - t0, "parse+elaborate": t2 - t1, "codegen": t3 - t2, "build": t4 - t3}


def deep_program(n: int) -> str:
    return (
        "network deep(x: f32[N, 16, 8, 8]) {\n"
        f"    for i in range({n // 2}) {{\n"
        "        x = x | conv2d(16, 3, pad=1) | relu\n"
        "    }\n"
        "    return x\n"
        "}\n"
    )


def latency(model, x, repeat: int) -> list[float]:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        return timed(lambda: model(x), repeat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats, skip the 10,000-layer net")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rep = 3 if args.quick else 7
    from torchvision.models import resnet50

    text = (ROOT / "examples/resnet50.cdl").read_text()
    file = str(ROOT / "examples/resnet50.cdl")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")

    # 1. text -> module
    first = timed(lambda: text_to_module(text, file), 1)[0]
    ours = statistics.median(timed(lambda: text_to_module(text, file), rep))
    st = stages(text, file)

    def export():
        m = resnet50().eval()
        torch.export.export(m, (torch.randn(1, 3, 224, 224),))

    def tv_build():
        resnet50().eval()

    tv_ctor = statistics.median(timed(tv_build, rep))
    exp = statistics.median(timed(export, max(1, rep // 2)))
    print("1. resnet50: .cdl text -> ready nn.Module")
    print(f"   convdsl          {ours * 1e3:8.1f} ms  (first call in process {first * 1e3:.1f} ms; "
          + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in st.items()) + " ms)")
    print(f"   torchvision ctor {tv_ctor * 1e3:8.1f} ms  (resnet50(), for reference)")
    print(f"   torch.export     {exp * 1e3:8.1f} ms  (resnet50() + torch.export.export)")
    print(f"   ratio export/convdsl = {exp / ours:.1f}x   goal: convdsl <= 200 ms and >= 10x\n")

    # 2. deep networks
    print("2. synthetic deep networks (conv3x3 16ch + relu per pair of layers)")
    print(f"   {'layers':>7} {'time (s)':>9} {'us/layer':>9}")
    sizes = [100, 1000] if args.quick else [100, 1000, 10000]
    for n in sizes:
        prog = deep_program(n)
        t = statistics.median(timed(lambda: text_to_module(prog, f"<deep{n}>"), 1 if n >= 10000 else 3))
        print(f"   {n:>7,} {t:>9.3f} {t / n * 1e6:>9.1f}")
    print("   goal: close to linear, 10,000 layers < 10 s\n")

    # 3. eager latency parity with the same weights
    from convdsl.backends.torch import build_module
    from convdsl.lang.elaborate import elaborate

    torch.manual_seed(0)
    tv = resnet50().eval()
    ours_m = build_module(elaborate(text, file))
    ours_m.load_state_dict(tv.state_dict())
    print("3. eager latency, resnet50, same weights (median of interleaved runs)")
    print(f"   {'batch':>5} {'torchvision ms':>15} {'convdsl ms':>11} {'ratio':>7}")
    for batch in (1, 16):
        x = torch.randn(batch, 3, 224, 224)
        n = rep * 3 if batch == 1 else rep
        a, b = [], []
        for _ in range(3):  # interleave to cancel drift
            a += latency(tv, x, n)
            b += latency(ours_m, x, n)
        ta, tb = statistics.median(a), statistics.median(b)
        print(f"   {batch:>5} {ta * 1e3:>15.2f} {tb * 1e3:>11.2f} {tb / ta:>7.3f}")
    print("   goal: ratio convdsl/torchvision within 0.97-1.03")


if __name__ == "__main__":
    sys.exit(main())
