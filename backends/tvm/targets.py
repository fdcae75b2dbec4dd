"""Targets of the TVM backend: ``tvm-llvm`` (the host CPU) and ``tvm-cuda``.

A target is a JSON-able dict as TVM takes it (``{"kind": "llvm", "mcpu":
"icelake-server"}``); CUDA carries an llvm host.  The dict is what the
manifest records and what a loaded artifact is checked against.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from convdsl.errors import UsageError

TARGET_BACKENDS = ("tvm-llvm", "tvm-cuda")

# /proc/cpuinfo flags -> LLVM CPU name, most specific first.  Server names are
# chosen on purpose: a Sapphire Rapids host compiles as icelake-server, so the
# artifact runs on any AVX-512 VNNI server; AMX comes as +amx-tile,+amx-int8 in mattr (--precision int8
# on an AMX CPU, precision_mattr), so only those artifacts need it.
_X86_CPUS = (
    ("icelake-server", ("avx512f", "avx512_vnni", "avx512_vbmi2", "avx512ifma")),
    ("cascadelake", ("avx512f", "avx512_vnni")),
    ("skylake-avx512", ("avx512f", "avx512bw", "avx512vl")),
    ("haswell", ("avx2", "fma")),
    ("sandybridge", ("avx",)),
    ("x86-64", ()),
)
# the flags a binary built for that CPU may use: checked when an artifact is loaded (also for CPU
# names given with --target-json that the host never picks itself)
REQUIRED_FLAGS = {
    **dict(_X86_CPUS),
    "cooperlake": ("avx512f", "avx512_vnni", "avx512_bf16"),
    "sapphirerapids": ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"),
    "znver4": ("avx512f", "avx512_vnni", "avx512_bf16"),
}
# LLVM target features (``mattr``) a precision adds -> the /proc/cpuinfo flag each one needs
FEATURE_FLAGS = {"+avx512bf16": "avx512_bf16", "+amx-tile": "amx_tile", "+amx-bf16": "amx_bf16",
                 "+amx-int8": "amx_int8"}
PRECISIONS = ("f32", "bf16", "int8")


# TVM's CPU thread pool, unless the user set these: workers not pinned to cores, and a short spin
# (20,000 yielding polls, TVM's default is 300,000) before an idle worker sleeps.  Pinned workers
# spinning long are what made tvm-llvm collapse when another process used a core
# (benchmarks/contention.py: ResNet-18 on the shared 2-core machine 169 -> 39 ms, and 640 -> 233 ms
# with one more busy process).  Not spinning at all made every parallel region wake a sleeping worker,
# tens of microseconds on a VM: ResNet-18 int8, 2 threads, quiet, 3.07 ms against 1.61 with the short
# spin, and 2.86 against 2.73 with a busy process (docs/tvm.md, "Thread pool").  The pool reads them
# when it starts.
THREAD_POOL_DEFAULTS = {"TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": "20000"}


def configure_thread_pool() -> None:
    """Apply THREAD_POOL_DEFAULTS to this process where the environment does not set them (before
    TVM's thread pool first runs: building a network already runs kernels, for constant folding)."""
    import os

    for key, value in THREAD_POOL_DEFAULTS.items():
        os.environ.setdefault(key, value)


# Linux: a process may use AMX tile data only after asking (arch_prctl), else the first tile
# instruction is SIGILL (Documentation/arch/x86/xstate.rst)
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL = 158  # x86-64


def uses_amx(config: dict[str, Any]) -> bool:
    """Whether code built for the target ``config`` may execute AMX tile instructions."""
    mattr = config.get("mattr", [])
    if isinstance(mattr, str):
        mattr = mattr.split(",")
    cpu_amx = "amx_tile" in REQUIRED_FLAGS.get(str(config.get("mcpu", "")), ())
    return config.get("kind") == "llvm" and (cpu_amx or any(a.strip() in AMX_INT8_MATTR or a.strip() == "+amx-bf16"
                                                           for a in mattr)) \
        and not any(a.strip() == "-amx-tile" for a in mattr)


_amx_granted = False


def request_amx() -> None:
    """Ask Linux (once per process) for the AMX tile state; a clear error where it is refused."""
    global _amx_granted
    if _amx_granted:
        return
    import ctypes
    import os
    import platform

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise UsageError(f"this library uses AMX tiles, which convdsl enables on x86-64 Linux only "
                         f"(this is {platform.system()} {platform.machine()})",
                         hint="rebuild it with --no-amx (int8 on VNNI)")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_REQ_XCOMP_PERM),
                    ctypes.c_long(XFEATURE_XTILEDATA)) != 0:
        err = ctypes.get_errno()
        raise UsageError(f"the kernel refused AMX tile state to this process (arch_prctl ARCH_REQ_XCOMP_PERM: "
                         f"{os.strerror(err)}); its tile instructions would stop it with SIGILL",
                         hint="a Linux kernel >= 5.16 on a CPU with AMX is needed; or rebuild with --no-amx "
                              "(int8 on VNNI)")
    _amx_granted = True


