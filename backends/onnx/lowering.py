"""The ONNX export table: op name -> a function that writes ONNX nodes for one graph node
(export.py has the entry format and the ``Exporter`` entries use).

Joined from one family file per op family (``lower_<family>.py`` for the ops of
``convdsl/ir/ops/<family>.py``), as the torch and TVM tables are; the table's checks
are in ``backends/registry.py``.
"""
from __future__ import annotations

from convdsl.backends.onnx import (lower_attention, lower_conv, lower_elementwise, lower_fft, lower_linear, lower_misc,
                                   lower_norm, lower_pool, lower_quant, lower_shape, lower_ssm)
from convdsl.backends.onnx.export import ExportFn
from convdsl.backends.registry import LoweringTable

FAMILIES = (lower_conv, lower_linear, lower_norm, lower_elementwise, lower_pool, lower_shape, lower_attention,
            lower_fft, lower_ssm, lower_misc, lower_quant)

ONNX_EXPORTS: LoweringTable[ExportFn] = LoweringTable("onnx", [f.EXPORTS for f in FAMILIES])

__all__ = ["FAMILIES", "ONNX_EXPORTS"]
