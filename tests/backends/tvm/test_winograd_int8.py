"""The exact int8 Winograd F(2,3) kernel (backends/tvm/schedules/winograd_int8.py): its integer transforms against
numpy's correlation, its packing, its choice rule, and networks built for an AVX2 CPU against the torch simulation,
bit for bit."""
import numpy as np
import pytest
import tvm

import convdsl.backends.tvm as ctvm
from convdsl.backends.tvm.lower_quant import pack_vnni_weight
from convdsl.backends.tvm.schedules import winograd_int8 as w8
from convdsl.backends.tvm.targets import host_can_run
from tests.backends.tvm.test_int8_vnni import AVX2_TARGET, _compare_network, _qconv_program, _steps, _torch

MADD, MADDUBS = "llvm.x86.avx2.pmadd.wd", "llvm.x86.avx2.pmadd.ub.sw"
CAN_RUN = host_can_run(AVX2_TARGET) is None


def _correlate(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """numpy's 3x3 valid correlation: x [C, H, W], w [O, C, 3, 3] -> [O, H - 2, W - 2] (int64)."""
    win = np.lib.stride_tricks.sliding_window_view(x.astype(np.int64), (3, 3), axis=(1, 2))  # [C, H-2, W-2, 3, 3]
    return np.einsum("chwij,ocij->ohw", win, w.astype(np.int64))


def _winograd_numpy(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """4 y by the kernel's integer transforms, in numpy: V = B^T d B per 4 x 4 tile, M' = V U' summed over channels,
    A^T M' A per tile (x's H - 2 and W - 2 even)."""
    from convdsl.backends.tvm.schedules import winograd

    at, _, bt = (np.rint(m).astype(np.int64) for m in winograd.matrices(2))
    c, h, wd = x.shape
    u = w8.transform_weight(w).reshape(4, 4, c, -1)  # [4, 4, C, O]
    out = np.zeros((w.shape[0], h - 2, wd - 2), np.int64)
    for ty in range(0, h - 2, 2):
        for tx in range(0, wd - 2, 2):
            d = x[:, ty:ty + 4, tx:tx + 4].astype(np.int64)
            v = np.einsum("ai,cij,bj->abc", bt, d, bt)
            m = np.einsum("abc,abco->abo", v, u)
            out[:, ty:ty + 2, tx:tx + 2] = np.einsum("ia,abo,jb->oij", at, m, at)
    return out


@pytest.mark.parametrize("wmax", [64, 127])
def test_integer_transforms_give_four_times_the_correlation(wmax):
    """A^T ((B^T d B) . U') A = 4 (d * g) exactly, at the extremes of |x - zp| <= 255 and the weights; U' in int16
    with the bound ``exact`` assumes."""
    rng = np.random.default_rng(wmax)
    for x in (rng.integers(-255, 256, (24, 10, 8)), np.full((24, 10, 8), 255), np.full((24, 10, 8), -255)):
        w = rng.integers(-wmax, wmax + 1, (16, 24, 3, 3))
        np.testing.assert_array_equal(_winograd_numpy(x, w), 4 * _correlate(x, w))
    u = w8.transform_weight(np.full((8, 8, 3, 3), -128))
    assert np.abs(u).max() == 9 * 128
    assert w8.exact(w8.transform_weight(np.full((8, 256, 3, 3), -64, np.int8)))  # any 7-bit weights, 256 ch
    assert not w8.exact(w8.transform_weight(np.full((8, 512, 3, 3), -128, np.int8)))  # a sum could leave int32
    w = np.zeros((8, 512, 3, 3), np.int8)
    w[:, :64] = -128
    assert w8.exact(w8.transform_weight(w))  # bounded by the layer's own weights


@pytest.mark.parametrize("block", [(8, 4, np.int8), (8, 2, np.int16)], ids=["bytes-8x4", "int16-pairs-8x2"])
def test_weights_unpack_from_either_avx2_layout(block):
    oc, ic, dtype = block
    w = np.random.default_rng(0).integers(-127, 128, (24, 20, 3, 3)).astype(np.int8)
    packed = pack_vnni_weight(w, oc, ic).astype(dtype)
    np.testing.assert_array_equal(w8.weight_from_packed(packed, 24, 20), w)
    p = w8.pack_weight(w8.transform_weight(w))
    assert p.shape == (16, 3, 10, 8, 2) and p.dtype == np.int16
    u = w8.transform_weight(w)  # [16, C, O]
    assert p[5, 1, 3, 2, 1] == u[5, 2 * 3 + 1, 1 * 8 + 2]


def test_the_rule_takes_the_convs_where_it_was_measured_faster():
    assert w8.chosen(64, 64, 56, 56) and w8.chosen(128, 128, 28, 28) and w8.chosen(256, 256, 14, 14)
    assert not w8.chosen(512, 512, 7, 7)  # 16 tiles: measured slower
    assert not w8.chosen(8, 64, 56, 56) and not w8.chosen(64, 8, 56, 56)
    assert w8.applies((3, 3), (1, 1), (1, 1), 1, 8, 8)
    assert not w8.applies((3, 3), (2, 2), (1, 1), 1, 8, 8) and not w8.applies((3, 3), (1, 1), (1, 1), 1, None, 8)
    assert not w8.applies((5, 5), (1, 1), (1, 1), 1, 8, 8) and not w8.applies((3, 3), (1, 1), (2, 2), 1, 8, 8)


def test_register_tile_and_chunks():
    for rows in (4, 7, 8, 14, 16, 28, 56):
        for blocks in (2, 4, 8, 16, 64):
            r, o = w8.gemm_tile(rows, blocks)
            assert rows % r == 0 and blocks % o == 0 and r * o <= w8.GEMM_ACCUMULATORS and r * o + o + 1 <= 16
    assert w8.gemm_tile(28, 8)[0] * w8.gemm_tile(28, 8)[1] == 8
    assert w8.gemm_tile(7, 32) == (7, 1)  # a row of 7 tiles: one weight vector shared by 7 rows
    assert w8.chunk_rows(28, 28) == 1 and w8.chunk_rows(14, 14) == 2 and w8.chunk_rows(7, 7) == 1


def _haswell(g, winograd=True):
    return ctvm.backend("tvm-llvm", progress=False, use_db=False, target_json=AVX2_TARGET,
                        winograd=winograd).build_module(g)


def _scripts(g, winograd: bool = True) -> list[str]:
    """The TIR of every PrimFunc of ``g``'s module, built and scheduled for the AVX2 target."""
    from convdsl.backends.tvm import build as tvm_build
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm", target_json=AVX2_TARGET)
    with spec.tvm_target():
        mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec, winograd=winograd))(lower_graph(g))
        mod = tvm_build.ApplySchedules(tvm.transform.Sequential(tvm_build.schedule_passes(spec, False))(mod))
    return [f.script() for _, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def _count(scripts: list[str], *texts: str) -> int:
    """How many of ``scripts`` contain every one of ``texts``."""
    return sum(all(t in s for t in texts) for s in scripts)


WINOGRAD = ("wino8_gemm", MADD)  # a scheduled Winograd kernel: the GEMM's block, tensorized to vpmaddwd


CASES = {
    # name: (input [C, H, W], out, pad, act dtype, out dtype, relu, weight bound)
    "u8-relu-7bit": ((16, 16, 16), 32, 1, "u8", "u8", True, 63),
    "u8-8bit-int16-pairs": ((16, 16, 16), 24, 1, "u8", "u8", False, 127),
    "i8-input-odd-size": ((24, 15, 13), 16, 1, "i8", "i8", True, 63),
    "f32-output-no-pad": ((16, 18, 18), 16, 0, "u8", "f32", False, 63),
    "asymmetric-pad": ((16, 16, 17), 16, [1, 0, 0, 1], "u8", "u8", False, 63),
}


@pytest.mark.parametrize("case", list(CASES))
def test_qconv2d_matches_torch_simulation(case):
    """One 3x3 stride-1 qconv2d built for an AVX2 CPU: the Winograd kernel (the int16 GEMM, no vpmaddubsw), every
    value equal to the torch simulation, with inputs that reach the int8 range's ends."""
    shape, out, pad, act, out_dtype, relu, wmax = CASES[case]
    g = _qconv_program(shape, out, 3, 1, pad, 1, act, out_dtype, relu, wmax=wmax)
    scripts = _scripts(g)
    assert _count(scripts, *WINOGRAD) == 1
    assert _count(scripts, MADDUBS) == 0 and _count(_scripts(g, winograd=False), MADDUBS) == (1 if wmax < 64 else 0)
    if not CAN_RUN:
        pytest.skip(f"built; not run: {host_can_run(AVX2_TARGET)}")
    rng = np.random.default_rng(3)
    x = (4 * rng.standard_normal(g.node(g.inputs[0]).type.shape)).astype(np.float32)
    x[0, :, :3] = 100.0  # clamped to the top of the range
    x[1, :, -3:] = -100.0
    got, want = _haswell(g)(x), _torch(g, x)
    if out_dtype == "f32":
        np.testing.assert_array_equal(got, want)  # the same int32 sum, requantized by the same float ops
    else:
        assert _steps(got, want) == 0 and len(np.unique(want)) > 20


RESIDUAL = """
network wnet(x: f32[N, 16, 16, 14]) {
    y = x | conv2d(32, 3, pad=1) as c1 | batchnorm | relu
    z = y | conv2d(32, 3, pad=1) as c2 | batchnorm | relu | conv2d(32, 3, pad=1) as c3 | batchnorm
    return relu(y + z) | conv2d(16, 3, pad=1) as c4 | relu | conv2d(8, 3, stride=2, pad=1) as c5
}
"""


def _quantized_residual():
    from convdsl.api import load_graph
    from convdsl.backends.torch import build_module as torch_module
    from convdsl.passes.quantize import quantize

    rng = np.random.default_rng(0)
    g = load_graph(RESIDUAL, seed=0)
    q = quantize(g, [rng.standard_normal((4, 16, 16, 14)).astype(np.float32) for _ in range(2)], build=torch_module,
                 weight_bits=7)
    q.symbols = {**q.symbols, "N": 2}
    return q, rng.standard_normal((2, 16, 16, 14)).astype(np.float32)


def test_residual_network_matches_torch_simulation():
    """Four 3x3 stride-1 convs as Winograd (the stride-2 one direct), a residual add and ReLU in a Winograd kernel's
    epilogue: the output and every int8 tensor equal to the torch simulation; built direct, the same."""
    q, x = _quantized_residual()
    assert _count(_scripts(q), *WINOGRAD) == 4
    b = ctvm.backend("tvm-llvm", progress=False, use_db=False, target_json=AVX2_TARGET)
    built = b.build_module(q)
    assert b.last_build.winograd == 4  # the manifest's tvm.winograd_convs
    if not CAN_RUN:
        pytest.skip(f"built; not run: {host_can_run(AVX2_TARGET)}")
    want = _torch(q, x)
    got = built(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    np.testing.assert_array_equal(got, _haswell(q, winograd=False)(x))  # the same integers, the same requantization
    steps, equal, total = _compare_network(_haswell, q, x)
    assert steps == 0 and equal == total > 0
