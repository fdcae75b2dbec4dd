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
from convdsl.passes.remove_identity import remove_identity  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "examples"
# CDL -> ONNX -> import gives the same program, compared as the IR printer's text, for every example;
# the ones that cannot are expected failures (strict: one that starts to round-trip fails the test until it
# leaves this table), each with the reason docs/interop.md gives; every example round-trips today
NOT_ROUND_TRIP: dict[str, str] = {}
EXAMPLES = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("*.cdl"), *ROOT.glob("papers/*.cdl")])


def canonical(g) -> str:
    """The IR printer's text with every name CDL makes up replaced by its position: variables in
    order of definition, and the labels of parameter-free nodes dropped (a label that names
    parameters stays, since it is the state_dict key).  Two graphs print the same iff they have the
    same ops, attributes, edges, order and parameter names.  Attribute values are compared, not how
    CDL spells them: see _resolved."""
    text = print_graph(_structural_order(_resolved(g)))
    lines = text.split("\n")[1:]
    keys = set(g.params.names())
    out, names = [], {}

    def rename(line: str) -> str:
        return re.sub(r"\b[A-Za-z_]\w*\b", lambda m: names.get(m.group(0), m.group(0)), line)

    for line in lines:
        m = re.match(r"^(\s*)(\w+(?:, \w+)*) = (.*?)(?: as ((?:param )?(?:\"[^\"]+\"|\w+)))?$", line)
        if m is None:
            out.append(rename(line))
            continue
        indent, targets, expr, label = m.groups()
        expr = rename(expr)
        for t in targets.split(", "):
            names[t] = f"v{len(names)}"
        lhs = ", ".join(names[t] for t in targets.split(", "))
        keep = label and (label.startswith("param ") or any(k.startswith(label.strip('"') + ".") for k in keys))
        out.append(f"{indent}{lhs} = {expr}" + (f" as {label}" if keep else ""))
    return "\n".join(out)


def _resolved(g):
    """A copy of ``g`` with attribute values that are spelled two ways in CDL written one way, where
    the ONNX file can hold only the value: a pooling ``stride`` equal to the window is the default
    (``maxpool2d(2, stride=2)`` is ``maxpool2d(2)``: pool_geometry resolves both to the same stride);
    transpose's dims count from the start (``transpose(-2, -1)`` of a rank-4 tensor is
    ``transpose(2, 3)``: a Transpose's perm has no negative axes); affine's scale and shift are the
    float32 numbers the f32 graph computes with (``d ** -0.5`` is 0.28867513459481287 in CDL, the file
    holds 0.28867513).  Each is one value, not two graphs."""
    import numpy as np

    from convdsl.ir.ops.pool import pool_geometry

    g = g.copy()
    for n in g.nodes():
        if n.op == "transpose":
            rank = g.in_types(n.id)[0].rank
            n.attrs["dim0"], n.attrs["dim1"] = n.attrs["dim0"] % rank, n.attrs["dim1"] % rank
        if n.op == "affine" and g.in_types(n.id)[0].dtype == "f32":
            n.attrs["scale"], n.attrs["shift"] = (float(np.float32(n.attrs[a])) for a in ("scale", "shift"))
        m = re.fullmatch(r"(?:max|avg)pool([123])d", n.op)
        if m and n.attrs.get("stride") is not None:
            nd = int(m.group(1))
            k, s, _, _ = pool_geometry(n.attrs, nd)
            if s == k:
                n.attrs["stride"] = None
    return g


def _structural_order(g):
    """A copy of ``g`` whose node order is a depth-first walk from the outputs, inputs in argument
    order: two graphs with the same nodes and edges print the same, whichever of two independent
    branches each built first (creation order is not part of the graph)."""
    g = g.copy()
    order: list[str] = []
    seen: set[str] = set()

    def visit(nid: str) -> None:
        stack = [(nid, False)]
        while stack:
            n, done = stack.pop()
            if done:
                order.append(n)
                continue
            if n in seen:
                continue
            seen.add(n)
            stack.append((n, True))
            stack.extend((v.node, False) for v in reversed(g.inputs_of(n)) if v.node not in seen)

    for i in g.inputs:
        visit(i)
    for v in g.outputs:
        visit(v.node)
    rest = [n.id for n in g.nodes() if n.id not in seen]
    for k, nid in enumerate(order + rest):
        g.node(nid).seq = k
    return g


def _example(name: str):
    """An example as a graph (a search space at its first choices, as tests/test_papers.py checks it)."""
    from convdsl.ir.verify import verify
    from convdsl.lang.elaborate import Options, elaborate_file

    return verify(elaborate_file(ROOT / name, None, Options(bind={"H": 24, "W": 24}, first_choice=True)))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=NOT_ROUND_TRIP[n]))
                                  if n in NOT_ROUND_TRIP else n for n in EXAMPLES])
