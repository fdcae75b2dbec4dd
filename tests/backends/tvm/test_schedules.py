"""convdsl's own CPU schedules (backends/tvm/schedules): every scheduled kernel equals
torch (float32, 1e-4 of the output's scale), and the module has the structure the
schedules promise (blocked layout, scheduled conv/dense kernels, parallel + vector loops).

The shapes are chosen to hit each branch of the layout pass and of the templates:
channel blocks of 16, 8, 4 and "all channels" (3, 5, 7), register tiles that divide the
output width or not, strides, padding, dilation, groups (test_grouped_conv.py), depthwise, 1x1,
fused epilogues (batchnorm, activation, residual add) and pooling in the blocked layout."""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import assert_close, graph_of, one_op, random_inputs, torch_outputs

CONV = [
    ([1, 16, 14, 14], 32, dict(k=3, pad=1)),
    ([1, 16, 14, 14], 32, dict(k=1, stride=2, bias=False)),  # 1x1 strided: a GEMM over channels
    ([1, 3, 32, 32], 16, dict(k=7, stride=2, pad=3)),  # stem: 3 input channels in one block
    ([2, 24, 13, 13], 40, dict(k=3, pad="same")),  # blocks of 8, odd width, batch 2
    ([1, 5, 11, 9], 7, dict(k=3, pad=[1, 2])),  # 5 and 7 channels: one block each
    ([1, 12, 10, 10], 20, dict(k=3, dilation=2, pad=2)),  # blocks of 4, dilation
    ([1, 32, 7, 7], 64, dict(k=3, stride=2, pad=1)),
    ([1, 16, 9, 9], 32, dict(k=3, stride=2, pad=1, groups=2)),  # grouped (more: test_grouped_conv.py)
    ([1, 32, 12, 12], 32, dict(k=3, pad=1, groups="depthwise")),
    ([1, 32, 12, 12], 32, dict(k=3, stride=2, pad=1, groups="depthwise", bias=False)),
    ([1, 24, 15, 15], 24, dict(k=5, pad=2, groups="depthwise")),  # blocks of 8, 5x5
    ([1, 20, 400, 3], 16, dict(k=1)),  # tall and narrow
    ([1, 16, 10, 10], 16, dict(k=3, dilation=2, pad=2, groups="depthwise")),  # padded rows per output row, dilated
    ([1, 8, 9, 7], 8, dict(k=3, stride=2, pad=[0, 1], groups="depthwise")),  # asymmetric padding, odd sizes
    ([1, 128, 14, 14], 128, dict(k=3, pad=1, groups="depthwise")),  # 7 output rows per padded buffer (dw_rows)
    ([1, 256, 15, 13], 256, dict(k=3, stride=2, pad=[0, 1], groups="depthwise", bias=False)),  # row chunks, stride 2
    # AVX2: input channels reduced in chunks (weight_chunk), with and without an epilogue
    ([1, 256, 7, 7], 64, dict(k=1)),
    ([1, 64, 7, 9], 32, dict(k=3, pad=1)),
    ([1, 256, 6, 10], 16, dict(k=1, stride=2, bias=False)),
    ([1, 256, 12, 12], 64, dict(k=1, stride=2)),  # AVX2: strided 1x1, 2 x 2 tile, chunks
    # AVX-512: a 7x7 plane reduced in chunks of input channels over all its rows (plane_chunk)
    ([1, 256, 7, 7], 32, dict(k=3, pad=1)),
    ([1, 256, 14, 14], 32, dict(k=3, stride=2, pad=1, bias=False)),
]


@pytest.mark.parametrize("shape,out,kw", CONV, ids=[f"{s}->{o}-{kw}" for s, o, kw in CONV])
def test_conv2d_matches_torch(shape, out, kw, llvm_runner):
    g = graph_of(one_op("conv2d", [shape], out, **kw))
    xs = random_inputs(g)
    assert_close(llvm_runner(g, ("conv", str(shape), out, str(kw)))(xs), torch_outputs(g, xs))


NETS = {
    # conv + batchnorm + relu, residual add, max pool and global average pool, all blocked
    "residual": """
network t(x: f32[1, 8, 16, 16]) {
    a = x | conv2d(32, 3, pad=1, bias=false) | batchnorm | relu | maxpool2d(3, stride=2, pad=1)
    b = a | conv2d(32, 3, pad=1, bias=false) | batchnorm | relu | conv2d(32, 1) | batchnorm
    return relu(a + b) | avgpool2d(2) | adaptive_avgpool2d(1) | flatten | linear(10)
}
""",
    # MobileNet-V2-like: expand 1x1 (blocks of 8), depthwise, relu6, project, residual
    "inverted": """
network t(x: f32[1, 24, 14, 14]) {
    y = x | conv2d(144, 1, bias=false) | batchnorm | relu6
          | conv2d(144, 3, pad=1, groups=144, bias=false) | batchnorm | relu6
          | conv2d(24, 1, bias=false) | batchnorm
    return x + y
}
""",
    # a conv output that leaves the blocked layout twice (flatten, and the network output)
    "two_outputs": """
network t(x: f32[1, 3, 12, 12]) {
    y = x | conv2d(16, 3, pad=1) | sigmoid
    return (y, y | flatten | linear(5) | gelu)
}
""",
}


