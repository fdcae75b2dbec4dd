"""Shape arithmetic of an ONNX graph, evaluated while importing.

Exporters compute reshape targets at run time: ``x.view(x.size(0), -1)`` is
``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` in torch.onnx's output,
and ``expand(-1, ...)`` adds ``ConstantOfShape / Equal / Where``.  convdsl
programs have no run-time shapes: every size is static except the symbolic
batch.  So these sub-graphs are evaluated here, on ``Dims`` (a 1-D or scalar
array whose entries are ints or symbolic sizes such as ``"N"``) and on
constants, and what reaches a tensor op (``Reshape``, ``Expand``) is a list of
sizes the mapping turns into convdsl's reshape spec (``0``: copy the batch,
``-1``: the one size that depends on it).  An op over a symbolic size that
cannot be written with the batch alone becomes ``"?"``, which a reshape may
still use once, as its ``-1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

UNKNOWN = "?"


@dataclass
class Const:
    """A tensor known at import time: an initializer (``key``: its name, a parameter key) or a folded value."""

    array: np.ndarray
    key: str | None = None  # an initializer's name (a parameter key)
    stored: tuple | None = None  # the initializer's own shape, when ``array`` is a reshaped view of it


class Dims:
    """Sizes known at import time, some symbolic (an object array of ints and strings)."""

    def __init__(self, values: Any) -> None:
        self.values = np.array(values, dtype=object)

    def static(self) -> np.ndarray | None:
        """The sizes as an int64 array when none is symbolic."""
        flat = self.values.reshape(-1)
        if all(isinstance(v, (int, np.integer)) for v in flat):
            return np.array(self.values.tolist(), dtype=np.int64)
        return None

    def __repr__(self) -> str:
        return f"Dims({self.values.tolist()})"


def attr_value(a) -> Any:
    """An ONNX attribute's value, strings decoded."""
    from onnx import helper

    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


def lift(v: Any) -> Any:
    """Dims with only static sizes become a plain int64 array."""
    if isinstance(v, Dims):
        s = v.static()
        return s if s is not None else v
    return v


def _objects(v: Any) -> np.ndarray:
    return v.values if isinstance(v, Dims) else np.asarray(v).astype(object)


def linear(d: Any) -> tuple[int, int] | None:
    """A size as coefficient and power of the batch: 7 -> (7, 0), "N" -> (1, 1), "896*N" -> (896, 1)."""
    if isinstance(d, (int, np.integer)):
        return int(d), 0
    if d == "N":
        return 1, 1
    head, _, tail = str(d).partition("*")
    if tail == "N" and head.isdigit():
        return int(head), 1
    return None


def _size(coef: int, power: int) -> Any:
    if power == 0:
        return coef
    return "N" if coef == 1 else f"{coef}*N"  # as convdsl's shape rules write it


