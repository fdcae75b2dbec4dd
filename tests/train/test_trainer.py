"""Training on real data: accuracy, determinism, weights written back and saved, evaluation, CLI."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from convdsl.api import load_graph
from convdsl.backends.torch import build_module
from convdsl.cli import main
from convdsl.errors import UsageError
from convdsl.ir.weights import load_weights, save_weights
from convdsl.train import DataError, evaluate, load_dataset, train

DIGITS_CNN = Path(__file__).parents[2] / "examples" / "digits_cnn.cdl"
EPOCHS = 5

SEQ_CNN = """
network seq_cnn(x: f32[N, 1, 40], classes=10, width=32) {
    y = x | conv1d(width, 5, pad=same) as conv1 | batchnorm as bn1 | relu
          | conv1d(width, 3, stride=2, pad=1) as conv2 | batchnorm as bn2 | relu
          | conv1d(2 * width, 3, stride=2, pad=1) as conv3 | batchnorm as bn3 | relu
    logits = y | global_avgpool | flatten | linear(classes) as fc
    return logits
}
"""


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits):
    """digits_cnn trained for a few epochs with seed 0: (graph, result)."""
    g = load_graph(DIGITS_CNN)
    return g, train(g, digits, epochs=EPOCHS, seed=0, progress=False, build=build_module)


def test_digits_cnn_reaches_90_percent(trained):
    g, r = trained
    assert len(r.history) == EPOCHS and r.dataset == "digits" and r.params == g.params.count()
    print(f"digits_cnn: {100 * r.val_accuracy:.2f}% val after {EPOCHS} epochs in {r.seconds:.1f} s")
    assert r.val_accuracy >= 0.90
    assert r.history[-1].train_loss < r.history[0].train_loss
    assert r.history[-1].lr == pytest.approx(0.0, abs=1e-12)  # cosine decays to zero


def test_weights_and_running_stats_written_back(trained):
    g, _ = trained
    fresh = load_graph(DIGITS_CNN)
    assert not np.allclose(g.params["conv1.weight"], fresh.params["conv1.weight"])
    assert not np.allclose(g.params["bn1.running_mean"], 0.0)
    assert not np.allclose(g.params["bn1.running_var"], 1.0)
    assert int(g.params["bn1.num_batches_tracked"]) > 0 and g.params["bn1.num_batches_tracked"].dtype == np.int64


def test_same_seed_same_weights(trained, digits):
    g, r = trained
    again = load_graph(DIGITS_CNN)
    r2 = train(again, digits, epochs=EPOCHS, seed=0, progress=False, build=build_module)
    assert [e.val_acc for e in r2.history] == [e.val_acc for e in r.history]
    assert [e.train_loss for e in r2.history] == [e.train_loss for e in r.history]
    for name, arr in g.params.items():
        assert np.array_equal(arr, again.params[name]), name


def test_saved_weights_evaluate_to_the_reported_accuracy(trained, digits, tmp_path):
    g, r = trained
    save_weights(g, tmp_path / "w.safetensors")
    loaded = load_weights(load_graph(DIGITS_CNN), tmp_path / "w.safetensors")
    m = evaluate(loaded, digits, build=build_module)
    assert m["n"] == len(digits.y_val)
    assert m["accuracy"] == r.val_accuracy
    assert m["loss"] == pytest.approx(r.val_loss, rel=1e-5)


def test_training_restores_global_torch_state(digits):
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    g = load_graph(DIGITS_CNN, overrides={"width": 4})
    small = type(digits)(digits.x_train[:256], digits.y_train[:256], digits.x_val[:64], digits.y_val[:64],
                         digits.input_shape, digits.classes, "digits[:256]")
    train(g, small, epochs=1, progress=True, build=build_module)
    assert torch.equal(torch.rand(3), expected)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, det)


def test_graph_untouched_when_training_stops_early(digits):
    g = load_graph(DIGITS_CNN, overrides={"width": 4})
    before = {n: a.copy() for n, a in g.params.items()}

    def stop(stats):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(g, digits, epochs=3, progress=False, on_epoch=stop, build=build_module)
    for name, arr in g.params.items():
        assert np.array_equal(arr, before[name]), name


def test_bad_settings_are_usage_errors(digits):
    g = load_graph(DIGITS_CNN, overrides={"width": 4})
    with pytest.raises(UsageError, match="did you mean 'adamw'"):
        train(g, digits, epochs=1, optimizer="adam_w", progress=False, build=build_module)
    with pytest.raises(UsageError, match="from 1 to 10,000"):
        train(g, digits, epochs=0, progress=False, build=build_module)


def test_npz_dataset_trains(tmp_path):
    # two separable classes of 1x4x4 "images": bright top half vs bright bottom half
    rng = np.random.default_rng(0)
    y = np.arange(64) % 2
    x = rng.normal(0, 0.3, (64, 1, 4, 4)).astype(np.float32)
    x[y == 0, :, :2] += 1.0
    x[y == 1, :, 2:] += 1.0
    np.savez(tmp_path / "toy.npz", x=x, y=y)
    net = """
    network toy(image: f32[N, 1, 4, 4], classes=2) {
        return image | conv2d(4, 3, pad=1) as conv | relu | flatten | linear(classes) as fc
    }
    """
    d = load_dataset(str(tmp_path / "toy.npz"), val_fraction=0.25)
    g = load_graph(net)
    r = train(g, d, epochs=10, batch_size=16, progress=False, build=build_module)
    assert r.val_accuracy >= 0.9


def test_mnist1d_sequence_net_learns():
    d = load_dataset("mnist1d:samples=2000")
    g = load_graph(SEQ_CNN)
    r = train(g, d, epochs=4, seed=0, progress=False, build=build_module)
    print(f"seq_cnn on mnist1d: {100 * r.val_accuracy:.2f}% val after 4 epochs in {r.seconds:.1f} s")
    assert r.val_accuracy > 0.4  # chance is 0.1


def test_cli_train_then_eval(tmp_path):
    out = tmp_path / "w.safetensors"
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(DIGITS_CNN), "--data", "digits", "--epochs", "2", "--set", "width=8",
                               "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert re.search(r"^ *2 +\d", res.output, re.M)  # the epoch table
    reported = re.search(r"validation accuracy (\d+\.\d+)%", res.output).group(1)
    res = runner.invoke(main, ["eval", str(DIGITS_CNN), "--set", "width=8", "--weights", str(out), "--data", "digits"])
    assert res.exit_code == 0, res.output
    assert f"accuracy {reported}%" in res.output


def test_cli_reports_shape_mismatch(tmp_path):
    res = CliRunner().invoke(main, ["train", str(DIGITS_CNN), "--data", "mnist1d:samples=2000", "--epochs", "1",
                                    "-o", str(tmp_path / "w.safetensors")])
    assert res.exit_code == DataError.exit_code
    assert "mnist1d gives [N, 1, 40], the network expects [N, 1, 8, 8]" in res.output
    assert not (tmp_path / "w.safetensors").exists()
