"""Real int8 on x86: the VNNI kernel of lower_quant.py scheduled by schedules/int8.py.

Every int8 output must equal the torch simulation (convdsl/ir/ops/quant.py's exact
arithmetic) within one quantization step; measured, they are bit-identical.  The
kernels are scheduled by build.py's own schedules (``schedules.ApplySchedules``), which
try ``schedules.int8.try_schedule`` on every function first.
"""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

import convdsl.backends.tvm as ctvm  # noqa: E402
from convdsl.backends.torch import build_module as torch_module  # noqa: E402
from convdsl.backends.tvm import build as tvm_build  # noqa: E402
from convdsl.backends.tvm.schedules import int8  # noqa: E402
from convdsl.backends.tvm.targets import cpu_flags  # noqa: E402

from .conftest import graph_of, one_op, quantized_resnet18  # noqa: E402

HAS_VNNI = "avx512_vnni" in cpu_flags()
needs_vnni = pytest.mark.skipif(not HAS_VNNI, reason="the CPU has no AVX-512 VNNI")
# the exactness tests run wherever try_schedule takes the kernel: VNNI, or AVX2's vpmaddwd schedule
needs_int8_schedule = pytest.mark.skipif(not (HAS_VNNI or "avx2" in cpu_flags()), reason="the CPU has neither VNNI nor AVX2")
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
VNNI_TARGET = {"kind": "llvm", "mcpu": "icelake-server"}


@pytest.fixture
def scheduled():
    """tvm-llvm builds (build.py's ``ApplySchedules`` calls ``int8.try_schedule`` first), every conv direct (AVX2's
    3x3 stride-1 convs as Winograd: test_winograd_int8.py)."""

    def build(graph):
        return ctvm.backend("tvm-llvm", progress=False, use_db=False, winograd=False).build_module(graph)

    return build


def vnni_kernels(graph, intrinsic: str = "llvm.x86.avx512.vpdpbusd.", winograd: bool = False) -> int:
    """How many PrimFuncs of the built module contain the tensorized vpdpbusd (zmm ``.512`` or ymm ``.256``;
    or ``intrinsic``); every conv direct unless ``winograd``."""
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm")
    with spec.tvm_target():
        mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec, winograd=winograd))(lower_graph(graph))
        mod = tvm_build.ApplySchedules(tvm.transform.Sequential(tvm_build.schedule_passes(spec, False))(mod))
    return sum(intrinsic in f.script() for _, f in mod.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc))


def _random_int_params(g, seed=0, wmax=127):
    rng = np.random.default_rng(seed)
    for key, a in list(g.params.items()):
        if a.dtype == np.int8:
            g.params[key] = rng.integers(-wmax, wmax + 1, a.shape).astype(np.int8)
        elif a.dtype == np.int32:
            g.params[key] = rng.integers(-3000, 3000, a.shape).astype(np.int32)
        elif key.endswith("w_scale"):
            g.params[key] = (rng.random(a.shape) * 0.02 + 0.002).astype(np.float32)
    return g


def _torch(g, x):
    xs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        return torch_module(g)(*(torch.from_numpy(v) for v in xs)).numpy()


def _steps(got, want) -> int:
    assert got.dtype == want.dtype and got.shape == want.shape
    return int(np.abs(got.astype(np.int64) - want.astype(np.int64)).max())


# ---- qconv2d / qconv1d / qlinear against the torch simulation ----------------------------------------------------
CONV_CASES = {
    # name: (input [C, H, W], out, k, stride, pad, dilation, act dtype, out dtype, relu)
    "3x3-u8-relu": ((16, 12, 12), 32, 3, 1, 1, 1, "u8", "u8", True),
    "3x3-stride2-odd": ((5, 13, 11), 20, 3, 2, 1, 1, "u8", "u8", False),
    "1x1": ((64, 7, 7), 48, 1, 1, 0, 1, "u8", "u8", True),
    "1x1-stride2": ((24, 9, 9), 16, 1, 2, 0, 1, "u8", "i8", False),
    "7x7-stride2-stem": ((3, 30, 30), 16, 7, 2, 3, 1, "u8", "u8", True),
    "i8-input": ((8, 10, 10), 24, 3, 1, 1, 1, "i8", "i8", True),
    "f32-output": ((12, 8, 8), 16, 3, 1, 1, 1, "u8", "f32", True),
    "dilation2-prime-width": ((8, 17, 17), 17, 3, 1, 2, 2, "u8", "u8", False),
    "asym-pad-same": ((6, 9, 9), 16, 4, 1, "same", 1, "i8", "u8", False),
}


def _qconv_program(shape, out, k, stride, pad, dilation, act, out_dtype, relu, batch=2, wmax=127):
    zp = 0 if act == "i8" else 128
    kwargs = dict(stride=stride, pad=pad, dilation=dilation, in_scale=0.05, in_zp=zp - 3, out_dtype=out_dtype,
                  relu=relu)
    if out_dtype != "f32":
        kwargs.update(out_scale=0.2, out_zp=-5 if out_dtype == "i8" else 7)
    src = one_op(f"quantize(0.05, {zp - 3}, dtype={act}) | qconv2d", [[batch, *shape]], out, k, **kwargs)
    return _random_int_params(graph_of(src), wmax=wmax)


def test_quantize_rounds_ties_to_even(scheduled):
    """The quantize op's rounding (relax.round, legalized to ``tirx.round`` on CPU so that loops over it vectorize)
    rounds ties to even, as torch.round and numpy.round do."""
    g = graph_of(one_op("quantize", [[1, 10]], 0.5, 10), randomize=False)
    x = np.array([[0.25, 0.75, 1.25, -0.25, -0.75, 2.25, 1.0, 0.0, 61.25, -4.75]], np.float32)  # x / 0.5: ties
    want = np.clip(np.round(x / np.float32(0.5)) + 10, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(scheduled(g)(x), want)
    np.testing.assert_array_equal(_torch(g, x), want)


def test_quantize_epilogue_loops_are_vectorizable():
    """No ``nearbyint`` (which TVM's VectorizeLoop does not vectorize) in a conv -> ReLU6 -> quantize kernel: its
    requantization loop over 16 channels stays one vector per pixel (MobileNet-V2's epilogues ran as scalars)."""
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    src = one_op("quantize(0.05, 128) | qconv2d", [[1, 32, 8, 8]], 64, 1, in_scale=0.05, in_zp=128, out_dtype="f32")
    g = graph_of(src.replace(")\n}", ") | relu6 | quantize(0.1, 3)\n}"))
    spec = make_target("tvm-llvm")
    with spec.tvm_target():
        mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec))(lower_graph(_random_int_params(g)))
    texts = [f.script() for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("T.round(" in t for t in texts) and not any("nearbyint" in t for t in texts)


@needs_int8_schedule
@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_qconv2d_matches_torch_simulation(scheduled, case):
    shape, out, k, stride, pad, dilation, act, out_dtype, relu = CONV_CASES[case]
    g = _qconv_program(shape, out, k, stride, pad, dilation, act, out_dtype, relu)
    x = (3 * np.random.default_rng(1).standard_normal(g.node(g.inputs[0]).type.shape)).astype(np.float32)
    assert vnni_kernels(g) == (1 if HAS_VNNI else 0)  # the int8 kernel went through try_schedule
    got, want = scheduled(g)(x), _torch(g, x)
    if out_dtype == "f32":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
    else:
        assert _steps(got, want) == 0  # the contract allows one step; the kernel is exact
        assert len(np.unique(want)) > 3  # not a saturated, trivially equal output


@needs_int8_schedule
@pytest.mark.parametrize("shape,out,act", [((3, 37), 10, "u8"), ((2, 25, 64), 33, "i8"), ((1, 200), 1000, "u8")],
                         ids=["2d-odd-k", "3d-i8", "gemv-1000"])
def test_qlinear_matches_torch_simulation(scheduled, shape, out, act):
    zp = 0 if act == "i8" else 128
    src = one_op(f"quantize(0.05, {zp}, dtype={act}) | qlinear", [list(shape)], out, in_scale=0.05, in_zp=zp,
                 out_dtype="u8", out_scale=0.5, out_zp=100)
    g = _random_int_params(graph_of(src))
    x = (3 * np.random.default_rng(2).standard_normal(shape)).astype(np.float32)
    got, want = scheduled(g)(x), _torch(g, x)
    assert _steps(got, want) == 0 and len(np.unique(want)) > 3


@needs_int8_schedule
def test_qconv1d_matches_torch_simulation(scheduled):
    src = one_op("quantize(0.05, 128) | qconv1d", [[2, 6, 21]], 20, 5, stride=2, pad=2, in_scale=0.05, in_zp=128,
                 out_dtype="u8", out_scale=0.3, out_zp=9, relu=True)
    g = _random_int_params(graph_of(src))
    x = (3 * np.random.default_rng(3).standard_normal((2, 6, 21))).astype(np.float32)
    got, want = scheduled(g)(x), _torch(g, x)
    assert _steps(got, want) == 0


def test_unscheduled_kernel_is_correct_too(monkeypatch):
    """Without the schedule (a CPU without AVX-512) the same kernel is plain loops: still exact."""
    monkeypatch.setattr(tvm_build, "ApplySchedules", lambda mod: mod)
    g = _qconv_program((5, 9, 9), 20, 3, 2, 1, 1, "u8", "u8", True)
    assert vnni_kernels(g) == 0
    x = (3 * np.random.default_rng(4).standard_normal(g.node(g.inputs[0]).type.shape)).astype(np.float32)
    m = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)
    assert _steps(m(x), _torch(g, x)) == 0


