"""Small ops the seed papers need and no other family covers.

- rot90 / flip: exact symmetries of the input (rotation-invariant galaxy nets,
  RotNet, test-time augmentation); no arithmetic.
- glu: the gated linear unit a * sigmoid(b) of the two halves of a dim (S4D's
  output projection, GLU feed-forwards).
- prelu: the parametric ReLU of torch.nn.PReLU (MIRNet, most SR networks).
- amax: maximum over dims (channel-max pooling of CBAM/MIRNet spatial attention).
- vector_norm: the p-norm over dims (ConvNeXt V2 / UniRepLKNet global response
  normalization).
- dynamic_filter: per-pixel filtering with kernels that are themselves tensors
  (kernel-prediction networks, TVConv's translation-variant depthwise conv).
- parameter: a learned tensor of a given shape that does not depend on the
  input's values (TVConv's affinity maps, ConViT's gates, positional logits).

Lowered in backends/torch/lower_misc.py and backends/tvm/lower_misc.py; how pruning treats each op
is its ``prune=`` (PRUNE_RULE ops: convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.domains import POSITIVE, Domain
from convdsl.ir.optable import (PRUNE_RULE, Attr, Cost, Init, OpDef, ParamSpec, expect_rank, format_value, io_workspace,
                                keep_channels, nbytes, off_attr, opaque, zero_cost)
from convdsl.ir.types import TensorType
from convdsl.ir.ops.pool import normalize_dims


def _static(op: str, t: TensorType, axis: int, what: str) -> int:
    d = t.shape[axis]
    if not isinstance(d, int):
        raise ShapeError(f"{op} needs a static {what}", expected=f"an integer {what}", got=str(t),
                         hint="declare the input with a concrete size in that position")
    return d


# ---- rot90 / flip ----------------------------------------------------------------------
def rot90_dims(attrs: dict, x: TensorType) -> tuple[int, int]:
    dims = attrs["dims"]
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if len(dims) != 2:
        raise CDLTypeError("rot90 rotates in the plane of two dims", expected="dims=[a, b]", got=format_value(dims))
    a, b = normalize_dims("rot90", dims, x.rank)
    return a, b


def _rot90_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    a, b = rot90_dims(attrs, x)
    shape = list(x.shape)
    if attrs["k"] % 2:  # a quarter turn swaps the two sizes
        shape[a], shape[b] = shape[b], shape[a]
    return [x.with_shape(shape)]


def flip_dims(attrs: dict, x: TensorType) -> tuple[int, ...]:
    return normalize_dims("flip", attrs["dims"], x.rank)


def _flip_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    flip_dims(attrs, ins[0])
    return [ins[0]]


ROT90 = OpDef(
    name="rot90", group="shape",
    attrs=(Attr("k", "int", 1, doc="number of quarter turns (any integer; negative turns clockwise)"),
           Attr("dims", "ints", (2, 3), doc="the plane of rotation, from dims[0] towards dims[1]")),
    infer=_rot90_infer, cost=zero_cost,
    doc="rotates by k * 90 degrees in the plane of two dims, as torch.rot90 (k=1 turns the first dim "
        "towards the second: out[..., i, j] = in[..., j, W-1-i] for dims [2, 3]).",
    example="rot90(1)",
    shape_rule="out = in, with the sizes of the two dims swapped when k is odd",
    prune=keep_channels(off_attr("dims")),
)

FLIP = OpDef(
    name="flip", group="shape",
    attrs=(Attr("dims", "ints", -1, doc="dim or dims to reverse"),),
    infer=_flip_infer, cost=zero_cost,
    doc="reverses the order of elements along the given dims (torch.flip); flip(-1) mirrors images left-right.",
    example="flip(-1)",
    shape_rule="out = in",
    prune=keep_channels(off_attr("dims")),
)


# ---- glu --------------------------------------------------------------------------------
def _glu_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    (d,) = normalize_dims("glu", attrs["dim"], x.rank)
    size = _static("glu", x, d, f"size along dim {attrs['dim']}")
    if size % 2:
        raise ShapeError(f"glu halves dim {attrs['dim']}, which has odd size {size}", expected="an even size",
                         got=str(x), hint="make the layer before it produce twice the width you want")
    shape = list(x.shape)
    shape[d] = size // 2
    return [x.with_shape(shape)]


GLU = OpDef(
    name="glu", group="activation",
    attrs=(Attr("dim", "int", 1, doc="the dim cut into halves (a, b)"),),
    infer=_glu_infer, cost=lambda a, ins, outs: Cost(0, 5 * outs[0].numel()),
    workspace=io_workspace(per_output=1),  # sigmoid(b) before the product
    doc="gated linear unit (Dauphin et al. 2017; F.glu): splits dim into halves a, b and returns a * sigmoid(b).",
    example="glu(dim=1)",
    shape_rule="in[dim] -> in[dim] / 2 (in[dim] even)",
    prune=opaque("its two halves of one dim play different roles (value and gate)"),
)


# ---- prelu ------------------------------------------------------------------------------
def _prelu_shape(attrs: dict, x: TensorType) -> tuple[int]:
    if attrs["shared"]:
        return (1,)
    expect_rank("prelu", x, *range(2, 9), what="[N, C, ...] input")
    return (_static("prelu", x, 1, "channel count (dim 1)"),)


def _prelu_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    _prelu_shape(attrs, ins[0])
    return [ins[0]]


PRELU = OpDef(
    name="prelu", group="activation",
    attrs=(Attr("shared", "bool", False, doc="one slope for all channels instead of one per channel (dim 1)"),
           Attr("init", "float", 0.25, doc="initial slope")),
    infer=_prelu_infer, cost=lambda a, ins, outs: Cost(0, 2 * outs[0].numel()),
    workspace=io_workspace(per_output=1),  # the slope broadcast to the input's shape
    params=lambda a, ins: {"weight": ParamSpec(_prelu_shape(a, ins[0]), Init("const", (a["init"],)))},
    doc="parametric ReLU (torch.nn.PReLU): x if x > 0 else a_c * x with a learned slope per channel (dim 1), "
        "parameter `weight` [C] (or [1] when shared).",
    example="x | prelu",
    shape_rule="out = in",
    prune=PRUNE_RULE,
)


# ---- amax / vector_norm -------------------------------------------------------------------
def _reduce_infer(op: str):
    def infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
        x = ins[0]
        dims = normalize_dims(op, attrs["dims"], x.rank)
        if attrs["keepdim"]:
            return [x.with_shape(1 if i in dims else d for i, d in enumerate(x.shape))]
        return [x.with_shape(d for i, d in enumerate(x.shape) if i not in dims)]

    return infer


AMAX = OpDef(
    name="amax", group="pooling",
    attrs=(Attr("dims", "ints", doc="dim or list of dims to take the maximum over"), Attr("keepdim", "bool", False)),
    infer=_reduce_infer("amax"), cost=lambda a, ins, outs: Cost(0, ins[0].numel()),
    workspace=io_workspace(per_input=1),  # a reduction over several dims permutes a copy first
    doc="maximum over the given dims (torch.amax), e.g. the channel-max map of a spatial attention: "
        "amax(1, keepdim=true).",
    example="amax(1, keepdim=true)",
    shape_rule="drop (or keep as 1, keepdim) each dim in dims",
    prune=PRUNE_RULE,
)


def _norm_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    if not attrs["p"] > 0:
        raise CDLTypeError("vector_norm: p must be positive", got=str(attrs["p"]))
    return _reduce_infer("vector_norm")(attrs, ins)


VECTOR_NORM = OpDef(
    name="vector_norm", group="pooling",
    attrs=(Attr("dims", "ints", doc="dim or list of dims the norm runs over"),
           Attr("p", "float", 2.0, doc="the order; inf: the largest |x|", domain=Domain("(0, inf]")),
           Attr("keepdim", "bool", False)),
    infer=_norm_infer, cost=lambda a, ins, outs: Cost(0, 2 * ins[0].numel()),
    workspace=io_workspace(per_input=2),  # |x| and |x|^p before the sum
    doc="the p-norm (sum |x|^p)^(1/p) over the given dims (torch.linalg.vector_norm), e.g. the per-channel "
        "spatial L2 norm of global response normalization: vector_norm([1, 2], keepdim=true) on [N, H, W, C].",
    example="vector_norm([2, 3], keepdim=true)",
    shape_rule="drop (or keep as 1, keepdim) each dim in dims",
    prune=PRUNE_RULE,
)


# ---- dynamic_filter ----------------------------------------------------------------------
def dynamic_groups(attrs: dict, ins: list[TensorType]) -> tuple[int, int, int]:
    """Check (x, kernels); returns (channels, kernel groups, taps k*k)."""
    x, w = ins
    expect_rank("dynamic_filter", x, 4, what="input x [N, C, H, W]")
    expect_rank("dynamic_filter", w, 4, what="kernels [N, G*k*k, H, W]")
    k, dil = attrs["k"], attrs["dilation"]
    if k < 1 or k % 2 == 0:
        raise CDLTypeError("dynamic_filter needs an odd kernel size (the window is centred)", got=str(k))
    if dil < 1:
        raise CDLTypeError("dynamic_filter: dilation must be positive", got=str(dil))
    c = _static("dynamic_filter", x, 1, "channel count")
    taps = k * k
    kc = _static("dynamic_filter", w, 1, "kernel channel count")
    if kc % taps:
        raise ShapeError(f"dynamic_filter: kernels need a multiple of k*k = {taps} channels",
                         expected=f"G*{taps} channels", got=str(w))
    groups = kc // taps
    if c % groups:
        raise ShapeError(f"dynamic_filter: {groups} kernel groups do not divide {c} channels",
                         expected="G dividing C (G=1: one kernel for all channels, G=C: one per channel)",
                         got=f"x {x}, kernels {w}")
    for i, what in ((2, "height"), (3, "width")):
        if x.shape[i] != w.shape[i]:
            raise ShapeError(f"dynamic_filter: kernels must have the input's {what} (one kernel per pixel)",
                             expected=f"{what} {x.shape[i]}", got=f"x {x}, kernels {w}")
    if w.shape[0] != 1 and x.shape[0] != w.shape[0]:
        raise ShapeError("dynamic_filter: kernels need the input's batch or a batch of 1 (shared by all samples)",
                         expected=f"batch {x.shape[0]} or 1", got=f"x {x}, kernels {w}")
    if x.dtype != w.dtype:
        raise ShapeError("dynamic_filter: dtypes differ", got=f"{x.dtype} and {w.dtype}")
    return c, groups, taps


def _dynamic_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    dynamic_groups(attrs, ins)
    return [ins[0]]


def _dynamic_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    macs = outs[0].numel() * attrs["k"] ** 2
    return Cost(macs, 2 * macs)


def _dynamic_workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
    """The input unfolded to [N, C*k*k, H*W] (F.unfold, TVM's gather), the product with the
    kernels of the same size, and the kernels broadcast over the channels of a group."""
    x = ins[0]
    unfolded = nbytes(x) * attrs["k"] ** 2
    return 2 * unfolded + nbytes(ins[1]) * x.shape[0] // max(1, ins[1].shape[0])


DYNAMIC_FILTER = OpDef(
    name="dynamic_filter", group="convolution",
    attrs=(Attr("k", "int", 3, doc="kernel size (odd; zero padding keeps H, W)", domain=POSITIVE),
           Attr("dilation", "int", 1, domain=POSITIVE)),
    inputs=(2, 2), input_names=("x", "kernels"),
    infer=_dynamic_infer, cost=_dynamic_cost, workspace=_dynamic_workspace,
    doc="per-pixel filtering with predicted kernels (kernel-prediction networks; TVConv): "
        "y[n, c, i, j] = sum_t kernels[n, g*k*k + t, i, j] * x[n, c, i + d*(ty - k//2), j + d*(tx - k//2)], "
        "t = ty*k + tx, g = c // (C/G), zeros outside the image. G = 1 shares one kernel across channels, "
        "G = C gives a depthwise translation-variant conv. A kernel batch of 1 is shared by every sample.",
    example="(x, kernels) | dynamic_filter(3)",
    shape_rule="[N, C, H, W], [N or 1, G*k*k, H, W] -> [N, C, H, W]; G divides C",
    prune=opaque("its kernels are computed from channels (G*k*k of them)"),
    example_inputs="x: f32[N, 64, 14, 14], kernels: f32[N, 9, 14, 14]",
)


# ---- parameter --------------------------------------------------------------------------
PARAM_INITS = ("normal", "trunc_normal", "uniform", "zeros", "ones", "const")


def _param_shape(attrs: dict) -> tuple[int, ...]:
    shape = attrs["shape"]
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not shape or any(d <= 0 for d in shape):
        raise CDLTypeError("parameter: the shape needs positive sizes", got=format_value(shape))
    return shape


def _param_init(attrs: dict) -> Init:
    kind, s = attrs["init"], attrs["scale"]
    if kind == "normal":
        return Init("normal", (0.0, s))
    if kind == "trunc_normal":
        return Init("trunc_normal", (s, -2.0 * s, 2.0 * s))
    if kind == "uniform":
        return Init("uniform", (-s, s))
    if kind == "const":
        return Init("const", (s,))
    return Init(kind)


def _param_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    return [TensorType(_param_shape(attrs), ins[0].dtype)]


PARAMETER = OpDef(
    name="parameter", group="arithmetic",
    attrs=(Attr("shape", "ints", doc="the tensor's shape (no batch dim: broadcasting adds it)", domain=POSITIVE),
           Attr("init", "sym", "normal", choices=PARAM_INITS),
           Attr("scale", "float", 0.02, doc="std (normal, trunc_normal: cut at 2 std), bound (uniform) "
                                             "or the value (const)")),
    infer=_param_infer, cost=zero_cost,
    params=lambda a, ins: {"weight": ParamSpec(_param_shape(a), _param_init(a))},
    doc="a learned tensor (parameter `weight`) of a fixed shape, e.g. TVConv's affinity maps or ConViT's "
        "per-head gates. Its input's values are never read: CDL applies ops to tensors, and the input only "
        "places the parameter in the graph (and gives its dtype).",
    example="x | parameter([1, 8, 14, 14])",
    shape_rule="any input -> shape",
    prune=opaque("a learned tensor whose shape is an attribute"),
)


OPS = [ROT90, FLIP, GLU, PRELU, AMAX, VECTOR_NORM, DYNAMIC_FILTER, PARAMETER]
