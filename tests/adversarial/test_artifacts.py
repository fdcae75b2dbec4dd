"""Compiled folders as an attacker hands them over: every tampering of a TVM folder is refused
before its library is loaded, and malformed manifests are clean errors.

"Before it is loaded" is proven, not assumed: the attacker's library has a constructor that
creates a marker file the moment it is dlopen'ed (``test_the_marker_library_works`` shows it
does), and no refused run may leave the marker behind.  The artifact key of these tests is a
file of their own ($CONVDSL_ARTIFACT_KEY), never the user's.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convdsl.artifact import MANIFEST, file_entry, open_artifact, write_artifact
from convdsl.errors import ArtifactError, UsageError
from convdsl.trust import KEY_ENV, SIGNATURE, digest_of, signature

from tests.adversarial.harness import assert_no_crash, assert_only_changed, assert_refused, run_cli, tree_state

pytest.importorskip("tvm")

MEM_MB = 6144  # torch and TVM map ~4 GB of libraries
NET = """network small(x: f32[N, 3, 8, 8]) {
    return x | conv2d(4, 3) as c1 | relu | flatten | linear(5) as fc
}
"""
EVIL_C = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void loaded(void) {
    int fd = open(MARKER, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A key, a signed TVM folder, a signed torch folder and the attacker's library."""
    root = tmp_path_factory.mktemp("artifacts")
    key = root / "key" / "artifact.key"
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = str(key)
    try:
        from convdsl.api import load_graph
        from convdsl.backends.tvm import backend

        g = load_graph(NET)
        write_artifact(g, root / "tvm", backend("tvm-llvm", use_db=False))
        write_artifact(g, root / "torch", "torch")
        if shutil.which("gcc") is None:
            pytest.skip("the marker library needs gcc")
        marker = root / "LOADED"
        (root / "evil.c").write_text(EVIL_C)
        subprocess.run(["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(root / "evil.so"),
                        str(root / "evil.c")], check=True)
        yield {"root": root, "tvm": root / "tvm", "torch": root / "torch", "evil": root / "evil.so",
               "marker": marker, "key": key}
    finally:
        if old is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = old


def test_the_marker_library_works(world, tmp_path):
    """The proof's premise: loading the attacker's library creates the marker."""
    marker = world["marker"]
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(world['evil'])!r})"], check=True)
    assert marker.exists()
    marker.unlink()


# ---- tampering --------------------------------------------------------------------------------
def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def write_manifest(folder: Path, m: dict, sign_with: bytes | None = None) -> str:
    data = json.dumps(m, indent=2).encode()
    (folder / MANIFEST).write_bytes(data)
    if sign_with is not None:
        (folder / SIGNATURE).write_text(json.dumps(signature(data, sign_with)))
    return digest_of(data)


def rehash(folder: Path, m: dict, *names: str) -> None:
    for name in names:
        m["files"][name] = file_entry(folder / name)


def swap_library(world, f):
    shutil.copyfile(world["evil"], f / "lib.so")


def swap_and_rehash(world, f):
    swap_library(world, f)
    m = manifest(f)
    rehash(f, m, "lib.so")
    write_manifest(f, m)


def swap_rehash_unsigned(world, f):
    swap_and_rehash(world, f)
    (f / SIGNATURE).unlink()


def swap_rehash_signed_by_attacker(world, f):
    swap_library(world, f)
    m = manifest(f)
    rehash(f, m, "lib.so")
    write_manifest(f, m, sign_with=b"the attacker's own key, 32 bytes or more")


def hash_removed(world, f):
    swap_library(world, f)
    m = manifest(f)
    del m["files"]["lib.so"]["sha256"]
    write_manifest(f, m)
    (f / SIGNATURE).unlink()


def library_unlisted(world, f):
    swap_library(world, f)
    m = manifest(f)
    del m["files"]["lib.so"]
    write_manifest(f, m)
    (f / SIGNATURE).unlink()


def library_outside(where):
    def edit(world, f):
        m = manifest(f)
        name = str(world["evil"]) if where == "absolute" else "../evil.so"
        shutil.copyfile(world["evil"], f.parent / "evil.so")
        m["tvm"]["library"] = name
        m["files"][name] = file_entry(world["evil"])
        del m["files"]["lib.so"]
        write_manifest(f, m)
        (f / SIGNATURE).unlink()
    return edit