def test_cdl_onnx_import_is_the_same_graph(name, tmp_path):
    """The same program back: ops, attributes, edges and parameter names (IR printer), and outputs."""
    g = _example(name)
    f = tmp_path / "net.onnx"
    onnx.save(export_graph(g), f)
    r = import_onnx(f)
    # the export is an inference graph: dropout / drop_path are not in it
    assert canonical(remove_identity(r.graph)) == canonical(remove_identity(g))
    assert sorted(g.params.names()) == sorted(r.graph.params.names())
    rng = np.random.default_rng(0)
    x = [rng.standard_normal([2 if not isinstance(d, int) else d for d in t.shape]).astype(np.float32)
         for t in g.input_types()]
    for o, ref in zip(torch_runner(r.graph)(x), torch_runner(g)(x)):
        np.testing.assert_allclose(o, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def test_canonical_compares_pool_strides_as_values():
    """The comparison's one spelling rule: a pooling stride equal to the window is the default; any
    other stride, or a different window, is a different graph."""
    from convdsl.lang.elaborate import elaborate

    def net(pool: str) -> str:
        return canonical(elaborate(f"network n(x: f32[N, 3, 8, 8]) {{\n    return x | {pool}\n}}\n", "<t>"))

    assert net("maxpool2d(2, stride=2)") == net("maxpool2d(2)") == net("maxpool2d(2, stride=[2, 2])")
    assert net("avgpool2d(3, stride=3)") == net("avgpool2d(3)")
    assert net("maxpool2d(3, stride=2)") != net("maxpool2d(3)")
    assert net("maxpool2d(2, stride=1)") != net("maxpool2d(2)")
    assert net("maxpool2d(2)") != net("avgpool2d(2)")
    assert net("transpose(-2, -1)") == net("transpose(2, 3)") != net("transpose(1, 3)")
    assert net("affine(0.28867513459481287)") == net("affine(0.28867513)") != net("affine(0.2886751)")


def _round_trip(body: str, tmp_path, shape: str = "N, 3, 6, 6"):
    """A one-statement program (``x | body``, or ``return ...`` as written) through CDL -> ONNX ->
    import: (original, imported graph)."""
    from convdsl.lang.elaborate import elaborate

    stmt = body if body.startswith("return ") else f"return x | {body}"
    g = elaborate(f"network n(x: f32[{shape}]) {{\n    {stmt}\n}}\n", "<t>")
    f = tmp_path / "n.onnx"
    onnx.save(export_graph(g), f)
    r = import_onnx(f)
    x = [np.random.default_rng(1).standard_normal([2] + [int(d) for d in shape.split(", ")[1:]]).astype(np.float32)]
    np.testing.assert_array_equal(torch_runner(r.graph)(x)[0], torch_runner(g)(x)[0])
    return g, r.graph


@pytest.mark.parametrize("body", ["rot90", "rot90(0)", "rot90(2)", "rot90(3)", "rot90(-1)", "rot90(5)",
                                  "rot90(1, dims=[3, 2])", "rot90(3, dims=[-2, -1])", "rot90(0, dims=[1, 3])",
                                  "rot90(2, dims=[1, -1])", "rot90(1, dims=[1, 2])",
                                  "flip", "flip(-1)", "flip(2)", "flip([2, 3])", "flip([1, -1])"])
def test_rot90_and_flip_come_back_as_written(body, tmp_path):
    g, back = _round_trip(body, tmp_path)
    assert canonical(back) == canonical(g)


@pytest.mark.parametrize("body", ["flip(3) | transpose(2, 3)", "flip([2, 3])", "flip(2) | permute([0, 1, 3, 2])"])
def test_a_flip_and_a_transpose_are_not_taken_for_rot90(body, tmp_path):
    g, back = _round_trip(body, tmp_path)
    assert canonical(back) == canonical(g)
    assert "rot90" not in {n.op for n in back.nodes()}


@pytest.mark.parametrize("body", ["flatten(1, 2)", "flatten(0, 1)", "flatten(0, 2)", "flatten(1, -1)"])
def test_flatten_of_any_run_comes_back(body, tmp_path):
    g, back = _round_trip(body, tmp_path)
    assert canonical(back) == canonical(g)


@pytest.mark.parametrize("call", [
    "window_attention(heads=2, window=3)",  # 8 padded to 9
    "window_attention(heads=2, window=4, shift=2)",
    'window_attention(heads=2, window=[3, 4], shift=[1, 2], scale=0.2, qkv="to_qkv", proj="merge", proj_bias=false)',
    "window_attention(heads=2, window=8, shift=4)",  # one window covers the map: the shift computes nothing
    "window_attention(heads=4, window=4, shift=2, dropout=0.1, proj_dropout=0.2)",
    "window_attention(heads=2, window=3, shift=1, v2=true)",
    "window_attention(heads=2, window=[4, 2], v2=true, qkv_bias=false)",
])
def test_window_attention_comes_back(call, tmp_path):
    """convdsl's export of window_attention (torchvision's form, the parameters as initializers) imports as
    the op written, with the same parameters (V2's key bias included); the outputs are the same."""
    g, back = _round_trip(call, tmp_path, "N, 8, 8, 16")
    assert canonical(back) == canonical(g)
    assert sorted(g.params.names()) == sorted(back.params.names())
    for k in g.params.names():
        np.testing.assert_array_equal(back.params[k], g.params[k])


def _window_file(tmp_path, call: str):
    from convdsl.lang.elaborate import elaborate

    g = elaborate(f"network n(x: f32[N, 8, 8, 16]) {{\n    return x | {call} as attn\n}}\n", "<t>")
    return export_graph(g)


def test_a_window_attention_mask_that_differs_is_a_located_error(tmp_path):
    """The shift mask is compared exactly: one entry changed is no window_attention."""
    from onnx import numpy_helper

    model = _window_file(tmp_path, "window_attention(heads=2, window=4, shift=2)")
    init = next(i for i in model.graph.initializer if len(i.dims) == 5)
    mask = numpy_helper.to_array(init).copy()
    mask.reshape(-1)[np.argmin(mask)] = -99.0
    init.CopyFrom(numpy_helper.from_array(mask, init.name))
    f = tmp_path / "n.onnx"
    onnx.save(model, f)
    with pytest.raises(ModelImportError) as e:
        import_onnx(f)
    msg = e.value.render()
    assert "'attn'" in msg and "shifted-window mask" in msg, msg


def test_a_recorded_window_shift_the_nodes_do_not_compute_is_not_used(tmp_path):
    """A doc string saying shift [1, 1] over nodes rolling by 2: the shift the nodes compute comes back."""
    model = _window_file(tmp_path, "window_attention(heads=2, window=4, shift=2)")
    for n in model.graph.node:
        n.doc_string = n.doc_string.replace('"shift": [2, 2]', '"shift": [1, 1]')
    f = tmp_path / "n.onnx"
    onnx.save(model, f)
    back = import_onnx(f).graph
    assert [n.attrs["shift"] for n in back.nodes() if n.op == "window_attention"] == [2]


def test_recorded_attributes_that_disagree_with_the_nodes_are_not_used(tmp_path):
    """A doc string edited to say k=3 over the nodes of a k=1 turn: no rot90, the nodes import as they
    compute (the reversal as index_select, permute); an init that is no choice of the op is dropped
    (the default)."""
    from convdsl.lang.elaborate import elaborate

    g = elaborate("network n(x: f32[N, 3, 6, 6]) {\n    return x | rot90 | conv2d(4, 3, init=gabor) as c\n}\n", "<t>")
    m = export_graph(g)
    for n in m.graph.node:
        n.doc_string = n.doc_string.replace('"k": 1', '"k": 3').replace('"gabor"', '"__import__"')
    f = tmp_path / "n.onnx"
    onnx.save(m, f)
    r = import_onnx(f)
    ops = [n.op for n in r.graph.nodes() if n.op != "input"]
    assert ops == ["index_select", "permute", "conv2d"]
    assert r.graph.node("c").attrs["init"] == "default"
    x = [np.random.default_rng(0).standard_normal([2, 3, 6, 6]).astype(np.float32)]
    np.testing.assert_allclose(torch_runner(r.graph)(x)[0], torch_runner(g)(x)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("body", [
    "conv2d(4, 3, init=gabor, trainable=false) as c", "conv1d(4, 3, init=orthogonal) as c",
    "layer_scale(0.5, layout=first) as g", "prelu(init=0.1) as p",
    "return x * (x | parameter([3, 1, 1], init=ones) as p)",
    "return x * (x | affine(2.0) | parameter([6], init=uniform, scale=0.5) as p)"])
def test_training_attributes_come_back(body, tmp_path):
    """init / trainable / a parameter's scale and anchor: not in an inference graph, recorded by
    convdsl's exporter (its doc strings) and given back by the importer."""
    if body.startswith("conv1d"):
        g, back = _round_trip(body, tmp_path, shape="N, 3, 12")
    else:
        g, back = _round_trip(body, tmp_path)
    assert canonical(back) == canonical(g)
    assert {k: s.trainable for k, s in back.params.specs.items()} == \
        {k: s.trainable for k, s in g.params.specs.items()}


def test_training_attribute_tables_agree():
    from convdsl.backends.onnx.export import TRAINING_ATTRS as EXPORTED
    from convdsl.importer.onnx_patterns import TRAINING_ATTRS as IMPORTED
    from convdsl.ir.ops import OPS

    assert EXPORTED == IMPORTED
    assert all(OPS[op].attr(a) is not None for op, names in EXPORTED.items() for a in names)


def test_a_parameter_placed_inside_a_pattern_imports_on_the_input(tmp_path):
    """The anchor is inside the silu pattern (sigmoid's output): no such value is imported, so the
    parameter is placed on the network input as for other exporters' files; same outputs."""
    from convdsl.lang.elaborate import elaborate

    g = elaborate("network n(x: f32[N, 3, 6, 6]) {\n    s = x | sigmoid\n    y = x * s\n"
                  "    return y + (s | parameter([3, 1, 1]) as p)\n}\n", "<t>")
    f = tmp_path / "n.onnx"
    onnx.save(export_graph(g), f)
    r = import_onnx(f)
    assert [n.op for n in r.graph.nodes() if n.op != "input"] == ["silu", "parameter", "add"]
    assert r.graph.inputs_of("p")[0].node == "x"
    x = [np.random.default_rng(0).standard_normal([2, 3, 6, 6]).astype(np.float32)]
    np.testing.assert_allclose(torch_runner(r.graph)(x)[0], torch_runner(g)(x)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("body,shape", [("global_filter", "N, 4, 6, 8"), ("global_filter", "N, 4, 5, 7"),
                                        ("global_filter(layout=nhwc)", "N, 6, 5, 3"),
                                        ("adaptive_filter(blocks=2) as f", "N, 4, 6, 8"),
                                        ("adaptive_filter(blocks=1, hidden_factor=2, sparsity=0.05, slope=0.2, "
                                         "residual=false, layout=nhwc) as f", "N, 6, 7, 4")])
def test_fft_filters_come_back_from_their_dft_matrices(body, shape, tmp_path):
    g, back = _round_trip(body, tmp_path, shape=shape)
    assert canonical(back) == canonical(g)


def test_a_wrong_dft_matrix_is_no_global_filter(tmp_path):
    """One entry of one DFT matrix changed: the nodes are not global_filter's (they import one by one,
    and a MatMul with a constant left operand is a located error)."""
    from convdsl.lang.elaborate import elaborate

    g = elaborate("network n(x: f32[N, 4, 6, 8]) {\n    return x | global_filter as f\n}\n", "<t>")
    m = export_graph(g)
    dft = next(i for i in m.graph.initializer if not i.name.startswith("f.") and len(i.dims) == 2)
    arr = onnx.numpy_helper.to_array(dft).copy()
    arr.flat[3] += 1e-3
    dft.CopyFrom(onnx.numpy_helper.from_array(arr, dft.name))
    f = tmp_path / "n.onnx"
    onnx.save(m, f)
    with pytest.raises(ModelImportError):
        import_onnx(f)


@pytest.mark.parametrize("body", ["selective_scan(4) as s", "selective_scan(4, d_conv=3) as s",
                                  "selective_scan(4, dt_rank=2, bidirectional=true) as s",
                                  "selective_scan(2, d_conv=4, bidirectional=true, dt_min=0.01, dt_max=0.2) as s"])
def test_selective_scan_comes_back_from_its_scan(body, tmp_path):
    from convdsl.lang.elaborate import elaborate

    g = elaborate(f"network n(x: f32[N, 8, 12]) {{\n    return x | {body}\n}}\n", "<t>")
    f = tmp_path / "n.onnx"
    onnx.save(export_graph(g), f)
    back = import_onnx(f).graph
    assert canonical(back) == canonical(g)
    for k in g.params.names():
        np.testing.assert_array_equal(back.params[k], g.params[k])
    x = [np.random.default_rng(0).standard_normal([2, 8, 12]).astype(np.float32)]
    np.testing.assert_allclose(torch_runner(back)(x)[0], torch_runner(g)(x)[0], rtol=1e-6, atol=1e-6)


def test_a_different_scan_step_is_no_selective_scan(tmp_path):
    """exp(dt A) replaced by sigmoid(dt A) in the Scan body: not selective_scan's step, so its nodes
    import one by one and the first with no mapping (Softplus, which convdsl has no op for) is a located
    error."""
    from convdsl.lang.elaborate import elaborate

    g = elaborate("network n(x: f32[N, 8, 12]) {\n    return x | selective_scan(4) as s\n}\n", "<t>")
    m = export_graph(g)
    scan = next(n for n in m.graph.node if n.op_type == "Scan")
    next(n for n in scan.attribute[0].g.node if n.op_type == "Exp").op_type = "Sigmoid"
    f = tmp_path / "n.onnx"
    onnx.save(m, f)
    with pytest.raises(ModelImportError, match="s/Softplus"):
        import_onnx(f)


@pytest.mark.parametrize("shape", ["N, 3, 8, 8", "N, 2, 12, 6"])
def test_pixel_unshuffle_comes_back(shape, tmp_path):
    g, back = _round_trip("pixel_unshuffle(2)", tmp_path, shape=shape)
    assert canonical(back) == canonical(g)


@pytest.mark.parametrize("k,d,g", [(3, 1, 1), (3, 2, 4), (1, 1, 2), (5, 1, 1)])
def test_dynamic_filter_comes_back(k, d, g, tmp_path):
    g_, back = _round_trip(f"return (x, x | conv2d({g * k * k}, 1) as c) | dynamic_filter({k}, dilation={d})",
                           tmp_path, shape="N, 4, 7, 6")
    assert canonical(back) == canonical(g_)


@pytest.mark.parametrize("body", ["affine(-1.0, 1.0)", "affine(2.5, shift=-0.5)", "affine(1 / 3, shift=1 / 7)",
                                  "affine(0.28867513459481287)", "affine(shift=6.103515625e-05)",
                                  "softmax", "softmax(1)", "softmax(-2)"])
def test_affine_and_softmax_come_back_as_written(body, tmp_path):
    g, back = _round_trip(body, tmp_path)
    assert canonical(back) == canonical(g)
    assert [n.op for n in back.nodes()] == [n.op for n in g.nodes()]


def test_scalars_come_back_as_the_same_float32():
    from convdsl.importer.onnx_patterns import simplest

    for v in (0.28867513459481287, 1 / 3, 6.103515625e-05, 1e-6, -2.5, 0.1):
        assert np.float32(simplest({"a": v})["a"]) == np.float32(v)
    assert simplest({"a": np.float32(1 / 3)})["a"] == 1 / 3


def test_torch_onnx_flip_imports_as_flip(tmp_path):
    torch = pytest.importorskip("torch")

    class M(torch.nn.Module):
        def forward(self, x):
            return torch.flip(x, [-1]) + torch.flip(x, [2, 3])

    x = torch.randn(2, 3, 5, 6)
    f = tmp_path / "flip.onnx"
    torch.onnx.export(M(), (x,), str(f), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    r = import_onnx(f)
    assert sorted(n.op for n in r.graph.nodes() if n.op != "input") == ["add", "flip", "flip"]
    from convdsl.backends.torch import build_module

    with torch.no_grad():
        assert torch.equal(build_module(r.graph)(x), M()(x))


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


# ---- sizes computed at run time, slices, resizes: what torch.onnx writes for everyday PyTorch -------------
def _torch_onnx(model, x, tmp_path):
    """torch.onnx's TorchScript exporter with a dynamic batch (what benchmarks/interop.py runs), then
    convdsl import; the imported program must give the model's outputs at batch 2 and 3."""
    torch = pytest.importorskip("torch")
    from convdsl.backends.torch import build_module

    f = tmp_path / "m.onnx"
    torch.onnx.export(model, (x[:1],), str(f), dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    r = import_onnx(f)
    mod = build_module(r.graph)
    for n in (2, 3):
        xn = torch.randn(n, *x.shape[1:])
        with torch.no_grad():
            a, b = model(xn), mod(xn)
        assert float((a - b).abs().max()) <= 1e-5 * max(float(a.abs().max()), 1e-6)
    return r


def _shuffle_model():
    import torch

    class Shuffle(torch.nn.Module):
        """ShuffleNet's channel shuffle and a flatten written with x.size(): Shape/Gather/Concat -> Reshape."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            x = self.conv(x)
            n, c, h, w = x.size()
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
            x = torch.nn.functional.max_pool2d(x, 2)
            return self.fc(x.view(x.size(0), -1))

    return Shuffle().eval()


def test_run_time_sizes_are_evaluated_at_import(tmp_path):
    torch = pytest.importorskip("torch")
    r = _torch_onnx(_shuffle_model(), torch.randn(1, 3, 8, 8), tmp_path)
    assert "reshape" in r.text and "Shape" not in r.text


def test_folding_into_the_batch_and_back(tmp_path):
    """MobileViT's unfold: reshape(B * C * nh, ph, nw, pw) and back; the -1 next to a multiple of the
    batch is computed, so only the batch-dependent size is left to infer."""
    torch = pytest.importorskip("torch")

    class Unfold(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            x = self.conv(x)
            b, c, h, w = x.shape
            y = x.reshape(b * c * (h // 2), 2, w // 2, 2).transpose(1, 2)
            y = y.reshape(b, c * (h // 2) * (w // 2), -1) * 2.0
            return y.reshape(b, c, h, w)

    _torch_onnx(Unfold().eval(), torch.randn(1, 3, 8, 8), tmp_path)


def test_slices_resizes_and_index_lists(tmp_path):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            a = x[:, 1:4]                                                  # Slice, contiguous: split
            b = x[:, ::2]                                                  # Slice with a step: index_select
            c = F.interpolate(a, scale_factor=2, mode="nearest")           # Resize (asymmetric, floor)
            d = F.interpolate(b, size=(12, 12), mode="bilinear", align_corners=False)
            e = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=True)
            return torch.cat([c, d, e[:, :, :12, :12]], 1)

    r = _torch_onnx(Mixed().eval(), torch.randn(1, 3, 6, 6), tmp_path)
    assert "upsample" in r.text and "index_select" in r.text


def test_a_scope_below_an_op_is_not_a_block(tmp_path):
    """timm's BatchNormAct2d is a BatchNorm2d holding its activation: in ONNX the ReLU's scope
    (bn1/act) sits below the batchnorm's own name, which cannot also be a block instance."""
    torch = pytest.importorskip("torch")

    class BNAct(torch.nn.BatchNorm2d):
        def __init__(self, c):
            super().__init__(c)
            self.act = torch.nn.ReLU()

        def forward(self, x):
            return self.act(super().forward(x))

    class Blk(torch.nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.conv = torch.nn.Conv2d(cin, 8, 3, bias=False)
            self.bn1 = BNAct(8)

        def forward(self, x):
            return self.bn1(self.conv(x))

    m = torch.nn.Sequential(Blk(3), Blk(8)).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    r = _torch_onnx(m, torch.randn(1, 3, 16, 16), tmp_path)
    assert "block " in r.text


def test_unevaluable_size_arithmetic_is_a_located_error(tmp_path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Shape", ["x"], ["s"], name="/enc/Shape"),
             helper.make_node("ConstantOfShape", ["s"], ["z"], name="/enc/ConstantOfShape"),
             helper.make_node("Add", ["x", "z"], ["y"], name="/enc/Add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    f = tmp_path / "cos.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f)
    with pytest.raises(ModelImportError) as e:
        import_onnx(f)
    assert "ConstantOfShape" in e.value.render() and "enc" in e.value.render()


@pytest.mark.parametrize("src", [
    # scope "f" holds f.a and f.b, but the unlabeled relu between them is outside it (RegNet's f.a/f.b)
    "network n(x: f32[N, 3, 8, 8]) {\n    return x | conv2d(4) as \"f.a\" | relu | conv2d(4) as \"f.b\"\n}\n",
    # scope "conv" holds conv.0 and conv.1 applied to different tensors (a ModuleList, D3Net's layers)
    "network n(x: f32[N, 3, 8, 8]) {\n    y = x | conv2d(3, pad=1) as \"conv.0\" | relu\n"
    "    return (y + x) | conv2d(4) as \"conv.1\"\n}\n",
], ids=["interleaved", "module-list"])
def test_a_name_scope_that_is_not_one_call_is_written_inline(src, tmp_path):
    g = load_graph(src)
    f = tmp_path / "net.onnx"
    onnx.save(export_graph(g), f)
    r = import_onnx(f)
    assert canonical(r.graph) == canonical(g)


def test_vit_parameters_come_back_as_their_ops(tmp_path):
    """torch.onnx writes ViT's class token as Concat(Expand(cls), x), the position table as Add and a
    layer scale as Mul with a parameter: they come back as class_token, pos_embed and layer_scale,
    keyed by the source's names (the renames listed where the key is a module's own parameter)."""
    torch = pytest.importorskip("torch")

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Conv2d(3, 8, 4, stride=4)
            self.class_token = torch.nn.Parameter(torch.randn(1, 1, 8))
            self.pos_embedding = torch.nn.Parameter(torch.randn(1, 5, 8))
            self.gamma = torch.nn.Parameter(torch.randn(8))
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            x = self.proj(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + self.pos_embedding
            return self.head(x * self.gamma)[:, 0]

    r = _torch_onnx(Toy().eval(), torch.randn(1, 3, 8, 8), tmp_path)
    for op in ("class_token", "pos_embed", "layer_scale"):
        assert re.search(rf"\| {op}\b", r.text), op
    assert r.renamed == {}
    assert set(r.weights) == set(Toy().state_dict())  # the source's keys, each named exactly (`as param`)
    assert "as param class_token" in r.text and "as param gamma" in r.text


def test_a_class_token_folded_over_a_static_batch_is_a_class_token(tmp_path):
    """ONNX Runtime's pre-processing (quant_pre_process) folds ``cls.expand(1, -1, -1)`` of a batch-1 export into
    a [1, 1, C] initializer concatenated with the patches: still ViT's class token, its values the initializer's."""
    from onnx import TensorProto, helper, numpy_helper

    cls = np.random.default_rng(0).standard_normal((1, 1, 8)).astype(np.float32)
    node = helper.make_node("Concat", ["/Expand_output_0", "x"], ["y"], name="/Concat", axis=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8])],
                              [numpy_helper.from_array(cls, "/Expand_output_0")])
    f = tmp_path / "cls.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(f))
    r = import_onnx(f)
    assert [n.op for n in r.graph.nodes() if n.op != "input"] == ["class_token"]
    x = np.random.default_rng(1).standard_normal((1, 4, 8)).astype(np.float32)
    from convdsl.verify.differential import torch_runner as run

    assert np.array_equal(run(r.graph)([x])[0], np.concatenate([cls, x], axis=1))


def test_an_erf_outside_gelus_pattern_is_erf_and_exports_back_as_erf(tmp_path):
    """An Erf on its own (ONNX Runtime's int8 quantizer rounds between GELU's steps, so the erf form no longer
    matches as a whole): convdsl's erf, the same numbers as math.erf and as ONNX Runtime on the file."""
    import math

    from onnx import TensorProto, helper

    node = helper.make_node("Erf", ["x"], ["y"], name="/act/Erf")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7])])
    f = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(f))
    r = import_onnx(f)
    assert [n.op for n in r.graph.nodes() if n.op != "input"] == ["erf"]
    x = np.linspace(-4, 4, 21, dtype=np.float32).reshape(3, 7)
    got = torch_runner(r.graph)([x])[0]
    assert np.allclose(got, np.vectorize(math.erf)(x.astype(np.float64)), rtol=0, atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    ref = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(got, ref, rtol=0, atol=1e-6)
    assert [n.op_type for n in export_graph(r.graph).graph.node if n.op_type not in ("Identity",)] == ["Erf"]


def test_opset_20_gelu(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Gelu", ["x"], ["y"], name="/act/Gelu", approximate="tanh")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    f = tmp_path / "gelu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), f)
    r = import_onnx(f)
    assert "gelu(tanh)" in r.text