POOLS = [
    "maxpool2d(3, stride=2, pad=1)",  # ResNet's stem pool: padding read as -inf
    "avgpool2d(3, stride=2, pad=1)",  # padding counted in the average
    "avgpool2d(3, stride=1, pad=1, count_include_pad=false)",
    "maxpool2d(2)",
]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("channels", [32, 8])
def test_window_pools_in_the_blocked_layout(pool, channels, llvm_runner):
    """A max/avg pool after a conv stays blocked and is scheduled by ``schedule_window_pool``:
    ``(n, c, oh)`` parallel, the channel lanes one vector; the result is torch's."""
    import tvm

    from convdsl.backends.tvm.schedules.cpu import schedule_window_pool, Hardware
    from tvm import s_tir

    g = graph_of(f"network t(x: f32[1, 4, 13, 13]) {{ return x | conv2d({channels}, 3, pad=1) | relu | {pool} }}")
    xs = random_inputs(g)
    assert_close(llvm_runner(g, ("pool", pool, channels))(xs), torch_outputs(g, xs))
    pools = [f for gv, f in _functions(g).items() if "pool" in gv]
    assert len(pools) == 1
    sch = s_tir.Schedule(pools[0])
    schedule_window_pool(sch, Hardware(16, 32))
    script = sch.mod["main"].script()
    assert "T.parallel" in script and "T.vectorized" in script


def _functions(g) -> dict:
    """{name: PrimFunc} of ``g``'s module after the layout pass and fusion, before scheduling."""
    import tvm
    from tvm import relax

    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules.layout import blocked_layout

    with tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"}):
        mod = blocked_layout(lower_graph(g))
        mod = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                        relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize("name", list(NETS))
def test_networks_match_torch(name, llvm_runner):
    g = graph_of(NETS[name])
    xs = random_inputs(g)
    assert_close(llvm_runner(g, ("net", name))(xs), torch_outputs(g, xs))


DENSE = [
    ([1, 512], 1000, {}),  # classifier: GEMV, blocks of 8 columns
    ([2, 7, 16], 5, {}),  # odd everything
    ([1, 197, 64], 96, {}),  # ViT-like rows (197: the row tile does not divide them)
    ([3, 16], 48, dict(bias=False)),
    ([50, 64], 32, {}),  # rows without a batch axis (AVX2: padded to a whole number of row tiles)
    ([2, 197, 32], 32, dict(bias=False)),  # padded rows, batch 2, no epilogue but the copy out
]


@pytest.mark.parametrize("shape,out,kw", DENSE, ids=[f"{s}->{o}" for s, o, kw in DENSE])
def test_dense_matches_torch(shape, out, kw, llvm_runner):
    g = graph_of(one_op("linear", [shape], out, **kw))
    xs = random_inputs(g)
    assert_close(llvm_runner(g, ("dense", str(shape), out, str(kw)))(xs), torch_outputs(g, xs))


def test_dense_epilogue_matches_torch(llvm_runner):
    g = graph_of("""
network t(x: f32[1, 50, 32]) {
    return x | linear(64) | gelu | linear(32) | layernorm | softmax
}
""")
    xs = random_inputs(g)
    assert_close(llvm_runner(g, "dense_epilogue")(xs), torch_outputs(g, xs))


ODD_ROWS = """
network t(x: f32[1, 6, 37, 197]) {
    return x | softmax
}
"""


def test_rows_of_an_odd_length_are_whole_vectors_and_a_scalar_rest(llvm_runner):
    """A softmax over 197 columns (ViT-S's keys outside its attention kernel: an imported QDQ file's): every
    elementwise step of a row is 24 vectors of 8 (AVX2) or 12 of 16 and the few columns left as scalars
    (``loop_partition``), where the whole row ran scalar; equal to torch."""
    import tvm

    _, mod = _scheduled_module(ODD_ROWS)
    text = next(f.script() for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
                and "softmax" in gv.name_hint)
    lanes = 16 if "T.vectorized(T.int64(16))" in text else 8
    assert f"T.vectorized(T.int64({lanes}))" in text
    assert f"range(T.int64({197 - 197 % lanes}), T.int64(197))" in text  # the rest, after the whole vectors
    g = graph_of(ODD_ROWS)
    xs = random_inputs(g)
    assert_close(llvm_runner(g, "odd_rows")(xs), torch_outputs(g, xs))


BMM = [
    [(2, 3, 20, 24), (2, 3, 24, 32)],
    [(1, 6, 197, 64), (1, 6, 64, 197)],  # attention's Q K^T: rows and columns padded (AVX2: to 6 x 2 vectors)
    [(1, 6, 197, 197), (1, 6, 197, 64)],  # attention x V
]


@pytest.mark.parametrize("shapes", BMM, ids=[str(s[0]) for s in BMM])
def test_batch_matmul_matches_torch(shapes, llvm_runner):
    g = graph_of(one_op("matmul", shapes))
    xs = random_inputs(g)
    assert_close(llvm_runner(g, ("bmm", str(shapes)))(xs), torch_outputs(g, xs))


# ---- structure ------------------------------------------------------------------------------
def _scheduled_module(text: str, winograd: bool = True, target_json: dict | None = None):
    import tvm

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules import schedule_module
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm", target_json=target_json)  # None: this machine
    target = spec.tvm_target()
    mod = lower_graph(graph_of(text), "tvm-llvm", {})
    with target:
        mod = tvm.transform.Sequential(optimize_passes(spec, "f32", winograd))(mod)
        return mod, schedule_module(mod, target)


