"""Tune the knobs of convdsl's CPU templates by measurement (``convdsl tune``).

For each distinct kernel workload of a network (``tophub.Workload``: a conv, depthwise conv,
GEMM or int8 conv, whatever its fused epilogue), the tuner

1. takes the ``trials`` valid knob settings nearest to the analytic model's choice (the model's
   own first, the shipped record's if any),
2. builds the kernel alone with each (the fused TIR function as the network has it, scheduled by
   the same dispatcher the build uses, under ``tophub.forcing``),
3. runs each on the same random inputs and keeps only those equal to the model's kernel
   (1e-5 of the output's scale: a register tile changes no summation order),
4. times them round-robin (each round visits every candidate once, in a shuffled order, one
   sample being enough calls for ~20 ms; the minimum over rounds), since the machine is shared,
   each call with the weights flushed from the caches (as they are in the network),
5. and records the fastest in the database, with its time and the model's.  The model's choice
   stays unless another is at least ``MIN_GAIN`` faster (timing noise is not a tuning result).
"""
from __future__ import annotations

import datetime as _dt
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from convdsl.backends.tvm.schedules import tophub
from convdsl.backends.tvm.schedules.bf16 import round_to_bf16

MIN_GAIN = 0.03  # a candidate replaces the model's choice only when at least 3% faster
SAMPLE_S = 0.02  # one timing sample: enough calls for about this long


@dataclass
class Kernel:
    """A workload of the network, with one fused function that has it."""

    workload: tophub.Workload
    analytic: tuple[int, ...]
    func: Any  # tvm.tirx.PrimFunc (unscheduled)
    functions: list[str] = field(default_factory=list)  # every function of the network with this workload


@dataclass
class Result:
    key: str
    kind: str
    functions: list[str]
    analytic: tuple[int, ...]
    analytic_ms: float | None = None
    best: tuple[int, ...] | None = None
    best_ms: float | None = None
    tried: int = 0
    rejected: int = 0  # candidates that did not build or computed something else
    note: str = ""

    @property
    def speedup(self) -> float | None:
        return self.analytic_ms / self.best_ms if self.analytic_ms and self.best_ms else None

    def record(self) -> dict[str, Any]:
        names = tophub.KNOBS[self.kind]
        return {"knobs": dict(zip(names, self.best)), "ms": round(self.best_ms, 5),
                "analytic": dict(zip(names, self.analytic)), "analytic_ms": round(self.analytic_ms, 5),
                "trials": self.tried, "date": _dt.date.today().isoformat()}


# ---- the network's kernels ----------------------------------------------------------------------------
def optimized_module(graph, spec, bind: dict[str, int] | None = None, precision: str = "f32"):
    """The network as a ``precision`` build schedules it: lowered (under the target: int8 weights
    are packed for its instructions), laid out, legalized and fused."""
    import tvm

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph

    with spec.tvm_target():
        mod = lower_graph(graph, spec.backend, bind or {}, precision=precision)
        return tvm.transform.Sequential(optimize_passes(spec, precision))(mod)


def kernels(mod, target) -> dict[str, Kernel]:
    """{workload key: Kernel} of every function whose template asks ``tophub.choose`` once."""
    import tvm

    from convdsl.backends.tvm.schedules import is_scheduled, schedule_module

    found: dict[str, Kernel] = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or is_scheduled(func):
            continue
        with target, tophub.forcing(tophub.ANALYTIC), tophub.recording() as seen:
            schedule_module(tvm.IRModule({"main": func}), target)
        if len(seen) != 1:
            continue
        wl, analytic = seen[0][:2]
        k = found.setdefault(wl.key, Kernel(wl, analytic, func))
        k.functions.append(gv.name_hint)
    return found


def candidates(wl: tophub.Workload, analytic: tuple[int, ...], trials: int,
               also: tuple[int, ...] | None = None) -> list[tuple[int, ...]]:
    """The model's knobs first, then the valid settings nearest to them (log distance; larger
    tiles first on ties); ``also`` (the shipped record's) is always among them."""
    def distance(c):
        return (sum(abs(math.log2(a) - math.log2(b)) for a, b in zip(c, analytic)), -math.prod(c))

    rest = sorted((c for c in tophub.space(wl) if c != analytic), key=distance)
    out = [analytic] + rest
    if also is not None and also != analytic and tophub.fits(wl, also):
        out = [analytic, also] + [c for c in rest if c != also]
    return out[:max(1, trials)]


