"""The TVM backend object: one target plus build options, with the backend
interface convdsl's API and CLI use (build_module, runner, write_artifact,
manifest_extra), and ``load`` for artifact folders."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convdsl.errors import UsageError
from convdsl.ir.graph import Graph
from convdsl.ir.types import NUMPY_DTYPE, bind_dim

from convdsl.backends.tvm.targets import TARGET_BACKENDS, TargetSpec, host_can_run, make_target

LIBRARY = "lib.so"


def tvm_versions() -> dict[str, str]:
    import tvm
    import tvm_ffi

    return {"tvm": str(tvm.__version__), "tvm_ffi": str(getattr(tvm_ffi, "__version__", "unknown"))}


def io_specs(graph: Graph, bind: dict[str, int] | None = None) -> tuple[list[dict], list[dict]]:
    """Concrete (bound) shapes of the inputs and outputs, as the compiled module takes them."""
    sizes = {**graph.symbols, **(bind or {})}

    def specs(names, types):
        return [{"name": n, "shape": [bind_dim(d, sizes) for d in t.shape], "dtype": NUMPY_DTYPE.get(t.dtype, t.dtype)}
                for n, t in zip(names, types)]

    return specs(graph.inputs, graph.input_types()), specs(graph.output_names, graph.output_types())


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
    precision: str = "f32"  # f32 | bf16 | int8 (targets.PRECISIONS)
    last_build: Any = field(default=None, repr=False)  # the Built of the latest build, for the manifest

    def __str__(self) -> str:
        return self.name

    @property
    def spec(self) -> TargetSpec:
        if not hasattr(self, "_spec"):
            self._spec = make_target(self.name, target_json=self.target_json, arch=self.arch, precision=self.precision)
        return self._spec

    # -- building -------------------------------------------------------------------
    def build(self, graph: Graph):
        from convdsl.backends.tvm.build import BuildOptions, build

        check_precision_of(graph, self.precision)
        opts = BuildOptions(tune=self.tune, db=self.db, use_db=self.use_db, progress=self.progress,
                            precision=self.precision)
        self.last_build = build(graph, self.spec, opts)
        return self.last_build

    def _runner_for(self, built, graph: Graph):
        from convdsl.backends.tvm.runtime import Runner

        why = host_can_run(self.spec.config)
        if why:
            raise UsageError(f"cannot run {self.name} code here: {why}",
                             hint="write an artifact with -o and run it on a matching machine")
        ins, outs = io_specs(graph)
        return Runner(built.executable, self.spec.device(), ins, outs)

    def build_module(self, graph: Graph) -> Module:
        built = self.build(graph)
        return Module(built, self._runner_for(built, graph))

    def runner(self, graph: Graph):
        return self._runner_for(self.build(graph), graph)

    def load_runner(self, folder: str | os.PathLike, manifest: dict[str, Any] | None = None):
        return load(folder, manifest)

    # -- artifacts ------------------------------------------------------------------
    def write_artifact(self, graph: Graph, out: Path) -> list[str]:
        built = self.build(graph)
        built.executable.export_library(str(Path(out) / LIBRARY))
        self.library_sha256 = file_sha256(Path(out) / LIBRARY)
        return [LIBRARY]

    def manifest_extra(self, graph: Graph) -> dict[str, Any]:
        built = self.last_build
        ins, outs = io_specs(graph)
        import torch

        extra = {
            "backend": self.name,
            "versions": {"torch": torch.__version__, **tvm_versions()},
            "tvm": {
                "target": self.spec.config,
                "precision": self.precision,
                "library": LIBRARY,
                "weights": "constants inside the library",
                "inputs": ins,
                "outputs": outs,
                "compile_seconds": {k: round(v, 3) for k, v in built.seconds.items()},
                "kernels": built.functions,
                "kernels_from_database": built.scheduled if not self.spec.is_gpu else None,
                "tuning": built.tuning.as_dict() if built.tuning else None,
            },
        }
        if getattr(self, "library_sha256", None):
            extra["tvm"]["library_sha256"] = self.library_sha256
        return extra


QUANTIZED_OPS = ("qconv1d", "qconv2d", "qconv3d", "qlinear")


def check_precision_of(graph: Graph, precision: str) -> None:
    """int8 runs the int8 kernels of a quantized program: a float program is refused with the way to quantize it."""
    if precision == "int8" and not any(op in QUANTIZED_OPS for op in graph.ops_used()):
        raise UsageError(f"--precision int8 compiles the int8 kernels of a quantized program, and {graph.name} has "
                         "no quantized convs or linears",
                         hint="quantize it first (convdsl quantize net.cdl --calib DATA -o q/), then compile "
                              "q/net.cdl with --precision int8")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def backend(name: str = "tvm-llvm", **options: Any) -> TVMBackend:
    """A configured TVM backend (``tvm-llvm`` / ``tvm-cuda``); options as ``TVMBackend``'s fields."""
    if name not in TARGET_BACKENDS:
        from convdsl.errors import did_you_mean

        raise UsageError(f"unknown TVM backend '{name}'",
                         hint=did_you_mean(name, TARGET_BACKENDS) or f"TVM backends: {', '.join(TARGET_BACKENDS)}")
    return TVMBackend(name, **options)


