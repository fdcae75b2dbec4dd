import numpy as np
import pytest
from safetensors.numpy import save_file

from convdsl.errors import WeightsError
from convdsl.ir.weights import load_weights, save_weights

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