# ---- structure: the tensorized VNNI instruction ---------------------------------------------------------------
def _kernel(out=32, c=16, hw=14, k=3, block=(16, 4, "int8", "vpdpbusd")):
    from tvm import te

    import convdsl.backends.tvm.lowering  # noqa: F401  (lower_quant is loaded through the table)
    from convdsl.backends.tvm.lower_quant import vnni_conv2d

    ob, ib, dtype, instruction = block  # lower_quant.Int8Layout
    x = te.placeholder((1, c, hw, hw), "uint8", name="x")
    w = te.placeholder((-(-out // ob), -(-c // ib), k, k, ob, ib), dtype, name="w")
    b = te.placeholder((out,), "int32", name="b")
    m = te.placeholder((out,), "float32", name="m")
    y = vnni_conv2d(x, w, b, m, out_channels=out, pads=(1, 1, 1, 1), stride=(1, 1), dilation=(1, 1), in_zp=128,
                    shift=False, out_dtype="uint8", out_zp=0, lo=0, hi=255, relu=True, instruction=instruction)
    return te.create_prim_func([x, w, b, m, y])


def test_schedule_tensorizes_with_vpdpbusd():
    target = tvm.target.Target(VNNI_TARGET)
    sch = tvm.s_tir.Schedule(_kernel())
    assert int8.try_schedule(sch, target)
    script = sch.mod.script()
    assert "llvm.x86.avx512.vpdpbusd.512" in script and "T.parallel" in script
    asm = tvm.compile(sch.mod, target=target).jit().inspect_source("asm")
    assert "vpdpbusd" in asm and "zmm" in asm


@pytest.mark.parametrize("c, out, hw, k, rows_first", [
    (64, 16, 28, 1, True),  # input 50 KB, weights 1 KB: rows before channel blocks (cpu.rows_first)
    (64, 512, 7, 3, False),  # input 3 KB, weights 295 KB: channel blocks first
])
def test_vnni_conv_parallel_loop_takes_rows_first_when_the_input_outweighs_the_weights(c, out, hw, k, rows_first):
    target = tvm.target.Target(VNNI_TARGET)
    sch = tvm.s_tir.Schedule(_kernel(c=c, out=out, hw=hw, k=k))
    assert int8.try_schedule(sch, target)
    fused = [ln.split(" in ")[0].split()[-1] for ln in sch.mod.script().splitlines() if "T.parallel" in ln]
    # the conv's loop fuses (n, output row i, output block o_0) in one order or the other; the input pack's is n_cb_h
    assert ("n_i_o_0_fused" if rows_first else "n_o_0_i_fused") in fused, fused


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_avx2_pair_layout_is_one_vpmaddwd_per_8x2(mcpu):
    """Without VNNI the lowering packs the weights as int16 pairs [oc/8][ic/2][kh][kw][8][2] and the
    activations as int16: the inner 8 x 2 dot product is one vpmaddwd (tensorized), no byte gathers,
    never vpmaddubsw; bit-identical with the unscheduled kernel where this CPU can run it."""
    from convdsl.backends.tvm import lower_quant
    from convdsl.backends.tvm.schedules import template_tuner as tt
    from convdsl.backends.tvm.targets import host_can_run

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    with target:
        assert lower_quant.int8_layout() == (8, 2, "int16", "vpmaddwd")
    with tvm.target.Target(VNNI_TARGET):
        assert lower_quant.int8_layout() == (16, 4, "int8", "vpdpbusd")
    func = _kernel(out=40, c=22, hw=9, block=(8, 2, "int16", "vpmaddwd"))
    sch = tvm.s_tir.Schedule(func)
    assert int8.try_schedule(sch, target)
    assert "llvm.x86.avx2.pmadd.wd" in sch.mod.script() and "T.parallel" in sch.mod.script()
    lib = tvm.compile(sch.mod, target=target).jit()
    asm = lib.inspect_source("asm")
    assert "vpmaddwd" in asm and "vpmaddubsw" not in asm and "vpinsrb" not in asm
    if host_can_run({"kind": "llvm", "mcpu": mcpu}) is None:
        ref = tvm.compile(tvm.IRModule({"main": func}), target=target).jit()
        args = tt.random_args(func, seed=3)
        args[1][:] = np.random.default_rng(4).integers(-128, 128, args[1].shape)  # int8 weights, widened
        got, want = tt._run(lib, args, tvm.cpu()), tt._run(ref, args, tvm.cpu())
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


# ---- AVX2 with 7-bit weights: vpmaddubsw + vpmaddwd, exact ---------------------------------------------------------
HAS_AVX2_ONLY = "avx2" in cpu_flags() and not HAS_VNNI
MADDUBS = "llvm.x86.avx2.pmadd.ub.sw"


def test_maddubs_exact_is_the_int16_bound_of_each_pair():
    from convdsl.backends.tvm.lower_quant import maddubs_exact

    def w(*pair):  # one output channel, the pair at input channels (0, 1) of a 1x1 kernel
        return np.array(pair, np.int8).reshape(1, len(pair), 1, 1)

    assert maddubs_exact(w(64, 64)) and maddubs_exact(w(-64, -64))  # 255 * 128 = 32640 <= 32767
    assert not maddubs_exact(w(65, 64)) and not maddubs_exact(w(-65, -64))  # 255 * 129 = 32895
    assert maddubs_exact(w(127, -127)) and maddubs_exact(w(-128, 127))  # opposite signs: 255 * 127 at most
    assert maddubs_exact(w(0, 64, 65))  # channels (0, 1) and (2, padded 0): 255 * 65 = 16575
    assert not maddubs_exact(w(0, 0, 100, 100))  # the pair is (2, 3)
    taps = np.array([[[[100, 0]], [[0, 100]]]], np.int8)  # [1, 2, 1, 2]: pairs (100, 0) and (0, 100) per tap
    assert maddubs_exact(taps) and not maddubs_exact(taps[:, :, :, ::-1].copy() + taps)  # (100, 100) pairs
    rng = np.random.default_rng(0)
    assert maddubs_exact(rng.integers(-63, 64, (32, 17, 3, 3)).astype(np.int8))  # any 7-bit weights


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_int8_layout_takes_vpmaddubsw_for_weights_that_cannot_saturate(mcpu):
    from convdsl.backends.tvm import lower_quant

    seven = np.full((8, 4, 3, 3), 63, np.int8)
    eight = np.full((8, 4, 3, 3), 127, np.int8)
    with tvm.target.Target({"kind": "llvm", "mcpu": mcpu}):
        assert lower_quant.int8_layout(seven) == (8, 4, "int8", "vpmaddubsw")
        assert lower_quant.int8_instruction(seven) == "vpmaddubsw"
        assert lower_quant.int8_layout(eight) == (8, 2, "int16", "vpmaddwd")
        assert lower_quant.int8_instruction(eight) == "vpmaddwd"
    with tvm.target.Target(VNNI_TARGET):  # VNNI: 8-bit or 7-bit alike, 8 x 4 bytes for these 8 output channels
        assert lower_quant.int8_layout(seven) == lower_quant.int8_layout(eight) == (8, 4, "int8", "vpdpbusd-ymm")
        assert lower_quant.int8_instruction(seven) == lower_quant.int8_instruction(eight) == "vpdpbusd"
        wide = np.full((16, 4, 3, 3), 63, np.int8)
        assert lower_quant.int8_layout(wide) == (16, 4, "int8", "vpdpbusd")


def test_the_lowering_and_the_schedule_name_the_instructions_alike():
    """lower_quant annotates the conv block with its layout's instruction; schedules/int8.py dispatches on it.
    Each module spells the key and the names (the lowering tables load without TVM, so lower_quant cannot
    import the schedule): they must agree."""
    from convdsl.backends.tvm import lower_quant
    from convdsl.backends.tvm.schedules import tophub

    names = ("INSTRUCTION_ATTR", "VPDPBUSD", "VPDPBUSD_YMM", "VPMADDUBSW", "VPMADDWD")
    assert [getattr(lower_quant, n) for n in names] == [getattr(int8, n) for n in names]
    # the template database's keys tag each int8 conv by the same annotation (tophub stays free of TVM imports)
    assert tophub.INT8_INSTRUCTION_ATTR == int8.INSTRUCTION_ATTR
    assert set(tophub.INT8_ISA) == {getattr(int8, n) for n in names[1:]}


def test_vnni_layout_of_outputs_a_multiple_of_8_and_not_16():
    """On VNNI, output channels that are a multiple of 8 and not of 16 (MobileNet-V2's 24) take the 8 x 4 byte
    layout and its ymm vpdpbusd (no padding to 32 channels); others keep 16 x 4; AVX2 is unchanged."""
    from convdsl.backends.tvm import lower_quant

    with tvm.target.Target(VNNI_TARGET):
        assert [lower_quant.int8_layout(np.ones((o, 8, 1, 1), np.int8))[0] for o in (8, 24, 40, 16, 48, 20, 17)] \
            == [8, 8, 8, 16, 16, 16, 16]


def _extreme_args(func, wmax: int, seed: int = 0):
    """Random arguments with the activations at 0 or 255 and the weights at +-wmax, mostly in same-sign pairs:
    the largest int16 pair sums vpmaddubsw can meet."""
    from convdsl.backends.tvm.schedules import template_tuner as tt

    rng = np.random.default_rng(seed)
    args = tt.random_args(func, seed=seed)
    args[0][:] = rng.choice(np.array([0, 255, 255, 7], np.uint8), args[0].shape)
    sign = rng.choice(np.array([-1, 1], np.int8), args[1].shape[:-1] + (1,))
    args[1][:] = (sign * wmax * rng.choice(np.array([1, 1, 1, 0], np.int8), args[1].shape)).astype(np.int8)
    args[3][:] = np.abs(args[3]) * 1e-4  # multipliers that keep the outputs in range, varied
    return args


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_maddubs_layout_is_one_vpmaddubsw_per_8x4(mcpu):
    """7-bit weights without VNNI: weights packed as bytes [oc/8][ic/4][kh][kw][8][4], activations as u8; the
    inner 8 x 4 dot product is one vpmaddubsw + one vpmaddwd (with ones), tensorized; bit-identical with the
    unscheduled kernel at the extremes (activations 255, weights +-64 in same-sign pairs) where this CPU can
    run it."""
    from convdsl.backends.tvm.schedules import template_tuner as tt
    from convdsl.backends.tvm.targets import host_can_run

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    func = _kernel(out=40, c=22, hw=9, block=(8, 4, "int8", "vpmaddubsw"))
    sch = tvm.s_tir.Schedule(func)
    assert int8.try_schedule(sch, target)
    assert MADDUBS in sch.mod.script() and "T.parallel" in sch.mod.script()
    lib = tvm.compile(sch.mod, target=target).jit()
    asm = lib.inspect_source("asm")
    assert "vpmaddubsw" in asm and "vpmaddwd" in asm and "vpinsrb" not in asm
    if host_can_run({"kind": "llvm", "mcpu": mcpu}) is not None:
        pytest.skip(f"built; not run: {host_can_run({'kind': 'llvm', 'mcpu': mcpu})}")
    ref = tvm.compile(tvm.IRModule({"main": func}), target=target).jit()
    for seed in range(3):
        args = _extreme_args(func, 64, seed)
        got, want = tt._run(lib, args, tvm.cpu()), tt._run(ref, args, tvm.cpu())
        assert len(np.unique(want[-1])) > 3
        np.testing.assert_array_equal(got[-1], want[-1])


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="the CPU has no AVX2")
def test_vpmaddubsw_would_saturate_8bit_weights():
    """Why the lowering checks the weights: the same kernel given 8-bit weights (+-127 in same-sign pairs)
    differs from the exact sum, so maddubs_exact must keep such layers on vpmaddwd."""
    from convdsl.backends.tvm.lower_quant import maddubs_exact
    from convdsl.backends.tvm.schedules import template_tuner as tt

    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    func = _kernel(out=16, c=16, hw=6, block=(8, 4, "int8", "vpmaddubsw"))
    sch = tvm.s_tir.Schedule(func)
    assert int8.try_schedule(sch, target)
    args = _extreme_args(func, 127)
    w = args[1].transpose(0, 4, 1, 5, 2, 3).reshape(16, 16, 3, 3)  # back to [O, C, KH, KW]
    assert not maddubs_exact(w)
    got = tt._run(tvm.compile(sch.mod, target=target).jit(), args, tvm.cpu())
    want = tt._run(tvm.compile(tvm.IRModule({"main": func}), target=target).jit(), args, tvm.cpu())
    assert not np.array_equal(got[-1], want[-1])


def test_maddubs_register_tile():
    assert int8.maddubs_register_tile(8, 56) == (8, 1)
    assert int8.maddubs_register_tile(64, 7) == (7, 1)
    assert int8.maddubs_register_tile(6, 56) == (4, 3)
    for ob, ow in [(8, 56), (6, 56), (32, 7), (64, 1), (1, 1), (9, 13)]:
        ow_t, ob_t = int8.maddubs_register_tile(ob, ow)
        assert ow_t * ob_t <= int8.MADDUBS_ACCUMULATORS and ow % ow_t == 0 and ob % ob_t == 0 and ob_t <= 3


@needs_int8_schedule
@pytest.mark.parametrize("case", ["3x3-u8-relu", "3x3-stride2-odd", "7x7-stride2-stem", "i8-input", "f32-output",
                                  "asym-pad-same"])
def test_qconv2d_7bit_matches_torch_simulation(scheduled, case):
    """7-bit weights ([-63, 63], what ``weight_bits_for_cpu`` picks on AVX2 without VNNI): vpmaddubsw on such a
    CPU, VNNI's vpdpbusd on one with it; both equal to the simulation."""
    shape, out, k, stride, pad, dilation, act, out_dtype, relu = CONV_CASES[case]
    g = _qconv_program(shape, out, k, stride, pad, dilation, act, out_dtype, relu, wmax=63)
    x = (3 * np.random.default_rng(1).standard_normal(g.node(g.inputs[0]).type.shape)).astype(np.float32)
    assert vnni_kernels(g, MADDUBS) == (1 if HAS_AVX2_ONLY else 0)
    got, want = scheduled(g)(x), _torch(g, x)
    if out_dtype == "f32":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
    else:
        assert _steps(got, want) == 0
        assert len(np.unique(want)) > 3


@needs_int8_schedule
def test_qlinear_7bit_matches_torch_simulation(scheduled):
    src = one_op("quantize(0.05, 128) | qlinear", [[2, 25, 64]], 33, in_scale=0.05, in_zp=128, out_dtype="u8",
                 out_scale=0.5, out_zp=100)
    g = _random_int_params(graph_of(src), wmax=63)
    x = (3 * np.random.default_rng(2).standard_normal((2, 25, 64))).astype(np.float32)
    assert vnni_kernels(g, MADDUBS) == (1 if HAS_AVX2_ONLY else 0)
    assert _steps(scheduled(g)(x), _torch(g, x)) == 0


def test_int8_instructions_are_recorded_per_layer():
    """The manifest's ``tvm.int8_instructions``: which instruction each quantized layer's kernel runs, per target."""
    from convdsl.backends.tvm.lower_quant import int8_instructions

    g = _qconv_program((16, 12, 12), 32, 3, 1, 1, 1, "u8", "u8", True, wmax=63)
    g8 = _qconv_program((16, 12, 12), 32, 3, 1, 1, 1, "u8", "u8", True)
    with tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}):
        assert int8_instructions(g) == {"vpmaddubsw": 1} and int8_instructions(g8) == {"vpmaddwd": 1}
    with tvm.target.Target(VNNI_TARGET):
        assert int8_instructions(g) == {"vpdpbusd": 1}