def thread_pool() -> str:
    """TVM's CPU thread pool as this process runs it, e.g. ``2 threads, unbound, spin 0``: the
    worker count TVM reports (it starts the pool if it has not yet), and the binding and spin
    count it read from the environment (TVM's own defaults where unset: bound, 300000)."""
    import os

    import tvm

    try:
        threads = int(tvm.get_global_func("runtime.NumThreads")())
    except Exception:  # noqa: BLE001 - an older runtime without the query
        threads = os.environ.get("TVM_NUM_THREADS", "?")
    bind = "unbound" if os.environ.get("TVM_BIND_THREADS", "1") == "0" else "bound"
    return f"{threads} threads, {bind}, spin {os.environ.get('TVM_THREAD_POOL_SPIN_COUNT', '300000')}"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_family(flags: frozenset[str] | None = None) -> str:
    """The CPU family convdsl ships kernel databases for: ``avx512-amx`` (AVX-512 with AMX tiles),
    ``avx512`` (AVX-512 without AMX), ``avx2``, or ``generic``."""
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return "avx512-amx" if {"amx_tile", "amx_bf16", "amx_int8"} <= flags else "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "generic"


def _cpuinfo(key: str) -> str | None:
    """The first ``key`` line's value in ``/proc/cpuinfo``; None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_vendor() -> str:
    """``/proc/cpuinfo``'s vendor_id (``GenuineIntel``, ``AuthenticAMD``), "" where unknown: a shipped
    template database is used only on its own vendor's cores (``tophub.shipped_paths``)."""
    return _cpuinfo("vendor_id") or ""


def cpu_model() -> str:
    model = _cpuinfo("model name")
    if model is not None:
        return model
    import platform

    return platform.processor() or platform.machine()


AMX_INT8_MATTR = ["+amx-tile", "+amx-int8"]
# /proc/cpuinfo flags a CPU needs for convdsl's AMX kernels (schedules/amx.py): int8 (tdpbusd) and bf16
# (tdpbf16ps, whose other layers run vdpbf16ps)
AMX_INT8_FLAGS = frozenset({"amx_tile", "amx_int8"})
AMX_BF16_FLAGS = frozenset({"amx_tile", "amx_bf16", "avx512_bf16"})


def precision_mattr(precision: str, flags: frozenset[str] | None = None, amx: bool = True) -> list[str]:
    """LLVM features to add to the host target for ``precision`` (what its kernels execute).

    bf16 needs AVX512_BF16 (``vdpbf16ps``; every AMX CPU has it too): without it the answer is a
    clear error, never a slow emulation.  int8 on a CPU with AMX-INT8 gets ``+amx-tile,+amx-int8``
    (``schedules/amx.py``'s ``tdpbusd`` kernels), unless ``amx`` is False (VNNI instead)."""
    flags = cpu_flags() if flags is None else flags
    if precision == "int8":
        return list(AMX_INT8_MATTR) if amx and AMX_INT8_FLAGS <= flags else []
    if precision == "bf16" and amx and AMX_BF16_FLAGS <= flags:
        return ["+avx512bf16", "+amx-tile", "+amx-bf16"]
    if precision == "bf16":
        if "avx512_bf16" not in flags:
            raise UsageError(f"--precision bf16 needs a CPU with AVX512_BF16; this one ({cpu_model()}) has none",
                             hint="use --precision f32 (or int8 with a quantized program), or compile for another "
                                  "CPU with --target-json '{\"kind\": \"llvm\", \"mcpu\": \"sapphirerapids\"}'")
        return ["+avx512bf16"]
    return []


