"""ONNX backend: ``--backend onnx`` writes ``model.onnx`` built directly from convdsl's IR.

    import convdsl.backends.onnx as conx
    model = conx.export_graph(graph)        # onnx.ModelProto, opset 17, batch kept symbolic
    conx.write_artifact(graph, "out/")      # or: convdsl compile net.cdl --backend onnx -o out/
    run = conx.runner(graph)                # ONNX Runtime on NumPy arrays

``onnx`` and ``onnxruntime`` are the optional extra ``convdsl[onnx]``; they are
imported when the backend is used, so ``convdsl --help`` works without them.
"""
from __future__ import annotations

from convdsl.backends.onnx.artifact import (build_module, check_artifact, check_model, export_graph, load_runner,
                                            manifest_extra, runner, session, write_artifact)

__all__ = ["build_module", "check_artifact", "check_model", "export_graph", "load_runner", "manifest_extra", "runner",
           "session", "write_artifact"]
