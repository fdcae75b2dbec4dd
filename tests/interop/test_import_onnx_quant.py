"""convdsl import of int8 ONNX models in the QDQ format (convdsl/importer/onnx_quant.py).

The files come from ONNX Runtime's own static quantizer (``quantize_static``, QDQ format) run on a
torch.onnx export, and the reference is ONNX Runtime running that file with its graph optimizations
off (the QDQ graph's own float arithmetic: a float conv of dequantized values, then QuantizeLinear).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: E402
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

from convdsl.errors import ModelImportError  # noqa: E402
from convdsl.importer import import_onnx  # noqa: E402
from convdsl.verify.differential import torch_runner  # noqa: E402

nn = torch.nn


class SmallNet(nn.Module):
    """conv-bn-relu, a residual block with a depthwise conv, a strided conv, pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(y + self.block(y))
        return self.fc(torch.flatten(self.pool(self.down(y)), 1))


class TokenMLP(nn.Module):
    """Linear layers on [N, L, C] tokens: torch.onnx writes them as MatMul + Add (no Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class UpNet(nn.Module):
    """An encoder conv, U-Net's up-conv (2x2, stride 2) behind a ReLU, an FCN-style one (3x3, stride 2, pad 1,
    output_pad 1: its phases cropped) and a conv head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.up3 = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.up3(torch.relu(self.up(self.enc(x)))))


class PoolNet(nn.Module):
    """conv-relu, a max-pool, a conv, flatten and a classifier: the quantizer writes the pool and the flatten
    between a DequantizeLinear and a QuantizeLinear of the same scale."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2), nn.Linear(8, 10)

    def forward(self, x):
        y = self.c2(nn.functional.max_pool2d(torch.relu(self.c1(x)), 2))
        return self.fc(torch.flatten(nn.functional.adaptive_max_pool2d(y, 1), 1))


def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images[:, None] / 16.0 - 0.3).astype(np.float32)


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self.it = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self.it, None)


def _qdq_file(tmp_path: Path, model, calib: np.ndarray, *, per_channel: bool, activations=QuantType.QUInt8) -> Path:
    """torch.onnx.export of ``model`` (batchnorm statistics from ``calib``), ONNX Runtime's pre-processing
    and its static quantizer in the QDQ format, calibrated on ``calib`` one input at a time."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(calib))  # batchnorm statistics of the data
    model.eval()
    f32, pre, q = tmp_path / "f32.onnx", tmp_path / "pre.onnx", tmp_path / "int8.onnx"
    torch.onnx.export(model, (torch.from_numpy(calib[:1]),), str(f32), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, dynamo=False)
    quant_pre_process(str(f32), str(pre))
    quantize_static(str(pre), str(q), _Reader("x", [calib[i:i + 1] for i in range(len(calib))]),
                    quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=activations,
                    weight_type=QuantType.QInt8)
    return q


def _ort(path: Path, x: np.ndarray, optimized: bool = False) -> np.ndarray:
    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _output_step(path: Path) -> float:
    """The scale of the DequantizeLinear that makes the graph's output (the last layer's int8 step)."""
    m = onnx.load(str(path))
    out = m.graph.output[0].name
    node = next(n for n in m.graph.node if out in n.output)
    assert node.op_type == "DequantizeLinear", node.op_type
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    return float(inits[node.input[1]])


def _steps(got: np.ndarray, ref: np.ndarray, step: float) -> np.ndarray:
    return np.rint(np.abs(got.astype(np.float64) - ref.astype(np.float64)) / step)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("activations", [QuantType.QUInt8, QuantType.QInt8], ids=["u8", "i8"])
