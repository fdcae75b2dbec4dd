"""quantize: post-training int8 (and cast: fp16/bf16).

Structure (which ops remain, fused relus, int8 parameters, boundaries), numbers (int8 accuracy
within one point of float on digits; the torch simulation equal, bit for bit, to an independent
NumPy reference with int64 accumulation; TVM's real int8 kernels equal to the torch simulation),
calibration methods, per-layer float config, the printer round trip, the int8 pipeline and the
command line.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convdsl.api import load_graph
from convdsl.backends.torch import build_module
from convdsl.errors import ConvDSLError, UsageError
from convdsl.ir.graph import Graph, Value
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.ops.quant import QRANGE, qparams_for_range, quantize_bias, quantize_weight
from convdsl.ir.optable import tuple_n
from convdsl.lang.printer import print_graph
from convdsl.ir.verify import verify
from convdsl.ir.weights import load_weights, save_weights
from convdsl.lang.elaborate import elaborate
from convdsl.passes import run_passes
from convdsl.passes.calibrate import Stats, clip_range, observe
from convdsl.passes.cast import cast, to_bf16
from convdsl.passes.quantize import (bias_limit, quantize, quantize_weight_and_bias, quantize_with_report,
                                     weight_bits_for_cpu)
from convdsl.train import calibration_batches

DIGITS = str(Path(__file__).resolve().parents[2] / "examples" / "digits_cnn.cdl")
NP = {"u8": np.uint8, "i8": np.int8}

# conv variants: asymmetric "same" padding with stride, max-pool on int8, depthwise with dilation
# and no bias, grouped 1x1, flatten on int8, linear -> relu -> linear, conv1d, rank-3 linear
VARIANTS = """
network variants(x: f32[N, 4, 12, 12], s: f32[N, 6, 20]) {
    a = x | conv2d(8, 3, pad=same, stride=2) as c1 | relu | maxpool2d(2, stride=1, pad=1) as mp
    b = a | conv2d(8, 3, pad=2, dilation=2, groups=depthwise, bias=false) as dw | relu
    c = b | conv2d(16, 1, groups=2) as pw
    d = c | flatten | linear(12) as fc1 | relu | linear(5) as fc2
    e = s | conv1d(8, 5, pad=2) as c1d | relu
    f = e | permute([0, 2, 1]) | linear(7) as fc3
    return d, f
}
"""


# training the digits network once for the module takes seconds
pytestmark = pytest.mark.slow

# ---- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    """digits_cnn trained 3 epochs (seeded) on scikit-learn's digits."""
    from convdsl.train import load_dataset, train

    g = load_graph(DIGITS)
    ds = load_dataset("digits", seed=0)
    train(g, ds, epochs=3, seed=0, progress=False, build=build_module)
    return g, ds


@pytest.fixture(scope="module")
def folded(trained):
    return run_passes(trained[0], "O2")


@pytest.fixture(scope="module")
def calib():
    return calibration_batches("digits", samples=256)


@pytest.fixture(scope="module")
def quantized(folded, calib):
    return verify(quantize(folded, calib, build=build_module))


@pytest.fixture(scope="module")
def variants():
    g = verify(elaborate(VARIANTS))
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 4, 12, 12)).astype(np.float32),
                rng.standard_normal((8, 6, 20)).astype(np.float32)) for _ in range(3)]
    return g, batches


