"""Activations and elementwise arithmetic (with NumPy-style broadcasting).

Lowered in backends/torch/lower_elementwise.py and backends/tvm/lower_elementwise.py; how pruning treats each op
is its ``prune=`` (PRUNE_RULE ops: convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.domains import PROBABILITY
from convdsl.ir.optable import (PRUNE_RULE, Attr, Cost, OpDef, always_identity, io_workspace,
                                keep_channels, nbytes, no_workspace, off_attr, opaque, zero_cost)
from convdsl.ir.types import TensorType


def same_type(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    return [ins[0]]


def _activation(name: str, doc: str, attrs: tuple[Attr, ...] = (), flops_per: int = 1,
                temporary: bool = False, **props) -> OpDef:
    def cost(a, ins, outs):
        return Cost(0, flops_per * outs[0].numel())

    return OpDef(name=name, group="activation", attrs=attrs, infer=same_type, cost=cost, doc=doc,
                 example=f"x | {name}", shape_rule="out = in",
                 workspace=_TEMPORARY if temporary else no_workspace, prune=keep_channels(), **props)


_TEMPORARY = io_workspace(per_output=1)  # a composite formula keeps one intermediate of the output's size


def broadcast(op: str, a: TensorType, b: TensorType) -> TensorType:
    ra, rb = list(a.shape), list(b.shape)
    n = max(len(ra), len(rb))
    ra = [1] * (n - len(ra)) + ra
    rb = [1] * (n - len(rb)) + rb
    out = []
    for x, y in zip(ra, rb):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ShapeError(f"{op}: shapes do not broadcast", expected="equal sizes or 1 in each dim",
                             got=f"{a} and {b}", hint="check channels and spatial sizes of both inputs")
    if a.dtype != b.dtype:
        raise ShapeError(f"{op}: dtypes differ", got=f"{a.dtype} and {b.dtype}")
    return TensorType(tuple(out), a.dtype)


_AB = "a: f32[N, 64, 14, 14], b: f32[N, 64, 14, 14]"  # the inputs of the two-input examples


def _binary(name: str, sym: str, **props) -> OpDef:
    return OpDef(
        name=name, group="arithmetic", attrs=(), inputs=(2, 2),
        infer=lambda a, ins: [broadcast(name, ins[0], ins[1])],
        doc=f"elementwise a {sym} b with broadcasting; also written `a {sym} b`.",
        example=f"{name}(a, b)", input_names=("a", "b"), shape_rule="broadcast(a, b)", example_inputs=_AB,
        prune=PRUNE_RULE, **props,  # couplings.join
    )


def _nary_add(attrs, ins):
    out = ins[0]
    for t in ins[1:]:
        out = broadcast("add", out, t)
    return [out]


def _matmul(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    a, b = ins
    if a.rank < 2 or b.rank < 2:
        raise ShapeError("matmul needs inputs of rank >= 2", got=f"{a} and {b}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError("matmul: inner dimensions differ", expected=f"b.shape[-2] == {a.shape[-1]}", got=f"{a} @ {b}")
    batch = broadcast("matmul", TensorType(a.shape[:-2], a.dtype), TensorType(b.shape[:-2], b.dtype))
    return [TensorType((*batch.shape, a.shape[-2], b.shape[-1]), a.dtype)]


def _matmul_workspace(attrs, ins, outs) -> int:
    """torch.matmul and TVM expand both inputs over the broadcast batch dims (and copy them
    contiguous) before the batched product."""
    batch = outs[0].shape[:-2]
    size = 1
    for d in batch:
        size *= d
    return sum(size * t.shape[-2] * t.shape[-1] * nbytes(t) // max(1, _numel(t)) for t in ins)


def _numel(t: TensorType) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n


def _matmul_cost(attrs, ins, outs):
    macs = outs[0].numel() * ins[0].shape[-1]
    return Cost(macs, 2 * macs)


def _softmax_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x, d = ins[0], attrs["dim"]
    if not -x.rank <= d < x.rank:
        raise ShapeError(f"softmax: dim {d} is out of range for a rank-{x.rank} input",
                         expected=f"dim in [{-x.rank}, {x.rank - 1}]", got=str(d))
    return [x]


def _dropout_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    if not 0.0 <= attrs["p"] <= 1.0:
        raise CDLTypeError("dropout: p is a probability", expected="0 <= p <= 1", got=str(attrs["p"]))
    return [ins[0]]


def _drop_path_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    if not 0.0 <= attrs["p"] <= 1.0:
        raise CDLTypeError("drop_path: p is a probability", expected="0 <= p <= 1", got=str(attrs["p"]))
    if ins[0].rank < 1:
        raise ShapeError("drop_path needs a batch dimension", got=str(ins[0]))
    return [ins[0]]


DROP_PATH = OpDef(
    name="drop_path", group="regularization",
    attrs=(Attr("p", "float", doc="probability of dropping the whole residual branch", domain=PROBABILITY),
           Attr("mode", "sym", "row", choices=("row", "batch"))),
    infer=_drop_path_infer, cost=zero_cost,
    doc="stochastic depth (torchvision.ops.StochasticDepth): while training, zero each sample (row) or the "
        "whole batch with probability p and scale survivors by 1/(1-p); identity at inference.",
    example="drop_path(0.1)",
    shape_rule="out = in",
    random=True, identity_when=always_identity,  # identity at inference
    prune=keep_channels(),
)


OPS = [
    _activation("identity", "passes its input through unchanged", flops_per=0, identity_when=always_identity,
                int8_passthrough=True),
    _activation("relu", "max(x, 0)"),
    _activation("relu6", "min(max(x, 0), 6)"),
    _activation("leaky_relu", "x if x > 0 else slope*x", (Attr("slope", "float", 0.01),)),
    _activation("gelu", "Gaussian error linear unit (exact erf form; approximate=tanh optional)",
                (Attr("approximate", "sym", "none", choices=("none", "tanh")),), flops_per=8, temporary=True,
                int8="qgelu"),
    _activation("silu", "x * sigmoid(x) (swish)", flops_per=4, temporary=True),
    _activation("sigmoid", "1 / (1 + exp(-x))", flops_per=4),
    _activation("tanh", "hyperbolic tangent", flops_per=4),
    _activation("erf", "the Gauss error function, 2/sqrt(pi) times the integral of exp(-t^2) from 0 to x (GELU's "
                "parts where an imported file computes them one by one)", flops_per=8),
    _activation("hardswish", "x * relu6(x + 3) / 6", flops_per=4, temporary=True),
    _activation("hardsigmoid", "relu6(x + 3) / 6", flops_per=3, temporary=True),
    _activation("neg", "-x; also written `-x`"),
    OpDef(name="affine", group="arithmetic",
          attrs=(Attr("scale", "float", 1.0), Attr("shift", "float", 0.0)),
          infer=same_type, workspace=_TEMPORARY, doc="x * scale + shift; what `x * 0.5` or `x + 1` become",
          example="affine(x, scale=0.5)", shape_rule="out = in",
          identity_when=lambda a, x, y: x == y and a["scale"] == 1.0 and a["shift"] == 0.0,
          prune=keep_channels()),
    OpDef(name="add", group="arithmetic", attrs=(), inputs=(2, None), infer=_nary_add,
          doc="elementwise sum of two or more tensors with broadcasting; also written `a + b`.",
          example="(a, b) | add", input_names=("a", "b"), shape_rule="broadcast(a, b, ...)",
          commutative=True, prune=PRUNE_RULE, example_inputs=_AB),  # couplings.join
    _binary("sub", "-"),
    _binary("mul", "*", commutative=True),
    _binary("div", "/"),
    OpDef(name="matmul", group="arithmetic", attrs=(), inputs=(2, 2), infer=_matmul, cost=_matmul_cost,
          workspace=_matmul_workspace,
          doc="batched matrix product over the last two dims; also written `a @ b`.",
          example="matmul(a, b)", input_names=("a", "b"), shape_rule="[..., m, k] @ [..., k, n] -> [..., m, n]",
          prune=opaque("which dims of the operands carry channels is not known"),
          example_inputs="a: f32[N, 8, 16, 32], b: f32[N, 8, 32, 16]"),
    OpDef(name="softmax", group="activation", attrs=(Attr("dim", "int", -1),), infer=_softmax_infer,
          cost=lambda a, ins, outs: Cost(0, 5 * outs[0].numel()), workspace=_TEMPORARY,
          doc="exp(x) / sum(exp(x)) along dim.", example="softmax(dim=-1)", shape_rule="out = in",
          prune=keep_channels(off_attr("dim"))),
    OpDef(name="dropout", group="regularization", attrs=(Attr("p", "float", 0.5, doc="probability of zeroing", domain=PROBABILITY),),
          infer=_dropout_infer, cost=lambda a, ins, outs: Cost(0, 0),
          doc="zeroes elements with probability p and rescales by 1/(1-p) while training; identity at inference.",
          example="dropout(0.2)", shape_rule="out = in",
          random=True, identity_when=always_identity, int8_passthrough=True, prune=keep_channels()),
    DROP_PATH,
]