def _ln2d_model(tmp_path, middle_is_output: bool):
    """Transpose -> LayerNormalization -> Transpose, as convdsl and torch.onnx write a LayerNorm2d."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="/ln/Transpose", perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "ln.weight", "ln.bias"], ["n"], name="/ln/LN", axis=-1,
                              epsilon=1e-6),
             helper.make_node("Transpose", ["n"], ["y"], name="/ln/Transpose_1", perm=[0, 3, 1, 2])]
    inits = [numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), n) for n in ("ln.weight", "ln.bias")]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, 3])]
    if middle_is_output:
        outs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, ["N", 3, 3, 4]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 3])],
                              outs, inits)
    f = tmp_path / "ln.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f)
    return import_onnx(f)


def test_layernorm2d_pattern_is_recovered_only_when_exact(tmp_path):
    r = _ln2d_model(tmp_path, middle_is_output=False)
    assert [n.op for n in r.graph.nodes() if n.op != "input"] == ["layernorm2d"]
    assert set(r.weights) == {"ln.weight", "ln.bias"}
    # the normalized channels-last tensor is also an output: the sub-graph is not one op, it imports as written
    r = _ln2d_model(tmp_path, middle_is_output=True)
    assert sorted(n.op for n in r.graph.nodes() if n.op != "input") == ["layernorm", "permute", "permute"]


def test_transpose_without_convdsl_doc_string_is_a_permute(tmp_path):
    """The doc string convdsl's exporter writes tells transpose from permute; other files get permute."""
    from onnx import TensorProto, helper

    def model(doc):
        node = helper.make_node("Transpose", ["x"], ["y"], name="t/Transpose", perm=[0, 2, 1], doc_string=doc)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 4])])
        f = tmp_path / "t.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f)
        return [n for n in import_onnx(f).graph.nodes() if n.op != "input"]

    (t,) = model("convdsl transpose")
    assert (t.op, t.attrs["dim0"], t.attrs["dim1"]) == ("transpose", 1, 2)
    (p,) = model(None)
    assert p.op == "permute" and tuple(p.attrs["dims"]) == (0, 2, 1)


