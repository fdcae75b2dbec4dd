"""Generated modules for a few examples are kept as golden files: a change in
code generation shows up as a readable diff.

Regenerate after an intended change with:
    CONVDSL_UPDATE_GOLDEN=1 python -m pytest tests/backends/torch/test_golden.py
"""
import os
from pathlib import Path

import pytest

from convdsl.api import load_graph
from convdsl.backends.torch import generate

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = ["resnet18", "espcn", "unet", "mobilenet_v2", "digits_cnn"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_generated_source_matches_golden(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # the header names the source path relative to the working directory
    source = generate(load_graph(f"examples/{name}.cdl")).source
    path = GOLDEN / f"{name}.py"
    if os.environ.get("CONVDSL_UPDATE_GOLDEN"):
        path.write_text(source)
    assert path.exists(), f"missing golden file {path}; run with CONVDSL_UPDATE_GOLDEN=1"
    assert source == path.read_text(), f"generated code for {name} changed; review and update the golden file"
