"""quantize on transformers: mhsa and patch_embed split into quantizable parts, qlayernorm /
qgelu / qattention between the int8 layers.

Structure (what the pass makes of a small ViT, what stays float and why), numbers (the split float
graph computes what the whole ops did; the torch simulation of each new op equal, bit for bit, to
an independent NumPy implementation of convdsl/ir/ops/quant.py's arithmetic, and close to torch's
own layer_norm / gelu / scaled_dot_product_attention; the int8 network close to the float one),
and TVM's int8 build equal to the torch simulation to the bit through the whole network.
"""
from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convdsl.api import load_graph
from convdsl.backends.torch import build_module
from convdsl.ir.graph import Value
from convdsl.ir.ops.quant import (ERF_CLAMP, ERF_COEFFS, EXP2_COEFFS, EXP2_FLOOR, LN_QMAX, LOG2E, PROB_MAX,
                                  attention_constants, f32, inverse_scale, ln_constants)
from convdsl.lang.printer import print_graph
from convdsl.passes import run_passes
from convdsl.passes.quantize import ln_input_scale, quantize_with_report, split_for_int8

# a ViT in miniature: patches, class token, positions, two pre-norm encoder layers, the head on
# the class token's final state (torchvision's vision_transformer layout, as examples/blocks/vit.cdl)
VIT = """
block mlp(hidden)(x) {
    return x | linear(hidden) as "0" | gelu as "1" | linear(dim(x, -1)) as "3"
}
block encoder_layer(heads, mlp_dim)(x) {
    a = x | layernorm(eps=1e-6) as ln_1 | mhsa(heads) as self_attention
    x = x + a
    m = x | layernorm(eps=1e-6) as ln_2 | mlp(mlp_dim) as mlp
    return x + m
}
network tiny_vit(image: f32[N, 3, 32, 32], classes=10, layers=2, heads=4, hidden=64, mlp_dim=128) {
    x = image | patch_embed(hidden, 8) as conv_proj | class_token as param class_token
    x = x | pos_embed(learned) as param "encoder.pos_embedding"
    for i in range(layers) {
        x = encoder_layer(x, heads, mlp_dim) as "encoder.layers.encoder_layer_{i}"
    }
    return x | layernorm(eps=1e-6) as "encoder.ln" | select(0) | linear(classes) as "heads.head"
}
"""


def _vit(seed: int = 0):
    g = load_graph(VIT, seed=seed)
    rng = np.random.default_rng(seed)
    for key in g.params.names():  # layer norms with non-trivial affine parameters, a visible class token
        if key.endswith(("ln_1.weight", "ln_2.weight", "ln.weight")):
            g.params[key] = (1 + 0.3 * rng.standard_normal(g.params[key].shape)).astype(np.float32)
        elif key.endswith(("ln_1.bias", "ln_2.bias", "ln.bias", "class_token", "pos_embedding")):
            g.params[key] = (0.2 * rng.standard_normal(g.params[key].shape)).astype(np.float32)
    return g


def _calib(n: int = 16, seed: int = 1) -> list[np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)
    return [x[i:i + 8] for i in range(0, n, 8)]


@pytest.fixture(scope="module")
def vit():
    g = _vit()
    q, report = quantize_with_report(g, _calib(), build=build_module)
    return g, q, report


# ---- structure ----------------------------------------------------------------------------------------
def test_vit_structure(vit):
    g, q, report = vit
    ops = collections.Counter(n.op for n in q.nodes())
    assert ops["qlayernorm"] == 5 and ops["qattention"] == 2 and ops["qgelu"] == 2
    assert ops["qlinear"] == 2 * 4 + 1 and ops["qconv2d"] == 1
    for float_op in ("layernorm", "gelu", "mhsa", "packed_attention", "linear", "patch_embed", "dequantize"):
        assert ops[float_op] == 0, float_op
    assert ops["quantize"] == 1  # the image only: every other int8 tensor is written by its producer
    att = q.node("encoder.layers.encoder_layer_0.self_attention.attention")
    in_proj = q.node("encoder.layers.encoder_layer_0.self_attention.in_proj")
    assert q.inputs_of(att.id) == [Value(in_proj.id)] and in_proj.attrs["out_dtype"] == "u8"
    assert att.attrs["out_dtype"] == "u8" and att.attrs["in_scale"] == in_proj.attrs["out_scale"]
    out_proj = q.node("encoder.layers.encoder_layer_0.self_attention.out_proj")
    assert q.inputs_of(out_proj.id) == [Value(att.id)] and out_proj.attrs["out_dtype"] == "f32"
    assert q.params[f"{out_proj.id}.weight"].dtype == np.int8  # torchvision's key out_proj.weight kept
    ln = q.node("encoder.layers.encoder_layer_0.ln_2")
    assert ln.op == "qlayernorm" and q.users(Value(ln.id)) == [("encoder.layers.encoder_layer_0.mlp.0", 0)]
    assert q.node("encoder.layers.encoder_layer_0.mlp.1").op == "qgelu"
    assert q.node("encoder.layers.encoder_layer_0.mlp.0").attrs["out_dtype"] == "f32"  # qgelu reads float
    sel = next(n for n in q.nodes() if n.op == "select")
    assert q.type_of(Value(sel.id)).dtype == "u8"  # the class token selected in int8
    ops_in_report = collections.Counter(layer["op"] for layer in report.layers)
    assert ops_in_report["qlayernorm"] == 5 and ops_in_report["qattention"] == 2