def test_torch_onnx_convnext_keeps_exact_keys_on_non_leaf_modules(tmp_path):
    """torchvision's ConvNeXt (features.1.0.layer_scale beside features.1.0.block, LayerNorm2d) through
    torch.onnx: the imported program's parameters are the model's state_dict keys, so the model loads the
    compiled module's state_dict strictly.  (ViT's class token and position table through torch.onnx:
    test_vit_parameters_come_back_as_their_ops; torchvision's own ViT does not import through torch.onnx,
    its nn.MultiheadAttention computes sizes with Mod.)"""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    from convdsl.backends.torch import build_module

    torch.manual_seed(0)
    model = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    model.eval()
    r = _torch_onnx(model, torch.randn(2, 3, 32, 32), tmp_path)
    assert r.renamed == {} and "as param layer_scale" in r.text and "layernorm2d" in r.text
    assert set(r.weights) == set(model.state_dict())
    model.load_state_dict(build_module(r.graph).state_dict())


def test_einsum_as_a_matrix_product(tmp_path):
    torch = pytest.importorskip("torch")
    from convdsl.backends.torch import build_module
    from tests.interop.test_import_torch import _RelBiasAttention

    torch.manual_seed(0)
    m = _RelBiasAttention().eval()
    x = torch.randn(2, 9, 8)
    f = tmp_path / "att.onnx"
    torch.onnx.export(m, (x,), str(f), dynamo=False, do_constant_folding=False, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}})
    assert "Einsum" in {n.op_type for n in onnx.load(str(f)).graph.node}
    r = import_onnx(f)
    with torch.no_grad():
        a, b = m(x), build_module(r.graph)(x)
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


