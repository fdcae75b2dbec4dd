"""TVM lowering of reshape with symbolic sizes (backends/tvm/lower_shape.py): windows folded
into a batch of 4*N and back, built with N bound and with the default binding, against the
torch backend on the same weights."""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import assert_close, graph_of, torch_outputs
from ...helpers import WINDOW_ATTENTION

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize("bind", [{"N": 3}, {}])
def test_windows_folded_into_the_batch_and_back(bind, llvm_runner):
    g = graph_of(WINDOW_ATTENTION, bind=bind)
    n = bind.get("N", 1)  # unbound symbols are built for 1
    assert str(g.node("win.attn").type) == "f32[4*N, 16, 16]"
    x = [np.random.default_rng(0).standard_normal((n, 16, 8, 8)).astype("float32")]
    assert_close(llvm_runner(g, ("windows", n))(x), torch_outputs(g, x))


def test_sizes_from_two_symbols(llvm_runner):
    g = graph_of("network n(x: f32[N, L, 64]) {\n"
                 "    y = x | reshape([2 * N, 4 * L, 8]) | relu\n"
                 "    return y | reshape([N, L, -1])\n}", bind={"N": 2, "L": 3})
    x = [np.random.default_rng(1).standard_normal((2, 3, 64)).astype("float32")]
    out, = llvm_runner(g, ("two symbols",))(x)
    np.testing.assert_array_equal(out, np.maximum(x[0], 0))
