"""Every op defined in pool.py, shape.py, norm.py (and softmax/dropout) is complete:
docs for ops.md, a torch lowering, and an example that elaborates."""
from __future__ import annotations

import pytest

from convdsl.backends.torch.lowering import TORCH_LOWERINGS
from convdsl.ir.ops import OPS, norm, pool, shape
from convdsl.ir.optable import Cost
from convdsl.ir.types import TensorType
from convdsl.lang.elaborate import elaborate

NAMES = sorted({op.name for m in (pool, shape, norm) for op in m.OPS} | {"softmax", "dropout"})

# an input each example can run on
INPUT = {"maxpool1d": "f32[2, 3, 16]", "avgpool1d": "f32[2, 3, 16]", "adaptive_avgpool1d": "f32[2, 3, 32]",
         "adaptive_maxpool1d": "f32[2, 3, 32]", "maxpool3d": "f32[1, 2, 8, 8, 8]", "avgpool3d": "f32[1, 2, 8, 8, 8]",
         "adaptive_avgpool3d": "f32[1, 2, 8, 8, 8]", "adaptive_maxpool3d": "f32[1, 2, 8, 8, 8]",
         "batchnorm1d": "f32[N, 64, 16]", "batchnorm3d": "f32[N, 64, 4, 4, 4]", "instancenorm1d": "f32[N, 64, 16]",
         "instancenorm3d": "f32[N, 64, 4, 4, 4]", "layernorm": "f32[N, 49, 64]", "reshape": "f32[N, 64, 4, 4]",
         "pixel_shuffle": "f32[N, 64, 8, 8]", "squeeze": "f32[N, 64, 1, 1]"}


@pytest.mark.parametrize("name", NAMES)
def test_op_is_documented_and_lowered(name):
    op = OPS[name]
    assert op.doc and op.example and op.shape_rule, name
    assert name in TORCH_LOWERINGS, name
    if op.inputs != (1, 1):
        assert len(op.input_names) >= 2


@pytest.mark.parametrize("name", NAMES)
def test_example_elaborates(name):
    ex = OPS[name].example
    x = INPUT.get(name, "f32[N, 64, 14, 14]")
    if "=" in ex.split("(")[0]:  # "a, b = x | split(...)"
        targets = ex.split("=")[0].strip()
        body = f"{ex}\n    return {targets}"
    elif ex.startswith("("):  # "(a, b) | concat"
        body = f"a = x\n    b = x\n    return {ex}"
    else:
        body = f"return {ex if ex.startswith('x |') else 'x | ' + ex}"
    g = elaborate(f"network t(x: {x}) {{\n    {body}\n}}\n")
    assert g.output_types()


def test_costs():
    op = OPS["maxpool2d"]
    x, y = TensorType((1, 8, 8, 8)), TensorType((1, 8, 4, 4))
    assert op.cost({"k": 2}, [x], [y]) == Cost(0, 8 * 16 * 4)
    assert OPS["flatten"].cost({}, [x], [TensorType((1, 512))]) == Cost(0, 0)
    assert OPS["global_avgpool"].cost({"keepdim": True}, [x], [TensorType((1, 8, 1, 1))]) == Cost(0, 512)
