"""`convdsl run` on hostile inputs: --batch values and --input files.

Every refusal is a documented exit code, located at the input's declaration (or at the op whose
shape rule or memory the sizes break) when there is one, before the data is read or anything
is allocated; what runs gives the same numbers whatever the file's layout.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.adversarial.harness import assert_no_crash, assert_only_changed, assert_refused, run_cli, tree_state

MEM_MB = 6144  # torch maps ~3.5 GB of libraries
NETS = {
    "small.cdl": "network small(x: f32[N, 3, 8, 8]) {\n    return x | conv2d(4, 3) as c1 | relu | flatten | linear(10) as fc\n}\n",
    "two.cdl": "network two(a: f32[N, 4], b: f32[N, 4]) {\n    return a + b\n}\n",
    "seq.cdl": "network seq(x: f32[N, L, 16]) {\n    return x | mhsa(heads=2, rel_pos=true, max_len=32)\n}\n",
    "wide.cdl": "network wide(x: f32[N, 3, H, W]) {\n    return x | conv2d(64, 3, pad=1) as c\n}\n",
    "ints.cdl": "network ints(t: i32[N, 8]) {\n    return t | flatten\n}\n",
}


@pytest.fixture
def work(tmp_path):
    for name, text in NETS.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def run(work, *args, **kw):
    return run_cli("run", *args, cwd=work, mem_mb=MEM_MB, **kw)


def save(work, name, arr, **kw):
    np.save(work / name, arr, **kw)
    return name


@pytest.mark.parametrize("batch", ["0", "-3", "2147483648", "1e3", "abc"])
def test_bad_batch_values_are_usage_errors(work, batch):
    assert_refused(run(work, "small.cdl", "--batch", batch), exit_code=2, mentions="--batch")


@pytest.mark.parametrize("args", [["--bind", "N=abc"], ["--bind", "N=0"], ["--bind", "N=-1"], ["--bind", "N=1.5"]])
def test_bad_bind_values_are_usage_errors(work, args):
    assert_refused(run(work, "small.cdl", *args), exit_code=2, mentions="--bind N")


def test_batch_and_input_together_are_refused(work):
    x = save(work, "x.npy", np.zeros((2, 3, 8, 8), np.float32))
    assert_refused(run(work, "small.cdl", "--input", x, "--batch", "4"), exit_code=2, mentions="--batch")


def test_a_batch_over_the_memory_limit_is_refused_before_running(work):
    r = run(work, "small.cdl", "--batch", "5000", "--max-memory", "1MiB")
    assert_refused(r, exit_code=6, location="small.cdl:1:15")


def test_a_batch_within_the_limit_runs(work):
    r = run(work, "small.cdl", "--batch", "5")
    assert_no_crash(r)
    assert r.returncode == 0 and "fc: [5, 10]" in r.stdout, r.output  # the output keeps its label (issue 14 item 11)


# ---- --input files ----------------------------------------------------------------------------------
def bad_files(work) -> dict[str, tuple[str, int, str]]:
    """name -> (file, exit code, what the message says)."""
    np.savez(work / "x.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    (work / "empty.npy").write_bytes(b"")
    (work / "text.npy").write_text("not an array\n")
    big = work / "claims_1e12.npy"  # a header for 10**12 floats and 16 bytes of data
    with open(big, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
        f.write(b"\0" * 16)
    truncated = work / "truncated.npy"
    np.save(truncated, np.zeros((2, 3, 8, 8), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    os.mkfifo(work / "fifo.npy")
    return {
        "npz": ("x.npz", 2, ".npz archive"),
        "empty": ("empty.npy", 2, "is empty"),
        "text": ("text.npy", 2, "not a .npy array"),
        "strings": (save(work, "s.npy", np.array(["a", "b"])), 2, "<U1"),
        "pickle": (save(work, "p.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True), 2, "pickle"),
        "complex": (save(work, "c.npy", np.zeros((1, 3, 8, 8), np.complex64)), 2, "complex64"),
        "structured": (save(work, "r.npy", np.zeros((1, 3, 8, 8), [("a", "f4")])), 2, "numbers"),
        "claims 10**12": ("claims_1e12.npy", 2, "header says"),
        "truncated": ("truncated.npy", 2, "truncated"),
        "fifo": ("fifo.npy", 2, "not a regular file"),
        "device": ("/dev/zero", 2, "not a regular file"),
        "missing": ("nope.npy", 2, "nope.npy"),
        "rank": (save(work, "r3.npy", np.zeros((3, 8, 8), np.float32)), 5, "rank 4"),
        "fixed dim": (save(work, "d9.npy", np.zeros((1, 3, 9, 8), np.float32)), 5, "needs size 8 in dim 2"),
        "zero batch": (save(work, "n0.npy", np.zeros((0, 3, 8, 8), np.float32)), 5, "N = 0"),
    }


def test_bad_input_files_are_clean_errors_before_their_data_is_read(work):
    cases = bad_files(work)
    before = tree_state(work)
    for case, (path, code, says) in cases.items():
        r = run(work, "small.cdl", "--input", path, timeout=30)
        assert_refused(r, exit_code=code, mentions=says,
                       location="small.cdl:1:15" if code == 5 else None)
    assert_only_changed(before, tree_state(work))


def test_inputs_that_disagree_on_a_symbol_are_refused_at_the_second(work):
    a = save(work, "a.npy", np.zeros((2, 4), np.float32))
    b = save(work, "b.npy", np.zeros((3, 4), np.float32))
    r = run(work, "two.cdl", "--input", a, "--input", b)
    assert_refused(r, exit_code=5, location="two.cdl:1:27", mentions="N = 3")
    assert_refused(run(work, "two.cdl", "--input", a), exit_code=2, mentions="takes 2 input(s)")
    assert_refused(run(work, "two.cdl", "--input", a, "--input", a, "--bind", "N=5"), exit_code=2, mentions="--bind N=5")


def test_a_sequence_longer_than_max_len_is_refused_at_the_op(work):
    x = save(work, "s40.npy", np.zeros((1, 40, 16), np.float32))
    r = run(work, "seq.cdl", "--input", x)
    assert_refused(r, exit_code=5, location="seq.cdl:2:16", mentions="exceeds max_len=32")


def test_a_large_input_into_symbolic_dims_is_checked_against_the_memory_limit(work):
    """3 MiB of input is fine; the conv's 64 MiB output at that size is not, under 16 MiB: refused
    at the conv, before anything runs (the elaborator's checks, at the input's sizes)."""
    x = save(work, "big.npy", np.zeros((1, 3, 512, 512), np.float32))
    r = run(work, "wide.cdl", "--input", x, "--max-memory", "16MiB")
    assert_refused(r, exit_code=6, location="wide.cdl:2:16", mentions="64.0 MiB")
    r = run(work, "wide.cdl", "--input", x, "--max-memory", "1MiB")  # the input itself is over
    assert_refused(r, exit_code=6, location="wide.cdl:1:14", mentions="--input arrays")


def test_dtypes_convert_only_within_kind(work):
    r = run(work, "ints.cdl", "--input", save(work, "f.npy", np.zeros((2, 8), np.float32)))
    assert_refused(r, exit_code=5, location="ints.cdl:1:14", mentions="holds float32")
    r = run(work, "ints.cdl", "--input", save(work, "w.npy", np.full((2, 8), 2**40, np.int64)))
    assert_refused(r, exit_code=5, location="ints.cdl:1:14", mentions="values from")
    r = run(work, "ints.cdl", "--input", save(work, "i8.npy", np.arange(16, dtype=np.int8).reshape(2, 8)))
    assert_no_crash(r)
    assert r.returncode == 0 and "out: [2, 8] int32" in r.stdout, r.output


def test_the_layout_of_a_file_does_not_change_the_values(work):
    """Fortran order, big-endian, float64: read as the same float32 array (in-process: no CLI needed)."""
    from convdsl.api import load_graph
    from convdsl.inputs import load_inputs

    g = load_graph(work / "small.cdl")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for name, arr in [("c.npy", x), ("f.npy", np.asfortranarray(x)), ("be.npy", x.astype(">f4")),
                      ("f64.npy", x.astype(np.float64))]:
        (got,), sizes = load_inputs([str(work / save(work, name, arr))], g, 1 << 30)
        assert got.dtype == np.float32 and got.flags.c_contiguous and sizes == {"N": 2}
        np.testing.assert_array_equal(got, x)


def test_what_runs_is_the_network_on_the_file(work):
    """run --input/--save against torch on the same weights (the torch backend's module, which
    the reference tests check against torchvision)."""
    import torch

    from convdsl.api import compile as build

    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    r = run(work, "small.cdl", "--input", save(work, "x.npy", x), "--save", "y.npy")
    assert r.returncode == 0, r.output
    with torch.inference_mode():
        ref = build(str(work / "small.cdl"))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(work / "y.npy"), ref, rtol=1e-6, atol=1e-6)
