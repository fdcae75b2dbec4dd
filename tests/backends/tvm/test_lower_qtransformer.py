"""qlayernorm, qgelu and qattention on tvm-llvm (backends/tvm/lower_qtransformer.py) against the torch
simulation (backends/torch/lower_quant.py), bit for bit; and packed_attention against torch's
scaled_dot_product_attention.

The ops are defined by exact integer sums and single float32 steps (convdsl/ir/ops/quant.py), so the
two backends must agree exactly, not within a step: every case checks ``np.array_equal`` and that the
output is not trivially equal (saturated or constant)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

import convdsl.backends.tvm as ctvm  # noqa: E402
from convdsl.backends.torch import build_module as torch_module  # noqa: E402
from convdsl.backends.tvm import lower_qtransformer as lq  # noqa: E402
from convdsl.backends.tvm.targets import cpu_flags  # noqa: E402

from .conftest import graph_of, one_op  # noqa: E402


def _build(g):
    return ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)


def _torch(g, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch_module(g)(torch.from_numpy(x)).numpy()


def _assert_bit_exact(got: np.ndarray, want: np.ndarray, min_distinct: int = 20) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    differ = int((got.astype(np.float64) != want.astype(np.float64)).sum())
    assert differ == 0 and np.array_equal(got, want), f"{differ} of {want.size} values differ"
    assert len(np.unique(want)) >= min_distinct  # not saturated: the comparison means something


# ---- qlayernorm ---------------------------------------------------------------------------------------
LN_CASES = {
    # name: (shape, x_scale, eps, out_dtype, out_scale, out_zp, input std)
    "vit-s-u8": ((1, 197, 384), 1e-3, 1e-6, "u8", 0.03, 128, 2.0),
    "odd-i8": ((2, 5, 37), 1e-3, 1e-5, "i8", 0.05, -3, 1.0),
    "2d-zp0": ((3, 96), 2e-4, 1e-5, "u8", 0.02, 0, 1.0),
    "clamped-input": ((4, 64), 1e-4, 1e-5, "u8", 0.03, 77, 6.0),  # |x| past 32767 * x_scale = 3.28
    "large-eps-odd-zp": ((2, 3, 50), 1e-2, 0.5, "i8", 0.01, 13, 0.3),  # saturating output, large E
}


@pytest.mark.parametrize("case", list(LN_CASES), ids=list(LN_CASES))
def test_qlayernorm_is_bit_exact(case):
    shape, x_scale, eps, dtype, out_scale, out_zp, std = LN_CASES[case]
    g = graph_of(one_op("qlayernorm", [list(shape)], x_scale=x_scale, eps=eps, out_dtype=dtype,
                        out_scale=out_scale, out_zp=out_zp), seed=1)
    rng = np.random.default_rng(2)
    x = (std * rng.standard_normal(shape) + 0.5 * rng.standard_normal(shape[-1])).astype(np.float32)
    _assert_bit_exact(_build(g)(x), _torch(g, x), min_distinct=10)


def test_ln_sum_dtypes():
    assert lq.ln_sum_dtypes(384) == ("int32", "int64")  # |C x_i - s1| <= 2 * 384 * 32767 < 2^31
    assert lq.ln_sum_dtypes(40000) == ("int64", "int64")


# ---- qgelu ----------------------------------------------------------------------------------------------
GELU_CASES = {
    "vit-s-mlp-u8": ((1, 197, 1536), "u8", 0.02, 10, 2.0),
    "odd-i8": ((3, 7, 11), "i8", 0.01, -7, 1.5),
    "zp128-wide": ((5, 33), "u8", 0.05, 128, 6.0),  # |x| / sqrt 2 past the erf clamp (6), outputs that clamp
}


@pytest.mark.parametrize("case", list(GELU_CASES), ids=list(GELU_CASES))
def test_qgelu_is_bit_exact(case):
    shape, dtype, out_scale, out_zp, std = GELU_CASES[case]
    g = graph_of(one_op("qgelu", [list(shape)], out_dtype=dtype, out_scale=out_scale, out_zp=out_zp))
    x = (std * np.random.default_rng(3).standard_normal(shape)).astype(np.float32)
    _assert_bit_exact(_build(g)(x), _torch(g, x))


def test_qgelu_dense_grid_with_a_fine_step():
    """2^20 inputs over GELU's negative lobe (outputs -0.17..0, none clamped) at a step of 0.001: a
    multiply-add that LLVM contracts into one FMA (one rounding where the definition has two) moves
    erf's last bit, and some of these outputs then land on the other side of a half step (without
    the rounding points 6 of them did; ``test_kernels_have_no_contracted_multiply_add`` is the direct check)."""
    x = np.linspace(-6.0, 0.005, 1 << 20, dtype=np.float32).reshape(1, -1)
    g = graph_of(one_op("qgelu", [list(x.shape)], out_dtype="u8", out_scale=0.001, out_zp=250))
    _assert_bit_exact(_build(g)(x), _torch(g, x), min_distinct=150)


# ---- qattention -----------------------------------------------------------------------------------------
ATT_CASES = {
    # name: (N, L, C, heads, in dtype, in_zp, in_scale, scale, out dtype, out_scale, out_zp)
    "vit-s-u8": (1, 197, 384, 6, "u8", 128, 0.01, None, "u8", 0.02, 128),
    "vit-s-f32-out": (1, 197, 384, 6, "u8", 128, 0.01, None, "f32", 1.0, 0),
    "vit-s-peaked": (1, 197, 384, 6, "u8", 131, 0.05, None, "i8", 0.05, -5),
    "odd-i8-batch": (2, 13, 40, 5, "i8", -3, 0.02, 0.3, "u8", 0.01, 0),
    "zp0-short": (3, 5, 24, 2, "u8", 0, 0.03, None, "i8", 0.04, 7),
    "long-int32-values": (1, 300, 128, 2, "u8", 128, 0.01, None, "u8", 0.02, 128),  # 300 * 255^2 > 2^24
    "wide-int32-logits": (1, 9, 640, 2, "i8", 0, 0.005, None, "f32", 1.0, 0),  # d = 320: 320 * 255^2 > 2^24
}


def _qattention_graph(n, length, c, heads, in_dtype, in_zp, in_scale, scale, out_dtype, out_scale, out_zp):
    kwargs = dict(heads=heads, in_scale=in_scale, in_zp=in_zp, out_dtype=out_dtype)
    if scale is not None:
        kwargs["scale"] = scale
    if out_dtype != "f32":
        kwargs.update(out_scale=out_scale, out_zp=out_zp)
    return graph_of(one_op("qattention", [[n, length, 3 * c]], dtypes=[in_dtype], **kwargs))


@pytest.mark.parametrize("case", list(ATT_CASES), ids=list(ATT_CASES))
def test_qattention_is_bit_exact(case):
    n, length, c, heads, in_dtype, *rest = ATT_CASES[case]
    g = _qattention_graph(n, length, c, heads, in_dtype, *rest)
    lo, hi = (0, 256) if in_dtype == "u8" else (-128, 128)
    x = np.random.default_rng(4).integers(lo, hi, (n, length, 3 * c)).astype(in_dtype.replace("u8", "uint8")
                                                                             .replace("i8", "int8"))
    _assert_bit_exact(_build(g)(x), _torch(g, x), min_distinct=10)


@pytest.mark.parametrize("length,width,paths", [
    (197, 64, ("float32", "float32")),  # ViT-S: 64 * 255^2 = 4.2M, 197 * 255^2 = 12.8M <= 2^24
    (258, 64, ("float32", "float32")),  # 258 * 255^2 = 16776450 <= 2^24
    (259, 64, ("float32", "int32")),
    (300, 258, ("float32", "int32")),
    (9, 259, ("int32", "float32")),
])
def test_qattention_chooses_exact_sums(length, width, paths):
    assert lq.qattention_paths(length, width) == paths


def _lowered(g, length: int) -> tuple[str, int, int]:
    """The lowered module's text for the host CPU, and the query rows and keys of its logits there."""
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    with make_target("tvm-llvm").tvm_target():
        return (lower_graph(g).script(), *lq.qattention_tiles(length))