def _arith(op: str, a: Any, b: Any) -> Any:
    def one(x, y):
        if isinstance(x, (int, np.integer)) and isinstance(y, (int, np.integer)):
            x, y = int(x), int(y)
            return {"Add": x + y, "Sub": x - y, "Mul": x * y,
                    "Div": int(x / y) if y else UNKNOWN}[op]  # ONNX integer Div truncates
        lx, ly = linear(x), linear(y)
        if lx is not None and ly is not None:  # k*N times or over a number stays k*N
            if op == "Mul" and lx[1] + ly[1] <= 1:
                return _size(lx[0] * ly[0], lx[1] + ly[1])
            if op == "Div" and ly[1] == 0 and ly[0] and lx[0] % ly[0] == 0:
                return _size(lx[0] // ly[0], lx[1])
        if op in ("Add", "Sub") and y == 0:
            return x
        return UNKNOWN

    return Dims(np.frompyfunc(one, 2, 1)(_objects(a), _objects(b)))


_NUMBER = (int, float, np.integer, np.floating, np.bool_)


def _equal(a: Any, b: Any) -> Any:
    def one(x, y):
        if isinstance(x, _NUMBER) and isinstance(y, _NUMBER):  # numbers (a float mask built from sizes too)
            return bool(x == y)
        return False if (isinstance(y, _NUMBER) and y < 0) or (
            isinstance(x, _NUMBER) and x < 0) else UNKNOWN  # a size is never negative

    out = np.frompyfunc(one, 2, 1)(_objects(a), _objects(b))
    if any(v is UNKNOWN for v in out.reshape(-1)):
        raise ValueError("compares a symbolic size")
    return out.astype(bool)


def fold(op: str, attrs: dict, ins: list[Any], shapes: dict[int, tuple]) -> Any:
    """One shape-arithmetic node: ``ins`` are arrays or Dims (None for a missing optional input);
    ``shapes[i]`` is the static/symbolic shape of a computed tensor input i (for Shape).
    Returns an array or Dims, or raises ValueError when the op cannot be evaluated here."""
    if op == "Shape":
        dims = list(shapes[0]) if 0 in shapes else list(np.shape(_objects(ins[0])))
        start, end = attrs.get("start", 0), attrs.get("end", None)
        return lift(Dims(dims[start:end]))
    if op == "Size":
        dims = list(shapes[0]) if 0 in shapes else list(np.shape(_objects(ins[0])))
        n = 1
        for d in dims:
            n = _arith("Mul", n, d).values.item()
        return lift(Dims(n))
    x = ins[0]
    vals = _objects(x)
    if op in ("Identity", "Cast"):
        if isinstance(x, Dims):
            return x
        if op == "Cast":
            from onnx import helper

            return np.asarray(x).astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        return x
    if op == "Gather":
        idx = np.asarray(ins[1])
        return lift(Dims(np.take(vals, idx, axis=attrs.get("axis", 0))))
    if op in ("Unsqueeze", "Squeeze"):
        axes = attrs.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = [int(a) for a in np.asarray(ins[1]).reshape(-1)]
        if op == "Unsqueeze":
            rank = vals.ndim + len(axes)
            out = vals
            for a in sorted(a % rank for a in axes):
                out = np.expand_dims(out, a)
        else:
            out = np.squeeze(vals, axis=None if axes is None else tuple(axes))
        return lift(Dims(out)) if isinstance(x, Dims) else np.asarray(out.tolist(), dtype=np.asarray(x).dtype)
    if op == "Concat":
        out = np.concatenate([_objects(v) for v in ins], axis=attrs.get("axis", 0))
        if all(not isinstance(v, Dims) for v in ins):
            return np.asarray(out.tolist(), dtype=np.asarray(ins[0]).dtype)
        return lift(Dims(out))
    if op == "Slice":
        starts, ends = np.asarray(ins[1]).reshape(-1), np.asarray(ins[2]).reshape(-1)
        axes = np.asarray(ins[3]).reshape(-1) if len(ins) > 3 and ins[3] is not None else range(len(starts))
        steps = np.asarray(ins[4]).reshape(-1) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        index = [slice(None)] * vals.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[int(a)] = slice(int(s), None if int(e) >= 2 ** 62 else int(e), int(st))
        out = vals[tuple(index)]
        return lift(Dims(out)) if isinstance(x, Dims) else np.asarray(out.tolist(), dtype=np.asarray(x).dtype)
    if op in ("Add", "Sub", "Mul", "Div"):
        if not isinstance(x, Dims) and not isinstance(ins[1], Dims):
            a, b = np.asarray(x), np.asarray(ins[1])
            if op == "Div" and a.dtype.kind in "iu":
                return (np.trunc(a / b)).astype(a.dtype)
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, b).astype(a.dtype)
        return lift(_arith(op, x, ins[1]))
    if op == "Equal":
        return _equal(x, ins[1])
    if op == "Where":
        cond = np.asarray(ins[0]).astype(bool)
        if isinstance(ins[1], Dims) or isinstance(ins[2], Dims):
            return lift(Dims(np.where(cond, _objects(ins[1]), _objects(ins[2]))))
        return np.where(cond, np.asarray(ins[1]), np.asarray(ins[2]))
    if op == "ConstantOfShape":
        shape = lift(x)
        if isinstance(shape, Dims):
            raise ValueError("a constant of symbolic shape")
        value = attrs.get("value")
        if hasattr(value, "dims"):  # a TensorProto
            from onnx import numpy_helper

            value = numpy_helper.to_array(value)
        fill = np.asarray(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
        return np.full([int(d) for d in shape], fill[0], dtype=fill.dtype)
    if op == "Range" and not any(isinstance(v, Dims) for v in ins):
        return np.arange(np.asarray(ins[0]).item(), np.asarray(ins[1]).item(), np.asarray(ins[2]).item()).astype(
            np.asarray(ins[0]).dtype)
    if op == "Reshape" and not isinstance(ins[1], Dims):
        out = vals.reshape([int(d) for d in np.asarray(ins[1]).reshape(-1)])
        return lift(Dims(out)) if isinstance(x, Dims) else np.asarray(out.tolist(), dtype=np.asarray(x).dtype)
    if op == "Neg" and not isinstance(x, Dims):
        return -np.asarray(x)
    if op in ("Sqrt", "Reciprocal") and not isinstance(x, Dims):
        return (np.sqrt if op == "Sqrt" else np.reciprocal)(np.asarray(x))
    raise ValueError(f"{op} over sizes")


# Ops never evaluated at import time even on constants: their result is not a function of the inputs
# (random draws), or they run sub-graphs that may read the enclosing graph's tensors.
NOT_EVALUATED = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
                 "Dropout", "If", "Loop", "Scan", "SequenceMap"}


