"""Pooling and resampling: max/avg pooling (1d/2d/3d), global and adaptive
pooling, ``mean`` over chosen dims, and ``upsample``.

Pooling ops take [N, C, *spatial] (or unbatched [C, *spatial]) and pool the
last ``nd`` dims, as PyTorch does.

Lowered in backends/torch/lower_pool.py and backends/tvm/lower_pool.py; how pruning treats each op
is its ``prune=`` (PRUNE_RULE ops: convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

import math

from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.domains import NON_NEGATIVE, POSITIVE, POSITIVE_REAL
from convdsl.ir.optable import (PRUNE_RULE, SPATIAL_EXAMPLE_INPUTS, Attr, Cost, OpDef, before_axis, before_last,
                                check_positive, expect_rank, format_value, identity_if_same_type, io_workspace,
                                keep_channels, normalize_dims, tuple_n)
from convdsl.ir.types import Dim, TensorType, dim_add, dim_floordiv, dim_mul

SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def pool_geometry(attrs: dict, nd: int) -> tuple[tuple[int, ...], ...]:
    """(k, stride, pad, dilation) per spatial dim; stride defaults to k."""
    k = tuple_n(attrs["k"], nd, "k")
    stride = attrs.get("stride")
    s = k if stride is None else tuple_n(stride, nd, "stride")
    p = tuple_n(attrs.get("pad", 0), nd, "pad")
    d = tuple_n(attrs.get("dilation", 1), nd, "dilation")
    return k, s, p, d


def pool_out(op: str, size: Dim, k: int, s: int, p: int, d: int, ceil_mode: bool) -> Dim:
    """PyTorch's pooling_output_shape: floor/ceil((in + 2p - d(k-1) - 1) / s) + 1,
    minus one when ceil mode would start the last window inside the right padding."""
    eff = d * (k - 1) + 1
    if not isinstance(size, int):
        if ceil_mode:
            raise ShapeError(f"{op}: ceil_mode=true needs a static spatial size", got=str(size),
                             hint="give the input a concrete size or use ceil_mode=false")
        return dim_add(dim_floordiv(dim_add(size, 2 * p - eff), s), 1)
    out = (size + 2 * p - eff + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    if out <= 0:
        raise ShapeError(f"{op}: input size {size} is smaller than the kernel window {eff} (with padding {p})",
                         expected=f"spatial size >= {eff - 2 * p}", got=str(size))
    return out


def _spatial_rank_check(op: str, x: TensorType, nd: int) -> None:
    expect_rank(op, x, nd + 1, nd + 2)


# oneDNN pooling (torch) reorders input and output to blocked layouts; TVM pads a copy
_REORDER_WORKSPACE = io_workspace(per_input=2, per_output=1)


def make_pool(kind: str, nd: int) -> OpDef:
    name = f"{kind}pool{nd}d"
    is_max = kind == "max"

    def infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
        x = ins[0]
        _spatial_rank_check(name, x, nd)
        k, s, p, d = pool_geometry(attrs, nd)
        check_positive(name, "k", k)
        check_positive(name, "stride", s)
        check_positive(name, "dilation", d)
        if any(pi < 0 for pi in p):
            raise CDLTypeError(f"{name}: pad must be >= 0", got=format_value(p))
        if any(pi > ki // 2 for pi, ki in zip(p, k)):
            raise CDLTypeError(f"{name}: pad must be at most half the kernel size",
                               expected=f"pad <= {format_value(tuple(ki // 2 for ki in k))}", got=format_value(p),
                               hint="pad explicitly with pad(...) before pooling for more")
        if not is_max and nd == 3:  # PyTorch's avg_pool3d also rejects inputs smaller than the kernel before padding
            small = [(sz, ki) for sz, ki in zip(x.shape[-3:], k) if isinstance(sz, int) and sz < ki]
            if small:
                raise ShapeError(f"{name}: each spatial size must be at least the kernel size (PyTorch's avg_pool3d)",
                                 expected=f"sizes >= {format_value(k)}", got=str(x))
        spatial = [pool_out(name, x.shape[-nd + i], k[i], s[i], p[i], d[i], attrs["ceil_mode"]) for i in range(nd)]
        return [x.with_shape((*x.shape[:-nd], *spatial))]

    def cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
        k = tuple_n(attrs["k"], nd, "k")
        return Cost(0, outs[0].numel() * math.prod(k))

    attrs = [
        Attr("k", "ints", doc="window size", domain=POSITIVE),
        Attr("stride", "ints", None, doc="default: k", domain=POSITIVE),
        Attr("pad", "ints", 0, doc="implicit padding on both sides (at most k/2)", domain=NON_NEGATIVE),
    ]
    if is_max:
        attrs.append(Attr("dilation", "ints", 1, domain=POSITIVE))
    attrs.append(Attr("ceil_mode", "bool", False, doc="round the output size up"))
    if not is_max:
        attrs.append(Attr("count_include_pad", "bool", True, doc="average counts padded zeros"))
    what = "maximum" if is_max else "average"
    return OpDef(
        name=name, group="pooling", attrs=tuple(attrs), infer=infer, cost=cost,
        workspace=_REORDER_WORKSPACE,
        int8_passthrough=is_max,  # max commutes with a monotone per-tensor quantization
        prune=keep_channels(before_last(nd)), example_inputs=SPATIAL_EXAMPLE_INPUTS[nd],
        doc=f"{nd}-D {what} pooling over the last {nd} dim(s) of [N, C, {SPATIAL[nd]}].",
        example=f"{name}(3, stride=2, pad=1)" if is_max else f"{name}(2)",
        shape_rule="out = floor_or_ceil((in + 2*pad - dilation*(k-1) - 1) / stride) + 1"
                   + ("" if is_max else " (dilation = 1)"),
    )


def _global(kind: str) -> OpDef:
    name = f"global_{kind}pool"

    def infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
        x = ins[0]
        if x.rank < 3:
            raise ShapeError(f"{name} needs [N, C, ...spatial] (rank >= 3)", expected="rank >= 3",
                             got=f"{x} (rank {x.rank})", hint="for [N, C] there is nothing to pool")
        rest = (1,) * (x.rank - 2) if attrs["keepdim"] else ()
        return [x.with_shape((*x.shape[:2], *rest))]

    return OpDef(
        name=name, group="pooling", attrs=(Attr("keepdim", "bool", True, doc="keep the pooled dims as size 1"),),
        infer=infer, cost=lambda a, ins, outs: Cost(0, ins[0].numel()),
        workspace=_REORDER_WORKSPACE,
        doc=f"{'average' if kind == 'avg' else 'maximum'} over all spatial dims (2 and after) of [N, C, ...].",
        example=f"x | {name} | flatten",
        shape_rule="[N, C, *spatial] -> [N, C, 1, ...] (keepdim) or [N, C]",
        prune=keep_channels(before_axis(2)),
    )


def _adaptive(kind: str, nd: int) -> OpDef:
    name = f"adaptive_{kind}pool{nd}d"

    def infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
        x = ins[0]
        _spatial_rank_check(name, x, nd)
        out = tuple_n(attrs["out"], nd, "out")
        check_positive(name, "out", out)
        return [x.with_shape((*x.shape[:-nd], *out))]

    return OpDef(
        name=name, group="pooling", attrs=(Attr("out", "ints", 1, doc="output size per spatial dim", domain=POSITIVE),),
        infer=infer, cost=lambda a, ins, outs: Cost(0, ins[0].numel()),
        workspace=_REORDER_WORKSPACE,
        doc=f"{nd}-D adaptive {'average' if kind == 'avg' else 'maximum'} pooling to a fixed output size.",
        example=f"{name}({'7' if nd != 1 else '16'})",
        shape_rule=f"[N, C, {SPATIAL[nd]}] -> [N, C, *out]",
        prune=keep_channels(before_last(nd)), example_inputs=SPATIAL_EXAMPLE_INPUTS[nd],
    )


def _mean_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    dims = normalize_dims("mean", attrs["dims"], x.rank)
    if attrs["keepdim"]:
        shape = tuple(1 if i in dims else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in dims)
    return [x.with_shape(shape)]


# ---- upsample -----------------------------------------------------------------
UPSAMPLE_MODES = ("nearest", "linear", "bilinear", "bicubic", "trilinear")
_MODE_RANK = {"linear": 3, "bilinear": 4, "bicubic": 4, "trilinear": 5}


def _scaled(size: Dim, scale: float) -> Dim:
    if isinstance(size, int):
        return math.floor(size * scale)  # PyTorch: floor(double(in) * scale)
    if float(scale).is_integer():
        return dim_mul(size, int(scale))
    raise ShapeError("upsample: a fractional scale needs a static spatial size", got=f"{size} * {scale}",
                     hint="give size=[...] instead, or use an integer scale")


def _upsample_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    mode = attrs["mode"]
    if x.rank not in (3, 4, 5):
        raise ShapeError("upsample needs [N, C, *spatial] with 1 to 3 spatial dims", expected="rank 3, 4 or 5",
                         got=f"{x} (rank {x.rank})")
    if mode in _MODE_RANK and x.rank != _MODE_RANK[mode]:
        want = {3: "linear", 4: "bilinear or bicubic", 5: "trilinear"}[x.rank]
        raise ShapeError(f"upsample: mode={mode} needs a rank-{_MODE_RANK[mode]} input", expected=f"rank {_MODE_RANK[mode]}",
                         got=f"{x} (rank {x.rank})", hint=f"for this input use mode={want} or nearest")
    if mode == "nearest" and attrs["align_corners"]:
        raise CDLTypeError("upsample: align_corners only applies to linear modes", got="mode=nearest",
                           hint="drop align_corners, or use mode=bilinear")
    nd = x.rank - 2
    scale, size = attrs["scale"], attrs["size"]
    if (scale is None) == (size is None):
        raise CDLTypeError("upsample needs exactly one of scale or size",
                           got="both" if scale is not None else "neither", hint="write upsample(2) or upsample(size=[14, 14])")
    if size is not None:
        out = tuple_n(size, nd, "size")
        check_positive("upsample", "size", out)
    else:
        scales = (float(scale),) * nd if isinstance(scale, (int, float)) else tuple(scale)
        if len(scales) != nd:
            raise CDLTypeError(f"upsample: scale needs 1 or {nd} values here", got=format_value(scales))
        if any(s <= 0 for s in scales):
            raise CDLTypeError("upsample: scale must be positive", got=format_value(scales))
        out = tuple(_scaled(d, s) for d, s in zip(x.shape[2:], scales))
    return [x.with_shape((*x.shape[:2], *out))]


def _upsample_cost(attrs, ins, outs):
    per = {"nearest": 0, "linear": 2, "bilinear": 4, "trilinear": 8, "bicubic": 16}[attrs["mode"]]
    return Cost(0, per * outs[0].numel())


OPS = [
    *(make_pool(kind, nd) for kind in ("max", "avg") for nd in (1, 2, 3)),
    _global("avg"),
    _global("max"),
    *(_adaptive(kind, nd) for kind in ("avg", "max") for nd in (1, 2, 3)),
    OpDef(name="mean", group="pooling",
          attrs=(Attr("dims", "ints", doc="dim or list of dims to average"), Attr("keepdim", "bool", False)),
          infer=_mean_infer, cost=lambda a, ins, outs: Cost(0, ins[0].numel()),
          workspace=io_workspace(per_input=1),  # a reduction over several dims permutes a copy first
          doc="average over the given dims (negative dims count from the end).",
          example="mean([2, 3])", shape_rule="drop (or keep as 1, keepdim) each dim in dims",
          prune=PRUNE_RULE),  # couplings.reduce
    OpDef(name="upsample", group="resampling",
          attrs=(Attr("scale", "float|floats", None, doc="scale factor (one, or one per spatial dim)",
                      domain=POSITIVE_REAL),
                 Attr("mode", "sym", "nearest", choices=UPSAMPLE_MODES),
                 Attr("size", "ints", None, doc="output spatial size instead of a scale", domain=POSITIVE),
                 Attr("align_corners", "bool", False, doc="linear modes only")),
          infer=_upsample_infer, cost=_upsample_cost,
          workspace=io_workspace(per_input=1),  # a contiguous (or channels-last) copy of the input
          doc="resize the spatial dims of [N, C, *spatial] by interpolation (F.interpolate).",
          example="upsample(2, mode=bilinear)",
          shape_rule="out = floor(in * scale), or size", identity_when=identity_if_same_type,
          prune=keep_channels(before_axis(2))),
]