def _variant_inputs(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (1.2 * rng.standard_normal((n, 4, 12, 12)).astype(np.float32),
            rng.standard_normal((n, 6, 20)).astype(np.float32))


def probe(graph: Graph) -> Graph:
    """The graph with every node's output as a graph output."""
    p = graph.copy()
    p.outputs = [Value(n.id) for n in graph.nodes() if n.op != "input"]
    p.output_names = [v.node for v in p.outputs]
    return p


def torch_values(graph: Graph, inputs: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """Every node's output (inputs included) on the torch backend."""
    from convdsl.backends.torch import build_module

    p = probe(graph)
    with torch.no_grad():
        outs = build_module(p)(*(torch.from_numpy(x) for x in inputs))
    values = {nid: x for nid, x in zip(graph.inputs, inputs)}
    values.update({v.node: t.numpy() for v, t in zip(p.outputs, outs)})
    return values


# ---- a NumPy reference of the quantized ops (int64 accumulation, float32 requantization) -----------------
def ref_quantize(x: np.ndarray, a: dict) -> np.ndarray:
    qmin, qmax = QRANGE[a["dtype"]]
    inv = np.float32(1.0 / a["scale"])
    return np.clip(np.rint(x.astype(np.float32) * inv) + np.float32(a["zero_point"]), qmin, qmax).astype(NP[a["dtype"]])


def ref_dequantize(q: np.ndarray, a: dict) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(a["zero_point"])) * np.float32(a["scale"])


def ref_conv_acc(q: np.ndarray, w: np.ndarray, bias: np.ndarray | None, a: dict, nd: int) -> np.ndarray:
    """sum over the window of (q - in_zp) * w, in int64, zero padding in the real domain."""
    pads = conv_padding(a, list(q.shape[2:]), nd)
    x = np.pad(q.astype(np.int64) - a["in_zp"], [(0, 0), (0, 0), *pads])
    k, s, d = (tuple_n(a[n], nd) for n in ("k", "stride", "dilation"))
    groups, out, per_group = a["groups"], w.shape[0], w.shape[1]
    out_g = out // groups
    size = [(x.shape[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd)]
    acc = np.zeros((x.shape[0], out, *size), np.int64)
    for offs in itertools.product(*(range(kk) for kk in k)):
        window = tuple(slice(o * d[i], o * d[i] + s[i] * (size[i] - 1) + 1, s[i]) for i, o in enumerate(offs))
        patch = x[(slice(None), slice(None), *window)]
        for gi in range(groups):
            wg = w[(slice(gi * out_g, (gi + 1) * out_g), slice(None), *offs)].astype(np.int64)
            acc[:, gi * out_g:(gi + 1) * out_g] += np.einsum("nc...,oc->no...", patch[:, gi * per_group:(gi + 1) * per_group], wg)
    if bias is not None:
        acc += bias.astype(np.int64).reshape((1, -1) + (1,) * nd)
    return acc


def ref_linear_acc(q: np.ndarray, w: np.ndarray, bias: np.ndarray | None, a: dict) -> np.ndarray:
    acc = (q.astype(np.int64) - a["in_zp"]) @ w.astype(np.int64).T
    return acc + bias.astype(np.int64) if bias is not None else acc


def ref_requantize(acc: np.ndarray, a: dict, w_scale: np.ndarray, channel_axis: int) -> np.ndarray:
    info = np.iinfo(np.int32)
    assert info.min <= acc.min() and acc.max() <= info.max, "accumulator overflows int32"
    m = np.float64(a["in_scale"]) * w_scale.astype(np.float64)
    if a["out_dtype"] != "f32":
        m = m / np.float64(a["out_scale"])
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    y = acc.astype(np.int32).astype(np.float32) * m.astype(np.float32).reshape(shape)
    if a["out_dtype"] == "f32":
        return np.maximum(y, np.float32(0)) if a["relu"] else y
    qmin, qmax = QRANGE[a["out_dtype"]]
    lo = max(qmin, a["out_zp"]) if a["relu"] else qmin
    return np.clip(np.rint(y) + np.float32(a["out_zp"]), lo, qmax).astype(NP[a["out_dtype"]])


def reference(graph: Graph, node, x: np.ndarray) -> np.ndarray:
    a, p = node.attrs, graph.params
    if node.op == "quantize":
        return ref_quantize(x, a)
    if node.op == "dequantize":
        return ref_dequantize(x, a)
    w, ws = p[node.params["weight"]], p[node.params["w_scale"]]
    bias = p[node.params["bias"]] if "bias" in node.params else None
    if node.op == "qlinear":
        return ref_requantize(ref_linear_acc(x, w, bias, a), a, ws, -1)
    nd = int(node.op[len("qconv")])
    return ref_requantize(ref_conv_acc(x, w, bias, a, nd), a, ws, 1)


QUANT_OPS = {"quantize", "dequantize", "qconv1d", "qconv2d", "qconv3d", "qlinear"}


def check_against_reference(graph: Graph, inputs: tuple[np.ndarray, ...]) -> int:
    """Every quantized op's torch output equals the reference applied to its torch input; returns
    how many ops were checked."""
    values = torch_values(graph, inputs)
    checked = 0
    for node in graph.nodes():
        if node.op not in QUANT_OPS:
            continue
        x = values[graph.inputs_of(node.id)[0].node]
        got, want = values[node.id], reference(graph, node, x)
        assert got.dtype == want.dtype, node.id
        np.testing.assert_array_equal(got, want, err_msg=f"{node.id} ({node.op})")
        checked += 1
    return checked


# ---- structure ----------------------------------------------------------------------------------------
def test_digits_structure(quantized, folded, calib):
    ops = {n.id: n.op for n in quantized.nodes()}
    assert not {"conv2d", "linear", "batchnorm"} & set(ops.values())
    assert ops["conv1"] == ops["layer2.downsample.0"] == "qconv2d" and ops["fc"] == "qlinear"
    conv1 = quantized.node("conv1")
    assert conv1.attrs["relu"] and conv1.type.dtype == "u8"  # relu fused, requantized for the next conv
    assert "relu" not in {quantized.node(c).op for c, _ in quantized.users(Value("conv1"))}
    assert quantized.node("layer1.conv2").type.dtype == "f32"  # read by the residual add only: float out
    (src,) = quantized.inputs_of("conv1")
    assert quantized.node(src.node).op == "quantize" and quantized.inputs_of(src.node)[0].node == "image"
    assert quantized.inputs_of("layer1.conv2")[0] == Value("layer1.conv1")  # int8 straight from int8
    assert [str(t) for t in quantized.input_types()] == [str(t) for t in folded.input_types()]
    assert [str(t) for t in quantized.output_types()] == [str(t) for t in folded.output_types()]
    specs = quantized.params.specs
    assert specs["conv1.weight"].dtype == "i8" and quantized.params["conv1.weight"].dtype == np.int8
    assert specs["conv1.w_scale"].shape == (16,) and specs["conv1.bias"].dtype == "i32"
    assert quantized.params["fc.bias"].dtype == np.int32
    report = quantize_with_report(folded, calib, build=build_module).report
    assert len(report.layers) == 7 and not report.kept_float and report.to_json()["float"] == {}


def _resnet18_32():
    root = Path(DIGITS).parent
    src = (root / "resnet18.cdl").read_text().replace("224, 224", "32, 32")
    g = run_passes(load_graph(src.replace('import "blocks/', f'import "{root}/blocks/')), "O2")
    rng = np.random.default_rng(0)
    return g, [rng.standard_normal((2, 3, 32, 32)).astype(np.float32)], rng.standard_normal((1, 3, 32, 32)).astype(np.float32)


def test_residuals_read_the_int8_value():
    """A block output read by the next block's convs and by its residual add exists once, in int8: the add reads
    its dequantize (reuse_int8, the default, as ONNX QDQ graphs do); with reuse_int8=False the float value."""
    g, calib, x = _resnet18_32()
    q = verify(quantize(g, calib, build=build_module))
    adds = [n for n in q.nodes() if n.op == "add"]
    assert len(adds) == 8
    for n in adds:  # every operand of a residual add is a conv's float output or a dequantize of an int8 value
        assert {q.node(v.node).op for v in q.inputs_of(n.id)} <= {"qconv2d", "dequantize"}, n.id
    # each block output (a relu after an add) has one reader, its quantize, except the last (the pool reads it)
    relus = [n.id for n in q.nodes() if n.op == "relu"]
    assert sum(len(q.users(Value(r))) == 1 and q.node(q.users(Value(r))[0][0]).op == "quantize" for r in relus) == 7
    kept = verify(quantize(g, calib, build=build_module, reuse_int8=False))
    assert sum(q.node(v.node).op == "relu" for n in kept.nodes() if n.op == "add" for v in kept.inputs_of(n.id)) == 4
    assert check_against_reference(q, (x,)) > 20  # the simulation is still the reference arithmetic
    out, ref = torch_values(q, (x,))[q.outputs[0].node], torch_values(g, (x,))[g.outputs[0].node]
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()  # and still the float network, roughly


def test_quantize_command_float_residuals(tmp_path):
    """``convdsl quantize --float-residuals``: the residual adds read the float block outputs again."""
    from click.testing import CliRunner

    from convdsl.cli import main
    from convdsl.lang.printer import print_graph

    g, calib, _ = _resnet18_32()
    (tmp_path / "r18.cdl").write_text(print_graph(g))
    save_weights(g, tmp_path / "w.safetensors")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 3, 32, 32)).astype(np.float32), y=np.zeros(8, np.int64))
    float_reads = {}
    for flag in ([], ["--float-residuals"]):
        out = tmp_path / ("f" if flag else "q")
        r = CliRunner().invoke(main, ["quantize", str(tmp_path / "r18.cdl"), "--weights", str(tmp_path / "w.safetensors"),
                                      "--calib", str(tmp_path / "calib.npz"), "--calib-samples", "8", "-o", str(out),
                                      *flag])
        assert r.exit_code == 0, r.output
        q = load_graph(next(out.glob("*.cdl")), weights=out / "weights.safetensors")
        float_reads[bool(flag)] = sum(q.node(v.node).op == "relu" for n in q.nodes() if n.op == "add"
                                      for v in q.inputs_of(n.id))
    assert float_reads == {False: 0, True: 4}


