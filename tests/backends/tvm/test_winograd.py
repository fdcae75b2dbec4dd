"""Winograd F(m x m, 3x3) for f32 3x3 stride-1 convs on tvm-llvm (backends/tvm/schedules/winograd.py):
the transform matrices against numpy's correlation, the built kernels against torch's conv2d
(odd sizes, padding, channel counts that are not multiples of 8, fused epilogues, batches), which
convs take it, the manifest's count, the off-switch, and the kernels' structure."""
from __future__ import annotations

import json

import re

import numpy as np
import pytest

from .conftest import assert_close, graph_of, one_op, random_inputs, torch_outputs

pytest.importorskip("tvm")


def _backend(**kw):
    from convdsl.backends.tvm import backend

    return backend("tvm-llvm", use_db=False, **kw)


@pytest.mark.parametrize("m", [2, 3, 4, 6])
def test_matrices_compute_a_1d_correlation(m):
    from convdsl.backends.tvm.schedules.winograd import matrices

    at, g, bt = matrices(m)
    assert at.shape == (m, m + 2) and g.shape == (m + 2, 3) and bt.shape == (m + 2, m + 2)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
        np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), np.correlate(d, w, "valid"), rtol=1e-12, atol=1e-12)


def test_weight_transform_computes_a_2d_tile():
    """U = G g G^T packed [a*a, O/ob, I, ob]: A^T (U . B^T d B) A is the 3x3 correlation of one tile."""
    from convdsl.backends.tvm.schedules.winograd import matrices, weight_transform

    m, a = 4, 6
    at, _, bt = matrices(m)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)  # OIHW
    d = rng.standard_normal((3, a, a))
    u = weight_transform(w, m, 8).astype(np.float64)  # [36, 2, 3, 8]
    for o in (0, 9, 15):
        uo = u[:, o // 8, :, o % 8].reshape(a, a, 3)  # [a, a, I]
        y = sum(at @ (uo[:, :, i] * (bt @ d[i] @ bt.T)) @ at.T for i in range(3))
        ref = sum(np.array([[np.sum(d[i, r:r + 3, c:c + 3] * w[o, i]) for c in range(m)] for r in range(m)])
                  for i in range(3))
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


CONV = [
    ([1, 16, 14, 14], 32, dict(k=3, pad=1)),
    ([1, 20, 11, 9], 36, dict(k=3, pad=[1, 2])),  # blocks of 4 (20, 36 channels); odd sizes, asymmetric padding
    ([2, 24, 13, 13], 40, dict(k=3, pad="same")),  # blocks of 8, batch 2
    ([1, 24, 10, 10], 20, dict(k=3, bias=False)),  # blocks of 8 in, 4 out; no padding (8x8 out: two whole tiles)
    ([1, 32, 7, 7], 64, dict(k=3, pad=1)),  # 7x7: the last tile row and column half outside
    ([1, 16, 3, 5], 16, dict(k=3, pad=1)),  # fewer outputs than one tile
]


@pytest.mark.parametrize("shape,out,kw", CONV, ids=[f"{s}->{o}-{kw}" for s, o, kw in CONV])
def test_conv_matches_torch(shape, out, kw, monkeypatch):
    from convdsl.backends.tvm.schedules import winograd

    monkeypatch.setattr(winograd, "MIN_TILES_AVX512", 0)  # the small outputs take Winograd on AVX-512 too
    _assert_one_winograd_conv_matches(shape, out, kw)


def _assert_one_winograd_conv_matches(shape, out, kw) -> None:
    """One conv2d, built as one Winograd conv, matches torch on random inputs."""
    g = graph_of(one_op("conv2d", [shape], out, **kw))
    xs = random_inputs(g)
    be = _backend()
    outs = be.runner(g)(xs)
    assert be.last_build.winograd == 1
    assert_close(outs, torch_outputs(g, xs))


RESIDUAL = """
network t(x: f32[N, 16, 20, 20]) {
    a = x | conv2d(32, 3, pad=1, bias=false) | batchnorm | relu
    b = a | conv2d(32, 3, pad=1, bias=false) | batchnorm | relu | conv2d(32, 3, pad=1) | batchnorm
    s = a | conv2d(32, 1, stride=1) | batchnorm
    return relu(s + b) | conv2d(24, 3, pad=1) | relu
}
"""


@pytest.mark.parametrize("batch", [1, 2])
def test_fused_epilogues_match_torch(batch):
    """batchnorm, relu and a residual add whose other branch is a 1x1 conv, fused into the output
    transform; the last layer's output leaves the blocked layout."""
    g = graph_of(RESIDUAL.replace("N, 16", f"{batch}, 16"))
    xs = random_inputs(g)
    be = _backend()
    outs = be.runner(g)(xs)
    assert be.last_build.winograd == 4
    assert_close(outs, torch_outputs(g, xs))


def test_clip_epilogue_matches_torch():
    g = graph_of("network t(x: f32[1, 16, 20, 20]) {\n    return x | conv2d(24, 3, pad=1) | relu6\n}\n")
    xs = random_inputs(g)
    be = _backend()
    outs = be.runner(g)(xs)
    assert be.last_build.winograd == 1
    assert_close(outs, torch_outputs(g, xs))


def test_dynamic_batch_matches_torch():
    g = graph_of(one_op("conv2d", [["N", 16, 12, 12]], 16, k=3, pad=1))
    be = _backend(dynamic_batch=True)
    run = be.runner(g)
    assert be.last_build.dynamic == ("N",) and be.last_build.winograd == 1
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 16, 12, 12)).astype(np.float32)
        assert_close(run([x]), torch_outputs(g, [x]))