def test_conv_and_dense_kernels_are_scheduled():
    import tvm

    from convdsl.backends.tvm.schedules import is_scheduled

    before, mod = _scheduled_module(NETS["residual"], winograd=False)  # the direct convs (test_winograd.py: the others)
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    convs = [n for n in funcs if "conv2d_nchwc" in n]
    assert len(convs) == 3 and any("dense_packed" in n for n in funcs), sorted(funcs)
    # the blocked layout reaches the global pool: one layout transform in, one out
    assert sum("pack_nchwc" in n and "unpack" not in n for n in funcs) == 1, sorted(funcs)
    assert sum("unpack_nchwc" in n for n in funcs) == 1, sorted(funcs)
    for name in convs + [n for n in funcs if "dense_packed" in n]:
        f = funcs[name]
        assert is_scheduled(f), name
        text = f.script()
        assert "T.parallel" in text and "T.vectorized" in text and "T.unroll" in text, name
        assert 'scope="local"' in text, name  # the accumulator tile (kept in registers)
    # epilogues (batchnorm, relu) fused into the conv kernels, not separate kernels
    assert not any(n.startswith(("multiply", "add", "relu")) for n in funcs), sorted(funcs)
    assert all(is_scheduled(f) for f in funcs.values()), [n for n, f in funcs.items() if not is_scheduled(f)]


def test_build_counts_own_schedules():
    from convdsl.backends.tvm import backend

    built = backend("tvm-llvm", use_db=False).build(graph_of(NETS["inverted"]))
    assert built.scheduled == 0  # nothing from a tuning database
    assert built.own == built.functions > 0


def test_register_tiles_fit_the_registers():
    from convdsl.backends.tvm.schedules.cpu import Hardware, conv_tile, gemm_tile

    avx512 = Hardware(16, 32)
    for ow in (1, 7, 13, 14, 28, 56, 112, 200):
        for ocb in (1, 2, 3, 4, 8, 32):
            rn, ov = conv_tile(ow, ocb, avx512)
            assert ow % rn == 0 and ocb % ov == 0 and rn * ov + ov + 1 <= 32
    assert conv_tile(56, 4, avx512) == (14, 2)  # ResNet-18's 56x56x64 conv
    assert conv_tile(7, 32, avx512) == (7, 2)  # 7x4 would leave no register for the input
    for m in (1, 7, 197, 1024):
        rm, nv = gemm_tile(m, 8, avx512)
        assert rm * nv + nv + 1 <= 32 and 8 % nv == 0


def test_hardware_follows_the_targets_vector_isa():
    """TVM's llvm_get_vector_width says 512 for every x86 CPU; the lanes and registers come from
    the target's features instead (an AVX2 CPU given AVX-512 tiles spills every accumulator)."""
    import tvm

    from convdsl.backends.tvm.schedules.cpu import Hardware

    def hw(mcpu):
        return Hardware.of(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))

    assert hw("skylake-avx512") == hw("icelake-server") == Hardware(16, 32)
    assert hw("haswell") == hw("znver3") == Hardware(8, 16)
    assert hw("x86-64") == Hardware(4, 16)
    assert Hardware(8, 16).vectors(16) == 2 and Hardware(16, 32).vectors(16) == 1


def test_avx2_register_tiles_fit_16_registers():
    from convdsl.backends.tvm.schedules.cpu import Hardware, conv_tile, dw_tile, gemm_tile

    avx2 = Hardware(8, 16)
    for block in (8, 16):
        vb = avx2.vectors(block)
        for ow in (1, 7, 13, 14, 28, 56, 112, 200):
            for ocb in (1, 2, 3, 4, 8, 32):
                rn, ov = conv_tile(ow, ocb, avx2, block)
                assert ocb % ov == 0 and rn <= ow
                assert rn * ov * vb <= avx2.max_accumulators(vb) and (rn * ov + ov) * vb + 1 <= 16
            assert dw_tile(ow, avx2, vb) * vb <= 12 or dw_tile(ow, avx2, vb) == 1
        for m in (1, 7, 197, 1024):
            rm, nv = gemm_tile(m, 24, avx2, vb)
            assert (rm * nv + nv) * vb + 1 <= 16 and rm * nv * vb <= avx2.max_accumulators(vb)
    assert conv_tile(56, 4, avx2, 16) == (4, 1)  # 8 ymm accumulators: measured best on Zen 3
    assert conv_tile(7, 32, avx2, 16) == (4, 1)  # a guarded last tile beats 1x2 on a 7-wide row
    assert conv_tile(28, 32, avx2, 16, strided_1x1=True) == (2, 2)  # strided 1x1: half the broadcasts
    assert conv_tile(28, 32, avx2, 16) == (4, 1)
    assert conv_tile(28, 1, avx2, 16, strided_1x1=True) == (4, 1)  # one channel block: no choice
    # an einsum's columns may be padded to whole tiles: 197 tokens = 25 vectors of 8 -> 26, 6 x 2 vectors
    # (15 registers: one left spare), not the 11 x 1 tile that 25 vectors allow otherwise
    assert gemm_tile(197, 25, avx2, 1, pad_cols=True) == (6, 2)
    assert gemm_tile(197, 25, avx2, 1) == (11, 1)
    for nvecs in (1, 5, 7, 25, 26):
        rm, nv = gemm_tile(197, nvecs, avx2, 1, pad_cols=True)
        assert (rm * nv + nv) + 1 <= 15 and rm * nv <= avx2.max_accumulators(1)


