"""int8 depthwise qconv2d on tvm-llvm (schedules/int8_depthwise.py): bit-exact with the torch simulation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

import convdsl.backends.tvm as ctvm  # noqa: E402
from convdsl.backends.torch import build_module as torch_module  # noqa: E402
from convdsl.backends.tvm.schedules import int8_depthwise  # noqa: E402

from .conftest import graph_of, one_op  # noqa: E402

CASES = {
    # name: (input [C, H, W], k, stride, pad, dilation, act dtype, out dtype, relu)
    "3x3-u8-relu": ((32, 14, 14), 3, 1, 1, 1, "u8", "u8", True),
    "3x3-stride2": ((48, 15, 15), 3, 2, 1, 1, "u8", "u8", False),
    "i8-in-i8-out": ((16, 9, 9), 3, 1, 1, 1, "i8", "i8", True),
    "f32-output": ((16, 8, 8), 3, 1, 1, 1, "u8", "f32", False),
    "5x5-dilation2": ((16, 12, 12), 5, 1, 4, 2, "u8", "u8", False),
    "24-channels-fallback": ((24, 7, 7), 3, 1, 1, 1, "u8", "u8", True),  # not 16-divisible: the generic path
    # rows of 32+ output columns: the NCHW kernel (vectors along the row, any channel count)
    "nchw-3x3-u8-relu": ((16, 40, 40), 3, 1, 1, 1, "u8", "u8", True),
    "nchw-stride2-odd": ((24, 69, 67), 3, 2, 1, 1, "u8", "u8", False),  # 34 columns: a partial last vector
    "nchw-i8-5x5-dilation2": ((8, 36, 33), 5, 1, 4, 2, "i8", "i8", True),
    "nchw-f32-output": ((4, 33, 35), 3, 1, 1, 1, "u8", "f32", True),
    "nchw-stride3-7x7": ((3, 100, 110), 7, 3, 3, 1, "i8", "u8", False),  # 3 column phases
}


def _program(shape, k, stride, pad, dilation, act, out_dtype, relu):
    zp = 0 if act == "i8" else 128
    kwargs = dict(stride=stride, pad=pad, dilation=dilation, groups="depthwise", in_scale=0.05, in_zp=zp - 3,
                  out_dtype=out_dtype, relu=relu)
    if out_dtype != "f32":
        kwargs.update(out_scale=0.1, out_zp=-5 if out_dtype == "i8" else 7)
    g = graph_of(one_op(f"quantize(0.05, {zp - 3}, dtype={act}) | qconv2d", [[2, *shape]], shape[0], k, **kwargs))
    rng = np.random.default_rng(0)
    for key, a in list(g.params.items()):
        if a.dtype == np.int8:
            g.params[key] = rng.integers(-128, 128, a.shape).astype(np.int8)  # the full range: -128 included
        elif a.dtype == np.int32:
            g.params[key] = rng.integers(-3000, 3000, a.shape).astype(np.int32)
        elif key.endswith("w_scale"):
            g.params[key] = (rng.random(a.shape) * 0.02 + 0.002).astype(np.float32)
    return g


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_depthwise_int8_matches_torch_simulation(case):
    shape, k, stride, pad, dilation, act, out_dtype, relu = CASES[case]
    g = _program(shape, k, stride, pad, dilation, act, out_dtype, relu)
    x = (3 * np.random.default_rng(1).standard_normal((2, *shape))).astype(np.float32)
    m = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)
    got = m(x)
    with torch.no_grad():
        want = torch_module(g)(torch.from_numpy(x)).numpy()
    if out_dtype == "f32":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
    else:
        assert got.dtype == want.dtype
        assert int(np.abs(got.astype(np.int64) - want.astype(np.int64)).max()) == 0  # exact
        assert len(np.unique(want)) > 3
    assert m.built.own == m.built.functions  # scheduled by convdsl


def test_exactness_bound():
    # the largest |sum| of MAX_TAPS products is still an exactly representable float32 integer
    assert int8_depthwise.MAX_TAPS * 255 * 128 <= 1 << 24
    assert int8_depthwise.fits(32, 9) and not int8_depthwise.fits(24, 9) and not int8_depthwise.fits(32, 23 * 23)
    assert int8_depthwise.layout(24, 9, 32) == "nchw" and int8_depthwise.layout(32, 9, 31) == "nchw16c"
    assert int8_depthwise.layout(32, 23 * 23, 64) is None
