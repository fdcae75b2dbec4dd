"""Hostile training data: `convdsl train --data X` refuses each one before generating, reading or
allocating it (exit 2, no traceback, under a memory cap and a time limit, nothing written):
unbounded dataset options, odd option strings, and .npz files an attacker would hand over (pipes,
devices, zip bombs, pickles, labels that wrap negative, non-finite or non-numeric features,
shapes that do not match, splits that come out empty).

Every input is refused in-process (``load_dataset`` raises a DataError, exit code 2); a fresh
`convdsl train` process under the harness's caps runs one input of each kind in CI and every
input with HYPOTHESIS_PROFILE=thorough (each process start costs ~0.8 s of CPU)."""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from convdsl.train import DataError, load_dataset
from tests.adversarial.harness import assert_only_changed, assert_refused, run_cli, tree_state

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


def _cli(names, every):
    """The cases run as a `convdsl train` process: ``every`` in the thorough profile, else ``names``."""
    return list(every) if THOROUGH else [n for n in every if n in names]

NET = "network n(image: f32[N, 1, 8, 8], classes=10) {\n    return image | flatten | linear(classes)\n}\n"
FAST = 20.0  # seconds: every refusal comes before any training (and before torch is imported)


SECRET = "convdsl-test-secret-4d3f"  # in the environment of every run: must never be echoed


def _train(tmp: Path, data: str, *extra: str):
    (tmp / "net.cdl").write_text(NET)
    before = tree_state(tmp)
    r = run_cli("train", "net.cdl", "--data", data, "-o", "w.safetensors", "--no-progress", *extra, cwd=tmp,
                timeout=FAST, env={"CONVDSL_TEST_SECRET": SECRET})
    assert SECRET not in r.output
    assert_only_changed(before, tree_state(tmp))  # nothing written, no weights
    return r


# ---- dataset names and options ----------------------------------------------------------------
SPECS = {
    "mnist1d:samples=99999999999": "must be from 100 to 100,000",  # used to hang in the generator
    "mnist1d:length=10000000": "must be from 8 to 4,096",
    "mnist1d:samples=100000,length=4096": "more than 33,554,432",
    "mnist1d:samples=1e5": "must be a whole number",
    "mnist1d:samples=1_000": "must be a whole number",
    "mnist1d:samples=\uff11\uff12\uff13": "must be a whole number",  # fullwidth digits: int() would take them
    "mnist1d:samples=-500": "must be a whole number",
    "mnist1d:samples=": "must be a whole number",
    "mnist1d:samples=" + "9" * 5000: "must be a whole number",  # int() of 5,000 digits raises
    "mnist1d:samples=200,samples=300": "given twice",
    "mnist1d:=5": "must be key=value",
    "mnist1d:samples": "must be key=value",
    "digits:samples=10": "digits takes no options",
    "DIGITS": "unknown dataset",
    "": "unknown dataset",
    ":samples=5": "unknown dataset",
    "digits\n": "unknown dataset",
    "x" * 100_000: "unknown dataset",
    "/dev/zero": "unknown dataset",
}


def test_dataset_options_are_bounded_and_checked_before_generation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec, says in SPECS.items():
        with pytest.raises(DataError) as e:
            load_dataset(spec)
        assert e.value.exit_code == 2 and says in e.value.render() and len(e.value.render()) < 2_000, spec


@pytest.mark.parametrize("spec", _cli({"mnist1d:samples=99999999999", "mnist1d:samples=" + "9" * 5000,
                                       "mnist1d:samples=\uff11\uff12\uff13", "x" * 100_000}, SPECS),
                         ids=lambda s: repr(s[:30]))
def test_dataset_options_are_refused_by_the_command(tmp_path, spec):
    r = _train(tmp_path, spec)
    assert_refused(r, exit_code=2, mentions=SPECS[spec])
    assert len(r.output) < 2_000  # a huge value is not echoed whole


