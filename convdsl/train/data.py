"""Classification datasets that need no download, and the check that one fits a network.

A dataset spec is a name with optional ``key=value`` options after a colon, or a path:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) as
  [N, 1, 8, 8]; pixels scaled to [0, 1], then standardized with the training split's mean/std.
- ``mnist1d``: MNIST-1D (Greydanus, "Scaling down deep learning", 2020), generated locally by
  the ``mnist1d`` package's own generator (never downloaded) as [N, 1, 40]; 10 classes.
  Options: ``samples`` (default 5000), ``length`` (default 40), e.g. ``mnist1d:samples=2000``.
- ``path/to/data.npz``: arrays ``x`` [N, ...] and integer labels ``y`` [N]; optional ``x_val`` and
  ``y_val`` are used as the validation split instead of splitting ``x``.  Used as they are (no scaling).

Nothing handed in is trusted (bounds in ``limits``): options are whole numbers within bounds,
checked before anything is generated; a .npz must be a regular file holding a plain zip of at
most 64 plain numeric arrays, whose sizes are read from the array headers and refused above
2 GiB before any array is read (no pickle, no zip bomb); features must be finite as float32;
labels integers in [0, 65536) whatever their dtype (a uint64 2^63 or a float 1e300 would wrap
negative as int64); lengths must match and neither split may be empty.

Splits are stratified (every class keeps its share in train and validation) and depend only on
``seed``, so ``train`` and ``eval`` see the same validation images when given the same seed.
"""
from __future__ import annotations

import functools
import math
import os
import random
import re
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from convdsl.errors import UsageError, did_you_mean
from convdsl.ir.graph import Graph
from convdsl.train.limits import (MAX_CLASSES, MAX_DATA_BYTES, MAX_NPZ_MEMBERS, MAX_SEED, MNIST1D_LENGTH,
                                  MNIST1D_SAMPLES, MNIST1D_VALUES)


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
def _shown(value: object, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): each class contributes round(val_fraction * its count) to val.
    Classes in increasing order, each one's indices in increasing order before its shuffle
    (a stable sort groups them in O(N log N), not one pass over y per class)."""
    rng = np.random.default_rng(seed)
    train, val = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    order = np.argsort(y, kind="stable")
    for idx in np.split(order, np.flatnonzero(np.diff(y[order])) + 1) if len(y) else []:
        idx = idx.copy()
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
    tr, va = stratified_split(y, val_fraction, seed)
    if len(tr) == 0 or len(va) == 0:
        raise DataError(f"{name}: the {'training' if len(tr) == 0 else 'validation'} split is empty "
                        f"({len(y)} samples in {len(np.unique(y))} classes, validation fraction {val_fraction:g})",
                        hint="give more samples per class, another --val-fraction, or x_val and y_val")
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
    samples = _int_option(options, "samples", 5000, MNIST1D_SAMPLES)
    length = _int_option(options, "length", 40, MNIST1D_LENGTH)
    if samples * length > MNIST1D_VALUES:
        raise DataError(f"mnist1d with {samples:,} samples of length {length:,} is {samples * length:,} values, "
                        f"more than {MNIST1D_VALUES:,}", hint="fewer samples or a shorter length")
    x, y = _mnist1d_arrays(samples, length)
    return _split("mnist1d", x, y, val_fraction, seed)


BUILTIN: dict[str, Callable[[dict[str, str], int, float], Dataset]] = {
    "digits": _digits,
    "mnist1d": _mnist1d,
}


def _no_options(name: str, options: dict[str, str], allowed: tuple[str, ...]) -> None:
    for key in options:
        if key not in allowed:
            raise DataError(f"dataset {name} has no option {_shown(key)}",
                            hint=did_you_mean(key, allowed) or (f"options: {', '.join(allowed)}" if allowed
                                                               else f"{name} takes no options"))


def _int_option(options: dict[str, str], key: str, default: int, bounds: tuple[int, int]) -> int:
    """A whole number in ``bounds`` written in ASCII digits (not '1e5', '1_000' or other scripts' digits)."""
    lo, hi = bounds
    text = options.get(key)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,12}", text):
        raise DataError(f"option {key} must be a whole number from {lo:,} to {hi:,}, got {_shown(text)}")
    value = int(text)
    if not lo <= value <= hi:
        raise DataError(f"option {key} must be from {lo:,} to {hi:,}, got {value:,}")
    return value


# ---- user data (.npz) -----------------------------------------------------------------------
VAL_FRACTION = 0.2  # the validation share of a split (load_dataset's default, calibration's split)
_NPZ_HINT = "np.savez(path, x=inputs, y=labels) with plain numeric arrays"
_ARRAYS = ("x", "y", "x_val", "y_val")


