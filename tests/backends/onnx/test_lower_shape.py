"""ONNX exports of reshape with symbolic sizes (backends/onnx/lower_shape.py, Exporter.reshape):
one model runs every batch in onnxruntime, against numpy's reshapes and the torch backend."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from convdsl.backends.onnx import export_graph, session  # noqa: E402
from convdsl.backends.torch.artifact import runner as torch_runner  # noqa: E402

from ...helpers import WINDOW_ATTENTION, graph_of  # noqa: E402
from .test_examples import assert_close  # noqa: E402


def test_sizes_computed_from_two_symbols_at_run_time():
    """[2*N, 4*L, 8] has two sizes no input dim holds: ONNX reads N and L from the input's
    shape and multiplies; the model then runs any N and L."""
    g = graph_of("network n(x: f32[N, L, 64]) {\n"
                 "    y = x | reshape([2 * N, 4 * L, 8]) | relu\n"
                 "    return y | reshape([N, L, -1])\n}")
    sess = session(export_graph(g))
    name = sess.get_inputs()[0].name
    out = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(0)
    for n, L in ((1, 1), (3, 5)):
        x = rng.standard_normal((n, L, 64)).astype("float32")
        y, = sess.run(out, {name: x})
        np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_windows_folded_into_the_batch_run_every_batch():
    g = graph_of(WINDOW_ATTENTION)
    sess = session(export_graph(g))
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(1)
    for n in (1, 3):
        x = [rng.standard_normal((n, 16, 8, 8)).astype("float32")]
        assert_close(sess.run(None, {name: x[0]}), torch_runner(g)(x))
