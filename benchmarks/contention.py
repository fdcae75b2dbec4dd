"""TVM's CPU thread pool when another process wants a core: latency of one artifact under settings.

    python benchmarks/contention.py [--net resnet50] [--noise 1] [--rounds 6] [--precision f32|bf16|int8]

Compiles the network once (tvm-llvm), then runs it in one process per setting of TVM's thread pool
(TVM_BIND_THREADS: workers pinned to cores or not; TVM_THREAD_POOL_SPIN_COUNT: how long an idle
worker spins before it sleeps; TVM_NUM_THREADS), each process timing a block of calls in turn,
while ``--noise`` busy-looping processes (each wanting a whole core) compete for the CPU.  Prints
the median per setting, with and without the noise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import NETS, calibration_inputs, convdsl_int8, load_graph, machine  # noqa: E402

# TVM's own defaults are pinned workers spinning 300,000 times; convdsl's (targets.THREAD_POOL_DEFAULTS)
# does not pin and spins 20,000 times.  Every row sets both, so the convdsl default does not leak into the others.
SETTINGS = {
    "TVM default (bound, spin 300000)": {"TVM_BIND_THREADS": "1", "TVM_THREAD_POOL_SPIN_COUNT": "300000"},
    "unbound, spin 300000": {"TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": "300000"},
    "bound, no spin": {"TVM_BIND_THREADS": "1", "TVM_THREAD_POOL_SPIN_COUNT": "0"},
    "unbound, no spin": {"TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": "0"},
    "unbound, spin 2000": {"TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": "2000"},
    "convdsl default (unbound, spin 20000)": {"TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": "20000"},
    "1 thread": {"TVM_NUM_THREADS": "1", "TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": "0"},
}
CHILD = r"""
import json, sys, time
import numpy as np
import convdsl.backends.tvm as ctvm
run = ctvm.load(sys.argv[1]); x = np.load(sys.argv[2])
for _ in range(3): run([x])
print("READY", flush=True)
for line in sys.stdin:
    if line.strip() != "RUN": break
    ms = []
    t_end = time.perf_counter() + float(sys.argv[3])
    while time.perf_counter() < t_end or len(ms) < 3:
        t = time.perf_counter(); run([x]); ms.append((time.perf_counter() - t) * 1e3)
    print(json.dumps(ms), flush=True)
"""
NOISE = "import time\nwhile True:\n    pass\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="resnet50", choices=list(NETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--noise", type=int, default=1, help="busy-looping processes during the loaded half")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--block-s", type=float, default=1.0)
    ap.add_argument("--precision", default="f32", help="f32, bf16 or int8 (the network quantized as peers.py does)")
    args = ap.parse_args()

    import convdsl.backends.tvm as ctvm
    from convdsl.artifact import write_artifact

    print(machine(), f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        g = load_graph(args.net)
        if args.precision == "int8":  # quantized as peers.py does (minmax on N(0, 1) inputs)
            g = convdsl_int8(g, calibration_inputs(g, 16))
        write_artifact(g, Path(tmp) / "art", ctvm.backend("tvm-llvm", precision=args.precision, progress=False))
        np.save(Path(tmp) / "x.npy", calibration_inputs(g, 1)[0])
        results: dict[str, dict[str, list[float]]] = {}
        for loaded in (False, True):
            noise = [subprocess.Popen([sys.executable, "-c", NOISE]) for _ in range(args.noise if loaded else 0)]
            procs = {}
            try:
                for name, env in SETTINGS.items():
                    e = {**os.environ, "TVM_NUM_THREADS": str(args.threads), **env}
                    p = subprocess.Popen([sys.executable, "-c", CHILD, str(Path(tmp) / "art"), str(Path(tmp) / "x.npy"),
                                          str(args.block_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         env=e)
                    assert p.stdout.readline().strip() == "READY"
                    procs[name] = p
                for r in range(args.rounds):
                    names = list(procs)
                    for name in names[r % len(names):] + names[:r % len(names)]:
                        p = procs[name]
                        p.stdin.write("RUN\n")
                        p.stdin.flush()
                        results.setdefault(name, {}).setdefault("loaded" if loaded else "quiet", []).extend(
                            json.loads(p.stdout.readline()))
            finally:
                for p in procs.values():
                    p.stdin.close()
                    p.wait()
                for p in noise:
                    p.kill()
                    p.wait()
    print(f"\n{args.net} ({args.precision}), tvm-llvm, {args.threads} threads; median ms (p90) without and with "
          f"{args.noise} busy process(es); {args.rounds} alternating rounds")
    print(f"{'setting':36s} {'quiet':>16s} {'loaded':>16s} {'slowdown':>9s}")
    for name, r in results.items():
        q, lo = np.median(r["quiet"]), np.median(r["loaded"])
        print(f"{name:36s} {q:8.2f} ({np.percentile(r['quiet'], 90):6.2f}) {lo:8.2f} ({np.percentile(r['loaded'], 90):6.2f}) "
              f"{lo / q:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