@pytest.mark.parametrize("k", [3, 4])
def test_conv_auto_pad_same(k, tmp_path):
    torch = pytest.importorskip("torch")
    from convdsl.backends.torch import build_module

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, k, padding="same"), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 9, 9)
    f = tmp_path / "same.onnx"
    torch.onnx.export(m, (x,), str(f), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    r = import_onnx(f)
    with torch.no_grad():
        a, b = m(x), build_module(r.graph)(x)
    assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def test_group_norm_through_instance_normalization(tmp_path):
    torch = pytest.importorskip("torch")
    from convdsl.backends.torch import build_module

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(1, 8), torch.nn.GroupNorm(4, 8)).eval()
    with torch.no_grad():
        for gn in m[1:]:
            gn.weight.normal_()
            gn.bias.normal_()
    x = torch.randn(2, 3, 9, 9)
    f = tmp_path / "gn.onnx"
    torch.onnx.export(m, (x,), str(f), dynamo=False, do_constant_folding=False, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}})
    assert "InstanceNormalization" in {n.op_type for n in onnx.load(str(f)).graph.node}
    r = import_onnx(f)
    with torch.no_grad():
        a, b = m(x), build_module(r.graph)(x)
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


# ---- size arithmetic outside fold(): any op on constants is evaluated (onnx_shapes.evaluate) -------------
def _pad_to_window_graph(tmp_path, of_data: bool = False):
    """x: [N, 2, 7, 5]; pad H up to a multiple of 4 with (4 - H % 4) % 4 computed from Shape (Swin's
    padding arithmetic), the pads picked by Where(Not(Less)).  of_data: Mod of the tensor itself instead."""
    from onnx import TensorProto, helper, numpy_helper

    c = {n: numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
         [("two", [2]), ("four", 4), ("zeros5", [0, 0, 0, 0, 0, 0]), ("ax", [0])]}
    if of_data:
        c["four"] = numpy_helper.from_array(np.array(4, np.float32), "four")
        nodes = [helper.make_node("Mod", ["x", "four"], ["y"], name="/blk/Mod", fmod=1)]
    else:
        nodes = [helper.make_node("Shape", ["x"], ["s"], name="/blk/Shape"),
                 helper.make_node("Gather", ["s", "two"], ["h"], name="/blk/Gather", axis=0),
                 helper.make_node("Mod", ["h", "four"], ["r"], name="/blk/Mod"),
                 helper.make_node("Sub", ["four", "r"], ["p0"], name="/blk/Sub"),
                 helper.make_node("Mod", ["p0", "four"], ["p"], name="/blk/Mod_1"),
                 helper.make_node("Concat", ["zeros5", "p", "ax"], ["pads0"], name="/blk/Concat", axis=0),
                 helper.make_node("Less", ["ax", "p"], ["lt"], name="/blk/Less"),
                 helper.make_node("Not", ["lt"], ["nlt"], name="/blk/Not"),
                 helper.make_node("Where", ["nlt", "ax", "pads0"], ["pads"], name="/blk/Where"),
                 helper.make_node("Pad", ["x", "pads"], ["y"], name="/blk/Pad")]
    out_h = 7 if of_data else 8
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, out_h, 5])],
                              initializer=list(c.values()))
    f = tmp_path / "pad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f)
    return f


