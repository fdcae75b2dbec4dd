"""convdsl import of .onnx files: convdsl's own exports come back as the same graph; files written
by torch.onnx.export keep the source's parameter names; bad files are clean errors."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from convdsl.api import load_graph  # noqa: E402
from convdsl.backends.onnx import export_graph  # noqa: E402
from convdsl.backends.torch.artifact import runner as torch_runner  # noqa: E402
from convdsl.errors import ModelImportError, SourceError  # noqa: E402
from convdsl.importer import import_onnx  # noqa: E402
from convdsl.lang.printer import print_graph  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "examples"
# the examples whose ops all have an ONNX import mapping today (see docs/interop.md for the rest)
ROUND_TRIP = ["digits_cnn.cdl", "digits_mobilenet.cdl", "espcn.cdl", "papers/gabor_texture.cdl", "resnet18.cdl"]


def canonical(g) -> str:
    """The IR printer's text with the names of parameter-free nodes (which CDL makes up) numbered
    in order: two graphs print the same iff they have the same ops, attributes, edges and params."""
    text = print_graph(g)
    body = text.split("\n", 1)[1]
    names = {}
    for m in re.finditer(r"as (\"[^\"]+\"|\w+)$", body, re.M):
        label = m.group(1).strip('"')
        if not any(k.startswith(label + ".") for k in g.params.names()):
            names.setdefault(m.group(1), f"v{len(names)}")
    for old, new in names.items():
        body = re.sub(rf"as {re.escape(old)}$", f"as {new}", body, flags=re.M)
    return re.sub(r"^network \w+", "network n", body, flags=re.M)


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_cdl_onnx_import_is_the_same_graph(name, tmp_path):
    g = load_graph(ROOT / name, bind={"H": 24, "W": 24})
    f = tmp_path / "net.onnx"
    onnx.save(export_graph(g), f)
    r = import_onnx(f)
    a, b = canonical(g), canonical(r.graph)
    ops_a = sorted(re.findall(r"= (\w+)\(", a))
    ops_b = sorted(re.findall(r"= (\w+)\(", b))
    assert ops_a == ops_b
    assert sorted(g.params.names()) == sorted(r.graph.params.names())
    rng = np.random.default_rng(0)
    x = [rng.standard_normal([2 if not isinstance(d, int) else d for d in t.shape]).astype(np.float32)
         for t in g.input_types()]
    for o, ref in zip(torch_runner(r.graph)(x), torch_runner(g)(x)):
        np.testing.assert_allclose(o, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def test_torch_onnx_export_keeps_the_source_keys(tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    m = torchvision.models.resnet18().eval()
    f = tmp_path / "r18.onnx"
    x = torch.randn(1, 3, 64, 64)
    torch.onnx.export(m, (x,), str(f), dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    r = import_onnx(f)
    from convdsl.backends.torch import build_module

    mod = build_module(r.graph)
    mod.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert float((m(x) - mod(x)).abs().max()) < 1e-5


def test_corrupt_onnx_is_a_source_error(tmp_path):
    f = tmp_path / "bad.onnx"
    f.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(SourceError):
        import_onnx(f)


def test_unmapped_onnx_op_names_node_and_scope(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Einsum", ["x", "x"], ["y"], name="/enc/enc.0/Einsum",
                            equation="bi,bi->bi")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    f = tmp_path / "einsum.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f)
    with pytest.raises(ModelImportError) as e:
        import_onnx(f)
    msg = e.value.render()
    assert "Einsum" in msg and "enc.0" in msg and e.value.exit_code == 11
