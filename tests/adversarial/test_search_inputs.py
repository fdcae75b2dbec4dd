"""What `convdsl search` is handed: space and reference files that are not UTF-8 text (refused at
the bad byte, with the line and a caret), not regular files or too large, output folders that
cannot be one, and option values out of their domain.  Each is refused (exit 2, no traceback)
before anything is written: no output folder, no history.  The option values run one of each
kind in CI and all of them with HYPOTHESIS_PROFILE=thorough (a process start each)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.adversarial.harness import assert_only_changed, assert_refused, run_cli, tree_state
from tests.search.spaces import TINY

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
TORCH_MB = 6144  # refusals that come after the trainer (torch) is imported need more than the default cap


def _search(tmp: Path, *args: str, space: str = "tiny.cdl", mem_mb: int = 3072):
    if not (tmp / "tiny.cdl").exists():
        (tmp / "tiny.cdl").write_text(TINY)
    before = tree_state(tmp)
    r = run_cli("search", space, "--out", "out", "--budget", "2", "--no-progress", *args, cwd=tmp, timeout=60,
                mem_mb=mem_mb)
    assert_only_changed(before, tree_state(tmp))  # nothing written: no folder, no history
    return r


def test_a_space_file_that_is_not_utf8_is_refused_at_the_bad_byte(tmp_path):
    (tmp_path / "bad.cdl").write_bytes(TINY.encode().replace(b"choice(4, 8", b"choice(4, \xff8", 1))
    line = next(i for i, t in enumerate(TINY.splitlines(), 1) if "choice(4, 8" in t)
    column = TINY.splitlines()[line - 1].index("choice(4, 8") + len("choice(4, ") + 1
    r = _search(tmp_path, space="bad.cdl")
    assert_refused(r, exit_code=2, location=f"bad.cdl:{line}:{column}", mentions="byte 0xff")


def test_a_reference_that_is_not_utf8_is_refused(tmp_path):
    (tmp_path / "ref.cdl").write_bytes(b"# r\xe9f\xe9rence in latin-1\nnetwork r(x: f32[N, 1, 8, 8]) {\n}\n")
    r = _search(tmp_path, "--reference", "ref.cdl")
    assert_refused(r, exit_code=2, location="ref.cdl:1:4", mentions="not UTF-8")


@pytest.mark.parametrize("what, make, says", [
    ("a FIFO", lambda p: os.mkfifo(p), "not a regular file"),
    ("a link to /dev/zero", lambda p: p.symlink_to("/dev/zero"), "not a regular file"),
    ("5 MiB", lambda p: p.write_text("#" * (5 * 1024 * 1024)), "larger than 4 MiB"),
    ("missing", lambda p: None, "No such file"),
])
def test_a_space_file_that_cannot_be_one_is_refused_without_reading_it(tmp_path, what, make, says):
    make(tmp_path / "space.cdl")
    assert_refused(_search(tmp_path, space="space.cdl"), exit_code=2, mentions=says)


def test_an_output_folder_under_a_file_is_refused(tmp_path):
    (tmp_path / "tiny.cdl").write_text(TINY)
    (tmp_path / "file").write_text("x")
    before = tree_state(tmp_path)
    r = run_cli("search", "tiny.cdl", "--out", "file/out", "--budget", "2", cwd=tmp_path, mem_mb=TORCH_MB)
    assert_refused(r, exit_code=2, mentions="cannot create the search folder")
    assert_only_changed(before, tree_state(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    (tmp_path / "tiny.cdl").write_text(TINY)
    (tmp_path / "ro").mkdir(mode=0o500)
    r = run_cli("search", "tiny.cdl", "--out", "ro/out", "--budget", "2", cwd=tmp_path, mem_mb=TORCH_MB)
    assert_refused(r, exit_code=2)


OPTIONS = [
    ("--workers", "0", "--workers must be between 1", 3072),
    ("--workers", "100000", "--workers must be between 1", 3072),  # 100,000 torch processes of ~850 MB
    ("--workers", "-3", "--workers must be between 1", 3072),
    ("--budget", "0", "--budget must be between", 3072),
    ("--budget", "10000000", "--budget must be between", 3072),
    ("--epochs", "0", "--epochs must be between", 3072),
    ("--seeds", "0", "--seeds must be between", 3072),
    ("--batch-size", "0", "--batch-size must be between", 3072),
    ("--latency-batch", "1000000", "--latency-batch must be between", 3072),  # zeros of 10^6 x sample
    ("--population", "0", "--population must be between", 3072),
    ("--tournament", "0", "--sample must be between", 3072),
    ("--seed", "-1", "--seed must be between", 3072),
    ("--split-seed", str(2**64), "--split-seed must be between", 3072),
    ("--lr", "nan", "--lr must be between", 3072),
    ("--lr", "-0.1", "--lr must be between", 3072),
    ("--weight-decay", "inf", "--weight-decay must be between", 3072),
    ("--val-fraction", "1.5", "--val-fraction must be between 0 and 1", 3072),
    ("--max-params", "0", "--max-params must be between", 3072),
    ("--time-limit", "nan", "--time-limit must be", 3072),
    ("--objective", "accuracy,flops", "unknown objective", 3072),
    ("--backend", "tvm-foo", "unknown backend", 3072),
    ("--data", "mnist1d:samples=99999999999", "must be from 100 to 100,000", 3072),
    ("--data", "missing.npz", "does not exist", 3072),
    ("--optimizer", "adam_w", "unknown optimizer", TORCH_MB),
]
IN_CI = {("--workers", "100000"), ("--budget", "0"), ("--latency-batch", "1000000"), ("--split-seed", str(2**64)),
         ("--lr", "nan"), ("--time-limit", "nan"), ("--backend", "tvm-foo"), ("--data", "mnist1d:samples=99999999999")}


@pytest.mark.parametrize("option, value, says, mem_mb", [o for o in OPTIONS if THOROUGH or o[:2] in IN_CI])
def test_option_values_out_of_their_domain_are_refused_before_anything_is_written(tmp_path, option, value, says,
                                                                                   mem_mb):
    assert_refused(_search(tmp_path, option, value, mem_mb=mem_mb), exit_code=2, mentions=says)


def test_a_reference_the_front_end_refuses_is_a_located_error(tmp_path):
    (tmp_path / "ref.cdl").write_text("network r(x: f32[N, 1, 8, 8]) {\n    return x | rleu\n}\n")
    r = _search(tmp_path, "--reference", "ref.cdl", mem_mb=TORCH_MB)
    assert_refused(r, exit_code=4, location="ref.cdl:2:16", mentions="unknown name 'rleu'")
