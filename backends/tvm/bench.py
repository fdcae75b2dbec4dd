"""Side-by-side latency of one network on several backends, measured in one run.

Backends: ``torch`` (eager), ``torch-compile`` (``torch.compile``, inductor),
``torch-cuda``, ``tvm-llvm`` (untuned: no tuning database), ``tvm-llvm-tuned``
(the database, plus ``tune`` MetaSchedule trials per task for what it lacks),
and the same two for ``tvm-cuda``.  Each backend gets warm-up calls, then the
backends are timed in turns of consecutive samples (up to 4 blocks each, two untimed
calls before every block), so that drift of the machine hits all of them alike while one
backend's threads and caches do not land on the next one's samples.  Reported: median, 10th/90th percentile,
spread = (p90 - p10) / median, and speedup = torch eager median / median.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from convdsl.errors import UsageError
from convdsl.ir.graph import Graph

BENCH_BACKENDS = ("torch", "torch-compile", "torch-cuda", "tvm-llvm", "tvm-llvm-tuned", "tvm-cuda", "tvm-cuda-tuned")


@dataclass
class Entry:
    backend: str
    call: Callable[[], Any] | None = None  # one synchronized call of the network
    compile_s: float = 0.0
    note: str = ""
    runner: Any = None  # TVM Runner (for the profile)
    args: Any = None
    samples: list[float] = field(default_factory=list)
    tuning: dict | None = None
    cpu_ms: float = 0.0  # CPU time of this process (every thread) over the timed samples
    wall_ms: float = 0.0  # and their wall-clock time: cpu_ms / wall_ms = cores kept busy


def _sync_cuda() -> None:
    import torch

    torch.cuda.synchronize()


def _torch_entry(graph: Graph, arrays: list[np.ndarray], name: str) -> Entry:
    import torch

    from convdsl.backends.torch import build_module

    device = "cuda" if name == "torch-cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return Entry(name, note="skipped: no CUDA GPU visible")
    t0 = time.perf_counter()
    model = build_module(graph).eval().to(device)
    xs = [torch.from_numpy(a).to(device) for a in arrays]
    fn = model
    if name == "torch-compile":
        fn = torch.compile(model)
    with torch.inference_mode():
        fn(*xs)  # torch.compile compiles here
    compile_s = time.perf_counter() - t0

    def call():
        with torch.inference_mode():
            out = fn(*xs)
        if device == "cuda":
            _sync_cuda()
        return out

    return Entry(name, call, compile_s)


def _tvm_entry(graph: Graph, arrays: list[np.ndarray], name: str, tune: int, db: str | None, progress: bool,
               precision: str = "f32", amx: bool = True) -> Entry:
    from convdsl.backends.tvm.backend import TVMBackend
    from convdsl.backends.tvm.targets import host_can_run, uses_amx

    base = name.removesuffix("-tuned")
    tuned = name.endswith("-tuned")
    be = TVMBackend(base, tune=tune if tuned else 0, db=db, use_db=tuned, progress=progress,
                    precision=precision if base == "tvm-llvm" or precision != "f32" else None, amx=amx)
    t0 = time.perf_counter()
    built = be.build(graph)
    compile_s = time.perf_counter() - t0
    info = None
    own = getattr(built, "own", 0)
    from_db = getattr(built, "templates_from_db", 0)
    note = (f"{own}/{built.functions} kernels by convdsl's schedules" if own else "no schedules")
    if be.precision != "f32":
        note += f"; precision {be.precision}" + ("" if not uses_amx(be.spec.config) else " (AMX)")
    if tuned:
        note += (f"; knobs of {from_db} template instances from the template database, "
                 f"{built.scheduled} kernels from MetaSchedule's")
    if built.tuning is not None:
        r = built.tuning
        info = r.as_dict()
        note = (f"tuned {r.tuned} of {r.tasks} tasks ({r.trials} trials, {r.trials_per_task}/task, {r.seconds:.0f} s), "
                f"{r.reused} reused from the database")
    why = host_can_run(be.spec.config)
    if why:
        return Entry(name, compile_s=compile_s, note=f"compiled, not run: {why}", tuning=info)
    runner = be._runner_for(built, graph)
    call = runner.timed_call(arrays)
    call()
    return Entry(name, call, compile_s, note, runner, runner.prepare(arrays), tuning=info)


def bench(graph: Graph, backends: list[str], arrays: list[np.ndarray], *, repeat: int = 20, warmup: int = 3,
          min_ms: float = 10.0, tune: int = 0, db: str | None = None, progress: bool = True,
          log: Callable[[str], None] = lambda s: None, precision: str = "f32", amx: bool = True) -> list[Entry]:
    unknown = [b for b in backends if b not in BENCH_BACKENDS]
    if unknown:
        from convdsl.errors import did_you_mean

        raise UsageError(f"unknown benchmark backend '{unknown[0]}'",
                         hint=did_you_mean(unknown[0], BENCH_BACKENDS) or f"choose from {', '.join(BENCH_BACKENDS)}")
    entries = []
    for name in backends:
        log(f"building {name} ...")
        if name.startswith("torch"):
            e = _torch_entry(graph, arrays, name)
        else:
            e = _tvm_entry(graph, arrays, name, tune, db, progress, precision, amx)
        log(f"  {name}: {e.compile_s:.1f} s to build{'; ' + e.note if e.note else ''}")
        entries.append(e)
    live = [e for e in entries if e.call is not None]
    for e in live:
        for _ in range(warmup):
            e.call()
    # how many calls make one sample of at least min_ms
    reps = {}
    for e in live:
        t0 = time.perf_counter()
        e.call()
        one = (time.perf_counter() - t0) * 1e3
        reps[e.backend] = max(1, int(min_ms / max(one, 1e-3)))
    # Blocks of consecutive samples, the backends taking turns block by block: one backend
    # right after another is slowed (measured: torch eager 22 ms alone, 35 ms when sampled
    # round-robin with torch.compile or TVM, whose worker threads and caches it then shares),
    # while taking turns still spreads drift of the machine over all of them.
    blocks = min(repeat, 4)
    for b in range(blocks):
        for e in live:
            n = reps[e.backend]
            for _ in range(2):  # untimed: the previous backend's threads settle
                e.call()
            for _ in range(repeat // blocks + (1 if b < repeat % blocks else 0)):
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(n):
                    e.call()
                t1 = time.perf_counter()
                e.samples.append((t1 - t0) * 1e3 / n)
                e.cpu_ms += (time.process_time() - c0) * 1e3
                e.wall_ms += (t1 - t0) * 1e3
    return entries


def summarize(entries: list[Entry], graph: Graph, batch: int) -> list[dict[str, Any]]:
    base = next((e for e in entries if e.backend == "torch" and e.samples), None)
    base_ms = float(np.median(base.samples)) if base else None
    rows = []
    for e in entries:
        row: dict[str, Any] = {"network": graph.name, "backend": e.backend, "batch": batch,
                               "compile_s": round(e.compile_s, 2), "note": e.note}
        if e.samples:
            med = float(np.median(e.samples))
            p10, p90 = (float(v) for v in np.percentile(e.samples, [10, 90]))
            row.update(median_ms=round(med, 4), p10_ms=round(p10, 4), p90_ms=round(p90, 4),
                       spread_pct=round(100.0 * (p90 - p10) / med, 1), samples=len(e.samples),
                       speedup_vs_torch=round(base_ms / med, 3) if base_ms else None,
                       cores_busy=round(e.cpu_ms / e.wall_ms, 2) if e.wall_ms else None)
        else:
            row.update(median_ms=None)
        if e.tuning:
            row["tuning"] = e.tuning
        rows.append(row)
    return rows


def profiles(entries: list[Entry], repeat: int = 3) -> dict[str, list[dict[str, Any]]]:
    from convdsl.backends.tvm.runtime import profile

    return {e.backend: profile(e.runner, e.args, repeat=repeat) for e in entries if e.runner is not None}
