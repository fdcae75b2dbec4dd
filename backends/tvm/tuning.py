"""MetaSchedule tuning with a persistent database keyed by workload.

The database lives in the user cache (``~/.cache/convdsl/tuning``; the
environment variable ``CONVDSL_TUNING_DB`` or ``--db`` move it), one folder
per target, because MetaSchedule matches records by workload alone.  A
workload is the structural hash of one fused TIR function, so records made
for one network serve every network with the same layer shapes.  Tuning
skips every task that already has a record: a second compile tunes nothing.

Two fixes make MetaSchedule usable as shipped (apache-tvm 0.27):
- every builder/runner worker spends ~90 s importing ``tvm.s_tir.tensor_intrin``
  (each TIR ``prim_func`` decorator calls ``inspect.stack()``, and
  ``inspect.getmodule`` rescans ``sys.modules`` for frames whose file is not a
  module: frozen importlib, ``<ast>``, ``<string>``), which trips the 30 s build timeout;
  ``prime_inspect_cache`` fills ``inspect.modulesbyfile`` for those names,
  in the workers (initializer) and in this process;
- candidates are built by ``build_candidate``, which skips that import
  altogether (no tensor intrinsics are used by the default design space).
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convdsl.errors import UsageError

from convdsl.backends.tvm.targets import TargetSpec, cpu_flags

DB_ENV = "CONVDSL_TUNING_DB"
_PSEUDO_FILES = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>", "<ast>", "<string>")
_PSEUDO_MODULES = ("importlib._bootstrap", "importlib._bootstrap_external", "ast", "__main__")


def prime_inspect_cache() -> None:
    """Make ``inspect.getmodule`` answer at once for frames of frozen importlib and ``<ast>``."""
    for name, mod in zip(_PSEUDO_FILES, _PSEUDO_MODULES):
        inspect.modulesbyfile[name] = mod
        inspect.modulesbyfile[os.path.normcase(os.path.abspath(name))] = mod


def import_intrinsics(spec: TargetSpec) -> None:
    """Register the tensor intrinsics of the target's family only.

    MetaSchedule's TuneContext imports ``tvm.s_tir.tensor_intrin``, whose
    ``__init__`` parses ~250 TVMScript intrinsics of every family (CUDA's alone
    take ~15 s here); a CPU target needs the x86 (or Arm) ones.  The package is
    entered in ``sys.modules`` without running its ``__init__``, and the
    family's module is imported into it; another family can be added later."""
    import importlib
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    family = "cuda" if spec.kind == "cuda" else "x86" if cpu_flags() else "arm_cpu"
    pkg = sys.modules.get(name)
    if pkg is None:
        pkg = importlib.util.module_from_spec(importlib.util.find_spec(name))
        pkg._convdsl_partial = True  # noqa: SLF001 - marks the package as filled on demand
        sys.modules[name] = pkg
        import tvm.s_tir

        tvm.s_tir.tensor_intrin = pkg
    if getattr(pkg, "_convdsl_partial", False):
        importlib.import_module(f"{name}.{family}")


def build_candidate(mod, target, _params):
    """MetaSchedule's default build without ``import tvm.s_tir.tensor_intrin``."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    from convdsl.backends.tvm.tir_pipeline import pipeline

    return tvm.tirx.build(mod, target=target, pipeline=pipeline(target))


def in_process_measurers(evaluator_config):
    """A builder and a runner that work in this process.

    MetaSchedule's LocalBuilder starts a new pool of Python workers for every
    batch of candidates, and each worker spends 10-20 s importing TVM (and,
    through tvm_ffi, torch): on a 2-core machine that dominated tuning time.
    Building a candidate here takes well under a second; a candidate whose
    build fails is reported as such.  Running a candidate here gives up the
    isolation of a worker (a crashing kernel would end the compile); none was
    seen, and ``CONVDSL_TUNE_WORKERS=1`` brings the worker pools back."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture, _worker_func

    @derived_object
    class Builder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for inp in build_inputs:
                try:
                    path = default_export(build_candidate(inp.mod, inp.target, None))
                    results.append(BuilderResult(path, None))
                except Exception as e:  # noqa: BLE001 - a candidate that does not build is a measurement result
                    results.append(BuilderResult(None, f"build failed: {e}"))
            return results

    @derived_object
    class Runner(PyRunner):
        def run(self, runner_inputs):
            futures = []
            for inp in runner_inputs:
                try:
                    costs = _worker_func(None, None, None, evaluator_config, 1, str(inp.artifact_path),
                                         str(inp.device_type), tuple(a.as_json() for a in inp.args_info))
                    futures.append(LocalRunnerFuture(res=costs, error_message=None))
                except Exception as e:  # noqa: BLE001
                    futures.append(LocalRunnerFuture(res=None, error_message=f"run failed: {e}"))
            return futures

    return Builder(), Runner()


