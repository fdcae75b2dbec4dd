"""int8 on Intel AMX tiles: schedules/amx.py's micro-kernel and kernel (``tdpbusd``).

Every output is compared with numpy (the micro-kernel) or the torch int8 simulation
(convdsl/ir/ops/quant.py's exact arithmetic: the kernels must be bit-exact).  Skipped,
with the reason, on a CPU without AMX-INT8; the geometry and packing tests run anywhere.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

import convdsl.backends.tvm as ctvm  # noqa: E402
from convdsl.backends.torch import build_module as torch_module  # noqa: E402
from convdsl.backends.tvm.schedules import amx, amx_transformer  # noqa: E402
from convdsl.backends.tvm.targets import AMX_BF16_FLAGS, AMX_INT8_FLAGS, cpu_flags  # noqa: E402

from .conftest import graph_of, one_op, quantized_resnet18  # noqa: E402
from .test_int8_vnni import EXAMPLES, _random_int_params, _steps, _torch  # noqa: E402

HAS_AMX = AMX_INT8_FLAGS <= cpu_flags()
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="the CPU has no AMX-INT8 (amx_tile, amx_int8)")


def _int8(amx_on: bool = True):
    return ctvm.backend("tvm-llvm", progress=False, use_db=False, precision="int8", amx=amx_on)


def _instructions(backend, graph) -> dict[str, int]:
    from convdsl.backends.tvm.lower_quant import int8_instructions

    with backend.spec.tvm_target():
        return int8_instructions(graph)


# ---- geometry and packing (any CPU) ------------------------------------------------------------------------
def _reference_reads(geo: amx.Geometry):
    """For every output pixel and tap, the input (row, column) it reads, from the conv's definition."""
    (pt, _, pl, _), (sh, sw), (dh, dw) = geo.pads, geo.stride, geo.dilation
    return {(oh, ow, ky, kx): (oh * sh + ky * dh - pt, ow * sw + kx * dw - pl)
            for oh in range(geo.oh) for ow in range(geo.ow) for ky in range(geo.kh) for kx in range(geo.kw)}


@pytest.mark.parametrize("h,w,k,stride,pad,dil", [(7, 7, 3, 1, 1, 1), (9, 11, 3, 2, 1, 1), (8, 8, 1, 2, 0, 1),
                                                  (13, 10, 7, 2, 3, 1), (12, 12, 3, 1, 2, 2), (1, 197, 1, 1, 0, 1)])
def test_geometry_finds_every_tap_of_every_pixel(h, w, k, stride, pad, dil):
    """The packed input's plane/offset arithmetic reads exactly the pixels the conv's definition reads."""
    geo = amx.Geometry(1, 64, h, w, (pad,) * 4, (stride, stride), (dil, dil), k, k)
    hp, wp = h + 2 * pad, w + 2 * pad
    phases = geo.phases
    offs = geo.offsets() // amx.TILE_K
    for (oh, ow, ky, kx), (y, x) in _reference_reads(geo).items():
        flat = offs[ky * k + kx] + oh * geo.ww + ow  # pixel index in the packed channel block
        q, rest = divmod(int(flat), geo.hh * geo.ww)
        py, px = phases[q]
        yy, xx = divmod(rest, geo.ww)
        assert (yy * stride + py - pad, xx * stride + px - pad) == (y, x)
        assert 0 <= y + pad < hp and 0 <= x + pad < wp
    # the last block's reads stay inside the packed block
    assert geo.rows + int(geo.offsets(rows_only=True).max()) <= geo.hh * geo.ww
    assert geo.rows % amx.BLOCK_ROWS == 0 and geo.rows >= geo.oh * geo.ww


@pytest.mark.parametrize("rows_first", [False, True])
def test_block_loop_visits_every_call_once_in_its_order(rows_first):
    """Each (image, pair, block of rows) is called once; rows first, the first core's half of the loop covers
    the first half of the rows, every pair of channel blocks of them (channel blocks first: the first pairs)."""
    import tvm
    from tvm import tirx

    images, pairs, blocks = 2, 3, 4
    stmt = amx.block_loop(images, pairs, blocks, "", lambda n, j, pb: tirx.call_extern("int32", "f", n, j, pb),
                          rows_first=rows_first)
    loop = stmt.body
    seen = []
    for t in range(images * pairs * blocks):
        analyzer = tvm.sym.Analyzer()
        analyzer.bind(loop.loop_var, tirx.const(t, "int32"))
        seen.append(tuple(int(analyzer.simplify(a)) for a in loop.body.value.args[1:]))
    assert sorted(seen) == [(n, j, pb) for n in range(images) for j in range(pairs) for pb in range(blocks)]
    first_half = seen[: pairs * blocks // 2]  # image 0, the first core's share of it
    if rows_first:
        assert {pb for _, _, pb in first_half} == {0, 1} and {j for _, j, _ in first_half} == {0, 1, 2}
    else:
        assert {j for _, j, _ in first_half} == {0, 1} and {pb for _, _, pb in first_half} == {0, 1, 2, 3}


def test_conv_block_loop_takes_rows_first_when_the_input_outweighs_the_weights():
    big_input = amx.Geometry(1, 64, 56, 56, (0, 0, 0, 0), (1, 1), (1, 1), 1, 1)  # 64 -> 64 at 56x56
    assert big_input.rows_first(64)
    big_weights = amx.Geometry(1, 512, 7, 7, (1, 1, 1, 1), (1, 1), (1, 1), 3, 3)  # 512 -> 512 3x3 at 7x7
    assert not big_weights.rows_first(512)


def test_pack_weight_is_b_tiles_of_quads():
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (40, 70, 3, 3)).astype(np.int8)
    p = amx.pack_weight(w)
    assert p.shape == (4, 2, 9, 16, 16, 4)  # 40 -> 64 output channels (two pairs of 16), 70 -> 128 inputs
    for o, c, ky, kx in [(0, 0, 0, 0), (39, 69, 2, 2), (17, 65, 1, 0)]:
        assert p[o // 16, c // 64, ky * 3 + kx, c % 64 // 4, o % 16, c % 4] == w[o, c, ky, kx]
    assert not p[2:, :, :, :, 8:].any() or not p.reshape(64, -1)[40:].any()


def test_layers_choose_amx_only_with_amx_int8_in_the_target():
    from convdsl.backends.tvm.lower_quant import use_amx

    w = np.zeros((32, 64, 3, 3), np.int8)
    with tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server"}):
        assert not use_amx(w)
    with tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]}):
        assert use_amx(w) and use_amx(w[:, :16]) and use_amx(w[:, :8])  # 8-32 input channels: narrow tiles
        assert not use_amx(w[:, :3])  # an RGB stem: VNNI