def check_precision(spec: "TargetSpec", precision: str) -> None:
    """Refuse a precision the target cannot execute natively (bf16 without AVX512_BF16)."""
    if precision not in PRECISIONS:
        from convdsl.errors import did_you_mean

        raise UsageError(f"unknown precision '{precision}'",
                         hint=did_you_mean(precision, PRECISIONS) or f"choose from {', '.join(PRECISIONS)}")
    if spec.is_gpu or precision != "bf16":
        return
    from tvm.target import codegen

    if not codegen.target_has_features("avx512bf16", spec.tvm_target()):
        raise UsageError(f"--precision bf16 needs AVX512_BF16, and the target {spec.describe()} has none",
                         hint="add \"mattr\": [\"+avx512bf16\"] to the target, pick an mcpu with it "
                              "(sapphirerapids, cooperlake, znver4), or use --precision f32")


@lru_cache(maxsize=1)
def host_cpu() -> str:
    """LLVM ``mcpu`` for this machine: from the CPU flags on x86, else LLVM's own guess."""
    flags = cpu_flags()
    if flags:
        for name, need in _X86_CPUS:
            if all(f in flags for f in need):
                return name
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


@lru_cache(maxsize=1)
def detected_cuda_arch() -> str | None:
    """``sm_XY`` of the first visible GPU, or None without one."""
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + str(dev.compute_version).replace(".", "")
    except Exception:  # noqa: BLE001 - no CUDA runtime: no GPU
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"sm_{major}{minor}"
    except Exception:  # noqa: BLE001
        pass
    return None


@dataclass(frozen=True)
class TargetSpec:
    """One compilation target: the backend name and TVM's target dict."""

    backend: str
    config: dict[str, Any] = field(hash=False)

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("cuda", "rocm", "vulkan", "metal", "opencl")

    def tvm_target(self):
        import tvm

        cfg = dict(self.config)
        host = cfg.pop("host", None)
        try:
            return tvm.target.Target(cfg, host=host) if host else tvm.target.Target(cfg)
        except (ValueError, RuntimeError, TypeError) as e:
            raise UsageError(f"TVM cannot make a target of {json.dumps(self.config)}: {str(e).splitlines()[0]}",
                             hint="see TVM's target kinds (llvm, cuda, ...) and their options") from None

    def device(self, index: int = 0):
        import tvm

        return tvm.device("cpu" if self.kind in ("llvm", "c") else self.kind, index)

    def describe(self) -> str:
        return json.dumps(self.config, sort_keys=True)

    def key(self) -> str:
        """Stable text that identifies the target in manifests and the tuning database."""
        return self.describe()


