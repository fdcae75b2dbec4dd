"""Datasets: digits, mnist1d (generated locally), .npz files, and the fit check against a network."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from convdsl.api import load_graph
from convdsl.train import DataError, check_fits, load_dataset

DIGITS_CNN = Path(__file__).parents[2] / "examples" / "digits_cnn.cdl"


def test_digits_shapes_split_and_standardization():
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.classes == 10 and d.name == "digits"
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert len(d.y_train) + len(d.y_val) == 1797
    assert len(d.y_val) == pytest.approx(0.2 * 1797, abs=10)
    assert abs(d.x_train.mean()) < 1e-4 and d.x_train.std() == pytest.approx(1.0, abs=1e-3)
    # stratified: every class keeps its share (within rounding) in validation
    train_share = np.bincount(d.y_train, minlength=10) / len(d.y_train)
    val_share = np.bincount(d.y_val, minlength=10) / len(d.y_val)
    assert np.abs(train_share - val_share).max() < 0.01


def test_split_depends_only_on_seed():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert np.array_equal(a.x_val, b.x_val) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_val, c.y_val)


@pytest.mark.slow
def test_mnist1d_generated_locally_without_touching_global_rngs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the package's get_dataset would download or pickle here
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    d = load_dataset("mnist1d:samples=2000")
    assert (random.random(), np.random.random()) == before
    assert list(tmp_path.iterdir()) == []
    assert d.input_shape == (1, 40) and d.classes == 10
    assert len(d.y_train) + len(d.y_val) == 2000
    assert set(np.unique(d.y_val)) == set(range(10))


def _npz(tmp_path: Path, name="data.npz", **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_npz_split_and_explicit_validation(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 2, 5)), np.repeat(np.arange(3), 20)
    d = load_dataset(_npz(tmp_path, x=x, y=y), val_fraction=0.25)
    assert d.input_shape == (2, 5) and d.classes == 3 and d.name == "data.npz"
    assert len(d.y_val) == 15 and np.bincount(d.y_val).tolist() == [5, 5, 5]
    assert d.x_train.dtype == np.float32
    d = load_dataset(_npz(tmp_path, "v.npz", x=x, y=y, x_val=x[:7], y_val=y[:7]))
    assert len(d.y_train) == 60 and len(d.y_val) == 7


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 3))}, "has no array 'y'"),
    ({"inputs": np.zeros((4, 3)), "y": np.zeros(4, int)}, "has no array 'x'"),
    ({"x": np.zeros(4), "y": np.zeros(4, int)}, "must be [N, ...]"),
    ({"x": np.zeros((4, 3)), "y": np.zeros((4, 2), int)}, "one label per sample"),
    ({"x": np.zeros((4, 3)), "y": np.zeros(5, int)}, "one label per sample"),
    ({"x": np.zeros((4, 3)), "y": np.array([0.5, 1, 0, 1])}, "integer class labels"),
    ({"x": np.zeros((4, 3)), "y": np.array([0, -1, 0, 1])}, "class numbers 0 .. 65535"),
    ({"x": np.full((4, 3), np.nan), "y": np.zeros(4, int)}, "NaN"),
    ({"x": np.zeros((4, 3)), "y": np.zeros(4, int), "x_val": np.zeros((2, 3))}, "only one of x_val"),
])
def test_npz_errors(tmp_path, arrays, message):
    with pytest.raises(DataError) as e:
        load_dataset(_npz(tmp_path, **arrays))
    assert message in e.value.render()


def test_calibration_takes_inputs_without_labels(tmp_path):
    """Calibration needs inputs only (a GAN generator's latent vectors have no labels): an .npz with x and no y
    gives its first rows in order; training still refuses it; bad inputs are refused as for training."""
    from convdsl.train import calibration_batches

    x = np.random.default_rng(0).standard_normal((150, 100, 1, 1))
    batches = calibration_batches(_npz(tmp_path, x=x), samples=130, batch_size=64)
    assert [len(b) for b in batches] == [64, 64, 2] and all(b.dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), x[:130].astype(np.float32))
    with pytest.raises(DataError, match="has no array 'y'"):
        load_dataset(_npz(tmp_path, x=x))
    for bad, says in ((np.full((4, 3), np.nan), "NaN"), (np.zeros(4), r"must be \[N, ...\]"),
                      (np.zeros((0, 3)), "is empty")):
        with pytest.raises(DataError, match=says):
            calibration_batches(_npz(tmp_path, "bad.npz", x=bad))
    # with labels, the training split's inputs as before
    y = np.repeat(np.arange(3), 50)
    want = load_dataset(_npz(tmp_path, "xy.npz", x=x, y=y)).x_train[:10]
    np.testing.assert_array_equal(calibration_batches(_npz(tmp_path, "xy.npz", x=x, y=y), samples=10)[0], want)


def test_npz_refuses_pickled_objects(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object(), object()], dtype=object), y=np.zeros(2, int))
    with pytest.raises(DataError, match="object"):
        load_dataset(str(path))


@pytest.mark.parametrize("spec, message", [
    ("digit", "did you mean 'digits'"),
    ("digits:samples=10", "digits takes no options"),
    ("mnist1d:sample=10", "did you mean 'samples'"),
    ("mnist1d:samples=ten", "must be a whole number"),
    ("mnist1d:samples", "key=value"),
    ("missing.npz", "does not exist"),
])
def test_bad_specs(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset(spec)
    assert message in e.value.render()


def test_other_file_types_are_refused(tmp_path):
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="only .npz"):
        load_dataset(str(tmp_path / "data.csv"))


CIFAR_NET = """
network tiny(image: f32[N, 3, 32, 32], classes=10) {
    return image | conv2d(4, 3) as conv | global_avgpool(keepdim=false) | linear(classes) as fc
}
"""


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(DataError) as e:
        check_fits(load_graph(CIFAR_NET), load_dataset("digits"))
    text = e.value.render()
    assert "digits gives [N, 1, 8, 8], the network expects [N, 3, 32, 32]" in text
    assert "image: f32[N, 3, 32, 32]" in text  # the source line, with a caret


def test_missing_channel_axis_is_hinted(tmp_path):
    path = _npz(tmp_path, x=np.zeros((20, 8, 8)), y=np.arange(20) % 2)
    with pytest.raises(DataError) as e:
        check_fits(load_graph(DIGITS_CNN), load_dataset(path))
    assert "x[:, None]" in e.value.render()


def test_too_few_classes_and_fixed_batch():
    d = load_dataset("digits")
    with pytest.raises(DataError, match="10 classes, the network outputs 3"):
        check_fits(load_graph(DIGITS_CNN, overrides={"classes": 3}), d)
    fixed = CIFAR_NET.replace("N, 3, 32, 32", "1, 1, 8, 8")
    with pytest.raises(DataError, match="symbolic"):
        check_fits(load_graph(fixed), d)
