"""Normalization ops: shape rules, and parameters named and initialized like the
PyTorch module each one lowers to."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.ops import OPS
from convdsl.ir.optable import bind_attrs
from convdsl.ir.params import materialize
from convdsl.ir.types import TensorType
from convdsl.backends.torch.runtime import LayerNorm2d
from opcheck import infer1


def _params(op: str, shape, **kwargs) -> dict[str, np.ndarray]:
    d = OPS[op]
    attrs = bind_attrs(d, [], kwargs)
    specs = d.params(attrs, [TensorType(tuple(shape))])
    return {k: materialize(s, 0, k) for k, s in specs.items()}


def _same_state(ours: dict[str, np.ndarray], module: nn.Module) -> None:
    ref = module.state_dict()
    assert sorted(ours) == sorted(ref)
    for k, v in ref.items():
        assert ours[k].shape == tuple(v.shape), k
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)


@pytest.mark.parametrize("shape,kwargs,module", [
    ((2, 7, 16), {}, nn.LayerNorm(16)),
    ((2, 5, 6, 16), dict(dims=2), nn.LayerNorm((6, 16))),
    ((2, 7, 16), dict(affine=False), nn.LayerNorm(16, elementwise_affine=False)),
    ((2, 7, 16), dict(bias=False), nn.LayerNorm(16, bias=False)),
])
def test_layernorm_shape_and_params(shape, kwargs, module):
    assert infer1("layernorm", shape, **kwargs) == shape
    _same_state(_params("layernorm", shape, **kwargs), module)


def test_layernorm_symbolic_and_errors():
    assert infer1("layernorm", ("N", "L", 64)) == ("N", "L", 64)
    with pytest.raises(ShapeError, match="static sizes"):
        infer1("layernorm", ("N", "L", 64), dims=2)
    with pytest.raises(ShapeError, match="rank >= 3"):
        infer1("layernorm", (4, 4), dims=3)
    with pytest.raises(CDLTypeError, match="positive"):
        infer1("layernorm", (4, 4), dims=0)


def test_layernorm2d_shape_params_and_math():
    assert infer1("layernorm2d", ("N", 32, 7, 9)) == ("N", 32, 7, 9)
    _same_state(_params("layernorm2d", (2, 32, 7, 9)), LayerNorm2d(32))
    _same_state(_params("layernorm2d", (2, 32, 7, 9), affine=False), LayerNorm2d(32, elementwise_affine=False))
    m = LayerNorm2d(6, eps=1e-6)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(2, 6, 5, 4)
    ref = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), m.weight, m.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(m(x), ref)
    with pytest.raises(ShapeError, match="rank-4"):
        infer1("layernorm2d", (2, 32, 7))
    with pytest.raises(ShapeError, match="static channel"):
        infer1("layernorm2d", (2, "C", 7, 7))


@pytest.mark.parametrize("shape,groups,affine", [((2, 32, 5, 5), 8, True), ((2, 6, 7), 3, False),
                                                 ((2, 6, 7), 6, True), ((3, 4), 1, True)])
def test_groupnorm_shape_and_params(shape, groups, affine):
    m = nn.GroupNorm(groups, shape[1], affine=affine)
    assert infer1("groupnorm", shape, groups, affine=affine) == tuple(m(torch.randn(shape)).shape)
    _same_state(_params("groupnorm", shape, groups=groups, affine=affine), m)


def test_groupnorm_errors():
    with pytest.raises(ShapeError, match="do not divide"):
        infer1("groupnorm", (2, 10, 4, 4), 4)
    with pytest.raises(CDLTypeError, match="positive"):
        infer1("groupnorm", (2, 10, 4, 4), 0)
    with pytest.raises(ShapeError, match="rank >= 2"):
        infer1("groupnorm", (10,), 2)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("affine,track", [(False, False), (True, False), (True, True), (False, True)])
def test_instancenorm_shape_and_params(nd, affine, track):
    shape = (2, 4) + (5,) * nd
    m = getattr(nn, f"InstanceNorm{nd}d")(4, affine=affine, track_running_stats=track)
    assert infer1(f"instancenorm{nd}d", shape, affine=affine, track_running_stats=track) == shape
    _same_state(_params(f"instancenorm{nd}d", shape, affine=affine, track_running_stats=track), m)


def test_instancenorm_errors():
    with pytest.raises(ShapeError, match="rank-4"):
        infer1("instancenorm2d", (4, 5, 5))
    with pytest.raises(ShapeError, match="static channel"):
        infer1("instancenorm1d", ("N", "C", 5))


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("track", [False, True])
def test_instancenorm_refuses_one_spatial_element_as_torch_does(nd, track):
    """One spatial element (e.g. after global_avgpool): torch's instance norm refuses it (in eval
    without running statistics, and whenever it trains), so the op table refuses it statically
    (tests/regressions/instancenorm_single_element.cdl); a symbolic size is left to run time."""
    shape = (2, 4) + (1,) * nd
    m = getattr(nn, f"InstanceNorm{nd}d")(4, track_running_stats=track)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        m.train()(torch.randn(shape))
    with pytest.raises(ShapeError, match="more than one spatial element") as info:
        infer1(f"instancenorm{nd}d", shape, track_running_stats=track)
    assert "groupnorm(1)" in info.value.hint
    assert infer1(f"instancenorm{nd}d", (2, 4) + (1,) * (nd - 1) + (2,)) == (2, 4) + (1,) * (nd - 1) + (2,)
    assert infer1(f"instancenorm{nd}d", (2, 4) + (1,) * (nd - 1) + ("L",))[-1] == "L"


def test_softmax_and_dropout():
    assert infer1("softmax", ("N", 10)) == ("N", 10)
    assert infer1("softmax", (2, 3, 4), 1) == (2, 3, 4)
    with pytest.raises(ShapeError, match="out of range"):
        infer1("softmax", (2, 3), 2)
    assert infer1("dropout", ("N", 3, 4), 0.2) == ("N", 3, 4)
    assert infer1("dropout", (2, 3)) == (2, 3)
    with pytest.raises(CDLTypeError, match="probability"):
        infer1("dropout", (2, 3), 1.5)
