"""Compile a convdsl graph with TVM: lower -> optimize -> schedule -> codegen.

The whole order reads top to bottom in ``build``; each stage is a named list
of Relax passes:

1. ``lower_graph``: convdsl graph -> Relax (weights as constants).
2. ``optimize_passes``: on CPUs, convs and constant-weight matmuls to convdsl's
   kernels in the blocked NCHW[x]c layout with pre-packed weights
   (``schedules.layout_passes``); legalize every other op to TIR, fold constants,
   fuse elementwise epilogues into their producers.
3. tuning (``--tune N``): MetaSchedule on the fused TIR functions that have no
   record in the database yet.
4. ``schedule_passes``: apply the database's best schedules; what is left gets
   convdsl's own schedules on CPUs (``schedules.ApplySchedules``: int8 VNNI,
   conv NCHWc, GEMM, reductions, elementwise; no tuning) and DLight's default
   rules on GPUs (unscheduled GPU code does not compile).
5. ``codegen``: TVM's own dataflow lowering and VM finalization for the target; TIR
   through ``tir_pipeline`` (TVM's, with small scratch buffers on the stack on CPUs).

``BuildOptions.dynamic`` (a dynamic batch, ``("N",)``) keeps those symbols Relax shape
variables through every stage: the blocked-layout kernels take a symbolic batch (their other
dims stay static), the schedules parallelize over it, and the template knobs are those of a
batch of 1 (``tophub.workload_of``).  MetaSchedule records, made on static shapes, do not
match such kernels.  What fails on a shape variable is a ``DynamicShapeError``.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm import relax

from convdsl.errors import ConvDSLError
from convdsl.ir.graph import Graph

from convdsl.backends.tvm import tir_pipeline
from convdsl.backends.tvm.common import DynamicShapeError
from convdsl.backends.tvm.lowering import lower_graph
from convdsl.backends.tvm.schedules import ApplySchedules, layout_passes, tophub
from convdsl.backends.tvm.schedules.gpu import gpu_passes, tensor_core_rule
from convdsl.backends.tvm.targets import TargetSpec
from convdsl.backends.tvm.tuning import TuneReport, db_dir, open_database, tune


@dataclass
class BuildOptions:
    tune: int = 0  # MetaSchedule trials per task; 0: no tuning
    db: str | None = None  # database root (default: the user cache, or $CONVDSL_TUNING_DB)
    use_db: bool = True  # apply records already in the databases (MetaSchedule's, and the template knobs')
    progress: bool = True  # progress bar while tuning
    bind: dict[str, int] = field(default_factory=dict)  # sizes of symbolic dims (default: graph.symbols)
    # f32 | bf16 (convs and matmuls with bf16 operands) | int8 (the quantized ops' kernels); tvm-cuda:
    # f32 | f16 | bf16 (schedules/gpu.py), None there: $CONVDSL_GPU_PRECISION, else f32
    precision: str | None = "f32"
    dynamic: tuple[str, ...] = ()  # symbols left symbolic (a dynamic batch: ("N",)); the others are bound
    winograd: bool = True  # f32 3x3 stride-1 convs as Winograd where schedules/winograd.py chooses it (CPU)


@dataclass
class Built:
    """A compiled network and how it was made."""

    executable: Any  # relax.VMExecutable
    spec: TargetSpec
    seconds: dict[str, float]
    scheduled: int  # TIR functions scheduled from the database (or by DLight on GPU)
    functions: int  # TIR functions in the module
    tuning: TuneReport | None = None
    db: str | None = None
    own: int = 0  # TIR functions scheduled by convdsl's own CPU schedules (after the database)
    templates_from_db: int = 0  # template instances whose knobs came from the user's or the shipped database
    dynamic: tuple[str, ...] = ()  # the symbols the executable takes at any size
    winograd: int = 0  # convs computed as Winograd F(m x m, 3x3) (schedules/winograd.py, winograd_int8.py)


def _round_vectorizable(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """relax.round as ``tirx.round``: TVM's LLVM codegen lowers it to ``llvm.nearbyint`` as it does
    ``tirx.nearbyint`` (topi.round's), ties to even either way, but TVM vectorizes a loop only over
    intrinsics marked vectorizable, which ``nearbyint`` is not: a quantize after a conv (MobileNet-V2's
    ReLU6 -> quantize epilogues) ran its whole requantization loop as scalars (the 16 -> 96 1x1 conv at
    112 x 112 alone: 631 -> 271 us)."""
    from tvm import te, tirx

    return bb.call_te(lambda x: te.compute(x.shape, lambda *i: tirx.round(x(*i)), name="round", tag="elemwise"),
                      call.args[0], primfunc_name_hint="tir_round")


def optimize_passes(spec: TargetSpec, precision: str | None = "f32", winograd: bool = True) -> list:
    # layout_passes: [] on GPU targets; gpu_passes: [] on CPU targets, on GPUs the compute precision.
    # GPUs keep topi.round (nearbyint): CUDA's round() rounds ties away from zero
    legalize = None if spec.is_gpu else {"relax.round": _round_vectorizable}
    return layout_passes(spec, precision or "f32", winograd) + gpu_passes(spec, precision) + [
        relax.transform.LegalizeOps(customize_legalize_map=legalize),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def schedule_passes(spec: TargetSpec, with_db: bool) -> list:
    """Database first; then DLight (GPU) or convdsl's schedules (CPU) for the rest."""
    passes = [relax.transform.MetaScheduleApplyDatabase()] if with_db else []
    if spec.is_gpu:
        from tvm.s_tir import dlight as dl

        # convdsl's rule first: float16 GEMMs with an extent <= 64 on tensor cores (DLight's Matmul
        # would leave them on SIMT); it declines everything else
        passes.append(dl.ApplyDefaultSchedule(tensor_core_rule(), dl.gpu.Matmul(), dl.gpu.GEMV(),
                                              dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()))
    return passes


def codegen_passes(spec: TargetSpec) -> list:
    backend = relax.backend.cuda.pipeline if spec.kind == "cuda" else relax.backend.cpu_generic.pipeline
    target = spec.tvm_target()
    return backend.dataflow_lower_passes(target) + backend.finalize_passes(target)


def _count_scheduled(mod: tvm.IRModule) -> tuple[int, int]:
    funcs = [f for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    done = sum(1 for f in funcs if f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False)))
    return done, len(funcs)


