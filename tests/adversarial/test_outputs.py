"""Where convdsl writes: output folders (compile, prune, quantize), `run --save`, `fmt --write`.

A bad path is a clean error; a folder is written completely or not at all (a failure, even a
full disk, leaves no partial folder and never loses the previous one); nothing outside the
output changes; a user's own folder or file is never emptied or replaced by a typo.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adversarial.harness import (assert_no_crash, assert_only_changed, assert_refused, run_cli,
                                       run_cli_with_limits, tree_state)

MEM_MB = 6144  # torch maps ~3.5 GB of libraries
NET = """network small(x: f32[N, 3, 8, 8]) {
    return x | conv2d(4, 3) as c1 | relu | flatten | linear(10) as fc
}
"""
BIG = """network big(x: f32[N, 64]) {
    return x | linear(2048) as a | relu | linear(256) as b
}
"""  # 659,712 parameters: a 2.6 MB weights file


@pytest.fixture
def work(tmp_path, monkeypatch):
    (tmp_path / "net.cdl").write_text(NET)
    (tmp_path / "big.cdl").write_text(BIG)
    monkeypatch.setenv("CONVDSL_ARTIFACT_KEY", str(tmp_path.parent / f"{tmp_path.name}.key"))
    return tmp_path


def compile_(work, *args, **kw):
    return run_cli("compile", *args, cwd=work, mem_mb=MEM_MB, **kw)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".convdsl-" in p.name]


@pytest.mark.parametrize("out", ["", " ", ".", "..", "/"])
def test_the_current_folder_and_above_are_never_an_output(work, out):
    (work / "model.py").write_text("# the user's own file\n")
    before = tree_state(work)
    r = compile_(work, "net.cdl", "-o", out)
    assert_refused(r, exit_code=2)
    assert_only_changed(before, tree_state(work))


def test_bad_output_paths_are_clean_errors(work):
    (work / "file.txt").write_text("x")
    (work / "art").mkdir()  # an artifact (by its manifest) whose model.py is a folder of the user's
    (work / "art" / "manifest.json").write_text('{"format": 2, "files": {"model.py": {}}}')
    (work / "art" / "model.py").mkdir()
    (work / "art" / "model.py" / "keep.txt").write_text("mine")
    (work / "plain").mkdir()
    (work / "plain" / "model.py").write_text("# not an artifact")
    (work / "dangling").symlink_to(work / "nowhere")
    before = tree_state(work)
    for out, says in [("file.txt/out", "file.txt is not a folder"), ("/proc/convdsl-out", "cannot write"),
                      ("file.txt", "is a file"), ("art", "holds model.py/"), ("plain", "not a folder this command wrote"),
                      ("dangling", "symbolic link")]:
        r = compile_(work, "net.cdl", "-o", out)
        assert_refused(r, exit_code=2, mentions=says)
    assert_only_changed(before, tree_state(work))


def test_an_artifact_is_replaced_whole_and_a_foreign_folder_never(work):
    r = compile_(work, "net.cdl", "-o", "out")
    assert r.returncode == 0, r.output
    old = tree_state(work / "out")
    (work / "link").symlink_to("out")
    r = compile_(work, "big.cdl", "-o", "link")  # replaces the artifact the link points to; the link stays
    assert r.returncode == 0, r.output
    assert (work / "link").is_symlink() and "network big" in (work / "out" / "network.cdl").read_text()
    assert set(tree_state(work / "out")) == set(old) and not leftovers(work)
    (work / "out" / "notes.txt").write_text("the user's notes")
    before = tree_state(work)
    r = compile_(work, "net.cdl", "-o", "out")
    assert_refused(r, exit_code=2, mentions="notes.txt")
    assert_only_changed(before, tree_state(work))


def test_two_compiles_into_one_folder_at_once_leave_one_whole_artifact(work):
    from convdsl.artifact import open_artifact

    procs = [subprocess.Popen([sys.executable, "-m", "convdsl", "compile", src, "-o", "out"], cwd=work,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for src in ("net.cdl", "big.cdl")]
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in procs]
    assert all(rc in (0, 2) and "Traceback" not in err for rc, err in results), results
    assert any(rc == 0 for rc, _ in results)
    art = open_artifact(work / "out")  # whichever won: complete, every hash right
    assert art.manifest["network"] in ("small", "big") and not leftovers(work)


def test_a_failed_compile_leaves_the_previous_folder_and_no_partial_one(work):
    r = compile_(work, "net.cdl", "-o", "new/deeper/out")
    assert r.returncode == 0, r.output
    before = tree_state(work)
    (work / "bad.cdl").write_text('network n(x: f32[N, 4]) {\n    return x | linear(4) as forward\n}\n')
    before = tree_state(work)
    for out in ("new/deeper/out", "fresh/deeper/out"):  # torch cannot name a submodule 'forward': after writing began
        r = compile_(work, "bad.cdl", "-o", out)
        assert_refused(r, exit_code=8, location="bad.cdl:2:16")
    assert_only_changed(before, tree_state(work))  # no "fresh/", no partial "out", nothing left beside it


def test_a_full_disk_leaves_the_previous_folder_and_no_partial_one(work):
    """The file-size limit stops the 2.6 MB weights file the way a full disk would."""
    r = compile_(work, "net.cdl", "-o", "out")
    assert r.returncode == 0, r.output
    before = tree_state(work)
    r = run_cli_with_limits("compile", "big.cdl", "-o", "out", rlimits={resource.RLIMIT_FSIZE: 256 * 1024},
                            cwd=work, mem_mb=MEM_MB)
    assert_refused(r, exit_code=2, mentions="cannot write out")
    assert_only_changed(before, tree_state(work))


def _tmpfs_works() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    p = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                        "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return p.returncode == 0


@pytest.mark.skipif(not _tmpfs_works(), reason="needs a tmpfs in a user namespace (unshare -rm)")
def test_a_really_full_disk_leaves_the_previous_folder(work):
    """A 1 MiB tmpfs (in a private mount namespace): compile the small network, then the big one
    into the same folder: ENOSPC, and the folder is still the small network's, with nothing beside it."""
    disk = work / "disk"
    disk.mkdir()
    script = (f'mount -t tmpfs -o size=1m tmpfs "{disk}" && cd "{disk}" && '
              f'{sys.executable} -m convdsl compile ../net.cdl -o out > /dev/null && '
              f'{{ {sys.executable} -m convdsl compile ../big.cdl -o out; echo "rc=$?"; }} 2>&1; '
              'ls -A; grep -c "^network small" out/network.cdl')
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200"})
    out = p.stdout
    assert "rc=2" in out and "No space left on device" in out and "Traceback" not in out, out + p.stderr
    assert out.strip().splitlines()[-2:] == ["out", "1"], out  # only the old folder, still the small network