def test_choose_m_keeps_few_tiles_direct_on_avx512():
    """AVX-512 (32 registers): fewer than 8 F(4,3) tiles per image (7x7 outputs: 4) stay direct,
    the Winograd GEMM being memory-bound there; AVX2 (16 registers) takes F(4,3) at 7x7 as
    measured on Zen 3.  Below 16 channels, direct everywhere."""
    from convdsl.backends.tvm.schedules.winograd import choose_m

    assert choose_m(512, 512, 7, 7, registers=32) is None
    assert choose_m(512, 512, 7, 7, registers=16) == 4
    assert choose_m(64, 64, 56, 56, registers=32) == 4
    assert choose_m(8, 64, 56, 56, registers=32) is None and choose_m(64, 8, 56, 56, registers=16) is None


def test_choose_m_takes_f33_where_the_gemm_streams_its_weights_on_avx512():
    """AVX-512: F(3,3) where F(4,3)'s GEMM has too few rows to reuse its weights (14x14 outputs: 16
    F(4,3) tiles against 25 F(3,3) ones, 25 / 36 of the weight bytes); F(4,3) where the tiles are many
    (28x28, 56x56).  AVX2 keeps F(4,3), as measured on Zen 3."""
    from convdsl.backends.tvm.schedules.winograd import choose_m

    assert choose_m(256, 256, 14, 14, registers=32) == 3
    assert choose_m(256, 256, 14, 14, registers=16) == 4
    assert choose_m(128, 128, 28, 28, registers=32) == 4
    assert choose_m(64, 64, 56, 56, registers=32) == 4


@pytest.mark.parametrize("shape,out,kw", CONV, ids=[f"{s}->{o}-{kw}" for s, o, kw in CONV])
def test_f33_conv_matches_torch(shape, out, kw, monkeypatch):
    """F(3x3, 3x3) (5x5 tiles: 3 does not divide 14, 11, 13 or 10, so the last tiles hang over)."""
    from convdsl.backends.tvm.schedules import winograd

    monkeypatch.setattr(winograd, "choose_m", lambda *a, **k: 3)
    _assert_one_winograd_conv_matches(shape, out, kw)


@pytest.mark.parametrize("mcpu,positions", [("skylake-avx512", 25), ("haswell", 36)])
def test_14x14_gemm_positions_follow_the_isa(mcpu, positions):
    """A 16 -> 16 conv at 14x14: AVX-512 builds F(3,3) (25 GEMMs), AVX2 F(4,3) (36) (compiled, not run)."""
    import tvm

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    g = graph_of(one_op("conv2d", [[1, 16, 14, 14]], 16, k=3, pad=1))
    spec = make_target("tvm-llvm", target_json={"kind": "llvm", "mcpu": mcpu})
    with spec.tvm_target():
        mod = tvm.transform.Sequential(optimize_passes(spec, "f32"))(lower_graph(g, "tvm-llvm", {}))
    gemms = [f for gv, f in mod.functions.items() if gv.name_hint.startswith("winograd_gemm")]
    assert len(gemms) == 1
    assert [int(d) for d in gemms[0].params[0].ty.shape][0] == positions


@pytest.mark.parametrize("c,o,kw", [(16, 16, dict(k=3, stride=2, pad=1)), (16, 16, dict(k=3, dilation=2, pad=2)),
                                    (16, 16, dict(k=5, pad=2)), (16, 16, dict(k=3, pad=1, groups=2)),
                                    (16, 16, dict(k=[3, 1], pad=[1, 0])), (8, 32, dict(k=3, pad=1))],
                         ids=["stride2", "dilation2", "5x5", "groups2", "3x1", "8-channels"])
