"""Every example exports to ONNX (onnx.checker with full shape inference) and runs in ONNX Runtime
within 1e-5 (of the output's scale) of the torch backend; int8 programs export as QDQ.

The ImageNet-sized zoo is opt-in (CONVDSL_ONNX_ZOO=1, about 2 minutes); the papers' blocks and
the small networks run always.  OpenVINO (CPU, f32) runs the same files within the same 1e-5; it is in
the test extra, so CI runs it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from convdsl.api import load_graph  # noqa: E402
from convdsl.backends.onnx import export_graph, session  # noqa: E402
from convdsl.backends.torch.artifact import runner as torch_runner  # noqa: E402
from convdsl.errors import ChoiceError  # noqa: E402
from convdsl.ir.types import NUMPY_DTYPE, bind_dim  # noqa: E402

ROOT = Path(__file__).resolve().parents[3] / "examples"
SIZES = {"H": 24, "W": 24, "L": 64}
ZOO = {"convnext_tiny", "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_large", "resnet18", "resnet50", "swin_t",
       "vgg16", "vit_b_16", "unet", "deeplab_aspp", "maxvit_t"}
FILES = sorted(p for p in [*ROOT.glob("*.cdl"), *ROOT.glob("papers/*.cdl")])


def inputs(g, batch: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for t in g.input_types():
        shape = [bind_dim(d, {**g.symbols, **SIZES, "N": batch}) for d in t.shape]
        dtype = NUMPY_DTYPE.get(t.dtype, "float32")
        out.append(rng.standard_normal(shape).astype(dtype) if dtype.startswith("float")
                   else rng.integers(0, 10, size=shape).astype(dtype))
    return out


def assert_close(outs, refs, tol: float = 1e-5) -> None:
    for o, r in zip(outs, refs):
        scale = max(float(np.abs(r).max()), 1e-6)
        err = float(np.abs(np.asarray(o, dtype=np.float64) - r).max()) / scale
        assert err <= tol, f"max error {err:.2e} of the output's scale"


def _load(path):
    try:
        return load_graph(path, bind=SIZES)
    except ChoiceError:
        pytest.skip("a search space, not a plain program")


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in FILES])
def test_example_runs_in_onnxruntime(path):
    if path.stem in ZOO and os.environ.get("CONVDSL_ONNX_ZOO") != "1":
        pytest.skip("ImageNet-sized: set CONVDSL_ONNX_ZOO=1")
    g = _load(path)
    model = export_graph(g)  # runs onnx.checker with full shape inference
    assert model.opset_import[0].version >= 17
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "N"  # the batch stays symbolic
    xs = inputs(g, batch=2)
    sess = session(model)
    outs = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})
    assert_close(outs, torch_runner(g)(xs))
    # a second batch size through the same model: the batch really is dynamic
    xs = inputs(g, batch=3, seed=1)
    assert_close(sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)}), torch_runner(g)(xs))


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in FILES])
def test_example_runs_in_openvino(path, tmp_path):
    ov = pytest.importorskip("openvino")  # in the test extra (pinned); skipped only where it is not installed
    if path.stem in ZOO and os.environ.get("CONVDSL_ONNX_ZOO") != "1":
        pytest.skip("ImageNet-sized: set CONVDSL_ONNX_ZOO=1")
    g = _load(path)
    f = tmp_path / "model.onnx"
    onnx.save(export_graph(g), f)
    # f32 inference precision: OpenVINO's default on CPUs with bf16 (AVX512_BF16, AMX) would run bf16
    compiled = ov.Core().compile_model(str(f), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for batch, seed in ((2, 0), (3, 1)):  # the symbolic batch stays dynamic in OpenVINO too
        xs = inputs(g, batch=batch, seed=seed)
        res = compiled(xs)
        assert_close([res[o] for o in compiled.outputs], torch_runner(g)(xs))