# ---- prune and quantize share the writer ----------------------------------------------------------
def test_prune_and_quantize_never_replace_a_foreign_folder(work):
    (work / "results").mkdir()
    (work / "results" / "other.cdl").write_text("# another program's result\n")
    before = tree_state(work)
    for cmd in (["prune", "net.cdl", "--ratio", "0.5"], ["quantize", "net.cdl", "--cast", "f16"]):
        r = run_cli(*cmd, "-o", "results", cwd=work, mem_mb=MEM_MB)
        assert_refused(r, exit_code=2, mentions="other.cdl")
    assert_only_changed(before, tree_state(work))


def test_quantize_writes_its_folder_whole(work):
    r = run_cli("quantize", "net.cdl", "--cast", "f16", "-o", "q", cwd=work, mem_mb=MEM_MB)
    assert_no_crash(r)
    assert r.returncode == 0, r.output
    assert sorted(p.name for p in (work / "q").iterdir()) == ["net.cdl", "report.json", "report.md",
                                                             "weights.safetensors"]
    assert oct((work / "q").stat().st_mode & 0o777) == oct(0o777 & ~_umask()) and not leftovers(work)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ---- run --save -------------------------------------------------------------------------------------
def test_run_save_to_bad_places_is_a_clean_error(work):
    (work / "file.txt").write_text("x")
    before = tree_state(work)
    for target in ("/proc/y.npy", "file.txt/y.npy", ".", "nowhere/y.npy"):
        r = run_cli("run", "net.cdl", "--save", target, cwd=work, mem_mb=MEM_MB)
        assert_refused(r, exit_code=2)
    assert_only_changed(before, tree_state(work))


# ---- fmt --write ----------------------------------------------------------------------------------
UGLY = "network n(x: f32[N, 4]) {\n  return x|linear(4)\n}\n"


def test_fmt_write_keeps_the_mode_and_writes_through_a_link(work):
    f = work / "u.cdl"
    f.write_text(UGLY)
    f.chmod(0o600)
    (work / "link.cdl").symlink_to("u.cdl")
    r = run_cli("fmt", "--write", "link.cdl", cwd=work)
    assert_no_crash(r)
    assert r.returncode == 0, r.output
    assert (work / "link.cdl").is_symlink() and os.readlink(work / "link.cdl") == "u.cdl"
    assert f.read_text() == "network n(x: f32[N, 4]) {\n    return x | linear(4)\n}\n"
    assert f.stat().st_mode & 0o777 == 0o600 and not leftovers(work)


def test_fmt_refuses_what_it_cannot_read_or_write(work):
    (work / "latin1.cdl").write_bytes(b"network n(x: f32[N, 4]) {\n  return x # caf\xe9\n}\n")
    os.mkfifo(work / "fifo.cdl")
    (work / "ro").mkdir()
    (work / "ro" / "u.cdl").write_text(UGLY)
    (work / "ro").chmod(0o555)
    try:
        before = tree_state(work)
        # not UTF-8: a syntax error at the first bad byte, as every command reports it (README exit codes)
        for f, code, says in [("latin1.cdl", 3, "latin1.cdl:2:17"), ("fifo.cdl", 2, "not a regular file"),
                              ("missing.cdl", 2, "cannot read")]:
            r = run_cli("fmt", "--write", f, cwd=work, timeout=30)
            assert_refused(r, exit_code=code, mentions=says)
        if os.geteuid() != 0:  # root writes anywhere
            r = run_cli("fmt", "--write", "ro/u.cdl", cwd=work)
            assert_refused(r, exit_code=2, mentions="cannot write")
        assert_only_changed(before, tree_state(work))
    finally:
        (work / "ro").chmod(0o755)