def _npz(path: Path, seed: int, val_fraction: float, arrays: dict[str, np.ndarray] | None = None) -> Dataset:
    arrays = _read_npz(path) if arrays is None else arrays
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path} has no array '{key}'", expected="arrays x [N, ...] and y [N]",
                            got=", ".join(sorted(arrays)) or "no array named x, y, x_val or y_val", hint=_NPZ_HINT)
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


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays x, y, x_val, y_val of a .npz, each checked from its header (numeric dtype, size)
    before it is read; never a device, a pipe or a pickle."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the open
    except FileNotFoundError:
        raise DataError(f"dataset file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise DataError(f"{path} is not a regular file", hint=_NPZ_HINT)
    if st.st_size > MAX_DATA_BYTES + 2**20:
        os.close(fd)
        raise DataError(f"{path} is {st.st_size:,} bytes, more than the {MAX_DATA_BYTES >> 30} GiB a dataset may take")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as f:
        try:
            head = f.read(6)
            if head.startswith(b"\x93NUMPY"):
                raise DataError(f"{path} is a single .npy array, not an .npz archive", hint=_NPZ_HINT)
            if not head.startswith(b"PK\x03\x04"):
                raise DataError(f"{path} is not an .npz file (not a zip archive)", hint=_NPZ_HINT)
            _check_zip_directory(path, f, st.st_size)
            with zipfile.ZipFile(f) as zf:
                members = {n[:-4] if n.endswith(".npy") else n: n for n in zf.namelist()}
                wanted = [k for k in _ARRAYS if k in members]
                sizes = {k: _array_bytes(path, zf, members[k], k) for k in wanted}
                stored, as_f32 = sum(v[0] for v in sizes.values()), sum(v[1] for v in sizes.values())
                if max(stored, as_f32) > MAX_DATA_BYTES:
                    raise DataError(f"{path}: the arrays take {max(stored, as_f32):,} bytes, more than the "
                                    f"{MAX_DATA_BYTES >> 30} GiB a dataset may take",
                                    got=", ".join(f"{k} {v[2]}" for k, v in sizes.items()))
                out = {}
                for k in wanted:
                    with zf.open(members[k]) as m:
                        out[k] = np.lib.format.read_array(m, allow_pickle=False)
                return out
        except DataError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError,
                RuntimeError, struct.error) as e:  # truncated, corrupt, encrypted, an unknown compression
            raise DataError(f"{path} is not a valid .npz file ({type(e).__name__}: {_shown(str(e), 120)})",
                            hint=_NPZ_HINT) from None


def _check_zip_directory(path: Path, f, size: int) -> None:
    """Bound the zip's central directory before ``zipfile`` reads it: a few entries, a small directory."""
    tail = min(size, 22 + 65535)
    f.seek(size - tail)
    data = f.read(tail)
    f.seek(0)
    i = data.rfind(b"PK\x05\x06")  # end of central directory, searched as zipfile does
    if i < 0 or len(data) - i < 22:
        raise DataError(f"{path} is not a valid .npz file (no zip directory: truncated?)", hint=_NPZ_HINT)
    entries, directory = struct.unpack("<HI", data[i + 10:i + 16])
    if entries == 0xFFFF or directory == 0xFFFFFFFF or entries > MAX_NPZ_MEMBERS or directory > 2**20:
        raise DataError(f"{path} holds too many arrays or too large a zip directory "
                        f"({entries if entries != 0xFFFF else 'zip64'} entries, {directory:,} bytes)",
                        expected=f"at most {MAX_NPZ_MEMBERS} arrays", hint=_NPZ_HINT)


def _array_bytes(path: Path, zf: zipfile.ZipFile, member: str, key: str) -> tuple[int, int, str]:
    """(bytes as stored, bytes as float32, description) of one array, from its .npy header."""
    with zf.open(member) as m:
        version = np.lib.format.read_magic(m)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(m)
        else:
            raise DataError(f"{path}: '{key}' is a .npy of version {version}, which holds no plain numeric array",
                            hint=_NPZ_HINT)
    if dtype.hasobject or dtype.kind not in "biufc" or dtype.fields is not None:
        raise DataError(f"{path}: '{key}' must hold numbers", got=f"dtype {dtype}", hint=_NPZ_HINT)
    count = math.prod(shape)
    return count * dtype.itemsize, count * 4, f"{list(shape)} {dtype}"


def _check_xy(path: Path, x: np.ndarray, y: np.ndarray, xk: str, yk: str) -> tuple[np.ndarray, np.ndarray]:
    """Features as finite float32 [N, ...], labels as int64 class numbers [N]."""
    _check_samples(path, x, xk)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: '{yk}' must hold one label per sample of '{xk}'",
                        expected=f"shape [{len(x)}]", got=f"shape {list(y.shape)}")
    labels = _labels(path, y, yk)
    return _finite_f32(path, x, xk), labels


