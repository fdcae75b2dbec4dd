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

    model = Exporter(graph, opset).export()
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
    os.replace(tmp, Path(out) / "model.onnx")
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


def load_runner(folder, manifest: dict[str, Any] | None = None):
    """``convdsl run`` on an ONNX artifact folder: ONNX Runtime on its model.onnx."""
    sess = session(Path(folder) / "model.onnx")
    names = [i.name for i in sess.get_inputs()]
    return lambda arrays: sess.run(None, {n: np.asarray(a) for n, a in zip(names, arrays)})