def test_onnxruntime_qdq_cnn_imports_as_int8_layers_and_computes_what_onnxruntime_does(tmp_path, per_channel,
                                                                                        activations):
    digits = _digits()
    q = _qdq_file(tmp_path, SmallNet(), digits[:64], per_channel=per_channel, activations=activations)
    source = Counter(n.op_type for n in onnx.load(str(q)).graph.node)
    r = import_onnx(q)
    ops = Counter(n.op for n in r.graph.nodes())
    # every Conv and the classifier run on int8 (no float conv or linear left), each output QuantizeLinear
    # absorbed by its layer
    assert ops["qconv2d"] == source["Conv"] == 4 and ops["qlinear"] == 1
    assert not ops["conv2d"] and not ops["linear"]
    assert ops["quantize"] < source["QuantizeLinear"]
    x = digits[1000:1064]
    got, ref = torch_runner(r.graph)([x])[0], _ort(q, x)
    steps = _steps(got, ref, _output_step(q))
    assert steps.max() <= 1 and (steps == 0).mean() >= 0.99, (steps.max(), (steps == 0).mean())
    assert np.abs(ref).max() > 100 * _output_step(q)  # the outputs span many steps: the check means something


def test_the_program_text_keeps_every_scale_to_the_bit(tmp_path):
    """import_onnx's graph is the printed CDL elaborated again: a scale written with fewer digits than its
    float32 value would move some roundings.  The flat graph the frontend built computes the same."""
    digits = _digits()
    q = _qdq_file(tmp_path, SmallNet(), digits[:64], per_channel=True)
    r = import_onnx(q)

    def scales(g):
        return sorted((n.attrs["in_scale"], n.attrs["out_scale"], n.attrs["in_zp"], n.attrs["out_zp"])
                      for n in g.nodes() if n.op in ("qconv2d", "qlinear"))

    assert scales(r.graph) == scales(r.flat) and len(scales(r.flat)) == 5  # every value, to the last bit
    x = digits[1000:1032]
    assert np.array_equal(torch_runner(r.graph)([x])[0], torch_runner(r.flat)([x])[0])
    assert "qconv2d(" in r.text and "in_scale=" in r.text


def test_matmul_layers_on_tokens_become_qlinear(tmp_path):
    """ONNX Runtime quantizes a MatMul's output before its bias Add (MatMul -> Q -> DQ -> Add -> Q): the
    layer is a qlinear without bias requantizing to int8, the Add stays a float add, as the file says."""
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((32, 5, 8)).astype(np.float32)
    q = _qdq_file(tmp_path, TokenMLP(), calib, per_channel=True)
    assert Counter(n.op_type for n in onnx.load(str(q)).graph.node)["MatMul"] == 2
    r = import_onnx(q)
    ops = Counter(n.op for n in r.graph.nodes())
    assert ops["qlinear"] == 2 and not ops["linear"] and not ops["matmul"]
    x = rng.standard_normal((4, 5, 8)).astype(np.float32)
    steps = _steps(torch_runner(r.graph)([x])[0], _ort(q, x), _output_step(q))
    assert steps.max() <= 1 and (steps == 0).mean() >= 0.99


