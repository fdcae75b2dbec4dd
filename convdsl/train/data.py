"""Classification datasets that need no download, and the check that one fits a network.

A dataset spec is a name with optional ``key=value`` options after a colon, or a path:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) as
  [N, 1, 8, 8]; pixels scaled to [0, 1], then standardized with the training split's mean/std.
- ``mnist1d``: MNIST-1D (Greydanus, "Scaling down deep learning", 2020), generated locally by
  the ``mnist1d`` package's own generator (never downloaded) as [N, 1, 40]; 10 classes.
  Options: ``samples`` (default 5000), ``length`` (default 40), e.g. ``mnist1d:samples=2000``.
- ``path/to/data.npz``: arrays ``x`` [N, ...] and integer labels ``y`` [N]; optional ``x_val`` and
  ``y_val`` are used as the validation split instead of splitting ``x``.  Used as they are (no scaling).

Splits are stratified (every class keeps its share in train and validation) and depend only on
``seed``, so ``train`` and ``eval`` see the same validation images when given the same seed.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from convdsl.errors import UsageError, did_you_mean
from convdsl.ir.graph import Graph


class DataError(UsageError):
    """A dataset that cannot be read, or that does not fit the network."""

    kind = "data error"


@dataclass(frozen=True)
class Dataset:
    """A classification dataset held in memory: float32 inputs, int64 labels in [0, classes)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    input_shape: tuple[int, ...]  # one sample, without the batch dim
    classes: int
    name: str

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.input_shape)
        return (f"{self.name}: [N, {dims}], {self.classes} classes, "
                f"{len(self.y_train)} train / {len(self.y_val)} val")


