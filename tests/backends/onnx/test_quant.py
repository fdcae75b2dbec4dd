"""int8 programs from the int8 pipeline (what `convdsl quantize` runs) export so that ONNX Runtime runs
every quantized layer with an integer kernel (QLinearConv / ConvInteger / QGemm in its profile, no float
Conv or MatMul left) and gives convdsl's int8 simulation (the torch backend) within one quantization step
at every int8 tensor; OpenVINO runs the same file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from convdsl.api import load_graph  # noqa: E402
from convdsl.backends.onnx import export_graph, session  # noqa: E402
from convdsl.backends.torch import build_module  # noqa: E402
from convdsl.backends.torch.artifact import runner as torch_runner  # noqa: E402
from convdsl.ir.graph import Value  # noqa: E402
from convdsl.passes import run_passes  # noqa: E402
from convdsl.passes.dce import dce  # noqa: E402

ROOT = Path(__file__).resolve().parents[3] / "examples"
INTEGER_KERNELS = {"QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger"}


def _int8(g, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = tuple(8 if not isinstance(d, int) else d for d in g.input_types()[0].shape)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    return run_passes(g, "int8", options={"quantize_int8": {"calib_batches": calib, "build": build_module}})


def _x(g, seed: int = 1):
    shape = tuple(4 if not isinstance(d, int) else d for d in g.input_types()[0].shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _kernels(model, x, tmp_path):
    sess = session(model, profile=str(tmp_path / "prof"))
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    prof = json.loads(Path(sess.end_profiling()).read_text())
    return out, {e["args"].get("op_name") for e in prof if e.get("cat") == "Node"}


def _cut(q, nid: str):
    """The int8 program up to node ``nid``, whose output becomes the program's output."""
    h = q.copy()
    h.outputs, h.output_names = [Value(nid, 0)], ["o"]
    return dce(h)


def _int_steps(q, nid: str, x) -> int:
    """The largest difference, in integer steps, between ONNX Runtime's and the simulation's int8 tensor ``nid``."""
    cut = _cut(q, nid)
    sess = session(export_graph(cut))
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.int32)
    want = torch_runner(cut)([x])[0].astype(np.int32)
    return int(np.abs(got - want).max())


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mobilenet"])
def test_int8_export_runs_integer_kernels_within_one_step(name, tmp_path):
    q = _int8(load_graph(ROOT / f"{name}.cdl"))
    quantized = [n for n in q.nodes() if n.op in ("qconv2d", "qlinear")]
    assert quantized and all(n.op != "conv2d" for n in q.nodes())
    assert {n.attrs["out_dtype"] for n in quantized} == {"u8", "f32"}  # both export forms are exercised
    model = export_graph(q)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    x = _x(q)
    out, kernels = _kernels(model, x, tmp_path)
    assert kernels & INTEGER_KERNELS
    # every quantized layer ran as integer arithmetic: no float convolution or matmul is left
    assert not kernels & {"Conv", "FusedConv", "MatMul", "Gemm", "FusedMatMul", "FusedGemm"}, kernels
    ref = torch_runner(q)([x])[0]
    # one quantization step of the output layer's input (the last rounding before it) bounds the output
    step = max(n.attrs["in_scale"] for n in quantized if n.id in {v.node for v in q.outputs})
    assert np.abs(out - ref).max() <= step
    # and every int8 tensor inside is within one step (1 in the integer domain) of the simulation
    for n in q.nodes():
        if n.op in ("quantize", "qconv2d") and q.node(n.id).types[0].dtype in ("u8", "i8"):
            assert _int_steps(q, n.id, x) <= 1, n.id


def test_float_output_qconv_is_the_simulation_exactly(tmp_path):
    """A qconv whose output stays float (before a residual add) is ConvInteger + bias, then
    f32(acc) * f32(in_scale * w_scale): the simulation's arithmetic, so equal bit for bit; with
    padding (in_zp pads, the real zero) and a stride."""
    g = load_graph("network n(x: f32[N, 3, 9, 9]) {\n"
                       "    y = x | conv2d(8, 3, stride=2, pad=1) as a\n"
                       "    return y + (x | conv2d(8, 1, stride=2) as b)\n}\n")
    q = _int8(g)
    assert [n.attrs["out_dtype"] for n in q.nodes() if n.op == "qconv2d"] == ["f32", "f32"]
    x = _x(q) + 1.5  # an offset input: a non-zero input zero point
    out, kernels = _kernels(export_graph(q), x, tmp_path)
    assert "ConvInteger" in kernels
    assert np.array_equal(out, torch_runner(q)([x])[0])


def test_int8_weights_are_stored_as_uint8_with_zero_point_128():
    """ONNX Runtime's uint8 x int8 kernels saturate int16 pair sums on AVX2 CPUs without VNNI;
    the export stores w + 128 as uint8 (zero point 128), the same real weights."""
    q = _int8(load_graph(ROOT / "digits_cnn.cdl"))
    model = export_graph(q)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    key = q.node("conv1").params["weight"]
    w = inits[key + ".u8"]
    assert w.dtype == np.uint8 and key not in inits
    assert np.array_equal(w.astype(np.int16) - 128, q.params[key].astype(np.int16))


