"""`convdsl import`: PyTorch modules (through torch.export) and ONNX files as readable CDL.

    text, weights, graph = import_torch(model, (x,))   # or import_onnx("net.onnx")

Each frontend maps source ops onto convdsl ops (``torch_export.ATEN`` /
``onnx_import.ONNX``) into a flat graph named with the source's instance
paths; ``structure.write_cdl`` rebuilds blocks and loops from the module
hierarchy; the text is parsed back by the front end and checked against the
flat graph, so what comes out is a verified program.
"""
from __future__ import annotations

from convdsl.importer.api import ImportResult, import_onnx, import_torch, parse_back

__all__ = ["ImportResult", "import_onnx", "import_torch", "parse_back"]