def test_an_int32_bias_added_after_the_matmul_is_the_layers_bias(tmp_path):
    """DQ -> MatMul(DQ(W)) -> Add(DQ(int32 bias at scale x_scale * w_scale)) -> Q (convdsl's own export of
    qlinear): one qlinear holding the file's int32 bias, requantizing to u8."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (8, 4)).astype(np.int8)
    w_scale = rng.uniform(0.01, 0.02, 4).astype(np.float32)
    x_scale = np.float32(0.03)
    bias = rng.integers(-2000, 2000, 4).astype(np.int32)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (x_scale, "xs"), (np.uint8(128), "xz"), (w, "fc.weight_quantized"), (w_scale, "ws"),
        (np.zeros(4, np.int8), "wz"),
        (bias, "fc.bias_quantized"), ((x_scale * w_scale).astype(np.float32), "bs"), (np.zeros(4, np.int32), "bz"),
        (np.float32(0.05), "ys"), (np.uint8(100), "yz")]]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="x/Q"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="x/DQ"),
             helper.make_node("DequantizeLinear", ["fc.weight_quantized", "ws", "wz"], ["wd"], name="fc/DQw", axis=1),
             helper.make_node("DequantizeLinear", ["fc.bias_quantized", "bs", "bz"], ["bd"], name="fc/DQb", axis=0),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="fc/MatMul"),
             helper.make_node("Add", ["mm", "bd"], ["acc"], name="fc/Add"),
             helper.make_node("QuantizeLinear", ["acc", "ys", "yz"], ["yq"], name="fc/Q"),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="fc/DQ")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])], inits)
    path = tmp_path / "qlinear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    r = import_onnx(path)
    ops = Counter(n.op for n in r.graph.nodes())
    assert ops["qlinear"] == 1 and not ops["add"] and not ops["matmul"]
    layer = next(n for n in r.graph.nodes() if n.op == "qlinear")
    assert (layer.attrs["out_dtype"], layer.attrs["out_zp"], layer.attrs["in_zp"]) == ("u8", 100, 128)
    assert np.array_equal(r.graph.params["fc.bias"], bias) and np.array_equal(r.graph.params["fc.weight"], w.T)
    x = rng.standard_normal((64, 3, 8)).astype(np.float32)
    steps = _steps(torch_runner(r.graph)([x])[0], _ort(path, x), 0.05)
    assert steps.max() <= 1 and (steps == 0).mean() >= 0.99


def test_tvm_llvm_runs_the_imported_int8_program_as_the_torch_simulation(tmp_path):
    pytest.importorskip("tvm")
    from convdsl.verify.differential import tvm_runner

    digits = _digits()
    q = _qdq_file(tmp_path, SmallNet(), digits[:64], per_channel=True)
    g = import_onnx(q).graph
    x = digits[1000:1001]
    got = tvm_runner(g, precision="int8")([x])[0]
    assert np.array_equal(got, torch_runner(g)([x])[0])


def test_transposed_convs_import_as_the_int8_conv_of_their_phases(tmp_path):
    """A quantized ConvTranspose is the qconv2d of its stride phases (the form convdsl's quantize pass gives
    one), interleaved and cropped on the int8 output: no float conv_transpose left; within one output step of
    ONNX Runtime running the file, and
    tvm-llvm's build bit-exact with the torch simulation."""
    from convdsl.verify.differential import tvm_runner

    digits = _digits()
    q = _qdq_file(tmp_path, UpNet(), digits[:64], per_channel=True)
    assert Counter(n.op_type for n in onnx.load(str(q)).graph.node)["ConvTranspose"] == 2
    g = import_onnx(q).graph
    ops = Counter(n.op for n in g.nodes())
    assert ops["qconv2d"] == 4 and not ops["conv_transpose2d"] and ops["permute"] == 2 and ops["index_select"] == 2
    up = [n for n in g.nodes() if n.op == "qconv2d" and n.attrs["out"] == 8 * 4]
    # 4 phases x 8 channels; the quantizer folds the ReLU into its QuantizeLinear (u8, zero point 0: the clamp)
    assert len(up) == 2 and up[0].attrs["out_dtype"] == "u8" and up[0].attrs["out_zp"] == 0
    x = digits[1000:1064]
    got, ref = torch_runner(g)([x])[0], _ort(q, x)
    steps = _steps(got, ref, _output_step(q))
    assert steps.max() <= 1 and (steps == 0).mean() >= 0.99, (steps.max(), (steps == 0).mean())
    assert np.abs(ref).max() > 50 * _output_step(q)
    pytest.importorskip("tvm")
    assert np.array_equal(tvm_runner(g, precision="int8")([x[:1]])[0], torch_runner(g)([x[:1]])[0])


