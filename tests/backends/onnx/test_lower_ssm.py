"""s4d and sgconv export their kernel as nodes from their parameters (the kernel form): the parameters are
initializers under their own keys, no kernel constant is stored, and ONNX Runtime and OpenVINO run the file
within 1e-5 (of the output's scale) of the torch backend."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from convdsl.backends.onnx import export_graph, session  # noqa: E402
from convdsl.backends.torch.artifact import runner as torch_runner  # noqa: E402
from convdsl.lang.elaborate import elaborate  # noqa: E402
from tests.backends.onnx.test_examples import assert_close  # noqa: E402

CASES = [("s4d(state=8) as s", "N, 6, 96"), ("s4d(state=16, bidirectional=true, dt_min=0.01, dt_max=0.5) as s", "N, 4, 300"),
         ("sgconv(kernel_dim=8) as s", "N, 6, 64"), ("sgconv(kernel_dim=4, n_scales=6, decay=0.7) as s", "N, 3, 50"),
         ("sgconv(kernel_dim=16, n_scales=2, interp=nearest, bidirectional=true) as s", "N, 5, 40"),
         ("sgconv(kernel_dim=5, n_scales=4, interp=nearest) as s", "N, 2, 40"),
         ("sgconv(kernel_dim=12, n_scales=1, decay=0.25) as s", "N, 2, 12")]


def _case(body: str, shape: str):
    g = elaborate(f"network n(x: f32[{shape}]) {{\n    return x | {body}\n}}\n", "<t>")
    rng = np.random.default_rng(0)
    x = rng.standard_normal([2] + [int(d) for d in shape.split(", ")[1:]]).astype(np.float32)
    return g, x


@pytest.mark.parametrize("body, shape", CASES)
def test_kernel_form_runs_in_onnxruntime_within_1e5(body, shape):
    g, x = _case(body, shape)
    model = export_graph(g)  # onnx.checker with full shape inference
    inits = {i.name: i for i in model.graph.initializer}
    for k in g.params.names():  # every parameter is in the file as it is (D placed on channels: [C, 1])
        got = onnx.numpy_helper.to_array(inits[k] if k in inits else inits[k + ".as_channels"])
        np.testing.assert_array_equal(got.reshape(np.shape(g.params[k])), g.params[k])
    assert not any(n.endswith(".kernel") for n in inits if n != "s.kernel")  # no precomputed kernel
    assert {n.op_type for n in model.graph.node} >= {"Conv", "Gather"}
    s = session(model)
    assert_close(s.run(None, {s.get_inputs()[0].name: x}), torch_runner(g)([x]))


@pytest.mark.parametrize("body, shape", [CASES[1], CASES[3], CASES[4]])
def test_kernel_form_runs_in_openvino_within_1e5(body, shape, tmp_path):
    ov = pytest.importorskip("openvino")
    g, x = _case(body, shape)
    f = tmp_path / "m.onnx"
    onnx.save(export_graph(g), f)
    compiled = ov.Core().compile_model(str(f), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert_close([compiled([x])[compiled.outputs[0]]], torch_runner(g)([x]))
