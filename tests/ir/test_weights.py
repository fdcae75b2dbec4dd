import json
import os
import subprocess
import sys
from pathlib import Path

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


# ---- the file save_weights writes ------------------------------------------------------------------
_META = {f"key{i}": f"value {i}" for i in range(8)}  # the safetensors writer's hash map ordered these per process


def test_the_same_weights_give_the_same_bytes_in_another_process(tmp_path):
    """Artifact manifests list SHA-256s: a save in a fresh process gives the same file."""
    root = Path(__file__).resolve().parents[2]
    code = ("import json, sys\n"
            "from convdsl.ir.verify import verify\n"
            "from convdsl.ir.weights import save_weights\n"
            "from convdsl.lang.elaborate import Options, elaborate\n"
            "text, out, meta = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n"
            "save_weights(verify(elaborate(text, '<test>', options=Options(seed=3))), out, metadata=meta)\n")
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = tmp_path / "child.safetensors"
    run = subprocess.run([sys.executable, "-c", code, RESNETISH, str(child), json.dumps(_META)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    save_weights(graph_of(RESNETISH, seed=3), tmp_path / "here.safetensors", metadata=_META)
    assert child.read_bytes() == (tmp_path / "here.safetensors").read_bytes()


DTYPES = ["float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "bool", "complex64"]  # all that safetensors.numpy reads back; convdsl stores bf16 in float32


def _every_dtype():
    """RESNETISH with its parameters in every dtype, one big-endian and one Fortran-ordered."""
    g = graph_of(RESNETISH, seed=3)
    for i, (name, a) in enumerate(list(g.params.items())):
        g.params[name] = np.asarray(np.arange(a.size).reshape(a.shape) % 7 - 3, DTYPES[i % len(DTYPES)])
    g.params["fc.bias"] = g.params["fc.bias"].astype(">f4")
    g.params["stem.conv.weight"] = np.asfortranarray(g.params["stem.conv.weight"])
    return g


def test_every_dtype_round_trips_through_the_safetensors_readers(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    g = _every_dtype()
    save_weights(g, tmp_path / "w.safetensors", metadata=_META)
    back = load_file(str(tmp_path / "w.safetensors"))
    assert set(back) == set(g.params.names())
    for name, a in g.params.items():
        assert back[name].dtype.name == a.dtype.name and back[name].shape == a.shape, name
        np.testing.assert_array_equal(back[name], a)
    with safe_open(str(tmp_path / "w.safetensors"), framework="np") as f:
        assert f.metadata() == {"network": g.name, **_META}


def test_with_one_metadata_key_the_file_is_the_safetensors_writers(tmp_path):
    """Same layout as safetensors.numpy.save (widest dtype first, then by name, header padded to 8
    bytes), so artifacts, whose metadata is the network's name alone, keep their digests."""
    from safetensors.numpy import save

    g = _every_dtype()
    g.name = 'n\u00e9t "0"\n\x01\\'  # escapes as serde_json writes them
    save_weights(g, tmp_path / "w.safetensors")
    theirs = save({n: a.copy(order="C") for n, a in g.params.items()}, metadata={"network": g.name})
    assert (tmp_path / "w.safetensors").read_bytes() == theirs


def test_a_dtype_safetensors_cannot_hold_leaves_the_old_file(tmp_path):
    g = graph_of(RESNETISH, seed=3)
    save_weights(g, tmp_path / "w.safetensors")
    before = (tmp_path / "w.safetensors").read_bytes()
    g.params["fc.bias"] = g.params["fc.bias"].astype(np.complex128)
    with pytest.raises(WeightsError, match="cannot save parameter 'fc.bias': dtype complex128"):
        save_weights(g, tmp_path / "w.safetensors")
    assert (tmp_path / "w.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
