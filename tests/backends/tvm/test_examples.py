"""Every example network compiled for tvm-llvm equals the torch backend (float32, 1e-4
of the output's scale), FFT-mixing and state-space examples included.

The ImageNet-sized zoo (ResNet, MobileNet, ViT, Swin, ...) runs untuned TVM code for
seconds to minutes per image on a 2-core machine, so it is opt-in here
(CONVDSL_TVM_ZOO=1); docs/tvm.md records its last full run."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from convdsl.api import load_graph
from convdsl.errors import ChoiceError
from convdsl.ir.types import NUMPY_DTYPE, bind_dim

from .conftest import assert_close, torch_outputs

ROOT = Path(__file__).resolve().parents[3] / "examples"
SIZES = {"H": 24, "W": 24, "L": 64}  # symbolic sizes other than the batch
ZOO = {"convnext_tiny", "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_large", "resnet18", "resnet50", "swin_t",
       "unet", "vgg16", "vit_b_16", "deeplab_aspp", "maxvit_t"}
FILES = sorted(p for p in [*ROOT.glob("*.cdl"), *ROOT.glob("papers/*.cdl")])


def _inputs(g, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for t in g.input_types():
        shape = [bind_dim(d, g.symbols) for d in t.shape]
        dtype = NUMPY_DTYPE.get(t.dtype, "float32")
        out.append(rng.standard_normal(shape).astype(dtype) if dtype.startswith("float")
                   else rng.integers(0, 10, size=shape).astype(dtype))
    return out


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in FILES])
def test_example_matches_torch(path, llvm_runner):
    if path.stem in ZOO and os.environ.get("CONVDSL_TVM_ZOO") != "1":
        pytest.skip("ImageNet-sized: set CONVDSL_TVM_ZOO=1")
    try:
        g = load_graph(path, bind=SIZES)
    except ChoiceError:
        pytest.skip("a search space, not a plain program")
    xs = _inputs(g)
    outs = llvm_runner(g, str(path))(xs)
    assert_close(outs, torch_outputs(g, xs))
