"""Pruning criteria: each ranks a deliberately dead channel last; data criteria see every producer."""
from __future__ import annotations

import numpy as np
import pytest

from convdsl.errors import UsageError
from convdsl.backends.torch import build_module
from convdsl.passes.prune import CRITERIA, analyze, compute_masks, importance
from tests.passes.test_prune import prog

CHAIN = """
network n(x: f32[N, 3, 8, 8]) {
    return x | conv2d(8, 3, pad=1, bias=false) as c1 | batchnorm as bn1 | relu
             | conv2d(8, 3, pad=1, bias=false) as c2 | batchnorm as bn2 | relu
             | global_avgpool(keepdim=false) | linear(10) as fc
}"""

MIXED = """
network n(x: f32[N, 3, 16, 16]) {
    y = x | conv2d(16, 3, stride=2, pad=1) as c1 | relu | conv2d(32, 3, pad=2, dilation=2, groups=16) as dw | relu
          | conv_transpose2d(8, 2, stride=2) as up | relu
    t = y | patch_embed(24, 4) as pe | linear(48) as fc1 | gelu | linear(24) as fc2
    return t | mean(1) | linear(10) as head
}"""

DEAD = 5


def data(n: int = 48, shape=(3, 8, 8), seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 10, n)


def with_dead_channel():
    """CHAIN with filter DEAD of c1 zeroed (weights and its batchnorm scale)."""
    g = prog(CHAIN)
    w = g.params["c1.weight"].copy()
    w[DEAD] = 0
    g.params["c1.weight"] = w
    gamma = g.params["bn1.weight"].copy()
    gamma[DEAD] = 0
    g.params["bn1.weight"] = gamma
    return g


@pytest.mark.slow
@pytest.mark.parametrize("criterion", CRITERIA)
def test_each_criterion_ranks_a_zeroed_channel_last(criterion):
    g = with_dead_channel()
    deps = analyze(g)
    scores = importance(g, deps, criterion, data(), samples=48, batch_size=16, build=build_module)
    s = scores.by_group["c1"]
    assert s.shape == (8,) and np.isfinite(s).all()
    assert int(np.argmin(s)) == DEAD and s[DEAD] < np.delete(s, DEAD).min()
    masks = compute_masks(g, 1 / 8, criterion, target="channels", scope="layer", protect=(), data=data(),
                          deps=deps, scores=scores, build=build_module)
    assert DEAD not in masks["c1"] and len(masks["c1"]) == 7


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["taylor", "activation"])
def test_data_criteria_score_every_kind_of_producer(criterion):
    g = prog(MIXED)
    deps = analyze(g)
    scores = importance(g, deps, criterion, data(16, (3, 16, 16)), samples=16, batch_size=8, build=build_module)
    assert not scores.notes
    for name in ("c1", "up", "pe", "fc1"):
        s = scores.by_group[name]
        assert np.isfinite(s).all() and (s >= 0).all() and s.max() > 0


@pytest.mark.slow
def test_data_criteria_accept_a_dataset_and_need_data():
    from convdsl.api import load_graph
    from convdsl.train import load_dataset
    from tests.passes.zoo import EXAMPLES_DIR

    g = load_graph(EXAMPLES_DIR / "digits_cnn.cdl")
    scores = importance(g, analyze(g), "taylor", load_dataset("digits"), samples=64, build=build_module)
    assert scores.by_group and all(np.isfinite(s).all() for s in scores.by_group.values())
    with pytest.raises(UsageError, match="needs calibration data"):
        importance(g, analyze(g), "activation", build=build_module)
    with pytest.raises(UsageError, match="runs the network"):  # a data criterion needs the module builder too
        importance(g, analyze(g), "taylor", load_dataset("digits"))
    with pytest.raises(UsageError, match="unknown pruning criterion"):
        importance(g, analyze(g), "l3", build=build_module)
    with pytest.raises(UsageError, match="does not fit"):
        importance(g, analyze(g), "taylor", np.zeros((4, 3, 8, 8), np.float32), build=build_module)


def test_bn_scale_falls_back_to_l1_without_batchnorm():
    g = prog(MIXED)
    scores = importance(g, analyze(g), "bn_scale", build=build_module)
    assert any("ranked by l1" in n for n in scores.notes)


def test_attention_heads_are_scored():
    g = prog("network n(x: f32[N, 6, 32]) { return x | linear(32) as inp | mhsa(heads=4) as attn | mean(1) }")
    w = g.params["attn.in_proj_weight"].copy()
    w[:, :] *= 3.0
    w[8:16] = w[40:48] = w[72:80] = 0  # head 1: no q, k, v
    g.params["attn.in_proj_weight"] = w
    o = g.params["attn.out_proj.weight"].copy()
    o[:, 8:16] = 0
    g.params["attn.out_proj.weight"] = o
    s = importance(g, analyze(g), "l2", build=build_module).by_group["attn.heads"]
    assert int(np.argmin(s)) == 1