def _measurers(evaluator_config):
    from tvm.s_tir import meta_schedule as ms

    if os.environ.get("CONVDSL_TUNE_WORKERS") == "1":
        return (ms.builder.LocalBuilder(timeout_sec=60.0, f_build=build_candidate, initializer=prime_inspect_cache),
                ms.runner.LocalRunner(timeout_sec=60.0, initializer=prime_inspect_cache,
                                      evaluator_config=evaluator_config))
    return in_process_measurers(evaluator_config)


def search_strategy(trials: int):
    """Evolutionary search sized to the budget: MetaSchedule's defaults (population 512)
    for real tuning, a smaller population when only a few trials per task are asked for."""
    from tvm.s_tir import meta_schedule as ms

    population = min(512, max(32, 16 * trials))
    return ms.search_strategy.EvolutionarySearch(population_size=population,
                                                 init_min_unmeasured=min(50, population // 4))


# ---- the database -------------------------------------------------------------------------
def db_root(path: str | os.PathLike | None = None) -> Path:
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "convdsl" / "tuning"


def db_dir(spec: TargetSpec, root: str | os.PathLike | None = None) -> Path:
    """One folder per target: ``llvm-icelake-server-1a2b3c4d``."""
    cfg = spec.config
    name = "-".join(str(x) for x in (cfg["kind"], cfg.get("mcpu") or cfg.get("arch") or "generic"))
    digest = hashlib.sha256(spec.key().encode()).hexdigest()[:8]
    return db_root(root) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{digest}"


def open_database(spec: TargetSpec, root: str | os.PathLike | None = None):
    from tvm.s_tir import meta_schedule as ms

    folder = db_dir(spec, root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the tuning database folder {folder}: {e.strerror or e}",
                         hint=f"choose another with --db or {DB_ENV}") from None
    return ms.database.JSONDatabase(work_dir=str(folder), module_equality="structural")


def has_record(db, mod) -> bool:
    if not db.has_workload(mod):
        return False
    return bool(db.get_top_k(db.commit_workload(mod), 1))


@dataclass
class TuneReport:
    """What one tuning step did."""

    db: str
    tasks: int = 0
    reused: int = 0  # tasks that already had a record
    tuned: int = 0  # tasks tuned now
    trials: int = 0  # candidates measured now
    trials_per_task: int = 0
    seconds: float = 0.0
    task_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "task_names"}


def _tuning_target(spec: TargetSpec):
    """MetaSchedule needs the number of physical cores of a CPU target (its parallel decisions)."""
    if spec.kind != "llvm" or "num-cores" in spec.config:
        return spec.tvm_target()
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return TargetSpec(spec.backend, {**spec.config, "num-cores": cores}).tvm_target()


def _progress_callback(progress, bar):
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(PyMeasureCallback):
        def __init__(self) -> None:
            self.count = 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            self.count += len(measure_candidates)
            progress.update(bar, advance=len(measure_candidates))

    return Progress()


def tune(mod, spec: TargetSpec, trials: int, db, db_folder: str, *, progress: bool = True, seed: int = 0) -> TuneReport:
    """Tune every task of ``mod`` (legalized and fused Relax) that has no record in ``db``."""
    from tvm.s_tir import meta_schedule as ms

    if spec.is_gpu and not spec.device().exist:
        raise UsageError(f"tuning for {spec.backend} measures kernels on the GPU, and none is visible here",
                         hint="tune on a machine with the GPU; the database folder can be copied (--db)")
    prime_inspect_cache()
    import_intrinsics(spec)
    if progress:  # the bar replaces MetaSchedule's per-task tables (they still go to its log files)
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    target = _tuning_target(spec)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    pending = [t for t in tasks if not has_record(db, t.dispatched[0])]
    report = TuneReport(db=db_folder, tasks=len(tasks), reused=len(tasks) - len(pending),
                        trials_per_task=trials, task_names=[t.task_name for t in pending])
    if not pending or trials <= 0:
        report.seconds = time.perf_counter() - t0
        return report
    with tempfile.TemporaryDirectory(prefix="convdsl-tune-") as work_dir:
        # XGBoost on all cores is pathologically slow when the cores are shared (OpenMP spin-waits:
        # 50 rounds on 300 samples took 34 s with 2 threads, 5 s with 1, here); the model is small
        cost_model = ms.cost_model.XGBModel(config=ms.cost_model.xgb_model.XGBConfig(nthread=1))
        ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            pending, work_dir=work_dir, space="post-order-apply", strategy=search_strategy(trials), seed=seed)
        builder, runner = _measurers(ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20))
        total = trials * len(ctxs)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("tuning {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), disable=not progress, transient=False) as bar_ui:
            bar = bar_ui.add_task(f"{len(ctxs)} tasks x {trials} trials", total=total)
            callback = _progress_callback(bar_ui, bar)
            ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=work_dir, max_trials_global=total,
                          max_trials_per_task=trials, num_trials_per_iter=max(1, min(64, trials)),
                          builder=builder, runner=runner, database=db, cost_model=cost_model,
                          measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), callback])
        report.trials = callback.count
    report.tuned = len(pending)
    report.seconds = time.perf_counter() - t0
    return report