def test_narrow_layers_pack_only_the_channels_they_have():
    """8-32 input channels: A tile rows of 8 / 16 / 32 bytes (the fewest that hold them), the weights' B tiles
    k / 4 quads deep, the geometry's planes and offsets in rows of that many bytes."""
    assert [amx.row_bytes(c) for c in (8, 9, 16, 17, 24, 32, 33, 64, 200)] == [8, 16, 16, 32, 32, 32, 64, 64, 64]
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (40, 24, 3, 3)).astype(np.int8)
    p = amx.pack_weight(w, 32)
    assert p.shape == (4, 1, 9, 8, 16, 4)  # 24 channels -> one block of 32 (8 quads), 40 -> 64 outputs
    for o, c, ky, kx in [(0, 0, 0, 0), (39, 23, 2, 2), (17, 13, 1, 0)]:
        assert p[o // 16, 0, ky * 3 + kx, c // 4, o % 16, c % 4] == w[o, c, ky, kx]
    assert not p[:, :, :, 6:].any()  # channels 24..31: zero
    wide = amx.Geometry(1, 64, 9, 11, (1,) * 4, (2, 2), (1, 1), 3, 3)
    narrow = amx.Geometry(1, 16, 9, 11, (1,) * 4, (2, 2), (1, 1), 3, 3, 16, 16)
    assert np.array_equal(wide.offsets() // amx.TILE_K, narrow.offsets() // 16)
    assert narrow.plane * 4 == wide.plane


def test_no_amx_switch_and_manifest_target():
    from convdsl.backends.tvm.targets import precision_mattr, uses_amx

    flags = frozenset({"avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"})
    assert precision_mattr("int8", flags) == ["+amx-tile", "+amx-int8"]
    assert precision_mattr("int8", flags, amx=False) == []
    assert precision_mattr("int8", frozenset({"avx512f", "avx512_vnni"})) == []
    assert uses_amx({"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]})
    assert uses_amx({"kind": "llvm", "mcpu": "sapphirerapids"})
    assert not uses_amx({"kind": "llvm", "mcpu": "icelake-server"})


# ---- the micro-kernel against numpy ---------------------------------------------------------------------------
@needs_amx
@pytest.mark.parametrize("icb,taps,k", [(1, 1, 64), (3, 2, 64), (8, 9, 64), (1, 1, 16), (3, 2, 8), (2, 9, 32)])
def test_micro_kernel_matches_numpy(icb, taps, k):
    """One 32 x 32 block: C = sum over (icb, tap) of A(icb, tap) . B, A read at each tap's offset; A rows of
    ``k`` bytes (64, or the narrow tiles of 8-32 channel layers)."""
    from convdsl.backends.tvm.targets import request_amx
    from tvm.script import tirx as T

    request_amx()
    rng = np.random.default_rng(icb * 10 + taps + k)
    plane = 80 * k  # 80 pixels of k channels per block; taps start at pixels 0, 5, 10, ...
    offs = (np.arange(taps) * 5 * k).astype(np.int64)
    a = rng.integers(0, 256, (icb, 80, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (32, icb, taps, k)).astype(np.int8)  # [O, icb, tap, c]
    b = np.ascontiguousarray(w.reshape(2, 16, icb, taps, k // 4, 4).transpose(0, 2, 3, 4, 1, 5))
    name, ir = amx.int8_micro_kernel(k)

    @T.prim_func
    def f(A: T.Buffer((icb, 80, k), "uint8"), B: T.Buffer((2, icb, taps, k // 4, 16, 4), "int8"),
          O: T.Buffer((taps,), "int64"), C: T.Buffer((2, 32, 16), "int32")):
        T.func_attr({"global_symbol": "f"})
        with T.attr(0, amx.IMPORT_ATTR, ir):
            T.evaluate(T.call_extern("int32", name, T.address_of(C[0, 0, 0]), T.int64(32 * 64),
                                     T.address_of(A[0, 0, 0]), T.int64(plane), T.address_of(O[0]), T.int64(taps),
                                     T.int64(icb * taps), T.address_of(B[0, 0, 0, 0, 0, 0]),
                                     T.int64(icb * taps * 16 * k)))

    target = tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]})
    lib = tvm.compile(tvm.IRModule({"f": f}), target=target)
    c = tvm.runtime.tensor(np.full((2, 32, 16), 7, np.int32))
    lib["f"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), tvm.runtime.tensor(offs), c)
    want = np.zeros((32, 32), np.int64)  # [pixel, output channel]
    for t in range(taps):
        rows = a[:, 5 * t:5 * t + 32].astype(np.int64)  # [icb, 32, 64]
        want += np.einsum("ipc,oic->po", rows, w[:, :, t].astype(np.int64))
    got = c.numpy().transpose(1, 0, 2).reshape(32, 32)
    assert np.array_equal(got, want)


NARROW_CASES = {
    # name: (input [C, H, W], out, k, stride, pad, act dtype, out dtype): 8-32 input channels, narrow A tiles
    "16ch-1x1-u8": ((16, 14, 14), 96, 1, 1, 0, "u8", "u8"),  # 16-byte rows; 196 pixels: not whole 32s
    "32ch-1x1-one-block-i8": ((32, 16, 16), 16, 1, 1, 0, "i8", "u8"),  # 32-byte rows; one 16-channel output block
    "24ch-1x1-i8-out": ((24, 9, 9), 144, 1, 1, 0, "u8", "i8"),  # 24 of 32 bytes; 9 output blocks (odd)
    "8ch-3x3-stride2": ((8, 13, 11), 40, 3, 2, 1, "i8", "u8"),  # 8-byte rows, 9 taps over 4 phase planes
    "20ch-3x3-f32-out": ((20, 10, 10), 32, 3, 1, 1, "u8", "f32"),  # the int32 accumulator path
}


def _assert_one_amx_conv_matches(g, out_dtype: str, seed: int) -> None:
    """``g`` (one quantized conv) builds to one ``tdpbusd`` kernel whose output is the torch simulation's: bit-exact
    for an int8 output (and not a constant), within float rounding for an f32 one."""
    x = (3 * np.random.default_rng(seed).standard_normal(g.node(g.inputs[0]).type.shape)).astype(np.float32)
    be = _int8()
    assert _instructions(be, g) == {"tdpbusd": 1}
    got, want = be.build_module(g)(x), _torch(g, x)
    if out_dtype == "f32":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
    else:
        assert _steps(got, want) == 0  # bit-exact
        assert len(np.unique(want)) > 3


@needs_amx
@pytest.mark.parametrize("case", list(NARROW_CASES), ids=list(NARROW_CASES))
def test_narrow_qconv2d_on_amx_matches_torch_simulation(case):
    """Convs with 8-32 input channels run on tiles of 8 / 16 / 32-byte rows: bit-exact with the torch simulation."""
    shape, out, k, stride, pad, act, out_dtype = NARROW_CASES[case]
    _assert_one_amx_conv_matches(_qconv_program(shape, out, k, stride, pad, 1, act, out_dtype, False), out_dtype, 11)


def _relu6_program(c: int, out: int, act: str, out_dtype: str, out_scale: float, out_zp: int):
    """quantize -> qconv2d (1x1, float output) -> ReLU6 -> quantize: MobileNet-V2's expansion convs."""
    zp = 0 if act == "i8" else 128
    src = f"""network t(x: f32[2, {c}, 9, 12]) {{
    return x | quantize(0.05, {zp - 3}, dtype={act}) | qconv2d({out}, 1, in_scale=0.05, in_zp={zp - 3}, out_dtype=f32)
             | relu6 | quantize({out_scale}, {out_zp}, dtype={out_dtype})
}}
"""
    return _random_int_params(graph_of(src), wmax=40)


def _clip_kernels(g, clip: bool = True) -> int:
    """PrimFuncs of ``g``'s int8 build (to the AMX epilogue pass) that requantize a conv -> ReLU6 -> quantize chain
    in the AMX block loop (``clip`` False: any AMX conv requantized there)."""
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.amx_epilogue import fuse_requant_epilogues
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    with tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]}):
        mod = fuse_requant_epilogues(blocked_layout(lower_graph(g, "tvm-llvm"), "int8"))
    return sum((gv.name_hint.endswith("_clip") or not clip) and '"amx_conv_requant"' in f.script()
               for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))


@pytest.mark.parametrize("c,act,out_dtype,out_scale,out_zp", [(16, "u8", "u8", 6 / 255, 0), (64, "u8", "i8", 0.01, -20),
                                                             (24, "i8", "u8", 0.02, 10), (32, "i8", "i8", 0.05, 3)],
                         ids=["16ch-u8", "64ch-i8-out-clipped-range", "24ch-i8-in", "32ch-i8"])
def test_conv_relu6_quantize_is_one_amx_kernel(c, act, out_dtype, out_scale, out_zp):
    """conv -> ReLU6 -> quantize is one AMX kernel (the clip folded into the requantization's range,
    ``amx.clip_bounds``); on an AMX CPU bit-exact with the torch simulation, u8 and i8 in and out, with ReLU6's
    6 inside and outside the quantized range."""
    g = _relu6_program(c, 80, act, out_dtype, out_scale, out_zp)
    assert _clip_kernels(g) == 1
    if not HAS_AMX:
        pytest.skip("the CPU has no AMX-INT8 (amx_tile, amx_int8)")
    x = (3 * np.random.default_rng(c).standard_normal((2, c, 9, 12))).astype(np.float32)
    got, want = _int8().build_module(g)(x), _torch(g, x)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 3


def test_clip_bounds_equal_the_clip_then_the_quantize():
    """``amx.clip_bounds``: clamp(round(y * inv) + zp, lo', hi') equals clamp(round(clip(y, a, b) * inv) + zp, lo, hi)
    for float32 y across and beyond the clip, including bounds that leave the quantized range."""
    f32 = np.float32
    y = np.concatenate([np.linspace(-50, 50, 20001, dtype=f32), f32([-3e38, -1e9, 1e9, 3e38, 0.0, -0.0, 6.0])])
    for a, b, inv, zp, lo, hi in [(0, 6, 255 / 6, 0, 0, 255), (0, 6, 100, -20, -128, 127), (0, 6, 42.5, 10, 0, 255),
                                  (-1, 1, 3.3, 200, 0, 255), (0, 6, 40, -200, -128, 127), (0, 6, 0.1, 0, 5, 255)]:
        ref = np.clip(np.rint(np.clip(y, f32(a), f32(b)) * f32(inv)) + f32(zp), lo, hi)
        low, high = amx.clip_bounds(a, b, inv, zp, lo, hi)
        with np.errstate(over="ignore"):  # 3e38 * inv: inf, clamped as the kernel's minnum does
            got = np.maximum(np.minimum(np.rint(y * f32(inv)) + f32(zp), f32(high)), f32(low))
        np.testing.assert_array_equal(got, ref)


# ---- layers against the torch simulation ----------------------------------------------------------------------
CONV_CASES = {
    # name: (input [C, H, W], out, k, stride, pad, dilation, act dtype, out dtype, relu)
    "3x3-u8-relu": ((64, 12, 12), 64, 3, 1, 1, 1, "u8", "u8", True),
    "3x3-stride2-odd": ((40, 13, 11), 20, 3, 2, 1, 1, "u8", "u8", False),
    "1x1": ((128, 7, 7), 48, 1, 1, 0, 1, "u8", "u8", True),
    "1x1-stride2": ((96, 9, 9), 64, 1, 2, 0, 1, "u8", "i8", False),
    "7x7-stride2": ((64, 30, 30), 32, 7, 2, 3, 1, "u8", "u8", True),
    "i8-input": ((72, 10, 10), 24, 3, 1, 1, 1, "i8", "i8", True),
    "f32-output": ((64, 8, 8), 16, 3, 1, 1, 1, "u8", "f32", True),
    "dilation2-prime-width": ((48, 17, 17), 17, 3, 1, 2, 2, "u8", "u8", False),
    "asym-pad-same": ((64, 9, 9), 16, 4, 1, "same", 1, "i8", "u8", False),
}


def _qconv_program(shape, out, k, stride, pad, dilation, act, out_dtype, relu, batch=2):
    zp = 0 if act == "i8" else 128
    kwargs = dict(stride=stride, pad=pad, dilation=dilation, in_scale=0.05, in_zp=zp - 3, out_dtype=out_dtype,
                  relu=relu)
    if out_dtype != "f32":
        kwargs.update(out_scale=0.2, out_zp=-5 if out_dtype == "i8" else 7)
    src = one_op(f"quantize(0.05, {zp - 3}, dtype={act}) | qconv2d", [[batch, *shape]], out, k, **kwargs)
    return _random_int_params(graph_of(src), wmax=40)


@needs_amx
@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_qconv2d_on_amx_matches_torch_simulation(case):
    shape, out, k, stride, pad, dilation, act, out_dtype, relu = CONV_CASES[case]
    _assert_one_amx_conv_matches(_qconv_program(shape, out, k, stride, pad, dilation, act, out_dtype, relu),
                                 out_dtype, 1)


@needs_amx
@pytest.mark.parametrize("shape,out,act", [((3, 64), 10, "u8"), ((1, 197, 384), 40, "i8"), ((2, 25, 70), 33, "u8"),
                                           ((1, 512), 1000, "u8"), ((2, 45, 96), 160, "u8")],
                         ids=["2d", "vit-tokens-i8", "3d-odd", "gemv-1000", "ten-column-blocks"])
def test_qlinear_on_amx_matches_torch_simulation(shape, out, act):
    zp = 0 if act == "i8" else 128
    src = one_op(f"quantize(0.05, {zp}, dtype={act}) | qlinear", [list(shape)], out, in_scale=0.05, in_zp=zp,
                 out_dtype="u8", out_scale=0.5, out_zp=100)
    g = _random_int_params(graph_of(src), wmax=40)
    x = (3 * np.random.default_rng(2).standard_normal(shape)).astype(np.float32)
    be = _int8()
    assert _instructions(be, g) == {"tdpbusd": 1}
    got, want = be.build_module(g)(x), _torch(g, x)
    assert _steps(got, want) == 0 and len(np.unique(want)) > 3


@needs_amx
def test_qlinear_qgelu_on_amx_is_bit_exact():
    """fc1 + qgelu as the quantize pass leaves a transformer MLP (batch 1: one kernel; batch 2 reshapes the
    rows between them): the qgelu inlined into the requantization, which then runs over the 12 column blocks
    in parallel (amx._schedule_requant)."""
    from .conftest import kernel_names

    src = """network t(x: f32[1, 45, 96]) {
    return x | quantize(0.05, 128, dtype=u8) | qlinear(192, in_scale=0.05, in_zp=128, out_dtype=f32)
             | qgelu(out_scale=0.02, out_zp=20)
}"""
    g = _random_int_params(graph_of(src), wmax=40)
    assert "fused_qlinear_qgelu" in kernel_names(g, "int8")
    x = (3 * np.random.default_rng(5).standard_normal((1, 45, 96))).astype(np.float32)
    got, want = _int8().build_module(g)(x), _torch(g, x)
    assert got.dtype == want.dtype and np.array_equal(got, want) and len(np.unique(want)) > 20


@needs_amx
def test_qconv1d_on_amx_matches_torch_simulation():
    src = one_op("quantize(0.05, 128) | qconv1d", [[2, 48, 21]], 20, 5, stride=2, pad=2, in_scale=0.05, in_zp=128,
                 out_dtype="u8", out_scale=0.3, out_zp=9, relu=True)
    g = _random_int_params(graph_of(src), wmax=40)
    x = (3 * np.random.default_rng(3).standard_normal((2, 48, 21))).astype(np.float32)
    got, want = _int8().build_module(g)(x), _torch(g, x)
    assert _steps(got, want) == 0


@needs_amx
def test_no_amx_builds_vnni_and_both_are_exact():
    g = _qconv_program((64, 10, 10), 32, 3, 1, 1, 1, "u8", "u8", True)
    x = (3 * np.random.default_rng(4).standard_normal(g.node(g.inputs[0]).type.shape)).astype(np.float32)
    on, off = _int8(True), _int8(False)
    assert _instructions(on, g) == {"tdpbusd": 1} and _instructions(off, g) == {"vpdpbusd": 1}
    assert "+amx-int8" in on.spec.config.get("mattr", []) and "mattr" not in off.spec.config
    want = _torch(g, x)
    assert _steps(on.build_module(g)(x), want) == 0 and _steps(off.build_module(g)(x), want) == 0


def test_int8_activations_stay_blocked_from_conv_to_conv():
    """With the blocked layout, ResNet-18's int8 convs (AMX and the VNNI stem) read and write NCHW16c: the only
    layout transform left is the one before the classifier (flatten), none around the convs."""
    from tvm import relax

    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    q, _ = quantized_resnet18()
    with tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]}):
        mod = blocked_layout(lower_graph(q, "tvm-llvm"), "int8")
    calls = {}  # callee name -> (input shapes, output shape) of each call_tir
    for binding in mod["main"].body.blocks[0].bindings:
        v = binding.value
        if isinstance(v, relax.Call) and v.op.name == "relax.call_tir":
            ins = [list(f.ty.shape.values) if isinstance(f.ty, relax.TensorType) else None for f in v.args[1].fields]
            calls[v.args[0].name_hint] = (ins, list(v.ty.shape.values))
    convs = {k: c for k, c in calls.items() if k.startswith("qconv2d")}
    assert len(convs) == 20
    assert all(len(out) == 5 and out[-1] == 16 for _, out in convs.values())  # every conv writes NCHW16c
    assert sum(len(ins[0]) == 5 for ins, _ in convs.values()) == 19  # and reads it (not the RGB stem)
    assert [k for k in calls if "pack_nchwc" in k] == ["unpack_nchwc"]  # before the classifier
    assert calls["max_pool2d"][1] == [1, 4, 16, 16, 16]  # pooling stays blocked too