@pytest.mark.parametrize("dtype", ["u8", "i8"])
@pytest.mark.parametrize("k,stride,pad,size", [(3, 2, 1, 23), (2, 2, 0, 16), (3, 1, 1, 9)], ids=["3s2p1", "2s2", "3s1p1"])
def test_int8_max_pool_is_scheduled_and_exact(dtype, k, stride, pad, size):
    """A max-pool between quantized layers runs on the int8 tensor: int8.try_schedule takes it (rows in parallel,
    the padded rows copied next to each output row) and it equals torch's max_pool2d."""
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    g = graph_of(one_op("maxpool2d", [[2, 5, size, size]], k, stride=stride, pad=pad, dtypes=[dtype]))
    spec = make_target("tvm-llvm")
    with spec.tvm_target() as target:
        mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec))(lower_graph(g))
        funcs = [f for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
        assert len(funcs) == 1
        sch = tvm.s_tir.Schedule(funcs[0])
        assert int8.try_schedule(sch, target) and "T.parallel" in sch.mod.script()
    lo, hi = (0, 256) if dtype == "u8" else (-128, 128)
    x = np.random.default_rng(5).integers(lo, hi, (2, 5, size, size)).astype(np.uint8 if dtype == "u8" else np.int8)
    got = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)(x)
    want = torch.nn.functional.max_pool2d(torch.from_numpy(x.astype(np.float32)), k, stride, pad).numpy()
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got.astype(np.float32), want)


