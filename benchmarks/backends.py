"""Backends side by side: `convdsl bench` on ResNet-18, ResNet-50, MobileNet-V2 and ViT-S/16.

    python benchmarks/backends.py [--tune 0] [--repeat 10] [--threads 2] [--nets resnet18,...]

Each network is timed in one `convdsl bench --json --profile` run over torch eager,
torch.compile, tvm-llvm untuned (convdsl's templates with the analytic model's knobs) and
tvm-llvm tuned (the template database shipped with convdsl, plus --tune MetaSchedule trials
per kernel), batch 1, torch and TVM on the same number of threads.  Unless --db is given the
run uses a fresh, empty user database, so "tuned" means the shipped database (and --tune) only.  The
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Backends"
NETS = {
    "resnet18": ("examples/resnet18.cdl", []),
    "resnet50": ("examples/resnet50.cdl", []),
    "mobilenet_v2": ("examples/mobilenet_v2.cdl", []),
    "vit_s16": ("examples/vit_b_16.cdl", ["--set", "hidden=384", "--set", "heads=6", "--set", "mlp_dim=1536"]),
}


def run_bench(name: str, backends: str, tune: int, repeat: int, db: str, threads: int) -> list[dict]:
    path, sets = NETS[name]
    cmd = [sys.executable, "-m", "convdsl", "bench", str(ROOT / path), *sets, "--backends", backends, "--batch", "1",
           "--repeat", str(repeat), "--json", "--profile", "--threads", str(threads)]
    if tune:
        cmd += ["--tune", str(tune)]
    cmd += ["--db", db]
    print("$", " ".join(cmd[2:]), flush=True)
    env = dict(os.environ, CONVDSL_TUNING_DB=db)  # the template knobs' user database lives there too
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    return json.loads(out)


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def render(results: dict[str, list[dict]], tune: int, load: tuple[float, float], seconds: float, threads: int) -> str:
    lines = [HEADING, "",
             "TVM details (pipeline, tuning, the H200 run of `benchmarks/gpu_check.py`) are in `docs/tvm.md`.", "",
             f"`python benchmarks/backends.py --tune {tune} --threads {threads}` on "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, batch 1, torch and TVM on "
             f"{threads} thread(s), {time.strftime('%Y-%m-%d')}; load average {load[0]:.1f} before, "
             f"{load[1]:.1f} after (a shared machine: compare rows of one table, measured round-robin in one run). "
             f"Speedup = torch eager median / median, against torch eager timed in its own process (the "
             f"conservative baseline: in one process with other backends it ran up to 1.5x slower) and "
             f"against the torch row of the same run. tvm-llvm: convdsl's templates, knobs from the analytic "
             f"model (no tuning of any kind); tvm-llvm-tuned: the shipped template database"
             f"{f' and {tune} MetaSchedule trials per kernel' if tune else ' (no tuning run)'}. "
             f"Whole run {seconds / 60:.0f} min.", ""]
    for name, rows in results.items():
        lines += [f"### {name}", "", "| backend | median ms | p10-p90 ms | spread | speedup vs torch (own process) "
                  "| vs torch (same process) | build s | note |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            sp, sa = r.get("speedup_vs_torch"), r.get("speedup_vs_torch_alone")
            same = "-" if sp is None or r["backend"].startswith("torch (") else f"{sp:.2f}x"
            lines.append(f"| {r['backend']} | {_ms(r.get('median_ms'))} | {_ms(r.get('p10_ms'))}-{_ms(r.get('p90_ms'))} "
                         f"| {r.get('spread_pct', '-')}% | {'-' if sa is None else f'{sa:.2f}x'} | {same} "
                         f"| {r['compile_s']:.1f} | {r.get('note', '')} |")
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
    p.add_argument("--tune", type=int, default=0, help="MetaSchedule trials per kernel for tvm-llvm-tuned (0: none)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for torch and TVM alike")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--db", default=None, help="tuning database root (default: a fresh temporary one)")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing the doc")
    a = p.parse_args()
    backends = "torch,torch-compile,tvm-llvm,tvm-llvm-tuned"
    load0 = os.getloadavg()[0]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="convdsl-bench-db-") as tmp:
        results = {}
        for n in a.nets.split(","):
            rows = run_bench(n, backends, a.tune, a.repeat, a.db or tmp, a.threads)
            # torch eager's time depends on what else ran in its process (22-35 ms for
            # MobileNet-V2 by position alone): it is also timed in a process of its own
            alone = run_bench(n, "torch", 0, a.repeat, a.db or tmp, a.threads)[0]
            alone.update(backend="torch (own process)", profile=None)
            base = alone.get("median_ms")
            for r in rows + [alone]:
                r["speedup_vs_torch_alone"] = round(base / r["median_ms"], 3) if base and r.get("median_ms") else None
            results[n] = [alone] + rows
    text = render(results, a.tune, (load0, os.getloadavg()[0]), time.time() - t0, a.threads)
    if a.no_write:
        print(text)
    else:
        write_section(text)
        print(f"wrote the Backends section of {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
