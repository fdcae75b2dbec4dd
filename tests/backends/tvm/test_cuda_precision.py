"""tvm-cuda's --precision (f32 | f16 | bf16; int8 refused): what the flag resolves to, where it is
refused, what it does to the module, and the manifest's tvm.precision.  Cross-compile only (nvcc;
no GPU): the numbers of f16/bf16 compute against torch are checked on the CPU in
test_gpu_lowering.py, and on a GPU by benchmarks/gpu_check.py."""
from __future__ import annotations

import json
import re
import shutil

import pytest

tvm = pytest.importorskip("tvm")

from click.testing import CliRunner  # noqa: E402

from convdsl.artifact import write_artifact  # noqa: E402
from convdsl.backends.tvm import backend  # noqa: E402
from convdsl.backends.tvm.backend import GPU_PRECISION_ENV, check_cuda_precision, resolve_precision  # noqa: E402
from convdsl.backends.tvm.build import optimize_passes  # noqa: E402
from convdsl.backends.tvm.lowering import lower_graph  # noqa: E402
from convdsl.backends.tvm.targets import TargetSpec  # noqa: E402
from convdsl.cli import main  # noqa: E402
from convdsl.errors import ConvDSLError, UsageError  # noqa: E402

from .conftest import graph_of  # noqa: E402

CUDA = TargetSpec("tvm-cuda", {"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}})
NEEDS_NVCC = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to cross-compile for sm_90")
NET = """network t(x: f32[2, 16, 14, 14]) {
    y = x | conv2d(96, 3, pad=1, bias=false) | batchnorm | relu
    return y | conv2d(128, 1) | relu
}
"""


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(GPU_PRECISION_ENV, raising=False)


# ---- what the flag resolves to ----------------------------------------------------------------
@pytest.mark.parametrize("precision", ["f32", "f16", "bf16"])
def test_cuda_takes_f32_f16_bf16(precision):
    assert backend("tvm-cuda", precision=precision).precision == precision


def test_cuda_default_is_f32_and_the_environment_is_only_a_fallback(monkeypatch):
    assert backend("tvm-cuda").precision == "f32"
    monkeypatch.setenv(GPU_PRECISION_ENV, "f16")
    assert backend("tvm-cuda").precision == "f16"  # the older way still works when no flag is given
    assert backend("tvm-cuda", precision="bf16").precision == "bf16"  # the flag wins
    assert backend("tvm-llvm").precision == "f32"  # CPUs never read it


def test_a_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(GPU_PRECISION_ENV, "f61")
    with pytest.raises(UsageError, match=GPU_PRECISION_ENV) as e:
        backend("tvm-cuda")
    assert "f16" in (e.value.hint or "")


def test_cuda_int8_is_refused_with_the_reason():
    with pytest.raises(UsageError) as e:
        backend("tvm-cuda", precision="int8")
    assert "dp4a" in e.value.message and "tvm-llvm" in (e.value.hint or "")
    assert isinstance(e.value, ConvDSLError)


def test_cpu_f16_is_refused_with_the_way_to_16_bit():
    with pytest.raises(UsageError, match="f16 is for tvm-cuda") as e:
        backend("tvm-llvm", precision="f16")
    assert "bf16" in (e.value.hint or "")


def test_cuda_bf16_needs_sm80():
    check_cuda_precision(CUDA, "bf16")  # sm_90: fine
    check_cuda_precision(TargetSpec("tvm-cuda", {"kind": "cuda", "arch": "sm_75"}), "f16")
    with pytest.raises(UsageError, match="sm_80"):
        check_cuda_precision(TargetSpec("tvm-cuda", {"kind": "cuda", "arch": "sm_75"}), "bf16")


def test_unknown_precision_suggests_one():
    with pytest.raises(UsageError, match="unknown tvm-cuda precision") as e:
        resolve_precision("tvm-cuda", "bf61")
    assert "bf16" in (e.value.hint or "")


# ---- the CLI ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name,precision,message", [
    ("tvm-cuda", "int8", "no int8 GPU kernels"),
    ("tvm-llvm", "f16", "f16 is for tvm-cuda"),
])
def test_cli_refusals(tmp_path, backend_name, precision, message):
    src = tmp_path / "t.cdl"
    src.write_text(NET)
    r = CliRunner().invoke(main, ["compile", str(src), "-b", backend_name, "--precision", precision,
                                  "-o", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (tmp_path / "out" / "lib.so").exists()


# ---- what it does to the module (no nvcc needed) ----------------------------------------------
def _gemm_dtypes(precision):
    g = graph_of(NET)
    with CUDA.tvm_target():
        mod = tvm.transform.Sequential(optimize_passes(CUDA, precision))(lower_graph(g, "tvm-cuda"))
    gemms = {n.name_hint: f for n, f in mod.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and "conv_gemm" in n.name_hint}
    assert len(gemms) == 2, sorted(n.name_hint for n in mod.functions)
    # the dtypes of each GEMM's parameter buffers, from its signature (TVMScript leaves float32 out)
    return {n: {dt or "float32" for dt in re.findall(r'T\.Buffer\(\((?:[^()]|\([^()]*\))*\)(?:, "(\w+)")?\)',
                                                      f.script().split("def main(", 1)[1].split("\n", 1)[0])}
            for n, f in gemms.items()}


@pytest.mark.parametrize("precision,dtype", [("f32", "float32"), ("f16", "float16"), ("bf16", "bfloat16")])
def test_the_gemms_read_the_precision(precision, dtype):
    for name, dtypes in _gemm_dtypes(precision).items():
        assert dtype in dtypes, (name, dtypes)
        if precision == "f32":
            assert dtypes == {"float32"}, (name, dtypes)


def test_optimize_passes_read_the_environment_only_without_a_precision(monkeypatch):
    monkeypatch.setenv(GPU_PRECISION_ENV, "f16")
    assert all("float16" in d for d in _gemm_dtypes(None).values())
    assert all(d == {"float32"} for d in _gemm_dtypes("f32").values())


# ---- cross-compiled artifact ------------------------------------------------------------------
@NEEDS_NVCC
def test_f16_artifact_records_its_precision_and_runs_half_on_tensor_cores(tmp_path):
    be = backend("tvm-cuda", arch="sm_90", use_db=False, precision="f16", progress=False)
    write_artifact(graph_of(NET), tmp_path / "a", be)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["tvm"]["precision"] == "f16"
    assert manifest["tvm"]["target"]["arch"] == "sm_90"
    assert [i["dtype"] for i in manifest["tvm"]["inputs"]] == ["float32"]  # the interface stays f32
    mods = [be.last_build.executable.mod]
    while mods and mods[-1].kind != "cuda":
        mods.append(mods[-1].imports[0])
    source = mods[-1].inspect_source()
    kernels = re.findall(r'__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(', source)
    gemms = [k for k in kernels if "conv_gemm" in k]
    assert gemms, kernels
    assert "wmma::mma_sync" in source or "mma.sync" in source  # tensor cores
    assert re.search(r"half\s*\*\s*__restrict__", source)  # half buffers in a kernel's parameters
