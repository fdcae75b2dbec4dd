"""The TVM backend object: one target plus build options, with the backend
interface convdsl's API and CLI use (build_module, runner, write_artifact,
manifest_extra), and ``load`` for artifact folders."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convdsl.artifact import io_specs_ok
from convdsl.errors import ArtifactError, UsageError
from convdsl.ir.graph import Graph
from convdsl.ir.types import NUMPY_DTYPE, bind_some

from convdsl.backends.tvm.targets import TARGET_BACKENDS, TargetSpec, host_can_run, make_target, uses_amx

LIBRARY = "lib.so"


def tvm_versions() -> dict[str, str]:
    import tvm
    import tvm_ffi

    return {"tvm": str(tvm.__version__), "tvm_ffi": str(getattr(tvm_ffi, "__version__", "unknown"))}


def io_specs(graph: Graph, bind: dict[str, int] | None = None,
             dynamic: tuple[str, ...] = ()) -> tuple[list[dict], list[dict]]:
    """The shapes of the inputs and outputs as the compiled module takes them: sizes, and the
    ``dynamic`` symbols (with the dims made of them) as text, e.g. ``["N", 3, 224, 224]``."""
    sizes = {k: v for k, v in {**graph.symbols, **(bind or {})}.items() if k not in dynamic}

    def specs(names, types):
        return [{"name": n, "shape": [bind_some(d, sizes) for d in t.shape], "dtype": NUMPY_DTYPE.get(t.dtype, t.dtype)}
                for n, t in zip(names, types)]

    return specs(graph.inputs, graph.input_types()), specs(graph.output_names, graph.output_types())


def batch_symbol(graph: Graph) -> str:
    """The one symbol the inputs of ``graph`` have as their first dim (the batch, ``N``), which
    ``--dynamic-batch`` keeps symbolic; a network without one is refused with what it has."""
    firsts = [t.shape[0] if t.rank else None for t in graph.input_types()]
    symbolic = {d for d in firsts if isinstance(d, str)}
    if len(symbolic) == 1 and next(iter(symbolic)).isidentifier():
        return symbolic.pop()  # inputs with a size there (a broadcast [1, C]) keep it
    shown = ", ".join(f"{n}: {t}" for n, t in zip(graph.inputs, graph.input_types()))
    raise UsageError(f"--dynamic-batch keeps the batch symbol of {graph.name} symbolic, and its inputs do not "
                     "have one symbol as their first dim", got=shown,
                     hint="declare the batch as a symbol, e.g. x: f32[N, 3, 224, 224], or compile with static "
                          "shapes (leave out --dynamic-batch)")


class Module:
    """A compiled network in memory: ``m(x)`` or ``m(x1, x2)`` -> output (or a tuple)."""

    def __init__(self, built, runner) -> None:
        self.built = built
        self.runner = runner

    def __call__(self, *inputs):
        outs = self.runner(list(inputs))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def export_library(self, path: str | os.PathLike) -> None:
        self.built.executable.export_library(str(path))


@dataclass
class TVMBackend:
    """``tvm-llvm`` or ``tvm-cuda`` with its target and build options."""

    name: str = "tvm-llvm"
    target_json: str | dict | None = None
    arch: str | None = None
    tune: int = 0
    db: str | None = None
    use_db: bool = True
    progress: bool = True
    # tvm-llvm: f32 | bf16 | int8 (targets.PRECISIONS); tvm-cuda: f32 | f16 | bf16 (CUDA_PRECISIONS).
    # None: f32 (tvm-cuda: $CONVDSL_GPU_PRECISION when set, the older way to ask for 16-bit compute)
    precision: str | None = None
    winograd: bool = True  # 3x3 stride-1 convs as Winograd where schedules/winograd.py / winograd_int8.py choose it
    amx: bool = True  # int8 on AMX tiles (schedules/amx.py) where the CPU has AMX-INT8; False: VNNI
    # the batch symbol (N) kept symbolic, one library for every batch size: True insists, None
    # when nothing is lost by it (`convdsl compile`'s default), False never (static shapes)
    dynamic_batch: bool | None = False
    bound: tuple[str, ...] = ()  # symbols the user gave sizes (--bind): never left symbolic
    notes: list[str] = field(default_factory=list)  # why a build is not what the user may expect
    last_build: Any = field(default=None, repr=False)  # the Built of the latest build, for the manifest

    def __post_init__(self) -> None:
        self.precision = resolve_precision(self.name, self.precision)

    def __str__(self) -> str:
        return self.name

    @property
    def spec(self) -> TargetSpec:
        if not hasattr(self, "_spec"):
            # the CUDA precisions need no target features; targets.check_precision knows the CPU ones
            cpu_precision = self.precision if self.name == "tvm-llvm" else "f32"
            self._spec = make_target(self.name, target_json=self.target_json, arch=self.arch, precision=cpu_precision,
                                     amx=self.amx)
            if self.name == "tvm-cuda":
                check_cuda_precision(self._spec, self.precision)
        return self._spec

    # -- building -------------------------------------------------------------------
    def dynamic(self, graph: Graph) -> tuple[str, ...]:
        """The symbols the library will take at any size: the batch symbol, or none (static).

        ``dynamic_batch=True`` (``--dynamic-batch``) insists: what prevents it is an error.
        ``None`` (``convdsl compile`` without it) decides: a dynamic batch when the batch is
        not bound (``--bind N=B``) and nothing is lost by it, else static shapes, with the
        reason in ``notes`` where the user may not expect them.  ``False``: static."""
        if self.dynamic_batch is False:
            return ()
        explicit = self.dynamic_batch is True
        try:
            n = batch_symbol(graph)
        except UsageError:
            if explicit:
                raise
            return ()  # no symbolic batch: static, as the program says
        if n in self.bound:
            if explicit:
                raise UsageError(f"--bind {n}=... fixes the batch, and --dynamic-batch leaves it open to any size",
                                 hint="give one of them")
            return ()
        why = hint = None
        if self.name != "tvm-llvm" or self.precision != "f32":
            why = (f"a dynamic batch is compiled for f32 programs on tvm-llvm, not "
                   f"{self.name if self.name != 'tvm-llvm' else '--precision ' + self.precision}")
            hint = f"bind the batch instead (--bind {n}=8): one library per batch size"
        elif self.tune:
            why = "--tune measures kernels at one size, and a dynamic batch leaves the size open"
            hint = (f"tune a static build (--bind {n}=1 --tune TRIALS); `convdsl tune` records template knobs, "
                    "which a dynamic batch build takes as those of a batch of 1")
        elif not explicit and self.use_db and self._has_metaschedule_records():
            why = "your MetaSchedule tuning records are for static shapes"
            hint = f"--dynamic-batch compiles a dynamic batch without them; --bind {n}=B uses them for a batch of B"
        if why is not None:
            if explicit:
                raise UsageError(f"--dynamic-batch: {why}", hint=hint)
            self.notes.append(f"compiled for {n} = {graph.symbols.get(n, 1)} (static shapes): {why}; {hint}")
            return ()
        return (n,)

    def _has_metaschedule_records(self) -> bool:
        from convdsl.backends.tvm.build import has_records

        return has_records(self.spec, self.db)

    def build(self, graph: Graph):
        from convdsl.backends.tvm.build import BuildOptions, build
        from convdsl.backends.tvm.common import DynamicShapeError

        check_precision_of(graph, self.precision)
        if uses_amx(self.spec.config) and host_can_run(self.spec.config) is None:
            from convdsl.backends.tvm.targets import request_amx

            request_amx()  # building runs kernels too (constant folding)
        dynamic = self.dynamic(graph)
        opts = BuildOptions(tune=self.tune, db=self.db, use_db=self.use_db, progress=self.progress,
                            precision=self.precision, dynamic=dynamic, winograd=self.winograd)
        try:
            self.last_build = build(graph, self.spec, opts)
        except DynamicShapeError as e:
            if self.dynamic_batch is True:
                raise
            n = dynamic[0]
            self.notes.append(f"compiled for {n} = {graph.symbols.get(n, 1)} (static shapes): {e.message}; "
                              f"--bind {n}=B compiles another batch")
            opts.dynamic = ()
            self.last_build = build(graph, self.spec, opts)
        return self.last_build

    def _runner_for(self, built, graph: Graph):
        from convdsl.backends.tvm.runtime import Runner

        why = host_can_run(self.spec.config)
        if why:
            raise UsageError(f"cannot run {self.name} code here: {why}",
                             hint="write an artifact with -o and run it on a matching machine")
        ins, outs = io_specs(graph, dynamic=built.dynamic)
        return Runner(built.executable, self.spec.device(), ins, outs, amx=uses_amx(self.spec.config))

    def build_module(self, graph: Graph) -> Module:
        built = self.build(graph)
        return Module(built, self._runner_for(built, graph))

    def runner(self, graph: Graph):
        return self._runner_for(self.build(graph), graph)

    def load_runner(self, artifact):
        """What ``convdsl run`` uses for a folder (``convdsl.artifact.open_artifact``'s result)."""
        return load(artifact.folder, artifact)

    def check_artifact(self, artifact) -> None:
        check_artifact(artifact)

    # -- artifacts ------------------------------------------------------------------
    def write_artifact(self, graph: Graph, out: Path) -> list[str]:
        built = self.build(graph)
        try:
            built.executable.export_library(str(Path(out) / LIBRARY))
        except (RuntimeError, OSError) as e:  # TVM runs the C compiler: a full disk, a killed linker
            raise UsageError(f"cannot write the compiled library {LIBRARY}: {str(e).strip().splitlines()[-1][:300]}",
                             hint="is the disk full, or the output folder not writable?") from None
        return [LIBRARY]

    def manifest_extra(self, graph: Graph) -> dict[str, Any]:
        built = self.last_build
        dynamic = built.dynamic
        ins, outs = io_specs(graph, dynamic=dynamic)
        import torch

        sizes = {k: v for k, v in graph.symbols.items() if k not in dynamic}

        def bound(names, types):  # what the library takes: the program's shapes at the bound sizes
            return [{"name": n, "shape": [bind_some(d, sizes) for d in t.shape], "symbolic_shape": list(t.shape),
                     "dtype": t.dtype} for n, t in zip(names, types)]

        extra = {
            "backend": self.name,
            "inputs": bound(graph.inputs, graph.input_types()),
            "outputs": bound(graph.output_names, graph.output_types()),
            "dynamic": list(dynamic),
            "versions": {"torch": torch.__version__, **tvm_versions()},
            "tvm": {
                "target": self.spec.config,
                "precision": self.precision,
                "library": LIBRARY,
                "weights": "constants inside the library",
                "dynamic": list(dynamic),
                "inputs": ins,
                "outputs": outs,
                "compile_seconds": {k: round(v, 3) for k, v in built.seconds.items()},
                "kernels": built.functions,
                "kernels_from_database": built.scheduled if not self.spec.is_gpu else None,
                "kernels_scheduled_by_convdsl": built.own if not self.spec.is_gpu else None,
                "winograd_convs": built.winograd if not self.spec.is_gpu else None,
                "amx": uses_amx(self.spec.config),
                "tuning": built.tuning.as_dict() if built.tuning else None,
            },
        }
        if not self.spec.is_gpu and any(op in QUANTIZED_OPS for op in graph.ops_used()):
            from convdsl.backends.tvm.lower_quant import int8_instructions

            with self.spec.tvm_target():  # which instruction each quantized layer's kernel runs
                extra["tvm"]["int8_instructions"] = int8_instructions(graph)
        return extra


QUANTIZED_OPS = ("qconv1d", "qconv2d", "qconv3d", "qlinear")
# tvm-cuda's compute precisions (schedules/gpu.py's PRECISIONS, listed here so that checking one
# does not load TVM); the environment variable is the fallback when none is given
CUDA_PRECISIONS = ("f32", "f16", "bf16")
GPU_PRECISION_ENV = "CONVDSL_GPU_PRECISION"


def resolve_precision(name: str, precision: str | None) -> str:
    """The precision ``name`` compiles at: the one given, else f32 (tvm-cuda: else
    $CONVDSL_GPU_PRECISION, else f32); one the backend has no kernels for is refused with the reason."""
    if name != "tvm-cuda":
        if precision == "f16":
            raise UsageError("--precision f16 is for tvm-cuda; on CPUs convdsl computes in f32, bf16 or int8",
                             hint="for 16-bit compute on the CPU use --precision bf16 (bf16 operands, f32 "
                                  "accumulation; needs AVX512_BF16), or --backend tvm-cuda --precision f16")
        return precision or "f32"
    given = precision
    if precision is None:
        precision = os.environ.get(GPU_PRECISION_ENV) or "f32"
    if precision == "int8":
        raise UsageError("--precision int8 is not available on tvm-cuda: convdsl has no int8 GPU kernels "
                         "(no dp4a or int8 tensor-core (IMMA) schedules), and emulating int8 in f32 would only "
                         "be slower", hint="use --precision f16 (tensor cores) or bf16 on tvm-cuda, or compile "
                                           "the quantized program for the CPU (--backend tvm-llvm --precision int8)")
    if precision not in CUDA_PRECISIONS:
        from convdsl.errors import did_you_mean

        where = f"{GPU_PRECISION_ENV}={precision}" if given is None else f"precision '{precision}'"
        raise UsageError(f"unknown tvm-cuda {where}",
                         hint=did_you_mean(precision, CUDA_PRECISIONS) or f"choose from {', '.join(CUDA_PRECISIONS)}")
    return precision


def check_cuda_precision(spec: TargetSpec, precision: str) -> None:
    """bf16 arithmetic exists on sm_80 (Ampere) and newer; older GPUs are refused, not emulated."""
    arch = str(spec.config.get("arch", ""))
    digits = arch[3:].rstrip("a") if arch.startswith("sm_") else ""
    if precision == "bf16" and digits.isdigit() and int(digits) < 80:
        raise UsageError(f"--precision bf16 on tvm-cuda needs sm_80 or newer (bfloat16 arithmetic); the target is {arch}",
                         hint="use --precision f16 (sm_53 and newer; tensor cores from sm_70) or f32")


def check_precision_of(graph: Graph, precision: str) -> None:
    """int8 runs the int8 kernels of a quantized program: a float program is refused with the way to quantize it."""
    if precision == "int8" and not any(op in QUANTIZED_OPS for op in graph.ops_used()):
        raise UsageError(f"--precision int8 compiles the int8 kernels of a quantized program, and {graph.name} has "
                         "no quantized convs or linears",
                         hint="quantize it first (convdsl quantize net.cdl --calib DATA -o q/), then compile "
                              "q/net.cdl with --precision int8")


def backend(name: str = "tvm-llvm", **options: Any) -> TVMBackend:
    """A configured TVM backend (``tvm-llvm`` / ``tvm-cuda``); options as ``TVMBackend``'s fields."""
    if name not in TARGET_BACKENDS:
        from convdsl.errors import did_you_mean

        raise UsageError(f"unknown TVM backend '{name}'",
                         hint=did_you_mean(name, TARGET_BACKENDS) or f"TVM backends: {', '.join(TARGET_BACKENDS)}")
    return TVMBackend(name, **options)


# ---- loading artifacts ---------------------------------------------------------------
_DTYPES = frozenset(NUMPY_DTYPE.values())
_TARGET_KIND = {"tvm-llvm": "llvm", "tvm-cuda": "cuda"}


def check_artifact(art) -> None:
    """Refuse, with the reason, a TVM folder that nothing vouches for, that is not what a TVM
    folder looks like, that another TVM built or that this machine cannot run: all before its
    library is opened.  ``art`` passed ``convdsl.artifact.open_artifact`` (every listed file is
    a regular file inside the folder with the listed SHA-256)."""
    folder, m = art.folder, art.manifest
    if m["backend"] not in TARGET_BACKENDS or "tvm" not in m:
        raise ArtifactError(f"{folder} was built by the {m['backend']} backend, not by TVM",
                            hint=f"run it with: convdsl run {folder}")
    info = m["tvm"]
    lib = info.get("library") if isinstance(info, dict) else None
    target = info.get("target") if isinstance(info, dict) else None
    dynamic = info.get("dynamic", []) if isinstance(info, dict) else None
    dynamic_ok = isinstance(dynamic, list) and all(isinstance(d, str) and d.isidentifier() for d in dynamic)
    shapes_ok = isinstance(info, dict) and dynamic_ok and all(
        io_specs_ok(info.get(k), symbolic=bool(dynamic)) and all(s["dtype"] in _DTYPES for s in info[k])
        for k in ("inputs", "outputs")) and all(  # an input dim is a size or a dynamic symbol
        isinstance(d, int) or d in dynamic for s in info["inputs"] for d in s["shape"])
    if not (isinstance(lib, str) and isinstance(target, dict) and target.get("kind") == _TARGET_KIND[m["backend"]]
            and shapes_ok and set(m["files"]) == {lib, "network.cdl", "weights.safetensors"}):
        raise ArtifactError(f"{folder}: manifest.json does not describe a {m['backend']} folder",
                            expected=f'a "tvm" section (library listed in "files", target of kind '
                                     f'{_TARGET_KIND[m["backend"]]}, input shapes of sizes and dynamic symbols) and the files '
                                     "lib.so, network.cdl, weights.safetensors",
                            hint="a compiled folder cannot change backend; recompile it")
    if art.trusted is None:
        raise ArtifactError(f"refusing to load native code from {folder}: nothing vouches for it",
                            notes=[f"it is not pinned with --expect-sha256, and {art.untrusted_because}"],
                            hint="if you trust who made it, run it with --expect-sha256 DIGEST, the 'artifact sha256' "
                                 "that convdsl compile printed for it (docs/artifacts.md)")
    built_with = m["versions"].get("tvm")
    have = tvm_versions()["tvm"]
    if built_with != have:
        raise UsageError(f"{folder} was compiled with TVM {built_with}, this is TVM {have}",
                         hint="compiled libraries are tied to the TVM runtime that built them; "
                              "recompile it here with convdsl compile")
    why = host_can_run(target)
    if why:
        raise UsageError(f"cannot run {folder} here: {why}",
                         notes=[f"target: {json.dumps(target)}"],
                         hint="recompile it for this machine, e.g. convdsl compile net.cdl --backend tvm-llvm")


def ensure_device_runtime(kind: str) -> None:
    """Load TVM's CUDA runtime library when only the core runtime is (TVM_USE_RUNTIME_LIB=1:
    a deployment without the compiler); the full TVM loads it itself."""
    import ctypes

    import tvm

    if kind != "cuda" or tvm.runtime.enabled("cuda"):
        return
    import tvm.target._ffi_api as target_api

    if not hasattr(target_api, "TargetCurrent"):  # runtime only: TVM's CUDA helpers ask for the current target
        target_api.TargetCurrent = lambda allow_none=True: None
    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if lib.exists():
        try:
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        except OSError:  # no CUDA driver here: check_artifact says so
            pass


def load(folder: str | os.PathLike, artifact=None, *, expect_sha256: str | None = None):
    """A compiled TVM artifact folder -> Runner (callable on a list of NumPy arrays or torch tensors).

    The library is native code.  It is loaded only after every check of ``open_artifact`` and
    ``check_artifact`` passed (the folder is pinned by ``expect_sha256`` or signed with your
    artifact key, every file matches its SHA-256), from a private copy of the bytes that were
    checked (docs/artifacts.md).  ``artifact``: the result of ``open_artifact`` when the caller
    already has it."""
    import tvm

    from convdsl.artifact import Artifact, open_artifact, private_copy

    from convdsl.backends.tvm.runtime import Runner
    from convdsl.backends.tvm.targets import configure_thread_pool

    configure_thread_pool()
    art = artifact if isinstance(artifact, Artifact) else open_artifact(folder, expect_sha256)
    check_artifact(art)  # first: a CUDA artifact on a machine without a GPU is a clear error
    info = art.manifest["tvm"]
    ensure_device_runtime(info["target"]["kind"])
    with private_copy(art, info["library"]) as path:
        lib = tvm.runtime.load_module(str(path))
    spec = TargetSpec(art.backend, info["target"])
    return Runner(lib, spec.device(), info["inputs"], info["outputs"], amx=uses_amx(info["target"]))
