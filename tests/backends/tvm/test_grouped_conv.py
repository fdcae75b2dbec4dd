"""Grouped convs (1 < groups < channels, not depthwise) on the blocked ``conv2d_nchwc`` template
(``layout.grouped_blocks``): every case equals ``torch.nn.functional.conv2d`` on the same weights
(float32, 1e-4 of the output's scale), and the conv is a scheduled ``conv2d_nchwc`` kernel carrying its
groups, not TVM's generic conv2d.  Groups narrower than 4 channels stay on the generic schedule."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from convdsl.backends.torch import build_module as torch_module
from convdsl.backends.tvm.targets import cpu_flags

from .conftest import assert_close, check_against_simulation, graph_of, kernel_names, one_op, random_inputs, \
    randomize_int8_params

needs_vnni = pytest.mark.skipif("avx512_vnni" not in cpu_flags(), reason="the CPU has no AVX-512 VNNI")

AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512"}

# (input shape, out channels, groups, conv kwargs, the kernel's groups on AVX-512: groups / merged)
GROUPED = [
    ([1, 16, 9, 9], 32, 2, dict(k=3, stride=2, pad=1), 2),  # 8 -> 16 wide: input blocks of 8 (merging would cost 2x)
    ([2, 64, 10, 10], 64, 4, dict(k=3, pad=1), 4),  # 16 wide, batch 2
    ([1, 104, 14, 14], 104, 13, dict(k=3, pad=1, bias=False), 13),  # RegNet's 104 channels: blocks of 8
    ([2, 48, 11, 11], 48, 6, dict(k=3, stride=2, pad=1), 6),  # 8 wide in blocks of 16: blocks of 8, not merged
    ([1, 96, 12, 12], 96, 4, dict(k=3, dilation=2, pad=2), 4),  # 24 wide: blocks of 8, dilation 2
    ([2, 128, 8, 8], 256, 4, dict(k=1, stride=2), 4),  # 32 -> 64 wide, 1x1 strided: no padding
    ([1, 208, 7, 7], 208, 26, dict(k=3, pad=1, bias=False), 26),  # RegNet's third stage: 26 groups of 8
    ([1, 32, 9, 7], 32, 8, dict(k=3, pad=1), 8),  # 4 wide: blocks of 4 (merging 4 groups per 16c block was slower)
    ([1, 24, 10, 10], 48, 3, dict(k=3, stride=2, pad=1), 3),  # 8 -> 16 wide, 24 channels in: blocks of 8
]


def _params(g) -> tuple[np.ndarray, np.ndarray | None]:
    weights = [v for k, v in g.params.items() if k.endswith("weight")]
    biases = [v for k, v in g.params.items() if k.endswith("bias")]
    assert len(weights) == 1 and len(biases) <= 1, sorted(g.params)
    return weights[0], (biases[0] if biases else None)


def _reference(g, x: np.ndarray, groups: int, kw: dict) -> np.ndarray:
    w, b = _params(g)
    y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                                   stride=kw.get("stride", 1), padding=kw.get("pad", 0),
                                   dilation=kw.get("dilation", 1), groups=groups)
    return y.numpy()


def _module(g, target=AVX512):
    """``g``'s module after the layout pass and fusion (before scheduling)."""
    import tvm
    from tvm import relax

    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    with tvm.target.Target(target):
        mod = blocked_layout(lower_graph(g))
        return tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                         relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)


