"""--precision bf16 on tvm-llvm: schedules/bf16.py's vdpbf16ps kernels, and the precision checks.

The reference is torch on the same weights with the bf16 kernels' arithmetic made explicit:
conv/linear weights and inputs rounded to bf16 by torch's own ``.to(torch.bfloat16)``, the
products and sums in float32 (what vdpbf16ps does: bf16 x bf16 products are exact in f32).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

import convdsl.backends.tvm as ctvm  # noqa: E402
from convdsl.backends.torch import build_module as torch_module  # noqa: E402
from convdsl.backends.tvm.schedules import bf16  # noqa: E402
from convdsl.backends.tvm.targets import cpu_flags, make_target, precision_mattr  # noqa: E402
from convdsl.errors import UsageError  # noqa: E402
from convdsl.lang.elaborate import elaborate  # noqa: E402

needs_bf16 = pytest.mark.skipif("avx512_bf16" not in cpu_flags(), reason="the CPU has no AVX512_BF16")

NET = """network m(x: f32[1, 32, 14, 14]) {
    y = x | conv2d(32, 3, pad=same) | relu
    z = y | conv2d(48, 3, stride=2, pad=same, bias=false) | relu
    return (z + (y | conv2d(48, 1, stride=2))) | flatten | linear(64)
}"""
TOKENS = """network t(x: f32[1, 197, 64]) {
    return x | linear(96) | gelu | linear(64)
}"""
HEAD = """network h(x: f32[1, 1280]) {
    return x | relu | linear(1000)
}"""  # a classifier: 1000 columns, 62.5 vectors of 16 (the weights padded to 63, the result the first 1000)
HALF = """network e(x: f32[1, 32, 14, 14]) {
    y = x | conv2d(24, 1) | relu
    return y | conv2d(40, 3, pad=same) | relu
}"""  # 24 and 40 output channels: 8-channel blocks, the ymm vdpbf16ps (MobileNet-V2's 24, RegNetY's 104 and 440)


def _rounded(a: torch.Tensor) -> torch.Tensor:
    return a.to(torch.bfloat16).to(torch.float32)


def bf16_reference(graph, x: np.ndarray) -> np.ndarray:
    """torch with every conv/linear computing on bf16-rounded weights and inputs, in float32."""
    m = torch_module(graph).eval()
    for mod in m.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.weight.data = _rounded(mod.weight.data)
            mod.register_forward_pre_hook(lambda _, args: tuple(_rounded(a) for a in args))
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def test_rounding_matches_torch():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.standard_normal(4096).astype(np.float32) * 10.0 ** rng.integers(-20, 20, 4096),
                        np.array([0.0, -0.0, 1.0, 65504.0, 3.4e38, -1.1754944e-38, np.inf, -np.inf], np.float32)])
    want = torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16.round_to_bf16(a), want)
    np.testing.assert_array_equal(bf16.bf16_to_f32(bf16.round_to_bf16(a)), _rounded(torch.from_numpy(a)).numpy())


@needs_bf16
@pytest.mark.parametrize("src, shape", [(NET, (1, 32, 14, 14)), (TOKENS, (1, 197, 64)), (HEAD, (1, 1280)),
                                        (HALF, (1, 32, 14, 14))], ids=["convs", "tokens", "classifier", "8-blocks"])
def test_bf16_kernels_match_torch_bf16_arithmetic(src, shape):
    g = elaborate(src)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    m = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False).build_module(g)
    y = m(x)
    want = bf16_reference(g, x)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(y - want).max() <= 1e-4 * scale  # same arithmetic up to f32 summation order
    f32 = torch_module(g).eval()(torch.from_numpy(x)).detach().numpy()
    assert np.abs(y - f32).max() > 1e-6 * scale  # and it is really bf16, not the f32 kernels
    assert m.built.own == m.built.functions  # every kernel scheduled by convdsl


DEPTHWISE = """network d(x: f32[1, 32, 15, 15]) {
    y = x | conv2d(32, 3, groups=32) | relu
    return (y + (y | conv2d(32, 3, pad=1, groups=32))) | conv2d(48, 1)
}"""  # depthwise convs reading f32 (the input; y, two readers): rounded to bf16 by their padded copy, unpadded too


@needs_bf16
@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no_amx"])
def test_bf16_depthwise_convs_round_their_input(amx):
    g = elaborate(DEPTHWISE)
    x = np.random.default_rng(2).standard_normal((1, 32, 15, 15)).astype(np.float32)
    m = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False, amx=amx).build_module(g)
    ref = torch_module(g).eval()  # the depthwise convs: input rounded to bf16, f32 weights; the 1x1: bf16 operands
    for mod in ref.modules():
        if isinstance(mod, torch.nn.Conv2d):
            if mod.groups == 1:
                mod.weight.data = _rounded(mod.weight.data)
            mod.register_forward_pre_hook(lambda _, args: tuple(_rounded(a) for a in args))
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    y = m(x)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(y - want).max() <= 1e-4 * scale
    f32 = torch_module(g).eval()(torch.from_numpy(x)).detach().numpy()
    assert np.abs(y - f32).max() > 1e-6 * scale  # the input really rounded


def _scheduled_bf16(src: str):
    """The program's kernels as a vdpbf16ps build lowers and schedules them."""
    from convdsl.backends.tvm import build as tvm_build
    from convdsl.backends.tvm.lowering import lower_graph

    spec = make_target("tvm-llvm", precision="bf16", amx=False)
    with spec.tvm_target():
        mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec, "bf16"))(lower_graph(elaborate(src)))
        return tvm_build.ApplySchedules(mod)