def test_plane_chunks_only_for_small_planes_with_heavy_weights():
    from convdsl.backends.tvm.schedules.cpu import Hardware, plane_chunk

    avx2, avx512 = Hardware(8, 16), Hardware(16, 32)
    assert plane_chunk(32, 3, 3, 16, 16, 7, 7, 2, avx512) == 1  # ResNet's 3x3 over 512 channels at 7x7
    assert plane_chunk(128, 1, 1, 16, 16, 7, 7, 2, avx512) == 8  # 1x1 2048 -> 512: 8 of its 128 blocks
    assert plane_chunk(32, 1, 1, 16, 16, 7, 7, 4, avx512) is None  # 512 -> 2048: 128 KB per block
    assert plane_chunk(16, 3, 3, 16, 16, 14, 14, 2, avx512) is None  # 14x14: rows enough
    assert plane_chunk(32, 3, 3, 16, 16, 7, 7, 2, avx2) is None


def test_weight_chunks_only_on_16_registers():
    from convdsl.backends.tvm.schedules.cpu import WEIGHT_CHUNK_BYTES, Hardware, weight_chunk

    avx2, avx512 = Hardware(8, 16), Hardware(16, 32)
    assert weight_chunk(64, 1, 1, 16, 16, 1, True, avx2) == WEIGHT_CHUNK_BYTES // (16 * 16 * 4)  # 8 blocks of 16
    assert weight_chunk(64, 1, 1, 16, 16, 1, True, avx512) is None
    assert weight_chunk(64, 1, 1, 16, 16, 1, False, avx2) is None  # one tile per row: nothing to reuse
    assert weight_chunk(4, 1, 1, 16, 16, 1, True, avx2) is None  # all the weights fit one chunk
    assert weight_chunk(6, 3, 3, 16, 16, 1, True, avx2) == 1  # 9 KB per block: one block per chunk
    assert weight_chunk(12, 1, 1, 16, 16, 1, True, avx2) == 6  # a divisor of the blocks


@pytest.mark.parametrize("stride,want", [(2, (2, 2)), (1, (4, 1))])
def test_strided_1x1_conv_takes_two_channel_blocks_on_avx2(stride, want):
    """The schedule reads the stride from the conv's input index (``_conv_strides``) and picks the
    2 x 2 tile for a strided 1x1 conv on a haswell (AVX2) target."""
    import tvm
    from tvm import te

    from convdsl.backends.tvm.schedules import kernels, tophub
    from convdsl.backends.tvm.schedules.cpu import schedule_func

    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    x = te.placeholder((1, 4, 28 * stride, 28 * stride, 16), "float32", name="x")
    w = te.placeholder((4, 4, 1, 1, 16, 16), "float32", name="w")
    f = te.create_prim_func([x, w, kernels.conv2d_nchwc(x, w, (stride, stride), (0, 0, 0, 0), (1, 1))])
    with tophub.forcing(tophub.ANALYTIC), tophub.recording() as seen:
        assert schedule_func(f, target) is not None
    assert [chosen for _, _, chosen, _ in seen] == [want]


def _kernel_text(scheduled, name: str) -> str:
    """The TIR text of the first kernel of ``scheduled`` whose name contains ``name`` (there must be one)."""
    found = [f for gv, f in scheduled.functions.items() if name in gv.name_hint]
    assert found
    return found[0].script()


def test_depthwise_padding_is_computed_per_output_row():
    """No whole padded copy of a depthwise conv's input: the input rows a chunk of output rows reads
    (``dw_rows``) are padded into a local buffer inside the parallel loop."""
    _, scheduled = _scheduled_module("""
network t(x: f32[1, 32, 28, 28]) {
    return x | conv2d(32, 3, pad=1, groups=32, bias=false) | batchnorm | relu6
}
""")
    text = _kernel_text(scheduled, "dwconv")
    assert 'scope="local"' in text and "pad_nchwc_local" in text
    assert "T.sblock_alloc_buffer((T.int64(1), T.int64(2), T.int64(30), T.int64(30), T.int64(16)))" not in text


@pytest.mark.parametrize("mcpu, cin, cout, want", [
    ("skylake-avx512", 256, 32, "b_y_o_0_fused"),  # input 200 KB, weights 32 KB: rows first
    ("skylake-avx512", 32, 256, "b_o_0_y_fused"),  # input 25 KB, weights 32 KB: channel blocks first
    # 16 registers: the reduction runs in chunks of input channels whose weights stay in L1 (cpu.weight_chunk),
    # each over the whole row, with the channel blocks outermost either way
    ("haswell", 256, 32, "b_o_0_y_fused"),
    ("haswell", 32, 256, "b_o_0_y_fused"),
])
def test_conv_parallel_loop_takes_rows_first_when_the_input_outweighs_the_weights(mcpu, cin, cout, want):
    """``rows_first``: each core then reads only its own rows of the input (written on that core by the
    conv before it), not the whole input with half of it in the other core's cache.  (Scheduled for the CPU
    named, whatever this machine is: the test failed on AVX2 machines, where the host's schedule is the chunked
    one.)"""
    _, scheduled = _scheduled_module(f"""
network t(x: f32[1, {cin}, 14, 14]) {{
    return x | conv2d({cout}, 1, bias=false) | batchnorm
}}
""", target_json={"kind": "llvm", "mcpu": mcpu})
    text = _kernel_text(scheduled, "conv2d_nchwc")
    assert f"for {want} in T.parallel" in text, [ln for ln in text.splitlines() if "T.parallel" in ln]


