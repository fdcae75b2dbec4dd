"""Backends side by side: `convdsl bench` on ResNet-18, MobileNet-V2 and ViT-S/16.

    python benchmarks/backends.py [--tune 16] [--repeat 10] [--nets resnet18,mobilenet_v2,vit_s16]

Each network is timed in one `convdsl bench --json --profile` run over torch eager,
torch.compile, tvm-llvm untuned and tvm-llvm tuned (with --tune trials per kernel
that the tuning database lacks; --tune 0 leaves the tuned row out), batch 1.  The
figures, the tuning budget and time, the machine's load and the heaviest kernels of
each TVM module go to the "Backends" section of docs/benchmarks.md; the rest of that
file is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Backends"
NETS = {
    "resnet18": ("examples/resnet18.cdl", []),
    "mobilenet_v2": ("examples/mobilenet_v2.cdl", []),
    "vit_s16": ("examples/vit_b_16.cdl", ["--set", "hidden=384", "--set", "heads=6", "--set", "mlp_dim=1536"]),
}


def run_bench(name: str, backends: str, tune: int, repeat: int, db: str | None) -> list[dict]:
    path, sets = NETS[name]
    cmd = [sys.executable, "-m", "convdsl", "bench", str(ROOT / path), *sets, "--backends", backends, "--batch", "1",
           "--repeat", str(repeat), "--json", "--profile"]
    if tune:
        cmd += ["--tune", str(tune)]
    if db:
        cmd += ["--db", db]
    print("$", " ".join(cmd[2:]), flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def render(results: dict[str, list[dict]], tune: int, load: tuple[float, float], seconds: float) -> str:
    lines = [HEADING, "",
             "TVM details (pipeline, tuning, the H200 run of `benchmarks/gpu_check.py`) are in `docs/tvm.md`.", "",
             f"`python benchmarks/backends.py --tune {tune}` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, batch 1, {time.strftime('%Y-%m-%d')}; load average {load[0]:.1f} before, "
             f"{load[1]:.1f} after (a shared machine: compare rows of one table, measured round-robin in one run). "
             f"Speedup = torch eager median / median. Whole run {seconds / 60:.0f} min.", ""]
    for name, rows in results.items():
        lines += [f"### {name}", "", "| backend | median ms | p10-p90 ms | spread | speedup vs torch | build s | note |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            sp = r.get("speedup_vs_torch")
            lines.append(f"| {r['backend']} | {_ms(r.get('median_ms'))} | {_ms(r.get('p10_ms'))}-{_ms(r.get('p90_ms'))} "
                         f"| {r.get('spread_pct', '-')}% | {'-' if sp is None else f'{sp:.2f}x'} | {r['compile_s']:.1f} "
                         f"| {r.get('note', '')} |")
        for r in rows:
            prof = r.get("profile")
            if not prof:
                continue
            total = sum(p["ms"] for p in prof)
            lines += ["", f"{r['backend']}: heaviest kernels of one call ({total:.1f} ms over {len(prof)} kernels)", "",
                      "| kernel | calls | ms | % |", "|---|---:|---:|---:|"]
            lines += [f"| {p['kernel']} | {p['calls']} | {p['ms']:.2f} | {p['percent']:.1f} |" for p in prof[:8]]
        lines.append("")
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace the Backends section (a "## Backends..." heading), or append one; other sections stay."""
    old = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    start = old.find("\n" + HEADING)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(HEADING))
        new = old[:start + 1] + text + ("\n" + old[nxt + 1:] if nxt >= 0 else "")
    DOC.write_text(new)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--tune", type=int, default=16, help="MetaSchedule trials per kernel for tvm-llvm-tuned (0: skip)")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--db", default=None, help="tuning database root (default: the user cache)")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing the doc")
    a = p.parse_args()
    backends = "torch,torch-compile,tvm-llvm" + (",tvm-llvm-tuned" if a.tune else "")
    load0 = os.getloadavg()[0]
    t0 = time.time()
    results = {n: run_bench(n, backends, a.tune, a.repeat, a.db) for n in a.nets.split(",")}
    text = render(results, a.tune, (load0, os.getloadavg()[0]), time.time() - t0)
    if a.no_write:
        print(text)
    else:
        write_section(text)
        print(f"wrote the Backends section of {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