def _fused_requant_convs(mod) -> int:
    """PrimFuncs of ``mod`` whose AMX conv requantizes each block in the block loop (``amx.conv_requant_extern``)."""
    return sum('"amx_conv_requant"' in f.script() for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))


def test_amx_convs_with_a_blocked_int8_output_requantize_each_block_in_the_block_loop():
    """ResNet-18's AMX convs whose output is int8 (the first conv of each block, the 3x3 stride-2 convs) requantize
    each 32 x 32 block right after the micro-kernel (no int32 accumulator in memory); the convs whose float
    output a residual add reads keep the separate requantization (FuseOps appends the add after it)."""
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    q, _ = quantized_resnet18()
    with tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]}):
        mod = blocked_layout(lower_graph(q, "tvm-llvm"), "int8")
    assert _fused_requant_convs(mod) == 8


@needs_amx
@pytest.mark.parametrize("shape,out,k,stride,out_dtype", [((64, 9, 9), 48, 3, 1, "u8"), ((96, 14, 13), 80, 1, 2, "i8"),
                                                          ((128, 5, 5), 32, 3, 1, "u8")],
                         ids=["three-blocks", "five-blocks-i8-stride2", "one-pair"])
def test_block_loop_requantization_matches_torch_simulation(shape, out, k, stride, out_dtype):
    """An odd number of 16-channel output blocks (the last pair has one), rows that end inside a 32-pixel
    block, i8 output: bit-exact with the torch simulation, and the kernel is the block loop's."""
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    g = _qconv_program(shape, out, k, stride, k // 2, 1, "u8", out_dtype, True)
    with tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]}):
        assert _fused_requant_convs(blocked_layout(lower_graph(g, "tvm-llvm"), "int8")) == 1
    x = (3 * np.random.default_rng(7).standard_normal(g.node(g.inputs[0]).type.shape)).astype(np.float32)
    got, want = _int8().build_module(g)(x), _torch(g, x)
    assert _steps(got, want) == 0 and len(np.unique(want)) > 3