def test_depthwise_parallel_loop_takes_rows_first():
    """Depthwise convs partition rows first too, so an inverted-residual block's expansion, depthwise and
    projection convs each find their rows where the conv before wrote them."""
    _, scheduled = _scheduled_module("""
network t(x: f32[1, 64, 14, 14]) {
    return x | conv2d(64, 3, pad=1, groups=64, bias=false) | batchnorm | relu6
}
""")
    text = _kernel_text(scheduled, "dwconv")
    parallel = [ln.strip() for ln in text.splitlines() if "T.parallel" in ln]
    assert len(parallel) == 1 and "_y_0_c_fused in" in parallel[0], parallel


def test_rows_first_compares_input_and_weight_bytes():
    from convdsl.backends.tvm.schedules.cpu import rows_first

    assert rows_first(384 * 14 * 14 * 4, 384 * 64 * 4)  # MobileNet-V2's 384 -> 64 at 14x14
    assert not rows_first(960 * 7 * 7 * 4, 960 * 320 * 4)  # its 960 -> 320 at 7x7
    assert not rows_first(100, 100)


def test_narrow_channel_padding_is_copied_in_whole_rows():
    """The RGB stem's padding ([N, 1, H, W, 3]): rows in parallel, each one contiguous loop over
    (column, channel), not one parallel iteration and one 3-lane vector per pixel."""
    _, scheduled = _scheduled_module("""
network t(x: f32[1, 3, 32, 32]) {
    return x | conv2d(32, 3, stride=2, pad=1, bias=false) | batchnorm | relu6
}
""")
    text = _kernel_text(scheduled, "conv2d_nchwc")
    assert "in T.parallel(T.int64(34)):" in text  # 34 padded rows
    assert "in range(T.int64(102)):" in text  # 34 columns x 3 channels, one loop
    assert "T.parallel(T.int64(1156))" not in text


def test_depthwise_tiles_leave_registers_for_the_inputs():
    """A depthwise tile's accumulators, one tap row's input vectors and the weight fit the registers:
    AVX-512's 28-column tiles (28 accumulators, 30 input vectors) spilled and ran 1.3-1.65x slower."""
    from convdsl.backends.tvm.schedules.cpu import Hardware, dw_tile

    avx512, avx2 = Hardware(16, 32), Hardware(8, 16)
    assert dw_tile(56, avx512, 1, 1, 3) == 14  # 14 + 16 inputs + 1 weight = 31 registers
    assert dw_tile(56, avx512, 1, 2, 3) == 8  # stride 2: 8 + 17 + 1
    assert dw_tile(112, avx512, 1, 1, 3) == 14
    assert dw_tile(7, avx512, 1, 2, 3) == 7
    assert dw_tile(56, avx2, 2, 1, 3) == 2  # two ymm per 16-channel column
    assert dw_tile(7, avx2, 2, 1, 3) == 1
    for hw, vb in ((avx512, 1), (avx2, 2)):
        for ow in (1, 7, 13, 14, 28, 56, 112):
            for sw in (1, 2):
                d = dw_tile(ow, hw, vb, sw, 3)
                assert ow % d == 0 and (d == 1 or (d + (d - 1) * sw + 3) * vb + 1 <= hw.registers)


