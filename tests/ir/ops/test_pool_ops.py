"""Pooling, global/adaptive pooling, mean and upsample: shape rules against PyTorch."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from convdsl.errors import CDLTypeError, ConvDSLError, ShapeError
from opcheck import infer1


def _torch_shape(fn, *args, **kwargs):
    try:
        return tuple(fn(*args, **kwargs).shape)
    except (RuntimeError, ValueError):
        return None


def _ours(op, shape, *args, **kwargs):
    try:
        return infer1(op, shape, *args, **kwargs)
    except ConvDSLError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_maxpool_matches_torch_grid(nd):
    fn = getattr(F, f"max_pool{nd}d")
    sizes = range(1, 10) if nd < 3 else (1, 4, 7)
    for size, k, s, p, d, ceil in itertools.product(sizes, (1, 2, 3), (1, 2, 3), (0, 1), (1, 2), (False, True)):
        shape = (2, 3) + (size,) * nd
        x = torch.randn(shape)
        want = _torch_shape(fn, x, k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
        got = _ours(f"maxpool{nd}d", shape, k, stride=s, pad=p, dilation=d, ceil_mode=ceil)
        assert got == want, (shape, k, s, p, d, ceil)


@pytest.mark.slow
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_avgpool_matches_torch_grid(nd):
    fn = getattr(F, f"avg_pool{nd}d")
    sizes = range(1, 10) if nd < 3 else (1, 4, 7)
    for size, k, s, p, ceil in itertools.product(sizes, (1, 2, 3, 4), (1, 2, 3), (0, 1, 2), (False, True)):
        shape = (2, 3) + (size,) * nd
        want = _torch_shape(fn, torch.randn(shape), k, stride=s, padding=p, ceil_mode=ceil)
        got = _ours(f"avgpool{nd}d", shape, k, stride=s, pad=p, ceil_mode=ceil)
        assert got == want, (shape, k, s, p, ceil)


def test_pool_stride_defaults_to_kernel():
    assert infer1("maxpool2d", (1, 8, 9, 11), 2) == (1, 8, 4, 5)
    assert infer1("avgpool2d", (1, 8, 9, 11), 3, ceil_mode=True) == (1, 8, 3, 4)
    assert infer1("maxpool2d", (1, 8, 9, 11), [2, 3]) == (1, 8, 4, 3)


def test_pool_per_dim_lists_match_torch():
    x = torch.randn(3, 4, 17, 10)
    want = F.max_pool2d(x, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), ceil_mode=True).shape
    assert infer1("maxpool2d", x.shape, [3, 2], stride=[2, 1], pad=[1, 0], dilation=[2, 1], ceil_mode=True) == tuple(want)


def test_pool_unbatched_and_symbolic():
    assert infer1("maxpool2d", (3, 9, 9), 3, stride=2) == (3, 4, 4)
    n, c, length = infer1("maxpool1d", ("N", 3, "L"), 2)
    assert (n, c) == ("N", 3) and isinstance(length, str) and "L" in length
    assert infer1("avgpool2d", ("N", 3, 8, 8), 2) == ("N", 3, 4, 4)


def test_pool_errors():
    with pytest.raises(ShapeError, match="rank"):
        infer1("maxpool2d", (8, 8), 2)
    with pytest.raises(ShapeError, match="smaller than the kernel"):
        infer1("maxpool2d", (1, 3, 2, 2), 3)
    with pytest.raises(CDLTypeError, match="half the kernel"):
        infer1("avgpool2d", (1, 3, 8, 8), 2, pad=2)
    with pytest.raises(CDLTypeError, match="positive"):
        infer1("maxpool2d", (1, 3, 8, 8), 2, stride=0)
    with pytest.raises(CDLTypeError, match="2 values"):
        infer1("maxpool2d", (1, 3, 8, 8), [2, 2, 2])
    with pytest.raises(ShapeError, match="ceil_mode"):
        infer1("maxpool2d", ("N", 3, "H", "W"), 2, ceil_mode=True)
    with pytest.raises(CDLTypeError, match="dilation"):
        infer1("avgpool2d", (1, 3, 8, 8), 2, dilation=2)


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 1, 1), (4, 6, 11), (2, 3, 4, 5, 6)])
@pytest.mark.parametrize("keepdim", [True, False])
def test_global_pools_match_torch(shape, keepdim):
    x = torch.randn(shape)
    dims = tuple(range(2, len(shape)))
    assert infer1("global_avgpool", shape, keepdim=keepdim) == tuple(x.mean(dims, keepdim=keepdim).shape)
    assert infer1("global_maxpool", shape, keepdim=keepdim) == tuple(torch.amax(x, dims, keepdim=keepdim).shape)
    if len(shape) == 4 and keepdim:
        assert infer1("global_avgpool", shape) == tuple(F.adaptive_avg_pool2d(x, 1).shape)


def test_global_pool_symbolic_and_errors():
    assert infer1("global_avgpool", ("N", 64, 7, 7)) == ("N", 64, 1, 1)
    assert infer1("global_maxpool", ("N", 64, "H", "W"), keepdim=False) == ("N", 64)
    with pytest.raises(ShapeError, match="rank >= 3"):
        infer1("global_avgpool", (2, 64))


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("nd,shape,out", [
    (1, (2, 3, 17), 5), (1, (2, 3, 4), 7), (2, (2, 3, 13, 9), 7), (2, (2, 3, 13, 9), [3, 4]),
    (2, (3, 5, 5), 1), (3, (1, 2, 5, 6, 7), [2, 3, 4]),
])
def test_adaptive_pools_match_torch(kind, nd, shape, out):
    fn = getattr(F, f"adaptive_{kind}_pool{nd}d")
    want = fn(torch.randn(shape), out if isinstance(out, int) else tuple(out)).shape
    assert infer1(f"adaptive_{kind}pool{nd}d", shape, out) == tuple(want)


def test_adaptive_pool_defaults_and_errors():
    assert infer1("adaptive_avgpool2d", ("N", 512, 7, 7)) == ("N", 512, 1, 1)
    assert infer1("adaptive_avgpool2d", ("N", 512, "H", "W"), 7) == ("N", 512, 7, 7)
    with pytest.raises(ShapeError, match="rank"):
        infer1("adaptive_avgpool2d", (2, 512), 7)
    with pytest.raises(CDLTypeError, match="positive"):
        infer1("adaptive_maxpool2d", (2, 3, 8, 8), 0)
    with pytest.raises(CDLTypeError, match="2 values"):
        infer1("adaptive_maxpool2d", (2, 3, 8, 8), [1, 2, 3])


@pytest.mark.parametrize("dims,keepdim", [([2, 3], False), ([2, 3], True), (-1, False), (1, True), ([0, -1], False)])
def test_mean_matches_torch(dims, keepdim):
    x = torch.randn(2, 3, 5, 7)
    want = torch.mean(x, dim=dims if isinstance(dims, int) else tuple(dims), keepdim=keepdim).shape
    assert infer1("mean", x.shape, dims, keepdim=keepdim) == tuple(want)


def test_mean_errors():
    with pytest.raises(ShapeError, match="out of range"):
        infer1("mean", (2, 3, 4), 3)
    with pytest.raises(CDLTypeError, match="repeat"):
        infer1("mean", (2, 3, 4), [1, -2])
    with pytest.raises(CDLTypeError, match="needs 'dims'"):
        infer1("mean", (2, 3, 4))


@pytest.mark.parametrize("shape,kwargs", [
    ((2, 3, 7, 9), dict(scale=2)),
    ((2, 3, 7, 9), dict(scale=1.5, mode="bilinear")),
    ((2, 3, 7, 9), dict(scale=0.5, mode="bicubic", align_corners=True)),
    ((2, 3, 7, 9), dict(scale=[2, 3])),
    ((2, 3, 7, 9), dict(size=[14, 5], mode="bilinear")),
    ((2, 3, 7, 9), dict(size=4)),
    ((2, 3, 10), dict(scale=2.5, mode="linear")),
    ((1, 2, 3, 4, 5), dict(scale=2, mode="trilinear")),
    ((1, 2, 3, 4, 5), dict(scale=1.7, mode="nearest")),
    ((2, 3, 7, 9), dict(scale=1.1)),
])
def test_upsample_matches_torch(shape, kwargs):
    tk = {"mode": kwargs.get("mode", "nearest")}
    if "scale" in kwargs:
        s = kwargs["scale"]
        tk["scale_factor"] = tuple(float(v) for v in s) if isinstance(s, list) else float(s)
    if "size" in kwargs:
        s = kwargs["size"]
        tk["size"] = tuple(s) if isinstance(s, list) else s
    if kwargs.get("align_corners"):
        tk["align_corners"] = True
    want = F.interpolate(torch.randn(shape), **tk).shape
    assert infer1("upsample", shape, **kwargs) == tuple(want)


def test_upsample_symbolic_and_errors():
    assert infer1("upsample", ("N", 3, "H", 8), 2) == ("N", 3, "2*H", 16)
    with pytest.raises(ShapeError, match="fractional scale"):
        infer1("upsample", ("N", 3, "H", 8), 1.5)
    with pytest.raises(CDLTypeError, match="exactly one"):
        infer1("upsample", (1, 3, 8, 8))
    with pytest.raises(CDLTypeError, match="exactly one"):
        infer1("upsample", (1, 3, 8, 8), 2, size=[4, 4])
    with pytest.raises(ShapeError, match="rank-4"):
        infer1("upsample", (1, 3, 8), 2, mode="bilinear")
    with pytest.raises(CDLTypeError, match="align_corners"):
        infer1("upsample", (1, 3, 8, 8), 2, align_corners=True)
    with pytest.raises(CDLTypeError, match="bad value"):
        infer1("upsample", (1, 3, 8, 8), 2, mode="bilinearr")
    with pytest.raises(ShapeError, match="rank 3, 4 or 5"):
        infer1("upsample", (8, 8), 2)