def test_madd_register_tile():
    assert int8.madd_register_tile(8, 56) == (8, 1)
    assert int8.madd_register_tile(6, 56) == (4, 3)
    assert int8.madd_register_tile(32, 7) == (7, 1)
    assert int8.madd_register_tile(64, 1) == (1, 2)
    for ob, ow in [(8, 56), (6, 56), (32, 7), (64, 1), (1, 1), (9, 13)]:
        ow_t, ob_t = int8.madd_register_tile(ob, ow)
        assert ow_t * ob_t <= int8.MADD_ACCUMULATORS and ow % ow_t == 0 and ob % ob_t == 0 and ob_t <= 3


def test_try_schedule_declines_other_functions():
    from tvm import te, topi

    x = te.placeholder((1, 8, 10, 10), "float32")
    w = te.placeholder((8, 8, 3, 3), "float32")
    f = te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 1, 1)])
    sch = tvm.s_tir.Schedule(f)
    before = sch.mod.script()
    assert not int8.try_schedule(sch, tvm.target.Target(VNNI_TARGET))
    assert sch.mod.script() == before
    # and the int8 kernel on a CPU without AVX2 or VNNI: left alone
    assert not int8.try_schedule(tvm.s_tir.Schedule(_kernel()), tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"}))


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_without_vnni_the_kernel_runs_exact_with_vpmaddwd(mcpu):
    """AVX2 and AVX-512 without VNNI: the untensorized schedule, whose products LLVM emits as vpmaddwd
    (exact), never vpmaddubsw (saturating); the result equals the unscheduled kernel's bit for bit."""
    from convdsl.backends.tvm.schedules import template_tuner as tt
    from convdsl.backends.tvm.targets import host_can_run

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    func = _kernel(out=32, c=24, hw=9)
    sch = tvm.s_tir.Schedule(func)
    with pytest.warns(UserWarning, match="without AVX-512 VNNI") if not int8._warned else _nothing():
        assert int8.try_schedule(sch, target)
    assert "T.parallel" in sch.mod.script() and "llvm.x86.avx512.vpdpbusd" not in sch.mod.script()
    lib = tvm.compile(sch.mod, target=target).jit()
    asm = lib.inspect_source("asm")
    assert "vpmaddwd" in asm and "vpmaddubsw" not in asm
    if host_can_run({"kind": "llvm", "mcpu": mcpu}) is None:
        ref = tvm.compile(tvm.IRModule({"main": func}), target=target).jit()
        args = tt.random_args(func, seed=3)
        got, want = tt._run(lib, args, tvm.cpu()), tt._run(ref, args, tvm.cpu())
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def test_register_tile():
    assert int8.register_tile(4, 56) == (7, 2)  # 14 vpdpbusd per 9 loads, not 14 per 15 (14 x 1)
    assert int8.register_tile(4, 112) == (7, 2)
    assert int8.register_tile(32, 7) == (7, 2)
    assert int8.register_tile(8, 17) == (1, 8)
    assert int8.register_tile(63, 1) == (1, 9)
    for ob, ow in [(4, 56), (32, 7), (8, 17), (63, 1), (1, 1)]:
        t = int8.register_tile(ob, ow)
        assert t[0] * t[1] <= int8.MAX_ACCUMULATORS and ow % t[0] == 0 and ob % t[1] == 0


# ---- rounding points: a scaled float output, then an add, then a quantize ------------------------------------------
RESIDUAL_SRC = """network t(a: f32[1, 16, 12, 12], b: f32[1, 24, 12, 12]) {
    c = a | quantize(0.05, 125) | qconv2d(24, 1, in_scale=0.05, in_zp=125)
    return add(c, b) | quantize(0.0625, 3)
}
"""


def _half_step_residual(c: np.ndarray, m: np.ndarray, rng) -> tuple[np.ndarray, int]:
    """A residual ``b`` with c + b near a half step of quantize(0.0625) (1/scale = 16, exact) at every
    element, nudged by a few ulps until rounding c + b twice (f32(acc * m), then the add: what the
    simulation does) and once (an FMA of acc * m + b) give different codes; and how many elements
    that worked for."""
    m = m.reshape(1, -1, 1, 1).astype(np.float64)
    exact = np.round(c.astype(np.float64) / m) * m  # acc * m[c], exactly (acc recovered from f32(acc * m))
    target = (rng.integers(0, 200, c.shape) + 0.5) / 16
    base = (target - exact).astype(np.float32)
    b, found = base.copy(), np.zeros(c.shape, bool)
    for k in range(-4, 5):
        cand = (base.view(np.int32) + k).view(np.float32)
        twice = np.round((c + cand) * np.float32(16))
        once = np.round((exact + cand.astype(np.float64)).astype(np.float32) * np.float32(16))
        new = (twice != once) & ~found
        b[new], found = cand[new], found | new
    return b, int(found.sum())


@needs_int8_schedule
def test_scaled_output_plus_residual_rounds_where_the_simulation_does(scheduled):
    """qconv2d's float output (f32(acc) * m, no relu) plus a residual, then quantize: TVM's LLVM codegen
    contracts that multiply and add into one FMA unless the output is a rounding point
    (``lower_quant.rounded``); on half-step sums the codes then differ by one (ResNet-50's residual
    adds).  The residual is built so that every element it could be is such a sum."""
    from convdsl.ir.ops.quant import requant_multiplier
    from tests.passes.test_quantize import torch_values

    g = _random_int_params(graph_of(RESIDUAL_SRC))
    rng = np.random.default_rng(3)
    a = (3 * rng.standard_normal((1, 16, 12, 12))).astype(np.float32)
    c = torch_values(g, (a, np.zeros((1, 24, 12, 12), np.float32)))["qconv2d"]
    m = requant_multiplier(0.05, g.params["qconv2d.w_scale"], None)
    b, sensitive = _half_step_residual(c, m, rng)
    assert sensitive > 500  # of 3456 (measured 991): elements where an FMA would give another code
    got, want = scheduled(g)(a, b), _torch(g, (a, b))
    assert _steps(got, want) == 0


# ---- whole networks ------------------------------------------------------------------------------------------------
def _compare_network(scheduled, q, x):
    """Final output and every int8 tensor of the network against the torch simulation."""
    from tests.passes.test_quantize import probe, torch_values

    p = probe(q)
    p.symbols = {**p.symbols, "N": x.shape[0]}
    want = torch_values(q, (x,))
    got = scheduled(p)(x)
    steps, equal, total = 0, 0, 0
    for v, y in zip(p.outputs, got):
        y, ref = np.asarray(y), want[v.node]
        if y.dtype.kind in "iu":
            steps = max(steps, _steps(y, ref))
            equal += int((y == ref).sum())
            total += y.size
        else:
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max() + 1e-30), err_msg=v.node)
    return steps, equal, total