def make_target(backend: str, *, target_json: str | dict | None = None, arch: str | None = None,
                precision: str = "f32", amx: bool = True) -> TargetSpec:
    """The target of ``backend`` on this machine, or as given by ``target_json`` / ``arch``; the host
    target gets the LLVM features ``precision`` needs (bf16: ``+avx512bf16``; int8 on an AMX CPU:
    ``+amx-tile,+amx-int8`` unless ``amx`` is False)."""
    configure_thread_pool()
    if backend not in TARGET_BACKENDS:
        from convdsl.errors import did_you_mean

        raise UsageError(f"unknown TVM backend '{backend}'",
                         hint=did_you_mean(backend, TARGET_BACKENDS) or f"TVM backends: {', '.join(TARGET_BACKENDS)}")
    if target_json is not None:
        config = _parse_json(target_json)
    elif backend == "tvm-llvm":
        config = {"kind": "llvm", "mcpu": host_cpu()}
        if precision in PRECISIONS and precision_mattr(precision, amx=amx):
            config["mattr"] = precision_mattr(precision, amx=amx)
    else:
        config = {"kind": "cuda", "arch": arch or detected_cuda_arch() or "sm_90", "host": {"kind": "llvm"}}
    if arch is not None:
        if backend != "tvm-cuda":
            raise UsageError("--arch applies to tvm-cuda only", hint="for tvm-llvm give --target-json with an mcpu")
        if not arch.startswith("sm_") or not arch[3:].rstrip("a").isdigit():
            raise UsageError(f"bad CUDA architecture '{arch}'", expected="sm_XY, e.g. sm_80 or sm_90")
        config = {**config, "arch": arch}
    want_kind = "llvm" if backend == "tvm-llvm" else "cuda"
    if config.get("kind") != want_kind:
        raise UsageError(f"backend {backend} needs a target of kind '{want_kind}'", got=json.dumps(config),
                         hint=f"use --backend tvm-{config.get('kind')} for that target" if config.get("kind") else None)
    spec = TargetSpec(backend, config)
    check_available(spec)
    check_precision(spec, precision)
    return spec


def _parse_json(text: str | dict) -> dict[str, Any]:
    if isinstance(text, dict):
        return dict(text)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--target-json is not valid JSON ({e})", hint='e.g. {"kind": "llvm", "mcpu": "znver4"}') from None
    if not isinstance(config, dict) or "kind" not in config:
        raise UsageError("--target-json needs a JSON object with a \"kind\"", got=str(text))
    return config


def check_available(spec: TargetSpec) -> None:
    """Fail early, with a reason, when this TVM build cannot compile for ``spec``."""
    import tvm

    if spec.kind == "llvm" or spec.config.get("host"):
        if not tvm.get_global_func("target.build.llvm", allow_missing=True):
            raise UsageError("this TVM build has no LLVM code generator", hint="install apache-tvm from PyPI (built with LLVM)")
    if spec.kind == "cuda":
        if not tvm.get_global_func("target.build.cuda", allow_missing=True):
            raise UsageError("this TVM build cannot generate CUDA code (built without USE_CUDA)",
                             hint="install a TVM build with CUDA, or use --backend tvm-llvm")
        if shutil.which("nvcc") is None:
            from tvm.support import nvcc

            try:
                nvcc.find_cuda_path()
            except RuntimeError:
                raise UsageError("tvm-cuda needs the CUDA compiler (nvcc) to build kernels; none was found",
                                 hint="install the CUDA toolkit (no GPU is needed to cross-compile), "
                                      "or put nvcc on PATH") from None
    spec.tvm_target()  # TVM's own validation of the options


def host_can_run(config: dict[str, Any]) -> str | None:
    """Why this machine cannot run code built for ``config`` (None when it can)."""
    if config.get("kind") == "llvm":
        mcpu = config.get("mcpu")
        need = REQUIRED_FLAGS.get(mcpu)
        flags = cpu_flags()
        if need is not None and flags:
            missing = [f for f in need if f not in flags]
            if missing:
                return f"it was built for mcpu={mcpu}, and this CPU lacks {', '.join(missing)}"
        mattr = [FEATURE_FLAGS[a] for a in config.get("mattr", []) if a in FEATURE_FLAGS]
        if flags and any(f not in flags for f in mattr):
            return f"it uses {', '.join(f for f in mattr if f not in flags)}, which this CPU lacks"
        return None
    if config.get("kind") == "cuda":
        arch = detected_cuda_arch()
        if arch is None:
            return "it was built for CUDA and no GPU is visible here"
        want = str(config.get("arch", ""))
        if want and not cubin_runs_on(want, arch):
            return f"its kernels were built for {want}, and this GPU is {arch}"
        return None
    return None


def cubin_runs_on(built: str, gpu: str) -> bool:
    """CUDA binaries run on the same major architecture with an equal or newer minor
    (``sm_90a`` only on sm_90)."""
    b, g = built[3:], gpu[3:]
    if b.endswith("a"):
        return b[:-1] == g
    return b[:-1] == g[:-1] and int(b[-1]) <= int(g[-1])