STEM = """network s(x: f32[1, 3, 32, 32]) {
    return x | conv2d(64, 7, stride=2, pad=3) | relu | conv2d(32, 3, stride=2, pad=1)
}"""  # three input channels, an RGB stem: vdpbf16ps takes input channels in pairs (then a strided conv: not Winograd)


@needs_bf16
def test_bf16_stem_gets_a_zero_channel_and_runs_vdpbf16ps():
    """A conv over an odd number of input channels is a bf16 conv over one zero channel more (its weights
    given a zero input channel), not an f32 conv in the bf16 build (ResNet-50's stem 1.18 -> 0.79 ms in the
    network's profile on Zen 4, a scratch A/B)."""
    g = elaborate(STEM)
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    m = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False, amx=False).build_module(g)
    want = bf16_reference(g, x)  # both convs on bf16-rounded inputs and weights, the stem's too
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(m(x) - want).max() <= 1e-4 * scale
    texts = [f.script() for _, f in _scheduled_bf16(STEM).functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert sum(bf16.EXTERN in t for t in texts) == 2
    # the stem's weights [O/16, C/4, 7, 7, 2 channel pairs, 16, 2]: four input channels
    assert any("(T.int64(4), T.int64(1), T.int64(7), T.int64(7), T.int64(2), T.int64(16), T.int64(2))" in t
               for t in texts)


@needs_bf16
@pytest.mark.parametrize("src, kernels", [(NET, 4), (TOKENS, 2), (HEAD, 1), (HALF, 2)],
                         ids=["convs", "tokens", "classifier", "8-blocks"])
def test_bf16_kernels_are_tensorized(src, kernels):
    """Every bf16 kernel calls vdpbf16ps: three convs and the linear; two linears over ViT-S's
    197 tokens, a prime number of rows (padded so the register tile divides them: TVM's tensorize
    fails under a partial tile's row guard, and the kernel then ran untensorized, 30x slower); convs
    with 24 and 40 output channels, in 8-channel blocks (the ymm form, ``bf16.conv_block``)."""
    spec = make_target("tvm-llvm", precision="bf16", amx=False)  # vdpbf16ps (AMX tiles: tests/backends/tvm/test_amx.py)
    assert "+avx512bf16" in spec.config["mattr"]
    texts = [f.script() for _, f in _scheduled_bf16(src).functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    bf16_funcs = [t for t in texts if "uint16" in t]
    assert len(bf16_funcs) == kernels
    assert all(bf16.EXTERN in t and bf16.IMPORT_ATTR in t for t in bf16_funcs)
    ymm = f'"{bf16.EXTERN}{bf16.HALF}"'  # the 8-lane extern's name as the script quotes it
    assert all((ymm in t) == (src is HALF) for t in bf16_funcs)


CHAIN = """network c(x: f32[1, 32, 14, 14]) {
    y = x | conv2d(32, 1) | relu
    z = y | conv2d(32, 3, pad=same) | relu
    return (z | conv2d(48, 1)) + (z | conv2d(48, 1, bias=false))
}"""  # y has one reader (a 3x3 conv, padded), z two


@needs_bf16
def test_bf16_bits_between_convs(monkeypatch):
    """A conv output whose only reader is a vdpbf16ps conv is stored as bf16 bits by the conv's epilogue
    (``bf16.BITS_BETWEEN_CONVS``) instead of f32 rounded by the reader's input copy: the same values at half
    the bytes (MobileNet-V2 bf16 2.88 -> 2.69 ms on Zen 4, a scratch A/B).  A value with two readers stays f32."""
    g = elaborate(CHAIN)
    x = np.random.default_rng(5).standard_normal((1, 32, 14, 14)).astype(np.float32)
    y = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False, amx=False).build_module(g)(x)
    want = bf16_reference(g, x)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(y - want).max() <= 1e-4 * scale
    funcs = {gv.name_hint: f for gv, f in _scheduled_bf16(CHAIN).functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and bf16.EXTERN in f.script()}
    convs = sorted(funcs)
    assert len(convs) == 4
    ins = {n: str(funcs[n].params[0].ty.dtype) for n in convs}
    outs = {n: str(funcs[n].params[-1].ty.dtype) for n in convs}
    # the first conv writes bits for the 3x3, which reads them (a zero-padded copy, no rounding copy)
    assert sorted(outs.values()) == ["float32", "float32", "float32", "uint16"]
    assert sorted(ins.values()) == ["float32", "float32", "float32", "uint16"]
    reader = next(n for n in convs if ins[n] == "uint16")
    assert outs[reader] == "float32" and "to_bf16" not in funcs[reader].script()
    assert sum("to_bf16" in funcs[n].script() for n in convs) == 3  # the other three round their own input
    monkeypatch.setattr(bf16, "BITS_BETWEEN_CONVS", False)
    before = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False, amx=False).build_module(g)(x)
    np.testing.assert_array_equal(y, before)