@needs_int8_schedule
@pytest.mark.parametrize("bits", [8, 7])
def test_digits_cnn_int8_matches_torch_simulation(scheduled, bits):
    from convdsl.api import load_graph
    from convdsl.passes import run_passes
    from convdsl.passes.quantize import quantize
    from convdsl.train import calibration_batches

    g = run_passes(load_graph(EXAMPLES / "digits_cnn.cdl"), "O2")
    q = quantize(g, calibration_batches("digits", samples=128), build=torch_module, weight_bits=bits)
    x = calibration_batches("digits", samples=8)[0]
    if bits == 7:
        assert vnni_kernels(q, MADDUBS) == (7 if HAS_AVX2_ONLY else 0)  # every conv and linear
    steps, equal, total = _compare_network(scheduled, q, x)
    assert steps <= 1 and total > 0
    assert equal == total  # measured: bit-exact


@needs_int8_schedule
def test_resnet18_int8_small_input_matches_torch_simulation(scheduled):
    q, x = quantized_resnet18()
    assert vnni_kernels(q) == (21 if HAS_VNNI else 0)  # 20 convs and the fc
    got, want = scheduled(q)(x), _torch(q, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


# ---- MobileNet-V2's blocks: depthwise, relu6, residual adds, and vanishing scales --------------------------------
MBV2_BLOCKS = """
import "{blocks}/mobilenet.cdl"
network mbv2_blocks(image: f32[N, 3, 32, 32], classes=10) {{
    x = image | conv_bn_act(32, stride=2) as "features.0"
              | inverted_residual(16, 1, expand=1) as "features.1"
              | inverted_residual(24, 2) as "features.2"
              | inverted_residual(24, 1) as "features.3"
              | inverted_residual(20, 1, expand=3) as "features.4"
              | inverted_residual(20, 1, expand=3) as "features.5"
              | conv_bn_act(64, k=1) as "features.6"
    return x | adaptive_avgpool2d(1) | flatten | linear(classes) as "classifier"
}}
"""
# features.1/2/3: depthwise over 32, 96 and 144 channels (schedules/int8_depthwise.py); features.4/5: over 72
# and 60 (not whole 16-channel vectors: the generic int8 path); features.3 and .5 end in a residual add


def _bn_from_batch(g, x):
    """The batchnorms' running statistics taken from ``x`` (as a trained network's describe its inputs)."""
    model = torch_module(g)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        model(torch.from_numpy(x))
    g = g.copy()
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            g.params[key] = value.numpy()
    return g


def mbv2_int8(scale: float, bits: int = 8):
    """The blocks quantized on inputs of size ``scale``, and a batch of test inputs.  ``scale`` 1 with
    batchnorm statistics from the calibration batch: activations as in a trained network; 1e-7 with the
    initial ones: every activation scale tiny (~1e-9 deep in the network), so the classifier's bias is
    ~1e9 accumulator units, beyond int32 unless the pass raises the weight scale."""
    from convdsl.api import load_graph
    from convdsl.passes import run_passes
    from convdsl.passes.quantize import quantize

    g = load_graph(MBV2_BLOCKS.format(blocks=(EXAMPLES / "blocks").resolve()))
    rng = np.random.default_rng(0)
    calib = (scale * rng.standard_normal((16, 3, 32, 32))).astype(np.float32)
    if scale == 1:
        g = _bn_from_batch(g, calib)
    g = run_passes(g, "O2")
    q = quantize(g, [calib[:8], calib[8:]], build=torch_module, weight_bits=bits)
    return g, q, (scale * rng.standard_normal((2, 3, 32, 32))).astype(np.float32)


def test_mobilenet_v2_int8_depthwise_stays_blocked():
    """The blocked layout takes MobileNet-V2's int8 depthwise convs over whole 16-channel vectors (32, 96, 144
    channels) as NCHW16c in and out (int8_depthwise.depthwise_int8 with in_block = out_block = 16), between
    the blocked expansion and projection convs; the 72- and 60-channel ones stay NCHW."""
    from tvm import relax

    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    _, q, _ = mbv2_int8(1.0)
    with tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server"}):
        mod = blocked_layout(lower_graph(q, "tvm-llvm", bind={"N": 2}), "int8")
    blocked_dw = 0
    for binding in mod["main"].body.blocks[0].bindings:
        v = binding.value
        if isinstance(v, relax.Call) and v.op.name == "relax.call_tir":
            shapes = [[int(d) for d in f.ty.shape.values] if isinstance(f.ty, relax.TensorType) else None
                      for f in v.args[1].fields]
            dtypes = [str(f.ty.dtype) if isinstance(f.ty, relax.TensorType) else None for f in v.args[1].fields]
            if len(shapes) == 4 and dtypes[1] == "float32" and len(shapes[1]) == 4 and shapes[1][-1] == 16:
                assert len(shapes[0]) == 5 and len(v.ty.shape.values) == 5  # depthwise_int8's weights: NCHW16c
                blocked_dw += 1
    assert blocked_dw == 3


def test_mobilenet_v2_int8_24_channel_projections_stay_blocked():
    """On VNNI the 24-channel projections (8 x 4 weights, ymm vpdpbusd) write 8-channel blocks and the
    expansion after them reads those: no NCHW transpose (unpack_nchwc / pack_nchwc) from the stem through
    features.3 (the first is where features.4's 72-channel depthwise conv needs NCHW); and the projections'
    kernel is tensorized with vpdpbusd.256."""
    from tvm import relax

    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules import schedule_module
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    _, q, _ = mbv2_int8(1.0)
    target = tvm.target.Target(VNNI_TARGET)
    with target:
        mod = blocked_layout(lower_graph(q, "tvm-llvm", bind={"N": 2}), "int8")
    calls = [b.value for b in mod["main"].body.blocks[0].bindings
             if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"]
    names = [c.args[0].name_hint for c in calls]
    shape = lambda c: [int(d) for d in c.ty.shape.values]  # noqa: E731
    projections = [i for i, c in enumerate(calls) if shape(c)[1:2] + shape(c)[-1:] == [3, 8]]  # 24 channels, 8c
    first_transpose = min(i for i, n in enumerate(names) if "pack_nchwc" in n)
    assert len(projections) == 2 and max(projections) < first_transpose, names
    projection = mod[calls[projections[0]].args[0]]
    with target:
        scheduled = schedule_module(tvm.IRModule({"main": projection}), target)
    assert "llvm.x86.avx512.vpdpbusd.256" in scheduled["main"].script()


@pytest.mark.parametrize("net", ["mobilenet_v2_blocks", "resnet18_64x64"])
def test_int8_convs_on_a_blocked_input_copy_it_only_to_pad_it(net):
    """A VNNI conv whose input is in 16-channel blocks reads each 4-channel group where it is
    (lower_quant.vnni_conv2d): without padding (MobileNet-V2's 1x1 expansions and projections, ResNet-18's
    1x1 downsamples) there is no ``vnni_pack`` copy; with padding (ResNet-18's 3x3 convs) the copy keeps the
    16-channel blocks; the stem (NCHW input) keeps its 4-channel-group pack.  Their outputs equal the torch
    simulation (test_mobilenet_v2_blocks_int8_match_torch_simulation, test_resnet18_int8_small_input_...)."""
    from tvm import relax

    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    q = mbv2_int8(1.0)[1] if net == "mobilenet_v2_blocks" else quantized_resnet18()[0]
    with tvm.target.Target(VNNI_TARGET):
        mod = blocked_layout(lower_graph(q, "tvm-llvm", bind={"N": 2}), "int8")
    packs = {}  # (input layout, padded) -> the last extent of each conv's pack (None: no pack)
    for b in mod["main"].body.blocks[0].bindings:
        v = b.value
        if isinstance(v, relax.Call) and v.op.name == "relax.call_tir":
            func = mod[v.args[0]]
            if func.attrs is None or "convdsl.int8_conv" not in func.attrs:
                continue
            pads = json.loads(str(func.attrs["convdsl.int8_conv"]))["kw"]["pads"]
            x = v.args[1].fields[0].ty
            key = ("blocked" if len(x.shape.values) == 5 and int(x.shape.values[-1]) == 16 else "nchw",
                   "padded" if any(pads) else "unpadded")
            sch = tvm.s_tir.Schedule(func)
            try:
                pack = sch.get(sch.get_sblock("vnni_pack"))
                packs.setdefault(key, []).append(int(pack.writes[0].source.shape[-1]))
            except Exception:  # noqa: BLE001 - no such block
                packs.setdefault(key, []).append(None)
    assert len(packs[("blocked", "unpadded")]) >= (4 if net == "mobilenet_v2_blocks" else 3), packs
    assert set(packs[("blocked", "unpadded")]) == {None}, packs
    assert set(packs[("nchw", "padded")]) == {4}, packs  # the stem
    if net == "resnet18_64x64":
        assert len(packs[("blocked", "padded")]) >= 15 and set(packs[("blocked", "padded")]) == {16}, packs


AVX2_TARGET = {"kind": "llvm", "mcpu": "haswell"}


def _main_calls(mod) -> list:
    from tvm import relax

    return [b.value for b in mod["main"].body.blocks[0].bindings
            if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"]


def test_avx2_int8_convs_stay_blocked():
    """On AVX2 (7-bit weights: vpmaddubsw, 8 x 4 bytes) the int8 convs write 8-channel blocks, the next conv
    reads them as they are and the depthwise convs over whole 16-channel vectors read them too (in_block 8,
    out_block 16): no NCHW transpose (unpack_nchwc / pack_nchwc) from the stem through features.3 (the first
    is where features.4's 72-channel depthwise conv needs NCHW), where NCHW convs needed one on each side of
    every depthwise conv (MobileNet-V2 int8 on Zen 3: 5.66 -> 3.64 ms, docs/benchmarks.md)."""
    from convdsl.backends.tvm.lower_quant import int8_instructions
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    _, q, _ = mbv2_int8(1.0, 7)
    with tvm.target.Target(AVX2_TARGET):
        assert int8_instructions(q).get("vpmaddubsw", 0) >= 10
        mod = blocked_layout(lower_graph(q, "tvm-llvm", bind={"N": 2}), "int8")
    calls = _main_calls(mod)
    names = [c.args[0].name_hint for c in calls]
    first_transpose = min(i for i, n in enumerate(names) if "pack_nchwc" in n)
    shape = lambda e: [int(d) for d in e.ty.shape.values]  # noqa: E731
    before = calls[:first_transpose]
    convs = [c for c in before if (f := mod[c.args[0]]).attrs is not None and "convdsl.int8_conv" in f.attrs]
    depthwise = [c for c in before if len(shape(c.args[1].fields[1])) == 4]  # [C/16, KH, KW, 16] f32 weights
    assert len(convs) == 7 and len(depthwise) == 3, names  # the stem, features.1-3's 1x1 convs; their depthwise
    assert all(shape(c)[-1] == 8 for c in convs), [shape(c) for c in convs]
    assert all(shape(c.args[1].fields[0])[-1] == 8 and shape(c)[-1] == 16 for c in depthwise), \
        [(shape(c.args[1].fields[0]), shape(c)) for c in depthwise]


def _avx2_int8(source: str, convs: int):
    """``source`` (input [N, 8, 10, 10]) quantized with 7-bit weights on two calibration batches, every conv on
    vpmaddubsw for an AVX2 target, and an input batch of 2."""
    from convdsl.api import load_graph
    from convdsl.backends.tvm.lower_quant import int8_instructions
    from convdsl.passes.quantize import quantize

    rng = np.random.default_rng(0)
    q = quantize(load_graph(source, seed=0), [rng.standard_normal((8, 8, 10, 10)).astype(np.float32) for _ in range(2)],
                 build=torch_module, weight_bits=7)
    with tvm.target.Target(AVX2_TARGET):
        assert int8_instructions(q) == {"vpmaddubsw": convs}
    return q, rng.standard_normal((2, 8, 10, 10)).astype(np.float32)


def _haswell(g, winograd: bool = False):
    """``g`` built for an AVX2 CPU (haswell) with the analytic tiles (no database); every conv direct unless
    ``winograd`` (test_winograd_int8.py)."""
    return ctvm.backend("tvm-llvm", progress=False, use_db=False, target_json=AVX2_TARGET,
                        winograd=winograd).build_module(g)


# output channels of each conv: 12 and 2 are no whole 8-channel block (weights padded to 16 and 8)
AVX2_PARTIAL_BLOCKS = """
network partial(x: f32[N, 8, 10, 10]) {
    y = x | conv2d(16, 3, pad=1) as c1 | relu | conv2d(12, 1) as c2 | relu
    z = y | conv2d(16, 3, pad=1) as c3 | relu | conv2d(2, 1) as c4
    return z
}
"""


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="the CPU has no AVX2")
def test_avx2_int8_convs_of_partial_blocks_match_torch_simulation(scheduled):
    """A conv whose output channels are no whole number of AVX2's 8-channel blocks (12; U-Net's 2-class head)
    writes NCHW, and the blocked convs around it read and write the right channels: every int8 tensor
    equal to the torch simulation on the AVX2 kernels."""
    q, x = _avx2_int8(AVX2_PARTIAL_BLOCKS, convs=4)
    steps, equal, total = _compare_network(_haswell, q, x)
    assert steps <= 1 and total > 0
    assert equal == total  # measured: bit-exact


# a 3x3 conv writing two 8-channel blocks, then 1x1 convs reading blocks: 16 -> 64 (8 blocks), 64 -> 24 (3)
AVX2_POINTWISE = """
network pointwise(x: f32[N, 8, 10, 10]) {
    return x | conv2d(16, 3, pad=1) as c1 | relu | conv2d(64, 1) as c2 | relu | conv2d(24, 1) as c3
}
"""


def test_maddubs_pointwise_tile():
    assert int8.maddubs_pointwise_tile(16, 64) == (1, 8)  # ResNet-50's 64 -> 128 1x1: 8 blocks (4 KiB of weights)
    assert int8.maddubs_pointwise_tile(32, 256) == (1, 8)
    assert int8.maddubs_pointwise_tile(64, 1024) == (1, 2)  # 8 KiB of weights per block: two fit in 24 KiB
    assert int8.maddubs_pointwise_tile(13, 104) == (1, 13)  # a prime block count, all 13 accumulators
    assert int8.maddubs_pointwise_tile(12, 576) == (1, 4)
    assert int8.maddubs_pointwise_tile(64, 2048) is None  # one block's weights fill 16 KiB: the width-first tile
    assert int8.maddubs_pointwise_tile(17, 64) is None  # 17 blocks, no divisor in 2..13
    for ob in range(1, 70):
        for channels in (4, 16, 64, 100, 256, 512, 1000, 1536):
            tile = int8.maddubs_pointwise_tile(ob, channels)
            if tile is not None:
                assert tile[0] == 1 and ob % tile[1] == 0 and 2 <= tile[1] <= int8.MADDUBS_POINTWISE_ACCUMULATORS
                assert tile[1] * channels * 8 <= int8.MADDUBS_POINTWISE_WEIGHT_BYTES


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="the CPU has no AVX2")
def test_avx2_pointwise_convs_take_one_pixel_tiles_and_match_torch_simulation(scheduled):
    """1x1 vpmaddubsw convs reading 8-channel blocks take the one-pixel tile (``maddubs_pointwise_tile``: 1 x 8
    blocks for 16 -> 64 channels, 1 x 3 for 64 -> 24), the 3x3 conv its width-first register tile; every int8
    tensor equal to the torch simulation."""
    from convdsl.backends.tvm.schedules import tophub

    q, x = _avx2_int8(AVX2_POINTWISE, convs=3)
    with tophub.recording() as seen:
        _haswell(q)
    tiles = {(wl.spatial[1], wl.reduce[1]): chosen for wl, _, chosen, _ in seen if wl.kind == "int8_conv"}
    assert tiles == {(2, 3): int8.maddubs_register_tile(2, 10), (8, 1): (1, 8), (3, 1): (1, 3)}, tiles
    steps, equal, total = _compare_network(_haswell, q, x)
    assert steps <= 1 and total > 0
    assert equal == total  # measured: bit-exact


MBV2_TARGETS = {"host": None, "avx512-vnni": {"kind": "llvm", "mcpu": "icelake-server"},
                "avx512-no-vnni": {"kind": "llvm", "mcpu": "skylake-avx512"}, "avx2": {"kind": "llvm", "mcpu": "haswell"}}


MBV2_CASES = [(t, s, 8) for s in (1.0, 1e-7) for t in MBV2_TARGETS] + [("host", 1.0, 7), ("avx2", 1.0, 7)]


@needs_int8_schedule
@pytest.mark.parametrize("target,scale,bits", MBV2_CASES,
                         ids=[f"{t}-{'calibrated-bn' if s == 1 else 'vanishing'}{'-w7' if b == 7 else ''}"
                              for t, s, b in MBV2_CASES])
def test_mobilenet_v2_blocks_int8_match_torch_simulation(target, scale, bits):
    """tvm-llvm int8 against the torch simulation on MobileNet-V2's blocks: every int8 tensor within one
    quantization step (measured: equal), the float output within float32 rounding; on each x86 path
    (VNNI; AVX-512 without VNNI and AVX2 take vpmaddwd with 8-bit weights, vpmaddubsw with 7-bit ones),
    run where this CPU has the instructions."""
    from convdsl.backends.tvm.lower_quant import int8_instructions
    from convdsl.backends.tvm.targets import host_can_run
    from tests.passes.test_quantize import probe, torch_values

    config = MBV2_TARGETS[target]
    g, q, x = mbv2_int8(scale, bits)
    if bits == 7 and (target == "avx2" or HAS_AVX2_ONLY):
        with tvm.target.Target(config or {"kind": "llvm", "mcpu": "haswell"}):
            assert int8_instructions(q).get("vpmaddubsw", 0) >= 10 and "vpmaddwd" not in int8_instructions(q)
    bias = q.params["classifier.bias"].astype(np.int64)
    assert np.abs(bias).max() < np.iinfo(np.int32).max  # never saturated
    p = probe(q)
    p.symbols = {**p.symbols, "N": x.shape[0]}
    backend = ctvm.backend("tvm-llvm", progress=False, use_db=False, target_json=config)
    built = backend.build(p)
    assert built.own > 0  # convdsl's int8 schedules took the kernels
    why = host_can_run(config) if config else None
    if why:
        pytest.skip(f"built ({built.own} of {built.functions} kernels scheduled by convdsl); not run: {why}")
    m = backend.build_module(p)
    want = torch_values(q, (x,))
    for v, y in zip(p.outputs, m(x)):
        y, ref = np.asarray(y), want[v.node]
        if y.dtype.kind in "iu":
            assert _steps(y, ref) <= 1, v.node
        else:
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max() + 1e-30), err_msg=v.node)
    out = want[q.outputs[0].node]
    if scale == 1:  # and the int8 network is still the float one, roughly
        with torch.no_grad():
            ref = torch_module(g)(torch.from_numpy(x)).numpy()
        assert float(np.abs(out - ref).max()) < 0.25 * float(np.ptp(ref))