def test_report_lists_the_transformer_ops(vit):
    from convdsl.cli.quantize import to_markdown

    _, q, report = vit
    ln = next(r for r in report.layers if r["op"] == "qlayernorm")
    assert ln["in"] == {"dtype": "f32", "x_scale": q.node(ln["node"]).attrs["x_scale"]}
    text = to_markdown("tiny_vit", "int8", dict(report.to_json(), params_bytes={"before": 1, "after": 1}))
    assert "| encoder.layers.encoder_layer_0.ln_1 | qlayernorm | f32 (16-bit step" in text
    assert "| encoder.layers.encoder_layer_0.mlp.1 | qgelu | f32 | u8 " in text
    assert "| encoder.layers.encoder_layer_0.self_attention.attention | qattention | " in text


def test_qlayernorm_scales_come_from_calibration(vit):
    g, q, _ = vit
    x = Value("encoder.pos_embedding")
    batches = [torch.from_numpy(b) for b in _calib()]
    probe = g.copy()
    probe.outputs, probe.output_names = [x], ["x"]
    m = build_module(probe).eval()
    with torch.no_grad():
        amax = max(float(m(b).abs().max()) for b in batches)
    ln = q.node("encoder.layers.encoder_layer_0.ln_1")
    assert ln.attrs["x_scale"] == ln_input_scale(-amax, amax) == f32(2 * amax / LN_QMAX)
    np.testing.assert_array_equal(q.params[f"{ln.id}.weight"], g.params["encoder.layers.encoder_layer_0.ln_1.weight"])


def test_float_settings_keep_the_whole_op():
    g = _vit()
    q, report = quantize_with_report(g, _calib(), build=build_module,
                                     per_layer={"encoder.layers.encoder_layer_1.self_attention": "float"})
    ops = collections.Counter(n.op for n in q.nodes())
    assert ops["mhsa"] == 1 and ops["qattention"] == 1
    # ln_1 of layer 1 feeds only the float mhsa: it stays a float layer norm, and says why
    assert q.node("encoder.layers.encoder_layer_1.ln_1").op == "layernorm"
    assert report.kept_float["encoder.layers.encoder_layer_1.ln_1"] == "no quantized layer reads its output"


def test_unsplittable_attention_stays_float():
    src = VIT.replace("mhsa(heads)", "mhsa(heads, mask=causal)")
    q = quantize_with_report(load_graph(src), _calib(), build=build_module).graph
    ops = collections.Counter(n.op for n in q.nodes())
    assert ops["mhsa"] == 2 and ops["qattention"] == 0 and ops["qlinear"] == 2 * 2 + 1


def test_printed_program_round_trips(vit, tmp_path):
    _, q, _ = vit
    from convdsl.ir.weights import load_weights, save_weights

    save_weights(q, tmp_path / "w.safetensors")
    back = load_graph(print_graph(q), weights=tmp_path / "w.safetensors")
    x = torch.from_numpy(_calib(2, seed=5)[0])
    with torch.no_grad():
        assert torch.equal(build_module(q).eval()(x), build_module(back).eval()(x))


# ---- numbers -------------------------------------------------------------------------------------------
def test_split_computes_the_whole_ops():
    g = _vit()
    s = g.copy()
    assert sorted(split_for_int8(s, {})) == ["conv_proj", "encoder.layers.encoder_layer_0.self_attention",
                                             "encoder.layers.encoder_layer_1.self_attention"]
    ops = collections.Counter(n.op for n in s.nodes())
    assert ops["packed_attention"] == 2 and ops["mhsa"] == 0 and ops["conv2d"] == 1 and ops["patch_embed"] == 0
    x = torch.from_numpy(_calib(4, seed=3)[0])
    with torch.no_grad():
        torch.testing.assert_close(build_module(s).eval()(x), build_module(g).eval()(x), rtol=1e-5, atol=1e-5)