def test_input_graph_untouched(folded, calib):
    before = {k: v.copy() for k, v in folded.params.items()}
    text = print_graph(folded)
    quantize(folded, calib[:1], build=build_module)
    assert print_graph(folded) == text
    for k, v in folded.params.items():
        np.testing.assert_array_equal(v, before[k])


def test_variants_structure(variants):
    g, batches = variants
    q = verify(quantize(g, batches, build=build_module))
    assert q.node("mp").op == "maxpool2d" and q.node("mp").type.dtype == "u8"  # runs on int8
    assert q.node("flatten").type.dtype == "u8" and q.node("permute").type.dtype == "u8"
    assert q.node("fc1").attrs["relu"] and q.node("fc1").type.dtype == "u8"
    assert q.node("fc2").type.dtype == "f32" and q.node("fc3").type.dtype == "f32"
    assert q.node("dw").attrs["groups"] == 8 and "bias" not in q.node("dw").params
    assert sum(n.op == "quantize" for n in q.nodes()) == 2  # one per network input, nothing else
    assert not any(n.op == "dequantize" for n in q.nodes())


RELU6 = """
network t(x: f32[N, 4, 10, 10]) {
    a = x | conv2d(16, 3, pad=1) as c1 | relu6
    b = a | conv2d(16, 3, pad=1, groups=depthwise) as dw | relu6
    return b | conv2d(8, 1) as pw | relu6
}
"""


def test_relu6_read_by_int8_layers_folds_into_their_clamp(monkeypatch):
    """A relu6 whose value int8 layers read is the layer's fused relu: calibrated, its range lies in [0, 6], so
    the requantization's clamp at the zero point and at qmax are its two bounds (MobileNet-V2's convs then write
    u8 themselves instead of float32 -> relu6 -> quantize). The int8 values equal the unfolded program's
    (float32 conv output, relu6, quantize) within one step, the difference being the one multiplier against
    two, and saturate where it does. A relu6 read in float (the network's output) stays."""
    from convdsl.passes import quantize as quantize_pass

    g = verify(elaborate(RELU6))
    rng = np.random.default_rng(0)
    calib = [(20 * rng.standard_normal((8, 4, 10, 10))).astype(np.float32) for _ in range(2)]  # past 6
    q, report = quantize_with_report(g, calib, build=build_module)
    q = verify(q)
    for nid in ("c1", "dw"):
        assert q.node(nid).attrs["relu"] and q.node(nid).type.dtype == "u8" and q.node(nid).attrs["out_zp"] == 0
        assert not any(q.node(c).op == "relu6" for c, _ in q.users(Value(nid)))
    assert [r["activation"] for r in report.layers] == ["relu6", "relu6", None]
    assert q.node("pw").type.dtype == "f32" and [q.node(c).op for c, _ in q.users(Value("pw"))] == ["relu6"]
    assert sum(n.op == "quantize" for n in q.nodes()) == 1  # the network input's only

    monkeypatch.setattr(quantize_pass, "FUSED_ACTIVATIONS", ("relu",))
    unfolded = verify(quantize(g, calib, build=build_module))
    assert sum(n.op == "relu6" for n in unfolded.nodes()) == 3
    x = (20 * np.random.default_rng(1).standard_normal((4, 4, 10, 10))).astype(np.float32)
    got, want = torch_values(q, (x,)), torch_values(unfolded, (x,))
    for reader in ("dw", "pw"):
        a = got[q.inputs_of(reader)[0].node].astype(np.int64)
        b = want[unfolded.inputs_of(reader)[0].node].astype(np.int64)
        assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99
        assert ((a == 255) == (b == 255)).mean() > 0.99 and (b == 0).mean() > 0.1  # relu6's bounds
        if reader == "dw":  # c1's relu6 clips a quarter of its values at 6
            assert 0.1 < (b == 255).mean() < 0.9


def test_relu6_folds_only_where_the_int8_clamps_are_its_bounds():
    """``_relu6_fold``: a range from 0 whose end maps 6 at or past qmax (every calibrated relu6 output), u8 or
    i8; not a range reaching past 6 (qmax would stand for more than 6) or below 0 (the zero point above qmin)."""
    from convdsl.passes.quantize import _relu6_fold

    assert _relu6_fold((0.0, 6.0), "u8") and _relu6_fold((0.0, 2.5), "u8") and _relu6_fold((0.0, 6.0), "i8")
    assert not _relu6_fold((0.0, 7.0), "u8") and not _relu6_fold((-0.5, 6.0), "u8")


# ---- numbers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_int8_accuracy_within_one_point(trained, folded, calib, method, record_property):
    from convdsl.train import evaluate

    g, ds = trained
    q = quantize(folded, calib, method=method, build=build_module)
    acc_float = evaluate(g, ds, build=build_module)["accuracy"]
    acc_int8 = evaluate(q, ds, build=build_module)["accuracy"]
    record_property("accuracy", {"float": acc_float, "int8": acc_int8})
    print(f"digits_cnn ({method}): float {100 * acc_float:.2f}%, int8 {100 * acc_int8:.2f}%")
    assert acc_float > 0.85  # trained, so the comparison means something
    assert acc_int8 >= acc_float - 0.01


def test_torch_simulation_equals_numpy_reference_on_digits(quantized, trained):
    x = trained[1].x_val[:64]
    assert check_against_reference(quantized, (x,)) == 11  # 3 quantize, 7 quantized layers, 1 dequantize


@pytest.mark.parametrize("options", [{}, {"act_dtype": "i8", "weight_bits": 4, "method": "mse"}],
                         ids=["u8", "i8-w4"])
def test_torch_simulation_equals_numpy_reference_on_variants(variants, options):
    g, batches = variants
    q = verify(quantize(g, batches, **options, build=build_module))
    assert check_against_reference(q, _variant_inputs()) == 9


