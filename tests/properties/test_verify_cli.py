"""`convdsl verify`: a table per backend/pass, exit code 1 on a mismatch, every example."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convdsl.cli import main

from .helpers import PROFILE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.cdl")) + sorted((ROOT / "examples" / "papers").glob("*.cdl"))
# ImageNet-sized models: minutes each on a shared CI core; checked in the thorough profile
HEAVY = {"resnet50", "vgg16", "vit_b_16", "swin_t", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_large",
         "mobilenet_v2", "resnet18", "deeplab_aspp", "unet", "maxvit_t"}
SMALL = """
network net(x: f32[N, 3, 8, 8]) {
    y = x | conv2d(8, 3, pad=1, bias=false) | batchnorm | relu
    return y | global_avgpool(keepdim=false) | linear(4)
}
"""


def verify(*args: str):
    return CliRunner().invoke(main, ["verify", *args], catch_exceptions=False)


@pytest.fixture()
def small(tmp_path) -> str:
    path = tmp_path / "small.cdl"
    path.write_text(SMALL)
    return str(path)


def test_the_report_has_a_row_per_backend_and_pass(small) -> None:
    r = verify(small, "--examples", "4", "--backends", "torch", "--opt", "O2")
    assert r.exit_code == 0, r.output
    for row in ("torch-standalone", "torch @ O2 up to fold_bn", "torch @ O2"):
        assert row in r.output
    assert "seed" in r.output and "all agree" in r.output


def test_json_report(small) -> None:
    r = verify(small, "--examples", "3", "--backends", "torch", "--passes", "fold_bn,cse", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["ok"] and [row["variant"] for row in rep["rows"]] == ["torch-standalone", "torch @ fold_bn",
                                                                       "torch @ cse"]
    assert all(row["examples"] == 3 for row in rep["rows"])


def test_a_mismatch_exits_nonzero_and_names_the_worst_input(small, monkeypatch) -> None:
    import convdsl.passes as passes

    good = passes.PASSES["fold_bn"]

    def wrong_fold(g):  # folds, then nudges one folded bias
        out = good(g)
        name = next(n for n in out.params.names() if n.endswith("conv2d.bias"))
        out.params[name] = out.params[name] + np.float32(0.01)
        return out

    monkeypatch.setitem(passes.PASSES, "fold_bn", wrong_fold)
    r = verify(small, "--examples", "3", "--backends", "torch", "--passes", "fold_bn")
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "torch @ fold_bn" in r.output and "seed" in r.output


def test_unknown_backend_is_a_usage_error(small) -> None:
    r = CliRunner().invoke(main, ["verify", small, "--backends", "trch"])
    assert r.exit_code != 0 and "torch" in r.output


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_verify_every_example(path: Path) -> None:
    if path.stem in HEAVY and PROFILE != "thorough":
        pytest.skip("ImageNet-sized: checked with HYPOTHESIS_PROFILE=thorough")
    space = "choice(" in path.read_text()
    r = verify(str(path), "--examples", "2", "--batch", "1", "--backends", "torch", "--opt", "O2",
               *(["--first-choice"] if space else []))
    assert r.exit_code == 0, r.output
