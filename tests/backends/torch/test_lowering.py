"""Special cases of the torch lowering table (backends/torch/lowering.py), checked against
PyTorch's own modules and a float64 reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convdsl.backends.torch import build_module, generate

from ...helpers import WINDOW_ATTENTION, graph_of


def _groupnorm(shape: str, groups: int, affine: bool = True):
    g = graph_of(f"network n(x: f32[{shape}]) {{\n    return x | groupnorm({groups}, affine={str(affine).lower()})\n}}")
    if affine:
        rng = np.random.default_rng(0)
        for name in ("groupnorm.weight", "groupnorm.bias"):
            g.params[name] = rng.standard_normal(g.params[name].shape).astype(np.float32)
    return g


@pytest.mark.parametrize("shape,groups", [("N, 8, 1, 1", 8), ("N, 6", 6), ("N, 4, 1", 4), ("N, 3, 1, 1, 1", 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm_with_one_value_per_group_gives_the_bias_at_every_batch(shape, groups, affine):
    """C/groups x spatial = 1: x - mean = 0, so the output is the bias exactly (0 without affine);
    F.group_norm refuses batch 1 (tests/regressions/groupnorm_one_value_per_group.cdl)."""
    g = _groupnorm(shape, groups, affine)
    model = build_module(g)
    assert "GroupNormOneValue" in model.source
    bias = torch.from_numpy(g.params["groupnorm.bias"]) if affine else torch.zeros(groups)
    dims = [int(d) for d in shape.split(", ")[1:]]
    for batch in (1, 2, 3):
        x = torch.randn(batch, *dims, dtype=torch.float64).float() * 100 + 300
        with torch.no_grad():
            y = model(x)
        want = bias.view((1, -1) + (1,) * (len(dims) - 1)).expand_as(x)
        torch.testing.assert_close(y, want, rtol=0, atol=0)
        if batch > 1:  # torch's own kernel agrees, up to its rounding of x * rstd - mean * rstd
            w = torch.from_numpy(g.params["groupnorm.weight"]) if affine else None
            ref = F.group_norm(x.double(), groups, None if w is None else w.double(), bias.double() if affine else None)
            torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-9)
    x = torch.tensor([float("inf"), float("nan")] + [1.0] * (groups - 2)).view(1, groups, *dims[1:])
    with torch.no_grad():
        y = model(x)
    assert torch.isnan(y[0, :2]).all() and torch.isfinite(y[0, 2:]).all()  # as F.group_norm: not finite in, NaN out


def test_groupnorm_keeps_nn_groupnorm_otherwise():
    for shape, groups in (("N, 8, 2, 1", 8), ("N, 8, 1, 1", 4), ("N, 8, L", 8)):
        src = generate(_groupnorm(shape, groups)).source
        assert "nn.GroupNorm(" in src and "GroupNormOneValue" not in src, shape


@pytest.mark.slow
def test_one_value_per_group_module_keeps_the_state_dict_and_exports(tmp_path):
    g = _groupnorm("N, 8, 1, 1", 8)
    model = build_module(g)
    assert sorted(model.state_dict()) == ["groupnorm.bias", "groupnorm.weight"]
    x = torch.randn(1, 8, 1, 1)
    ep = torch.export.export(model, (x,))
    torch.testing.assert_close(ep.module()(x), model(x))


# ---- reshape with symbolic sizes (issue 14 item 2) ---------------------------------------------
def _windows_reference(model, x: torch.Tensor) -> torch.Tensor:
    """The window attention of tests/helpers.py WINDOW_ATTENTION done by torch: its own reshapes
    and nn.MultiheadAttention with the generated module's weights."""
    n, c, h, w = x.shape
    p = 4
    attn = torch.nn.MultiheadAttention(c, 4, batch_first=True)
    attn.load_state_dict(model.win.attn.state_dict())
    y = model.stem(x)
    t = y.view(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(-1, p * p, c)
    t = attn(t, t, t, need_weights=False)[0]
    return t.view(n, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)


def test_windows_folded_into_the_batch_and_back_match_torch_at_every_batch():
    """The user's program: sizes from dim(x, i) fold the windows into a batch of 4*N and give
    N back; one generated module runs any batch."""
    g = graph_of(WINDOW_ATTENTION)
    assert [str(t) for t in g.output_types()] == ["f32[N, 16, 8, 8]"]
    assert str(g.node("win.attn").type) == "f32[4*N, 16, 16]"
    model = build_module(g).eval()
    for batch in (1, 3):
        x = torch.randn(batch, 16, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(model(x), _windows_reference(model, x), rtol=1e-5, atol=1e-5)


def test_symbolic_sizes_in_a_reshape_are_read_from_the_input_at_run_time():
    """Two symbols, three symbolic sizes: one is -1, the others are computed from the input's
    shape; no symbol's name reaches the code."""
    g = graph_of("network n(x: f32[N, L, 64]) {\n"
                 "    y = x | reshape([2 * N, 4 * L, 8]) | reshape([N, 8 * L, -1])\n"
                 "    return y | reshape([dim(y, 0) * 2, dim(y, 1) / 2, 8]) | reshape([N, L, 64])\n}")
    model = build_module(g)
    body = model.source[model.source.index("def forward"):]
    body = body[:body.index("\n\n")]
    assert ".reshape(2 * x.shape[0], 4 * x.shape[1], 8)" in body
    assert ".reshape(x_1.shape[0] // 2, 8 * (x_1.shape[1] // 4), -1)" in body
    assert "N" not in body and "L" not in body
    for n, L in ((1, 1), (3, 5)):
        x = torch.randn(n, L, 64)
        assert model(x).shape == x.shape
        torch.testing.assert_close(model(x), x, rtol=0, atol=0)  # views: the same elements in order
    y = build_module(graph_of("network n(x: f32[N, L, 64]) {\n    return x | reshape([2 * N, 4 * L, 8])\n}"))
    x = torch.randn(3, 5, 64)
    assert y(x).shape == (6, 20, 8)


def test_sizes_the_reshape_input_lacks_are_read_from_the_network_inputs():
    """Tokens folded into the batch ([L*N, 64]) and unfolded by name ([N, L, 32]): neither N nor
    L is a dim of the reshape's input, so the code reads them from the network's input x."""
    g = graph_of("network n(x: f32[N, L, 64]) {\n"
                 "    t = x | reshape([-1, 64]) | linear(32) as fc\n"
                 "    return t | reshape([N, L, 32])\n}")
    model = build_module(g)
    assert ".reshape(x.shape[0], x.shape[1], 32)" in model.source
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        want = torch.nn.functional.linear(x.reshape(15, 64), model.fc.weight, model.fc.bias).reshape(3, 5, 32)
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)