def test_int8_outputs_close_to_float(variants):
    g, batches = variants
    from convdsl.backends.torch import build_module

    q = quantize(g, batches, build=build_module)
    xs = tuple(torch.from_numpy(x) for x in _variant_inputs())
    with torch.no_grad():
        for a, b in zip(build_module(g)(*xs), build_module(q)(*xs)):
            assert float((a - b).abs().max()) <= 0.1 * float(a.abs().max())


def test_weight_and_bias_quantization():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] = 0.0
    q, s = quantize_weight(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s[2] == 1.0 and not q[2].any()
    for c in (0, 1, 3):
        assert np.abs(q[c]).max() == 127  # the largest weight maps to +-127, symmetric
        np.testing.assert_allclose(q[c] * s[c], w[c], atol=s[c] / 2 + 1e-7)
    q4, s4 = quantize_weight(w, bits=4)
    assert np.abs(q4).max() == 7
    b = quantize_bias(np.array([0.5, -1.0, 1e9, 0.0]), 0.1, np.array([0.01, 0.02, 0.01, 0.1], np.float32))
    assert b.dtype == np.int32 and b[0] == 500 and b[1] == -500 and b[2] == np.iinfo(np.int32).max and b[3] == 0


def test_bias_is_never_saturated():
    # a vanishing input range (in_scale 1e-10): biases of 0.03 are ~1e10 accumulator units, beyond int32;
    # those channels get a larger weight scale, so that bias + every sum of products fits int32
    rng = np.random.default_rng(0)
    w = (0.05 * rng.standard_normal((6, 40))).astype(np.float32)
    b = np.array([0.03, -0.03, 0.0, 1e-12, 0.5, -2.0], np.float32)
    in_scale = 1e-10
    q, ws, qb = quantize_weight_and_bias(w, b, in_scale)
    limit = bias_limit(40)
    assert limit == 2**31 - 1 - 40 * 255 * 127
    assert qb.dtype == np.int32 and int(np.abs(qb.astype(np.int64)).max()) <= limit
    unit = in_scale * ws.astype(np.float64)
    np.testing.assert_allclose(qb * unit, b, rtol=1e-6, atol=unit.max())  # the bias kept, to half a unit
    q0, ws0 = quantize_weight(w)
    plain = np.abs(b) / (in_scale * ws0.astype(np.float64)) <= limit
    assert list(plain) == [False, False, True, True, False, False]
    assert (ws[plain] == ws0[plain]).all() and (q[plain] == q0[plain]).all()  # untouched where it fits
    assert (ws[~plain] > ws0[~plain]).all()
    np.testing.assert_allclose(q * ws[:, None], w, atol=float(ws.max()) / 2 + 1e-9)  # weights within half a step
    q2, ws2, none = quantize_weight_and_bias(w, None, in_scale)
    assert none is None and (ws2 == ws0).all() and (q2 == q0).all()


def test_vanishing_activations_keep_their_bias():
    # a network whose input is ~1e-8: the torch simulation of the int8 graph still computes the float one
    # (with a saturated bias its output was off by the bias itself)
    g = load_graph("network t(x: f32[N, 16]) {\n    return x | linear(32) as a | relu | linear(10) as b\n}\n")
    rng = np.random.default_rng(1)
    calib = (1e-8 * rng.standard_normal((32, 16))).astype(np.float32)
    q = quantize(g, [calib], build=build_module)
    for key in ("a.bias", "b.bias"):
        assert np.abs(q.params[key].astype(np.int64)).max() < 2**31 - 1
    x = torch.from_numpy(calib[:8])
    with torch.no_grad():
        want, got = build_module(g)(x).numpy(), build_module(q)(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-2 * float(np.abs(want).max()))  # a step or two of 255


def test_qparams_for_range():
    assert qparams_for_range(0.0, 2.55) == (pytest.approx(0.01), 0)  # post-relu: zp 0, full u8 range
    scale, zp = qparams_for_range(-1.0, 3.0)
    assert round(-1.0 / scale) + zp == 0 and round(3.0 / scale) + zp == 255
    scale, zp = qparams_for_range(-1.0, 1.0, "i8")
    for v in (-1.0, 1.0):  # both ends representable to within one step
        q = np.clip(round(v / scale) + zp, -128, 127)
        assert abs((q - zp) * scale - v) <= scale
    assert qparams_for_range(0.0, 0.0) == (1.0, 0)  # an all-zero tensor
    assert qparams_for_range(0.5, 1.0)[1] == 0  # the range always contains real 0


# ---- calibration ----------------------------------------------------------------------------------------
def _stats(x: np.ndarray, bins: int = 2048) -> Stats:
    s = Stats(float(x.min()), float(x.max()), x.size, int((x == 0).sum()))
    s.hist = np.histogram(x, bins, (s.lo, s.hi))[0].astype(np.float64)
    return s


def test_calibration_methods():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(200_000), [40.0, -35.0]])  # gaussian plus two outliers
    s = _stats(x)
    assert clip_range(s, "minmax") == (x.min(), x.max())
    lo, hi = clip_range(s, "percentile", percentile=99.9)
    assert -3.6 < lo < -2.9 and 2.9 < hi < 3.6  # the 0.1% tails, not the outliers
    lo, hi = clip_range(s, "mse")
    assert x.min() < lo < -2.0 and 2.0 < hi < x.max()  # clipped: the outliers cost less than coarse steps
    lap = rng.laplace(size=200_000)
    lo, hi = clip_range(_stats(lap), "mse")
    assert 0.95 * lap.min() < lo < 0.5 * lap.min() and 0.5 * lap.max() < hi < 0.95 * lap.max()
    u = rng.uniform(-1, 1, 200_000)
    lo, hi = clip_range(_stats(u), "mse")
    assert lo < -0.95 and hi > 0.95  # nothing to gain by clipping a uniform distribution
    relu = np.maximum(rng.standard_normal(100_000), 0)
    assert clip_range(_stats(relu), "percentile")[0] == 0.0


def test_observe_runs_the_float_graph(variants):
    g, batches = variants
    ranges, stats = observe(g, [Value("x"), Value("c1")], batches, build=build_module)
    xs = np.concatenate([b[0] for b in batches])
    assert ranges[Value("x")] == (pytest.approx(float(xs.min())), pytest.approx(float(xs.max())))
    assert stats[Value("x")].count == xs.size
    with pytest.raises(UsageError, match="calibration method"):
        observe(g, [Value("x")], batches, "kl", build=build_module)