RESIDUAL_NET = """import "blocks/resnet.cdl"
network two_blocks(x: f32[2, 192, 10, 9]) {
    return x | bottleneck(48) as a | bottleneck(48, stride=2) as b | conv2d(32, 1) as head
}"""


def _residual_kernels(q) -> list[str]:
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.amx_epilogue import fuse_requant_epilogues
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    with tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]}):
        mod = fuse_requant_epilogues(blocked_layout(lower_graph(q, "tvm-llvm"), "int8"))
    return sorted(gv.name_hint for gv, f in mod.functions.items()
                  if isinstance(f, tvm.tirx.PrimFunc) and '"amx_conv_requant"' in f.script() and "shortcut" in f.script())


@pytest.mark.parametrize("act", ["u8", "i8"])
def test_residual_block_conv_add_and_quantize_are_one_amx_kernel(act):
    """A bottleneck's expansion conv, the residual add (identity shortcut: the block input's int8 value; projection
    shortcut: the downsampling conv's float output), ReLU and the next quantize: one kernel each, and on an AMX
    CPU bit-exact with the torch simulation."""
    from convdsl.api import load_graph
    from convdsl.passes import run_passes
    from convdsl.passes.quantize import quantize

    root = EXAMPLES.resolve()
    g = run_passes(load_graph(RESIDUAL_NET.replace('import "blocks/', f'import "{root}/blocks/')), "O2")
    rng = np.random.default_rng(3)
    q = quantize(g, [rng.standard_normal((2, 192, 10, 9)).astype(np.float32)], build=torch_module, act_dtype=act)
    assert len(_residual_kernels(q)) == 2  # a.conv3 (identity shortcut) and b.conv3 (projection shortcut)
    if not HAS_AMX:
        pytest.skip("the CPU has no AMX-INT8 (amx_tile, amx_int8)")
    x = rng.standard_normal((2, 192, 10, 9)).astype(np.float32)
    got, want = _int8().build_module(q)(x), _torch(q, x)
    np.testing.assert_array_equal(got, want)


