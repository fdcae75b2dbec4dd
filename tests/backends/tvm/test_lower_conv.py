"""lower_conv.py's CPU rewrites: conv1d as a conv2d of height 1, conv3d as a conv2d of depth-stacked
inputs, a transposed conv as its stride-phase decomposition (one conv, a depth-to-space, a crop).
The decomposition is checked on its own against torch's conv_transpose (``phase_kernel`` and
``phase_shuffle`` evaluated with torch's conv and reshapes), then each rewrite is compiled for tvm-llvm
against the torch backend, and the built module is checked to use the blocked conv template, not TVM's
conv*d_transpose / conv1d / conv3d."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convdsl.ir.ops.conv import MAX_PHASE_WORK, phase_convs, phase_kernel, phase_shuffle

from .conftest import assert_close, graph_of, kernel_names, one_op, random_inputs, torch_outputs


def _by_phases(x: torch.Tensor, w: np.ndarray, stride, pad, output_pad, dilation, groups) -> torch.Tensor:
    """The decomposition, written with torch ops: conv with the phase kernel, interleave, crop."""
    nd = x.dim() - 2
    k = w.shape[2:]
    t = [(ki - 1) * di // si + 1 for ki, si, di in zip(k, stride, dilation)]
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    y = conv(x, torch.from_numpy(phase_kernel(w, stride, dilation, groups)), padding=[ti - 1 for ti in t],
             groups=groups)
    n, o = y.shape[0], w.shape[1] * groups
    split, dims, merged = phase_shuffle(o, groups, stride, list(y.shape[2:]))
    y = y.reshape(n, *split[1:]).permute(*dims).reshape(n, *merged[1:])
    out = [(li - 1) * si - 2 * p + di * (ki - 1) + op + 1
           for li, si, p, di, ki, op in zip(x.shape[2:], stride, pad, dilation, k, output_pad)]
    short = [max(p + m - f, 0) for p, m, f in zip(pad, out, y.shape[2:])]
    y = F.pad(y, [v for e in reversed(short) for v in (0, e)])
    return y[(slice(None), slice(None)) + tuple(slice(p, p + m) for p, m in zip(pad, out))]


CASES = [  # (input shape, out channels, k, stride, pad, output_pad, dilation, groups)
    ((2, 8, 6, 7), 4, (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 1),  # U-Net's up-conv: a 1x1 conv to 4 O channels
    ((1, 6, 5, 5), 3, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1),
    ((1, 4, 5, 6), 6, (3, 3), (1, 2), (2, 0), (0, 1), (2, 2), 2),
    ((2, 4, 4, 4), 4, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 4),
    ((1, 3, 7, 5), 5, (3, 2), (3, 1), (0, 1), (2, 0), (1, 1), 1),
    ((2, 4, 8), 4, (2,), (1,), (0,), (1,), (2,), 1),  # stride <= output_pad < dilation
    ((2, 4, 9), 6, (5,), (3,), (2,), (2,), (1,), 2),
    ((1, 2, 3, 4, 4), 3, (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1), 1),
    ((1, 2, 3, 4, 4), 3, (3, 3, 3), (2, 1, 2), (1, 0, 1), (1, 0, 0), (1, 1, 1), 1),
]


def _torch_conv_transpose(shape, o, k, stride, pad, output_pad, dilation, groups):
    """(x, w, torch's conv_transpose of x with w): a case's random input and kernel, and its reference."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(shape).astype("float32"))
    w = rng.standard_normal((shape[1], o // groups, *k)).astype("float32")
    conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[len(k) - 1]
    return x, w, conv_t(x, torch.from_numpy(w), stride=stride, padding=pad, output_padding=output_pad,
                        groups=groups, dilation=dilation)


@pytest.mark.parametrize("shape,o,k,stride,pad,output_pad,dilation,groups", CASES)
def test_phase_decomposition_is_torch_conv_transpose(shape, o, k, stride, pad, output_pad, dilation, groups):
    x, w, ref = _torch_conv_transpose(shape, o, k, stride, pad, output_pad, dilation, groups)
    got = _by_phases(x, w, stride, pad, output_pad, dilation, groups)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


def _by_phase_convs(x: torch.Tensor, w: np.ndarray, stride, pad, output_pad, dilation, groups):
    """``phase_convs``, written with torch ops: each phase's conv on its padded input, concat, interleave."""
    nd = x.dim() - 2
    split = phase_convs(w, x.shape[2:], stride, pad, dilation, output_pad, groups)
    if split is None:
        return None
    kernels, pads, q = split
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    y = torch.cat([conv(F.pad(x, [v for pr in reversed(pads_r) for v in pr]), torch.from_numpy(kr), groups=groups)
                   for kr, pads_r in zip(kernels, pads)], 1)
    split, dims, merged = phase_shuffle(w.shape[1] * groups, 1, stride, q)
    return y.reshape(y.shape[0], *split[1:]).permute(*dims).reshape(y.shape[0], *merged[1:])


# CASES whose phases differ in length (an output size not a multiple of the stride), or have a phase with no
# tap (dilation 2, stride 2: every tap lands on the even positions)
NO_PHASE_CONVS = {2: "a phase with no tap", 4: "23 rows in phases of 3", 8: "6 and 7 in phases of 2"}


@pytest.mark.parametrize("case", range(len(CASES) + 2))
def test_phase_convs_are_torch_conv_transpose(case):
    """One conv per output phase over exactly its positions, then an interleave with no crop; None where the
    phases differ in length or a phase has no tap (``NO_PHASE_CONVS``)."""
    shape, o, k, stride, pad, output_pad, dilation, groups = (CASES + [
        ((1, 6, 4, 4), 4, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1),  # DCGAN
        ((1, 4, 5), 4, (7,), (3,), (2,), (0,), (1,), 1)])[case]
    x, w, ref = _torch_conv_transpose(shape, o, k, stride, pad, output_pad, dilation, groups)
    got = _by_phase_convs(x, w, stride, pad, output_pad, dilation, groups)
    if case in NO_PHASE_CONVS:
        assert got is None
        return
    assert got is not None and got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_phase_convs_do_the_transposed_convs_work_only():
    """k 3 / stride 2 / pad 1 / output_pad 1: the four phases have 2x2, 2x1, 1x2 and 1x1 taps (9, the kernel's)
    over n x n positions each, where ``phase_kernel``'s one conv has 4 x 2 x 2 taps over (n + 1)^2."""
    w = np.ones((3, 2, 3, 3), np.float32)
    kernels, pads, q = phase_convs(w, (5, 5), (2, 2), (1, 1), (1, 1), (1, 1), 1)
    assert q == [5, 5] and [kr.shape[2:] for kr in kernels] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert sum(np.count_nonzero(kr) for kr in kernels) == w.size


def test_phase_kernel_places_each_tap_once():
    """Every tap of the transposed kernel appears exactly once in the phase kernel, the rest is zeros."""
    w = np.arange(1, 2 * 3 * 3 * 3 + 1, dtype=np.float32).reshape(2, 3, 3, 3)
    pk = phase_kernel(w, (2, 2), (1, 1), 1)
    assert pk.shape == (3 * 4, 2, 2, 2)  # O s^2 phases, C, T = 2
    assert sorted(pk[pk != 0].tolist()) == sorted(w.reshape(-1).tolist())
    assert np.count_nonzero(pk) == w.size


def _kernels(text: str) -> list[str]:
    return kernel_names(graph_of(text))


TVM_CASES = [  # (op, input shape, out, attrs)
    ("conv_transpose2d", (2, 16, 6, 7), 16, dict(k=2, stride=2)),
    ("conv_transpose2d", (1, 16, 5, 5), 32, dict(k=3, stride=2, pad=1, output_pad=1)),
    ("conv_transpose2d", (1, 16, 5, 6), 16, dict(k=4, stride=2, pad=1, groups=2)),
    ("conv_transpose1d", (2, 16, 9), 16, dict(k=3, stride=2, pad=1, output_pad=1)),
    ("conv_transpose3d", (1, 8, 3, 4, 4), 8, dict(k=2, stride=2)),
    ("conv1d", (2, 16, 20), 32, dict(k=3, pad=1)),
    ("conv1d", (2, 16, 20), 16, dict(k=5, stride=2, pad=2, dilation=2, groups="depthwise")),
    ("conv1d", (1, 3, 17), 5, dict(k=4, pad="same", pad_mode="reflect")),
    ("conv3d", (2, 4, 5, 6, 7), 8, dict(k=3, pad=1)),
    ("conv3d", (1, 3, 4, 9, 9), 16, dict(k=[1, 5, 5], pad=[0, 2, 2])),  # one 2-D conv of every slice
    ("conv3d", (1, 4, 9, 6, 6), 8, dict(k=[3, 3, 1], stride=[2, 1, 1], pad=[2, 1, 0], dilation=[2, 1, 1])),
    ("conv3d", (1, 4, 5, 6, 6), 8, dict(k=3, pad=1, pad_mode="replicate")),
    ("conv_transpose2d", (2, 20, 1, 1), 32, dict(k=4)),  # of a point: a matmul to the taps
]


@pytest.mark.parametrize("op,shape,o,attrs", TVM_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_rewritten_convs_match_torch(op, shape, o, attrs, llvm_runner):
    text = one_op(op, [shape], o, **attrs)
    g = graph_of(text)
    xs = random_inputs(g)
    assert_close(llvm_runner(g, text)(xs), torch_outputs(g, xs))


@pytest.mark.parametrize("op,shape,o,attrs", [TVM_CASES[0], TVM_CASES[1], TVM_CASES[5], TVM_CASES[8]],
                         ids=["up", "k3s2", "conv1d", "conv3d"])
def test_rewritten_convs_use_the_blocked_template(op, shape, o, attrs):
    names = _kernels(one_op(op, [shape], o, **attrs))
    assert not any("conv2d_transpose" in n or "conv1d" in n or "conv3d" in n for n in names), names
    assert any("conv2d_nchwc" in n for n in names), names


@pytest.mark.parametrize("attrs,convs", [(dict(k=2, stride=2), 1), (dict(k=3, stride=2, pad=1, output_pad=1), 4),
                                         (dict(k=4, stride=2, pad=1), 4)], ids=["up", "k3s2", "k4s2"])
def test_a_crop_or_zero_taps_take_one_conv_per_phase(attrs, convs):
    """Where ``phase_kernel``'s one conv would compute a crop's positions or other phases' zero taps
    (``PHASE_CONVS_BELOW``), each phase gets its own conv and no strided_slice follows; U-Net's up-conv (no crop,
    every phase all taps) keeps the one conv."""
    g = graph_of(one_op("conv_transpose2d", [(1, 16, 6, 6)], 16, **attrs))
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    with make_target("tvm-llvm").tvm_target():
        text = lower_graph(g, "tvm-llvm").script()
    assert text.count("R.nn.conv2d(") == convs and "R.strided_slice" not in text
    assert ("R.concat" in text) == (convs > 1)


def test_a_transposed_conv_of_a_point_is_a_matmul():
    """DCGAN's first layer (a latent vector to 4 x 4): the packed dense kernel, no conv reading padding."""
    names = _kernels(one_op("conv_transpose2d", [(1, 20, 1, 1)], 32, k=4))
    assert any("dense_packed" in n for n in names) and not any("conv2d" in n for n in names), names


def test_large_dilation_keeps_tvm_conv_transpose():
    """k 3, dilation 4, stride 2: the phase kernel would do (2 * 5)^2 / 3^2 = 11x the work; TVM's op stays."""
    assert (2 * ((3 - 1) * 4 // 2 + 1)) ** 2 > MAX_PHASE_WORK * 3 ** 2
    names = _kernels(one_op("conv_transpose2d", [(1, 8, 5, 5)], 8, k=3, stride=2, dilation=4))
    assert any("conv2d_transpose" in n for n in names), names


def _se(channels: int, squeeze: int) -> str:
    return f"""network net(x: f32[N, {channels}, 7, 7]) {{
    y = x | conv2d({channels}, 3, pad=1)
    s = y | adaptive_avgpool2d(1) | conv2d({squeeze}, 1) | relu | conv2d({channels}, 1) | sigmoid
    return relu(y * s) | conv2d({channels}, 1)
}}
"""


@pytest.mark.parametrize("channels,squeeze", [(32, 8), (104, 26), (440, 110)])
def test_squeeze_excitation_convs_are_matmuls(channels, squeeze, llvm_runner):
    """The 1x1 convs of a 1x1 image become the packed dense kernel (any channel counts: 110 and 26 have no
    channel block), and the gate multiplies the blocked feature map without taking it back to NCHW."""
    text = _se(channels, squeeze)
    g = graph_of(text)
    xs = random_inputs(g)
    assert_close(llvm_runner(g, text)(xs), torch_outputs(g, xs))
    names = _kernels(text)
    assert sum("dense_packed" in n for n in names) == 2, names
    assert not any("conv2d" in n and "nchwc" not in n for n in names), names  # no generic conv
    assert sum("unpack_nchwc" in n for n in names) <= 2, names  # the output, and the pooled vector for the matmul
    assert not any("unpack_nchwc" in n and "multiply" in n for n in names), names
    # the gate is packed by its own kernel: the sigmoid runs once per channel, not once per pixel in the multiply
    assert any("pack_gate_nchwc" in n for n in names) and not any("sigmoid" in n and "multiply" in n for n in names), \
        names
