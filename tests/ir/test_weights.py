import numpy as np
import pytest
from safetensors.numpy import save_file

from convdsl.errors import WeightsError
from convdsl.ir.weights import derived_buffers, fit_weights, load_weights, save_weights

from ..helpers import RESNETISH, graph_of


def test_save_load_round_trip(tmp_path):
    g = graph_of(RESNETISH, seed=3)
    save_weights(g, tmp_path / "w.safetensors")
    h = graph_of(RESNETISH, seed=4)
    load_weights(h, tmp_path / "w.safetensors")
    for name in g.params.names():
        np.testing.assert_array_equal(g.params[name], h.params[name])


def test_shape_mismatch_names_the_parameter_and_changes_nothing(tmp_path):
    g = graph_of(RESNETISH)
    arrays = {k: v for k, v in g.params.items()}
    arrays["fc.weight"] = np.zeros((10, 99), np.float32)
    save_file(arrays, str(tmp_path / "bad.safetensors"))
    before = g.params["stem.conv.weight"].copy()
    with pytest.raises(WeightsError) as e:
        load_weights(g, tmp_path / "bad.safetensors")
    assert "fc.weight" in e.value.render() and "[10, 99]" in e.value.render()
    np.testing.assert_array_equal(g.params["stem.conv.weight"], before)


def test_missing_and_unexpected_names(tmp_path):
    g = graph_of(RESNETISH)
    arrays = {k: v for k, v in g.params.items() if k != "fc.bias"}
    arrays["fc.biass"] = np.zeros(10, np.float32)
    save_file(arrays, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError) as e:
        load_weights(g, tmp_path / "w.safetensors")
    text = e.value.render()
    assert "fc.biass" in text and "missing" in text


def test_pickle_checkpoints_are_refused(tmp_path):
    p = tmp_path / "w.pt"
    p.write_bytes(b"\x80\x04garbage")
    with pytest.raises(WeightsError, match="safetensors only"):
        load_weights(graph_of(RESNETISH), p)
    q = tmp_path / "w.safetensors"
    q.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_weights(graph_of(RESNETISH), q)


# ---- buffers the network derives itself (OpDef.derived) --------------------------------------------
def _window_graph(attention_call: str):
    from convdsl.ir.verify import verify
    from convdsl.lang.elaborate import elaborate

    return verify(elaborate(f"network t(x: f32[2, 8, 8, 32]) {{\n    return x | {attention_call} as attn\n}}\n", "<t>"))


@pytest.mark.parametrize("reference, call", [
    ("swin", "window_attention(heads=2, window=4)"),  # Swin stores relative_position_index flat [T*T]
    ("maxvit", 'window_attention(heads=2, window=4, scale=32 ** -0.5, qkv="to_qkv", proj="merge")'),  # [T, T]
])
def test_a_derived_buffer_in_the_file_is_checked_and_not_stored(tmp_path, reference, call):
    import torch
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    torch.manual_seed(0)
    ref = ShiftedWindowAttention(32, [4, 4], [0, 0], 2) if reference == "swin" else \
        RelativePositionalMultiHeadAttention(32, 16, 16)
    sd = {f"attn.{k}": v.detach().contiguous().numpy() for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    g = _window_graph(call)
    report = fit_weights(g, tmp_path / "w.safetensors")  # strict: torchvision's state_dict as it is
    assert report.derived == ["attn.relative_position_index"] and not report.ignored
    assert "attn.relative_position_index" not in g.params
    np.testing.assert_array_equal(g.params["attn.relative_position_bias_table"], sd["attn.relative_position_bias_table"])


def test_a_derived_buffer_that_differs_is_refused_and_changes_nothing(tmp_path):
    g = _window_graph("window_attention(heads=2, window=4)")
    h = _window_graph("window_attention(heads=2, window=[4, 2])")  # another window: another index
    arrays = {k: v for k, v in g.params.items()}
    arrays["attn.relative_position_index"] = derived_buffers(h)["attn.relative_position_index"]
    save_file(arrays, str(tmp_path / "w.safetensors"))
    before = g.params["attn.qkv.weight"].copy()
    with pytest.raises(WeightsError) as e:
        fit_weights(g, tmp_path / "w.safetensors")
    assert "differ from what the network derives" in e.value.render()
    np.testing.assert_array_equal(g.params["attn.qkv.weight"], before)
