"""Measure what a network really allocates, for tests/adversarial/test_memory.py.

Two modes, each meant to run in a fresh process (``python -m tests.adversarial.memprobe ...``):

- ``ops``: reads a JSON list of CDL programs on stdin; for each, builds the torch module and
  its inputs, resets the peak RSS (``/proc/self/clear_refs``), runs one forward pass, and
  prints a JSON line: the peak RSS above what was resident before the pass, and what the
  memory model (convdsl/lang/memory.py) says the pass may allocate: every op output plus the
  largest op workspace.
- ``cli OUT -- ARGS``: runs ``convdsl ARGS`` in this process and writes its exit code, peak
  virtual size (VmPeak) and peak RSS (VmHWM) to OUT when it exits.

The measurements pin glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_``, set by the caller) so
that large buffers are returned to the system when freed: RSS then follows what the program
holds, not what the allocator keeps in reserve after a free.
"""
from __future__ import annotations

import atexit
import gc
import json
import re
import sys


def status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1)) * 1024


def measure_ops() -> None:
    import torch

    from convdsl.backends.torch.codegen import build_module
    from convdsl.ir.ops import OPS
    from convdsl.ir.types import TORCH_DTYPE
    from convdsl.lang.elaborate import Options, elaborate
    from convdsl.lang.memory import MemoryBudget

    torch.set_num_threads(1)
    for src in json.loads(sys.stdin.read()):
        g = elaborate(src, "probe.cdl", options=Options(max_bytes=2**62))
        model = build_module(g)
        xs = []
        for t in g.input_types():
            shape = [d if isinstance(d, int) else 1 for d in t.shape]
            dtype = getattr(torch, TORCH_DTYPE[t.dtype])
            xs.append(torch.randn(shape).to(dtype) if dtype.is_floating_point else torch.randint(0, 3, shape, dtype=dtype))
        budget = MemoryBudget(2**62, g.symbols)
        outputs = workspace = 0
        for node in g.nodes():
            if node.op != "input":
                ins = [budget.bound(t) for t in g.in_types(node.id)]
                outs = [budget.bound(t) for t in node.types]
                outputs += sum(budget.nbytes(t) for t in node.types)
                workspace = max(workspace, OPS[node.op].workspace(node.attrs, ins, outs))
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = status("VmRSS")
        with torch.inference_mode():
            y = model(*xs)
        peak = status("VmHWM") - before
        print(json.dumps({"peak": peak, "outputs": outputs, "workspace": workspace}), flush=True)
        del y, model, xs, g
        gc.collect()


def run_cli(out: str, args: list[str]) -> None:
    def report() -> None:
        code = getattr(sys, "_probe_exit", None)
        with open(out, "w") as f:
            json.dump({"rc": code, "vm_peak": status("VmPeak"), "rss_peak": status("VmHWM")}, f)

    atexit.register(report)
    from convdsl.cli import main

    try:
        main(args, prog_name="convdsl")
    except SystemExit as e:
        sys._probe_exit = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise


if __name__ == "__main__":
    if sys.argv[1] == "ops":
        measure_ops()
    else:
        assert sys.argv[1] == "cli" and sys.argv[3] == "--"
        run_cli(sys.argv[2], sys.argv[4:])