# ---- building and timing one kernel ---------------------------------------------------------------------
def build_kernel(func, target, knobs: dict[str, tuple[int, ...]] | str):
    """The function scheduled under ``knobs`` (``tophub.forcing``) and compiled alone."""
    import tvm

    from convdsl.backends.tvm.schedules import schedule_module

    with target, tophub.forcing(knobs):
        mod = schedule_module(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    from convdsl.backends.tvm.tir_pipeline import pipeline

    return tvm.compile(mod, target=target, tir_pipeline=pipeline(target)).jit()


def random_args(func, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for p in func.params:
        shape, dtype = [int(d) for d in p.shape], str(p.dtype)  # TIR params are buffers
        if dtype.startswith("float"):
            out.append(rng.standard_normal(shape).astype(dtype))
        elif dtype == "uint16":  # bf16 bit patterns (the bf16 templates' weights and inputs): N(0, 1) values
            out.append(round_to_bf16(rng.standard_normal(shape).astype(np.float32)))
        elif dtype in ("uint8", "int8"):
            lo, hi = (0, 255) if dtype == "uint8" else (-127, 127)
            out.append(rng.integers(lo, hi + 1, shape).astype(dtype))
        else:
            out.append(rng.integers(-1000, 1000, shape).astype(dtype))
    return out


def _run(lib, args: list[np.ndarray], dev) -> list[np.ndarray]:
    import tvm

    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    lib["main"](*tensors)
    return [t.numpy() for t in tensors]


def _same(outs: list[np.ndarray], refs: list[np.ndarray]) -> bool:
    """Each candidate output equals the reference's within 1e-5 of its largest magnitude; a NaN or infinity where
    the reference has none (or another one) is a difference, not a comparison that fails quietly."""
    for o, r in zip(outs, refs):
        if o.dtype.kind == "f":
            finite = np.isfinite(r)
            if not np.array_equal(np.isfinite(o), finite) or not np.array_equal(o[~finite], r[~finite], equal_nan=True):
                return False
            scale = max(1.0, float(np.abs(r[finite]).max()) if finite.any() else 1.0)
            if finite.any() and float(np.abs(o[finite].astype(np.float64) - r[finite]).max()) > 1e-5 * scale:
                return False
        elif not np.array_equal(o, r):
            return False
    return True


def time_round_robin(libs: list, args: list[np.ndarray], dev, rounds: int, seed: int = 0) -> list[float]:
    """Minimum ms per call of each library, sampled round-robin in a shuffled order per round.

    Every call starts with the caches flushed of all arguments but the first (the weights and
    other operands; the data input stays warm, as it is when the previous layer just wrote
    it): a kernel timed on hot weights favours tiles that lose in the network."""
    import tvm

    tensors = [tvm.runtime.tensor(a, dev) for a in args]

    def sample(lib, repeat: int):
        return lib.time_evaluator("main", dev, number=1, repeat=repeat,
                                  f_preproc="cache_flush_cpu_non_first_arg")(*tensors).results

    repeats = []
    for lib in libs:  # calibrate: calls per sample
        t = min(sample(lib, 2))
        repeats.append(max(1, min(50, int(SAMPLE_S / max(t, 1e-7)))))
    best = [math.inf] * len(libs)
    order = list(range(len(libs)))
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            best[i] = min(best[i], min(sample(libs[i], repeats[i])) * 1e3)
    return best


# ---- the tuner ---------------------------------------------------------------------------------------------
def tune_network(graph, spec, trials: int, *, db_file: str | Path | None = None, rounds: int = 7, force: bool = False,
                 bind: dict[str, int] | None = None, progress: bool = True, precision: str = "f32",
                 on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Tune every template workload of ``graph``'s ``precision`` build (``spec`` made for that
    precision: ``make_target(..., precision=)``) without a record in ``db_file`` (default: the user's
    database) and write the results there; returns one Result per workload."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if spec.is_gpu:
        from convdsl.backends.errors import UsageError

        raise UsageError("convdsl tune measures convdsl's CPU templates; GPU targets use DLight and --tune",
                         hint="use --backend tvm-llvm, or `convdsl compile --backend tvm-cuda --tune N`")
    path = Path(db_file) if db_file is not None else tophub.user_db_path()
    target = spec.tvm_target()
    dev = spec.device()
    ks = kernels(optimized_module(graph, spec, bind, precision), target)
    have = tophub.read_db(path)["records"]
    todo = {k: v for k, v in ks.items() if force or k not in have}
    results = [Result(k, v.workload.kind, v.functions, v.analytic, note="in the database")
               for k, v in ks.items() if k not in todo]
    plans = {}
    for key, k in todo.items():
        plans[key] = candidates(k.workload, k.analytic, trials, _shipped(k.workload))
    with Progress(TextColumn("tuning {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress, transient=False) as ui:
        bar = ui.add_task(f"{len(todo)} workloads", total=sum(len(p) for p in plans.values()))
        for key, k in todo.items():
            ui.update(bar, description=f"{k.workload.kind} {'x'.join(map(str, k.workload.spatial))}")
            res = _tune_one(k, plans[key], target, dev, rounds, lambda: ui.advance(bar))
            if res.best is not None:
                tophub.write_db(path, {key: res.record()}, _header(spec, trials))
            results.append(res)
            if on_result is not None:
                on_result(res)
    return results


def _tune_one(k: Kernel, plan: list[tuple[int, ...]], target, dev, rounds: int, step) -> Result:
    res = Result(k.workload.key, k.workload.kind, k.functions, k.analytic, tried=len(plan))
    args = random_args(k.func)
    built, libs = [], []
    ref = None
    for knobs in plan:
        try:
            lib = build_kernel(k.func, target, {k.workload.key: knobs})
            outs = _run(lib, args, dev)
        except Exception as e:  # noqa: BLE001 - a candidate that does not build is not a result
            res.rejected += 1
            if knobs == k.analytic:
                res.note = f"the model's kernel failed: {type(e).__name__}"
                step()
                return res
            step()
            continue
        if ref is None:
            ref = outs  # plan[0] is the model's choice: the reference
        elif not _same(outs, ref):
            res.rejected += 1
            step()
            continue
        built.append(knobs)
        libs.append(lib)
        step()
    times = time_round_robin(libs, args, dev, rounds)
    res.analytic_ms = times[0]
    i = min(range(len(times)), key=times.__getitem__)
    if times[i] > times[0] * (1 - MIN_GAIN):
        i = 0
    res.best, res.best_ms = built[i], times[i]
    return res


def _shipped(wl: tophub.Workload) -> tuple[int, ...] | None:
    for p in tophub.shipped_paths():
        rec = tophub.read_db(p)["records"].get(wl.key)
        if rec is not None:
            return tophub._knobs_of(wl, rec, p)  # noqa: SLF001 - same validation as the lookup
    return None


def _header(spec, trials: int) -> dict[str, Any]:
    return {"target": spec.describe(), "cpu": cpu_model(), "trials_per_workload": trials,
            "updated": _dt.datetime.now().isoformat(timespec="seconds"), "tool": "convdsl tune"}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def summary_table(results: list[Result], title: str):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("workload", "functions", "analytic", "ms", "best", "ms", "speedup", "tried", "note"):
        t.add_column(col, justify="left" if col in ("workload", "note", "analytic", "best") else "right")
    for r in results:
        names = tophub.KNOBS[r.kind]
        fmt = (lambda kn: " ".join(f"{n}={v}" for n, v in zip(names, kn)) if kn else "-")
        t.add_row(r.key.rsplit(":", 2)[0], str(len(r.functions)), fmt(r.analytic),
                  f"{r.analytic_ms:.3f}" if r.analytic_ms else "-", fmt(r.best) if r.best_ms else "-",
                  f"{r.best_ms:.3f}" if r.best_ms else "-", f"{r.speedup:.2f}x" if r.speedup else "-",
                  str(r.tried), "; ".join(x for x in (r.note, f"{r.rejected} rejected" if r.rejected else "") if x))
    return t
