"""ONNX lowering of window_attention with MaxViT's scale and projection names
(backends/onnx/lower_attention.py), run in onnxruntime against the torch backend."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from convdsl.backends.onnx import export_graph, session  # noqa: E402
from convdsl.backends.torch.artifact import runner as torch_runner  # noqa: E402
from convdsl.ir.verify import verify  # noqa: E402
from convdsl.lang.elaborate import elaborate  # noqa: E402

from .test_examples import assert_close  # noqa: E402


@pytest.mark.parametrize("call", [
    "window_attention(heads=2, window=4)",
    'window_attention(heads=2, window=4, scale=0.2, qkv="to_qkv", proj="merge")',
])
def test_window_attention_runs_in_onnxruntime(call):
    g = verify(elaborate(f"network t(x: f32[2, 8, 8, 16]) {{\n    return x | {call} as attn\n}}\n", "<t>"))
    rng = np.random.default_rng(0)
    for name, arr in list(g.params.items()):
        g.params[name] = rng.standard_normal(arr.shape).astype(arr.dtype)  # a bias table that matters
    x = [rng.standard_normal((2, 8, 8, 16)).astype("float32")]
    sess = session(export_graph(g))
    assert_close(sess.run(None, {sess.get_inputs()[0].name: x[0]}), torch_runner(g)(x))