def _functions(g, target=AVX512) -> dict:
    """{name: PrimFunc} of ``_module(g)``."""
    import tvm

    return {gv.name_hint: f for gv, f in _module(g, target).functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _calls(mod) -> list[str]:
    """The kernels ``main`` calls, one entry per call (FuseTIR shares one PrimFunc among same-shaped layers)."""
    from tvm import relax

    names = []

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.call_tir":
            names.append(e.args[0].name_hint)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


def _conv_groups(func) -> list[int]:
    """The groups of every ``conv2d_nchwc`` block of ``func`` (1: no groups annotation)."""
    from tvm import s_tir

    from convdsl.backends.tvm.schedules.kernels import GROUPS_ATTR, KERNEL_ATTR

    sch = s_tir.Schedule(func)
    blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    return [int(b.annotations.get(GROUPS_ATTR, 1)) for b in blocks
            if str(b.annotations.get(KERNEL_ATTR, "")) == "conv2d_nchwc"]


@pytest.mark.parametrize("shape,out,groups,kw,kernel_groups", GROUPED,
                         ids=[f"{s}->{o}-g{g}-{kw}" for s, o, g, kw, _ in GROUPED])
def test_grouped_conv_matches_torch(shape, out, groups, kw, kernel_groups, llvm_runner):
    g = graph_of(one_op("conv2d", [shape], out, groups=groups, **kw))
    xs = random_inputs(g)
    got = llvm_runner(g, ("grouped", str(shape), out, groups, str(kw)))(xs)
    assert_close(got, [_reference(g, xs[0], groups, kw)])
    # the blocked template, with the groups it was given after merging (AVX-512's 16-lane blocks)
    funcs = _functions(g)
    convs = [_conv_groups(f) for f in funcs.values()]
    assert [c for c in convs if c] == [[kernel_groups]], sorted(funcs)
    assert not any(n.startswith("conv2d") and "nchwc" not in n for n in funcs), sorted(funcs)


def test_narrow_groups_stay_on_the_generic_schedule(llvm_runner):
    """Groups of 2 channels: no block (16, 8, 4) divides them, so TVM's conv2d in NCHW, still torch's result."""
    kw = dict(k=3, pad=1)
    g = graph_of(one_op("conv2d", [[1, 16, 8, 8]], 16, groups=8, **kw))
    xs = random_inputs(g)
    assert_close(llvm_runner(g, ("grouped", "narrow"))(xs), [_reference(g, xs[0], 8, kw)])
    assert not any(_conv_groups(f) for f in _functions(g).values())


def test_grouped_blocks_choices():
    from convdsl.backends.tvm.schedules.layout import grouped_blocks

    # RegNetY-400MF's group convs (groups of 8) after its 1x1 convs' blocks, AVX-512 (16 lanes): blocks of 8, the
    # input re-blocked from 16 (two groups merged in a zmm block would cost Zen 4 twice the cycles: MERGE_LANES)
    assert grouped_blocks(48, 48, 6, 16, 16) == (8, 8, 1)
    assert grouped_blocks(104, 104, 13, 8, 16) == (8, 8, 1)
    assert grouped_blocks(208, 208, 26, 16, 16) == (8, 8, 1)
    assert grouped_blocks(440, 440, 55, 8, 16) == (8, 8, 1)
    # AVX2 (8 lanes): two groups of 8 do not fit one register; blocks of 8, the input re-blocked from 16
    assert grouped_blocks(48, 48, 6, 16, 8) == (8, 8, 1)
    assert grouped_blocks(64, 64, 4, 16, 8) == (16, 16, 1)  # groups of 16: as the layout around
    assert grouped_blocks(96, 96, 4, None, 16) == (8, 8, 1)  # 24 wide: 8-lane FMAs, not 16-lane ones on pairs
    assert grouped_blocks(96, 96, 4, 16, 8) == (8, 8, 1)  # AVX2: the widest block dividing 24
    assert grouped_blocks(96, 192, 12, 16, 16) == (8, 16, 1)  # 8 -> 16 wide: merging would double the FMAs
    assert grouped_blocks(128, 128, 32, None, 16) == (4, 4, 1)  # ResNeXt's groups of 4: merged by 2 not whole blocks
    assert grouped_blocks(24, 24, 6, 8, 8) == (8, 8, 2)  # AVX2, groups of 4 in blocks of 8: pairs
    assert grouped_blocks(16, 16, 8, None, 16) is None  # 2 wide: generic
    assert grouped_blocks(30, 30, 3, None, 16) is None  # 10 wide: no block divides it


@pytest.mark.parametrize("groups,merge", [(6, 2), (8, 4), (4, 4)])
def test_merged_groups_are_the_same_conv(groups, merge):
    """A block-diagonal weight over ``merge`` neighbouring groups computes the grouped conv (torch on both)."""
    from convdsl.backends.tvm.schedules.layout import merge_groups

    rng = np.random.default_rng(0)
    c, o = 8 * groups, 16 * groups
    x = torch.from_numpy(rng.standard_normal((2, c, 7, 7)).astype(np.float32))
    w = rng.standard_normal((o, c // groups, 3, 3)).astype(np.float32)
    merged = merge_groups(w, groups, merge)
    assert merged.shape == (o, c // groups * merge, 3, 3)
    want = torch.nn.functional.conv2d(x, torch.from_numpy(w), padding=1, groups=groups)
    got = torch.nn.functional.conv2d(x, torch.from_numpy(merged), padding=1, groups=groups // merge)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


REBLOCKED = """
network t(x: f32[1, 32, 12, 12]) {
    y = x | conv2d(96, 1) | batchnorm | relu
    z = y | conv2d(96, 3, pad=1, groups=4, bias=false) | batchnorm | relu
    return relu(z + y) | conv2d(192, 3, stride=2, pad=1, groups=12)
}
"""


def test_grouped_convs_between_blocked_convs_match_torch(llvm_runner):
    """Between convs writing blocks of 16: groups of 24 in blocks of 8 (their input re-blocked by the conv's
    padded copy), their epilogue (batchnorm, relu) fused; the residual add of that 8c output and the 16c one
    re-blocks the narrower in the add's own kernel (``to_blocked``: one copy, no unpack to NCHW and pack back);
    then groups of 8 -> 16 whose padded copy re-blocks the sum to blocks of 8.  Checked against the torch
    backend."""
    from .conftest import torch_outputs

    g = graph_of(REBLOCKED)
    xs = random_inputs(g)
    assert_close(llvm_runner(g, ("grouped", "reblocked"))(xs), torch_outputs(g, xs))
    funcs = _functions(g)
    assert sorted(c for f in funcs.values() for c in _conv_groups(f)) == [1, 4, 12], sorted(funcs)
    assert sum("pack_nchwc" in n and "unpack" not in n for n in funcs) == 1, sorted(funcs)  # the input only
    assert sum("unpack_nchwc" in n for n in funcs) == 1, sorted(funcs)  # the output only
    assert not any(n.startswith(("multiply", "add", "relu")) for n in funcs), sorted(funcs)
    assert [n for n in funcs if "reblock_nchwc" in n] == ["fused_reblock_nchwc_add2_relu"], sorted(funcs)


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_grouped_conv_kernel_is_scheduled(mcpu):
    """The grouped conv gets the template's schedule (parallel, vectorized, the accumulator tile local), its
    epilogue fused; on AVX2 groups of 8 after a 16c conv are re-blocked to 8c by the conv's padded copy."""
    import tvm

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules import is_scheduled, schedule_module
    from convdsl.backends.tvm.targets import make_target

    g = graph_of("""
network t(x: f32[1, 32, 14, 14]) {
    return x | conv2d(48, 1) | relu | conv2d(48, 3, stride=2, pad=1, groups=6) | relu
}""")
    spec = make_target("tvm-llvm")
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    with target:
        mod = tvm.transform.Sequential(optimize_passes(spec, "f32"))(lower_graph(g, "tvm-llvm", {}))
        mod = schedule_module(mod, target)
    convs = {gv.name_hint: f for gv, f in mod.functions.items() if "conv2d_nchwc" in gv.name_hint}
    assert len(convs) == 2 and all(is_scheduled(f) for f in convs.values()), sorted(convs)
    # (the scheduled reduction is two blocks, its init and its update, both annotated)
    assert sorted({c for f in convs.values() for c in _conv_groups(f)}) == [1, 6]  # groups of 8: 8c, not merged
    grouped = [f.script() for f in convs.values() if set(_conv_groups(f)) != {1}]
    assert len(grouped) == 1
    assert "T.parallel" in grouped[0] and "T.vectorized" in grouped[0] and 'scope="local"' in grouped[0]
    assert not any(gv.name_hint.startswith("relu") for gv in mod.functions)  # the epilogues fused
    from convdsl.backends.tvm.targets import host_can_run

    if host_can_run({"kind": "llvm", "mcpu": mcpu}) is None:  # this CPU runs the kernels: torch's numbers
        from .conftest import torch_outputs

        vm = tvm.relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
        xs = random_inputs(g)
        assert_close([vm["main"](tvm.runtime.tensor(xs[0])).numpy()], torch_outputs(g, xs))


def test_grouped_workload_key_differs_from_the_dense_one():
    """Same extents, another reduction: a tuned dense conv's knobs must not apply to the grouped one."""
    from tvm import s_tir, te

    from convdsl.backends.tvm.schedules import kernels, tophub
    from convdsl.backends.tvm.schedules.cpu import Hardware

    def key(groups: int, cin: int) -> str:
        x = te.placeholder((1, cin // 16, 14, 14, 16), "float32", name="x")
        w = te.placeholder((4, 2, 3, 3, 16, 16), "float32", name="w")
        f = te.create_prim_func([x, w, kernels.conv2d_nchwc(x, w, (1, 1), (1, 1, 1, 1), (1, 1), groups)])
        sch = s_tir.Schedule(f)
        return tophub.workload_of("conv2d_nchwc", sch, sch.get_sblock("conv2d_nchwc"), Hardware(16, 32)).key

    dense, grouped = key(1, 32), key(2, 64)
    assert dense != grouped and ":s1x1d1x1g2:" in grouped and ":s1x1d1x1:" in dense


def test_dynamic_batch_grouped_conv_matches_torch():
    """A symbolic batch: the grouped conv stays the blocked template (its groups on the kernel, every kernel
    convdsl's own schedule); N = 1 and 3 equal torch."""
    from convdsl.artifact import make_inputs
    from convdsl.backends.tvm import backend

    kw = dict(k=3, stride=2, pad=1)
    g = graph_of("network t(x: f32[N, 104, 10, 10]) { return x | conv2d(104, 3, stride=2, pad=1, groups=13) }")
    be = backend("tvm-llvm", use_db=False, progress=False, dynamic_batch=True)
    run = be.runner(g)
    for n in (1, 3):
        xs = make_inputs(g, n, seed=n)
        assert_close(run(xs), [_reference(g, xs[0], 13, kw)])
    assert be.last_build.own == be.last_build.functions > 0
    funcs = _functions_dynamic(g)
    assert [c for f in funcs.values() for c in _conv_groups(f)] == [13], sorted(funcs)


def _functions_dynamic(g) -> dict:
    import tvm

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm")
    with spec.tvm_target():
        mod = tvm.transform.Sequential(optimize_passes(spec))(lower_graph(g, "tvm-llvm", None, ("N",)))
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


BF16_NET = """network m(x: f32[1, 32, 14, 14]) {
    y = x | conv2d(48, 1) | relu
    z = y | conv2d(48, 3, pad=1, groups=6) | relu
    return z | conv2d(32, 1)
}"""


def test_bf16_build_keeps_grouped_convs_f32():
    """``--precision bf16``: the dense convs take bf16 operands (AMX tiles or vdpbf16ps), the grouped conv between
    them stays the f32 template.  Reference: torch with the dense convs' weights and inputs rounded to bf16 by
    ``.to(torch.bfloat16)`` and the grouped conv in float32."""
    from convdsl.backends.torch import build_module as torch_module
    from convdsl.backends.tvm import backend
    from convdsl.backends.tvm.targets import cpu_flags

    if "avx512_bf16" not in cpu_flags():
        pytest.skip("the CPU has no AVX512_BF16")

    def rounded(a):
        return a.to(torch.bfloat16).to(torch.float32)

    g = graph_of(BF16_NET)
    x = np.random.default_rng(1).standard_normal((1, 32, 14, 14)).astype(np.float32)
    be = backend("tvm-llvm", precision="bf16", progress=False, use_db=False)
    y = be.build_module(g)(x)
    ref = torch_module(g).eval()
    for mod in ref.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.groups == 1:
            mod.weight.data = rounded(mod.weight.data)
            mod.register_forward_pre_hook(lambda _, args: tuple(rounded(a) for a in args))
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    assert_close([np.asarray(y)], [want])
    with torch.no_grad():
        f32 = torch_module(g).eval()(torch.from_numpy(x)).numpy()
    assert np.abs(np.asarray(y) - f32).max() > 1e-6 * max(1.0, float(np.abs(f32).max()))  # really bf16 around it


def test_regnet_grouped_convs_are_blocked():
    """RegNetY-400MF (groups of 8): all 16 grouped convs become ``conv2d_nchwc`` kernels (every group a block
    of 8, on AVX-512 too: ``layout.MERGE_LANES``) and no generic conv2d is left.  (Its numbers against torch:
    test_examples.py.)"""
    from pathlib import Path

    from convdsl.api import load_graph

    g = load_graph(Path(__file__).resolve().parents[3] / "examples" / "regnet_y_400mf.cdl", bind={"N": 1})
    mod = _module(g)
    calls = _calls(mod)
    groups = sorted(c for n in calls for c in _conv_groups(mod[n]) if c > 1)
    assert groups == sorted([6] + [13] * 3 + [26] * 6 + [55] * 6), groups
    assert not any(n.startswith("conv2d") and "nchwc" not in n for n in calls), sorted(set(calls))


# ---- int8: a grouped qconv2d on the int8 dot-product kernel, or as the exact float32 grouped conv ------------
QGROUPED = {  # name: (input [C, H, W], out, groups, k, stride, pad, dilation, act dtype, out dtype, relu)
    "regnet-8-wide-3x3": ((48, 12, 12), 48, 6, 3, 1, 1, 1, "u8", "u8", True),  # groups of 8: one ymm block each
    "stride2-i8": ((32, 13, 13), 64, 4, 3, 2, 1, 1, "i8", "i8", False),  # 8 -> 16 wide: one zmm block per group
    "f32-out": ((16, 9, 9), 32, 2, 3, 1, 1, 1, "u8", "f32", False),
    "16-wide-dilated": ((64, 10, 10), 64, 4, 3, 1, 2, 2, "u8", "u8", True),  # 4 input blocks of 4 per group
    "4-in-8-out": ((24, 10, 10), 48, 6, 3, 2, 1, 1, "u8", "u8", False),  # one 4-channel input block per group
    "4-wide": ((16, 9, 9), 16, 4, 3, 1, 1, 1, "u8", "u8", True),  # groups narrower than a block: float32
}
INT8_GROUPED = [c for c in QGROUPED if c != "4-wide"]


def _qgrouped(shape, out, groups, k, stride, pad, dilation, act, out_dtype, relu, seed=0):
    zp = 0 if act == "i8" else 128
    kwargs = dict(stride=stride, pad=pad, dilation=dilation, groups=groups, in_scale=0.05, in_zp=zp - 3,
                  out_dtype=out_dtype, relu=relu)
    if out_dtype != "f32":
        kwargs.update(out_scale=0.1, out_zp=-5 if out_dtype == "i8" else 7)
    g = graph_of(one_op(f"quantize(0.05, {zp - 3}, dtype={act}) | qconv2d", [[2, *shape]], out, k, **kwargs))
    return randomize_int8_params(g, seed)


def _int8_kernel_blocks(g, target: dict | None = None) -> list[dict]:
    """The annotations of every int8 conv block in ``g``'s lowered tvm-llvm module (for ``target``, else the
    host's)."""
    import tvm

    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm")
    with tvm.target.Target(target) if target else spec.tvm_target():
        mod = lower_graph(g, "tvm-llvm", None, (), "int8")
    found = []
    for func in mod.functions.values():
        if isinstance(func, tvm.tirx.PrimFunc) and "vnni_conv" in func.script():
            sch = tvm.s_tir.Schedule(func)
            found.append(dict(sch.get(sch.get_sblock("vnni_conv")).annotations))
    return found


@needs_vnni
@pytest.mark.parametrize("case", INT8_GROUPED, ids=INT8_GROUPED)
def test_grouped_qconv_runs_vpdpbusd_and_equals_the_simulation(case):
    """A grouped qconv2d whose groups are whole blocks is the int8 dot-product kernel (VNNI: 16 x 4 blocks where
    a group has a multiple of 16 output channels, ymm 8 x 4 blocks where 8), each output block reading its own
    group's input blocks: equal to the torch int8 simulation (exact integers), no float32 conv left, and the
    manifest says ``vpdpbusd``."""
    from convdsl.backends.tvm.lower_quant import grouped_int8_layout, int8_instructions
    from convdsl.backends.tvm.targets import make_target

    shape, out, groups, k, stride, pad, dilation, act, out_dtype, relu = QGROUPED[case]
    g = _qgrouped(shape, out, groups, k, stride, pad, dilation, act, out_dtype, relu)
    _, want = check_against_simulation(g, shape, out_dtype)
    assert out_dtype == "f32" or len(np.unique(want)) > 3
    with make_target("tvm-llvm").tvm_target():
        assert int8_instructions(g) == {"vpdpbusd": 1}
        w = np.zeros((out, shape[0] // groups, k, k), np.int8)
        wide = (out // groups) % 16 == 0
        assert grouped_int8_layout(w, groups).instruction == ("vpdpbusd" if wide else "vpdpbusd-ymm")
    blocks = _int8_kernel_blocks(g)
    assert len(blocks) == 1 and int(blocks[0]["convdsl.groups"]) == groups
    names = kernel_names(g, "int8")
    assert not any("conv2d_nchwc" in n for n in names) and any(n.startswith("qconv2d") for n in names), names


def test_grouped_qconv_differs_from_a_dense_one_with_the_same_blocks():
    """The group mapping is what makes the numbers: the same weights read as one dense conv per block (every
    output block reading the first group's inputs) would differ.  Checked by running the kernel on an input that
    is zero outside the last group: only that group's outputs move away from the bias."""
    shape, out, groups = (32, 6, 6), 32, 4
    g = _qgrouped(shape, out, groups, 3, 1, 1, 1, "u8", "f32", False, seed=2)
    import convdsl.backends.tvm as ctvm

    x = np.zeros((2, *shape), np.float32)
    x[:, -8:] = 3 * np.random.default_rng(0).standard_normal((2, 8, *shape[1:]))
    zero = np.zeros_like(x)
    m = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)
    moved = np.abs(np.asarray(m(x)) - np.asarray(m(zero))).max(axis=(0, 2, 3))
    assert (moved[-8:] > 0).all() and (moved[:-8] == 0).all(), moved


def test_narrow_groups_stay_on_the_float32_grouped_template():
    """Groups of 4 output channels fill no int8 block: the exact float32 grouped conv of the integer operands
    (``grouped_in_f32``), a conv2d_nchwc kernel carrying its groups rather than TVM's generic int32 conv; the
    manifest says ``grouped-f32``.  Equal to the simulation too."""
    from convdsl.backends.tvm.lower_quant import grouped_in_f32, int8_instructions
    from convdsl.backends.tvm.schedules.int8_depthwise import MAX_TAPS
    from convdsl.backends.tvm.targets import make_target

    shape, out, groups, k, stride, pad, dilation, act, out_dtype, relu = QGROUPED["4-wide"]
    g = _qgrouped(shape, out, groups, k, stride, pad, dilation, act, out_dtype, relu)
    _, want = check_against_simulation(g, shape, out_dtype)
    assert len(np.unique(want)) > 3
    with make_target("tvm-llvm").tvm_target():
        assert int8_instructions(g) == {"grouped-f32": 1}
    names = kernel_names(g, "int8")
    assert any("conv2d_nchwc" in n for n in names) and not any("conv2d" in n and "nchwc" not in n for n in names), \
        names
    assert (shape[0] // groups) * k * k <= MAX_TAPS  # 255 * 128 * MAX_TAPS <= 2^24: test_int8_depthwise
    assert not grouped_in_f32("tvm-llvm", 2, 2, np.zeros((8, 300, 3, 3), np.int8))  # 2700 products: int32
    assert not grouped_in_f32("tvm-cuda", 2, groups, np.zeros((out, shape[0] // groups, k, k), np.int8))


@pytest.mark.parametrize("seven_bit", [True, False], ids=["7-bit", "8-bit"])
def test_grouped_qconv_on_avx2(seven_bit):
    """Built for an AVX2 CPU (haswell), a grouped qconv2d whose groups are whole 8-channel blocks takes the int8
    kernel with 7-bit weights (vpmaddubsw, one int8 conv block carrying its groups; the blocked layout keeps the
    8-channel blocks around it); 8-bit weights, which could saturate vpmaddubsw, keep the exact float32 grouped
    conv (``grouped-f32``).  Run and equal to the simulation where this CPU can run the code."""
    import tvm

    import convdsl.backends.tvm as ctvm
    from convdsl.backends.tvm.lower_quant import int8_instructions
    from convdsl.backends.tvm.targets import host_can_run

    haswell = {"kind": "llvm", "mcpu": "haswell"}
    shape, out, groups, k, stride, pad, dilation, act, out_dtype, relu = QGROUPED["regnet-8-wide-3x3"]
    g = _qgrouped(shape, out, groups, k, stride, pad, dilation, act, out_dtype, relu)
    if seven_bit:
        key = next(k for k, _ in g.params.items() if k.endswith("weight"))
        g.params[key] = np.clip(g.params[key], -63, 63)
    blocks = _int8_kernel_blocks(g, haswell)
    with tvm.target.Target(haswell):
        used = int8_instructions(g)
    if seven_bit:
        assert used == {"vpmaddubsw": 1}
        assert len(blocks) == 1 and int(blocks[0]["convdsl.groups"]) == groups, blocks
    else:
        assert used == {"grouped-f32": 1} and blocks == []
    if host_can_run(haswell) is not None:
        pytest.skip(f"built; not run: {host_can_run(haswell)}")
    x = (3 * np.random.default_rng(1).standard_normal((2, *shape))).astype(np.float32)
    got = ctvm.backend("tvm-llvm", target_json=haswell, progress=False, use_db=False).build_module(g)(x)
    with torch.no_grad():
        want = torch_module(g)(torch.from_numpy(x)).numpy()
    assert len(np.unique(want)) > 3
    assert int(np.abs(np.asarray(got).astype(np.int64) - want.astype(np.int64)).max()) == 0


def _regnet_int8(bits: int = 8):
    """RegNetY-400MF's first two stages (widths 48 and 104: groups of 8, squeeze-and-excitation) at 32 x 32,
    batchnorm statistics from the calibration batch, quantized; and a test input."""
    from pathlib import Path

    from convdsl.api import load_graph
    from convdsl.passes import run_passes
    from convdsl.passes.quantize import quantize

    from .test_int8_vnni import _bn_from_batch

    root = (Path(__file__).resolve().parents[3] / "examples").resolve()
    src = (root / "regnet_y_400mf.cdl").read_text().replace("224, 224", "32, 32")
    src = src.replace("WIDTHS = [48, 104, 208, 440]", "WIDTHS = [48, 104]").replace("DEPTHS = [1, 3, 6, 6]",
                                                                                        "DEPTHS = [1, 2]")
    g = load_graph(src.replace('import "blocks/', f'import "{root}/blocks/'))
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    g = run_passes(_bn_from_batch(g, calib), "O2")
    q = quantize(g, [calib[:8], calib[8:]], build=torch_module, weight_bits=bits)
    return q, rng.standard_normal((1, 3, 32, 32)).astype(np.float32)



@pytest.mark.skipif("avx2" not in cpu_flags(), reason="the CPU has no AVX2")
def test_regnet_int8_on_avx2_runs_every_conv_on_vpmaddubsw():
    """RegNetY's int8 blocks built for AVX2 (haswell) with 7-bit weights: every conv, grouped ones included, on
    vpmaddubsw (none on the float32 template or the generic int32 conv); equal to the torch int8 simulation."""
    import tvm

    import convdsl.backends.tvm as ctvm
    from convdsl.backends.tvm.lower_quant import int8_instructions

    haswell = {"kind": "llvm", "mcpu": "haswell"}
    q, x = _regnet_int8(bits=7)
    with tvm.target.Target(haswell):
        used = int8_instructions(q)
    assert set(used) == {"vpmaddubsw"} and used["vpmaddubsw"] >= 12, used
    got = ctvm.backend("tvm-llvm", target_json=haswell, progress=False, use_db=False).build_module(q)(x)
    with torch.no_grad():
        want = torch_module(q)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))

@needs_vnni
def test_regnet_int8_blocks_stay_blocked_on_vpdpbusd():
    """RegNetY's int8 blocks: the grouped convs on vpdpbusd (none left on the float32 template), the
    squeeze-and-excitation gate (a blocked 1x1 int8 conv's output) copied by an opaque kernel of its own and
    multiplied in the blocked layout (no kernel takes the feature map to NCHW for the multiply, none fuses the
    multiply into the conv that makes the gate); equal to the torch int8 simulation."""
    from convdsl.backends.tvm.lower_quant import int8_instructions
    from convdsl.backends.tvm.targets import make_target

    import convdsl.backends.tvm as ctvm

    q, x = _regnet_int8()
    with make_target("tvm-llvm").tvm_target():
        used = int8_instructions(q)
    assert "grouped-f32" not in used and "generic" not in used, used
    names = kernel_names(q, "int8")
    assert sum(n.startswith("gate_nchwc") for n in names) == 3, names  # one per block
    # (before: fused_unpack_nchwc_unpack_nchwc1_multiply2_..._pack_nchwc, the feature map to NCHW and back)
    assert not any(re.search(r"unpack_nchwc.*multiply.*(?<!un)pack_nchwc", n) for n in names), names
    assert not any("qconv2d" in n and "sigmoid" in n and "multiply" in n for n in names), names
    got = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(q)(x)
    with torch.no_grad():
        want = torch_module(q)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