def test_depthwise_row_chunks_fit_the_budget_and_leave_parallel_work():
    from convdsl.backends.tvm.schedules.cpu import DW_MIN_CHUNKS, DW_PAD_BYTES, dw_rows

    # MobileNet-V2's 7x7 and 14x14 depthwise convs: all rows of a channel block in one buffer
    assert dw_rows(7, 60, 3, 3, 1, 1, 7, 16) == 7
    assert dw_rows(14, 24, 3, 3, 1, 1, 14, 16) == 14
    # 112x112x32: 2 channel blocks x 8 chunks of 14 rows (16 padded input rows of 7.1 KB each)
    assert dw_rows(112, 2, 3, 3, 1, 1, 112, 16) == 14
    # 96 x 112 x 112 at stride 2: 6 channel blocks x 7 chunks of 8 output rows (17 input rows)
    assert dw_rows(56, 6, 3, 3, 2, 2, 56, 16) == 8
    for oh, cb, s, ow in [(56, 9, 1, 56), (28, 9, 2, 28), (28, 12, 1, 28), (14, 12, 2, 14), (9, 1, 2, 5)]:
        r = dw_rows(oh, cb, 3, 3, s, s, ow, 16)
        assert oh % r == 0
        assert r == 1 or (((r - 1) * s + 3) * ((ow - 1) * s + 3) * 64 <= DW_PAD_BYTES and cb * oh // r >= DW_MIN_CHUNKS)


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_row_reductions_are_vectorized_partial_sums(mcpu):
    """A layer norm's row sums become lanes-wide partial sums (rfactor), vectorized inside the row,
    instead of one chain of dependent scalar adds; the result stays the normalization numpy computes."""
    import tvm
    from tvm import te, topi

    from convdsl.backends.tvm.schedules.cpu import Hardware, schedule_func
    from convdsl.backends.tvm.targets import host_can_run

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    lanes = Hardware.of(target).lanes
    x = te.placeholder((2, 7, 96), "float32", name="x")
    g = te.placeholder((96,), "float32", name="g")
    b = te.placeholder((96,), "float32", name="b")
    f = te.create_prim_func([x, g, b, topi.nn.layer_norm(x, g, b, axis=[2], epsilon=1e-5)])
    scheduled = schedule_func(f, target)
    script = scheduled.script()
    assert script.count("_rf = T.sblock_alloc_buffer") == 2
    assert script.count("T.vectorized(") == 3 and f"T.vectorized({lanes})" in script  # both partial sums, the output
    assert script.count("T.parallel") == 1  # the partial sums are computed inside the row, not apart
    if host_can_run({"kind": "llvm", "mcpu": mcpu}) is None:
        rng = np.random.default_rng(0)
        xs, gs, bs = (rng.standard_normal(s).astype(np.float32) for s in ((2, 7, 96), (96,), (96,)))
        lib = tvm.compile(tvm.IRModule({"main": scheduled}), target=target).jit()
        out = tvm.runtime.tensor(np.zeros((2, 7, 96), np.float32))
        lib["main"](*(tvm.runtime.tensor(a) for a in (xs, gs, bs)), out)
        want = (xs - xs.mean(-1, keepdims=True)) / np.sqrt(xs.var(-1, keepdims=True) + 1e-5) * gs + bs
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lanes", [8, 16])
def test_blocked_global_pool_sums_contiguous_lanes_per_pixel(lanes):
    """The global average pool of NCHW[x]c (a squeeze-and-excitation's) sums each pixel's channel lanes together,
    the lanes the innermost loop inside the window's rows and columns, where each lane summed its window alone;
    the result stays numpy's mean, bit for bit in each lane's order of additions. A grouped-norm-like sum whose
    small spatial loop is not the buffers' contiguous axis keeps its loop order."""
    import tvm
    from tvm import te, topi

    from convdsl.backends.tvm.schedules.cpu import schedule_func
    from convdsl.backends.tvm.targets import host_can_run

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    x = te.placeholder((1, 3, 11, 13, lanes), "float32", name="x")
    f = te.create_prim_func([x, topi.nn.adaptive_pool(x, (1, 1), "avg", layout=f"NCHW{lanes}c")])
    script = schedule_func(f, target).script()
    window = script.index("for ax5, ax6 in T.grid(11, 13):")  # the window's loops, then the lanes in them
    assert script.index(f"for ax4 in T.unroll({lanes}):") == script.index("for ax4", window), script
    assert script.count("T.parallel") == 1, script
    if host_can_run({"kind": "llvm", "mcpu": "skylake-avx512"}) is None:
        xs = np.random.default_rng(0).standard_normal((1, 3, 11, 13, lanes)).astype(np.float32)
        lib = tvm.compile(tvm.IRModule({"main": schedule_func(f, target)}), target=target).jit()
        out = tvm.runtime.tensor(np.zeros((1, 3, 1, 1, lanes), np.float32))
        lib["main"](tvm.runtime.tensor(xs), out)
        want = np.zeros((1, 3, 1, 1, lanes), np.float32)
        for i in range(11):  # each lane's sum in the kernel's order: rows, then columns
            for j in range(13):
                want[:, :, 0, 0] += xs[:, :, i, j]
        np.testing.assert_array_equal(out.numpy(), want / np.float32(11 * 13))
    # [N, G, C/G, H, W] summed over (C/G, H, W) per group: G = 8 is no channel lane of a blocked layout
    y = te.placeholder((2, 8, 4, 5, 5), "float32", name="y")
    r = [te.reduce_axis((0, n), name=f"r{i}") for i, n in enumerate((4, 5, 5))]
    s_ = te.compute((2, 8), lambda n, g_: te.sum(y[n, g_, r[0], r[1], r[2]], axis=r), name="gsum")
    mean = te.compute((2, 8), lambda n, g_: s_[n, g_] / 100.0, name="gmean")
    assert "T.unroll" not in schedule_func(te.create_prim_func([y, mean]), target).script()


def test_layout_pass_packs_weights_once():
    from convdsl.backends.tvm.schedules.layout import pack_conv_weight, pack_dense_weight, pack_dw_weight

    w = np.arange(32 * 8 * 3 * 3, dtype=np.float32).reshape(32, 8, 3, 3)
    p = pack_conv_weight(w, 4, 16)
    assert p.shape == (2, 2, 3, 3, 4, 16)
    assert p[1, 1, 2, 0, 3, 5] == w[16 + 5, 4 + 3, 2, 0]
    d = np.arange(16 * 9, dtype=np.float32).reshape(16, 1, 3, 3)
    assert pack_dw_weight(d, 8)[1, 2, 1, 3] == d[8 + 3, 0, 2, 1]
    m = np.arange(6 * 32, dtype=np.float32).reshape(6, 32)
    assert pack_dense_weight(m, 16)[1, 4, 2] == m[4, 16 + 2]


@pytest.mark.parametrize("mcpu,rows,tile", [("haswell", 198, 6), ("skylake-avx512", 198, 9)])
def test_dense_rows_padded_to_whole_tiles(mcpu, rows, tile):
    """A packed GEMM over 197 rows computes 198 (the last row read twice, never stored) so the
    register tile (6 rows; 9 x 3 vectors on AVX-512) divides them: no row guard inside the reduction loop, where LLVM spills
    the tile around it (AVX2), or where a guarded tile ran 3x slower (AVX-512, the Winograd
    GEMM over 196 tiles).  The result is the matmul numpy computes."""
    import tvm
    from tvm import relax

    from convdsl.backends.tvm.schedules.cpu import schedule_func
    from convdsl.backends.tvm.schedules.layout import blocked_layout
    from convdsl.backends.tvm.targets import host_can_run

    rng = np.random.default_rng(0)
    xs = rng.standard_normal((1, 197, 64)).astype(np.float32)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 197, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(w)))
            out = bb.emit_output(relax.op.nn.gelu(relax.op.add(y, relax.const(b))))
        bb.emit_func_output(out)
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    with target:
        mod = blocked_layout(bb.get())
        mod = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                        relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)
    dense = [(gv, f) for gv, f in mod.functions.items() if "dense_packed" in gv.name_hint]
    assert len(dense) == 1, [gv.name_hint for gv in mod.functions]  # bias and gelu fused in
    script = schedule_func(dense[0][1], target).script()
    assert f"T.int64({rows}), T.int64(96)" in script
    if tile is not None:
        update = script[script.index('T.sblock("dense_packed_update")'):]
        update = update[:update.index("T.writes(")]
        assert "T.where" not in update  # no guard in the reduction loop
        assert f"T.unroll(T.int64({tile}))" in script
    if host_can_run({"kind": "llvm", "mcpu": mcpu}) is None:
        import torch

        ex = tvm.compile(mod, target=target)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        got = vm["main"](tvm.runtime.tensor(xs)).numpy()
        want = torch.nn.functional.gelu(torch.from_numpy(xs) @ torch.from_numpy(w) + torch.from_numpy(b)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_attention_tiles_are_whole_pv_tiles_padding_the_queries_least():
    from convdsl.backends.tvm.schedules.cpu import Hardware, attention_tiles

    avx512 = Hardware(16, 32)
    assert attention_tiles(197, 64, avx512) == (18, 6)  # 198 rows, 11 tasks a head; keys not given
    # ViT-S's 208 keys: 6 rows pad as little as 18 and keep their logits and weights (10 KB) in half of L1
    assert attention_tiles(197, 64, avx512, 208) == (6, 6)
    # 4104 queries, whole tasks of 6, 12, 18 or 24 rows, none fitting: the fewest tasks reading all of K and V
    assert attention_tiles(4104, 64, avx512, 4112)[0] == 24
    rows, pv_rows = attention_tiles(50, 32, avx512)
    assert rows % pv_rows == 0 and rows <= avx512.accumulators
    assert -(-50 // rows) * rows == min(-(-50 // r) * r for r in range(pv_rows, 29, pv_rows))


@pytest.mark.parametrize("heads,length,keys,valid,d,rows", [
    (6, 198, 208, 197, 64, None),  # ViT-S
    (2, 36, 48, 37, 32, None),  # fewer query rows than keys (cross-attention), d of two vectors
    (3, 12, 16, 16, 16, None),  # no padded key, one vector of d
    (2, 28, 32, 30, 64, 14),  # tasks of 14 rows, where the model would tile P V by 5: 2-row tiles instead
])
def test_attention_rows_is_softmax_attention(heads, length, keys, valid, d, rows):
    """``kernels.attention_rows`` under its schedule equals numpy's softmax(scale Q K^T) V over the
    valid keys; the padded keys weigh nothing even where their K and V columns are not zero."""
    import tvm
    from tvm import te

    from convdsl.backends.tvm.schedules import kernels
    from convdsl.backends.tvm.schedules.cpu import Hardware, attention_tiles, schedule_attention_rows
    from convdsl.backends.tvm.targets import host_can_run

    hw = Hardware(16, 32)
    rows = rows or attention_tiles(length, d, hw)[0]
    length = -(-length // rows) * rows
    q = te.placeholder((1, heads, length, d), name="q")
    kt = te.placeholder((1, heads, d, keys), name="kt")
    v = te.placeholder((1, heads, keys, d), name="v")
    scale = d ** -0.5
    y = kernels.attention_rows(q, kt, v, scale, valid, rows, hw.lanes)
    sch = tvm.s_tir.Schedule(te.create_prim_func([q, kt, v, y]))
    qk = sch.get_sblock("attention_qk")
    assert sch.get(qk).annotations[kernels.KERNEL_ATTR] == "attention_rows"
    schedule_attention_rows(sch, qk, hw)
    script = sch.mod["main"].script()
    assert f"T.parallel({heads * length // rows})" in script  # (heads, row blocks) as tasks
    assert script.count("T.vectorized(16)") >= 6  # Q K^T, both partials, the weights, P V, the output
    assert script.count('scope="local"') == 7  # a task's intermediates: stack buffers (tir_pipeline)
    if host_can_run({"kind": "llvm", "mcpu": "skylake-avx512"}) is not None:
        return
    rng = np.random.default_rng(0)
    qs = rng.standard_normal((1, heads, length, d)).astype(np.float32)
    ks = rng.standard_normal((1, heads, d, keys)).astype(np.float32) * 3
    vs = rng.standard_normal((1, heads, keys, d)).astype(np.float32)
    lib = tvm.compile(sch.mod, target=tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"}))
    out = tvm.runtime.tensor(np.zeros((1, heads, length, d), np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in (qs, ks, vs)], out)
    logits = np.einsum("bhic,bhcj->bhij", qs.astype(np.float64), ks[..., :valid]) * scale
    p = np.exp(logits - logits.max(-1, keepdims=True))
    want = np.einsum("bhij,bhjc->bhic", p / p.sum(-1, keepdims=True), vs[:, :, :valid])
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
@pytest.mark.parametrize("body", ["x + (x | layernorm | mhsa(2))", "x | linear(192) | packed_attention(2)"],
                         ids=["mhsa", "packed"])
def test_attention_is_one_kernel_on_avx512(mcpu, body):
    """Attention over 37 tokens (keys padded to 48): on AVX-512 Q K^T, the softmax and P V are one
    kernel (kernels.attention_rows, scheduled by its rule), from mhsa's heads layout and from
    ``attend`` (packed_attention: the queries padded to whole tasks and sliced back in the kernel's
    epilogue); on AVX2 three (16 registers hold no 18-row tile).  All equal torch."""
    import tvm

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.schedules import schedule_module
    from convdsl.backends.tvm.schedules.cpu import Hardware, kernel_of, schedule_attention_rows
    from convdsl.backends.tvm.targets import host_can_run, make_target

    g = graph_of(f"""
network t(x: f32[1, 37, 64]) {{
    return {body}
}}
""")
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    with target:
        mod = tvm.transform.Sequential(optimize_passes(make_target("tvm-llvm")))(lower_graph(g, "tvm-llvm", {}))
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    def kernels_of(f):
        sch = tvm.s_tir.Schedule(f)
        return {kernel_of(sch, b) for b in sch.get_child_blocks(sch.get_sblock("root"))}

    fused = [n for n, f in funcs.items() if "attention_rows" in kernels_of(f)]
    softmax = [n for n in funcs if "softmax" in n]
    if mcpu == "haswell":
        assert not fused and softmax, sorted(funcs)
    else:
        assert len(fused) == 1 and not softmax and not any("matmul" in n for n in funcs), sorted(funcs)
    if fused:  # the rule applies (schedule_module would fall back to the generic schedule)
        sch = tvm.s_tir.Schedule(funcs[fused[0]])
        schedule_attention_rows(sch, sch.get_sblock("attention_qk"), Hardware.of(target))
    with target:
        mod = schedule_module(mod, target)
    if host_can_run({"kind": "llvm", "mcpu": mcpu}) is None:
        ex = tvm.compile(mod, target=target)
        vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
        xs = random_inputs(g)
        assert_close([vm["main"](tvm.runtime.tensor(xs[0])).numpy()], torch_outputs(g, xs))


@pytest.mark.parametrize("dim,heads", [(128, 2), (96, 3), (64, 4)])
def test_attention_projections_pack_one_head_a_block(dim, heads):
    """Q, K and V's packed weights hold one head's d columns a block where d is whole vectors up to 64 (ViT-S's
    64: one stream of weights per register tile instead of four), dense_block's 16 otherwise, on AVX-512 (the
    layout checked for a skylake-avx512 target whatever this machine is; AVX2 keeps 16-column blocks for d 64:
    the next test); the network equals torch on this machine either way."""
    import tvm

    import convdsl.backends.tvm as ctvm
    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    g = graph_of(f"""
network t(x: f32[1, 37, {dim}]) {{
    return x + (x | layernorm | mhsa({heads}))
}}
""")
    spec = make_target("tvm-llvm", target_json={"kind": "llvm", "mcpu": "skylake-avx512"})
    with spec.tvm_target():
        mod = tvm.transform.Sequential(optimize_passes(spec))(lower_graph(g, "tvm-llvm", {}))
    block = dim // heads  # d: 64, 32 and 16 here, all whole vectors
    for gv, f in mod.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint.startswith("dense_heads"):
            assert [int(v) for v in f.params[1].ty.shape] == [dim // block, dim, block], gv.name_hint
    m = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)
    xs = random_inputs(g)
    assert_close([m(xs[0])], torch_outputs(g, xs))


def test_attention_projections_keep_16_column_blocks_on_avx2():
    """On AVX2 a head of 64 columns is 8 ymm registers, and the model's tile over such a block one row: the
    projections keep 16-column blocks there."""
    import tvm

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    g = graph_of("""
network t(x: f32[1, 37, 128]) {
    return x + (x | layernorm | mhsa(2))
}
""")
    shapes = {}
    for mcpu in ("haswell", "skylake-avx512"):
        with tvm.target.Target({"kind": "llvm", "mcpu": mcpu}):
            mod = tvm.transform.Sequential(optimize_passes(make_target("tvm-llvm")))(lower_graph(g, "tvm-llvm", {}))
        shapes[mcpu] = {tuple(int(v) for v in f.params[1].ty.shape) for gv, f in mod.functions.items()
                        if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint.startswith("dense_heads")}
    assert shapes == {"haswell": {(8, 128, 16)}, "skylake-avx512": {(2, 128, 64)}}


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_attention_heads_layout_without_copies(mcpu):
    """Self-attention's Q, K^T and V are written by their GEMMs in the heads' layout (keys
    padded 13 -> 16) and the output projection reads it: no transpose or pad kernel is left, and
    the network equals torch (AVX2 and AVX-512 alike)."""
    import tvm

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import host_can_run, make_target

    g = graph_of("""
network t(x: f32[2, 13, 32]) {
    return x + (x | layernorm | mhsa(4))
}
""")
    spec = make_target("tvm-llvm")
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    with target:
        mod = tvm.transform.Sequential(optimize_passes(spec))(lower_graph(g, "tvm-llvm", {}))
    names = sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    copies = [n for n in names if "transpose" in n or n.startswith("pad") or "_pad" in n]
    # Q, K^T, V: three kernels, or two where Q and V have the same shape (AVX-512: 13 keys, fewer
    # than a vector, stay unpadded, and 13 query rows are one register tile)
    assert sum(n.startswith("dense_heads") for n in names) == (3 if mcpu == "haswell" else 2) and not copies, names
    assert any("dense_merge_heads" in n for n in names), names
    if host_can_run({"kind": "llvm", "mcpu": mcpu}) is None:
        from convdsl.backends.tvm.schedules import schedule_module

        with target:
            mod = schedule_module(mod, target)
        ex = tvm.compile(mod, target=target)
        vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
        xs = random_inputs(g)
        got = vm["main"](tvm.runtime.tensor(xs[0]))
        assert_close([got.numpy()], torch_outputs(g, xs))