ATTENTION = """network a(x: f32[1, 197, 64]) {
    return x | mhsa(4)
}"""


@needs_bf16
def test_bf16_attention_projections_run_vdpbf16ps_without_amx():
    """Without AMX tiles, --precision bf16 runs attention's four projections as vdpbf16ps GEMMs (not the f32
    heads-layout GEMMs of an f32 build, ``kernels.dense_heads``): the q/k/v/out linears' kernels are bf16, and
    the block is within bf16's error of torch's f32 (and not equal to it)."""
    from convdsl.backends.tvm import build as tvm_build
    from convdsl.backends.tvm.lowering import lower_graph

    g = elaborate(ATTENTION)
    spec = make_target("tvm-llvm", precision="bf16", amx=False)
    with spec.tvm_target():
        mod = tvm.transform.Sequential(tvm_build.optimize_passes(spec, "bf16"))(lower_graph(g, precision="bf16"))
    names = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert not any("dense_heads" in n or "merge_heads" in n for n in names), names
    calls = mod["main"].script().count("R.call_tir(fused_dense_packed_bf16")
    assert calls == 4, mod["main"].script()  # q, k, v and out (here all one kernel: the same shapes)
    x = np.random.default_rng(3).standard_normal((1, 197, 64)).astype(np.float32)
    y = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False, amx=False).build_module(g)(x)
    f32 = torch_module(g).eval()(torch.from_numpy(x)).detach().numpy()
    scale = float(np.abs(f32).max())
    assert 1e-6 * scale < np.abs(y - f32).max() < 2e-2 * scale