@pytest.mark.parametrize("case,dtypes", [("vit-s-u8", ("float32", "float32")),
                                         ("long-int32-values", ("float32", "int32")),
                                         ("wide-int32-logits", ("int32", "float32"))])
def test_qattention_gemms_sum_in_the_chosen_dtype(case, dtypes):
    """The two GEMMs of the lowered module sum in the dtype ``qattention_paths`` chose, and the logits'
    rows are padded to whole vectors of the CPU (ViT-S's 197 keys: 208 on AVX-512), the queries to
    whole row tiles of the GEMM (``qattention_tiles``)."""
    import re

    n, length, c, heads, *_ = ATT_CASES[case]
    text, rows, keys = _lowered(_qattention_graph(n, length, c, heads, *ATT_CASES[case][4:]), length)
    found = re.findall(r'R\.matmul\([^)]*out_dtype="(\w+)"\)', text)
    assert found == list(dtypes), found
    lanes = 16 if "avx512f" in cpu_flags() else 8 if "avx2" in cpu_flags() else None
    if lanes is not None and length >= lanes:
        assert keys % lanes == 0 and length <= keys <= 1.08 * length + lanes and length <= rows < 2 * length
    assert f"R.Tensor(({n}, {heads}, {rows}, {keys})" in text  # the logits, padding included


