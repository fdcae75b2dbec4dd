"""The op table: every op convdsl knows, defined once.

Each module below lists its ``OpDef``s in ``OPS``; this file joins them into
one dict.  Adding an op touches one of these modules and one entry per
backend lowering table.
"""
from __future__ import annotations

from convdsl.ir.optable import OpDef
from convdsl.ir.ops import attention, conv, elementwise, fft, linear, misc, norm, pool, quant, shape, ssm

_MODULES = (conv, linear, norm, elementwise, pool, shape, attention, fft, ssm, misc, quant)

OPS: dict[str, OpDef] = {}
for _m in _MODULES:
    for _op in _m.OPS:
        if _op.name in OPS:  # pragma: no cover - caught by tests
            raise RuntimeError(f"op {_op.name} defined twice")
        OPS[_op.name] = _op

__all__ = ["OPS", "OpDef"]
