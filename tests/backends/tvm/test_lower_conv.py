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

from convdsl.ir.ops.conv import MAX_PHASE_WORK, phase_kernel, phase_shuffle

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


@pytest.mark.parametrize("shape,o,k,stride,pad,output_pad,dilation,groups", CASES)
def test_phase_decomposition_is_torch_conv_transpose(shape, o, k, stride, pad, output_pad, dilation, groups):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(shape).astype("float32"))
    w = rng.standard_normal((shape[1], o // groups, *k)).astype("float32")
    conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[len(k) - 1]
    ref = conv_t(x, torch.from_numpy(w), stride=stride, padding=pad, output_padding=output_pad, groups=groups,
                 dilation=dilation)
    got = _by_phases(x, w, stride, pad, output_pad, dilation, groups)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


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
