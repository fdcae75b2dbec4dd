"""`convdsl compile` / `convdsl run` (convdsl/cli/build.py): the shapes an artifact takes.

Issue 14 item 12: every manifest lists, per input and output, the ``shape`` the artifact takes
(a size, or a symbol name where it takes any size) beside the program's ``symbolic_shape``, and
``dynamic`` names those symbols; `compile` prints them.  A torch folder is rebuilt from
network.cdl and an ONNX model keeps its symbols as dim_params, so both take any batch."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from convdsl.cli import main

NET = """network small(x: f32[N, 3, 8, 8]) {
    return x | conv2d(4, 3, pad=1) | relu | global_avgpool(keepdim=false) | linear(5)
}
"""


def _compile(tmp_path, backend: str, *options: str):
    src = tmp_path / "small.cdl"
    src.write_text(NET)
    out = tmp_path / f"out_{backend}"
    r = CliRunner().invoke(main, ["compile", str(src), "-b", backend, *options, "-o", str(out)])
    assert r.exit_code == 0, r.output
    return r, out


def test_a_torch_folder_takes_any_batch(tmp_path):
    r, out = _compile(tmp_path, "torch", "--bind", "N=2")
    assert "takes x: f32[N, 3, 8, 8] (any N)" in r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["inputs"] == [{"name": "x", "shape": ["N", 3, 8, 8], "symbolic_shape": ["N", 3, 8, 8], "dtype": "f32"}]
    assert m["outputs"][0]["shape"] == ["N", 5] and m["dynamic"] == ["N"] and m["symbols"] == {"N": 2}
    run = CliRunner().invoke(main, ["run", str(out)])
    assert run.exit_code == 0 and "[2, 5]" in run.output, run.output  # the --bind size is the default
    run = CliRunner().invoke(main, ["run", str(out), "--batch", "7"])
    assert run.exit_code == 0 and "[7, 5]" in run.output, run.output


def test_an_onnx_folder_lists_the_dim_params_of_its_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    r, out = _compile(tmp_path, "onnx")
    m = json.loads((out / "manifest.json").read_text())
    model = onnx.load(str(out / "model.onnx"))
    for spec, value in zip(m["inputs"], model.graph.input):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert spec["shape"] == dims == ["N", 3, 8, 8]
    digest = r.output.split("artifact sha256:")[1].split()[0]
    x = tmp_path / "x.npy"
    np.save(x, np.ones((3, 3, 8, 8), np.float32))
    run = CliRunner().invoke(main, ["run", str(out), "--input", str(x), "--expect-sha256", digest])
    assert run.exit_code == 0 and "[3, 5]" in run.output, run.output


def test_a_manifest_that_fixes_the_batch_refuses_another_at_the_input(tmp_path):
    """What `run` checks is the manifest's shapes (hashed with the folder, as the rest of it):
    a folder whose manifest takes N = 1 only is refused for --batch 3, located, exit 5."""
    from convdsl.artifact import check_sizes, open_artifact
    from convdsl.errors import ShapeError
    from convdsl.lang.elaborate import elaborate_file

    _, out = _compile(tmp_path, "torch")
    art = open_artifact(out)
    art.manifest["inputs"][0]["shape"] = [1, 3, 8, 8]  # as a static TVM library's manifest says
    g = elaborate_file(out / "network.cdl")
    check_sizes(art, g, {"N": 1}, "--batch 1")
    with pytest.raises(ShapeError, match=r"takes x: f32\[1, 3, 8, 8\], compiled for N = 1; with --batch 3, N = 3") as e:
        check_sizes(art, g, {"N": 3}, "--batch 3")
    assert e.value.exit_code == 5 and str(e.value.span).startswith(str(out / "network.cdl"))
    assert "--backend torch --bind N=3" in e.value.hint and "--dynamic-batch" not in e.value.hint
