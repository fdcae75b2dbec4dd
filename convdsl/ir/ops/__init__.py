"""The op table: every op convdsl knows, defined once.

Each module below (an op *family*) lists its ``OpDef``s in ``OPS``; this file
joins them into one dict.  Everything else about an op is found from its
family's name: its lowerings in ``backends/<backend>/lower_<family>.py`` (one
file per backend), its pruning rule in ``convdsl/passes/prune/couplings.py``
and ``apply.py`` when its ``OpDef.prune`` is ``PRUNE_RULE``, and the random
programs of ``convdsl/verify`` draw it (``steps.py``) or say why not
(``programs.py``'s ``NOT_DRAWN``).  ``docs/layout.md`` has the checklist for
adding an op; ``tests/test_op_registry.py`` names whatever an op is missing.
"""
from __future__ import annotations

from convdsl.ir.optable import OpDef
from convdsl.ir.ops import attention, conv, elementwise, fft, linear, misc, norm, pool, quant, shape, ssm

_MODULES = (conv, linear, norm, elementwise, pool, shape, attention, fft, ssm, misc, quant)

OPS: dict[str, OpDef] = {}
FAMILY: dict[str, str] = {}  # op name -> its family: the module (convdsl/ir/ops/<family>.py) defining it
for _m in _MODULES:
    for _op in _m.OPS:
        if _op.name in OPS:  # pragma: no cover - caught by tests
            raise RuntimeError(f"op {_op.name} defined twice")
        OPS[_op.name] = _op
        FAMILY[_op.name] = _m.__name__.rsplit(".", 1)[-1]

__all__ = ["FAMILY", "OPS", "OpDef"]