def evaluate(node: Any, ins: list[Any], opsets: list[Any]) -> list[np.ndarray]:
    """Any ONNX node over constants (static sizes, integer tables, literal numbers): run exactly by
    ONNX's own reference implementation (numpy), the node alone, at the model's opset.  Exporters
    compute sizes with ops outside ``fold`` (``Mod`` in Swin's shift and padding arithmetic and in
    ``nn.MultiheadAttention``'s head-size check, ``Less``/``Not``/``Max`` in others); on constants
    these are plain numbers, so they fold away like ``Shape``.  Raises ValueError when an input is
    symbolic or the op is one that must not run here (``NOT_EVALUATED``)."""
    if node.op_type in NOT_EVALUATED or node.domain not in ("", "ai.onnx"):
        raise ValueError(f"{node.op_type} is not evaluated at import time")
    arrays = []
    for v in ins:
        v = lift(v)
        if isinstance(v, Dims):
            raise ValueError(f"{node.op_type} over a symbolic size")
        arrays.append(None if v is None else np.asarray(v))
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if a is not None else "" for k, a in enumerate(arrays)]
    outs = [f"o{k}" for k in range(len(node.output))]
    one = helper.make_node(node.op_type, names, outs, domain=node.domain)
    one.attribute.extend(node.attribute)
    graph = helper.make_graph([one], "fold", [helper.make_tensor_value_info(n, 0, None) for n in names if n],
                              [helper.make_tensor_value_info(o, 0, None) for o in outs])
    model = helper.make_model(graph, opset_imports=list(opsets))
    try:
        got = ReferenceEvaluator(model).run(None, {n: a for n, a in zip(names, arrays) if n})
    except Exception as e:  # the reference implementation refuses the node: report what it said
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{node.op_type} on constants failed: {first[:200]}") from None
    return [np.asarray(g) for g in got]


FOLDABLE = {"Shape", "Size", "Identity", "Cast", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Add", "Sub",
            "Mul", "Div", "Equal", "Where", "ConstantOfShape", "Range", "Reshape", "Neg", "Sqrt", "Reciprocal"}


def reshape_spec(target: Any, in_shape: tuple) -> list[int]:
    """A Reshape/view target (sizes, some symbolic) -> convdsl's reshape spec: the batch where the
    input has it (0), the one size that depends on the batch (-1), static sizes as they are.  A
    target with a known multiple of the batch (``896*N``) and a -1 gets that -1 computed from the
    input's size (both are multiples of N), so the batch-dependent size is the only -1 left."""
    dims = _objects(target).reshape(-1).tolist()
    spec = []
    for i, d in enumerate(dims):
        if isinstance(d, (int, np.integer)):
            spec.append(int(d))
        elif i < len(in_shape) and in_shape[i] == d and d != UNKNOWN:
            spec.append(0)
        else:
            spec.append(-1)
    symbolic = [i for i, d in enumerate(dims) if not isinstance(d, (int, np.integer))]
    if spec.count(-1) == 2 and len(symbolic) == 1 and linear(dims[symbolic[0]]) is not None:
        total = [linear(d) for d in in_shape]
        if all(t is not None for t in total) and sum(t[1] for t in total) == 1:
            numel = int(np.prod([t[0] for t in total]))
            rest = linear(dims[symbolic[0]])[0] * int(np.prod([d for d in spec if d > 0]))
            free = next(i for i, d in enumerate(dims) if isinstance(d, (int, np.integer)) and d == -1)
            if rest and numel % rest == 0:
                spec[free] = numel // rest
    return spec