SPLITS = [("--val-fraction", "0", "validation fraction"), ("--val-fraction", "1", "validation fraction"),
          ("--val-fraction", "nan", "validation fraction"), ("--val-fraction", "-inf", "validation fraction"),
          ("--split-seed", "-1", "split seed"), ("--split-seed", str(2**64), "split seed")]


def test_split_settings_are_checked():
    for option, value, says in SPLITS:
        kw = {"val_fraction": float(value)} if option == "--val-fraction" else {"seed": int(value)}
        with pytest.raises(DataError, match=says):
            load_dataset("digits", **kw)


@pytest.mark.parametrize("option, value, says", SPLITS if THOROUGH else [SPLITS[2], SPLITS[5]])
def test_split_settings_are_refused_by_the_command(tmp_path, option, value, says):
    assert_refused(_train(tmp_path, "digits", option, value), exit_code=2, mentions=says)


# ---- hostile .npz files -------------------------------------------------------------------------
def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return path.name


def _npy_header(shape, descr="<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _bomb(path: Path) -> str:
    """An .npz whose x claims 10^13 float64 values (80 TB) in a few bytes: refused from its header
    (np.load would allocate the whole array before reading)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", _npy_header((10**10, 1000)) + b"\0" * 64)
        z.writestr("y.npy", _npy_header((10**10,), "<i8") + b"\0" * 64)
    return path.name


def _many_members(path: Path) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for i in range(200):
            z.writestr(f"a{i}.npy", _npy_header((1,)) + b"\0" * 8)
    return path.name


def _x(n=20):
    return np.zeros((n, 1, 8, 8), np.float32)


def _y(n=20):
    return np.arange(n) % 2


def _npy(path: Path) -> str:
    with open(path, "wb") as f:
        np.save(f, _x())
    return path.name


NPZ = {
    "a FIFO": (lambda p: (os.mkfifo(p), p.name)[1], "not a regular file"),
    "a folder": (lambda p: (p.mkdir(), p.name)[1], "not a regular file"),
    "a link to /dev/zero": (lambda p: (p.symlink_to("/dev/zero"), p.name)[1], "not a regular file"),
    "a link to /proc/self/environ": (lambda p: (p.symlink_to("/proc/self/environ"), p.name)[1], "not an .npz file"),
    "an empty file": (lambda p: (p.write_bytes(b""), p.name)[1], "not an .npz file"),
    "random bytes": (lambda p: (p.write_bytes(os.urandom(4096)), p.name)[1], "not an .npz file"),
    "a pickle": (lambda p: (p.write_bytes(pickle.dumps({"x": 1})), p.name)[1], "not an .npz file"),
    "a single .npy": (_npy, "single .npy array"),
    "truncated": (lambda p: (_npz(p, x=_x(), y=_y()), p.write_bytes(p.read_bytes()[:300]), p.name)[2],
                  "not a valid .npz file"),
    "a zip bomb header": (_bomb, "more than the 2 GiB"),
    "200 members": (_many_members, "too many arrays"),
    "object arrays": (lambda p: _npz(p, x=np.array([object()] * 20, dtype=object), y=_y()), "must hold numbers"),
    "a structured x": (lambda p: _npz(p, x=np.zeros((20, 2), [("a", "f4"), ("b", "i4")]), y=_y()),
                       "must hold numbers"),
    "datetimes": (lambda p: _npz(p, x=np.zeros((20, 3), "datetime64[s]"), y=_y()), "must hold numbers"),
    "strings": (lambda p: _npz(p, x=np.full((20, 3), "a"), y=_y()), "must hold numbers"),
    "complex x": (lambda p: _npz(p, x=_x().astype(np.complex64), y=_y()), "real numbers"),
    "boolean x": (lambda p: _npz(p, x=_x().astype(bool), y=_y()), "real numbers"),
    "x of 1e300": (lambda p: _npz(p, x=np.full((20, 1, 8, 8), 1e300), y=_y()), "too large for float32"),
    "x with NaN": (lambda p: _npz(p, x=np.full((20, 1, 8, 8), np.nan), y=_y()), "NaN or infinity"),
    "x with inf": (lambda p: _npz(p, x=np.full((20, 1, 8, 8), -np.inf), y=_y()), "NaN or infinity"),
    "x one-dimensional": (lambda p: _npz(p, x=np.zeros(20), y=_y()), "must be [N, ...]"),
    "x empty": (lambda p: _npz(p, x=np.zeros((0, 1, 8, 8)), y=np.zeros(0, int)), "is empty"),
    "x samples empty": (lambda p: _npz(p, x=np.zeros((20, 0)), y=_y()), "samples of 'x' are empty"),
    "no y": (lambda p: _npz(p, x=_x()), "has no array 'y'"),
    "labels 2^63 (uint64)": (lambda p: _npz(p, x=_x(), y=np.full(20, 2**63, np.uint64)), "class numbers 0 .. 65535"),
    "labels 2^64-1 (uint64)": (lambda p: _npz(p, x=_x(), y=np.full(20, 2**64 - 1, np.uint64)),
                               "class numbers 0 .. 65535"),
    "labels 1e300": (lambda p: _npz(p, x=_x(), y=np.full(20, 1e300)), "class numbers 0 .. 65535"),
    "labels NaN": (lambda p: _npz(p, x=_x(), y=np.full(20, np.nan)), "NaN or infinity"),
    "labels 0.5": (lambda p: _npz(p, x=_x(), y=np.full(20, 0.5)), "integer class labels"),
    "labels -1": (lambda p: _npz(p, x=_x(), y=np.full(20, -1)), "class numbers 0 .. 65535"),
    "labels 70000 classes": (lambda p: _npz(p, x=_x(), y=np.full(20, 70_000)), "class numbers 0 .. 65535"),
    "labels boolean": (lambda p: _npz(p, x=_x(), y=_y().astype(bool)), "integer class labels"),
    "labels strings": (lambda p: _npz(p, x=_x(), y=np.full(20, "cat")), "must hold numbers"),
    "labels two-dimensional": (lambda p: _npz(p, x=_x(), y=np.zeros((20, 1), int)), "one label per sample"),
    "labels too few": (lambda p: _npz(p, x=_x(), y=_y(19)), "one label per sample"),
    "x_val without y_val": (lambda p: _npz(p, x=_x(), y=_y(), x_val=_x(4)), "only one of x_val"),
    "x_val of another shape": (lambda p: _npz(p, x=_x(), y=_y(), x_val=np.zeros((4, 1, 4, 4)), y_val=_y(4)),
                               "x_val samples have shape"),
    "y_val too long": (lambda p: _npz(p, x=_x(), y=_y(), x_val=_x(4), y_val=_y(5)), "one label per sample"),
    "one sample per class": (lambda p: _npz(p, x=_x(10), y=np.arange(10)), "validation split is empty"),
}


def test_every_hostile_npz_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for k, (name, (make, says)) in enumerate(NPZ.items()):
        (tmp_path / str(k)).mkdir()
        spec = make(tmp_path / str(k) / "data.npz")
        with pytest.raises(DataError) as e:
            load_dataset(f"{k}/{spec}")
        assert e.value.exit_code == 2 and says in e.value.render(), (name, e.value.render())


@pytest.mark.parametrize("name", _cli({"a FIFO", "a link to /proc/self/environ", "a zip bomb header", "200 members",
                                       "object arrays", "x of 1e300", "labels 2^63 (uint64)", "labels 1e300",
                                       "one sample per class", "a folder"}, NPZ))
def test_a_hostile_npz_is_refused_by_the_command(tmp_path, name):
    make, says = NPZ[name]
    spec = make(tmp_path / "data.npz")
    assert_refused(_train(tmp_path, spec), exit_code=2, mentions=says)