def test_max_pooling_and_flatten_between_equal_scales_run_on_the_int8_tensor(tmp_path):
    """DQ -> MaxPool -> Q and DQ -> Flatten -> Q of one scale and zero point: the op on the int8 tensor (no
    dequantize / quantize pair around it), computing what ONNX Runtime does; on tvm-llvm bit-exact with the
    torch simulation."""
    digits = _digits()
    q = _qdq_file(tmp_path, PoolNet(), digits[:64], per_channel=True)
    source = Counter(n.op_type for n in onnx.load(str(q)).graph.node)
    assert source["MaxPool"] == 2 and source["Flatten"] == 1  # torch writes the adaptive 1x1 pool as a MaxPool
    g = import_onnx(q).graph
    ops = Counter(n.op for n in g.nodes())
    pools = [n for n in g.nodes() if n.op == "maxpool2d"]
    flat = next(n for n in g.nodes() if n.op == "flatten")
    assert len(pools) == 2 and all(n.types[0].dtype == "u8" for n in pools) and flat.types[0].dtype == "u8"
    assert [g.node(g.inputs_of(n.id)[0].node).op for n in pools] == ["qconv2d", "qconv2d"]
    assert ops["quantize"] == ops["dequantize"] == 1 and ops["qlinear"] == 1, ops  # the input's, the output's
    x = digits[1000:1064]
    steps = _steps(torch_runner(g)([x])[0], _ort(q, x), _output_step(q))
    assert steps.max() <= 1 and (steps == 0).mean() >= 0.99, (steps.max(), (steps == 0).mean())
    pytest.importorskip("tvm")
    from convdsl.verify.differential import tvm_runner

    assert np.array_equal(tvm_runner(g, precision="int8")([x[:1]])[0], torch_runner(g)([x[:1]])[0])


def test_a_per_axis_scale_on_activations_is_a_located_error(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2, 4, 4])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [2], [0.1, 0.2])
    zp = helper.make_tensor("z", TensorProto.UINT8, [2], [128, 128])
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="act/QuantizeLinear", axis=1)
    path = tmp_path / "per_axis.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y], [scale, zp]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelImportError) as e:
        import_onnx(path)
    assert "act/QuantizeLinear" in str(e.value) and "per-axis" in str(e.value)
    assert e.value.hint and "per tensor" in e.value.hint


def test_operator_format_files_are_refused_with_the_format_to_use(tmp_path):
    """ConvInteger / QLinearConv (ONNX Runtime's QOperator format and dynamic quantization) have no convdsl
    op: the error says to quantize in the QDQ format."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1, 2, 2])
    w = helper.make_tensor("w", TensorProto.UINT8, [1, 1, 3, 3], [1] * 9)
    node = helper.make_node("ConvInteger", ["x", "w"], ["y"], name="c/ConvInteger")
    path = tmp_path / "op.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y], [w]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelImportError) as e:
        import_onnx(path)
    assert "ConvInteger" in str(e.value) and "QDQ" in (e.value.hint or "") and ".cdl" in e.value.hint


def test_float_weights_quantized_in_the_file_become_the_layers_int8_weights(tmp_path):
    """QuantizeLinear -> DequantizeLinear on a float initializer (how quantization-aware training exports
    its weights): the integers ONNX's QuantizeLinear gives become qconv2d's weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    w_scale = (np.abs(w).reshape(6, -1).max(1) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (np.float32(0.02), "xs"), (np.uint8(128), "xz"), (w, "conv.weight"), (w_scale, "ws"),
        (np.zeros(6, np.int8), "wz"), (np.float32(0.1), "ys"), (np.uint8(0), "yz")]]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="x/Q"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="x/DQ"),
             helper.make_node("QuantizeLinear", ["conv.weight", "ws", "wz"], ["wq"], name="w/Q", axis=0),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="w/DQ", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="conv/Relu"),
             helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["yq"], name="conv/Q"),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="y/DQ")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 6, 6])], inits)
    path = tmp_path / "qat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    r = import_onnx(path)
    conv = next(n for n in r.graph.nodes() if n.op == "qconv2d")
    assert conv.attrs["relu"] and conv.attrs["out_dtype"] == "u8" and not conv.attrs["bias"]
    want = np.clip(np.rint(w / w_scale[:, None, None, None]), -128, 127).astype(np.int8)
    assert np.array_equal(r.graph.params["conv.weight"], want)
    x = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    steps = _steps(torch_runner(r.graph)([x])[0], _ort(path, x), 0.1)
    assert steps.max() <= 1 and (steps == 0).mean() >= 0.99
