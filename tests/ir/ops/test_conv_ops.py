"""Convolution shape rules (convdsl/ir/ops/conv.py): padding modes accept exactly the
padding PyTorch accepts, and refuse the rest with a shape error that has a hint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convdsl.errors import ShapeError
from convdsl.lang.elaborate import elaborate
from opcheck import infer1, one_op_program

build_module = pytest.importorskip("convdsl.backends.torch").build_module


def _torch_pads(mode: str, size: int, pad: int) -> bool:
    """Whether F.pad accepts ``pad`` on each side of a dim of ``size`` in ``mode``."""
    try:
        F.pad(torch.zeros(1, 1, size), (pad, pad), mode=mode)
    except (RuntimeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("mode", ["circular", "reflect"])
@pytest.mark.parametrize("size,pad", [(3, 2), (3, 3), (3, 4), (3, 5), (1, 1), (1, 2)])
def test_wrapping_pad_modes_accept_what_torch_accepts(mode, size, pad):
    """circular wraps around at most once (pad <= size), reflect mirrors without the edge (pad < size)."""
    if _torch_pads(mode, size, pad):
        assert infer1("conv1d", (2, 4, size), 4, 3, pad=pad, pad_mode=mode) == (2, 4, size + 2 * pad - 2)
    else:
        with pytest.raises(ShapeError, match=f"{mode} padding {pad}") as info:
            infer1("conv1d", (2, 4, size), 4, 3, pad=pad, pad_mode=mode)
        assert info.value.hint and "pad_mode=zeros" in info.value.hint


def test_circular_padding_wider_than_the_input_is_refused_with_a_caret():
    # tests/regressions/circular_padding_wider_than_input.cdl
    src = "network t(x0: f32[N, 4, 3, 9]) {\n    return x0 | conv2d(4, 3, pad=[4, 1], pad_mode=circular)\n}\n"
    with pytest.raises(ShapeError) as info:
        elaborate(src, "t.cdl")
    e = info.value
    assert e.span is not None and (e.span.line, e.span.column) == (2, 17)
    assert "circular padding 4 must be at most the input size 3" in e.message
    assert e.expected == "padding <= 3" and e.hint
    assert "^^^" in e.render()


def test_circular_padding_as_wide_as_the_input_matches_torch():
    """The widest circular padding the op table accepts runs, and computes torch's result."""
    g = elaborate(one_op_program("conv2d", [(2, 3, 3, 4)], 5, 3, pad=[3, 4], pad_mode="circular"))
    model = build_module(g)
    x = torch.randn(2, 3, 3, 4, generator=torch.Generator().manual_seed(0))
    w = torch.from_numpy(np.asarray(g.params["conv2d.weight"]))
    b = torch.from_numpy(np.asarray(g.params["conv2d.bias"]))
    with torch.no_grad():
        want = F.conv2d(F.pad(x, (4, 4, 3, 3), mode="circular"), w, b)
        got = model(x)
    assert tuple(got.shape) == tuple(g.output_types()[0].shape)
    torch.testing.assert_close(got, want)


def test_padding_limits_apply_to_static_dims_only():
    assert infer1("conv1d", (2, 4, "L"), 4, 3, pad=9, pad_mode="circular")[2] is not None
