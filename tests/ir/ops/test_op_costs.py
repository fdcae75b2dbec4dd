"""Costs of the pooling and shape ops.  (That every op is documented, lowered and has an
example that elaborates is tests/test_op_registry.py's job, for all ops.)"""
from __future__ import annotations

from convdsl.ir.ops import OPS
from convdsl.ir.optable import Cost
from convdsl.ir.types import TensorType


def test_costs():
    op = OPS["maxpool2d"]
    x, y = TensorType((1, 8, 8, 8)), TensorType((1, 8, 4, 4))
    assert op.cost({"k": 2}, [x], [y]) == Cost(0, 8 * 16 * 4)
    assert OPS["flatten"].cost({}, [x], [TensorType((1, 512))]) == Cost(0, 0)
    assert OPS["global_avgpool"].cost({"keepdim": True}, [x], [TensorType((1, 8, 1, 1))]) == Cost(0, 512)