def test_bf16_refused_without_avx512_bf16():
    icelake = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_vnni"})
    with pytest.raises(UsageError, match="AVX512_BF16"):
        precision_mattr("bf16", icelake)
    assert precision_mattr("bf16", icelake | {"avx512_bf16"}) == ["+avx512bf16"]
    assert precision_mattr("f32", icelake) == [] == precision_mattr("int8", icelake)
    # a cross-compilation target without the feature is refused too
    with pytest.raises(UsageError, match="AVX512_BF16"):
        make_target("tvm-llvm", target_json={"kind": "llvm", "mcpu": "icelake-server"}, precision="bf16")
    spec = make_target("tvm-llvm", target_json={"kind": "llvm", "mcpu": "sapphirerapids"}, precision="bf16")
    assert spec.config["mcpu"] == "sapphirerapids"


def test_int8_needs_a_quantized_program():
    with pytest.raises(UsageError, match="quantize"):
        ctvm.backend("tvm-llvm", precision="int8", progress=False).build(elaborate(NET))


@needs_bf16
def test_manifest_records_the_precision(tmp_path):
    from convdsl.artifact import write_artifact

    g = elaborate(TOKENS)
    write_artifact(g, tmp_path / "out", ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tvm"]["precision"] == "bf16"
    run = ctvm.load(tmp_path / "out")
    x = np.random.default_rng(2).standard_normal((1, 197, 64)).astype(np.float32)
    y, = run([x])
    np.testing.assert_allclose(y, bf16_reference(g, x), atol=1e-4 * max(1.0, float(np.abs(y).max())))


WINO = """network w(x: f32[1, 32, 28, 28]) {
    a = x | conv2d(32, 3, pad=1) as big | relu
    return a | conv2d(64, 3, stride=2, pad=1) as down | relu | conv2d(64, 3, pad=1) as small
}"""  # 3x3 stride-1 at 28 x 28 (49 F(4,3) tiles) and at 14 x 14 (25 F(3,3) tiles), a stride-2 conv between
WINO_BIG = """network w(x: f32[1, 32, 28, 28]) {
    return x | conv2d(32, 3, pad=1) as big | relu
}"""  # WINO's Winograd layer alone


@needs_bf16
def test_bf16_build_takes_f32_winograd_where_its_gemm_is_compute_bound(monkeypatch):
    """Without AMX, a 3x3 stride-1 conv whose Winograd GEMM has 32 tiles or more runs as the f32 Winograd
    kernels in a bf16 build (4x fewer multiplies against vdpbf16ps's 2x rate; winograd.choose_m, against_bf16):
    the 28 x 28 conv; the 14 x 14 one (25 tiles) and the strided one stay vdpbf16ps.  The Winograd layer computes
    in f32: alone, its output is torch's f32 conv, not the bf16 arithmetic."""
    def kernels():
        return {gv.name_hint: f.script() for gv, f in _scheduled_bf16(WINO).functions.items()
                if isinstance(f, tvm.tirx.PrimFunc)}

    texts = kernels()
    assert sum(bf16.EXTERN in t for t in texts.values()) == 2
    assert sum(n.startswith("winograd_gemm") for n in texts) == 1
    g = elaborate(WINO_BIG)
    x = np.random.default_rng(5).standard_normal((1, 32, 28, 28)).astype(np.float32)
    y = ctvm.backend("tvm-llvm", precision="bf16", progress=False, use_db=False, amx=False).build_module(g)(x)
    with torch.no_grad():
        f32 = torch_module(g).eval()(torch.from_numpy(x)).numpy()
    scale = float(np.abs(f32).max())
    assert np.abs(y - f32).max() <= 1e-5 * scale
    assert np.abs(y - bf16_reference(g, x)).max() > 1e-4 * scale  # bf16 arithmetic would be this far off
    monkeypatch.setattr(bf16, "WINOGRAD_F32", False)
    assert sum(bf16.EXTERN in t for t in kernels().values()) == 3