def test_resnet18_residual_blocks_are_one_amx_kernel_each():
    """ResNet-18: every block whose output is quantized (layer4's last is read in float by the pooling) ends in one
    kernel: 3 with a projection shortcut, 4 with the block input as shortcut."""
    q, _ = quantized_resnet18()
    assert len(_residual_kernels(q)) == 7


def test_mobilenet_v2_24_channel_projections_on_amx_stay_blocked():
    """MobileNet-V2's projections to 24 channels (96 and 144 input channels: AMX) read the depthwise conv's NCHW16c
    output and write NCHW8c, the layout the next expansion conv (24 input channels) reads: no unpack to NCHW around them."""
    from tvm import relax

    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    from .test_int8_vnni import mbv2_int8

    _, q, _ = mbv2_int8(1.0)
    with tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]}):
        mod = blocked_layout(lower_graph(q, "tvm-llvm", bind={"N": 2}), "int8")
    projections = []
    for binding in mod["main"].body.blocks[0].bindings:
        v = binding.value
        if isinstance(v, relax.Call) and v.op.name == "relax.call_tir" and v.args[0].name_hint.startswith("qconv2d"):
            x, out = [int(d) for d in v.args[1].fields[0].ty.shape.values], [int(d) for d in v.ty.shape.values]
            if len(out) == 5 and out[1] * out[4] == 24:
                projections.append((x, out))
    assert projections == [([2, 6, 8, 8, 16], [2, 3, 8, 8, 8]), ([2, 9, 8, 8, 16], [2, 3, 8, 8, 8])]


def test_mobilenet_v2_int8_convs_are_amx_but_the_stem():
    """MobileNet-V2 at 64 x 64: every dot-product layer but the RGB stem on tiles (the 16 -> 96, 24 -> 144 and
    32 -> 192 expansions and the 32 -> 16 projection too: narrow tiles), and the 16 expansions requantized in the
    block loop: their ReLU6 is the requantization's clamp, folded by the quantize pass (``_relu6_fold``), so they
    write u8 themselves, as do 6 projections whose next block reads them; 22 in all (the last 1x1's ReLU6 output
    is read in float by the pooling and stays)."""
    from convdsl.api import load_graph
    from convdsl.passes import run_passes
    from convdsl.passes.quantize import quantize

    root = EXAMPLES.resolve()
    src = (root / "mobilenet_v2.cdl").read_text().replace("224, 224", "64, 64")
    g = run_passes(load_graph(src.replace('import "blocks/', f'import "{root}/blocks/')), "O2")
    q = quantize(g, [np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)], build=torch_module)
    with tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]}):
        from convdsl.backends.tvm.lower_quant import int8_instructions

        assert int8_instructions(q) == {"tdpbusd": 35, "vpdpbusd": 1, "depthwise": 17}
    assert sum(n.op == "relu6" for n in q.nodes()) == 1
    assert sum(n.op == "qconv2d" and n.attrs["relu"] and n.attrs["groups"] == 1 for n in q.nodes()) == 17  # + stem
    assert _clip_kernels(q, clip=False) == 22


@needs_amx
def test_resnet18_int8_on_amx_matches_torch_simulation():
    q, x = quantized_resnet18()
    be = _int8()
    counts = _instructions(be, q)
    assert counts["tdpbusd"] == 20 and counts.get("vpdpbusd") == 1  # the 3-channel stem stays VNNI
    got, want = be.build_module(q)(x), _torch(q, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))



# ---- the process permission --------------------------------------------------------------------------------
class _RefusingLibc:
    """libc whose arch_prctl(ARCH_REQ_XCOMP_PERM) fails, as on a kernel without AMX support."""

    def __init__(self, *args, **kwargs):
        pass

    @staticmethod
    def syscall(*args):
        import ctypes

        ctypes.set_errno(22)  # EINVAL
        return -1


def test_refused_amx_state_is_a_clear_error(monkeypatch):
    import ctypes
    import platform

    from convdsl.backends.tvm import targets
    from convdsl.errors import ConvDSLError

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(targets, "_amx_granted", False)
    monkeypatch.setattr(ctypes, "CDLL", _RefusingLibc)
    with pytest.raises(ConvDSLError, match="refused AMX tile state") as e:
        targets.request_amx()
    assert "--no-amx" in e.value.hint


@needs_amx
def test_runner_asks_for_amx_state_before_running(monkeypatch):
    """A library built with AMX is never run without the permission: a refusal is an error first."""
    from convdsl.backends.tvm import targets
    from convdsl.errors import UsageError

    g = _qconv_program((64, 6, 6), 32, 1, 1, 0, 1, "u8", "u8", True)

    def refuse():
        raise UsageError("refused")

    monkeypatch.setattr(targets, "request_amx", refuse)
    with pytest.raises(UsageError, match="refused"):
        _int8().build_module(g)
    _int8(False).build_module(g)  # VNNI needs no permission


