"""int8 depthwise qconv2d on tvm-llvm (schedules/int8_depthwise.py): bit-exact with the torch simulation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

import convdsl.backends.tvm as ctvm  # noqa: E402
from convdsl.backends.torch import build_module as torch_module  # noqa: E402
from convdsl.backends.tvm.schedules import int8_depthwise  # noqa: E402

from .conftest import check_against_simulation, graph_of, one_op, randomize_int8_params  # noqa: E402

CASES = {
    # name: (input [C, H, W], k, stride, pad, dilation, act dtype, out dtype, relu)
    "3x3-u8-relu": ((32, 14, 14), 3, 1, 1, 1, "u8", "u8", True),
    "3x3-stride2": ((48, 15, 15), 3, 2, 1, 1, "u8", "u8", False),
    "i8-in-i8-out": ((16, 9, 9), 3, 1, 1, 1, "i8", "i8", True),
    "f32-output": ((16, 8, 8), 3, 1, 1, 1, "u8", "f32", False),
    "5x5-dilation2": ((16, 12, 12), 5, 1, 4, 2, "u8", "u8", False),
    "24-channels-fallback": ((24, 7, 7), 3, 1, 1, 1, "u8", "u8", True),  # not 16-divisible: the generic path
    # rows of 28+ output columns: the NCHW kernel (vectors along the row, any channel count)
    "nchw-3x3-u8-relu": ((16, 40, 40), 3, 1, 1, 1, "u8", "u8", True),
    "nchw-stride2-odd": ((24, 69, 67), 3, 2, 1, 1, "u8", "u8", False),  # 34 columns: a partial last vector
    "nchw-i8-5x5-dilation2": ((8, 36, 33), 5, 1, 4, 2, "i8", "i8", True),
    "nchw-f32-output": ((4, 33, 35), 3, 1, 1, 1, "u8", "f32", True),
    "nchw-stride3-7x7": ((3, 100, 110), 7, 3, 3, 1, "i8", "u8", False),  # 3 column phases
    "nchw-28-wide-one-tile": ((32, 28, 28), 3, 1, 1, 1, "u8", "u8", True),  # the row one register tile
    "nchw-stride2-to-28": ((48, 56, 56), 3, 2, 1, 1, "u8", "u8", False),
}


def _program(shape, k, stride, pad, dilation, act, out_dtype, relu):
    zp = 0 if act == "i8" else 128
    kwargs = dict(stride=stride, pad=pad, dilation=dilation, groups="depthwise", in_scale=0.05, in_zp=zp - 3,
                  out_dtype=out_dtype, relu=relu)
    if out_dtype != "f32":
        kwargs.update(out_scale=0.1, out_zp=-5 if out_dtype == "i8" else 7)
    g = graph_of(one_op(f"quantize(0.05, {zp - 3}, dtype={act}) | qconv2d", [[2, *shape]], shape[0], k, **kwargs))
    return randomize_int8_params(g)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_depthwise_int8_matches_torch_simulation(case):
    shape, k, stride, pad, dilation, act, out_dtype, relu = CASES[case]
    g = _program(shape, k, stride, pad, dilation, act, out_dtype, relu)
    m, want = check_against_simulation(g, shape, out_dtype)
    if out_dtype != "f32":
        assert len(np.unique(want)) > 3
    assert m.built.own == m.built.functions  # scheduled by convdsl


def test_exactness_bound():
    # the largest |sum| of MAX_TAPS products is still an exactly representable float32 integer
    assert int8_depthwise.MAX_TAPS * 255 * 128 <= 1 << 24
    assert int8_depthwise.fits(32, 9) and not int8_depthwise.fits(24, 9) and not int8_depthwise.fits(32, 23 * 23)
    assert int8_depthwise.layout(24, 9, 28) == "nchw" and int8_depthwise.layout(32, 9, 27) == "nchw16c"
    assert int8_depthwise.layout(32, 23 * 23, 64) is None


def _reference(x, w, bias, mult, stride, pad, dilation, in_zp, out_dtype, out_zp, lo, hi, relu):
    """The int8 depthwise conv in NumPy integers: acc = sum((x - in_zp) * w) + bias (int64, exact), then
    requantized as the torch simulation does: f32(acc) * mult, rounded half to even, + out_zp, clipped."""
    n, c, h, wd = x.shape
    k = w.shape[-1]
    xp = np.pad(x.astype(np.int64) - in_zp, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    ow = (wd + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    acc = np.zeros((n, c, oh, ow), np.int64)
    for a in range(k):
        for b in range(k):
            ya, xb = a * dilation, b * dilation
            acc += xp[:, :, ya:ya + stride * (oh - 1) + 1:stride, xb:xb + stride * (ow - 1) + 1:stride] \
                * w[None, :, a, b, None, None].astype(np.int64)
    v = (acc + bias[None, :, None, None]).astype(np.float32) * mult[None, :, None, None]
    if out_dtype == "float32":
        return np.maximum(v, 0) if relu else v
    return np.clip(np.round(v) + out_zp, lo, hi).astype(out_dtype)


BLOCKED = {
    # name: (C, H, W, k, stride, pad, dilation, in dtype, out dtype, relu, in_block, out_block)
    "u8-16c-in-and-out": (32, 14, 14, 3, 1, 1, 1, "uint8", "uint8", True, 16, 16),
    "stride2-odd": (48, 15, 13, 3, 2, 1, 1, "uint8", "uint8", False, 16, 16),
    "i8-8c-in-nchw-out": (32, 9, 9, 3, 1, 1, 1, "int8", "int8", True, 8, None),
    "nchw-in-16c-out-dilated": (16, 12, 12, 5, 1, 4, 2, "uint8", "uint8", False, None, 16),
    "f32-out-4c": (16, 8, 8, 3, 1, 1, 1, "uint8", "float32", True, 16, 4),
    "wide-rows": (32, 56, 56, 3, 2, 1, 1, "uint8", "uint8", True, 16, 16),
}


@pytest.mark.parametrize("case", list(BLOCKED))
def test_depthwise_int8_blocked_layout_is_exact(case):
    """``depthwise_int8`` reading and writing the blocked int8 layout [N, C/b, H, W, b] (layout.py's int8
    activations between convs), scheduled by convdsl's depthwise rule: bit-exact with the integer reference."""
    from tvm import te

    from convdsl.backends.tvm.schedules.cpu import schedule_func
    from convdsl.backends.tvm.targets import make_target

    c, h, wd, k, stride, pad, dilation, in_dtype, out_dtype, relu, ib, ob = BLOCKED[case]
    rng = np.random.default_rng(3)
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    in_zp = 125 if in_dtype == "uint8" else -3
    x = rng.integers(0, 256, (2, c, h, wd)) if in_dtype == "uint8" else rng.integers(-128, 128, (2, c, h, wd))
    x = x.astype(in_dtype)
    w = rng.integers(-128, 128, (c, k, k)).astype(np.int8)
    bias = rng.integers(-3000, 3000, c).astype(np.int32)
    mult = (rng.random(c) * 0.02 + 0.002).astype(np.float32)
    want = _reference(x, w, bias.astype(np.int64), mult, stride, pad, dilation, in_zp, out_dtype, -5, lo, hi, relu)

    def block(a, b):  # NCHW -> [N, C/b, H, W, b]
        n_, c_, h_, w_ = a.shape
        return np.ascontiguousarray(a.reshape(n_, c_ // b, b, h_, w_).transpose(0, 1, 3, 4, 2))

    tx = te.placeholder((2, c // ib, h, wd, ib) if ib else (2, c, h, wd), in_dtype, name="x")
    tw = te.placeholder((c // 16, k, k, 16), "float32", name="w")
    tb, tm = te.placeholder((c,), "int32", name="bias"), te.placeholder((c,), "float32", name="mult")
    y = int8_depthwise.depthwise_int8(tx, tw, tb, tm, pads=(pad,) * 4, stride=(stride, stride),
                                      dilation=(dilation, dilation), in_zp=in_zp, out_dtype=out_dtype, out_zp=-5,
                                      lo=lo, hi=hi, relu=relu, in_block=ib, out_block=ob)
    target = make_target("tvm-llvm").tvm_target()
    f = schedule_func(te.create_prim_func([tx, tw, tb, tm, y]), target)
    assert f is not None and "int8_dw_pack_local" in f.script()  # the depthwise rule, padded rows in L1
    lib = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=target)
    args = [block(x, ib) if ib else x, int8_depthwise.pack_weight(w[:, None]), bias, mult,
            np.zeros([int(d) for d in y.shape], out_dtype)]
    ts = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
    lib["main"](*ts)
    got = ts[-1].numpy()
    expect = block(want, ob) if ob else want
    if out_dtype == "float32":
        np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6 * float(np.abs(expect).max()))
    else:
        assert int(np.abs(got.astype(np.int64) - expect.astype(np.int64)).max()) == 0
        assert len(np.unique(expect)) > 3


@pytest.mark.parametrize("big,bias_dtype", [(2**24, "float32"), (2**24 + 1, "int32")], ids=["float-bias", "int32-bias"])
def test_depthwise_int8_bias_at_two_to_the_24(big, bias_dtype):
    """Biases up to 2^24 are added to the f32 accumulator as float32 (exact integers, one rounding of the exact sum,
    as the int32 sum's conversion), larger ones in int32: bit-exact either way (two channels at +-big, their
    multipliers 100 / 2^24, so that their outputs stay inside the range)."""
    from tvm import relax

    from convdsl.backends.tvm.lowering import lower_graph

    shape = (16, 14, 14)
    g = _program(shape, 3, 1, 1, 1, "u8", "i8", False)
    bias = next(k for k, a in g.params.items() if a.dtype == np.int32)
    scale = next(k for k, _ in g.params.items() if k.endswith("w_scale"))
    g.params[bias][:2] = [big, -big]
    g.params[scale][:2] = 200 / 2**24  # multiplier in_scale * w_scale / out_scale = 100 / 2^24
    dtypes = [v.args[1].fields[2].ty.dtype for b in lower_graph(g, "tvm-llvm")["main"].body.blocks for v in
              (b.value for b in b.bindings) if isinstance(v, relax.Call) and v.op.name == "relax.call_tir"
              and v.args[0].name_hint.startswith("qconv2d")]
    assert [str(d) for d in dtypes] == [bias_dtype]
    x = (3 * np.random.default_rng(2).standard_normal((2, *shape))).astype(np.float32)
    got = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)(x)
    with torch.no_grad():
        want = torch_module(g)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 3 and -128 < want[:, :2].min() and want[:, :2].max() < 127


@pytest.mark.parametrize("out_dtype,out_scale,out_zp", [("u8", 6 / 255, 0), ("i8", 0.01, -20), ("u8", 0.1, 200)],
                         ids=["relu6-range", "six-beyond-the-range", "zero-point-high"])
def test_depthwise_relu6_quantize_folds_the_clip(out_dtype, out_scale, out_zp):
    """depthwise conv -> ReLU6 -> quantize: the ReLU6 clip is folded into the quantize's clamp
    (``amx_epilogue``, ``amx.clip_bounds``): the clip gone from the graph, and the outputs bit-exact with the
    torch simulation, whether 6 falls inside the quantized range or beyond it."""
    from tvm import relax

    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.amx_epilogue import fuse_requant_epilogues
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    src = f"""network t(x: f32[2, 32, 15, 15]) {{
    return x | quantize(0.05, 125, dtype=u8)
             | qconv2d(32, 3, pad=1, groups="depthwise", in_scale=0.05, in_zp=125, out_dtype=f32)
             | relu6 | quantize({out_scale}, {out_zp}, dtype={out_dtype})
}}
"""
    g = graph_of(src)
    rng = np.random.default_rng(5)
    for key, a in list(g.params.items()):
        if a.dtype == np.int8:
            g.params[key] = rng.integers(-128, 128, a.shape).astype(np.int8)
        elif key.endswith("w_scale"):
            g.params[key] = (rng.random(a.shape) * 0.02 + 0.002).astype(np.float32)

    def clips(mod) -> int:
        return sum(isinstance(b.value, relax.Call) and b.value.op.name == "relax.clip"
                   for block in mod["main"].body.blocks for b in block.bindings)

    mod = blocked_layout(lower_graph(g, "tvm-llvm"), "int8")
    assert clips(mod) == 3 and clips(fuse_requant_epilogues(mod)) == 2  # the input quantize, the output one
    x = (3 * rng.standard_normal((2, 32, 15, 15))).astype(np.float32)
    got = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)(x)
    with torch.no_grad():
        want = torch_module(g)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 3
