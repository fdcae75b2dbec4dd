"""TVM lowering of reshape with symbolic sizes (backends/tvm/lower_shape.py): windows folded
into a batch of 4*N and back, built with N bound and with the default binding, against the
torch backend on the same weights (their default initialization: N(0, 1) weights make the
attention logits so large that softmax is an argmax, and rounding picks the winner)."""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import assert_close, graph_of, torch_outputs
from ...helpers import WINDOW_ATTENTION

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize("bind", [{"N": 3}, {}])
def test_windows_folded_into_the_batch_and_back(bind, llvm_runner):
    g = graph_of(WINDOW_ATTENTION, randomize=False, bind=bind)
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


def test_windows_fold_with_a_dynamic_batch():
    """One library for every N (issue 14 item 12's dynamic batch): 4*N and N are shape-variable
    expressions, so the fold and the unfold run at any batch."""
    import dataclasses

    from convdsl.backends.tvm import backend
    from convdsl.backends.tvm.backend import TVMBackend

    if "dynamic_batch" not in {f.name for f in dataclasses.fields(TVMBackend)}:
        pytest.skip("this tree's TVM backend builds for bound sizes only (no dynamic_batch)")
    g = graph_of(WINDOW_ATTENTION, randomize=False)
    run = backend("tvm-llvm", use_db=False, progress=False, dynamic_batch=True).runner(g)
    for n in (1, 3, 5):
        x = [np.random.default_rng(n).standard_normal((n, 16, 8, 8)).astype("float32")]
        assert_close(run(x), torch_outputs(g, x))
