"""benchmarks/roofline.py's FLOP count: the multiply-accumulates the peak's instruction does, not the epilogue."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

tvm = pytest.importorskip("tvm")
from tvm import te  # noqa: E402
from tvm.s_tir.analysis import estimate_tir_flops  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from roofline import epilogue_bound, mac_flops  # noqa: E402

from convdsl.backends.tvm.schedules import kernels  # noqa: E402


def _func(*tensors):
    return te.create_prim_func(list(tensors))


def test_a_gemm_with_a_gelu_epilogue_counts_its_products_only() -> None:
    m, k, n = 12, 40, 24
    a, b = te.placeholder((m, k), name="a"), te.placeholder((k, n), name="b")
    r = te.reduce_axis((0, k), "r")
    y = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="gemm")
    g = te.compute((m, n), lambda i, j: y[i, j] * 0.5 * (1.0 + te.erf(y[i, j] * 0.7071)), name="gelu")
    f = _func(a, b, g)
    assert mac_flops(f) == 2 * m * n * k
    assert float(estimate_tir_flops(tvm.IRModule({"main": f}))) > 2 * m * n * k  # the epilogue is arithmetic too


def test_an_int8_product_through_casts_counts_and_other_reductions_do_not() -> None:
    x = te.placeholder((8, 36), "uint8", name="x")
    w = te.placeholder((16, 36), "int8", name="w")
    r = te.reduce_axis((0, 36), "r")
    acc = te.compute((8, 16), lambda i, j: te.sum(x[i, r].astype("int32") * w[j, r].astype("int32"), axis=r))
    assert mac_flops(_func(x, w, acc)) == 2 * 8 * 16 * 36
    s = te.placeholder((4, 50), name="s")
    rm, rs = te.reduce_axis((0, 50), "rm"), te.reduce_axis((0, 50), "rs")
    mx = te.compute((4,), lambda i: te.max(s[i, rm], axis=rm), name="row_max")
    sm = te.compute((4,), lambda i: te.sum(te.exp(s[i, rs] - mx[i]), axis=rs), name="row_sum")
    assert mac_flops(_func(s, sm)) == 0  # softmax's max and sum: no products


@pytest.mark.parametrize("keys", [32, 48])
def test_attention_rows_counts_its_two_products(keys: int) -> None:
    """convdsl's one-kernel attention: Q K^T and P V (padded keys included), not the max, sum, exponentials or
    the division, which TVM's estimate adds (the Zen 4 profile's "105% of peak" was those)."""
    heads, rows, d = 6, 18, 64
    q = te.placeholder((1, heads, rows, d), name="q")
    kt = te.placeholder((1, heads, d, keys), name="kt")
    v = te.placeholder((1, heads, keys, d), name="v")
    y = kernels.attention_rows(q, kt, v, 0.125, keys - 3, rows, 16)
    f = _func(q, kt, v, y)
    assert mac_flops(f) == 2 * 2 * heads * rows * keys * d
    assert float(estimate_tir_flops(tvm.IRModule({"main": f}))) > 1.2 * mac_flops(f)


@pytest.mark.parametrize("channels, bound", [(16, True), (256, False)])
def test_requantizing_few_input_channels_bounds_an_int8_kernel_below_its_peak(channels: int, bound: bool) -> None:
    """A 1x1 int8 conv's requantization (scale, round, zero point, clip) per output: with 16 input channels
    it is as much arithmetic as the products' vpdpbusd lanes can hide (MobileNet-V2's 16 -> 96 conv), with
    256 it is not."""
    x = te.placeholder((64, channels), "uint8", name="x")
    w = te.placeholder((96, channels), "int8", name="w")
    r = te.reduce_axis((0, channels), "r")
    acc = te.compute((64, 96), lambda i, j: te.sum(x[i, r].astype("int32") * w[j, r].astype("int32"), axis=r))
    bias = te.placeholder((96,), "int32", name="bias")
    y = te.compute((64, 96), lambda i, j: te.max(te.min(  # lower_quant's: (acc + bias) * scale, then the next
        te.round((acc[i, j] + bias[j]).astype("float32") * 0.02 * 1.7) + 3.0, 255.0), 0.0).astype("uint8"),
        name="requant")  # layer's quantize: * 1 / scale, round, + zero point, clip
    f = _func(x, w, bias, y)
    all_ops = float(estimate_tir_flops(tvm.IRModule({"main": f}))) / mac_flops(f)
    peak = {"f32": 232.0, "int8": 932.0}  # Zen 4, 2 threads, GFLOP/s
    assert all_ops == pytest.approx(1 + 6 / (2 * channels))  # bias add, two scales, zero point, clip
    assert (epilogue_bound(all_ops, peak) < peak["int8"]) is bound