def test_int8_network_close_to_float(vit):
    g, q, _ = vit
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((32, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        ref, y = build_module(g).eval()(x), build_module(q).eval()(x)
    rel = ((y - ref).abs().amax(1) / ref.abs().amax(1)).max().item()
    assert rel < 0.1, rel
    assert (y.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.9


# an independent NumPy implementation of convdsl/ir/ops/quant.py's docstring (float32 ndarray
# arithmetic: one rounding per ufunc call; integer sums in int64)
def np_qlayernorm(x, eps, x_scale, gamma, beta, out_scale, out_zp, qmin, qmax):
    c = x.shape[-1]
    inv, e, gq, bq = ln_constants(c, eps, x_scale, gamma, beta, out_scale)
    xi = np.clip(np.round(x * np.float32(inv)), -LN_QMAX, LN_QMAX).astype(np.int64)
    s1, s2 = xi.sum(-1, keepdims=True), (xi * xi).sum(-1, keepdims=True)
    d, v = (c * xi - s1).astype(np.float32), (c * s2 - s1 * s1).astype(np.float32)
    r = np.float32(1) / np.sqrt(v + np.float32(e))
    t = ((d * r) * gq) + bq
    return np.clip(np.round(t) + out_zp, qmin, qmax)


def np_qgelu(x, out_scale, out_zp, qmin, qmax):
    a = [np.float32(c) for c in ERF_COEFFS]
    z = np.minimum(np.abs(x) * np.float32(1 / math.sqrt(2)), np.float32(ERF_CLAMP))
    p = np.float32(1) + z * (a[0] + z * (a[1] + z * (a[2] + z * (a[3] + z * (a[4] + z * a[5])))))
    r = np.float32(1) / p
    for _ in range(4):  # (1/P)^16 by four squarings
        r = r * r
    e = np.float32(1) - r
    e = np.where(x < 0, -e, e)
    g = (x * (np.float32(1) + e)) * np.float32(0.5)
    return np.clip(np.round(g * np.float32(inverse_scale(out_scale))) + out_zp, qmin, qmax)


def np_qattention(qkv, heads, in_scale, zp, out_scale, out_zp, qmin, qmax):
    n, length, c3 = qkv.shape
    c = c3 // 3
    d = c // heads
    x = qkv.astype(np.int64) - zp
    q, k, v = (x[..., i * c:(i + 1) * c].reshape(n, length, heads, d).transpose(0, 2, 1, 3) for i in range(3))
    s = np.einsum("nhid,nhjd->nhij", q, k)
    cc, mult = attention_constants(in_scale, d, None, out_scale)
    t = (s - s.max(-1, keepdims=True)).astype(np.float32) * np.float32(cc)
    u = np.maximum(t * np.float32(LOG2E), np.float32(EXP2_FLOOR))
    e = np.floor(u)
    f = u - e
    p5 = [np.float32(c) for c in EXP2_COEFFS]
    h = f * p5[4]
    for a in p5[3::-1]:
        h = (h + a) * f
    w = np.round(((h + np.float32(1)) * np.ldexp(np.float32(1), e.astype(np.int32))) * np.float32(PROB_MAX))
    wi = w.astype(np.int64)
    a = np.einsum("nhij,nhjd->nhid", wi, v).astype(np.float32)
    y = a * (np.float32(mult) / wi.sum(-1, keepdims=True).astype(np.float32))
    y = y.transpose(0, 2, 1, 3).reshape(n, length, c)
    return y if out_scale is None else np.clip(np.round(y) + out_zp, qmin, qmax)


def _sim(src: str, *arrays):
    model = build_module(load_graph(src)).eval()
    with torch.no_grad():
        out = model(*[torch.from_numpy(a) for a in arrays])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def test_simulation_square_root_is_correctly_rounded():
    """qlayernorm's sqrt is IEEE's (LLVM's vsqrtps, numpy's); torch.sqrt with MKL is within one ulp only."""
    from convdsl.backends.torch.lower_quant import sqrt_f32

    rng = np.random.default_rng(0)
    v = np.concatenate([(rng.random(1_000_000) * 2e12).astype(np.float32), rng.random(100_000).astype(np.float32),
                        np.float32([0.0, 1.0, 4.0, 2.0, 1261192216576.0, np.finfo(np.float32).max])])
    np.testing.assert_array_equal(sqrt_f32(torch.from_numpy(v)).numpy(), np.sqrt(v))


@pytest.mark.parametrize("dtype,zp,x_scale,eps", [("u8", 128, 2e-4, 1e-6), ("i8", -3, 1e-3, 1e-5), ("u8", 77, 5e-3, 0.1)])
def test_qlayernorm_simulation_is_the_arithmetic(dtype, zp, x_scale, eps):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 9, 48)) * 3 + 1).astype(np.float32)
    x[0, 0, :5] = 200.0  # beyond the 16-bit range: clamped
    gamma, beta = (1 + rng.standard_normal(48)).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    src = f"""
network t(x: f32[2, 9, 48]) {{
    return x | qlayernorm(eps={eps}, x_scale={x_scale}, out_dtype={dtype}, out_scale=0.03, out_zp={zp}) as ln
}}
"""
    g = load_graph(src)
    g.params["ln.weight"], g.params["ln.bias"] = gamma, beta
    with torch.no_grad():
        y = build_module(g).eval()(torch.from_numpy(x)).numpy()
    qmin, qmax = (0, 255) if dtype == "u8" else (-128, 127)
    ref = np_qlayernorm(x, eps, x_scale, gamma, beta, 0.03, zp, qmin, qmax)
    np.testing.assert_array_equal(y.astype(np.float64), ref)
    # and it is a layer norm: within a step of torch's where the input is inside the 16-bit range
    ln = F.layer_norm(torch.from_numpy(x), (48,), torch.from_numpy(gamma), torch.from_numpy(beta), eps).numpy()
    expect = np.clip(ln / np.float32(0.03) + zp, qmin, qmax)
    inside = (np.abs(x) < LN_QMAX * x_scale).all(-1)
    assert np.abs(y.astype(np.float64) - expect)[inside].max() <= 0.5 + 512 * x_scale


