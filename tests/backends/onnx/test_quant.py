"""int8 programs from the quantize pass export as QDQ that ONNX Runtime runs with integer kernels,
within one quantization step of convdsl's int8 simulation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from convdsl.api import load_graph  # noqa: E402
from convdsl.backends.onnx import export_graph, session  # noqa: E402
from convdsl.backends.torch import build_module  # noqa: E402
from convdsl.backends.torch.artifact import runner as torch_runner  # noqa: E402
from convdsl.passes.quantize import quantize  # noqa: E402

ROOT = Path(__file__).resolve().parents[3] / "examples"


def test_int8_digits_cnn_runs_as_int8_in_onnxruntime(tmp_path):
    g = load_graph(ROOT / "digits_cnn.cdl")
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((8, 1, 8, 8)).astype(np.float32) for _ in range(2)]
    q = quantize(g, calib, build=build_module)
    assert any(n.op.startswith("qconv") for n in q.nodes())
    model = export_graph(q)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    sess = session(model, profile=str(tmp_path / "prof"))
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    prof = json.loads(Path(sess.end_profiling()).read_text())
    kernels = {e["args"].get("op_name") for e in prof if e.get("cat") == "Node"}
    assert kernels & {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm", "DynamicQuantizeLinear"}
    ref = torch_runner(q)([x])[0]
    # one quantization step of the last layer's input (its dequantized scale) bounds the difference
    step = max(n.attrs.get("in_scale", 0.0) for n in q.nodes() if n.op in ("qlinear", "qconv2d"))
    assert np.abs(out - ref).max() <= np.abs(ref).max() * 0.05 + step * 4