@needs_amx
def test_verify_int8_variant_runs_amx_and_agrees():
    """`convdsl verify -b tvm-llvm-int8`: the quantized program at --precision int8 (AMX here) against torch."""
    from convdsl.verify import differential as D

    g = _qconv_program((64, 9, 9), 32, 3, 1, 1, 1, "u8", "u8", True)
    variants = D.standard_variants(g, backends=("tvm-llvm-int8",))
    assert [v.name for v in variants] == ["tvm-llvm-int8"]
    report = D.check(g, variants, seeds=[0, 1])
    row = next(r for r in report.rows if r.variant == "tvm-llvm-int8")
    assert row.ok and row.max_abs == 0, report.rows  # bit-exact


# ---- bf16 on AMX tiles (tdpbf16ps) --------------------------------------------------------------------------
needs_amx_bf16 = pytest.mark.skipif(not AMX_BF16_FLAGS <= cpu_flags(),
                                    reason="the CPU has no AMX-BF16 (amx_tile, amx_bf16)")
BF16_NET = """network m(x: f32[1, 32, 14, 14]) {
    y = x | conv2d(64, 3, pad=same) | relu
    z = y | conv2d(48, 3, stride=2, pad=same, bias=false) | relu
    return (z + (y | conv2d(48, 1, stride=2))) | flatten | linear(64)
}"""
BF16_TOKENS = """network t(x: f32[1, 197, 64]) {
    return x | linear(96) | gelu | linear(48)
}"""
BF16_PATCHES = """network p(x: f32[2, 3, 32, 48]) {
    return x | patch_embed(64, 8) | linear(32)
}"""  # at bf16 the patches are one GEMM on tiles (3 x 8 x 8 = 192 features), not an f32 conv


