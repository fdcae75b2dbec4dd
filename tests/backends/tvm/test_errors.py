"""Lowering errors name the op, its .cdl location and the target, and list what is supported."""
from __future__ import annotations

import pytest

from convdsl.backends.tvm import TVM_LOWERINGS, backend, lowering
from convdsl.backends.tvm.lowering import lower_graph
from convdsl.errors import LoweringError

from .conftest import graph_of

NET = """
network t(x: f32[N, 3, 8, 8]) {
    y = x | conv2d(4, 3, pad=1)
    return y | relu
}
"""


def test_unsupported_op_is_a_lowering_error(monkeypatch):
    monkeypatch.setattr(lowering, "TVM_LOWERINGS", TVM_LOWERINGS.without("relu"))
    g = graph_of(NET)
    with pytest.raises(LoweringError) as info:
        lower_graph(g, "tvm-cuda")
    e = info.value
    text = e.render()
    assert "op 'relu' has no lowering for the tvm-cuda backend" in text
    assert e.span is not None and e.span.line == 4
    assert "return y | relu" in text and "^" in text  # the source line with a caret
    assert "supported ops:" in text and "conv2d" in text


def test_lowering_error_through_the_backend(monkeypatch):
    monkeypatch.setattr(lowering, "TVM_LOWERINGS", TVM_LOWERINGS.without("conv2d"))
    with pytest.raises(LoweringError, match="tvm-llvm"):
        backend("tvm-llvm", use_db=False).build(graph_of(NET))