def test_other_convs_stay_direct(c, o, kw):
    g = graph_of(one_op("conv2d", [[1, c, 12, 12]], o, **kw))
    xs = random_inputs(g)
    be = _backend()
    outs = be.runner(g)(xs)
    assert be.last_build.winograd == 0
    assert_close(outs, torch_outputs(g, xs))


def test_off_switch_gives_the_direct_conv():
    g = graph_of(RESIDUAL.replace("N, 16", "1, 16"))
    xs = random_inputs(g)
    be = _backend(winograd=False)
    outs = be.runner(g)(xs)
    assert be.last_build.winograd == 0
    assert_close(outs, torch_outputs(g, xs))
    names = _kernel_names(g, winograd=False)
    assert not any("winograd" in n for n in names) and sum("conv2d_nchwc" in n for n in names) == 5, names


def _kernel_names(g, winograd: bool = True) -> list[str]:
    return sorted(_scheduled(g, winograd))


def _scheduled(g, winograd: bool = True) -> dict:
    import tvm

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules import schedule_module
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm")
    target = spec.tvm_target()
    with target:
        mod = tvm.transform.Sequential(optimize_passes(spec, "f32", winograd))(lower_graph(g, "tvm-llvm", {}))
        mod = schedule_module(mod, target)
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_kernel_structure():
    """Per Winograd conv three kernels: the input transform (opaque to FuseOps, so the previous
    layer's epilogue is not fused into it), the GEMMs, the output transform with the conv's
    epilogue; each scheduled, parallel and vectorized; the GEMM's tile accumulates locally."""
    from convdsl.backends.tvm.schedules import is_scheduled

    funcs = _scheduled(graph_of(RESIDUAL.replace("N, 16", "1, 16")))
    names = sorted(funcs)
    assert sum(n.startswith("winograd_input") for n in names) >= 1, names
    assert sum(n.startswith("winograd_gemm") for n in names) >= 1, names
    outputs = [n for n in names if "winograd_output" in n]
    assert outputs and all(n.startswith("fused_") for n in outputs), names  # the epilogue is in it
    assert any("relu" in n for n in outputs) and any("add" in n for n in outputs), names
    assert sum("conv2d_nchwc" in n for n in names) == 1, names  # the 1x1 conv
    for name, f in funcs.items():
        assert is_scheduled(f), name
        if "winograd" in name:
            text = f.script()
            assert "T.parallel" in text and "T.vectorized" in text, name
            if "gemm" in name:
                assert 'scope="local"' not in text or "T.unroll" in text, name
            if "output" in name:  # rows before channel blocks, as the direct convs (cpu.rows_first)
                parallel = [ln.strip() for ln in text.splitlines() if "T.parallel" in ln]
                assert len(parallel) == 1 and re.search(r"_(i2|y)_0_(i1|oc)_fused in", parallel[0]), parallel


def test_manifest_records_the_winograd_convs(tmp_path):
    from click.testing import CliRunner

    from convdsl.cli import main

    src = tmp_path / "net.cdl"
    src.write_text(RESIDUAL.replace("N, 16", "1, 16"))
    for flag, count in (([], 4), (["--no-winograd"], 0)):
        out = tmp_path / f"out{len(flag)}"
        r = CliRunner().invoke(main, ["compile", str(src), "--backend", "tvm-llvm", "--no-db", "-o", str(out), *flag])
        assert r.exit_code == 0, r.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["tvm"]["winograd_convs"] == count


def test_verify_compares_the_direct_build(tmp_path):
    """`convdsl verify -b tvm-llvm,tvm-llvm-direct`: the Winograd and the direct build both against torch."""
    from click.testing import CliRunner

    from convdsl.cli import main

    src = tmp_path / "net.cdl"
    src.write_text("network t(x: f32[N, 16, 12, 12]) {\n    return x | conv2d(16, 3, pad=1) | relu\n}\n")
    r = CliRunner().invoke(main, ["verify", str(src), "-b", "tvm-llvm,tvm-llvm-direct", "--examples", "2"])
    assert r.exit_code == 0, r.output
    assert "tvm-llvm-direct" in r.output, r.output


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_every_kernel_is_scheduled_for_avx2_and_avx512(mcpu):
    """Both vector ISAs (8 lanes x 16 ymm, 16 x 32 zmm) get the Winograd kernels, all scheduled
    (compiled for the named CPU; not run, which this machine may not be able to)."""
    built = _backend(target_json={"kind": "llvm", "mcpu": mcpu}).build(graph_of(RESIDUAL.replace("N, 16", "1, 16")))
    assert built.winograd == 4 and built.own == built.functions