@pytest.mark.skipif("fma" not in cpu_flags(), reason="the CPU has no FMA: nothing to contract")
def test_kernels_have_no_contracted_multiply_add():
    """No vfmadd in the qgelu, qlayernorm and softmax kernels' machine code: each listed float32
    step rounds on its own (``kernels.rounded``), though LLVM contracts every fmul + fadd it can."""
    from tvm import te

    from convdsl.backends.tvm.schedules import cpu
    from convdsl.backends.tvm.targets import make_target

    x = te.placeholder((4, 197, 64), "float32", name="x")
    g, b = te.placeholder((64,), "float32", name="g"), te.placeholder((64,), "float32", name="b")
    s = te.placeholder((4, 197, 208), "float32", name="s")
    kernels = {
        "qgelu": [x, te.compute(x.shape, lambda *i: lq.qgelu_value(x(*i), 50.0, 3, 0, 255, "uint8"))],
        "qlayernorm": [x, g, b, lq.qlayernorm_kernel(x, g, b, inv_x=1000.0, e=0.5, out_zp=3, qmin=0, qmax=255,
                                                     out_dtype="uint8")],
        "probs": [s, lq.qattention_probs(s, length=197, c=1e-4, out_dtype="float32")],
    }
    target = make_target("tvm-llvm").tvm_target()
    for name, args in kernels.items():
        func = te.create_prim_func(args)
        with target:
            func = cpu.schedule_func(func, target) or func
        asm = tvm.compile(tvm.IRModule({"main": func}), target=target).mod.inspect_source("asm")
        assert "vfmadd" not in asm and "vfmsub" not in asm and "vfnmadd" not in asm, name
        assert "vmulps" in asm, name  # vectorized (zmm or ymm): the check looked at the right code


@pytest.mark.parametrize("body,dtype", [
    ("qattention(heads=5, in_scale=0.02, in_zp=128, out_dtype=u8, out_scale=0.01, out_zp=128)", "u8"),
    ("qlayernorm(x_scale=0.001, out_scale=0.03, out_zp=128)", "f32"),
    ("qgelu(out_scale=0.02, out_zp=5)", "f32")], ids=["qattention", "qlayernorm", "qgelu"])
def test_dynamic_batch_is_bit_exact(body, dtype):
    """One library for every batch (``dynamic_batch``): the kernels' rows are a shape variable."""
    width = 120 if dtype == "u8" else 40
    g = graph_of(f"network t(x: {dtype}[N, 13, {width}]) {{\n    return x | {body}\n}}\n")
    m = ctvm.backend("tvm-llvm", progress=False, use_db=False, dynamic_batch=True).build_module(g)
    for n in (1, 3):
        rng = np.random.default_rng(n)
        x = (rng.integers(0, 256, (n, 13, width)).astype(np.uint8) if dtype == "u8"
             else rng.standard_normal((n, 13, width)).astype(np.float32))
        _assert_bit_exact(m(x), _torch(g, x), min_distinct=10)


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="the CPU cannot run AVX2 code")
def test_avx2_code_is_bit_exact_too():
    """Built for an AVX2 CPU (8 lanes, 16 registers: other key padding, GEMM tiles and row splits) and run
    here: still the torch simulation's values."""
    be = ctvm.backend("tvm-llvm", progress=False, use_db=False, target_json={"kind": "llvm", "mcpu": "haswell"})
    g = _qattention_graph(*ATT_CASES["vit-s-u8"])
    x = np.random.default_rng(4).integers(0, 256, (1, 197, 1152)).astype(np.uint8)
    _assert_bit_exact(be.build_module(g)(x), _torch(g, x), min_distinct=10)
    x = np.linspace(-6.0, 0.005, 1 << 20, dtype=np.float32).reshape(1, -1)
    g = graph_of(one_op("qgelu", [list(x.shape)], out_dtype="u8", out_scale=0.001, out_zp=250))
    _assert_bit_exact(be.build_module(g)(x), _torch(g, x), min_distinct=150)
    g = graph_of(one_op("qlayernorm", [[1, 197, 384]], x_scale=1e-3, out_scale=0.03, out_zp=128), seed=1)
    x = (2 * np.random.default_rng(2).standard_normal((1, 197, 384))).astype(np.float32)
    _assert_bit_exact(be.build_module(g)(x), _torch(g, x), min_distinct=10)


def test_gpu_kernels_round_half_to_even():
    """On tvm-cuda the kernels round with nearbyint (CUDA's round() takes ties away from zero); on CPUs
    with tirx.round (LLVM's nearbyint, vectorizable).  Lowering only: no GPU needed."""
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    g = graph_of(one_op("qgelu", [[2, 40]], out_scale=0.02, out_zp=5))
    for backend, want, not_want in (("tvm-cuda", "T.nearbyint(", "T.round("), ("tvm-llvm", "T.round(", "T.nearbyint(")):
        spec = make_target(backend, arch="sm_90") if backend == "tvm-cuda" else make_target(backend)
        with spec.tvm_target():
            text = lower_graph(g, backend).script()
        assert want in text and not_want not in text, backend


# ---- packed_attention: the float op ------------------------------------------------------------------------
@pytest.mark.parametrize("shape,heads,scale", [((2, 50, 192), 4, None), ((1, 197, 1152), 6, None),
                                               ((1, 7, 30), 5, 0.5)], ids=["odd-heads", "vit-s", "scale"])
def test_packed_attention_matches_sdpa(shape, heads, scale):
    kwargs = {"heads": heads} if scale is None else {"heads": heads, "scale": scale}
    g = graph_of(one_op("packed_attention", [list(shape)], **kwargs))
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    n, length, c3 = shape
    q, k, v = torch.from_numpy(x).view(n, length, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    want = want.transpose(1, 2).reshape(n, length, c3 // 3).numpy()
    got = _build(g)(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
