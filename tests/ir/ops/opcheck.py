"""Helpers for op-table tests: run an op's shape rule the way the elaborator does,
and write one-op CDL programs."""
from __future__ import annotations

from convdsl.ir.ops import OPS
from convdsl.ir.optable import Symbol, bind_attrs
from convdsl.ir.types import TensorType


def run_infer(op: str, shapes, *args, **kwargs) -> list[tuple]:
    """bind_attrs -> normalize -> infer, as ``Elaborator.apply_op`` does; returns output shapes."""
    d = OPS[op]
    ins = [TensorType(tuple(s)) for s in shapes]
    attrs = bind_attrs(d, list(args), {k: Symbol(v) if isinstance(v, str) else v for k, v in kwargs.items()})
    if d.normalize is not None:
        attrs = d.normalize(dict(attrs), ins)
    outs = d.infer(attrs, ins)
    d.params(attrs, ins)
    d.cost(attrs, ins, outs)
    return [t.shape for t in outs]


def infer1(op: str, shape, *args, **kwargs) -> tuple:
    outs = run_infer(op, [shape], *args, **kwargs)
    assert len(outs) == 1
    return outs[0]


class Quoted(str):
    """A string written as a CDL string literal rather than a bare word."""


def cdl_value(v) -> str:
    if isinstance(v, Quoted):
        return '"' + v + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(cdl_value(x) for x in v) + "]"
    if isinstance(v, str):
        return v  # a bare word
    return repr(v)


def one_op_program(op: str, shapes, *args, **kwargs) -> str:
    """``network t(x0: f32[...], ...) { return (x0, x1) | op(args) }``."""
    params = ", ".join(f"x{i}: f32[{', '.join(str(d) for d in s)}]" for i, s in enumerate(shapes))
    src = "x0" if len(shapes) == 1 else "(" + ", ".join(f"x{i}" for i in range(len(shapes))) + ")"
    argtext = ", ".join([cdl_value(a) for a in args] + [f"{k}={cdl_value(v)}" for k, v in kwargs.items()])
    return f"network t({params}) {{\n    return {src} | {op}({argtext})\n}}\n"