# ---- per-layer config -----------------------------------------------------------------------------------
def test_per_layer_float(folded, calib):
    per_layer = {"fc": "float", "layer2": "float", "layer2.conv1": "int8"}
    q, report = quantize_with_report(folded, calib, per_layer=per_layer, build=build_module)
    q = verify(q)
    ops = {n.id: n.op for n in q.nodes()}
    assert ops["fc"] == "linear" and q.params["fc.weight"].dtype == np.float32
    np.testing.assert_array_equal(q.params["fc.weight"], folded.params["fc.weight"])
    assert ops["layer2.conv2"] == ops["layer2.downsample.0"] == "conv2d"  # the scope
    assert ops["layer2.conv1"] == "qconv2d"  # the later, more specific entry wins
    assert q.node("layer2.conv1").type.dtype == "f32"  # its reader stays float: float output
    assert set(report.kept_float) == {"fc", "layer2.conv2", "layer2.downsample.0"}
    assert q.node(q.inputs_of("layer2.conv2")[0].node).op == "qconv2d"
    with pytest.raises(UsageError, match="names no quantizable layer"):
        quantize(folded, calib, per_layer={"fcc": "float"}, build=build_module)
    with pytest.raises(UsageError, match="float or int8"):
        quantize(folded, calib, per_layer={"fc": "int4"}, build=build_module)


# ---- printer round trip ------------------------------------------------------------------------------------
def test_printer_round_trip(quantized, trained, tmp_path):
    from convdsl.backends.torch import build_module

    text = print_graph(quantized)
    save_weights(quantized, tmp_path / "w.safetensors")
    again = verify(load_weights(elaborate(text), tmp_path / "w.safetensors"))
    assert print_graph(again) == text
    for key, spec in quantized.params.specs.items():
        assert again.params.specs[key].dtype == spec.dtype
        assert again.params[key].dtype == quantized.params[key].dtype
        np.testing.assert_array_equal(again.params[key], quantized.params[key])
    x = torch.from_numpy(trained[1].x_val[:32])
    with torch.no_grad():
        np.testing.assert_array_equal(build_module(again)(x).numpy(), build_module(quantized)(x).numpy())


def test_bad_quantized_programs_are_rejected():
    with pytest.raises(ConvDSLError, match="int8"):
        elaborate("network t(x: f32[1, 3, 8, 8]) {\n    return x | qconv2d(4, in_scale=0.1)\n}\n")
    with pytest.raises(ConvDSLError, match="zero point"):
        elaborate("network t(x: f32[1, 3]) {\n    return x | quantize(0.1, 300)\n}\n")
    with pytest.raises(ConvDSLError, match="scale"):
        elaborate("network t(x: f32[1, 3]) {\n    return x | quantize(0.0)\n}\n")


# ---- the int8 pipeline and cast ------------------------------------------------------------------------------
def test_int8_pipeline(trained, calib):
    g = trained[0].copy()
    with pytest.raises(UsageError, match="calibration"):
        run_passes(g, "int8")
    log: list = []
    q = run_passes(g, "int8", options={"quantize_int8": {"calib_batches": calib, "build": build_module}},
                  log=log)
    assert "batchnorm" not in q.ops_used() and "qconv2d" in q.ops_used()
    assert [r.name for r in log][-2:] == ["quantize_int8", "dce"]
    with pytest.raises(UsageError, match="not run"):
        run_passes(g, "O2", options={"quantize_int8": {"calib_batches": calib}})


def test_cast_f16(trained, folded):
    from convdsl.train import evaluate

    g, ds = trained
    h = verify(cast(folded, "f16"))
    assert h.node(h.inputs_of("conv1")[0].node).op == "cast" and h.node("conv1").type.dtype == "f16"
    assert [str(t) for t in h.output_types()] == [str(t) for t in folded.output_types()]
    assert h.params["conv1.weight"].dtype == np.float16 and h.params.specs["conv1.weight"].dtype == "f16"
    assert evaluate(h, ds, build=build_module)["accuracy"] >= \
        evaluate(g, ds, build=build_module)["accuracy"] - 0.01
    b = verify(cast(folded, "bf16"))
    assert b.node("fc").type.dtype == "bf16" and b.params.specs["fc.weight"].dtype == "bf16"
    np.testing.assert_array_equal(b.params["fc.weight"],
                                  torch.from_numpy(folded.params["fc.weight"]).bfloat16().float().numpy())


def test_cast_f64_is_the_float64_network(folded):
    from convdsl.verify.differential import torch_runner

    d = verify(cast(folded, "f64"))
    assert d.node("conv1").type.dtype == "f64" and d.params["conv1.weight"].dtype == np.float64
    assert [str(t) for t in d.output_types()] == [str(t) for t in folded.output_types()]  # f32 outside
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    want = torch_runner(folded)([x])[0]
    got = torch_runner(d)([x])[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(UsageError, match="f16, bf16, f64"):
        cast(folded, "i8")


def test_to_bf16_rounds_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -3.14159, 1e-40, np.inf], np.float32)
    np.testing.assert_array_equal(to_bf16(x), torch.from_numpy(x).bfloat16().float().numpy())