def test_pack_weight_bf16_is_b_tiles_of_pairs():
    from convdsl.backends.tvm.schedules.bf16 import bf16_to_f32

    w = np.random.default_rng(0).standard_normal((48, 40, 3, 3)).astype(np.float32)
    p = amx.pack_weight_bf16(w)
    assert p.shape == (4, 2, 9, 16, 16, 2) and p.dtype == np.uint16
    for o, c, ky, kx in [(0, 0, 0, 0), (47, 39, 2, 2), (17, 33, 1, 0)]:
        got = bf16_to_f32(p[o // 16, c // 32, ky * 3 + kx, c % 32 // 2, o % 16, c % 2])
        assert got == torch.tensor(w[o, c, ky, kx]).to(torch.bfloat16).float().item()


@needs_amx_bf16
@pytest.mark.parametrize("src,shape", [(BF16_NET, (1, 32, 14, 14)), (BF16_TOKENS, (1, 197, 64)),
                                       (BF16_PATCHES, (2, 3, 32, 48))], ids=["convs", "tokens", "patches"])
def test_bf16_on_amx_matches_torch_bf16_arithmetic(src, shape):
    from convdsl.lang.elaborate import elaborate

    from .test_bf16 import bf16_reference

    g = elaborate(src)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    be = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False)
    assert "+amx-bf16" in be.spec.config["mattr"]
    m = be.build_module(g)
    y, want = m(x), bf16_reference(g, x)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(y - want).max() <= 1e-4 * scale  # bf16 products summed in f32, as torch's reference
    f32 = torch_module(g).eval()(torch.from_numpy(x)).detach().numpy()
    assert np.abs(y - f32).max() > 1e-6 * scale  # really bf16
    assert m.built.own == m.built.functions


@needs_amx_bf16
def test_bf16_amx_kernels_are_used_unless_no_amx():
    from convdsl.backends.tvm import build as tvm_build
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target
    from convdsl.lang.elaborate import elaborate

    for on, want in ((True, 4), (False, 0)):
        spec = make_target("tvm-llvm", precision="bf16", amx=on)
        with spec.tvm_target():
            mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec, "bf16"))(lower_graph(elaborate(BF16_NET)))
            mod = tvm_build.ApplySchedules(mod)
        texts = [f.script() for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
        assert sum(amx.EXTERN_BF16 in t for t in texts) == want  # the three convs (over 32 and 64 channels), the linear



# MobileNet-V2's narrow layers: projections to 24 and 8 channels (blocks of 8: the output copy takes half a C tile row
# per block), an expansion from 24 channels read in blocks of 8, a 16-channel input (on tiles, half of each A tile row
# zeros), an 8-channel input (stays f32: vdpbf16ps was slower than f32 for such convs), a depthwise conv (bf16 input)
# and a 10-way classifier (N padded to 32)
BF16_NARROW = """network m(x: f32[1, 32, 20, 20]) {
    a = x | conv2d(24, 1, bias=false) | batchnorm
    b = a | conv2d(144, 1) | relu6 | conv2d(144, 3, pad=1, groups=144) | relu6 | conv2d(24, 1, bias=false)
    c = (a + b) | conv2d(16, 3, stride=2, pad=same) | relu | conv2d(8, 1) | relu | conv2d(32, 1) | relu
    return c | adaptive_avgpool2d(1) | flatten | linear(10)
}"""


def _narrow_bf16_reference(graph, x: np.ndarray) -> np.ndarray:
    """torch with the operands of every conv over 16 or more input channels (groups 1) and every linear rounded
    to bf16, products summed in f32: the layers --precision bf16 runs on AMX tiles; every depthwise conv's input
    rounded to bf16 (its weights and arithmetic f32); the others in f32."""
    r = lambda t: t.to(torch.bfloat16).float()  # noqa: E731
    m = torch_module(graph).eval()
    for mod in m.modules():
        conv = isinstance(mod, torch.nn.Conv2d)
        tiles = isinstance(mod, torch.nn.Linear) or (conv and mod.groups == 1 and mod.in_channels >= amx.BF16_CHANNELS // 2)
        depthwise = conv and mod.groups == mod.in_channels > 1  # bf16 input, f32 weights and arithmetic
        if tiles:
            mod.weight.data = r(mod.weight.data)
        if tiles or depthwise:
            mod.register_forward_pre_hook(lambda _, args: tuple(r(a) for a in args))
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def _bf16_build(src: str, shape: tuple[int, ...], seed: int):
    """(graph, input, the bf16 build's output, ``_narrow_bf16_reference``'s, the optimized module's TIR texts)."""
    from convdsl.backends.tvm import build as tvm_build
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target
    from convdsl.lang.elaborate import elaborate

    g = elaborate(src)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    m = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False).build_module(g)
    spec = make_target("tvm-llvm", precision="bf16")
    with spec.tvm_target():
        mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec, "bf16"))(lower_graph(g))
    texts = [f.script() for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    return g, x, m(x), _narrow_bf16_reference(g, x), texts


@needs_amx_bf16
def test_bf16_narrow_layers_on_amx_match_torch_bf16_arithmetic():
    g, x, y, want, texts = _bf16_build(BF16_NARROW, (1, 32, 20, 20), seed=3)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(y - want).max() <= 1e-4 * scale
    f32 = torch_module(g).eval()(torch.from_numpy(x)).detach().numpy()
    assert np.abs(y - f32).max() > 1e-6 * scale  # really bf16
    # 32 -> 24, 24 -> 144, 144 -> 24, 24 -> 16 (3x3), 16 -> 8, the classifier; 8 -> 32 stays f32, and no vdpbf16ps
    assert sum(amx.EXTERN_BF16 in t for t in texts) == 6
    assert not any("convdsl_dpbf16ps" in t for t in texts)
    # the epilogues (bias, relu6 / relu) of 24 -> 144 (read by the depthwise conv) and of the 3x3 conv (read by
    # 16 -> 8 on tiles) inside the AMX block loop, both writing bf16 bits
    epilogue = [t for t in texts if any(name in t for name in amx.EXTERN_BF16_EPILOGUE.values())]
    assert len(epilogue) == 2
    assert sum(amx.EXTERN_BF16_EPILOGUE["uint16"] in t for t in epilogue) == 2
    # bf16 bits (half the bytes) from the depthwise conv's epilogue to the projection, and from the residual add
    # (a + b, its one reader the 3x3 conv on tiles); the values the readers round to anyway.  `a` (two readers) and
    # the 8-channel conv's input (f32) stay f32.
    assert sum('sblock("to_bf16")' in t for t in texts) == 2



BF16_EPILOGUES = """network m(x: f32[2, 32, 13, 13]) {
    y = x | conv2d(48, 3, pad=same, bias=false) | batchnorm | relu6 | conv2d(48, 3, pad=1, groups=48) | relu
    z = y | conv2d(64, 1, bias=false) | batchnorm | conv2d(32, 3, stride=2, pad=same) | relu
    return z | conv2d(16, 1)
}"""  # batch 2, 48 channels (an odd number of 16-channel blocks), a stride-2 3x3 conv with padding


@needs_amx_bf16
def test_bf16_epilogues_in_the_amx_block_loop_match_torch_bf16_arithmetic():
    """conv -> batchnorm (multiply, add) -> relu6 / relu, or -> a bias: computed on each 32 x 32 block inside the
    block loop (``amx.conv2d_nchwc_bf16_epilogue``), bf16 bits out where a depthwise / AMX conv reads them."""
    _, _, y, want, texts = _bf16_build(BF16_EPILOGUES, (2, 32, 13, 13), seed=4)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(y - want).max() <= 1e-4 * scale
    # 32 -> 48 + batchnorm + relu6 (read by the depthwise conv), 48 -> 64 + batchnorm (by the 3x3 on tiles), the 3x3
    # + bias + relu (by 32 -> 16 on tiles): bf16 bits each; the last conv is the output (no conv reads it)
    kinds = [name for t in texts for dtype, name in amx.EXTERN_BF16_EPILOGUE.items() if name in t]
    assert sorted(kinds) == sorted([amx.EXTERN_BF16_EPILOGUE["uint16"]] * 3)


# ---- attention on AMX bf16 tiles (lower_attention._amx_bf16, amx_transformer.batch_matmul_bf16) -----------------
def _attention_bf16_reference(params: dict, prefix: str, heads: int, x: np.ndarray, ctx: np.ndarray | None):
    """torch.nn.MultiheadAttention's arithmetic with every GEMM's operands rounded to bf16 (sums, biases, scale and
    softmax in f32): what --precision bf16 computes."""
    r = lambda t: t.to(torch.bfloat16).float()  # noqa: E731
    p = {k[len(prefix) + 1:]: torch.from_numpy(np.asarray(v)) for k, v in params.items() if k.startswith(prefix + ".")}
    x = torch.from_numpy(x)
    kv_in = x if ctx is None else torch.from_numpy(ctx)
    wq, wk, wv = p["in_proj_weight"].chunk(3)
    bq, bk, bv = p["in_proj_bias"].chunk(3)
    q, k, v = r(x) @ r(wq).T + bq, r(kv_in) @ r(wk).T + bk, r(kv_in) @ r(wv).T + bv
    (n, lq, dim), lk, d = q.shape, k.shape[1], q.shape[2] // heads
    split = lambda t, length: t.reshape(n, length, heads, d).transpose(1, 2)  # noqa: E731
    q, k, v = split(q, lq), split(k, lk), split(v, lk)
    probs = torch.softmax(r(q) @ r(k).transpose(-1, -2) * d ** -0.5, dim=-1)
    y = (r(probs) @ r(v)).transpose(1, 2).reshape(n, lq, dim)
    return (r(y) @ r(p["out_proj.weight"]).T + p["out_proj.bias"]).numpy()


ATTENTION_CASES = {  # ViT-S's 197 tokens (keys padded to 224, queries to 7 blocks of 32); heads of 24 (not 16 wide)
    "vit_s": ("network t(x: f32[1, 197, 384]) {\n    return x | mhsa(heads=6) as attn\n}", (1, 197, 384), None),
    "narrow_heads": ("network t(x: f32[2, 50, 96]) {\n    return x | mhsa(heads=4) as attn\n}", (2, 50, 96), None),
    "cross": ("network t(x: f32[2, 40, 64], ctx: f32[2, 77, 64]) {\n    return (x, ctx) | cross_attention(heads=2) "
              "as attn\n}", (2, 40, 64), (2, 77, 64)),
    # CrossViT's fusion: one query (the CLS token) over 65 keys (the shapes that once failed to build: TVM
    # gave a dead pack's memory to a buffer of another dtype while both products were one kernel)
    "cls_query": ("network t(x: f32[2, 1, 96], ctx: f32[2, 65, 96]) {\n    return (x, ctx) | "
                  "cross_attention(heads=3) as attn\n}", (2, 1, 96), (2, 65, 96)),
    # 3 x 48 = 144 projection columns, not whole 32-column blocks: Q/K/V through layout.py's dense, not
    # amx_transformer.linear_rows_bf16
    "odd_width": ("network t(x: f32[1, 20, 48]) {\n    return x | mhsa(heads=3) as attn\n}", (1, 20, 48), None),
    # two images, 50 tokens (the second row block partial), heads 64 wide: amx_transformer.qkv_tiles_bf16's Q/K/V tiles
    "batch_two": ("network t(x: f32[2, 50, 128]) {\n    return x | mhsa(heads=2) as attn\n}", (2, 50, 128), None),
}
ATTENTION_HEADS = {"vit_s": 6, "narrow_heads": 4, "cross": 2, "cls_query": 3, "odd_width": 3, "batch_two": 2}


@needs_amx_bf16
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_bf16_on_amx_matches_torch_bf16_arithmetic(case):
    from convdsl.lang.elaborate import elaborate

    src, shape, ctx_shape = ATTENTION_CASES[case]
    g = elaborate(src)
    heads = ATTENTION_HEADS[case]
    rng = np.random.default_rng(2)
    for k, v in list(g.params.items()):  # biases too (nn.MultiheadAttention starts them at zero)
        g.params[k] = (rng.standard_normal(v.shape) * (0.2 if v.ndim == 2 else 0.5)).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    ctx = None if ctx_shape is None else rng.standard_normal(ctx_shape).astype(np.float32)
    m = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False).build_module(g)
    y = m(x) if ctx is None else m(x, ctx)
    want = _attention_bf16_reference(g.params, "attn", heads, x, ctx)
    f32 = torch_module(g).eval()(*(torch.from_numpy(a) for a in (x, ctx) if a is not None)).detach().numpy()
    scale = float(np.abs(want).max())
    err, err_f32 = np.abs(y - want).max() / scale, np.abs(y - f32).max() / scale
    assert err <= 2e-3, (err, err_f32)  # the same bf16 roundings (a summation order apart: a rare rounding flip)
    assert err_f32 > 3 * err and err_f32 > 1e-3  # and really bf16
    assert m.built.own == m.built.functions


