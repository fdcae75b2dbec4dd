"""Per-layer statistics: counts from the op table, checked by hand and against torchvision."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from convdsl.ir.graph import Graph, Value
from convdsl.ir.optable import Init, ParamSpec
from convdsl.ir.stats import (TOTAL_KEYS, human_bytes, human_count, layer_stats, peak_activation_bytes, render_table,
                              summary, to_json, totals)
from convdsl.ir.types import TensorType
from convdsl.lang.elaborate import elaborate

ROOT = Path(__file__).resolve().parents[2]
RESNET18 = ROOT / "examples" / "resnet18.cdl"

# conv 3->16 k3 pad1 on 32x32 (with bias), relu, global pool, fc 16->10
SMALL = """
network small(image: f32[N, 3, 32, 32], classes=10) {
    x = image | conv2d(16, 3, pad=1) as conv | relu
    return x | adaptive_avgpool2d(1) | flatten | linear(classes) as fc
}
"""

# blocks with batchnorm (buffers), nested scopes and a residual add
BLOCKS = """
block conv_bn(c, k=3, stride=1) = conv2d(c, k, stride=stride, pad=k // 2, bias=false) as conv | batchnorm as bn | relu

block basic(c, stride=1)(x) {
    y = x | conv_bn(c, stride=stride) as a | conv_bn(c) as b
    s = x | conv_bn(c, k=1, stride=stride) as downsample if stride != 1 or channels(x) != c else x
    return relu(y + s)
}

network net(image: f32[N, 3, 32, 32], classes=10) {
    x = image | conv_bn(16) as stem
    x = x | basic(16) as "layer1.0" | basic(16) as "layer1.1"
    x = x | basic(32, stride=2) as "layer2.0"
    return x | adaptive_avgpool2d(1) | flatten | linear(classes) as fc
}
"""


def graph(text: str, name: str = "<test>") -> Graph:
    return elaborate(text, name)


def by_name(rows):
    return {r.name: r for r in rows}


# -- counting ---------------------------------------------------------------------

def test_conv_and_linear_match_hand_computed_counts():
    rows = by_name(layer_stats(graph(SMALL)))
    conv, fc = rows["conv"], rows["fc"]
    assert conv.shapes == ((1, 16, 32, 32),)
    assert conv.macs == 16 * 32 * 32 * 3 * 9 == 442_368
    assert conv.flops == 2 * conv.macs + 16 * 32 * 32  # + the bias adds
    assert conv.params == 16 * 3 * 9 + 16
    assert conv.act_bytes == 16 * 32 * 32 * 4
    assert fc.shapes == ((1, 10),)
    assert fc.macs == 16 * 10
    assert fc.params == 16 * 10 + 10
    assert rows["relu"].macs == 0 and rows["relu"].params == 0
    assert sum(r.macs for r in rows.values()) == 442_368 + 160


def test_rows_follow_graph_order_and_skip_inputs():
    g = graph(BLOCKS)
    rows = layer_stats(g)
    assert [r.name for r in rows] == [n.id for n in g.nodes() if n.op != "input"]
    assert "image" not in by_name(rows)


def test_symbols_default_to_graph_bindings_and_can_be_overridden():
    g = graph(SMALL)
    assert g.symbols.get("N", 1) == 1
    one = by_name(layer_stats(g))
    eight = by_name(layer_stats(g, {"N": 8}))
    assert eight["conv"].shapes == ((8, 16, 32, 32),)
    assert eight["conv"].macs == 8 * one["conv"].macs
    assert eight["fc"].act_bytes == 8 * one["fc"].act_bytes
    assert one["conv"].params == eight["conv"].params
    s = summary(g, {"N": 8})
    assert s["inputs"] == [{"name": "image", "shape": [8, 3, 32, 32], "symbolic_shape": ["N", 3, 32, 32],
                            "dtype": "f32"}]
    assert s["outputs"][0]["shape"] == [8, 10] and s["outputs"][0]["node"] == "fc"
    assert s["bind"]["N"] == 8


def test_totals_are_column_sums():
    rows = layer_stats(graph(BLOCKS))
    t = totals(rows)
    for key in TOTAL_KEYS:
        assert t[key] == sum(getattr(r, key) for r in rows), key
    assert t["layers"] == len(rows)


def test_params_equal_the_store_and_buffers_are_separate():
    g = graph(BLOCKS)
    rows = layer_stats(g)
    s = summary(g, rows=rows)
    assert s["params"] == g.params.count()
    assert s["trainable_params"] == g.params.count(trainable_only=True)
    assert s["buffers"] == sum(math.prod(sp.shape) for sp in g.params.specs.values() if sp.buffer)
    assert s["param_bytes"] == g.params.nbytes()
    bn = by_name(rows)["stem.bn"]
    assert bn.params == 2 * 16  # weight + bias
    assert bn.buffers == 2 * 16 + 1  # running mean/var + num_batches_tracked
    assert bn.macs == 0


def test_shared_parameter_is_counted_once():
    g = Graph("tied")
    t = TensorType(("N", 8), "f32")
    g.add_node("x", "input", [], {"name": "x"}, [t])
    g.params.declare("w", ParamSpec((8, 8), Init("zeros")))
    for i, src in enumerate(["x", "fc0"]):
        g.add_node(f"fc{i}", "linear", [Value(src)], {"out": 8, "bias": False}, [t], params={"weight": "w"})
    g.outputs = [Value("fc1")]
    rows = by_name(layer_stats(g))
    assert rows["fc0"].params == 64 and rows["fc1"].params == 0
    assert rows["fc1"].macs == 64  # compute is not shared
    assert totals(list(rows.values()))["params"] == g.params.count() == 64


# -- reports --------------------------------------------------------------------------

def test_human_units():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**20) == "3.0 MiB"
    assert human_count(1_814_073_344, "MACs") == "1.81 GMACs"
    assert human_count(999, "FLOPs") == "999 FLOPs"


def _text(g, rows, **kw) -> str:
    console = Console(record=True, width=220, color_system=None)
    render_table(g, rows, console, **kw)
    return console.export_text()


def test_render_table_has_columns_separators_and_totals():
    g = graph(BLOCKS)
    rows = layer_stats(g)
    out = _text(g, rows)
    for header in ("layer", "op", "output shape", "params", "MACs", "FLOPs", "act. memory"):
        assert header in out
    t = totals(rows)
    assert f"{t['params']:,} params" in out
    assert f"{t['macs']:,}" in out and "," in f"{t['macs']:,}"
    assert "KiB" in out
    assert "[1, 16, 32, 32]" in out


def test_render_table_by_block_adds_subtotals():
    g = graph(BLOCKS)
    rows = layer_stats(g)
    out = _text(g, rows, by_block=True)
    for scope in ("stem", "layer1", "layer2"):
        assert f"subtotal {scope}" in out
    layer1 = [r for r in rows if r.scope.split(".")[0] == "layer1"]
    line = next(ln for ln in out.splitlines() if "subtotal layer1" in ln)
    assert f"{totals(layer1)['macs']:,}" in line
    assert "stem (conv_bn)" in out  # a group that is one block instance names its block


def test_to_json_round_trips():
    g = graph(BLOCKS)
    rows = layer_stats(g)
    doc = json.loads(json.dumps(to_json(g, rows)))
    assert doc["network"] == "net"
    assert [layer["name"] for layer in doc["layers"]] == [r.name for r in rows]
    assert doc["layers"][0]["shapes"] == [[1, 16, 32, 32]]
    assert doc["totals"] == {**totals(rows), "peak_act_bytes": peak_activation_bytes(g)}
    assert doc["inputs"][0]["name"] == "image" and doc["outputs"][0]["shape"] == [1, 10]


# -- against torchvision ----------------------------------------------------------

def _torchvision_counts(model, shape):
    """MACs of every Conv2d/Linear by module name, from forward hooks (fvcore/thop convention)."""
    import torch

    macs: dict[str, int] = {}

    def hook(name):
        def fn(mod, inputs, out):
            if isinstance(mod, torch.nn.Conv2d):
                macs[name] = out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
            elif isinstance(mod, torch.nn.Linear):
                macs[name] = out.numel() * mod.in_features
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(shape))
    for h in handles:
        h.remove()
    return macs


@pytest.mark.zoo
def test_resnet18_matches_torchvision():
    import torchvision

    assert RESNET18.exists(), f"{RESNET18} is the model-zoo ResNet-18 this test counts"
    g = elaborate(RESNET18.read_text(), str(RESNET18))
    rows = layer_stats(g)
    s = summary(g, rows=rows)

    ref = torchvision.models.resnet18()
    ref_macs = _torchvision_counts(ref, (1, 3, 224, 224))
    assert s["params"] == sum(p.numel() for p in ref.parameters()) == 11_689_512
    assert s["buffers"] == sum(b.numel() for b in ref.buffers())
    # conv + fc MACs; norms, activations, pools and adds count 0 MACs (only FLOPs)
    assert s["macs"] == sum(ref_macs.values()) == 1_814_073_344
    meta = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta
    assert round(s["macs"] / 1e9, 3) == meta["_ops"] == 1.814  # torchvision's published GMACs
    # per layer: node ids equal torchvision module names (the state_dict keys)
    ours = {r.name: r.macs for r in rows if r.op in ("conv2d", "linear")}
    assert ours == ref_macs


def test_batch_scales_resnet18_linearly():
    assert RESNET18.exists(), f"{RESNET18} is the model-zoo ResNet-18 this test counts"
    g = elaborate(RESNET18.read_text(), str(RESNET18))
    one, four = totals(layer_stats(g)), totals(layer_stats(g, {"N": 4}))
    assert four["macs"] == 4 * one["macs"] and four["act_bytes"] == 4 * one["act_bytes"]
    assert four["params"] == one["params"]


def test_unknown_op_is_a_named_error():
    from convdsl.errors import IRError

    g = Graph("bad")
    g.add_node("x", "input", [], {"name": "x"}, [TensorType((1, 4))])
    g.add_node("y", "nonsense_op", [Value("x")], {}, [TensorType((1, 4))])
    with pytest.raises(IRError, match="unknown op"):
        layer_stats(g)


def test_peak_activation_memory_follows_liveness():
    """Issue 14 item 14: stats gave only the sum over nodes (150 MB for ResNet-50 at batch 1),
    not the peak one inference pass holds.  Worked by hand for a residual block on an
    f32[1, 8, 16, 16] input (8 KiB per tensor): conv runs with x alive (2 tensors), relu with x
    and the conv output (3; the conv output is freed after it), the add with x and relu's output
    (3; both freed after it), then each op of the chain holds 2.  The sum of the 7 outputs is
    7 tensors."""
    g = graph("network n(x: f32[N, 8, 16, 16]) {\n"
              "    y = x | conv2d(8, 3, pad=1) | relu\n"
              "    z = x + y\n"
              "    return z | conv2d(8, 1) | relu | relu | relu\n"
              "}\n")
    tensor = 8 * 16 * 16 * 4
    assert peak_activation_bytes(g) == 3 * tensor  # the chain after the add holds 2 at a time
    assert peak_activation_bytes(g, {"N": 4}) == 12 * tensor
    assert totals(layer_stats(g))["act_bytes"] == 7 * tensor
    doc = to_json(g, layer_stats(g))
    assert doc["totals"]["peak_act_bytes"] == 3 * tensor
    assert "peak 24.0 KiB (inference)" in _text(g, layer_stats(g))

