"""Normalization layers.

Lowered in backends/torch/lower_norm.py and backends/tvm/lower_norm.py; how pruning treats each op
is its ``prune=`` (PRUNE_RULE ops: convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

import math

from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.domains import NON_NEGATIVE_REAL, POSITIVE, PROBABILITY
from convdsl.ir.optable import (PRUNE_RULE, SPATIAL_EXAMPLE_INPUTS, Attr, Cost, Init, OpDef, ParamSpec, expect_rank,
                                io_workspace, keep_channels, on_axis)

# per-channel statistics and affine parameters: one entry per channel of dim 1
_STATS = {"weight": 0, "bias": 0, "running_mean": 0, "running_var": 0}

# normalizations reshape or permute a copy of the input, then hold statistics and a normalized
# intermediate of its size (layernorm2d permutes to channels-last and back)
_NORM_WORKSPACE = io_workspace(per_input=2)
from convdsl.ir.types import TensorType

# eps >= 0 as PyTorch checks it ("batch_norm eps must be non-negative"); the running statistics'
# update weight is a fraction
_EPS = Attr("eps", "float", 1e-5, doc="added to the variance", domain=NON_NEGATIVE_REAL)
_MOMENTUM = Attr("momentum", "float", 0.1, doc="weight of the new batch in the running statistics", domain=PROBABILITY)


def _bn(nd: int) -> OpDef:
    name = f"batchnorm{nd}d" if nd else "batchnorm"

    def infer(attrs, ins):
        x = ins[0]
        expect_rank(name, x, *((nd + 2,) if nd else (2, 3, 4, 5)))
        if not isinstance(x.shape[1], int):
            raise ShapeError(f"{name} needs a static channel count", got=str(x))
        return [x]

    def params(attrs, ins):
        c = ins[0].shape[1]
        p = {}
        if attrs["affine"]:
            p["weight"] = ParamSpec((c,), Init("ones"))
            p["bias"] = ParamSpec((c,), Init("zeros"))
        p["running_mean"] = ParamSpec((c,), Init("zeros"), buffer=True)
        p["running_var"] = ParamSpec((c,), Init("ones"), buffer=True)
        p["num_batches_tracked"] = ParamSpec((), Init("zeros"), dtype="i64", buffer=True)
        return p

    return OpDef(name=name, group="normalization",
                 attrs=(_EPS, _MOMENTUM, Attr("affine", "bool", True)),
                 infer=infer, params=params, cost=lambda a, i, o: Cost(0, 2 * o[0].numel()), workspace=_NORM_WORKSPACE,
                 doc="batch normalization over dim 1 (inference uses running statistics)"
                     + ("" if nd else "; rank picks 1d/2d/3d"),
                 example=f"x | {name}", shape_rule="out = in",
                 folds_into_producer=True, prune=keep_channels(on_axis(1), _STATS, scale="weight"),
                 example_inputs=SPATIAL_EXAMPLE_INPUTS[nd or 2])


def _affine_params(c: int, weight: bool, bias: bool) -> dict[str, ParamSpec]:
    p = {}
    if weight:
        p["weight"] = ParamSpec((c,), Init("ones"))
    if bias:
        p["bias"] = ParamSpec((c,), Init("zeros"))
    return p


def _static_channels(op: str, x: TensorType, dim: int = 1) -> int:
    c = x.shape[dim]
    if not isinstance(c, int):
        raise ShapeError(f"{op} needs a static channel count", got=str(x))
    return c


# ---- layer norm ---------------------------------------------------------------------
def layernorm_shape(attrs: dict, x: TensorType) -> tuple[int, ...]:
    """The trailing dims layernorm normalizes over (its weight shape)."""
    n = attrs["dims"]
    if n <= 0:
        raise CDLTypeError("layernorm: dims counts trailing dims and must be positive", got=str(n))
    if x.rank < n:
        raise ShapeError(f"layernorm over the last {n} dims needs rank >= {n}", expected=f"rank >= {n}",
                         got=f"{x} (rank {x.rank})")
    shape = x.shape[x.rank - n:]
    if not all(isinstance(d, int) for d in shape):
        raise ShapeError("layernorm needs static sizes in the normalized dims", got=str(x),
                         hint="normalize over fewer trailing dims (dims=1), or permute the symbolic dim forward")
    return tuple(shape)


def _ln_infer(attrs, ins):
    layernorm_shape(attrs, ins[0])
    return [ins[0]]


def _ln_params(attrs, ins):
    shape = layernorm_shape(attrs, ins[0])
    p = {}
    if attrs["affine"]:
        p["weight"] = ParamSpec(shape, Init("ones"))
        if attrs["bias"]:
            p["bias"] = ParamSpec(shape, Init("zeros"))
    return p


def _ln2d_infer(attrs, ins):
    expect_rank("layernorm2d", ins[0], 4)
    _static_channels("layernorm2d", ins[0])
    return [ins[0]]


def _ln2d_params(attrs, ins):
    c = ins[0].shape[1]
    return _affine_params(c, attrs["affine"], attrs["affine"])


# ---- group / instance norm -----------------------------------------------------------
def _gn_infer(attrs, ins):
    x, g = ins[0], attrs["groups"]
    if x.rank < 2:
        raise ShapeError("groupnorm needs [N, C, ...]", expected="rank >= 2", got=f"{x} (rank {x.rank})")
    c = _static_channels("groupnorm", x)
    if g <= 0:
        raise CDLTypeError("groupnorm: groups must be positive", got=str(g))
    if c % g:
        raise ShapeError(f"groupnorm: {g} groups do not divide {c} channels", expected=f"channels divisible by {g}",
                         got=str(x))
    return [x]


def _gn_params(attrs, ins):
    return _affine_params(ins[0].shape[1], attrs["affine"], attrs["affine"])


def _in(nd: int) -> OpDef:
    name = f"instancenorm{nd}d"

    def infer(attrs, ins):
        x = ins[0]
        expect_rank(name, x, nd + 2)
        _static_channels(name, x)
        spatial = x.shape[2:]
        if all(isinstance(d, int) for d in spatial) and math.prod(spatial) == 1:
            # x - mean(x) = 0 over one element: the output would be the bias whatever the input,
            # and torch refuses it ("Expected more than 1 spatial element when training")
            raise ShapeError(f"{name} needs more than one spatial element to normalize over", got=str(x),
                             expected=f"[N, C, {', '.join('DHW'[3 - nd:])}] with more than one spatial element",
                             hint="over a single element the output is the bias whatever the input: normalize "
                                  "before the pooling, or over the channels (groupnorm(1), layernorm2d)")
        return [x]

    def params(attrs, ins):
        c = ins[0].shape[1]
        p = _affine_params(c, attrs["affine"], attrs["affine"])
        if attrs["track_running_stats"]:
            p["running_mean"] = ParamSpec((c,), Init("zeros"), buffer=True)
            p["running_var"] = ParamSpec((c,), Init("ones"), buffer=True)
            p["num_batches_tracked"] = ParamSpec((), Init("zeros"), dtype="i64", buffer=True)
        return p

    return OpDef(name=name, group="normalization",
                 attrs=(_EPS, Attr("affine", "bool", False), _MOMENTUM,
                        Attr("track_running_stats", "bool", False)),
                 infer=infer, params=params, cost=_norm_cost, workspace=_NORM_WORKSPACE,
                 doc=f"instance normalization: each (sample, channel) over its {nd}-D spatial extent "
                     "(more than one element, as in PyTorch).",
                 example=f"x | {name}", shape_rule="out = in; more than one spatial element",
                 prune=keep_channels(on_axis(1), _STATS), example_inputs=SPATIAL_EXAMPLE_INPUTS[nd])


def _norm_cost(attrs, ins, outs):
    return Cost(0, 5 * outs[0].numel())  # mean, variance, normalize, scale, shift


OPS = [
    _bn(0), _bn(1), _bn(2), _bn(3),
    OpDef(name="layernorm", group="normalization",
          attrs=(Attr("dims", "int", 1, doc="how many trailing dims to normalize over", domain=POSITIVE), _EPS,
                 Attr("affine", "bool", True, doc="learned elementwise weight (and bias)"),
                 Attr("bias", "bool", True, doc="learned bias (with affine)")),
          infer=_ln_infer, params=_ln_params, cost=_norm_cost, workspace=_NORM_WORKSPACE,
          doc="layer normalization over the last `dims` dims (channels-last: [N, L, C] or [N, H, W, C]).",
          example="x | layernorm", shape_rule="out = in; weight shape = in[-dims:]", int8="qlayernorm",
          prune=PRUNE_RULE),  # weight and bias follow the channels only when they are normalized over
    OpDef(name="layernorm2d", group="normalization",
          attrs=(_EPS, Attr("affine", "bool", True)),
          infer=_ln2d_infer, params=_ln2d_params, cost=_norm_cost, workspace=_NORM_WORKSPACE,
          doc="channels-first layer normalization: normalizes over C of [N, C, H, W] at each position (ConvNeXt).",
          example="x | layernorm2d", shape_rule="out = in; weight shape = [C]",
          prune=keep_channels(on_axis(1), {"weight": 0, "bias": 0})),
    OpDef(name="groupnorm", group="normalization",
          attrs=(Attr("groups", "int", 32, doc="must divide the channels", domain=POSITIVE), _EPS,
                 Attr("affine", "bool", True)),
          infer=_gn_infer, params=_gn_params, cost=_norm_cost, workspace=_NORM_WORKSPACE,
          doc="group normalization: channels split into groups, each normalized over (group channels, spatial).",
          example="groupnorm(32)", shape_rule="out = in; groups divides C",
          prune=PRUNE_RULE),  # groups: the same count kept in each
    _in(1), _in(2), _in(3),
]