@needs_amx_bf16
def test_attention_bf16_kernels_are_amx():
    """Every GEMM of a bf16 mhsa on AMX tiles: the Q/K/V projection (``qkv_tiles_bf16``: its blocks rounded into the
    attention GEMMs' tiles), Q K^T, P V, the output projection (``linear_packed_bf16``, reading P V's heads as bf16
    tiles)."""
    from convdsl.backends.tvm import build as tvm_build
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target
    from convdsl.lang.elaborate import elaborate

    g = elaborate(ATTENTION_CASES["vit_s"][0])
    for precision, want in (("bf16", 4), ("f32", 0)):
        spec = make_target("tvm-llvm", precision=precision)
        with spec.tvm_target():
            mod = lower_graph(g, precision=precision)
            mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec, precision))(mod)
        texts = [f.script() for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
        names = (amx.EXTERN_BF16, *amx_transformer.EXTERN_QKV.values(), amx_transformer.EXTERN_BF16_OUT[False])
        calls = [sum(t.count(f'"{name}"') for t in texts) for name in names]
        # micro-kernel call sites: Q K^T; the Q/K/V GEMM's three epilogues and P V (Q's: rows rounded into a
        # pack); the out-projection
        assert calls == ([1, 2, 1, 1, 1] if want else [0] * 5)
        if want:  # the attention kernels pack nothing: Q, K and V come as tiles
            assert not any("amx_pack_bk" in t or "amx_pack_b\"" in t for t in texts)


# ---- a transformer MLP with its residual on AMX bf16 tiles (lower_elementwise._amx_mlp, amx.mlp_up/down_bf16) -----
MLP_BLOCK = """network t(x: f32[1, 197, 64]) {
    m = x | layernorm | linear(128) | gelu | dropout(0.1) | linear(64)
    return x + m
}"""  # ViT's MLP half-layer: 197 tokens (7 row blocks of 32, the last partial)
MLP_WIDE = MLP_BLOCK.replace("linear(128)", "linear(512)")  # 8 column pairs: tasks of 4 and 3 row blocks, pipelined
MLP_SHARED = """network t(x: f32[1, 40, 64]) {
    h = x | linear(128) | gelu
    y = x + (h | linear(64))
    return y + (h | linear(64))
}"""  # the hidden layer read by two linears: not fused (each reads it as it is)


def _kernel_names(g) -> list[str]:
    from convdsl.backends.tvm import build as tvm_build
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm", precision="bf16")
    with spec.tvm_target():
        mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec, "bf16"))(lower_graph(g, precision="bf16"))
    return [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


@needs_amx_bf16
@pytest.mark.parametrize("src,shape,fused", [(MLP_BLOCK, (1, 197, 64), True), (MLP_WIDE, (1, 197, 64), True),
                                             (MLP_SHARED, (1, 40, 64), False)],
                         ids=["vit_mlp", "row_groups", "hidden_is_output"])
def test_mlp_bf16_on_amx_matches_torch_bf16_arithmetic(src, shape, fused):
    from convdsl.lang.elaborate import elaborate

    from .test_bf16 import bf16_reference

    g = elaborate(src)
    rng = np.random.default_rng(3)
    for k, v in list(g.params.items()):  # nonzero biases, a GELU input of either sign
        g.params[k] = (rng.standard_normal(v.shape) * (0.2 if v.ndim == 2 else 0.5)).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    names = _kernel_names(g)
    assert ("mlp_up_bf16_amx" in names and "mlp_down_bf16_amx" in names) == fused, names
    assert not fused or not any("norm" in n for n in names), names  # the layer norm done in fc1's pack
    m = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False).build_module(g)
    y, want = m(x), bf16_reference(g, x)
    scale = max(1.0, float(np.abs(want).max()))
    err = np.abs(y - want).max()
    assert err <= 1e-4 * scale  # bf16 products summed in f32, bias and GELU in f32 (a summation order apart)
    f32 = torch_module(g).eval()(torch.from_numpy(x)).detach().numpy()
    assert np.abs(y - f32).max() > 10 * err  # and really bf16
    assert m.built.own == m.built.functions


@needs_amx_bf16
def test_attention_residual_bf16_on_amx_is_one_projection_kernel():
    """x + mhsa(layernorm(x)): the layer norm in the Q/K/V GEMM's pack, the residual added in the output
    projection's block loop (no norm or add kernel), with torch's bf16 arithmetic plus x."""
    from convdsl.lang.elaborate import elaborate

    g = elaborate("network t(x: f32[1, 197, 384]) {\n    return x + (x | layernorm as ln | mhsa(heads=6) as attn)\n}")
    rng = np.random.default_rng(4)
    for k, v in list(g.params.items()):
        g.params[k] = (rng.standard_normal(v.shape) * (0.2 if v.ndim == 2 else 0.5)).astype(np.float32)
    x = rng.standard_normal((1, 197, 384)).astype(np.float32)
    names = _kernel_names(g)
    assert "out_proj_residual_bf16_amx" in names and not any("add" in n or "norm" in n for n in names), names
    m = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False).build_module(g)
    ln = torch.nn.functional.layer_norm(torch.from_numpy(x), (384,), torch.from_numpy(g.params["ln.weight"]),
                                        torch.from_numpy(g.params["ln.bias"])).numpy()  # done in Q/K/V's pack
    y, want = m(x), x + _attention_bf16_reference(g.params, "attn", 6, ln, None)
    f32 = torch_module(g).eval()(torch.from_numpy(x)).detach().numpy()
    scale = float(np.abs(want).max())
    err, err_f32 = np.abs(y - want).max() / scale, np.abs(y - f32).max() / scale
    assert err <= 2e-3, (err, err_f32)  # as test_attention_bf16_on_amx_matches_torch_bf16_arithmetic
    assert err_f32 > 3 * err and err_f32 > 1e-3
