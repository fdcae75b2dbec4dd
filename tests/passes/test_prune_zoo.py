"""Pruned zoo models are programs again: they re-parse, compile and load their weights; MAC targets
are met; the `convdsl prune` command writes files that check/compile/--weights accept."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from convdsl.api import load_graph
from convdsl.cli import main
from convdsl.lang.printer import print_graph
from convdsl.ir.stats import summary
from convdsl.ir.weights import save_weights
from convdsl.passes.prune import apply_masks, compute_masks, measure, prune, prune_with_report
from tests.passes.test_prune import zeroed
from tests.passes.zoo import EXAMPLES, EXAMPLES_DIR, example, inputs_for, outputs, rel_diff

ZOO = [n for n in ("resnet18", "mobilenet_v2", "convnext_tiny") if n in EXAMPLES]
BN_ONLY = {"resnet18", "mobilenet_v2"}  # zeroing a channel's BN makes it exactly 0 everywhere


@pytest.mark.parametrize("name", ZOO)
def test_pruned_zoo_model_reparses_compiles_and_loads_its_weights(name, tmp_path):
    g = example(name)
    small, rep, masks = prune_with_report(g, 0.5, "l1", round_to=8)
    assert abs(rep["reduction"]["macs"] - 0.5) <= 0.005
    path = tmp_path / f"{name}.cdl"
    path.write_text(print_graph(small))
    save_weights(small, tmp_path / "weights.safetensors")
    again = load_graph(path, weights=tmp_path / "weights.safetensors", bind={"N": 1})
    assert again.params.names() == small.params.names()
    assert again.output_types() == g.output_types()
    assert summary(again)["macs"] == summary(small)["macs"]
    xs = inputs_for(g)
    want = outputs(small, xs)
    for a, b in zip(outputs(again, xs), want):
        assert np.array_equal(a, b)
    if name in BN_ONLY:  # and it is the original with the removed channels zeroed
        assert rel_diff(want, outputs(zeroed(g, masks), xs)) <= 1e-5


@pytest.mark.parametrize("target,ratio", [("macs", 0.3), ("macs", 0.5), ("macs", 0.7), ("params", 0.4)])
def test_target_reduction_is_hit(target, ratio):
    g = example("resnet18")
    info: dict = {}
    masks = compute_masks(g, ratio, "l1", target=target, round_to=8, info=info)
    assert abs(info["reduction"] - ratio) <= 0.005
    assert abs(1 - measure(apply_masks(g, masks), target) / measure(g, target) - ratio) <= 0.005


def test_layer_scope_prunes_every_group_alike():
    g = example("mobilenet_v2")
    report = prune_with_report(g, 0.3, "l2", scope="layer", target="channels", protect=()).report
    for row in report["groups"]:
        if row["channels"] and not row["fixed"] and row["channels"][0] >= 16:
            before, after = row["channels"]
            assert abs((before - after) / before - 0.3) <= 0.5 / before + 1e-9


def test_prune_command_writes_a_program_weights_and_report(tmp_path):
    run = CliRunner().invoke
    src = EXAMPLES_DIR / "digits_cnn.cdl"
    w = tmp_path / "w.safetensors"
    save_weights(load_graph(src), w)
    out = tmp_path / "pruned"
    r = run(main, ["prune", str(src), "--weights", str(w), "--ratio", "0.4", "--criterion", "taylor",
                   "--data", "digits", "--calib-samples", "64", "--round-to", "8", "--finetune-epochs", "1",
                   "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "pruned digits_cnn" in r.output and "accuracy" in r.output
    assert {p.name for p in out.iterdir()} >= {"digits_cnn.cdl", "weights.safetensors", "report.json", "report.md"}
    r = run(main, ["check", str(out / "digits_cnn.cdl")])
    assert r.exit_code == 0, r.output
    r = run(main, ["compile", str(out / "digits_cnn.cdl"), "--weights", str(out / "weights.safetensors"),
                   "-o", str(tmp_path / "art")])
    assert r.exit_code == 0, r.output
    import json

    rep = json.loads((out / "report.json").read_text())
    assert rep["after"]["macs"] < rep["before"]["macs"] and set(rep["accuracy"]) == {"original", "pruned",
                                                                                      "fine-tuned"}


def test_prune_command_explains_bad_settings(tmp_path):
    run = CliRunner().invoke
    src = str(EXAMPLES_DIR / "digits_cnn.cdl")
    r = run(main, ["prune", src, "--criterion", "taylor", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "needs calibration data" in r.output
    r = run(main, ["prune", src, "--finetune-epochs", "2", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--data" in r.output
    r = run(main, ["prune", src, "--ratio", "1.5", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "ratio" in r.output
