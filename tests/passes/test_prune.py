"""Structured pruning: dependency groups, masks and physical removal.

The main numerical check: removing channels equals *zeroing* them in the original.  ``zeroed``
sets the rows of every producer of a removed channel (and its batchnorm's scale and shift, an
attention head's value rows) to zero, so the channel is exactly 0 wherever it flows; the pruned
graph must then compute the same outputs as the zeroed original.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from convdsl.errors import ConvDSLError
from convdsl.ir.graph import Graph, Value
from convdsl.ir.stats import summary
from convdsl.ir.verify import verify
from convdsl.passes.prune import (Dependencies, PruneError, analyze, apply_masks, compute_masks, importance, prune)
from convdsl.passes.prune.apply import Ctx, kept_units
from convdsl.passes.prune.masks import select
from tests.helpers import RESNETISH
from tests.passes.zoo import assert_same_function, example, inputs_for, outputs, param_fingerprint, with_bn_stats

CONCAT = """
network n(x: f32[N, 3, 8, 8]) {
    a = x | conv2d(8, 3, pad=1) as a | relu
    b = x | conv2d(16, 1) as b | relu
    return concat(a, b) | conv2d(12, 3, pad=1) as c
}"""

SPLIT = """
network n(x: f32[N, 3, 8, 8]) {
    y = x | conv2d(16, 3, pad=1) as a
    p, q = y | split(chunks=2)
    return concat(p | relu, q | tanh) | conv2d(6, 1) as c
}"""

MOBILE = """
import "blocks/mobilenet.cdl"
network n(x: f32[N, 3, 16, 16]) {
    y = x | conv_bn_act(16) as stem | inverted_residual(16, expand=4) as b1 | inverted_residual(24, 2, expand=4) as b2
    return y | global_avgpool(keepdim=false) | linear(10) as fc
}"""

ATTN = """
network n(x: f32[N, 10, 16]) {
    t = x | linear(32) as inp
    a = t | mhsa(heads=4) as attn
    t = t + a
    return t | mean(1) | linear(5) as head
}"""

ATTN_LN = ATTN.replace("t | mhsa", "t | layernorm as ln | mhsa")

SEQ = """
network n(x: f32[N, 4, 32]) {
    return x | conv1d(16, 3, pad=1) as c1 | s4d(state=8) as ssm | fft_conv as fc | sgconv(kernel_dim=8) as sg
             | selective_scan(state=4, d_conv=3) as sel | conv1d(8, 1) as c2
}"""

GROUPED = """
network n(x: f32[N, 3, 8, 8]) {
    return x | conv2d(16, 3, pad=1) as c1 | global_filter as gf | groupnorm(4) as gn
             | conv2d(16, 3, pad=1, groups=4) as gc | relu | conv2d(8, 1) as c2
}"""

FLAT = """
network n(x: f32[N, 3, 8, 8]) {
    return x | conv2d(8, 3, stride=2, pad=1) as c1 | batchnorm as bn | relu | flatten | linear(10) as fc
}"""


def mhsa_net(rel_pos: bool) -> str:
    return f"network n(x: f32[N, 10, 32]) {{ return x | mhsa(heads=4, rel_pos={str(rel_pos).lower()}) as attn }}"


def prog(text: str) -> Graph:
    """A seeded, BN-stat-carrying graph of CDL text (imports resolve against examples/)."""
    from convdsl.lang.elaborate import Options, elaborate
    from tests.passes.zoo import EXAMPLES_DIR

    return with_bn_stats(verify(elaborate(text, str(EXAMPLES_DIR / "test.cdl"), options=Options(bind={"N": 2}))))


# ---- helpers ------------------------------------------------------------------------------------
def removed_positions(deps: Dependencies, masks, key) -> np.ndarray:
    kept = kept_units(deps, masks)
    s = deps.spaces[key]
    return np.flatnonzero(~kept[deps.labels[s.ids]])


def zeroed(graph: Graph, masks, deps: Dependencies | None = None) -> Graph:
    """A copy in which every channel ``masks`` removes is exactly zero wherever it flows."""
    deps = deps or analyze(graph)
    g = graph.copy()
    p = g.params
    for grp in deps.groups:
        for m in grp.members:
            pos = removed_positions(deps, masks, m.key)
            if not len(pos):
                continue
            node = g.node(m.node)

            def zero(local: str, idx: np.ndarray, axis: int = 0) -> None:
                if local in node.params:
                    arr = p[node.params[local]].copy()
                    np.moveaxis(arr, axis, 0)[idx] = 0
                    p[node.params[local]] = arr

            if m.role == "norm":
                zero("weight", pos)
                zero("bias", pos)
            elif m.role == "heads":  # a head's output is softmax(qk) @ v: zero v
                dim, qkv = node.attrs["dim"], node.attrs["qkv"]  # qkv=: a fused Linear of that name
                zero("in_proj_weight" if qkv is None else f"{qkv}.weight", 2 * dim + pos)
                zero("in_proj_bias" if qkv is None else f"{qkv}.bias", 2 * dim + pos)
            elif node.op == "mhsa":
                zero(f"{node.attrs['proj']}.weight", pos)
                zero(f"{node.attrs['proj']}.bias", pos)
            else:
                zero("weight", pos)
                zero("bias", pos)
    return g


def assert_prunes_like_zeroing(graph: Graph, masks, tol: float = 1e-5) -> Graph:
    deps = analyze(graph)
    small = apply_masks(graph, masks, deps)
    assert small.input_types() == graph.input_types()
    assert small.output_types() == graph.output_types()
    assert_same_function(small, zeroed(graph, masks, deps), tol=tol)
    return small


def half_masks(graph: Graph, scope: str = "layer", ratio: float = 0.5, **kw):
    return compute_masks(graph, ratio, "l1", target="channels", scope=scope, protect=(), **kw)


# ---- identity ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "digits_mobilenet", "espcn"])
def test_all_keep_masks_are_the_identity(name):
    g = example(name)
    masks = compute_masks(g, 0.0, "l1", target="channels")
    assert all(np.array_equal(k, np.arange(grp.size)) for k, grp in zip(masks.values(), analyze(g).groups))
    same = apply_masks(g, masks)
    xs = inputs_for(g)
    for a, b in zip(outputs(same, xs), outputs(g, xs)):
        assert np.array_equal(a, b)  # bit for bit
    assert [(n.id, n.attrs, n.types) for n in same.nodes()] == [(n.id, n.attrs, n.types) for n in g.nodes()]


@pytest.mark.slow
@pytest.mark.parametrize("text", [ATTN, SEQ, GROUPED, CONCAT], ids=["attn", "seq", "grouped", "concat"])
def test_all_keep_identity_on_every_op_family(text):
    g = prog(text)
    deps = analyze(g)
    same = apply_masks(g, {grp.name: np.arange(grp.size) for grp in deps.groups}, deps)
    xs = inputs_for(g)
    for a, b in zip(outputs(same, xs), outputs(g, xs)):
        assert np.array_equal(a, b)


def test_prune_is_a_pass_for_the_pipeline_runner():
    from functools import partial

    from convdsl.passes import run_passes

    g = prog(MOBILE)
    log: list = []
    small = run_passes(g, [partial(prune, ratio=0.4, round_to=8)], verify_each=True, log=log)
    assert log[-1].name == "prune"
    assert abs(1 - summary(small)["macs"] / summary(g)["macs"] - 0.4) < 0.05


def test_prune_leaves_its_input_alone():
    g = prog(RESNETISH)
    before = param_fingerprint(g), [(n.id, dict(n.attrs), list(n.types)) for n in g.nodes()]
    prune(g, 0.5, "l1", protect=())
    assert (param_fingerprint(g), [(n.id, n.attrs, n.types) for n in g.nodes()]) == before


# ---- couplings -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_residual_adds_lose_the_same_channels():
    g = prog(RESNETISH)
    deps = analyze(g)
    masks = half_masks(g)
    ctx = Ctx(deps, kept_units(deps, masks), g)
    keeps = [[ctx.keep(v) for v in g.inputs_of(n.id)] for n in g.nodes() if n.op == "add"]
    assert any(a is not None for a, _ in keeps)  # layer2's stream is the output: it stays
    for a, b in keeps:
        assert (a is None and b is None) or np.array_equal(a, b)
    assert_prunes_like_zeroing(g, masks)


def test_concat_offsets_select_the_consumer_columns():
    g = prog(CONCAT)
    deps = analyze(g)
    assert [grp.name for grp in deps.groups if grp.prunable] == ["a", "b"]
    masks = {"a": [0, 1, 3, 4, 5, 6, 7], "b": [i for i in range(16) if i not in (5, 9)]}
    small = assert_prunes_like_zeroing(g, masks)
    cols = [0, 1, 3, 4, 5, 6, 7] + [8 + i for i in range(16) if i not in (5, 9)]
    w, w0 = small.params["c.weight"], g.params["c.weight"]
    assert np.array_equal(w, w0[:, cols])


def test_split_pieces_are_separate_groups_and_sizes_follow():
    g = prog(SPLIT)
    deps = analyze(g)
    assert [grp.name for grp in deps.groups if grp.prunable] == ["a", "a#2"]
    small = assert_prunes_like_zeroing(g, {"a": [0, 2, 4], "a#2": [1, 2, 3, 5, 7]})
    (split,) = [n for n in small.nodes() if n.op == "split"]
    assert split.attrs["sizes"] == (3, 5) and split.attrs["chunks"] is None


def test_depthwise_conv_couples_its_input_and_output():
    g = prog(MOBILE)
    deps = analyze(g)
    dw = g.node("b1.conv.1.0")
    grp = next(x for x in deps.groups if "b1.conv.1.0" in x.producers)
    assert "b1.conv.0.0" in grp.producers  # the expansion conv feeding it
    small = assert_prunes_like_zeroing(g, half_masks(g))
    dw2 = small.node("b1.conv.1.0")
    assert dw2.attrs["groups"] == dw2.attrs["out"] == small.in_types(dw2.id)[0].shape[1] < dw.attrs["out"]


def test_flattened_channels_take_their_block_of_features():
    g = prog(FLAT)
    small = assert_prunes_like_zeroing(g, {"c1": [1, 2, 5, 6]})
    per = 4 * 4  # spatial positions per channel
    cols = np.concatenate([np.arange(c * per, (c + 1) * per) for c in (1, 2, 5, 6)])
    assert np.array_equal(small.params["fc.weight"], g.params["fc.weight"][:, cols])


@pytest.mark.parametrize("rel_pos", [False, True])
def test_mhsa_head_pruning_equals_masking_those_heads(rel_pos):
    g = prog(mhsa_net(rel_pos))
    deps = analyze(g)
    assert deps.group("attn.heads").size == 4
    small = assert_prunes_like_zeroing(g, {"attn.heads": [0, 2]})
    attn = small.node("attn")
    assert attn.attrs["heads"] == 2 and attn.attrs["dim"] == 16
    if rel_pos:
        assert small.params["attn.relative_position_bias_table"].shape[1] == 2


def test_mhsa_in_a_residual_stream_prunes_columns_heads_and_outputs():
    g = prog(ATTN)
    masks = {"inp": [i for i in range(32) if i % 3], "attn.heads": [1, 3]}
    small = assert_prunes_like_zeroing(g, masks)
    assert small.node("attn").attrs["heads"] == 2
    assert small.node("attn_proj").attrs["out"] == small.node("inp").attrs["out"] == 21


def test_mhsa_with_projection_names_prunes_like_masking():
    """Issue 14 item 3: timm's names (qkv=, proj=) take part in pruning as MultiheadAttention's do."""
    g = prog(ATTN.replace("mhsa(heads=4)", 'mhsa(heads=4, qkv="qkv", proj="proj")'))
    assert {"attn.qkv.weight", "attn.proj.weight"} <= set(g.params.specs)
    masks = {"inp": [i for i in range(32) if i % 3], "attn.heads": [1, 3]}
    small = assert_prunes_like_zeroing(g, masks)
    assert small.node("attn").attrs["heads"] == 2
    assert small.params["attn.qkv.weight"].shape == (48, 21)


def test_layernorm_stream_pruning_runs():
    # not an exact masking: the layernorm's statistics no longer see the removed channels
    g = prog(ATTN_LN)
    small = apply_masks(g, half_masks(g))
    assert small.output_types() == g.output_types()
    outputs(small, inputs_for(small))


def test_sequence_mixers_prune_per_channel():
    g = prog(SEQ)
    small = apply_masks(g, {"c1": np.arange(0, 16, 2)})
    for nid in ("ssm", "fc", "sg", "sel"):
        assert small.node(nid).type.shape[1] == 8
    assert small.params["sel.x_proj.weight"].shape[1] == 8
    outputs(small, inputs_for(small))


def test_grouped_conv_and_groupnorm_keep_counts_balanced():
    g = prog(GROUPED)
    deps = analyze(g)
    assert deps.group("c1").cells is not None and deps.group("gc").cells is not None
    masks = half_masks(g)
    for name in ("c1", "gc"):
        grp, keep = deps.group(name), masks[name]
        counts = np.bincount(grp.cells[keep])
        assert len(set(counts.tolist())) == 1 and len(keep) == 8
    small = apply_masks(g, masks)
    assert small.node("gc").attrs["groups"] == 4 and small.node("gn").attrs["groups"] == 4
    assert small.params["gf.complex_weight"].shape[0] == 8
    outputs(small, inputs_for(small))
    with pytest.raises(PruneError, match="same number"):
        apply_masks(g, {"c1": [0, 1, 2, 3, 4, 5, 6, 8]})  # 4 channels kept in the first block of 4


def test_unknown_ops_pin_their_channels():
    g = prog("""network n(x: f32[N, 3, 8, 8]) {
        y = x | conv2d(8, 3, pad=1) as c1 | flatten(2)
        return matmul(y, y | transpose(1, 2)) }""")
    (grp,) = analyze(g).groups
    assert not grp.prunable and any("matmul" in r for r in grp.reasons)


def test_misc_ops_pass_channels_through_or_pin_them():
    g = prog("""network n(x: f32[N, 3, 8, 8]) {
        y = x | conv2d(16, 3, pad=1) as c1 | prelu as p | flip([2]) | rot90
        return y | conv2d(8, 1) as c2 | vector_norm([2, 3], keepdim=true) }""")
    small = apply_masks(g, half_masks(g))
    assert small.params["p.weight"].shape == (8,)
    outputs(small, inputs_for(small))
    pinned = prog("""network n(x: f32[N, 3, 8, 8]) {
        y = x | conv2d(16, 3, pad=1) as c1
        return y * (y | amax(1, keepdim=true) | sigmoid) | conv2d(8, 1) as c2 }""")
    assert not analyze(pinned).group("c1").prunable  # a max over channels would change


def test_a_failing_coupling_rule_pins_instead_of_crashing(monkeypatch):
    from convdsl.passes.prune import groups

    def broken(b, node):
        raise KeyError("attr renamed")

    real = groups.rule_for
    monkeypatch.setattr(groups, "rule_for", lambda op: broken if op.name == "relu" else real(op))
    deps = analyze(prog(FLAT))
    assert not deps.group("c1").prunable and "coupling rule failed" in deps.group("c1").reasons[0]


def test_network_inputs_and_outputs_keep_their_shapes():
    g = prog(RESNETISH)
    small = prune(g, 0.6, "l2", target="channels", protect=(), scope="layer")
    assert small.input_types() == g.input_types() and small.output_types() == g.output_types()
    assert small.params.count() < g.params.count()
    outputs(small, inputs_for(small))


# ---- masks -------------------------------------------------------------------------------------------
def test_round_to_keeps_multiples_of_eight():
    g = example("mobilenet_v2")
    deps = analyze(g)
    masks = compute_masks(g, 0.4, "l1", target="channels", round_to=8, deps=deps)
    changed = [(grp, masks[grp.name]) for grp in deps.groups if len(masks[grp.name]) < grp.size]
    assert changed
    assert all(len(k) % 8 == 0 for _, k in changed)


def test_protected_layers_keep_their_channels():
    g = prog(RESNETISH)
    deps = analyze(g)
    masks = compute_masks(g, 0.5, "l1", target="channels", scope="layer", deps=deps,
                          protect=("first", "layer2.0.b.conv"))
    assert len(masks["stem.conv"]) == deps.group("stem.conv").size  # first layer
    stream2 = next(grp for grp in deps.groups if "layer2.0.b.conv" in grp.producers)
    assert len(masks[stream2.name]) == stream2.size
    assert any(len(masks[grp.name]) < grp.size for grp in deps.groups)
    with pytest.raises(ConvDSLError, match="names no node"):
        compute_masks(g, 0.5, "l1", protect=("nope",), deps=deps)


def test_a_free_parameter_is_no_path_from_the_input():
    """A `parameter` node reads nothing from its input (importers hang free parameters off the network
    input, as in timm's GlobalResponseNorm): the layers after it are not "first" layers."""
    from convdsl.passes.prune.masks import protected_groups

    g = prog("""
network n(x: f32[N, 3, 8, 8]) {
    s = x | parameter([1, 8, 1, 1]) as gamma
    y = x | conv2d(8, 3) as stem | relu
    y = y * s | conv2d(16, 1) as fc2 | relu | conv2d(8, 3) as last
    return y
}
""")
    deps = analyze(g)
    protected = protected_groups(g, deps, ("first",))
    assert [why for why in protected.values()] == ["first layer: stem"]
    stream = next(grp for grp in deps.groups if "fc2" in grp.producers)
    assert stream.name not in protected


def test_global_scope_caps_each_group():
    g = prog(RESNETISH)
    deps = analyze(g)
    scores = importance(g, deps, "l1")
    masks = select(deps, scores.by_group, 0.8, scope="global", max_group_ratio=0.5)
    for grp in deps.groups:
        assert len(masks[grp.name]) >= grp.size // 2


def test_bad_masks_are_named_errors():
    g = prog(CONCAT)
    with pytest.raises(PruneError, match="unknown group"):
        apply_masks(g, {"nope": [0]})
    with pytest.raises(PruneError, match="cannot change"):
        apply_masks(g, {"c": [0, 1]})  # the network output
    with pytest.raises(PruneError, match="keep 1 to"):
        apply_masks(g, {"a": []})


def test_shapes_only_removal_matches_the_full_one():
    g = example("resnet18")
    deps = analyze(g)
    masks = compute_masks(g, 0.5, "l1", deps=deps, round_to=8)
    full, dry = apply_masks(g, masks, deps), apply_masks(g, masks, deps, shapes_only=True)
    assert [(n.id, n.attrs, n.types) for n in full.nodes()] == [(n.id, n.attrs, n.types) for n in dry.nodes()]
    assert {k: s.shape for k, s in full.params.specs.items()} == {k: s.shape for k, s in dry.params.specs.items()}


def test_masks_must_come_from_the_same_graph():
    g, h = prog(CONCAT), prog(SPLIT)
    with pytest.raises(PruneError, match="different graph"):
        apply_masks(g, {}, analyze(h))


def test_pruned_values_have_the_masked_widths():
    g = prog(MOBILE)
    deps = analyze(g)
    masks = half_masks(g)
    small = apply_masks(g, masks, deps)
    kept = kept_units(deps, masks)
    for key, s in deps.spaces.items():
        if isinstance(key, Value) and s.axis is not None and key.node in small:
            assert small.type_of(key).shape[s.axis] == int(kept[deps.labels[s.ids]].sum())


@pytest.mark.slow
def test_torch_module_of_the_pruned_graph_runs_in_train_mode():
    small = prune(prog(MOBILE), 0.5, "l1", protect=())
    from convdsl.backends.torch import build_module

    m = build_module(small).train()
    m(*inputs_for(small)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.property
def test_random_programs_prune_to_verified_graphs_of_the_same_signature():
    hypothesis = pytest.importorskip("hypothesis")
    strategies = pytest.importorskip("convdsl.verify.strategies")
    from convdsl.verify.differential import torch_runner

    @hypothesis.settings(max_examples=20, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(strategies.cases(max_statements=10))
    def check(case):
        g = case.graph()
        deps = analyze(g)
        masks = compute_masks(g, 0.5, "l1", target="channels", scope="layer", protect=(), deps=deps)
        small = apply_masks(g, masks, deps)  # verify()ed
        assert small.output_types() == g.output_types()
        assert [o.shape for o in torch_runner(small)(case.inputs())] == [o.shape for o in
                                                                        torch_runner(g)(case.inputs())]

    check()


# ---- an imported dense-block network (DenseNet's concatenation chains) ---------------------------
class _DenseLayer(torch.nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = torch.nn.BatchNorm2d(cin), torch.nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2, self.conv2 = torch.nn.BatchNorm2d(2 * growth), torch.nn.Conv2d(2 * growth, growth, 3, padding=1,
                                                                                   bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(torch.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(torch.relu(self.norm2(x)))


class _DenseNetSmall(torch.nn.Module):
    """torchvision's DenseNet in miniature: each layer reads the concatenation of every earlier output."""

    def __init__(self, growth: int = 4, layers: tuple[int, ...] = (4, 3)) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        c, self.blocks, self.transitions = 8, torch.nn.ModuleList(), torch.nn.ModuleList()
        for i, n in enumerate(layers):
            self.blocks.append(torch.nn.ModuleList(_DenseLayer(c + k * growth, growth) for k in range(n)))
            c += n * growth
            if i < len(layers) - 1:
                self.transitions.append(torch.nn.Sequential(torch.nn.BatchNorm2d(c), torch.nn.ReLU(),
                                                            torch.nn.Conv2d(c, c // 2, 1, bias=False),
                                                            torch.nn.AvgPool2d(2)))
                c //= 2
        self.norm, self.fc = torch.nn.BatchNorm2d(c), torch.nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            features = [x]
            for layer in block:
                features.append(layer(features))
            x = torch.cat(features, 1)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.fc(torch.relu(self.norm(x)).mean((2, 3)))


def test_imported_dense_blocks_prune_and_run():
    """Issue 15 (must-show 4) on DenseNet's structure: the program imported from a dense-block model prunes to
    half its MACs, and the pruned program runs with the output shape intact and computes what zeroing the
    removed channels in the original computes."""
    from convdsl.api import import_model
    from convdsl.backends.torch import build_module

    torch.manual_seed(0)
    model = _DenseNetSmall().eval()
    for m in model.modules():  # non-trivial running statistics, as a trained model has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 16, 16)
    g = import_model(model, (x,)).graph
    deps = analyze(g)
    convs = [n.id for n in g.nodes() if n.op == "conv2d"]
    prunable = {p for grp in deps.groups if grp.prunable for p in grp.producers}
    assert set(convs) - prunable <= {convs[0]}  # every conv's filters prunable but the protected stem's
    small = prune(g, 0.5)
    before, after = summary(g)["macs"], summary(small)["macs"]
    assert 0.45 <= 1 - after / before <= 0.55, (before, after)
    with torch.no_grad():
        out = build_module(small)(x)
        want = model(x)
    assert tuple(out.shape) == tuple(want.shape) == (2, 10)
    assert_prunes_like_zeroing(g, half_masks(g))
