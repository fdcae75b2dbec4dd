"""ONNX lowering of the attention ops with scale and projection names (MaxViT's, timm's)
(backends/onnx/lower_attention.py), run in onnxruntime against the torch backend."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from convdsl.backends.onnx import export_graph, session  # noqa: E402
from convdsl.backends.torch.artifact import runner as torch_runner  # noqa: E402
from convdsl.ir.verify import verify  # noqa: E402
from convdsl.lang.elaborate import elaborate  # noqa: E402

from .test_examples import assert_close  # noqa: E402


@pytest.mark.parametrize("call", [
    "window_attention(heads=2, window=4)",
    'window_attention(heads=2, window=4, scale=0.2, qkv="to_qkv", proj="merge")',
    "window_attention(heads=2, window=4, shift=2, v2=true)",  # SwinV2's: random logit scale, k bias, cpb_mlp
    "window_attention(heads=2, window=[4, 2], v2=true, qkv_bias=false)",
    "window_attention(heads=2, window=3, shift=1)",  # 8 padded to 9, shifted: the crop after the roll back
    "window_attention(heads=4, window=[3, 4], shift=[1, 2], v2=true, proj_bias=false)",
])
def test_window_attention_runs_in_onnxruntime(call):
    g = verify(elaborate(f"network t(x: f32[2, 8, 8, 16]) {{\n    return x | {call} as attn\n}}\n", "<t>"))
    rng = np.random.default_rng(0)
    for name, arr in list(g.params.items()):
        g.params[name] = rng.standard_normal(arr.shape).astype(arr.dtype)  # a bias table that matters
    x = [rng.standard_normal((2, 8, 8, 16)).astype("float32")]
    sess = session(export_graph(g))
    assert_close(sess.run(None, {sess.get_inputs()[0].name: x[0]}), torch_runner(g)(x))


@pytest.mark.parametrize("inputs,call", [
    ({"x": (2, 7, 16)}, 'x | mhsa(heads=2, qkv="qkv", proj="proj", scale=0.3)'),
    ({"x": (2, 7, 16), "c": (2, 5, 16)}, '(x, c) | cross_attention(heads=4, qkv="to_qkv", proj="merge")'),
    ({"x": (2, 7, 16), "c": (2, 5, 8)}, '(x, c) | cross_attention(heads=4, proj="o", qkv_bias=false)'),
    ({"x": (2, 8, 8, 8)}, "x | halo_attention(heads=2, block_size=4, halo=1, scale=0.7)"),
])
def test_attention_names_and_scale_run_in_onnxruntime(inputs, call):
    params = ", ".join(f"{k}: f32[{', '.join(map(str, s))}]" for k, s in inputs.items())
    g = verify(elaborate(f"network t({params}) {{\n    return {call} as attn\n}}\n", "<t>"))
    rng = np.random.default_rng(0)
    for name, arr in list(g.params.items()):
        g.params[name] = rng.standard_normal(arr.shape).astype(arr.dtype)
    xs = [rng.standard_normal(s).astype("float32") for s in inputs.values()]
    sess = session(export_graph(g))
    got = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})
    assert_close(got, torch_runner(g)(xs))


@pytest.mark.parametrize("x_type,shape,call", [
    ("f32[N, 197, 1152]", (1, 197, 1152), "packed_attention(heads=6)"),  # ViT-S, batch kept symbolic
    ("f32[2, 7, 30]", (2, 7, 30), "packed_attention(heads=5, scale=0.3)"),
    ("f32[3, 1, 9]", (3, 1, 9), "packed_attention(heads=1)"),
])
def test_packed_attention_is_torch_sdpa(x_type, shape, call):
    """mhsa between its projections: q | k | v split, per-head softmax(q k^T * scale) v, heads merged;
    against torch's scaled_dot_product_attention on the same split, and the torch backend."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    g = verify(elaborate(f"network t(x: {x_type}) {{\n    return x | {call} as attn\n}}\n", "<t>"))
    model = export_graph(g)
    onnx.checker.check_model(model, full_check=True)
    x = (2 * np.random.default_rng(1).standard_normal(shape)).astype("float32")  # logits far from uniform
    sess = session(model)
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    heads, scale = g.node("attn").attrs["heads"], g.node("attn").attrs["scale"]
    n, length, c3 = shape
    q, k, v = torch.from_numpy(x).view(n, length, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    ref = ref.transpose(1, 2).reshape(n, length, c3 // 3).numpy()
    assert_close(got, [ref])
    assert_close(got, torch_runner(g)([x]))
