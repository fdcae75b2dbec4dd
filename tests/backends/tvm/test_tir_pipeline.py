"""backends/tvm/tir_pipeline.py: small "local" buffers (the kernels' register tiles) on the stack on CPUs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

from tvm import te, tirx  # noqa: E402

import convdsl.backends.tvm as ctvm  # noqa: E402
from convdsl.backends.torch import build_module as torch_module  # noqa: E402
from convdsl.backends.tvm import tir_pipeline  # noqa: E402
from convdsl.backends.tvm.schedules import kernels, schedule_module  # noqa: E402
from convdsl.backends.tvm.targets import make_target  # noqa: E402
from convdsl.lang.elaborate import elaborate  # noqa: E402

WORKSPACE = "__TVMBackendAllocWorkspace@GOTPCREL"


def _gemm_bias_asm() -> str:
    """A 198 x 64 x 128 GEMM with a bias epilogue (its 6 x 4-vector tile a "local" buffer, 1.5 KB) as the
    build schedules and compiles it."""
    x = te.placeholder((1, 198, 64), "float32", name="x")
    w = te.placeholder((8, 64, 16), "float32", name="w")
    b = te.placeholder((128,), "float32", name="b")
    y = kernels.dense_packed(x, w)
    y = te.compute(y.shape, lambda i, j, k: y[i, j, k] + b[k], name="bias")
    func = te.create_prim_func([x, w, b, y]).with_attr("global_symbol", "main")
    target = make_target("tvm-llvm").tvm_target()
    with target:
        mod = schedule_module(tvm.IRModule({"main": func}), target)
    assert 'scope="local"' in mod["main"].script()
    ex = tvm.compile(mod, target=target, tir_pipeline=tir_pipeline.pipeline(target))
    return ex.mod.inspect_source("asm")


def test_register_tiles_are_not_workspace_allocations(monkeypatch):
    """Each parallel task of a kernel with an epilogue called TVMBackendAllocWorkspace / FreeWorkspace for its
    accumulator tile (TVM keeps only "global" allocations under 1 KB on the stack): ViT-S's fc1 alone 6%
    slower than the same GEMM without an epilogue.  Through the pipeline, no workspace call is left."""
    assert WORKSPACE not in _gemm_bias_asm()
    monkeypatch.setattr(tir_pipeline, "ON", False)
    assert tir_pipeline.pipeline(make_target("tvm-llvm").tvm_target()) == "default"
    assert WORKSPACE in _gemm_bias_asm()  # TVM's default: the tile in the workspace


def test_only_small_local_allocations_are_put_on_the_stack():
    """A "global" scratch buffer may go to an extern micro-kernel assuming 64-byte alignment (the stack gives
    16): it stays a workspace allocation; so does a local buffer over STACK_BYTES."""
    def alloc(scope: str, n: int):
        buf = tirx.decl_buffer((n,), "float32", name=f"b_{scope}_{n}", scope=scope)
        return tirx.AllocBuffer(buf)

    small = tir_pipeline.STACK_BYTES // 4
    body = tirx.SeqStmt([alloc("local", small), alloc("global", 64), alloc("local", small + 1),
                         tirx.Evaluate(tirx.IntImm("int32", 0))])
    out = tir_pipeline._on_stack(body)  # noqa: SLF001 - the rewrite itself
    marked = [bool(s.annotations and "disable_lower_builtin" in s.annotations) for s in out.seq[:3]]
    assert marked == [True, False, False]


NET = """network m(x: f32[1, 32, 14, 14]) {
    y = x | conv2d(64, 3, pad=same) | batchnorm | relu
    return (y | conv2d(64, 1)) + y | flatten | linear(96) | gelu | linear(10)
}"""


def test_networks_compute_the_same_through_the_pipeline(monkeypatch):
    """The stack changes where the tiles live, not what is computed: torch's result either way (LLVM may
    contract a multiply and an add into one FMA differently, hence a tolerance, not equality)."""
    g = elaborate(NET)
    x = np.random.default_rng(0).standard_normal((1, 32, 14, 14)).astype(np.float32)
    want = torch_module(g).eval()(torch.from_numpy(x)).detach().numpy()
    got = {}
    for on in (True, False):
        monkeypatch.setattr(tir_pipeline, "ON", on)
        got[on] = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)(x)
    scale = float(np.abs(want).max())
    for y in got.values():
        assert np.abs(y - want).max() <= 1e-4 * scale
    assert np.abs(got[True] - got[False]).max() <= 1e-5 * scale