# ---- splitting ------------------------------------------------------------------------------
def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): each class contributes round(val_fraction * its count) to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_val = int(round(val_fraction * len(idx)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train_idx, val_idx = np.concatenate(train), np.concatenate(val)
    rng.shuffle(train_idx)
    rng.shuffle(val_idx)
    return train_idx, val_idx


def _split(name: str, x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int,
           standardize: bool = False) -> Dataset:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    tr, va = stratified_split(y, val_fraction, seed)
    x_train, x_val = x[tr], x[va]
    if standardize:  # statistics of the training split only: nothing leaks from validation
        mean, std = x_train.mean(), x_train.std()
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    return _dataset(name, x_train, y[tr], x_val, y[va])


def _dataset(name: str, x_train, y_train, x_val, y_val) -> Dataset:
    classes = int(max(y_train.max(initial=0), y_val.max(initial=0))) + 1
    return Dataset(np.ascontiguousarray(x_train, np.float32), y_train.astype(np.int64),
                   np.ascontiguousarray(x_val, np.float32), y_val.astype(np.int64),
                   tuple(int(d) for d in x_train.shape[1:]), classes, name)


# ---- built-in datasets ----------------------------------------------------------------------
def _digits(options: dict[str, str], seed: int, val_fraction: float) -> Dataset:
    _no_options("digits", options, ())
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn", hint="pip install scikit-learn") from None
    d = load_digits()  # bundled with scikit-learn: no download
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # [1797, 1, 8, 8] in [0, 1]
    return _split("digits", x, d.target.astype(np.int64), val_fraction, seed, standardize=True)


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(samples: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """All MNIST-1D samples from the package's generator (its default seed, 42)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError("the mnist1d dataset needs the mnist1d package", hint="pip install mnist1d") from None
    args = get_dataset_args()
    args.num_samples, args.final_seq_length = samples, length
    # make_dataset seeds Python's and numpy's global generators; leave the caller's state as it was
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)[:, None]  # [N, 1, length]
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _mnist1d(options: dict[str, str], seed: int, val_fraction: float) -> Dataset:
    _no_options("mnist1d", options, ("samples", "length"))
    samples = _int_option(options, "samples", 5000, minimum=100)
    length = _int_option(options, "length", 40, minimum=8)
    x, y = _mnist1d_arrays(samples, length)
    return _split("mnist1d", x, y, val_fraction, seed)


BUILTIN: dict[str, Callable[[dict[str, str], int, float], Dataset]] = {
    "digits": _digits,
    "mnist1d": _mnist1d,
}


def _no_options(name: str, options: dict[str, str], allowed: tuple[str, ...]) -> None:
    for key in options:
        if key not in allowed:
            raise DataError(f"dataset {name} has no option '{key}'",
                            hint=did_you_mean(key, allowed) or (f"options: {', '.join(allowed)}" if allowed
                                                               else f"{name} takes no options"))


def _int_option(options: dict[str, str], key: str, default: int, minimum: int) -> int:
    text = options.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"option {key} must be an integer, got {text!r}") from None
    if value < minimum:
        raise DataError(f"option {key} must be at least {minimum}, got {value}")
    return value


# ---- user data (.npz) -----------------------------------------------------------------------
def _npz(path: Path, seed: int, val_fraction: float) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"dataset file {path} does not exist") from None
    except ValueError as e:  # object arrays need pickle, which is refused
        raise DataError(f"cannot read {path}: {e}", hint="store plain numeric arrays (no object dtype)") from None
    except Exception as e:  # not a zip / corrupt
        raise DataError(f"{path} is not a valid .npz file ({e})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path} has no array '{key}'", expected="arrays x [N, ...] and y [N]",
                            got=", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items()) or "no arrays",
                            hint="np.savez(path, x=inputs, y=labels)")
    x, y = _check_xy(path, arrays["x"], arrays["y"], "x", "y")
    name = path.name
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"{path} has only one of x_val and y_val", hint="give both, or neither to split x")
    if "x_val" in arrays:
        xv, yv = _check_xy(path, arrays["x_val"], arrays["y_val"], "x_val", "y_val")
        if xv.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_val samples have shape {list(xv.shape[1:])}, x samples {list(x.shape[1:])}")
        return _dataset(name, x, y, xv, yv)
    return _split(name, x, y, val_fraction, seed)


def _check_xy(path: Path, x: np.ndarray, y: np.ndarray, xk: str, yk: str) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim < 2:
        raise DataError(f"{path}: '{xk}' must be [N, ...] (one sample per row)", expected="at least 2 dims",
                        got=f"shape {list(x.shape)}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{path}: '{xk}' must be numeric", got=str(x.dtype))
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: '{yk}' must hold one label per sample of '{xk}'",
                        expected=f"shape [{len(x)}]", got=f"shape {list(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
            raise DataError(f"{path}: '{yk}' must hold integer class labels", got=str(y.dtype))
    if len(y) == 0:
        raise DataError(f"{path}: '{xk}' is empty")
    if y.min() < 0:
        raise DataError(f"{path}: labels in '{yk}' must be 0, 1, ..., classes-1", got=f"minimum {int(y.min())}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: '{xk}' contains NaN or infinity")
    return x, y.astype(np.int64)


# ---- entry point ----------------------------------------------------------------------------
def load_dataset(spec: str, seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    """``digits``, ``mnist1d[:key=value,...]`` or a .npz path -> a split ``Dataset``."""
    spec = str(spec)
    if spec.endswith(".npz"):
        return _npz(Path(spec), seed, val_fraction)
    if Path(spec).is_file():
        raise DataError(f"cannot read dataset {spec}: only .npz files are supported",
                        hint="np.savez(path, x=inputs, y=labels)")
    name, _, rest = spec.partition(":")
    loader = BUILTIN.get(name)
    if loader is None:
        raise DataError(f"unknown dataset '{name}'",
                        hint=did_you_mean(name, BUILTIN) or f"datasets: {', '.join(BUILTIN)}, or a .npz file")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise DataError(f"dataset option {item!r} must be key=value", hint=f"e.g. {name}:samples=2000")
        options[key.strip()] = value.strip()
    return loader(options, seed, val_fraction)


# ---- fit to a network -----------------------------------------------------------------------
def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fits(want, got) -> bool:
    """Dims agree; a symbolic dim of the network takes any size."""
    return len(want) == len(got) and all(not isinstance(w, int) or w == g for w, g in zip(want, got))


def calibration_batches(spec: str, samples: int = 512, batch_size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """The first ``samples`` training inputs of a dataset (``digits``, ``mnist1d``, a .npz), in batches:
    calibration data for post-training quantization (what ``convdsl quantize --calib`` runs)."""
    x = load_dataset(spec, seed=seed).x_train[:samples]
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


def check_fits(graph: Graph, dataset: Dataset) -> None:
    """Raise ``DataError`` unless the network classifies the dataset's samples: one input
    [batch, *sample] (batch symbolic), one output [batch, classes]."""
    if len(graph.inputs) != 1:
        raise DataError(f"network {graph.name} has {len(graph.inputs)} inputs; training needs exactly one")
    if len(graph.outputs) != 1:
        raise DataError(f"network {graph.name} has {len(graph.outputs)} outputs; training needs one (the logits)")
    in_node = graph.node(graph.inputs[0])
    want = in_node.type.shape
    got = ("N",) + dataset.input_shape
    ok = isinstance(want[0], str) and _fits(want[1:], got[1:])
    if not ok:
        hint = None
        if isinstance(want[0], int):
            hint = f"make the batch dim symbolic: {in_node.id}: {in_node.type.dtype}[N, ...]"
        elif len(want) == len(got) + 1 and want[1] == 1 and _fits(want[2:], got[1:]):
            hint = "add a channel axis to the data: x[:, None]"
        elif len(want) == len(got):
            hint = f"write the network's input as {in_node.type.dtype}{_shape_text(got)}"
        raise DataError(f"{dataset.name} gives {_shape_text(got)}, the network expects {_shape_text(want)}",
                        in_node.span, expected=f"{in_node.id}: {in_node.type}", got=f"samples {_shape_text(got)}",
                        hint=hint)
    if not in_node.type.dtype.startswith(("f", "bf")):
        raise DataError(f"network input {in_node.id} is {in_node.type.dtype}; training feeds float32 samples",
                        in_node.span)
    out = graph.outputs[0]
    out_type = graph.node(out.node).types[out.out]
    if out_type.rank != 2 or out_type.shape[0] != want[0]:
        raise DataError(f"network output is {out_type}; training needs logits [{want[0]}, classes]",
                        graph.node(out.node).span, hint="end with e.g. global_avgpool(keepdim=false) | linear(classes)")
    classes = out_type.shape[1]
    if isinstance(classes, int) and classes < dataset.classes:
        raise DataError(f"{dataset.name} has {dataset.classes} classes, the network outputs {classes}",
                        graph.node(out.node).span, hint=f"e.g. --set classes={dataset.classes}")