def _check_samples(path: Path, x: np.ndarray, xk: str) -> None:
    """``x`` is [N, ...] of real numbers, with samples."""
    if x.ndim < 2:
        raise DataError(f"{path}: '{xk}' must be [N, ...] (one sample per row)", expected="at least 2 dims",
                        got=f"shape {list(x.shape)}")
    if x.dtype.kind not in "iuf":
        raise DataError(f"{path}: '{xk}' must hold real numbers (integers or floats)", got=f"dtype {x.dtype}")
    if len(x) == 0:
        raise DataError(f"{path}: '{xk}' is empty")
    if 0 in x.shape[1:]:
        raise DataError(f"{path}: the samples of '{xk}' are empty", got=f"shape {list(x.shape)}")


def _finite_f32(path: Path, x: np.ndarray, xk: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.ascontiguousarray(x, np.float32)
    if not np.isfinite(x32).all():
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DataError(f"{path}: '{xk}' contains NaN or infinity")
        raise DataError(f"{path}: '{xk}' holds values too large for float32 (beyond 3.4e38)")
    return x32


def _labels(path: Path, y: np.ndarray, yk: str) -> np.ndarray:
    """Class numbers in [0, MAX_CLASSES) as int64, checked in the labels' own dtype (a cast to
    int64 first would wrap a uint64 2^63 or a float 1e300 to a negative number)."""
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{path}: labels in '{yk}' contain NaN or infinity")
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{path}: '{yk}' must hold integer class labels", got=f"fractional values ({y.dtype})")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{path}: '{yk}' must hold integer class labels", got=f"dtype {y.dtype}")
    lo, hi = y.min(), y.max()
    if lo < 0 or hi >= MAX_CLASSES:
        raise DataError(f"{path}: labels in '{yk}' must be class numbers 0 .. {MAX_CLASSES - 1}",
                        got=f"labels from {lo:g} to {hi:g}" if y.dtype.kind == "f" else f"labels from {lo} to {hi}")
    return y.astype(np.int64)


# ---- entry point ----------------------------------------------------------------------------
def _checked_spec(spec, seed: int, val_fraction: float) -> str:
    """``spec`` as text, once the split settings and the name are valid."""
    spec = str(spec)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise DataError(f"the split seed must be from 0 to {MAX_SEED:,}, got {_shown(seed)}")
    if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
        raise DataError(f"the validation fraction must be between 0 and 1 (exclusive), got {_shown(val_fraction)}")
    if "\x00" in spec:
        raise DataError("a dataset name or path cannot contain a NUL character")
    return spec


def load_dataset(spec: str, seed: int = 0, val_fraction: float = VAL_FRACTION) -> Dataset:
    """``digits``, ``mnist1d[:key=value,...]`` or a .npz path -> a split ``Dataset``."""
    spec = _checked_spec(spec, seed, val_fraction)
    if spec.endswith(".npz"):
        return _npz(Path(spec), seed, val_fraction)
    if os.path.isfile(spec):
        raise DataError(f"cannot read dataset {spec}: only .npz files are supported", hint=_NPZ_HINT)
    name, _, rest = spec.partition(":")
    loader = BUILTIN.get(name)
    if loader is None:
        raise DataError(f"unknown dataset {_shown(name)}",
                        hint=did_you_mean(name, BUILTIN) or f"datasets: {', '.join(BUILTIN)}, or a .npz file")
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise DataError(f"dataset option {_shown(item)} must be key=value", hint=f"e.g. {name}:samples=2000")
        if key in options:
            raise DataError(f"dataset option {_shown(key)} is given twice")
        options[key] = value.strip()
    return loader(options, seed, val_fraction)


# ---- fit to a network -----------------------------------------------------------------------
def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fits(want, got) -> bool:
    """Dims agree; a symbolic dim of the network takes any size."""
    return len(want) == len(got) and all(not isinstance(w, int) or w == g for w, g in zip(want, got))


def calibration_batches(spec: str, samples: int = 512, batch_size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """The first ``samples`` training inputs of a dataset (``digits``, ``mnist1d``, a .npz), in batches:
    calibration data for post-training quantization (what ``convdsl quantize --calib`` runs).  A .npz with
    inputs ``x`` and no labels ``y`` (calibration needs none: a generator's latent vectors, a segmentation
    network's images) gives its first ``samples`` rows of ``x``, in order."""
    spec = _checked_spec(spec, seed, VAL_FRACTION)
    if spec.endswith(".npz"):  # read once: inputs alone, or the training split of inputs and labels
        path = Path(spec)
        arrays = _read_npz(path)
        if "x" in arrays and "y" not in arrays:
            _check_samples(path, arrays["x"], "x")
            x = _finite_f32(path, arrays["x"][:samples], "x")
            return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
        x = _npz(path, seed, VAL_FRACTION, arrays).x_train[:samples]
    else:
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