def build(graph: Graph, spec: TargetSpec, opts: BuildOptions | None = None) -> Built:
    opts = opts or BuildOptions()
    if not opts.dynamic:
        return _build(graph, spec, opts)
    try:
        return _build(graph, spec, opts)
    except ConvDSLError:
        raise
    except Exception as e:  # noqa: BLE001 - a TVM pass that needs static shapes
        names = ", ".join(opts.dynamic)
        why = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
        raise DynamicShapeError(f"{spec.backend} cannot compile {graph.name} with a dynamic {names}: {why}",
                                hint=f"compile with static shapes: leave out --dynamic-batch (--bind {names}=B "
                                     "for a batch of B)") from None


def _build(graph: Graph, spec: TargetSpec, opts: BuildOptions) -> Built:
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    target = spec.tvm_target()
    with target:  # lowerings that pack weights for the target's instructions (lower_quant's int8) read it
        mod = lower_graph(graph, spec.backend, opts.bind, opts.dynamic, opts.precision or "f32")
    seconds["lower"] = time.perf_counter() - t

    t = time.perf_counter()
    with target:
        mod = tvm.transform.Sequential(optimize_passes(spec, opts.precision, opts.winograd))(mod)
    winograd_convs = count_winograd(mod)
    seconds["optimize"] = time.perf_counter() - t

    db = report = folder = None
    if opts.tune or (opts.use_db and has_records(spec, opts.db)):
        folder = str(db_dir(spec, opts.db))
        db = open_database(spec, opts.db)
    if opts.tune:
        t = time.perf_counter()
        report = tune(mod, spec, opts.tune, db, folder, progress=opts.progress)
        seconds["tune"] = time.perf_counter() - t

    t = time.perf_counter()
    with target:
        if db is not None:
            with db:
                mod = tvm.transform.Sequential(schedule_passes(spec, True))(mod)
        else:
            mod = tvm.transform.Sequential(schedule_passes(spec, False))(mod)
    scheduled, functions = _count_scheduled(mod)
    own = templates_from_db = 0
    if not spec.is_gpu:
        # use_db=False is fully untuned: the templates' knobs come from the analytic model alone,
        # not from the user's or the shipped template database (schedules/tophub.py)
        with target, (contextlib.nullcontext() if opts.use_db else tophub.forcing(tophub.ANALYTIC)), \
                tophub.recording() as seen:
            mod = ApplySchedules(mod)
        own = _count_scheduled(mod)[0] - scheduled
        templates_from_db = sum(1 for *_, source in seen if source in ("user", "shipped"))
    seconds["schedule"] = time.perf_counter() - t

    t = time.perf_counter()
    ex = tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(codegen_passes(spec)),
                     tir_pipeline=tir_pipeline.pipeline(target))
    seconds["codegen"] = time.perf_counter() - t
    seconds["total"] = sum(seconds.values())
    return Built(ex, spec, seconds, scheduled, functions, report, folder, own, templates_from_db, opts.dynamic,
                 winograd_convs)


def count_winograd(mod: tvm.IRModule) -> int:
    """Calls of a Winograd GEMM kernel in the module's Relax functions: one per conv computed as Winograd (f32:
    ``winograd_gemm``; int8, one kernel a conv: ``winograd_qconv2d``)."""
    from tvm import relax

    count = 0

    def visit(e) -> None:
        nonlocal count
        if isinstance(e, relax.Call) and e.op == tvm.ir.Op.get("relax.call_tir") \
                and isinstance(e.args[0], tvm.ir.GlobalVar) \
                and any(k in e.args[0].name_hint for k in ("winograd_gemm", "winograd_qconv2d")):
            count += 1

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return count


def has_records(spec: TargetSpec, root: str | None) -> bool:
    path = db_dir(spec, root) / "database_tuning_record.json"
    try:
        return path.stat().st_size > 0
    except OSError:
        return False