def test_int8_export_runs_in_openvino(tmp_path):
    ov = pytest.importorskip("openvino")
    q = _int8(load_graph(ROOT / "digits_mobilenet.cdl"))
    f = tmp_path / "model.onnx"
    onnx.save(export_graph(q), f)
    compiled = ov.Core().compile_model(str(f), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = _x(q)
    ref = torch_runner(q)([x])[0]
    step = max(n.attrs["in_scale"] for n in q.nodes() if n.op == "qlinear")
    assert np.abs(compiled([x])[compiled.outputs[0]] - ref).max() <= step


def test_int8_transposed_conv_exports_as_an_integer_conv(tmp_path):
    """A U-Net up-conv and an FCN-style one (pad 1, output_pad 1) quantized as the qconv of their stride phases,
    int8 reshapes and (the second) int8 slices (passes/quantize.py): ONNX Runtime runs each with an integer kernel
    and no float ConvTranspose, every int8 tensor within one step of the simulation."""
    from tests.passes.test_quantize import _upconv_int8

    _, (q, _) = _upconv_int8()
    x = np.random.default_rng(2).standard_normal((2, 8, 6, 5)).astype(np.float32)
    for up, reader in (("up", "c2"), ("up3", "c3")):
        h = _cut(q, reader)  # the up-conv's path: c1 -> the phases -> the interleaving reshapes (-> crops) -> reader
        model = export_graph(h)
        out, kernels = _kernels(model, x, tmp_path)
        ops = {n.op_type for n in model.graph.node}
        assert "ConvTranspose" not in ops and ("Slice" in ops) == (up == "up3")
        assert kernels & INTEGER_KERNELS and not kernels & {"Conv", "FusedConv", "ConvTranspose"}, kernels
        assert np.abs(out - torch_runner(h)([x])[0]).max() <= q.node(reader).attrs["in_scale"]
    for nid in ("up.phases", "up.merge_phases", "up3.phases", "up3.crop_1"):  # the int8 tensors
        assert q.node(nid).types[0].dtype == "u8"
        assert _int_steps(q, nid, x) <= 1, nid


RELU_ABOVE_QMIN = """
network t(x: f32[N, 4, 8, 8]) {
    return x | quantize(0.05, 128) | qconv2d(8, 3, pad=1, in_scale=0.05, in_zp=128, out_dtype=u8, out_scale=0.02,
                                             out_zp=40, relu=true) as c | dequantize(0.02, 40)
}
"""


def test_relu_clamping_above_qmin_exports_as_an_integer_conv(tmp_path):
    """A qconv with a fused relu writing int8 at a zero point above qmin (its output range goes below 0: an int8
    concat's shared scale) exports as DQ -> Conv -> Q -> Max(., zp): ONNX Runtime runs an integer conv (a Relu
    between Conv and Q kept it float, as FusedConv), clamping at real 0, within one step of the simulation."""
    g = load_graph(RELU_ABOVE_QMIN, seed=0)
    rng = np.random.default_rng(0)
    g.params["c.weight"] = rng.integers(-60, 61, (8, 4, 3, 3)).astype(np.int8)
    g.params["c.w_scale"] = np.full(8, 0.01, np.float32)
    g.params["c.bias"] = rng.integers(-200, 200, 8).astype(np.int32)
    model = export_graph(g)
    ops = [n.op_type for n in model.graph.node]
    assert "Relu" not in ops and ops.index("Max") == ops.index("QuantizeLinear", ops.index("Conv")) + 1
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    out, kernels = _kernels(model, x, tmp_path)
    assert "QLinearConv" in kernels and not kernels & {"Conv", "FusedConv"}, kernels
    want = torch_runner(g)([x])[0]
    assert (want == 0.0).any() and (want > 0).any()  # some outputs clamped at zp (real 0), some above
    assert out.min() == 0.0 and np.abs(out - want).max() <= 0.02 * (1 + 1e-5)  # one step (QLinearConv's rounding)


def test_int8_concat_exports_as_a_concat_of_integers(tmp_path):
    """A concat of int8 layers' outputs written at one scale (passes/quantize.py: U-Net's skip and up-conv) is an
    ONNX Concat of the uint8 tensors: no DequantizeLinear before it, no QuantizeLinear after; ONNX Runtime and
    OpenVINO give every int8 tensor within one step of the simulation and the outputs within one step of the last
    layer's input."""
    from tests.passes.test_quantize import JOINS

    g = load_graph(JOINS, seed=0)
    q = _int8(g)
    x = np.random.default_rng(2).standard_normal((2, 4, 8, 8)).astype(np.float32)
    h = _cut(q, "cj")
    model = export_graph(h)
    concat, = [n for n in model.graph.node if n.op_type == "Concat"]
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    # ca: its relu as a clamp at the zero point the shared scale put above qmin; the up-conv: its phases interleaved
    assert [producers[i] for i in concat.input] == ["Max", "Reshape"]
    out, kernels = _kernels(model, x, tmp_path)
    assert kernels & INTEGER_KERNELS and not kernels & {"Conv", "FusedConv"}, kernels
    assert np.abs(out - torch_runner(h)([x])[0]).max() <= q.node("cj").attrs["in_scale"]
    for nid in ("j", "n"):
        assert q.node(nid).types[0].dtype == "u8"
        assert _int_steps(q, nid, x) <= 1, nid
    ov = pytest.importorskip("openvino")
    f = tmp_path / "model.onnx"
    onnx.save(model, f)
    compiled = ov.Core().compile_model(str(f), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert np.abs(compiled([x])[compiled.outputs[0]] - torch_runner(h)([x])[0]).max() <= q.node("cj").attrs["in_scale"]