def library_symlink(world, f):
    (f / "lib.so").unlink()
    (f / "lib.so").symlink_to(world["evil"])
    m = manifest(f)
    m["files"]["lib.so"] = file_entry(world["evil"])
    write_manifest(f, m)


def truncated_library(world, f):
    data = (f / "lib.so").read_bytes()
    (f / "lib.so").write_bytes(data[: len(data) // 2])


def manifest_edited(world, f):
    m = manifest(f)
    m["tvm"]["target"]["mcpu"] = "x86-64"
    write_manifest(f, m)


def relabelled_to_torch(world, f):
    m = manifest(f)
    m["backend"] = "torch"
    write_manifest(f, m)


def relabelled_to_torch_unsigned(world, f):
    relabelled_to_torch(world, f)
    (f / SIGNATURE).unlink()


TVM_TAMPERINGS = {
    "library swapped": swap_library,
    "library swapped, hash recomputed": swap_and_rehash,
    "library swapped, hash recomputed, signature removed": swap_rehash_unsigned,
    "library swapped, hash recomputed, signed with another key": swap_rehash_signed_by_attacker,
    "hash removed": hash_removed,
    "library not listed": library_unlisted,
    "library path absolute": library_outside("absolute"),
    "library path ../": library_outside("parent"),
    "library a symbolic link": library_symlink,
    "library truncated": truncated_library,
    "manifest edited": manifest_edited,
    "relabelled tvm -> torch": relabelled_to_torch,
    "relabelled tvm -> torch, signature removed": relabelled_to_torch_unsigned,
}


def tampered(world, tmp_path, source: str, edit) -> Path:
    f = tmp_path / "art"
    shutil.copytree(world[source], f, symlinks=True)
    edit(world, f)
    return f


@pytest.mark.parametrize("case", sorted(TVM_TAMPERINGS))
def test_a_tampered_tvm_folder_is_refused_before_its_library_is_loaded(world, tmp_path, case):
    f = tampered(world, tmp_path, "tvm", TVM_TAMPERINGS[case])
    before = tree_state(tmp_path)
    r = run_cli("run", f, cwd=tmp_path, mem_mb=MEM_MB)
    assert_refused(r, exit_code=2, mentions="artifact error")
    assert not world["marker"].exists(), "the library was loaded"
    assert_only_changed(before, tree_state(tmp_path))


def test_a_pin_refuses_a_folder_that_is_consistent_but_not_the_one_pinned(world, tmp_path):
    """Swapped, hash recomputed and re-signed by whoever holds the key: only the pin tells."""
    pinned = digest_of((world["tvm"] / MANIFEST).read_bytes())
    f = tampered(world, tmp_path, "tvm", lambda w, f: (swap_library(w, f), _resign(w, f)))
    r = run_cli("run", f, "--expect-sha256", pinned, cwd=tmp_path, mem_mb=MEM_MB)
    assert_refused(r, exit_code=2, mentions="not the artifact you pinned")
    assert not world["marker"].exists()


def _resign(world, f):
    m = manifest(f)
    rehash(f, m, "lib.so")
    write_manifest(f, m, sign_with=world["key"].read_bytes().strip())


def test_a_torch_folder_relabelled_tvm_is_refused(world, tmp_path):
    """The attacker adds a library and a "tvm" section to a torch folder: nobody signed that."""
    def relabel(w, f):
        m, tvm_m = manifest(f), manifest(w["tvm"])
        shutil.copyfile(w["evil"], f / "lib.so")
        (f / "model.py").unlink()
        m["backend"], m["tvm"], m["versions"] = "tvm-llvm", tvm_m["tvm"], tvm_m["versions"]
        del m["files"]["model.py"]
        rehash(f, m, "lib.so")
        write_manifest(f, m)
    f = tampered(world, tmp_path, "torch", relabel)
    r = run_cli("run", f, cwd=tmp_path, mem_mb=MEM_MB)
    assert_refused(r, exit_code=2, mentions="artifact error")
    assert not world["marker"].exists()


def test_the_folder_as_compiled_runs_pinned_or_signed(world, tmp_path):
    pinned = digest_of((world["tvm"] / MANIFEST).read_bytes())
    before = tree_state(world["root"])
    r = run_cli("run", world["tvm"], "--expect-sha256", f"sha256:{pinned}", cwd=tmp_path, mem_mb=MEM_MB)
    assert_no_crash(r)
    assert r.returncode == 0 and "ran small on tvm-llvm" in r.stdout, r.output
    assert_only_changed(before, tree_state(world["root"]))
    art = open_artifact(world["tvm"])
    assert art.trusted and "signed" in art.trusted


def test_without_your_key_a_folder_must_be_pinned(world, tmp_path):
    """Another user (another key) gets the folder: unsigned for them, so TVM needs the pin."""
    other = tmp_path / "other.key"
    r = run_cli("run", world["tvm"], cwd=tmp_path, mem_mb=MEM_MB, env={KEY_ENV: str(other)})
    assert_refused(r, exit_code=2, mentions="nothing vouches for it")
    assert not other.exists()  # running never makes a key


def test_a_key_others_can_read_is_refused(world, tmp_path):
    key = tmp_path / "open.key"
    key.write_text("k" * 64)
    key.chmod(0o644)
    r = run_cli("run", world["tvm"], cwd=tmp_path, mem_mb=MEM_MB, env={KEY_ENV: str(key)})
    assert_refused(r, exit_code=2, mentions="may be read or changed by other users")


# ---- malformed manifests and odd files -------------------------------------------------------------
def malformed(world, tmp_path, data: bytes) -> Path:
    f = tmp_path / "art"
    shutil.copytree(world["torch"], f)
    (f / MANIFEST).write_bytes(data)
    return f


def _with(**fields) -> bytes:
    return json.dumps(fields).encode()


BAD_MANIFESTS = {
    "binary": bytes(range(256)) * 8,
    "not UTF-8": b'{"format": 2, "backend": "\xff\xfe"}',
    "not JSON": b"{format: 2",
    "a list": b"[1, 2, 3]",
    "deeply nested": b"[" * 200_000 + b"]" * 200_000,
    "huge": b'{"format": 2, "pad": "' + b"x" * (2 << 20) + b'"}',
    "format true": _with(format=True),
    "format 1": _with(format=1, files=["model.py"]),
    "format a string": _with(format="2"),
    "a 5000-digit number": b'{"format": ' + b"9" * 5000 + b"}",
    "NaN sizes": b'{"format": 2, "symbols": {"N": NaN}}',
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_a_malformed_manifest_is_a_clean_error(world, tmp_path, case):
    f = malformed(world, tmp_path, BAD_MANIFESTS[case])
    with pytest.raises(UsageError):
        open_artifact(f)


def _field_cases(world) -> dict:
    good = manifest(world["torch"])

    def edited(**kw):
        m = json.loads(json.dumps(good))
        for k, v in kw.items():
            if v is ...:
                del m[k]
            else:
                m[k] = v
        return json.dumps(m).encode()

    files = good["files"]
    return {
        "backend unknown": edited(backend="exec"),
        "backend a list": edited(backend=["torch"]),
        "network a number": edited(network=3),
        "inputs a string": edited(inputs="x"),
        "input shape of floats": edited(inputs=[{"name": "x", "shape": [1.5], "dtype": "f32"}]),
        "symbols negative": edited(symbols={"N": -1}),
        "symbols a bool": edited(symbols={"N": True}),
        "versions numbers": edited(versions={"torch": 2}),
        "files missing": edited(files=...),
        "files a list": edited(files=sorted(files)),
        "files empty": edited(files={}),
        "file entry a string": edited(files={**files, "model.py": "abc"}),
        "file bytes negative": edited(files={**files, "model.py": {**files["model.py"], "bytes": -1}}),
        "file bytes a float": edited(files={**files, "model.py": {**files["model.py"], "bytes": 2016.0}}),
        "file hash short": edited(files={**files, "model.py": {**files["model.py"], "sha256": "ab"}}),
        "file name with a slash": edited(files={**files, "a/b": files["model.py"]}),
        "file name ..": edited(files={**files, "..": files["model.py"]}),
        "file name with NUL": edited(files={**files, "a\u0000b": files["model.py"]}),
        "file name manifest.json": edited(files={**files, "manifest.json": files["model.py"]}),
        "weights not listed": edited(files={k: v for k, v in files.items() if k != "weights.safetensors"}),
    }


def test_every_malformed_field_is_a_clean_error(world, tmp_path):
    for case, data in _field_cases(world).items():
        f = malformed(world, tmp_path / case.replace(" ", "_"), data)
        (f / SIGNATURE).unlink()
        with pytest.raises(UsageError) as e:
            open_artifact(f)
        assert "Traceback" not in e.value.render(), case


@pytest.mark.parametrize("case", ["binary", "deeply nested", "huge", "format true"])
def test_malformed_manifests_through_the_command_line(world, tmp_path, case):
    f = malformed(world, tmp_path, BAD_MANIFESTS[case])
    r = run_cli("run", f, cwd=tmp_path, mem_mb=MEM_MB, timeout=60)
    assert_refused(r, exit_code=2)


def test_a_manifest_that_is_a_fifo_does_not_hang(world, tmp_path):
    f = tmp_path / "art"
    shutil.copytree(world["torch"], f)
    (f / MANIFEST).unlink()
    os.mkfifo(f / MANIFEST)
    r = run_cli("run", f, cwd=tmp_path, mem_mb=MEM_MB, timeout=30)
    assert_refused(r, exit_code=2, mentions="not a regular file")


def test_a_manifest_that_is_a_link_is_refused(world, tmp_path):
    f = tmp_path / "art"
    shutil.copytree(world["torch"], f)
    (f / MANIFEST).unlink()
    (f / MANIFEST).symlink_to(world["torch"] / MANIFEST)
    with pytest.raises(ArtifactError, match="not a regular file"):
        open_artifact(f)


def test_a_listed_file_that_is_a_fifo_or_a_folder_is_refused(world, tmp_path):
    for kind in ("fifo", "folder"):
        f = tmp_path / kind
        shutil.copytree(world["torch"], f)
        (f / "weights.safetensors").unlink()
        os.mkfifo(f / "weights.safetensors") if kind == "fifo" else (f / "weights.safetensors").mkdir()
        with pytest.raises(ArtifactError):
            open_artifact(f)


def test_an_odd_signature_file_is_refused(world, tmp_path):
    for kind, make in [("fifo", lambda p: os.mkfifo(p)), ("huge", lambda p: p.write_text("x" * 10_000)),
                       ("not JSON", lambda p: p.write_bytes(b"\xff" * 20)),
                       ("wrong form", lambda p: p.write_text('{"algorithm": "none", "key_id": "", "hmac": ""}'))]:
        f = tmp_path / kind.replace(" ", "_")
        shutil.copytree(world["tvm"], f)
        (f / SIGNATURE).unlink()
        make(f / SIGNATURE)
        with pytest.raises(ArtifactError):
            open_artifact(f)


def test_a_torch_folder_with_a_trojan_model_py_is_refused(world, tmp_path):
    """model.py is never executed by convdsl, and users import it: its hash is checked too."""
    f = tmp_path / "art"
    shutil.copytree(world["torch"], f)
    with open(f / "model.py", "a") as fh:
        fh.write("\nopen('LOADED', 'w')\n")
    r = run_cli("run", f, cwd=tmp_path, mem_mb=MEM_MB)
    assert_refused(r, exit_code=2, mentions="model.py")
    assert not (tmp_path / "LOADED").exists()


def test_an_onnx_folder_runs_only_when_vouched_for(world, tmp_path):
    """ONNX Runtime parses and executes model.onnx: signed (or pinned) runs, unsigned is refused."""
    pytest.importorskip("onnxruntime")
    from convdsl.api import load_graph

    write_artifact(load_graph(NET), tmp_path / "onnx", "onnx")
    r = run_cli("run", tmp_path / "onnx", cwd=tmp_path, mem_mb=MEM_MB)
    assert_no_crash(r)
    assert r.returncode == 0 and "ran small on onnx" in r.stdout, r.output
    (tmp_path / "onnx" / SIGNATURE).unlink()
    r = run_cli("run", tmp_path / "onnx", cwd=tmp_path, mem_mb=MEM_MB)
    assert_refused(r, exit_code=2, mentions="nothing vouches for it")


def test_an_unsigned_torch_folder_runs_with_a_note(world, tmp_path):
    """Data only (network.cdl, safetensors): nothing in it runs, so no pin is needed; the note says
    what was and was not established."""
    f = tmp_path / "art"
    shutil.copytree(world["torch"], f)
    (f / SIGNATURE).unlink()
    r = run_cli("run", f, cwd=tmp_path, mem_mb=MEM_MB)
    assert_no_crash(r)
    assert r.returncode == 0 and "nothing says who made it" in r.stderr, r.output
