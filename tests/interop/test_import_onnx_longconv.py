"""CDL -> ONNX -> convdsl import of the long-convolution ops (fft_conv, s4d, sgconv) and glu: each comes
back as the op with its parameters under their keys, and a file whose nodes or constants differ from
what the op computes imports node by node instead."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from convdsl.backends.onnx import export_graph  # noqa: E402
from convdsl.backends.torch.artifact import runner as torch_runner  # noqa: E402
from convdsl.importer import import_onnx  # noqa: E402
from convdsl.lang.elaborate import elaborate  # noqa: E402
from tests.interop.test_import_onnx import canonical  # noqa: E402


def _program(body: str, shape: str):
    return elaborate(f"network n(x: f32[{shape}]) {{\n    return x | {body}\n}}\n", "<t>")


def _back(g, tmp_path, edit=None):
    m = export_graph(g)
    if edit is not None:
        edit(m)
    f = tmp_path / "n.onnx"
    onnx.save(m, f)
    return import_onnx(f).graph


def _same(g, back, shape: str, tol: float = 0.0) -> None:
    assert canonical(back) == canonical(g)
    assert sorted(back.params.names()) == sorted(g.params.names())
    for k in g.params.names():
        np.testing.assert_array_equal(back.params[k], g.params[k])
    x = [np.random.default_rng(0).standard_normal([2] + [int(d) for d in shape.split(", ")[1:]]).astype(np.float32)]
    np.testing.assert_allclose(torch_runner(back)(x)[0], torch_runner(g)(x)[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("body", ["fft_conv as f", "fft_conv(causal=false) as f", "fft_conv(bias=false, skip=true) as f",
                                  "fft_conv(kernel_len=5, causal=false, skip=true) as f",
                                  "fft_conv(kernel_len=4, causal=false, bias=false) as f",
                                  "fft_conv(kernel_len=3, skip=true) as f"])
def test_fft_conv_comes_back_from_its_long_convolution(body, tmp_path):
    g = _program(body, "N, 6, 16")
    _same(g, _back(g, tmp_path), "N, 6, 16")


def test_a_reversed_kernel_under_another_key_is_a_conv1d(tmp_path):
    """The kernel initializer renamed: the Conv is no longer fft_conv's, it imports as conv1d."""
    g = _program("fft_conv(bias=false) as f", "N, 6, 16")

    def rename(m):
        init = next(i for i in m.graph.initializer if i.name == "f.kernel.reversed")
        for n in m.graph.node:
            n.input[:] = ["f.weight" if i == init.name else i for i in n.input]
        init.name = "f.weight"

    back = _back(g, tmp_path, rename)
    assert [n.op for n in back.nodes() if n.op != "input"] == ["conv1d"]


@pytest.mark.parametrize("body, shape", [("glu", "N, 6, 5"), ("glu(dim=2)", "N, 3, 8"), ("glu(dim=1)", "N, 4, 3, 3")])
def test_glu_comes_back_from_split_sigmoid_mul(body, shape, tmp_path):
    g = _program(body, shape)
    _same(g, _back(g, tmp_path), shape)