# ---- loading artifacts ---------------------------------------------------------------
def check_artifact(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Refuse, with the reason, an artifact this machine or this TVM cannot run."""
    backend_name = manifest.get("backend")
    if backend_name not in TARGET_BACKENDS or "tvm" not in manifest:
        raise UsageError(f"{folder} was built by the {backend_name} backend, not by TVM",
                         hint=f"run it with: convdsl run {folder}")
    info = manifest["tvm"]
    built_with = manifest.get("versions", {}).get("tvm")
    have = tvm_versions()["tvm"]
    if built_with != have:
        raise UsageError(f"{folder} was compiled with TVM {built_with}, this is TVM {have}",
                         hint="compiled libraries are tied to the TVM runtime that built them; "
                              "recompile it here with convdsl compile")
    why = host_can_run(info.get("target", {}))
    if why:
        raise UsageError(f"cannot run {folder} here: {why}",
                         notes=[f"target: {json.dumps(info.get('target'))}"],
                         hint="recompile it for this machine, e.g. convdsl compile net.cdl --backend tvm-llvm")
    lib = Path(folder) / info.get("library", LIBRARY)
    if not lib.is_file():
        raise UsageError(f"{folder} has no compiled library {lib.name}", hint="recompile the artifact")
    want = info.get("library_sha256")
    if want and file_sha256(lib) != want:
        raise UsageError(f"{lib} does not match the checksum in manifest.json (changed after compiling)",
                         hint="recompile the artifact")


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


def load(folder: str | os.PathLike, manifest: dict[str, Any] | None = None):
    """A compiled TVM artifact folder -> Runner (callable on a list of NumPy arrays or torch tensors).

    The library is native code: load only artifacts you trust (the manifest's
    checksum guards against accidental changes, not against an attacker)."""
    import tvm

    from convdsl.artifact import read_manifest

    from convdsl.backends.tvm.runtime import Runner
    from convdsl.backends.tvm.targets import configure_thread_pool

    configure_thread_pool()
    manifest = manifest or read_manifest(folder)
    check_artifact(folder, manifest)  # first: a CUDA artifact on a machine without a GPU is a clear error
    ensure_device_runtime(manifest.get("tvm", {}).get("target", {}).get("kind", "llvm"))
    info = manifest["tvm"]
    lib = tvm.runtime.load_module(str(Path(folder) / info.get("library", LIBRARY)))
    spec = TargetSpec(manifest["backend"], info["target"])
    return Runner(lib, spec.device(), info["inputs"], info["outputs"])