def test_a_saturated_bias_is_refused_not_wrapped():
    """A bias at int32's limit would wrap in the kernels' int32 sums (the simulation sums in float64):
    the lowering refuses it with the channel and what to do."""
    from convdsl.errors import ConvDSLError

    g = _qconv_program((8, 6, 6), 16, 3, 1, 1, 1, "u8", "u8", False)
    key = next(k for k in g.params.names() if k.endswith("bias"))
    b = g.params[key].copy()
    b[3] = np.iinfo(np.int32).min
    g.params[key] = b
    with pytest.raises(ConvDSLError, match="output channel 3 can overflow"):
        ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)


def _kernel_names(graph) -> list[str]:
    """The PrimFuncs of the tvm-llvm module of ``graph`` after fusion."""
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm")
    with spec.tvm_target():
        mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec))(lower_graph(graph))
    return [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


@needs_int8_schedule
@pytest.mark.parametrize("tokens", [197, 50])
def test_qlinear_vit_tokens_fuse_gelu_and_requantize(scheduled, tokens):
    """ViT's MLP: [1, tokens, C] -> qlinear (f32 out) -> gelu -> quantize.  The kernel writes the output's
    own shape, so FuseOps appends gelu and the quantize to its epilogue (one kernel); 197 tokens, a
    prime, are computed as 198 rows (``qlinear_row_padding``) and the padded row never stored."""
    from convdsl.backends.tvm.lower_quant import int8_layout, qlinear_row_padding

    src = f"""network t(x: f32[1, {tokens}, 64]) {{
    return x | quantize(0.05, 128) | qlinear(96, in_scale=0.05, in_zp=128, out_dtype=f32) | gelu | quantize(0.02, 128)
}}
"""
    g = _random_int_params(graph_of(src), wmax=63)
    x = (3 * np.random.default_rng(4).standard_normal((1, tokens, 64))).astype(np.float32)
    names = _kernel_names(g)
    assert any("qlinear" in n and "gelu" in n for n in names) and not any("gelu" in n and "qlinear" not in n
                                                                            for n in names), names
    assert vnni_kernels(g, MADDUBS) == (1 if HAS_AVX2_ONLY else 0)
    got, want = scheduled(g)(x), _torch(g, x)
    assert _steps(got, want) <= 1 and len(np.unique(want)) > 10  # gelu in float: a tie may round apart
    assert np.mean(got != want) < 0.01
    with tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}):  # AVX2's 8-channel tiles: 198 and 52 rows
        assert qlinear_row_padding(tokens, 96, int8_layout()) > 0


