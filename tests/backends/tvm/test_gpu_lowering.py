"""GPU lowering (backends/tvm/schedules/gpu.py): structure on a CUDA target, numbers on the CPU.

Numbers: the rewritten convs (im2col + GEMM, depthwise direct, bf16/f16 casts) are compiled
for tvm-llvm and compared with the torch backend.  Structure: after the passes the conv
PrimFuncs are GEMMs that DLight's Matmul rule schedules, depthwise convs are spatial kernels,
and the module cross-compiles for sm_90 (nvcc; no GPU needed).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from convdsl.backends.tvm.build import codegen_passes, optimize_passes, schedule_passes  # noqa: E402
from convdsl.backends.tvm.lowering import lower_graph  # noqa: E402
from convdsl.backends.tvm.schedules.gpu import (  # noqa: E402
    ComputeIn, ConvToGemm, DepthwiseDirect, gpu_passes, tensor_core_rule,
)
from convdsl.backends.tvm.targets import TargetSpec  # noqa: E402

from .conftest import assert_close, graph_of, one_op, random_inputs, torch_outputs  # noqa: E402

CUDA = TargetSpec("tvm-cuda", {"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}})
LLVM = TargetSpec("tvm-llvm", {"kind": "llvm"})

# (op, input shape, out channels, attrs): stride, padding, dilation, groups, 1x1, odd sizes
CONVS = [
    ("conv2d", (2, 3, 9, 9), 8, dict(k=3, pad=1)),
    ("conv2d", (1, 5, 11, 7), 6, dict(k=3, stride=2, pad="same")),
    ("conv2d", (2, 4, 13, 13), 7, dict(k=3, pad=2, dilation=2)),
    ("conv2d", (1, 6, 10, 9), 9, dict(k=[3, 5], stride=[2, 1], pad=[1, 2])),
    ("conv2d", (2, 8, 7, 7), 16, dict(k=1, bias=False)),  # 1x1: the input is its own im2col
    ("conv2d", (1, 8, 9, 9), 4, dict(k=1, stride=2)),  # 1x1 strided: im2col subsamples
    ("conv2d", (1, 3, 15, 15), 5, dict(k=7, stride=2, pad=3)),  # ResNet's stem
    ("conv2d", (2, 4, 9, 9), 8, dict(k=3, stride=2, pad="same", groups=2)),  # grouped: TOPI keeps it
    ("conv2d", (2, 6, 9, 9), 6, dict(k=3, pad=1, groups="depthwise")),
    ("conv2d", (1, 4, 10, 10), 8, dict(k=3, stride=2, pad=1, groups=4)),  # depthwise, multiplier 2
    ("conv2d", (1, 3, 9, 11), 3, dict(k=5, pad=4, dilation=2, groups="depthwise", bias=False)),
    ("conv2d", (1, 4, 8, 8), 4, dict(k=3, pad=1, pad_mode="reflect")),  # padded by a gather first
    ("conv1d", (2, 3, 17), 5, dict(k=3, pad="same", dilation=2)),
    ("conv1d", (1, 4, 16), 4, dict(k=5, stride=2, pad=2, groups="depthwise")),
    ("conv3d", (1, 2, 5, 6, 7), 3, dict(k=3, pad=1)),
    ("conv3d", (1, 3, 5, 5, 5), 3, dict(k=3, stride=2, pad=1, groups="depthwise")),
]


def _ids(case):
    op, shape, c, attrs = case
    return f"{op}-{'x'.join(map(str, shape))}-{c}-" + "-".join(f"{k}{v}" for k, v in attrs.items())


def _graph(case, seed=0):
    op, shape, c, attrs = case
    return graph_of(one_op(op, [shape], c, **attrs), seed=seed)


def _run_llvm(mod: tvm.IRModule, inputs: list[np.ndarray]) -> list[np.ndarray]:
    ex = tvm.compile(mod, "llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    outs = out if isinstance(out, (list, tuple)) or hasattr(out, "__len__") and not hasattr(out, "numpy") else [out]
    return [np.asarray(o.numpy()) for o in outs]


def _prims(mod: tvm.IRModule) -> dict[str, "tvm.tirx.PrimFunc"]:
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _calls(mod: tvm.IRModule) -> set[str]:
    """Names of the Relax ops called in ``main``."""
    names: set[str] = set()

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            names.add(e.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


# ---- numbers on the CPU ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CONVS, ids=_ids)
def test_rewritten_conv_matches_torch(case):
    # im2col + GEMM (groups 1), depthwise direct; the rest unchanged (checked below)
    g = _graph(case)
    xs = random_inputs(g)
    mod = tvm.transform.Sequential([DepthwiseDirect, ConvToGemm])(lower_graph(g, "tvm-llvm"))
    assert_close(_run_llvm(mod, xs), torch_outputs(g, xs))


@pytest.mark.parametrize("case", CONVS, ids=_ids)
def test_rewrite_replaces_the_conv(case):
    op, shape, c, attrs = case
    mod = tvm.transform.Sequential([DepthwiseDirect, ConvToGemm])(lower_graph(_graph(case), "tvm-llvm"))
    groups = attrs.get("groups", 1)
    kept = groups not in (1, "depthwise") and groups != shape[1]
    assert (f"relax.nn.{op}" in _calls(mod)) == kept
    names = set(_prims(mod))
    if not kept:
        assert names & {"conv_gemm", "depthwise"}


@pytest.mark.parametrize("precision,tol", [("f16", 2e-2), ("bf16", 5e-2)])
def test_low_precision_matches_torch_within_its_rounding(precision, tol):
    g = graph_of(one_op("conv2d", [(1, 8, 9, 9)], 16, k=3, pad=1), seed=1)
    xs = random_inputs(g)
    passes = [ComputeIn("bfloat16")] if precision == "bf16" else [relax.transform.ToMixedPrecision(out_dtype="float32")]
    mod = tvm.transform.Sequential(passes + [DepthwiseDirect, ConvToGemm])(lower_graph(g, "tvm-llvm"))
    assert "float16" in mod.script() or "bfloat16" in mod.script()
    assert_close(_run_llvm(mod, xs), torch_outputs(g, xs), tol=tol)


def test_gpu_passes_leave_cpu_targets_alone():
    assert gpu_passes(LLVM) == []
    assert len(gpu_passes(CUDA, "f16")) == 3
    with pytest.raises(ValueError, match="precision"):
        gpu_passes(CUDA, "f8")


# ---- structure on CUDA ---------------------------------------------------------------------------
NET = """network t(x: f32[2, 16, 14, 14]) {
    y = x | conv2d(96, 3, pad=1, bias=false) | batchnorm | relu
    z = y | conv2d(96, 3, groups=depthwise, pad=1) | batchnorm | relu6
    w = z | conv2d(128, 1) | relu
    a = w | conv2d(128, 3, stride=2, pad=1)
    b = w | conv2d(128, 1, stride=2)
    return a + b
}
"""


def _cuda_optimized(precision="f32"):
    g = graph_of(NET)
    mod = lower_graph(g, "tvm-cuda")
    target = CUDA.tvm_target()
    with target:
        mod = tvm.transform.Sequential(gpu_passes(CUDA, precision) + optimize_passes(CUDA))(mod)
    return mod, target


@pytest.mark.parametrize("precision", ["f32", "f16"])
def test_convs_are_gemms_that_dlight_matmul_schedules(precision):
    from tvm.s_tir import dlight as dl

    mod, target = _cuda_optimized(precision)
    prims = _prims(mod)
    gemms = {n: f for n, f in prims.items() if "conv_gemm" in n}
    assert len(gemms) == 4, sorted(prims)  # every groups-1 conv, its epilogue fused in
    assert not any(n.startswith("fused_conv2d") or n == "conv2d" for n in prims), sorted(prims)
    assert any("relu" in n or "add" in n for n in gemms), sorted(gemms)  # epilogue fused into the GEMM
    for name, f in gemms.items():
        assert dl.gpu.Matmul().apply(f, target, False) is not None, name
    dw = [f for n, f in prims.items() if "depthwise" in n]
    assert len(dw) == 1 and dl.gpu.Fallback().apply(dw[0], target, False) is not None
    with target:
        mod = tvm.transform.Sequential(schedule_passes(CUDA, False))(mod)
    for name in gemms:  # DLight's default rules pick Matmul first, and schedule everything
        assert mod[name].attrs.get("tirx.is_scheduled", False), name
    if precision == "f16":  # tensor cores (every GEMM extent > 64 here): float16 in, float32 accumulated
        for name in gemms:
            assert "wmma.matrix_a" in mod[name].script(), name


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to cross-compile")
@pytest.mark.parametrize("precision", ["f32", "f16"])
def test_cross_compiles_for_sm90(precision):
    mod, target = _cuda_optimized(precision)
    with target:
        mod = tvm.transform.Sequential(schedule_passes(CUDA, False))(mod)
    ex = tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(codegen_passes(CUDA)))
    assert ex is not None


# ---- tensor cores for small float16 GEMMs (SmallTensorCoreMatmul) --------------------------------
# every GEMM here has an extent <= 64, which DLight's Matmul leaves on SIMT: a 64-channel 3x3 conv
# (I = 64), a 1x1 conv to 32 channels reading 64 (I = 32, K = 64), attention with head dim 32
SMALL = """network t(x: f32[2, 16, 14, 14]) {
    y = x | conv2d(64, 3, pad=1, bias=false) | batchnorm | relu
    return y | conv2d(32, 1) | relu
}
"""
ATTENTION = """network t(x: f32[2, 48, 64]) {
    return x | mhsa(2)
}
"""


def _scheduled(src: str, precision: str):
    g = graph_of(src)
    target = CUDA.tvm_target()
    with target:
        mod = tvm.transform.Sequential(gpu_passes(CUDA, precision) + optimize_passes(CUDA))(lower_graph(g, "tvm-cuda"))
        before = _prims(mod)
        mod = tvm.transform.Sequential(schedule_passes(CUDA, False))(mod)
    return before, mod, target


def test_small_f16_gemms_run_on_tensor_cores():
    from tvm.s_tir import dlight as dl

    before, mod, target = _scheduled(SMALL, "f16")
    gemms = [n for n in before if "conv_gemm" in n]
    assert len(gemms) == 2, sorted(before)
    for name in gemms:
        # DLight's own Matmul keeps these on SIMT (the test would pass without the rule otherwise)
        assert "wmma" not in dl.gpu.Matmul().apply(before[name], target, False).mod["main"].script(), name
        script = mod[name].script()
        assert mod[name].attrs.get("tirx.is_scheduled", False), name
        assert "wmma.matrix_a" in script and "tvm_mma_sync" in script, name


def test_small_f16_attention_matmuls_run_on_tensor_cores():
    before, mod, _ = _scheduled(ATTENTION, "f16")
    matmuls = [n for n in before if "matmul" in n]
    assert matmuls, sorted(before)
    assert all("tvm_mma_sync" in mod[n].script() for n in matmuls), matmuls


@pytest.mark.parametrize("src", [SMALL, ATTENTION])
def test_the_tensor_core_rule_declines_f32(src):
    before, mod, target = _scheduled(src, "f32")
    rule = tensor_core_rule()
    for name, f in before.items():
        assert rule.apply(f, target, False) is None, name
        assert "wmma" not in mod[name].script(), name


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to cross-compile")
@pytest.mark.parametrize("src", [SMALL, ATTENTION])
def test_small_f16_gemm_kernels_cross_compile_to_mma_sync(src):
    import re

    _, mod, target = _scheduled(src, "f16")
    ex = tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(codegen_passes(CUDA)))
    mods = [ex.mod]
    while mods[-1].kind != "cuda":
        mods.append(mods[-1].imports[0])
    source = mods[-1].inspect_source()
    kernels = dict(re.findall(r'__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\((.*?)(?=__global__|\Z)',
                              source, re.S))
    gemms = {k: body for k, body in kernels.items() if "conv_gemm" in k or "matmul" in k}
    assert gemms, sorted(kernels)
    for name, body in gemms.items():
        assert "wmma::mma_sync" in body, name