def test_mod_less_not_on_sizes_fold_away(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    f = _pad_to_window_graph(tmp_path)
    r = import_onnx(f)
    assert "pad(" in r.text and "Mod" not in r.text
    x = np.random.default_rng(0).standard_normal((3, 2, 7, 5)).astype(np.float32)
    want = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = torch_runner(r.graph)([x])[0]
    assert want.shape == (3, 2, 8, 5) and np.array_equal(got, want)


def test_mod_of_tensor_data_is_a_located_error(tmp_path):
    f = _pad_to_window_graph(tmp_path, of_data=True)
    with pytest.raises(ModelImportError) as e:
        import_onnx(f)
    msg = e.value.render()
    assert "Mod" in msg and "blk" in msg and "no convdsl mapping" in msg


def test_timm_swin_through_torch_onnx(tmp_path):
    """timm's Swin: Mod in its padding arithmetic folds; the shift mask (a non-persistent buffer,
    written as a Constant node) comes back as a parameter named by its scope."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    m = timm.models.swin_transformer.SwinTransformer(img_size=56, patch_size=4, window_size=7, embed_dim=16,
                                                     depths=(2, 2), num_heads=(2, 4), num_classes=5).eval()
    r = _torch_onnx(m, torch.randn(1, 3, 56, 56), tmp_path)
    assert "attn.constant" in r.text  # the shifted blocks' mask
    assert set(m.state_dict()) <= set(r.weights)


def test_torchvision_swin_through_torch_onnx(tmp_path):
    """torchvision's Swin: the shifted blocks' attention mask is built from sizes as floats (zeros, region
    labels, then ``mask != 0``): its Equal over float constants folds at import, the outputs match."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = torchvision.models.swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2],
                                                            num_heads=[2, 4], window_size=[7, 7], num_classes=5).eval()
    r = _torch_onnx(m, torch.randn(1, 3, 56, 56), tmp_path)
    assert "Equal" in {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert set(m.state_dict()) - set(r.weights) <= {k for k in m.state_dict() if k.endswith("relative_position_index")}


def _tv_swin_v2(torch, window=(2, 2)):
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    torch.manual_seed(0)
    m = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=list(window),
                        num_classes=5, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2).eval()
    with torch.no_grad():  # torchvision zeroes the k bias and the head's bias: random values everywhere
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parametrize("window, size", [((2, 2), 32), ((3, 2), 40)])
def test_torchvision_swin_v2_through_torch_onnx(window, size, tmp_path):
    """torchvision's ShiftedWindowAttentionV2 through torch.onnx is one window_attention(v2=true) per block,
    shifted and not, with torchvision's keys: the compiled state_dict has the source's keys less the buffers
    the op recomputes, each loads the other's, outputs within 1e-5 at batch 2 and 3.  (3, 2) windows on
    40x40: padded, and a rectangular window's coordinates table and index."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from convdsl.backends.torch import build_module
    from convdsl.ir.weights import derived_buffers

    m = _tv_swin_v2(torch, window)
    r = _torch_onnx(m, torch.randn(1, 3, size, size), tmp_path)
    attn = [n for n in r.graph.nodes() if n.op == "window_attention"]
    assert [n.attrs["v2"] for n in attn] == [True] * 4 and [n.attrs["shift"] != 0 for n in attn] == [False, True] * 2
    derived = set(derived_buffers(r.graph))
    assert derived == {f"features.{i}.{j}.attn.{b}" for i in (1, 3) for j in (0, 1)
                       for b in ("relative_coords_table", "relative_position_index")}
    mod = build_module(r.graph)
    assert set(mod.state_dict()) == set(m.state_dict()) - derived
    mod.load_state_dict({k: v for k, v in m.state_dict().items() if k not in derived})
    m.load_state_dict(mod.state_dict(), strict=False)


def _edit_initializer(f, name: str, fn) -> None:
    from onnx import numpy_helper

    model = onnx.load(str(f))
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(init)), name))
    onnx.save(model, str(f))


@pytest.mark.parametrize("name, fn, says", [
    ("features.1.0.attn.relative_coords_table", lambda a: a * np.float32(1.0000001), "relative coordinates table"),
    ("features.1.0.attn.relative_position_index", lambda a: a[::-1].copy(), "relative position index"),
])
def test_a_swin_v2_attention_that_differs_is_a_located_error(name, fn, says, tmp_path):
    """The constants are compared exactly: a coordinates table one ulp off, or another index, is no
    window_attention(v2=true); the error names the module and what differs."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    m = _tv_swin_v2(torch)
    f = tmp_path / "m.onnx"
    torch.onnx.export(m, (torch.randn(1, 3, 32, 32),), str(f), dynamo=False, do_constant_folding=False,
                      input_names=["x"], dynamic_axes={"x": {0: "N"}})
    _edit_initializer(f, name, fn)
    with pytest.raises(ModelImportError) as e:
        import_onnx(f)
    msg = e.value.render()
    assert "features.1.0.attn" in msg and "ShiftedWindowAttentionV2" in msg and says in msg, msg


