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


@pytest.mark.parametrize("body, shape", [
    ("s4d(state=8) as s", "N, 6, 40"),
    ("s4d(state=4, bidirectional=true) as s", "N, 3, 17"),
    ("s4d(state=6, dt_min=0.01, dt_max=0.5) as s", "N, 2, 9"),
    ("sgconv(kernel_dim=8) as s", "N, 6, 64"),  # the full kernel is L taps: no cut
    ("sgconv(kernel_dim=4, n_scales=5, decay=0.7) as s", "N, 3, 50"),  # cut to L (Slice)
    ("sgconv(kernel_dim=5, n_scales=4, interp=nearest, bidirectional=true) as s", "N, 2, 60"),  # padded to L
    ("sgconv(kernel_dim=16, n_scales=2, interp=nearest) as s", "N, 5, 40"),  # no upsampling in the file
    ("sgconv(kernel_dim=12, n_scales=1, decay=0.25, bidirectional=true) as s", "N, 2, 12"),  # nor a decay
])
def test_lti_ssm_comes_back_from_its_kernel_form(body, shape, tmp_path):
    g = _program(body, shape)
    _same(g, _back(g, tmp_path), shape)


def _constant(m, value: str):
    init = next(i for i in m.graph.initializer if i.name == value)
    return init, onnx.numpy_helper.to_array(init)


def _edit_constant(pick, change):
    """An edit of the exported model: the initializer read as input ``pick`` of the first node of a type,
    replaced by ``change(array)``."""
    def edit(m):
        op, idx = pick
        node = next(n for n in m.graph.node if n.op_type == op)
        init, arr = _constant(m, node.input[idx])
        init.CopyFrom(onnx.numpy_helper.from_array(change(arr), init.name))

    return edit


@pytest.mark.parametrize("body, pick, change", [
    ("s4d(state=4) as s", ("Cos", None), None),  # Cos -> Sin: another kernel
    ("s4d(state=4) as s", ("Sub", 1), lambda a: np.float32(0.5)),  # exp(dt A) - 1/2
    ("sgconv(kernel_dim=4, n_scales=4) as s", ("MatMul", 1), lambda a: a[:, ::-1].copy()),  # not F.interpolate
    ("sgconv(kernel_dim=4, n_scales=4) as s", ("Max", 1), lambda a: np.float32(1e-3)),  # another clamp
])
def test_a_different_kernel_computation_is_no_ssm(body, pick, change, tmp_path):
    """One node or constant of the kernel's computation changed: the nodes no longer compute the op, so
    they import one by one, and the first with no convdsl mapping (Exp of a parameter here) is a located
    error rather than a silently different op."""
    from convdsl.errors import ModelImportError

    g = _program(body, "N, 3, 32")
    if change is None:
        def edit(m):
            next(n for n in m.graph.node if n.op_type == pick[0]).op_type = "Sin"
    else:
        edit = _edit_constant(pick, change)
    with pytest.raises(ModelImportError, match=r"s/"):
        _back(g, tmp_path, edit)