# ---- the command line ------------------------------------------------------------------------------------------
def test_quantize_command(trained, tmp_path):
    from click.testing import CliRunner

    from convdsl.cli import main

    g, _ = trained
    save_weights(g, tmp_path / "w.safetensors")
    out = tmp_path / "q"
    r = CliRunner().invoke(main, ["quantize", DIGITS, "--weights", str(tmp_path / "w.safetensors"), "--calib", "digits",
                                  "--calib-samples", "128", "--method", "percentile", "--keep-float", "fc",
                                  "--data", "digits", "-o", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["float"] == {"fc": "kept in float by the per-layer config"} and report["method"] == "percentile"
    assert report["accuracy"]["quantized"] >= report["accuracy"]["float"] - 0.01
    q = load_graph(out / "digits_cnn.cdl", weights=out / "weights.safetensors")
    assert q.params["conv1.weight"].dtype == np.int8 and q.node("fc").op == "linear"
    # --weight-bits auto (the default): this CPU's choice, recorded with its reason, and the weights in its range
    from convdsl.backends.tvm.targets import cpu_flags

    bits, why = weight_bits_for_cpu(cpu_flags())
    assert report["weight_bits"] == bits and report["weight_bits_reason"] == why and f"{bits}-bit" in r.output
    assert np.abs(q.params["conv1.weight"].astype(np.int64)).max() == 2 ** (bits - 1) - 1
    r = CliRunner().invoke(main, ["quantize", DIGITS, "--weights", str(tmp_path / "w.safetensors"), "--calib", "digits",
                                  "--calib-samples", "32", "--weight-bits", "5", "-o", str(tmp_path / "q5")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "q5" / "report.json").read_text())["weight_bits_reason"] == "given"
    r = CliRunner().invoke(main, ["quantize", DIGITS, "-o", str(out)])
    assert r.exit_code != 0 and "calibration" in r.output


def test_weight_bits_for_cpu():
    """8 bits where VNNI's vpdpbusd is exact; 7 on AVX2 without VNNI, where vpmaddubsw's int16 pair sums are then
    exact (2 * 255 * 63 = 32130 <= 32767; 8-bit weights: 2 * 255 * 127 = 64770 saturates)."""
    zen3 = "fpu sse2 avx avx2 fma bmi2".split()
    skylake_x = zen3 + ["avx512f", "avx512bw"]
    icelake = skylake_x + ["avx512_vnni"]
    assert weight_bits_for_cpu(icelake)[0] == 8 and weight_bits_for_cpu(zen3 + ["avx512_vnni"])[0] == 8
    assert weight_bits_for_cpu(zen3)[0] == 7 and weight_bits_for_cpu(skylake_x)[0] == 7
    assert weight_bits_for_cpu(["neon", "asimd"])[0] == 8 and weight_bits_for_cpu([])[0] == 8
    assert 2 * 255 * (2 ** 6 - 1) <= 2 ** 15 - 1 < 2 * 255 * (2 ** 7 - 1)


def test_auto_weight_bits(folded, calib):
    q, report = quantize_with_report(folded, calib[:1], weight_bits="auto", cpu_flags=["avx2", "fma"],
                                     build=build_module)
    assert report.weight_bits == 7 and "vpmaddubsw" in report.weight_bits_reason
    assert all(r["weight_bits"] == 7 for r in report.layers)
    w = [q.params[k] for k in q.params.names() if k.endswith(".weight")]
    assert w and max(int(np.abs(a.astype(np.int64)).max()) for a in w) == 63
    q8, report8 = quantize_with_report(folded, calib[:1], weight_bits="auto", cpu_flags=["avx2", "avx512_vnni"],
                                       build=build_module)
    assert report8.weight_bits == 8 and report8.to_json()["weight_bits_reason"].startswith("avx512_vnni")
    assert quantize_with_report(folded, calib[:1], build=build_module).report.weight_bits_reason == "given"
    with pytest.raises(UsageError, match="cpu_flags"):
        quantize(folded, calib[:1], weight_bits="auto", build=build_module)


# ---- TVM: real int8 kernels against the torch simulation -----------------------------------------------------
def _tvm_available() -> bool:
    try:
        from convdsl.verify.differential import tvm_available

        return tvm_available("tvm-llvm")
    except Exception:
        return False


def compare_with_tvm(graph: Graph, inputs: tuple[np.ndarray, ...]) -> dict:
    """Every node's output on tvm-llvm against the torch simulation: int8 tensors may differ by at
    most one quantization step, float ones by float rounding.  Counts how many outputs of the
    quantized ops (int8 tensors, and the float outputs of quantized layers) are bit-identical; the
    float ops between them (add, average pooling...) may sum in another order."""
    import convdsl.backends.tvm as ctvm

    p = probe(graph)
    p.symbols = {**p.symbols, "N": inputs[0].shape[0]}
    want = torch_values(graph, inputs)
    got = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(p)(*inputs)
    stats = {"tensors": 0, "elements": 0, "equal": 0, "max_int_steps": 0}
    for v, y in zip(p.outputs, got):
        y = np.asarray(y.numpy() if hasattr(y, "numpy") else y)
        ref = want[v.node]
        assert y.dtype == ref.dtype, v.node
        if y.dtype.kind in "iu":
            steps = int(np.abs(y.astype(np.int64) - ref.astype(np.int64)).max())
            stats["max_int_steps"] = max(stats["max_int_steps"], steps)
            assert steps <= 1, f"{v.node}: {steps} quantization steps apart"
        else:
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max() + 1e-30),
                                       err_msg=v.node)
        if graph.node(v.node).op in QUANT_OPS or y.dtype.kind in "iu":
            stats["tensors"] += 1
            stats["elements"] += y.size
            stats["equal"] += int((y == ref).sum())
    return stats


@pytest.mark.tvm
@pytest.mark.skipif(not _tvm_available(), reason="TVM backend not available")
def test_tvm_int8_matches_torch_simulation_on_digits(quantized, trained):
    stats = compare_with_tvm(quantized, (trained[1].x_val[:64],))
    print("digits_cnn int8, tvm-llvm vs torch simulation:", stats)
    assert stats["equal"] == stats["elements"]  # measured: bit-exact (the contract allows one step)


@pytest.mark.tvm
@pytest.mark.skipif(not _tvm_available(), reason="TVM backend not available")
@pytest.mark.parametrize("options", [{}, {"act_dtype": "i8", "weight_bits": 4}], ids=["u8", "i8-w4"])
def test_tvm_int8_matches_torch_simulation_on_variants(variants, options):
    g, batches = variants
    stats = compare_with_tvm(quantize(g, batches, **options, build=build_module), _variant_inputs())
    print("variants int8, tvm-llvm vs torch simulation:", stats)
    assert stats["equal"] == stats["elements"]


