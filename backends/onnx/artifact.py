"""ONNX artifact files, the model check, and an ONNX Runtime runner for `convdsl run`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from convdsl.errors import LoweringError, UsageError
from convdsl.ir.graph import Graph

OPSET = 17


def _onnx():
    try:
        import onnx
    except ImportError:
        raise UsageError("the onnx backend needs the onnx package",
                         hint="pip install 'convdsl[onnx]' (onnx and onnxruntime)") from None
    return onnx


def export_graph(graph: Graph, opset: int = OPSET):
    """convdsl graph -> checked ``onnx.ModelProto`` (opset ``opset``, symbolic dims as dim_params)."""
    _onnx()
    from convdsl.backends.onnx.export import Exporter
    from convdsl.backends.onnx.lowering import ONNX_EXPORTS

    model = Exporter(graph, ONNX_EXPORTS, opset).export()
    check_model(model)
    return model


def check_model(model) -> None:
    """onnx.checker with full shape inference (strict): what every exported model passes."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:  # a bug in an export entry, not a user mistake
        raise LoweringError(f"the exported ONNX model does not pass onnx.checker: {str(e).splitlines()[0]}") from None


def write_artifact(graph: Graph, out: Path, opset: int = OPSET) -> list[str]:
    """Backend files of an ONNX artifact: model.onnx (written to a temp file, then renamed)."""
    model = export_graph(graph, opset)
    tmp = Path(out) / "model.onnx.tmp"
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, Path(out) / "model.onnx")  # (the whole folder is staged too: convdsl.outputs)
    return ["model.onnx"]


def manifest_extra(graph: Graph) -> dict[str, Any]:
    onnx = _onnx()
    return {"onnx": {"opset": OPSET, "file": "model.onnx", "ir_version": 8},
            "versions_onnx": {"onnx": onnx.__version__}}


def session(model_or_path, threads: int | None = None, profile: str | None = None):
    """An ONNX Runtime CPU session on a model (ModelProto, bytes or path)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("running ONNX models needs onnxruntime", hint="pip install 'convdsl[onnx]'") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else model_or_path
    if isinstance(data, (str, os.PathLike)):
        data = str(data)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def runner(graph: Graph):
    """A callable (NumPy arrays) -> NumPy arrays running the exported model in ONNX Runtime."""
    sess = session(export_graph(graph))
    names = [i.name for i in sess.get_inputs()]

    def run(arrays):
        return sess.run(None, {n: np.asarray(a) for n, a in zip(names, arrays)})

    return run


def build_module(graph: Graph):
    """``convdsl.compile(..., backend="onnx")``: the ONNX Runtime runner."""
    return runner(graph)


FILES = {"model.onnx", "network.cdl", "weights.safetensors"}


def check_artifact(art) -> None:
    """An ONNX folder (``convdsl.artifact.open_artifact``'s result) lists exactly its three files
    and an ``onnx`` section, and, since ONNX Runtime parses and executes ``model.onnx`` (a large C++
    parser, and external-data paths it would read), it runs only when pinned or signed with your
    artifact key, like a TVM folder (docs/artifacts.md)."""
    from convdsl.errors import ArtifactError

    m = art.manifest
    info = m.get("onnx")
    if set(m["files"]) != FILES or not isinstance(info, dict) or info.get("file") != "model.onnx" or "tvm" in m:
        raise ArtifactError(f"{art.folder}: manifest.json does not describe an onnx folder",
                            expected=f"an 'onnx' section and the files {', '.join(sorted(FILES))}",
                            hint="a compiled folder cannot change backend; recompile it")
    if art.trusted is None:
        raise ArtifactError(f"refusing to give {art.folder}/model.onnx to ONNX Runtime: nothing vouches for it",
                            notes=[f"it is not pinned with --expect-sha256, and {art.untrusted_because}"],
                            hint="if you trust who made it, run it with --expect-sha256 DIGEST, the 'artifact sha256' "
                                 "that convdsl compile printed for it (docs/artifacts.md)")


def load_runner(art):
    """``convdsl run`` on an ONNX artifact folder (checked by ``open_artifact`` and ``check_artifact``):
    ONNX Runtime on the bytes of its model.onnx that were hashed, given as bytes, so the model
    cannot name files beside it (external data) to read."""
    from convdsl.artifact import private_copy

    with private_copy(art, "model.onnx") as path:
        data = path.read_bytes()
    sess = session(data)
    names = [i.name for i in sess.get_inputs()]
    return lambda arrays: sess.run(None, {n: np.asarray(a) for n, a in zip(names, arrays)})