def test_qlinear_row_padding_gives_full_register_tiles():
    from convdsl.backends.tvm.lower_quant import int8_layout, qlinear_row_padding

    with tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}):
        avx2 = int8_layout()  # 8 x 2 int16 (vpmaddwd), 8-channel blocks as vpmaddubsw's
        assert qlinear_row_padding(197, 384, avx2) == 1  # 198 rows: 6 x 2 tiles on AVX2 (197: 1 x 3)
        assert int8.maddubs_register_tile(48, 198) == (6, 2)
        for rows, out in [(1, 1000), (3, 10), (50, 33), (196, 384), (64, 64)]:
            assert qlinear_row_padding(rows, out, avx2) <= max(1, rows // 16)
        assert qlinear_row_padding(96, 64, avx2) == 0 and qlinear_row_padding(1, 1000, avx2) == 0  # 12 x 1 already
    with tvm.target.Target(VNNI_TARGET):  # 8-channel blocks on VNNI are ymm vpdpbusd, tiled by register_tile
        ymm = int8_layout(np.ones((1000, 8, 1, 1), np.int8))
        assert ymm == (8, 4, "int8", "vpdpbusd-ymm") and int8.register_tile(125, 198) == (3, 5)
        assert qlinear_row_padding(198, 1000, ymm) == 0  # (AVX2's 12-accumulator rule padded 6 rows for (3, 5))
        assert qlinear_row_padding(197, 1000, ymm) == 1 and int8.register_tile(125, 197) == (1, 5)


@needs_int8_schedule
def test_transposed_conv_int8_matches_torch_simulation(scheduled):
    """A U-Net up-conv (2x2, stride 2) and an FCN-style one (3x3, stride 2, pad 1, output_pad 1) quantized as the
    qconv of their stride phases, the int8 reshapes that interleave them and (the second) the slices that crop
    them (passes/quantize.py): on the int8 kernels, between quantized convs, equal to the torch simulation at
    every int8 tensor (measured: bit-exact)."""
    from tests.passes.test_quantize import _upconv_int8

    _, (q, _) = _upconv_int8()
    assert q.node("up.phases").op == "qconv2d" and q.node("up.merge_phases").types[0].dtype == "u8"
    assert q.node("up3.crop").op == "index_select" and q.node("up3.crop").types[0].dtype == "u8"
    assert vnni_kernels(q) == (5 if HAS_VNNI else 0)  # c1, the two phases' convs, c2, c3
    x = np.random.default_rng(4).standard_normal((2, 8, 6, 5)).astype(np.float32)
    steps, equal, total = _compare_network(scheduled, q, x)
    assert steps <= 1 and total > 0
    assert equal == total


@needs_int8_schedule
def test_dcgan_int8_matches_torch_simulation(scheduled):
    """DCGAN's generator (five transposed convs, four with a crop, each ReLU fused into its phases' qconv): on
    the int8 kernels, equal to the torch simulation at every int8 tensor (measured: bit-exact)."""
    from tests.passes.test_quantize import _dcgan_int8

    _, (q, _) = _dcgan_int8()
    assert vnni_kernels(q) == (5 if HAS_VNNI else 0)
    x = np.random.default_rng(4).standard_normal((2, 100, 1, 1)).astype(np.float32)
    steps, equal, total = _compare_network(scheduled, q, x)
    assert steps <= 1 and total > 0
    assert equal == total


@needs_int8_schedule
def test_int8_concat_matches_torch_simulation(scheduled):
    """Concats of int8 layers written at one shared scale (passes/quantize.py: a skip and an up-conv's phases,
    a concat of that concat, the relu of a layer clamping at a zero point above qmin): on the int8 kernels, equal
    to the torch simulation at every int8 tensor (measured: bit-exact)."""
    from convdsl.api import load_graph
    from convdsl.passes.quantize import quantize
    from tests.passes.test_quantize import JOINS

    g = load_graph(JOINS, seed=0)
    calib = [np.random.default_rng(i).standard_normal((8, 4, 8, 8)).astype(np.float32) for i in range(2)]
    q = quantize(g, calib, build=torch_module)
    assert [q.node(c).types[0].dtype for c in ("j", "n", "k", "l")] == ["u8", "u8", "f32", "f32"]
    assert q.node("ca").attrs["relu"] and q.node("ca").attrs["out_zp"] > 0
    x = np.random.default_rng(4).standard_normal((2, 4, 8, 8)).astype(np.float32)
    steps, equal, total = _compare_network(scheduled, q, x)
    assert steps <= 1 and total > 0
    assert equal == total


# ---- int8 layers that only dequantize reads (lower_quant.on_grid) --------------------------------------------------
GRID_CASES = {
    # name: (layer, its output dtype, its out_zp, relu, the dequantize's zero point)
    "1x1-u8": ("qconv2d(24, 1", "u8", 7, False, 7),
    "3x3-relu-other-zp": ("qconv2d(24, 3, pad=1", "u8", 7, True, 5),
    "i8": ("qconv2d(24, 1", "i8", -5, False, -5),
    "qlinear": ("qlinear(24", "u8", 100, False, 100),
    "qconv3d-relax": ("qconv3d(24, 1", "u8", 7, False, 7),  # the Relax path (_requantize), not the int8 kernel
}


def _grid_program(case: str, also_int8_reader: bool = False):
    """a -> quantize -> the layer (requantizing) -> dequantize -> + b: an imported QDQ file's residual block end;
    ``also_int8_reader``: a second int8 layer reads the layer's output too."""
    layer, dt, zq, relu, zd = GRID_CASES[case]
    shape = {"qlinear": "2, 7, 16", "qconv3d-relax": "1, 16, 3, 6, 6"}.get(case, "2, 16, 10, 10")
    out = {"qlinear": "2, 7, 24", "qconv3d-relax": "1, 24, 3, 6, 6"}.get(case, "2, 24, 10, 10")
    extra = (f"\n    e = c | qconv2d(8, 1, in_scale=0.2, in_zp={zq}, out_dtype=f32)" if also_int8_reader else "")
    src = f"""network t(a: f32[{shape}], b: f32[{out}]) {{
    c = a | quantize(0.05, 125) | {layer}, in_scale=0.05, in_zp=125, out_dtype={dt}, out_scale=0.2, out_zp={zq},
                                          relu={str(relu).lower()}){extra}
    d = c | dequantize(0.2, zero_point={zd})
    return {"(add(d, b), e)" if also_int8_reader else "add(d, b)"}
}}
"""
    return _random_int_params(graph_of(src))


def _int8_tensors(g) -> int:
    """How many int8 (u8 / i8) tensors the lowered Relax ``main`` computes."""
    from convdsl.backends.tvm.lowering import lower_graph

    main = lower_graph(g)["main"]
    return sum(str(b.var.ty.dtype) in ("uint8", "int8") for block in main.body.blocks for b in block.bindings
               if hasattr(b.var.ty, "dtype"))


@needs_int8_schedule
@pytest.mark.parametrize("case", list(GRID_CASES), ids=list(GRID_CASES))
def test_a_layer_only_dequantize_reads_computes_in_float_and_stays_exact(scheduled, case):
    """An int8 layer whose only reader dequantizes it is lowered to q - out_zp in float32 (no u8 tensor, no cast
    pair or zero-point subtract in the epilogue: ResNet-50's imported block ends): the float result equals the
    torch simulation's, which requantizes to the int8 code and dequantizes it, bit for bit."""
    g = _grid_program(case)
    assert _int8_tensors(g) == 1  # the input's quantize only
    x0 = (4 * np.random.default_rng(5).standard_normal(g.input_types()[0].shape)).astype(np.float32)
    x1 = np.random.default_rng(6).standard_normal(g.input_types()[1].shape).astype(np.float32)
    got, want = scheduled(g)(x0, x1), _torch(g, (x0, x1))
    np.testing.assert_array_equal(got, want)
    # the codes reach both clamps (and relu's zero point): the grid's bounds are exercised
    codes = np.rint((want - x1) / np.float32(0.2)) + GRID_CASES[case][4]
    lo, hi = (-128, 127) if GRID_CASES[case][1] == "i8" else (0, 255)
    floor = GRID_CASES[case][2] if GRID_CASES[case][3] else lo
    assert codes.min() == floor and codes.max() == hi and len(np.unique(codes)) > 20


@needs_int8_schedule
def test_a_layer_an_int8_layer_also_reads_keeps_its_int8_output(scheduled):
    g = _grid_program("1x1-u8", also_int8_reader=True)
    assert _int8_tensors(g) == 2  # the input's quantize and the layer
    x0 = np.random.default_rng(5).standard_normal((2, 16, 10, 10)).astype(np.float32)
    x1 = np.random.default_rng(6).standard_normal((2, 24, 10, 10)).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in torch_module(g)(torch.from_numpy(x0), torch.from_numpy(x1))]
    got = scheduled(g)(x0, x1)
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype,zq,zd", [("u8", 1, 1), ("u8", 1, 3), ("i8", -126, -126)])
def test_a_quantize_only_dequantize_reads_stays_in_float_and_exact(scheduled, dtype, zq, zd):
    """quantize -> dequantize between float ops (an imported transformer's QuantizeLinear -> DequantizeLinear):
    no int8 tensor at all, and the same values as the torch simulation, both clamps reached (GELU's minimum,
    -0.17, is three steps below a zero point one step above the lowest code)."""
    src = f"""network t(a: f32[2, 3, 40], b: f32[2, 3, 40]) {{
    d = a | gelu | quantize(0.05, {zq}, dtype={dtype}) | dequantize(0.05, zero_point={zd})
    return add(d, b)
}}
"""
    g = graph_of(src)
    assert _int8_tensors(g) == 0
    x0 = (8 * np.random.default_rng(7).standard_normal((2, 3, 40))).astype(np.float32)
    x1 = np.random.default_rng(8).standard_normal((2, 3, 40)).astype(np.float32)
    got, want = scheduled(g)(x0, x1), _torch(g, (x0, x1))
    np.testing.assert_array_equal(got, want)
    codes = np.rint((want - x1) / np.float32(0.05)) + zd
    assert (codes.min(), codes.max()) == ((0, 255) if dtype == "u8" else (-128, 127)) and len(np.unique(codes)) > 50
