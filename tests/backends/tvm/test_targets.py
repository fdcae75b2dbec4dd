"""Targets: host CPU detection, --target-json / --arch, tvm-cuda cross-compilation
without a GPU, and clear errors for targets this TVM cannot build."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from convdsl.artifact import write_artifact
from convdsl.backends.tvm import backend
from convdsl.backends.tvm.targets import cubin_runs_on, host_cpu, make_target
from convdsl.cli import main
from convdsl.errors import UsageError

from .conftest import graph_of

NET = """
network small(x: f32[N, 4, 8, 8]) {
    y = x | conv2d(8, 3, pad=1) | batchnorm | relu | conv2d(8, 3, pad=1, groups=depthwise)
    return y | global_avgpool(keepdim=false) | linear(3) | softmax
}
"""


def test_host_cpu_is_an_llvm_cpu_name():
    import tvm

    name = host_cpu()
    assert name and " " not in name
    tvm.target.Target({"kind": "llvm", "mcpu": name})  # LLVM knows it


def test_target_json_overrides_and_is_checked():
    spec = make_target("tvm-llvm", target_json='{"kind": "llvm", "mcpu": "skylake-avx512"}')
    assert spec.config == {"kind": "llvm", "mcpu": "skylake-avx512"}
    with pytest.raises(UsageError, match="needs a target of kind 'llvm'"):
        make_target("tvm-llvm", target_json='{"kind": "cuda"}')
    with pytest.raises(UsageError, match="not valid JSON"):
        make_target("tvm-llvm", target_json="{kind: llvm")
    with pytest.raises(UsageError, match="cannot make a target"):
        make_target("tvm-llvm", target_json='{"kind": "llvm", "no-such-option": 1}')
    with pytest.raises(UsageError, match="bad CUDA architecture"):
        make_target("tvm-cuda", arch="90")
    with pytest.raises(UsageError, match="unknown TVM backend"):
        make_target("tvm-rocm")


def test_cuda_binary_compatibility():
    assert cubin_runs_on("sm_80", "sm_86") and not cubin_runs_on("sm_86", "sm_80")
    assert cubin_runs_on("sm_90a", "sm_90") and not cubin_runs_on("sm_90", "sm_100")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="tvm-cuda cross-compilation needs nvcc")
def test_cuda_cross_compiles_without_a_gpu(tmp_path):
    g = graph_of(NET)
    out = tmp_path / "cuda"
    files = write_artifact(g, out, backend("tvm-cuda", arch="sm_80", use_db=False))
    assert "lib.so" in files and (out / "lib.so").stat().st_size > 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["backend"] == "tvm-cuda" and m["tvm"]["target"]["arch"] == "sm_80"
    assert m["tvm"]["target"]["host"] == {"kind": "llvm"}


def test_missing_nvcc_is_a_clear_error(monkeypatch):
    import tvm.support.nvcc as nvcc

    monkeypatch.setattr(shutil, "which", lambda name: None)

    def no_cuda():
        raise RuntimeError("no cuda")

    monkeypatch.setattr(nvcc, "find_cuda_path", no_cuda)
    with pytest.raises(UsageError, match="needs the CUDA compiler"):
        make_target("tvm-cuda")


def test_compile_cli_options(tmp_path):
    (tmp_path / "net.cdl").write_text(NET)
    cli = CliRunner()
    res = cli.invoke(main, ["compile", str(tmp_path / "net.cdl"), "-b", "torch", "-o", str(tmp_path / "a"), "--tune", "2"])
    assert res.exit_code == 2 and "only the TVM backends take --tune" in res.output
    res = cli.invoke(main, ["compile", str(tmp_path / "net.cdl"), "-b", "tvm-llvm", "-o", str(tmp_path / "b"),
                            "--target-json", '{"kind": "llvm", "mcpu": "haswell"}', "--no-db"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["tvm"]["target"] == {"kind": "llvm", "mcpu": "haswell"}


def test_cpu_family_from_flags():
    from convdsl.backends.tvm.targets import cpu_family

    avx512 = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma"})
    assert cpu_family(avx512) == "avx512"
    assert cpu_family(avx512 | {"avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}) == "avx512-amx"
    assert cpu_family(frozenset({"avx2", "fma"})) == "avx2"
    assert cpu_family(frozenset()) == "generic"


def test_artifact_features_checked_against_the_cpu(monkeypatch):
    from convdsl.backends.tvm import targets

    monkeypatch.setattr(targets, "cpu_flags", lambda: frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                                                                 "avx512_vbmi2", "avx512ifma", "avx2", "fma"}))
    cfg = {"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+avx512bf16"]}
    assert "avx512_bf16" in targets.host_can_run(cfg)
    assert "amx_tile" in targets.host_can_run({"kind": "llvm", "mcpu": "sapphirerapids"})
    assert targets.host_can_run({"kind": "llvm", "mcpu": "icelake-server"}) is None


def test_thread_pool_defaults_do_not_override_the_user(monkeypatch):
    import os

    from convdsl.backends.tvm.targets import THREAD_POOL_DEFAULTS, configure_thread_pool

    monkeypatch.setenv("TVM_BIND_THREADS", "1")
    monkeypatch.delenv("TVM_THREAD_POOL_SPIN_COUNT", raising=False)
    configure_thread_pool()
    assert os.environ["TVM_BIND_THREADS"] == "1"
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == THREAD_POOL_DEFAULTS["TVM_THREAD_POOL_SPIN_COUNT"]
