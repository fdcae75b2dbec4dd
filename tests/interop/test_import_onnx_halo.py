"""CDL -> ONNX -> convdsl import of halo_attention: the whole relative-position tables are in the file
(gathered by nodes), so the op comes back with every parameter under its key; a file whose gather
differs imports node by node as the general ops."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from convdsl.verify.differential import torch_runner  # noqa: E402
from tests.interop.test_import_onnx_longconv import _back, _program, _same  # noqa: E402


@pytest.mark.parametrize("body, shape", [
    ("halo_attention(heads=2, block_size=4, halo=1) as a", "N, 8, 8, 8"),
    ("halo_attention(heads=4, block_size=2, halo=2, qkv_bias=true, scale=0.1) as a", "N, 8, 4, 6"),
    ("halo_attention(heads=3, block_size=3, halo=0, dim=12) as a", "N, 5, 6, 3"),
    ("halo_attention(heads=1, block_size=4, halo=3, dim=8) as a", "N, 4, 4, 8"),
])
def test_halo_attention_comes_back_with_its_tables(body, shape, tmp_path):
    g = _program(body, shape)
    _same(g, _back(g, tmp_path), shape)


def test_a_different_gather_is_no_halo_attention(tmp_path):
    """The table rows gathered one position off: not what halo attention reads, so no halo_attention comes
    back; its nodes import one by one as the general ops (the attention's softmax among them)."""
    g = _program("halo_attention(heads=2, block_size=4, halo=1) as a", "N, 8, 8, 8")

    def shift(m):
        gather = next(n for n in m.graph.node if n.op_type == "Gather" and n.input[0] == "a.pos_embed.height_rel")
        init = next(i for i in m.graph.initializer if i.name == gather.input[1])
        arr = onnx.numpy_helper.to_array(init)
        init.CopyFrom(onnx.numpy_helper.from_array(np.maximum(arr - 1, 0), init.name))

    back = _back(g, tmp_path, shift)
    ops = {n.op for n in back.nodes()}
    assert "halo_attention" not in ops and {"softmax", "matmul", "conv2d"} <= ops
    # and computes what the edited file computes (its index initializers, named a/const_*, are take buffers)
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "n.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(torch_runner(back)([x])[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # the same file unedited: the op
    assert "halo_attention" in {n.op for n in _back(g, tmp_path).nodes()}
