"""Artifacts: compile -> folder (lib.so + manifest) -> load and run on NumPy or torch;
`convdsl run` on the folder; refusal of artifacts built for another target or TVM."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from convdsl.artifact import write_artifact
from convdsl.backends.tvm import backend, load
from convdsl.cli import main
from convdsl.errors import UsageError

from .conftest import assert_close, graph_of, random_inputs, torch_outputs

NET = """
network small(x: f32[N, 3, 8, 8]) {
    y = x | conv2d(8, 3, pad=1) | batchnorm | relu
    z = y | maxpool2d(2) | global_avgpool(keepdim=false) | linear(5)
    return z
}
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    g = graph_of(NET)
    out = tmp_path_factory.mktemp("art") / "small"
    files = write_artifact(g, out, backend("tvm-llvm", use_db=False))
    return g, out, files


def test_folder_and_manifest(artifact):
    g, out, files = artifact
    assert set(files) >= {"lib.so", "manifest.json", "network.cdl", "weights.safetensors"}
    m = json.loads((out / "manifest.json").read_text())
    assert m["backend"] == "tvm-llvm"
    assert m["tvm"]["target"]["kind"] == "llvm" and m["tvm"]["target"]["mcpu"]
    assert m["tvm"]["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert m["tvm"]["outputs"][0]["shape"] == [1, 5]
    assert m["versions"]["tvm"] and m["convdsl_version"] and "source_hash" in m
    assert "conv2d" in m["ops"] and len(m["files"]["lib.so"]["sha256"]) == 64
    assert m["files"]["lib.so"]["bytes"] == (out / "lib.so").stat().st_size


def test_load_runs_numpy_and_torch(artifact):
    g, out, _ = artifact
    run = load(out)
    xs = random_inputs(g)
    ref = torch_outputs(g, xs)
    assert_close(run(xs), ref)
    # torch tensors in, torch tensors out (DLPack), aligned or not
    t = torch.from_numpy(xs[0].copy())
    y = run([t])[0]
    assert isinstance(y, torch.Tensor)
    assert_close([y.numpy()], ref)
    unaligned = torch.empty(xs[0].size + 1)[1:].view(xs[0].shape)
    unaligned.copy_(t)
    assert_close([run([unaligned])[0].numpy()], ref)


def test_wrong_input_shape_is_refused(artifact):
    _, out, _ = artifact
    with pytest.raises(UsageError, match="compiled for float32"):
        load(out)([np.zeros((2, 3, 8, 8), np.float32)])


def test_convdsl_run_on_the_folder(artifact, tmp_path):
    g, out, _ = artifact
    xs = random_inputs(g)
    np.save(tmp_path / "x.npy", xs[0])
    res = CliRunner().invoke(main, ["run", str(out), "--input", str(tmp_path / "x.npy"),
                                    "--save", str(tmp_path / "y.npy")])
    assert res.exit_code == 0, res.output
    assert "tvm-llvm" in res.output
    assert_close([np.load(tmp_path / "y.npy")], torch_outputs(g, xs))


def _copy_with(out, tmp_path, edit):
    """A copy of the artifact with its manifest edited and signed again with your key: a folder
    you made, as another TVM or another machine would have made it."""
    from convdsl.trust import write_signature

    dst = tmp_path / "edited"
    shutil.copytree(out, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    data = json.dumps(m).encode()
    (dst / "manifest.json").write_bytes(data)
    write_signature(dst, data)
    return dst


def test_other_tvm_version_is_refused(artifact, tmp_path):
    _, out, _ = artifact
    dst = _copy_with(out, tmp_path, lambda m: m["versions"].update(tvm="0.19.0"))
    with pytest.raises(UsageError, match="compiled with TVM 0.19.0"):
        load(dst)


def test_other_target_is_refused(artifact, tmp_path):
    _, out, _ = artifact
    from convdsl.backends.tvm.targets import detected_cuda_arch

    if detected_cuda_arch() is not None:
        pytest.skip("a GPU is visible: a CUDA target would be runnable")
    dst = _copy_with(out, tmp_path, lambda m: (m.update(backend="tvm-cuda"),
                                               m["tvm"].update(target={"kind": "cuda", "arch": "sm_90"})))
    with pytest.raises(UsageError, match="no GPU is visible"):
        load(dst)


def test_cpu_without_the_isa_is_refused(monkeypatch, artifact, tmp_path):
    _, out, _ = artifact
    from convdsl.backends.tvm import targets

    monkeypatch.setattr(targets, "cpu_flags", lambda: frozenset({"sse2", "avx", "avx2", "fma"}))
    dst = _copy_with(out, tmp_path, lambda m: m["tvm"].update(target={"kind": "llvm", "mcpu": "icelake-server"}))
    with pytest.raises(UsageError, match="lacks avx512f"):
        load(dst)


def test_changed_library_is_refused(artifact, tmp_path):
    _, out, _ = artifact
    dst = _copy_with(out, tmp_path, lambda m: None)
    with open(dst / "lib.so", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UsageError, match="changed or truncated after compiling"):
        load(dst)


def test_torch_artifact_is_not_a_tvm_artifact(tmp_path):
    g = graph_of(NET)
    write_artifact(g, tmp_path / "t", "torch")
    with pytest.raises(UsageError, match="not by TVM"):
        load(tmp_path / "t")


def test_manifest_lists_the_shapes_the_library_takes(tmp_path):
    """Issue 14 item 12: a TVM folder is built for N=1 (or the --bind size) while its manifest.json
    listed the inputs as ['N', 3, 8, 8].  The manifest now gives the bound shapes (and the
    program's symbolic ones beside them), and `convdsl run` runs the folder at that batch.  (Without
    --bind the library takes any N: test_dynamic_batch.py.)"""
    src = tmp_path / "small.cdl"
    src.write_text(NET)
    for bind, n in ((["--bind", "N=1"], 1), (["--bind", "N=4"], 4)):
        out = tmp_path / f"out{n}"
        r = CliRunner().invoke(main, ["compile", str(src), "-b", "tvm-llvm", "--no-db", *bind, "-o", str(out)])
        assert r.exit_code == 0, r.output
        m = json.loads((out / "manifest.json").read_text())
        assert m["inputs"] == [{"name": "x", "shape": [n, 3, 8, 8], "symbolic_shape": ["N", 3, 8, 8], "dtype": "f32"}]
        assert m["outputs"] == [{"name": "z", "shape": [n, 5], "symbolic_shape": ["N", 5], "dtype": "f32"}]
        digest = r.output.split("artifact sha256:")[1].split()[0]
        run = CliRunner().invoke(main, ["run", str(out), "--expect-sha256", digest])
        assert run.exit_code == 0, run.output
        assert f"z: [{n}, 5]" in run.output