# ---- transposed convs: the conv of their stride phases, then a reshape -------------------------------------
@pytest.mark.parametrize("nd,shape,call", [
    (2, (2, 6, 5, 4), "conv_transpose2d(8, 2, stride=2)"),  # U-Net's up-conv: a 1x1 conv to 4 x 8 channels
    (2, (2, 6, 5, 4), "conv_transpose2d(8, 4, stride=2, groups=2, bias=false)"),
    (2, (2, 6, 5, 4), "conv_transpose2d(8, [2, 3], stride=[2, 3])"),
    (2, (2, 6, 5, 4), "conv_transpose2d(8, 3, stride=2, dilation=2, output_pad=1)"),
    (2, (2, 6, 5, 4), "conv_transpose2d(8, 3)"),  # stride 1: one phase, a conv padded by k - 1
    (1, (2, 6, 9), "conv_transpose1d(8, 3, stride=3)"),
    (3, (2, 6, 3, 4, 2), "conv_transpose3d(8, 2, stride=2)"),
    # crops: the output is a window of the interleaved phases
    (2, (2, 6, 5, 4), "conv_transpose2d(8, 3, stride=2, pad=1, output_pad=1)"),  # FCN-style decoders
    (2, (2, 6, 5, 4), "conv_transpose2d(8, 4, stride=2, pad=1, groups=2)"),  # DCGAN
    (2, (2, 6, 5, 4), "conv_transpose2d(8, 3, stride=2)"),  # no pad, but the last phase is one longer
    (2, (2, 6, 5, 4), "conv_transpose2d(8, [3, 5], stride=[2, 3], pad=[1, 2], dilation=[2, 1])"),
    (2, (2, 6, 5, 4), "conv_transpose2d(8, 3, pad=1)"),  # stride 1: a conv padded by k - 1, cropped
    (1, (2, 6, 9), "conv_transpose1d(8, 5, stride=2, pad=2, output_pad=1)"),
    (3, (2, 6, 3, 4, 2), "conv_transpose3d(8, 3, stride=2, pad=1, output_pad=[1, 0, 1])"),
    # a 1x1 input: a linear to the taps (a GAN generator's first layer)
    (2, (2, 6, 1, 1), "conv_transpose2d(8, 4)"),
    (1, (2, 6, 1), "conv_transpose1d(8, 3, stride=2)"),
])
def test_split_transposed_conv_computes_torchs_conv_transpose(nd, shape, call):
    from convdsl.passes.quantize import split_for_int8

    dims = ", ".join(map(str, shape[1:]))
    g = load_graph(f"network t(x: f32[N, {dims}]) {{\n    return x | {call} as up\n}}\n", seed=3)
    s = g.copy()
    assert split_for_int8(s, {}) == ["up"]
    assert "up" not in s
    assert s.node("up.taps").op == "linear" if shape[2:] == (1,) * nd else s.node("up.phases").op == f"conv{nd}d"
    a = g.node("up").attrs
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    bias = torch.from_numpy(g.params["up.bias"]) if a["bias"] else None
    want = getattr(torch.nn.functional, f"conv_transpose{nd}d")(
        x, torch.from_numpy(g.params["up.weight"]), bias, stride=tuple_n(a["stride"], nd),
        padding=tuple_n(a["pad"], nd), output_padding=tuple_n(a["output_pad"], nd), groups=a["groups"],
        dilation=tuple_n(a["dilation"], nd))
    with torch.no_grad():
        got = build_module(s).eval()(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


UPCONV = """
network upconv(x: f32[N, 8, 6, 5]) {
    a = x | conv2d(16, 3, pad=1) as c1 | relu
    u = a | conv_transpose2d(8, 2, stride=2) as up | conv2d(8, 3, pad=1) as c2 | relu
    v = a | conv_transpose2d(8, 3, stride=2, pad=1, output_pad=1) as up3 | conv2d(8, 3, pad=1) as c3
    w = a | conv_transpose2d(8, 2, stride=2, output_pad=1) as up4
    return u, v, w
}
"""


def _upconv_int8(per_layer=None):
    g = load_graph(UPCONV, seed=0)
    calib = [np.random.default_rng(i).standard_normal((8, 8, 6, 5)).astype(np.float32) for i in range(2)]
    return g, quantize_with_report(g, calib, build=build_module, per_layer=per_layer)


def test_transposed_conv_is_quantized_as_its_phases():
    g, (q, report) = _upconv_int8()
    phases = q.node("up.phases")
    assert phases.op == "qconv2d" and phases.attrs["out"] == 4 * 8 and tuple_n(phases.attrs["k"], 2) == (1, 1)
    assert q.params["up.phases.weight"].dtype == np.int8 and q.params["up.phases.w_scale"].shape == (32,)
    # the phases are interleaved on the int8 tensor, which c2 reads as it is (no quantize in between)
    shuffle = [q.node(n) for n in ("up.split_phases", "up.interleave", "up.merge_phases")]
    assert [n.op for n in shuffle] == ["reshape", "permute", "reshape"]
    assert all(n.types[0].dtype == "u8" for n in shuffle)
    assert q.inputs_of("c2") == [Value("up.merge_phases")] and q.node("c2").op == "qconv2d"
    # k 3 / stride 2 / pad 1: the phases (4 x 8 channels of 2 x 2 taps), interleaved, then a slice of H and W
    # ([1, 13) of 14 and [1, 11) of 12), all on the int8 tensor that c3 reads
    assert q.node("up3.phases").op == "qconv2d" and tuple_n(q.node("up3.phases").attrs["k"], 2) == (2, 2)
    crops = sorted((n for n in q.nodes() if n.id.startswith("up3.crop")), key=lambda n: n.seq)
    assert [(c.op, c.attrs["dim"], c.attrs["index"]) for c in crops] == [
        ("index_select", 2, tuple(range(1, 13))), ("index_select", 3, tuple(range(1, 11)))]
    assert all(c.types[0].dtype == "u8" for c in crops) and q.node("c3").op == "qconv2d"
    assert q.inputs_of("c3") == [Value(crops[-1].id)]
    # an output_pad past every input's reach (zeros appended, which int8 would hold as its zero point) stays
    # float, and says why
    assert q.node("up4").op == "conv_transpose2d" and "past the last position" in report.kept_float["up4"]
    assert {layer["node"] for layer in report.layers} >= {"up.phases", "up3.phases"}
    x = torch.from_numpy(np.random.default_rng(9).standard_normal((16, 8, 6, 5)).astype(np.float32))
    with torch.no_grad():
        refs, ys = build_module(g).eval()(x), build_module(q).eval()(x)
    # measured (u, v): mean 1.2% / 1.2% of the mean |output| (1.1% / 1.1% with both up-convs kept float), max
    # 4.5% / 5.0% of the max
    for ref, y in zip(refs[:2], ys[:2]):
        assert ((y - ref).abs().mean() / ref.abs().mean()).item() < 0.02
        assert ((y - ref).abs().max() / ref.abs().max()).item() < 0.1


def _dcgan_int8():
    g = run_passes(load_graph(Path(__file__).resolve().parents[2] / "examples" / "dcgan.cdl", seed=0),
                   "fold_bn,remove_identity,dce")
    calib = [np.random.default_rng(i).standard_normal((8, 100, 1, 1)).astype(np.float32) for i in range(2)]
    return g, quantize_with_report(g, calib, build=build_module)


def test_dcgan_is_int8_with_each_relu_on_its_phases():
    """DCGAN's generator (examples/dcgan.cdl; transposed conv -> BN -> ReLU, k 4 / stride 2 / pad 1): the
    first transposed conv (of the 1x1 latent) is a qlinear to its 4 x 4 taps, the others their phases' qconv2d,
    each ReLU moved in front of the reshapes and fused into the qlinear / qconv, so the reshapes and the crops
    (one position off each end of H and W) run on u8 tensors that the next qconv reads; outputs within 2% of the
    float generator's."""
    g, (q, report) = _dcgan_int8()
    assert report.kept_float == {}
    ups = [n.id for n in g.nodes() if n.op == "conv_transpose2d"]
    assert len(ups) == 5 and {layer["node"] for layer in report.layers} == \
        {"main.0.taps"} | {f"{u}.phases" for u in ups[1:]}
    assert not any(n.op == "relu" for n in q.nodes())  # all four fused
    assert q.node("main.0.taps").op == "qlinear" and q.node("main.0.taps").attrs["relu"]
    assert q.node("main.0.to_map").types[0].shape[1:] == (512, 4, 4) and q.node("main.0.to_map").type.dtype == "u8"
    for up in ups[1:4]:  # main.3, main.6, main.9: relu fused, then u8 all the way to the next qconv
        assert q.node(f"{up}.phases").attrs["relu"] and q.node(f"{up}.phases").types[0].dtype == "u8"
        crops = sorted((n for n in q.nodes() if n.id.startswith(f"{up}.crop")), key=lambda n: n.seq)
        size = q.node(f"{up}.merge_phases").types[0].shape[2]
        assert [(c.attrs["dim"], c.attrs["index"]) for c in crops] == [(d, tuple(range(1, size - 1))) for d in (2, 3)]
        assert all(c.types[0].dtype == "u8" for c in crops)
        assert [q.node(c).op for c, _ in q.users(Value(crops[-1].id))] == ["qconv2d"]
    z = torch.from_numpy(np.random.default_rng(5).standard_normal((16, 100, 1, 1)).astype(np.float32))
    with torch.no_grad():
        ref, y = build_module(g).eval()(z), build_module(q).eval()(z)
    # measured: mean 1.6% of the mean |output|, max 1.5% of the max
    assert ((y - ref).abs().mean() / ref.abs().mean()).item() < 0.02
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 0.03


def test_transposed_conv_phases_are_phase_major():
    """The phases' conv writes each phase's 8 channels together (channel r * 8 + o holds output channel o of phase
    r = (r_1, r_2)), so that a blocked layout's vector of 16 channels holds whole phases: interleaving them is
    then a copy of whole vectors, not a gather of every 4th channel (U-Net's int8 concat of the up-conv and its
    skip: 0.36 -> 0.09 ms alone)."""
    from convdsl.passes.quantize import split_for_int8

    g = load_graph(UPCONV, seed=0)
    s = g.copy()
    split_for_int8(s, {})
    w, b = s.params["up.phases.weight"], s.params["up.phases.bias"]  # [4 * 8, 16, 1, 1]
    wt = g.params["up.weight"]  # [16, 8, 2, 2]
    for r1, r2, o in itertools.product(range(2), range(2), range(8)):
        assert np.array_equal(w[(2 * r1 + r2) * 8 + o, :, 0, 0], wt[:, o, r1, r2])
        assert b[(2 * r1 + r2) * 8 + o] == g.params["up.bias"][o]


JOINS = """
network joins(x: f32[N, 4, 8, 8]) {
    a = x | conv2d(8, 3, pad=1) as ca | relu
    b = a | maxpool2d(2) | conv2d(16, 3, pad=1) as cb | conv_transpose2d(8, 2, stride=2) as up
    j = concat(a, b) as j
    u = j | conv2d(8, 3, pad=1) as cj
    v = concat(j, a) as n | conv2d(4, 1) as cn
    w = concat(x, a) as k | conv2d(4, 1) as ck
    r = x | conv2d(8, 1) as c6 | relu6
    y = concat(a, r) as l | conv2d(4, 1) as cl
    return u, v, w, y
}
"""


def test_concat_of_int8_layers_runs_on_int8_at_one_scale():
    """A concat whose inputs all come from quantized layers (through passthrough ops: U-Net's skip and its
    up-conv's interleaved phases) joins their int8 tensors as they are: the layers write one scale, that of
    the union of their and the concat's calibrated ranges (chained concats share it too), and the quantized
    layers after read the concat directly.  A concat with a float input (the graph input, or a relu6 that
    cannot move onto its layer once the range is widened) stays float."""
    g = load_graph(JOINS, seed=0)
    calib = [np.random.default_rng(i).standard_normal((8, 4, 8, 8)).astype(np.float32) for i in range(2)]
    q, report = quantize_with_report(g, calib, build=build_module)
    for c, inputs in (("j", ["ca", "up.merge_phases"]), ("n", ["j", "ca"])):
        assert q.node(c).op == "concat" and q.node(c).types[0].dtype == "u8"
        assert [v.node for v in q.inputs_of(c)] == inputs  # no dequantize / quantize in between
    ranges, _ = observe(g, [Value("j"), Value("n")], calib, "minmax", build=build_module)
    lo, hi = min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values())
    shared = qparams_for_range(lo, hi, "u8")
    for layer in ("ca", "up.phases"):
        assert (q.node(layer).attrs["out_scale"], q.node(layer).attrs["out_zp"]) == shared
    for reader in ("cj", "cn", "cb"):  # cb reads the maxpool of a: the shared scale too
        assert (q.node(reader).attrs["in_scale"], q.node(reader).attrs["in_zp"]) == shared
    pool = q.inputs_of("cb")[0].node
    assert q.node(pool).op == "maxpool2d" and q.inputs_of(pool) == [Value("ca")]
    # the graph input, and a relu6 (its int8 clamp is relu6's bound only at its own range), keep theirs float
    for c in ("k", "l"):
        assert q.node(c).types[0].dtype == "f32"
        assert q.node(q.inputs_of(c)[1].node).op in ("dequantize", "relu6")
    assert q.node("c6").attrs["out_dtype"] == "f32" and q.node("c6").attrs["relu"] is False
    x = torch.from_numpy(np.random.default_rng(9).standard_normal((16, 4, 8, 8)).astype(np.float32))
    with torch.no_grad():
        refs, ys = build_module(g).eval()(x), build_module(q).eval()(x)
    # measured: mean 0.7-1.2% of the mean |output|, max 0.8-1.5% of the max
    for ref, y in zip(refs, ys):
        assert ((y - ref).abs().mean() / ref.abs().mean()).item() < 0.02
        assert ((y - ref).abs().max() / ref.abs().max()).item() < 0.03


def test_transposed_conv_kept_float_by_the_per_layer_config():
    _, (q, report) = _upconv_int8({"up": "float"})
    assert q.node("up").op == "conv_transpose2d" and "up.phases" not in q
    assert report.kept_float["up"] == "kept in float by the per-layer config"