def test_torchvision_vit_mha_size_check_folds(tmp_path):
    """nn.MultiheadAttention's exported graph carries Mod (embed_dim % num_heads) on constants."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                             mlp_dim=32, num_classes=5).eval()
    with torch.no_grad():
        for p in m.parameters():  # the head and class token are zeros: the output would be 0 whatever is imported
            if not p.abs().max():
                p.normal_(0, 0.02)
    _torch_onnx(m, torch.randn(1, 3, 32, 32), tmp_path)
    assert "Mod" in {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}


@pytest.mark.parametrize("axis", [0, 1, 2, -1, 3])
def test_flatten_at_any_axis(axis, tmp_path):
    """ONNX Flatten(axis=k) -> [d0*..*d(k-1), dk*..]: flatten for k=1, a reshape otherwise (timm LeViT
    writes axis=2).  Reference: ONNX Runtime on the same file."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="/m/Relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="/m/Flatten", axis=axis),
             helper.make_node("Relu", ["f"], ["y"], name="/m/Relu_1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    f = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f)
    r = import_onnx(f)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    want = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = torch_runner(r.graph)([x])[0]
    assert got.shape == want.shape and np.array_equal(got, want)


def test_timm_levit_through_torch_onnx(tmp_path):
    """timm LeViT (small input): its qkv BatchNorm flattens with Flatten(axis=2); the attention-bias
    index buffers come back as index_select lists."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    m = timm.create_model("levit_128s", pretrained=False, img_size=64, num_classes=5).eval()
    with torch.no_grad():
        for p in m.parameters():
            if not p.abs().max():
                p.normal_(0, 0.02)
    _torch_onnx(m, torch.randn(1, 3, 64, 64), tmp_path)
    assert any(n.op_type == "Flatten" and n.attribute[0].i == 2 for n in onnx.load(str(tmp_path / "m.onnx")).graph.node)


def test_take_round_trips_through_onnx(tmp_path):
    """convdsl's take exports as Gather of its index initializer (`<id>.index`) and comes back as the
    same take, named as written (`as a`; `as param "b.idx"` when the key is no `<id>.index`)."""
    src = ("network n(x: f32[N, 6, 5]) {\n    y = x | take([2, 3]) as a\n"
           "    z = y | take([4], dim=3) as param \"b.idx\"\n    return z\n}\n")
    g = load_graph(src)
    g.params["a.index"] = np.array([[5, 0, 1], [2, 2, 3]], np.int64)
    g.params["b.idx"] = np.array([4, 0, 1, 1], np.int64)
    f = tmp_path / "take.onnx"
    onnx.save(export_graph(g), f)
    r = import_onnx(f)
    assert canonical(r.graph) == canonical(g)
    assert np.array_equal(r.graph.params["a.index"], g.params["a.index"])
    x = np.random.default_rng(0).standard_normal((2, 6, 5)).astype(np.float32)
    want = np.take(np.take(x, g.params["a.index"], axis=1), g.params["b.idx"], axis=-1)
    np.testing.assert_array_equal(torch_runner(r.graph)([x])[0], want)