def test_qgelu_simulation_is_the_arithmetic():
    x = np.concatenate([np.linspace(-12, 12, 4001, dtype=np.float32), [0.0, -0.0, 1e-30, -1e-30, 1e6, -1e6]])
    x = x.astype(np.float32)[None]
    y, = _sim(f"""
network t(x: f32[1, {x.shape[1]}]) {{
    return x | qgelu(out_scale=0.05, out_zp=20)
}}
""", x)
    ref = np_qgelu(x, 0.05, 20, 0, 255)
    np.testing.assert_array_equal(y.astype(np.float64), ref)
    expect = np.clip(F.gelu(torch.from_numpy(x)).numpy() / np.float32(0.05) + 20, 0, 255)
    assert np.abs(y - expect).max() <= 0.5 + 1e-3  # the erf's 3e-7 error never moves a value half a step


@pytest.mark.parametrize("heads,length,width,zp,out", [(4, 50, 32, 128, "u8"), (2, 13, 16, 3, "f32"),
                                                       (6, 197, 384, 131, "u8"), (1, 7, 8, 0, "i8")])
def test_qattention_simulation_is_the_arithmetic(heads, length, width, zp, out):
    rng = np.random.default_rng(heads + length)
    qkv = rng.integers(0, 256, (2, length, 3 * width)).astype(np.uint8)
    in_scale, out_scale, out_zp = 0.03, 0.004, (120 if out == "u8" else -5)
    extra = "" if out == "f32" else f", out_dtype={out}, out_scale={out_scale}, out_zp={out_zp}"
    src = f"""
network t(x: f32[2, {length}, {3 * width}]) {{
    return x | quantize({in_scale}, {zp}) | qattention(heads={heads}, in_scale={in_scale}, in_zp={zp}{extra})
}}
"""
    x = ((qkv.astype(np.float32) - zp) * np.float32(in_scale)).astype(np.float32)  # quantizes back to qkv
    y, = _sim(src, x)
    qmin, qmax = (0, 255) if out == "u8" else (-128, 127)
    ref = np_qattention(qkv, heads, in_scale, zp, None if out == "f32" else out_scale, out_zp, qmin, qmax)
    np.testing.assert_array_equal(y.astype(np.float64), ref.astype(np.float64))
    # and it is attention: close to torch's on the dequantized q, k, v (8-bit probabilities)
    deq = torch.from_numpy((qkv.astype(np.float32) - zp) * np.float32(in_scale))
    q, k, v = deq.view(2, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, length, width).numpy()
    if out == "f32":
        assert np.abs(y - att).max() <= 0.02 * np.abs(att).max()
    else:
        expect = np.clip(att / np.float32(out_scale) + out_zp, qmin, qmax)
        assert np.abs(y.astype(np.float32) - expect).max() <= 0.02 * np.abs(att).max() / out_scale + 0.5


# ---- TVM: the int8 build equals the simulation to the bit, through the whole network ----------------------
def test_tvm_int8_vit_equals_simulation(vit):
    tvm_backend = pytest.importorskip("convdsl.backends.tvm")
    _, q, _ = vit
    x = np.random.default_rng(11).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        sim = build_module(q).eval()(torch.from_numpy(x)).numpy()
    m = tvm_backend.backend("tvm-llvm", precision="int8", progress=False).build_module(q)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(m(x[i:i + 1])), sim[i:i + 1])
