"""Each op elaborated from a one-op CDL program, built into an nn.Module by the
torch backend, and compared with the direct PyTorch call on the same weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convdsl.lang.elaborate import elaborate
from opcheck import Quoted, one_op_program

build_module = pytest.importorskip("convdsl.backends.torch").build_module


def _run(op, shapes, args=(), kwargs=None, run_shapes=None):
    """Elaborate, randomize the float parameters, build, and run on random inputs."""
    g = elaborate(one_op_program(op, shapes, *args, **(kwargs or {})))
    rng = np.random.default_rng(0)
    for name, arr in list(g.params.items()):
        if arr.dtype.kind == "f":
            g.params[name] = rng.standard_normal(arr.shape).astype(arr.dtype) + (2.0 if "var" in name else 0.0)
            if "var" in name:
                g.params[name] = np.abs(g.params[name])
    model = build_module(g)
    torch.manual_seed(0)
    xs = [torch.randn(s) for s in (run_shapes or shapes)]
    with torch.no_grad():
        out = model(*xs)
    params = {name.split(".")[-1]: torch.from_numpy(np.asarray(arr)) for name, arr in g.params.items()}
    return g, model, xs, params, out


def _check(out, want, g=None):
    outs = out if isinstance(out, tuple) else (out,)
    wants = want if isinstance(want, (tuple, list)) else (want,)
    assert len(outs) == len(wants)
    for o, w in zip(outs, wants):
        torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-5)
    if g is not None:  # the shape rule agrees with what the module produced
        for o, t in zip(outs, g.output_types()):
            assert tuple(o.shape) == tuple(d for d in t.shape), (o.shape, t)


S4 = [(2, 6, 9, 11)]
CASES = [
    # pooling
    ("maxpool1d", [(2, 3, 10)], (3,), dict(stride=2, pad=1, ceil_mode=True),
     lambda x, p: F.max_pool1d(x, 3, 2, 1, ceil_mode=True)),
    ("maxpool2d", S4, (3,), dict(stride=2, pad=1, ceil_mode=True),
     lambda x, p: F.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    ("maxpool2d", S4, ([3, 2],), dict(stride=[1, 2], dilation=[2, 1]),
     lambda x, p: F.max_pool2d(x, (3, 2), (1, 2), dilation=(2, 1))),
    ("maxpool2d", S4, (2,), {}, lambda x, p: F.max_pool2d(x, 2)),
    ("maxpool3d", [(1, 2, 5, 6, 7)], (2,), dict(ceil_mode=True), lambda x, p: F.max_pool3d(x, 2, ceil_mode=True)),
    ("avgpool1d", [(2, 3, 10)], (3,), dict(stride=2, pad=1, count_include_pad=False),
     lambda x, p: F.avg_pool1d(x, 3, 2, 1, count_include_pad=False)),
    ("avgpool2d", S4, (3,), dict(stride=2, pad=1, ceil_mode=True),
     lambda x, p: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)),
    ("avgpool2d", S4, (2,), {}, lambda x, p: F.avg_pool2d(x, 2)),
    ("avgpool3d", [(1, 2, 5, 6, 7)], (3,), dict(stride=2, pad=1, count_include_pad=False, ceil_mode=True),
     lambda x, p: F.avg_pool3d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    ("global_avgpool", S4, (), {}, lambda x, p: F.adaptive_avg_pool2d(x, 1)),
    ("global_avgpool", S4, (), dict(keepdim=False), lambda x, p: x.mean((2, 3))),
    ("global_maxpool", S4, (), {}, lambda x, p: F.adaptive_max_pool2d(x, 1)),
    ("global_maxpool", [(2, 3, 10)], (), dict(keepdim=False), lambda x, p: x.amax(2)),
    ("adaptive_avgpool2d", S4, (), {}, lambda x, p: F.adaptive_avg_pool2d(x, 1)),
    ("adaptive_avgpool2d", S4, ([4, 5],), {}, lambda x, p: F.adaptive_avg_pool2d(x, (4, 5))),
    ("adaptive_avgpool1d", [(2, 3, 10)], (4,), {}, lambda x, p: F.adaptive_avg_pool1d(x, 4)),
    ("adaptive_avgpool3d", [(1, 2, 5, 6, 7)], (2,), {}, lambda x, p: F.adaptive_avg_pool3d(x, 2)),
    ("adaptive_maxpool2d", S4, (3,), {}, lambda x, p: F.adaptive_max_pool2d(x, 3)),
    ("mean", S4, ([2, 3],), dict(keepdim=True), lambda x, p: x.mean((2, 3), keepdim=True)),
    ("mean", S4, (-1,), {}, lambda x, p: x.mean(-1)),
    ("upsample", S4, (2,), {}, lambda x, p: F.interpolate(x, scale_factor=2.0)),
    ("upsample", S4, (1.5, "bilinear"), {}, lambda x, p: F.interpolate(x, scale_factor=1.5, mode="bilinear")),
    ("upsample", S4, (2, "bicubic"), dict(align_corners=True),
     lambda x, p: F.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=True)),
    ("upsample", S4, (), dict(size=[5, 20], mode="bilinear"),
     lambda x, p: F.interpolate(x, size=(5, 20), mode="bilinear")),
    # a bare `linear` names the linear op, so this mode is written as a string
    ("upsample", [(2, 3, 10)], (3, Quoted("linear")), {}, lambda x, p: F.interpolate(x, scale_factor=3.0, mode="linear")),
    # activations, regularization
    ("softmax", S4, (), {}, lambda x, p: torch.softmax(x, -1)),
    ("softmax", S4, (1,), {}, lambda x, p: torch.softmax(x, 1)),
    ("dropout", S4, (0.3,), {}, lambda x, p: x),
    # shape
    ("flatten", S4, (), {}, lambda x, p: torch.flatten(x, 1)),
    ("flatten", S4, (2,), {}, lambda x, p: torch.flatten(x, 2)),
    ("flatten", S4, (0, 2), {}, lambda x, p: torch.flatten(x, 0, 2)),
    ("reshape", S4, ([0, 3, -1],), {}, lambda x, p: x.reshape(2, 3, -1)),
    ("reshape", S4, ([0, 0, 99],), {}, lambda x, p: x.reshape(2, 6, 99)),
    ("permute", S4, ([0, 2, 3, 1],), {}, lambda x, p: x.permute(0, 2, 3, 1)),
    ("transpose", S4, (1, -1), {}, lambda x, p: x.transpose(1, -1)),
    ("squeeze", [(2, 3, 1, 1)], (), {}, lambda x, p: x.squeeze()),
    ("squeeze", [(2, 1, 4, 1)], (-1,), {}, lambda x, p: x.squeeze(-1)),
    ("unsqueeze", S4, (2,), {}, lambda x, p: x.unsqueeze(2)),
    ("pad", S4, (1,), {}, lambda x, p: F.pad(x, (1, 1, 1, 1))),
    ("pad", S4, ([0, 1, 2, 3],), dict(mode="reflect"), lambda x, p: F.pad(x, (2, 3, 0, 1), mode="reflect")),
    ("pad", S4, ([1, 2],), dict(mode="replicate"), lambda x, p: F.pad(x, (2, 2, 1, 1), mode="replicate")),
    ("pad", S4, (2,), dict(mode="circular"), lambda x, p: F.pad(x, (2, 2, 2, 2), mode="circular")),
    ("pad", S4, (1,), dict(value=-1.5), lambda x, p: F.pad(x, (1, 1, 1, 1), value=-1.5)),
    ("pixel_shuffle", [(2, 12, 5, 7)], (2,), {}, lambda x, p: F.pixel_shuffle(x, 2)),
    ("pixel_unshuffle", [(2, 3, 10, 6)], (2,), {}, lambda x, p: F.pixel_unshuffle(x, 2)),
    # normalization (random weights, so the wiring is checked)
    ("layernorm", [(2, 7, 16)], (), {}, lambda x, p: F.layer_norm(x, (16,), p["weight"], p["bias"])),
    ("layernorm", [(2, 5, 6, 16)], (2,), dict(eps=1e-6),
     lambda x, p: F.layer_norm(x, (6, 16), p["weight"], p["bias"], 1e-6)),
    ("layernorm", [(2, 7, 16)], (), dict(bias=False), lambda x, p: F.layer_norm(x, (16,), p["weight"])),
    ("layernorm", [(2, 7, 16)], (), dict(affine=False), lambda x, p: F.layer_norm(x, (16,))),
    ("layernorm2d", S4, (), dict(eps=1e-6),
     lambda x, p: F.layer_norm(x.permute(0, 2, 3, 1), (6,), p["weight"], p["bias"], 1e-6).permute(0, 3, 1, 2)),
    ("groupnorm", S4, (3,), {}, lambda x, p: F.group_norm(x, 3, p["weight"], p["bias"])),
    ("groupnorm", S4, (2,), dict(affine=False, eps=1e-3), lambda x, p: F.group_norm(x, 2, eps=1e-3)),
    ("instancenorm2d", S4, (), {}, lambda x, p: F.instance_norm(x)),
    ("instancenorm2d", S4, (), dict(affine=True),
     lambda x, p: F.instance_norm(x, weight=p["weight"], bias=p["bias"])),
    ("instancenorm2d", S4, (), dict(affine=True, track_running_stats=True),
     lambda x, p: F.instance_norm(x, p["running_mean"], p["running_var"], p["weight"], p["bias"],
                                  use_input_stats=False)),
    ("instancenorm1d", [(2, 3, 10)], (), {}, lambda x, p: F.instance_norm(x)),
]


@pytest.mark.parametrize("op,shapes,args,kwargs,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_single_input_op_matches_torch(op, shapes, args, kwargs, ref):
    g, _, xs, params, out = _run(op, shapes, args, kwargs)
    _check(out, ref(xs[0], params), g)


def test_concat_matches_torch():
    shapes = [(2, 3, 5, 5), (2, 4, 5, 5), (2, 1, 5, 5)]
    g, _, xs, _, out = _run("concat", shapes)
    _check(out, torch.cat(xs, 1), g)
    g, _, xs, _, out = _run("concat", [(2, 3, 5), (2, 3, 7)], kwargs=dict(dim=-1))
    _check(out, torch.cat(xs, -1), g)


@pytest.mark.parametrize("kwargs,ref", [
    (dict(sizes=[2, 4]), lambda x: torch.split(x, [2, 4], 1)),
    (dict(sizes=4), lambda x: torch.split(x, 4, 1)),
    (dict(chunks=3), lambda x: torch.chunk(x, 3, 1)),
    (dict(chunks=3, dim=-1), lambda x: torch.chunk(x, 3, -1)),
    (dict(chunks=1), lambda x: x),
])
def test_split_matches_torch(kwargs, ref):
    shapes = [(2, 6, 5, 9)]
    g, _, xs, _, out = _run("split", shapes, kwargs=kwargs)
    _check(out, ref(xs[0]), g)


def test_symbolic_batch_runs_with_any_batch():
    # reshape keeps N with 0, so the generated code must read it at run time
    for op, args, ref in [("reshape", ([0, -1],), lambda x: x.reshape(x.shape[0], -1)),
                          ("flatten", (), lambda x: torch.flatten(x, 1)),
                          ("global_avgpool", (), lambda x: x.mean((2, 3), keepdim=True)),
                          ("squeeze", (), lambda x: x)]:
        for n in (1, 3):
            _, _, xs, _, out = _run(op, [("N", 4, 3, 5)], args, run_shapes=[(n, 4, 3, 5)])
            _check(out, ref(xs[0]))


def test_dropout_is_a_module_and_trains():
    g, model, xs, _, out = _run("dropout", S4, (0.5,))
    assert isinstance(model.dropout, torch.nn.Dropout) and not list(model.parameters())
    model.train()
    torch.manual_seed(1)
    y = model(xs[0])
    assert (y == 0).any() and not torch.equal(y, xs[0])


def test_layernorm2d_source_is_standalone():
    g, model, *_ = _run("layernorm2d", S4)
    assert "class LayerNorm2d(nn.LayerNorm)" in model.source
    assert sorted(model.state_dict()) == ["layernorm2d.bias", "layernorm2d.weight"]
