"""Attention and the transformer plumbing around it.

Tokens are [N, L, C] unless an op says otherwise (window attention takes
channels-last images [N, H, W, C] like torchvision's Swin; conv and halo
attention take [N, C, H, W]).  Parameter names follow the PyTorch module each
op is checked against, so those state_dicts load with no or a trivial renaming:

- mhsa / cross_attention: ``torch.nn.MultiheadAttention`` (in_proj_weight,
  in_proj_bias, out_proj.*; q/k/v_proj_weight when the widths differ); ``qkv=``
  and ``proj=`` rename the projections (``qkv="qkv", proj="proj"``: timm's
  ViT ``Attention``, a fused ``qkv`` Linear), see ``mha_names``
- window_attention: ``torchvision.models.swin_transformer.ShiftedWindowAttention``
- conv_attention: the CvT reference (conv_proj_q.conv/bn, proj_q, ..., proj)
- halo_attention: timm's HaloAttn (q, kv, pos_embed.height_rel/width_rel)
- patch_embed: ``weight``/``bias`` of a Conv2d, so ``patch_embed(...) as conv_proj``
  gives torchvision ViT's ``conv_proj.weight`` exactly
- class_token / pos_embed / layer_scale: ``class_token``, ``pos_embedding`` and
  ``layer_scale`` as in torchvision's ViT and ConvNeXt (prefixed by the node name)

Lowered in backends/torch/lower_attention.py and backends/tvm/lower_attention.py; how pruning treats each op
is its ``prune=`` (PRUNE_RULE ops: convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

import keyword
import math
from typing import NamedTuple

import numpy as np

from convdsl.errors import CDLTypeError, ShapeError, did_you_mean
from convdsl.ir.domains import NON_NEGATIVE, NON_NEGATIVE_REAL, POSITIVE, POSITIVE_REAL, PROBABILITY
from convdsl.ir.optable import (PRUNE_RULE, Attr, Cost, Init, OpDef, OutChannels, ParamSpec, Symbol, expect_rank,
                                io_workspace, keep_channels, nbytes, on_axis, opaque, tuple_n, work_bytes, zero_cost)
from convdsl.ir.types import TensorType, bind_dim, dim_add, dim_floordiv, dim_mul
from convdsl.ir.ops.conv import conv_out_size

SOFTMAX_FLOPS = 5  # per attention logit: max, sub, exp, sum, div


# ---- shared checks and formulas ------------------------------------------------------
def _static(op: str, t: TensorType, axis: int, what: str) -> int:
    d = t.shape[axis]
    if not isinstance(d, int):
        raise ShapeError(f"{op} needs a static {what}", expected=f"an integer {what}", got=str(t),
                         hint="declare the input with a concrete size in that position")
    return d


def _tokens(op: str, t: TensorType, what: str = "input") -> int:
    """Check a [N, L, C] token tensor; returns C."""
    if t.rank != 3:
        raise ShapeError(f"{op} needs tokens [N, L, C] as its {what}", expected="rank 3 [N, L, C]",
                         got=f"{t} (rank {t.rank})",
                         hint="images [N, C, H, W] become tokens with patch_embed, or flatten(2) | transpose(1, 2)")
    return _static(op, t, 2, "channel count (last dim)")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, min(n, 64) + 1) if n % d == 0)  # not a loop to n: dim=2**62


def check_heads(op: str, width: int, heads: int, what: str = "channels") -> int:
    """Head width ``width // heads``; a clear error when heads does not divide it."""
    if heads <= 0:
        raise CDLTypeError(f"{op}: heads must be positive", got=str(heads))
    if width <= 0:
        raise CDLTypeError(f"{op}: the attention width must be positive", got=str(width))
    if width % heads:
        raise ShapeError(f"{op}: {width} {what} cannot be split into {heads} heads",
                         expected=f"{what} divisible by heads", got=f"{what}={width}, heads={heads}",
                         hint=f"heads that divide {width}: {_divisors(width)}")
    return width // heads


def _check_dropout(op: str, attrs: dict, *names: str) -> None:
    for name in names:
        p = attrs[name]
        if not 0.0 <= p < 1.0:
            raise CDLTypeError(f"{op}: {name} is a probability", expected="0 <= p < 1", got=str(p))


def _check_scale(op: str, attrs: dict) -> None:
    s = attrs.get("scale")
    if s is not None and not s > 0:
        raise CDLTypeError(f"{op}: scale multiplies the logits and must be positive", got=str(s),
                           hint="leave it out for 1/sqrt(head width)")


def _same_dim(a, b) -> bool:
    """Equal, or not decidable at elaboration time (a symbol on either side)."""
    return a == b or not (isinstance(a, int) and isinstance(b, int))


def _check_mask(op: str, m: TensorType, x: TensorType, lq, lk, heads: int) -> None:
    """An additive float mask (or a bool mask, True = blocked) of [Lq, Lk] or [N*heads, Lq, Lk]."""
    if m.dtype not in (x.dtype, "bool"):
        raise ShapeError(f"{op}: the mask must be {x.dtype} (added to the logits) or bool (True = blocked)",
                         got=str(m))
    if m.rank == 2:
        ok = _same_dim(m.shape[0], lq) and _same_dim(m.shape[1], lk)
    elif m.rank == 3:
        ok = (_same_dim(m.shape[0], dim_mul(x.shape[0], heads)) and _same_dim(m.shape[1], lq)
              and _same_dim(m.shape[2], lk))
    else:
        ok = False
    if not ok:
        raise ShapeError(f"{op}: the mask does not fit the attention logits",
                         expected=f"[{lq}, {lk}] or [{dim_mul(x.shape[0], heads)}, {lq}, {lk}]", got=str(m),
                         hint="as for torch.nn.MultiheadAttention's attn_mask")


def xavier(fan_out: int, fan_in: int) -> Init:
    """torch.nn.init.xavier_uniform_ of a [fan_out, fan_in] matrix."""
    b = math.sqrt(6.0 / (fan_in + fan_out))
    return Init("uniform", (-b, b))


def linear_init(fan_in: int) -> Init:
    """nn.Linear / nn.Conv default (kaiming_uniform(a=sqrt 5) == U(+-1/sqrt(fan_in)))."""
    b = 1.0 / math.sqrt(fan_in)
    return Init("uniform", (-b, b))


def _linear(prefix: str, fin: int, fout: int, bias: bool) -> dict[str, ParamSpec]:
    p = {f"{prefix}.weight": ParamSpec((fout, fin), linear_init(fin))}
    if bias:
        p[f"{prefix}.bias"] = ParamSpec((fout,), linear_init(fin))
    return p


def attention_cost(n, lq, lk, dim: int, heads: int) -> Cost:
    """QK^T and AV (``dim`` = heads * head width) plus the softmax."""
    n, lq, lk = bind_dim(n), bind_dim(lq), bind_dim(lk)
    macs = 2 * n * lq * lk * dim
    return Cost(macs, 2 * macs + SOFTMAX_FLOPS * n * heads * lq * lk)


def attention_workspace(n: int, heads: int, lq: int, lk: int, dim: int, item: int) -> int:
    """Working memory of one multi-head attention: q and the heads' output [N, Lq, dim], k and v
    [N, Lk, dim] (and their per-head contiguous copies), and three logit-sized buffers [N, heads,
    Lq, Lk]: the scores, their softmax and a masked copy (PyTorch's math kernel and TVM's lowering
    materialize them; the flash kernel needs less)."""
    return (4 * n * (lq + lk) * dim + 3 * n * heads * lq * lk) * item


def _proj_cost(tokens: int, fin: int, fout: int, bias: bool) -> Cost:
    macs = tokens * fin * fout
    return Cost(macs, 2 * macs + (tokens * fout if bias else 0))


_HEADS = Attr("heads", "int", doc="number of attention heads; must divide the width", domain=POSITIVE)
_QKV_BIAS = Attr("qkv_bias", "bool", True, doc="bias on the q/k/v projections")
_PROJ_BIAS = Attr("proj_bias", "bool", True, doc="bias on the output projection")
_DROPOUT = Attr("dropout", "float", 0.0, doc="dropout on the attention weights while training", domain=PROBABILITY)
_SCALE = Attr("scale", "float", None, doc="logit scale (default 1/sqrt(head width))", domain=POSITIVE_REAL)
_MHA_QKV = Attr("qkv", "str", None, doc="name of a fused q/k/v Linear (<qkv>.weight, <qkv>.bias), e.g. \"qkv\" "
                "for timm's ViT; default: torch.nn.MultiheadAttention's in_proj_weight, in_proj_bias")
_MHA_PROJ = Attr("proj", "str", "out_proj", doc="name of the output projection (<proj>.weight, <proj>.bias)")


class MhaNames(NamedTuple):
    """Parameter names of a multi-head attention's projections: the fused q/k/v weight and bias
    (``w`` is None when q, k and v have separate weights ``q``, ``k``, ``v``), the output's."""

    w: str | None
    b: str
    q: str | None
    k: str | None
    v: str | None
    out_w: str
    out_b: str


def mha_names(attrs: dict, packed: bool = True) -> MhaNames:
    """The names mhsa's and cross_attention's parameters take: torch.nn.MultiheadAttention's by
    default, ``<qkv>.weight``/``<qkv>.bias`` and ``<proj>.weight``/``<proj>.bias`` when named.
    Every backend and pass reads them from here."""
    qkv, proj = attrs.get("qkv"), attrs.get("proj") or "out_proj"
    out = (f"{proj}.weight", f"{proj}.bias")
    if qkv is not None:
        return MhaNames(f"{qkv}.weight", f"{qkv}.bias", None, None, None, *out)
    if packed:
        return MhaNames("in_proj_weight", "in_proj_bias", None, None, None, *out)
    return MhaNames(None, "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight", *out)


# ---- mhsa ---------------------------------------------------------------------------------
def _mask_kind(op: str, attrs: dict) -> str | None:
    m = attrs["mask"]
    if m in (None, "none"):
        return None
    if m != "causal":
        word = m.name if isinstance(m, Symbol) else m if isinstance(m, str) else ""
        raise CDLTypeError(f"bad value for {op}(mask=...)", expected="none or causal", got=str(m),
                           hint=did_you_mean(word, ("causal", "none"))
                           or "an explicit mask is a second input: (x, m) | mhsa(heads=8)")
    return m


def _mhsa_normalize(attrs: dict, ins: list[TensorType]) -> dict:
    c = _tokens("mhsa", ins[0])
    if attrs["dim"] is None:
        attrs["dim"] = c
    attrs["mask"] = _mask_kind("mhsa", attrs)
    if attrs["rel_pos"] and attrs["max_len"] is None:
        attrs["max_len"] = _static("mhsa", ins[0], 1, "sequence length for rel_pos=true (or give max_len)")
    return attrs


def _mhsa_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    _tokens("mhsa", x)
    dim = attrs["dim"]
    check_heads("mhsa", dim, attrs["heads"], "channels" if dim == x.shape[2] else "attention channels (dim)")
    _mask_kind("mhsa", attrs)
    _check_dropout("mhsa", attrs, "dropout")
    _check_scale("mhsa", attrs)
    _check_projection_names("mhsa", attrs, "qkv", "proj")
    L = x.shape[1]
    if attrs["rel_pos"]:
        ml = attrs["max_len"]
        if ml is None or ml <= 0:
            raise CDLTypeError("mhsa: max_len must be a positive length", got=str(ml))
        if isinstance(L, int) and L > ml:
            raise ShapeError(f"mhsa: sequence length {L} exceeds max_len={ml} of the relative position table",
                             got=str(x), hint=f"raise max_len to at least {L}")
    elif attrs["max_len"] is not None:
        raise CDLTypeError("mhsa: max_len only sizes the relative position table", hint="add rel_pos=true")
    if len(ins) > 1:
        _check_mask("mhsa", ins[1], x, L, L, attrs["heads"])
    return [x.with_shape((x.shape[0], L, dim))]


def _mhsa_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, dim, heads = ins[0].shape[2], attrs["dim"], attrs["heads"]
    names = mha_names(attrs)
    p = {names.w: ParamSpec((3 * dim, c), xavier(3 * dim, c))}
    if attrs["qkv_bias"]:
        p[names.b] = ParamSpec((3 * dim,), Init("zeros"))
    p[names.out_w] = ParamSpec((dim, dim), linear_init(dim))
    if attrs["proj_bias"]:
        p[names.out_b] = ParamSpec((dim,), Init("zeros"))
    if attrs["rel_pos"]:
        p["relative_position_bias_table"] = ParamSpec((2 * attrs["max_len"] - 1, heads), Init("trunc_normal", (0.02,)))
    return p


def _mhsa_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    x = ins[0]
    n, L, c, dim = x.shape[0], x.shape[1], x.shape[2], attrs["dim"]
    tokens = bind_dim(n) * bind_dim(L)
    return (_proj_cost(tokens, c, 3 * dim, attrs["qkv_bias"]) + attention_cost(n, L, L, dim, attrs["heads"])
            + _proj_cost(tokens, dim, dim, attrs["proj_bias"]))


def _mhsa_workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
    """Attention over [N, L, C], plus a relative position bias: two int64 offset tables [L, L] and
    the gathered bias [L, L, heads] (and a masked copy); plus an explicit mask made float, twice."""
    x, item = ins[0], work_bytes(ins[0])
    n, L, heads = x.shape[0], x.shape[1], attrs["heads"]
    ws = attention_workspace(n, heads, L, L, attrs["dim"], item)
    if attrs["rel_pos"]:
        ws += L * L * (2 * 8 + 2 * heads * item)
    if attrs["mask"] == "causal":
        ws += L * L * (1 + heads * item)
    if len(ins) > 1:
        ws += 2 * math.prod(ins[1].shape) * item
    return ws


MHSA = OpDef(
    name="mhsa", group="attention",
    attrs=(
        _HEADS,
        Attr("dim", "int", None, doc="attention/output width (default: input channels)", domain=POSITIVE),
        _QKV_BIAS, _PROJ_BIAS, _DROPOUT,
        Attr("mask", "sym|any", None, choices=("causal", "none"), doc="none or causal"),
        Attr("rel_pos", "bool", False, doc="learned relative position bias per head (T5/Swin-style, 1-D)"),
        Attr("max_len", "int", None, doc="longest sequence the relative position table covers (default L)",
             domain=POSITIVE),
        _SCALE, _MHA_QKV, _MHA_PROJ,
    ),
    infer=_mhsa_infer, params=_mhsa_params, cost=_mhsa_cost, normalize=_mhsa_normalize, inputs=(1, 2),
    workspace=_mhsa_workspace,
    input_names=("x", "mask"),
    doc="multi-head self-attention over tokens [N, L, C] with a fused q/k/v projection "
        "(torch.nn.MultiheadAttention's parameters, or named by qkv=/proj=: qkv=\"qkv\", proj=\"proj\" "
        "loads timm's ViT Attention; scaled_dot_product_attention). An optional second "
        "input is an additive mask [L, L] or [N*heads, L, L] (bool: True = blocked).",
    example="mhsa(heads=8)",
    shape_rule="[N, L, C] -> [N, L, dim]; heads divides dim",
    prune=PRUNE_RULE,
    example_inputs="x: f32[N, 196, 64]",
)


def _packed_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    c3 = _tokens("packed_attention", x)
    if c3 % 3:
        raise ShapeError("packed_attention: the last dim holds q, k and v, so it must be a multiple of 3",
                         got=str(x), hint="the input is a q/k/v projection's output: linear(3 * width)")
    check_heads("packed_attention", c3 // 3, attrs["heads"])
    return [x.with_shape((x.shape[0], x.shape[1], c3 // 3))]


def _packed_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    x = ins[0]
    return attention_cost(x.shape[0], x.shape[1], x.shape[1], x.shape[2] // 3, attrs["heads"])


def _packed_workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
    x = ins[0]
    return attention_workspace(x.shape[0], attrs["heads"], x.shape[1], x.shape[1], x.shape[2] // 3, work_bytes(x))


PACKED_ATTENTION = OpDef(
    name="packed_attention", group="attention",
    attrs=(_HEADS, _SCALE),
    infer=_packed_infer, cost=_packed_cost, workspace=_packed_workspace, int8="qattention",
    doc="softmax(q k^T * scale) v per head over tokens [N, L, 3C] holding q | k | v (a fused q/k/v "
        "projection's output): mhsa between its two projections. The quantize pass splits an mhsa into "
        "linear -> packed_attention -> linear so that each part is quantized.",
    example="linear(192) | packed_attention(heads=4)",
    shape_rule="[N, L, 3C] -> [N, L, C]; heads divides C",
    prune=opaque("q, k and v share the channels of one projection: prune the mhsa before it is split"),
    example_inputs="x: f32[N, 50, 64]",
)


# ---- cross attention ------------------------------------------------------------------------
def packed_cross(c: int, ck: int, dim: int) -> bool:
    """torch.nn.MultiheadAttention packs q/k/v into in_proj_weight iff all widths are equal."""
    return c == ck == dim


def _cross_normalize(attrs: dict, ins: list[TensorType]) -> dict:
    if attrs["dim"] is None:
        attrs["dim"] = _tokens("cross_attention", ins[0], "query input")
    return attrs


def _cross_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x, ctx = ins[0], ins[1]
    _tokens("cross_attention", x, "query input")
    _tokens("cross_attention", ctx, "context input")
    if not _same_dim(x.shape[0], ctx.shape[0]):
        raise ShapeError("cross_attention: queries and context have different batch sizes", got=f"{x} and {ctx}")
    if x.dtype != ctx.dtype:
        raise ShapeError("cross_attention: dtypes differ", got=f"{x.dtype} and {ctx.dtype}")
    dim = attrs["dim"]
    check_heads("cross_attention", dim, attrs["heads"], "channels" if dim == x.shape[2] else "attention channels (dim)")
    _check_dropout("cross_attention", attrs, "dropout")
    _check_scale("cross_attention", attrs)
    _check_projection_names("cross_attention", attrs, "qkv", "proj")
    if attrs["qkv"] is not None and not packed_cross(x.shape[2], ctx.shape[2], dim):
        raise ShapeError("cross_attention: one fused q/k/v projection needs queries, context and dim of one width",
                         got=f"{x.shape[2]}, {ctx.shape[2]} and dim={dim}",
                         hint="leave out qkv= for separate q_proj_weight, k_proj_weight, v_proj_weight")
    if len(ins) > 2:
        _check_mask("cross_attention", ins[2], x, x.shape[1], ctx.shape[1], attrs["heads"])
    return [x.with_shape((x.shape[0], x.shape[1], dim))]


def _cross_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, ck, dim = ins[0].shape[2], ins[1].shape[2], attrs["dim"]
    names = mha_names(attrs, packed_cross(c, ck, dim))
    if names.w is not None:
        p = {names.w: ParamSpec((3 * dim, c), xavier(3 * dim, c))}
    else:
        p = {names.q: ParamSpec((dim, c), xavier(dim, c)),
             names.k: ParamSpec((dim, ck), xavier(dim, ck)),
             names.v: ParamSpec((dim, ck), xavier(dim, ck))}
    if attrs["qkv_bias"]:
        p[names.b] = ParamSpec((3 * dim,), Init("zeros"))
    p[names.out_w] = ParamSpec((dim, dim), linear_init(dim))
    if attrs["proj_bias"]:
        p[names.out_b] = ParamSpec((dim,), Init("zeros"))
    return p


def _cross_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    x, ctx = ins[0], ins[1]
    dim, b = attrs["dim"], attrs["qkv_bias"]
    tq = bind_dim(x.shape[0]) * bind_dim(x.shape[1])
    tk = bind_dim(ctx.shape[0]) * bind_dim(ctx.shape[1])
    return (_proj_cost(tq, x.shape[2], dim, b) + _proj_cost(tk, ctx.shape[2], 2 * dim, b)
            + attention_cost(x.shape[0], x.shape[1], ctx.shape[1], dim, attrs["heads"])
            + _proj_cost(tq, dim, dim, attrs["proj_bias"]))


def _cross_workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
    """Attention of [N, Lq, C] over [N, Lk, Ck], plus an explicit mask made float, twice."""
    x, ctx, item = ins[0], ins[1], work_bytes(ins[0])
    ws = attention_workspace(x.shape[0], attrs["heads"], x.shape[1], ctx.shape[1], attrs["dim"], item)
    return ws + (2 * math.prod(ins[2].shape) * item if len(ins) > 2 else 0)


CROSS = OpDef(
    name="cross_attention", group="attention",
    attrs=(_HEADS, Attr("dim", "int", None, doc="attention/output width (default: query channels)", domain=POSITIVE),
           _QKV_BIAS, _PROJ_BIAS, _DROPOUT, _SCALE, _MHA_QKV, _MHA_PROJ),
    infer=_cross_infer, params=_cross_params, cost=_cross_cost, normalize=_cross_normalize, inputs=(2, 3),
    workspace=_cross_workspace,
    input_names=("x", "context", "mask"),
    doc="multi-head attention of queries x [N, Lq, C] over a context [N, Lk, Ck] (keys and values); "
        "parameters as torch.nn.MultiheadAttention(kdim=vdim=Ck), or named by qkv= (one width only) and "
        "proj=. Optional third input: a mask [Lq, Lk].",
    example="(x, memory) | cross_attention(heads=8)",
    shape_rule="[N, Lq, C], [N, Lk, Ck] -> [N, Lq, dim]",
    prune=opaque("queries and context share heads: not analyzed"),
    example_inputs="x: f32[N, 49, 64], memory: f32[N, 77, 32]",
)


# ---- Swin window attention -----------------------------------------------------------------------
def _window_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    op, x = "window_attention", ins[0]
    if x.rank != 4:
        raise ShapeError(f"{op} needs a channels-last image [N, H, W, C]", expected="rank 4", got=f"{x} (rank {x.rank})",
                         hint="from [N, C, H, W] use permute([0, 2, 3, 1]), as torchvision's Swin does")
    c = _static(op, x, 3, "channel count (last dim)")
    check_heads(op, c, attrs["heads"])
    win = tuple_n(attrs["window"], 2, "window")
    shift = tuple_n(attrs["shift"], 2, "shift")
    if min(win) <= 0:
        raise CDLTypeError(f"{op}: window must be positive", got=str(list(win)))
    for w, s in zip(win, shift):
        if not 0 <= s < w:
            raise CDLTypeError(f"{op}: shift must be in [0, window)", got=f"window={list(win)}, shift={list(shift)}",
                               hint="Swin shifts by window // 2 in every other block")
    _check_dropout(op, attrs, "dropout", "proj_dropout")
    _check_scale(op, attrs)
    _check_projection_names(op, attrs, "qkv", "proj")
    if attrs["v2"]:
        if attrs["scale"] is not None:
            raise CDLTypeError(f"{op}: v2 (cosine attention) scales the logits by its learned logit_scale",
                               got=f"scale={attrs['scale']}", hint="leave scale out with v2=true")
        if min(win) < 2:
            raise CDLTypeError(f"{op}: v2's position coordinates are divided by window - 1", got=str(list(win)),
                               expected="window >= 2 on both sides")
    return [x]


# Names a projection cannot take: the ops' other parameters, the attributes of the torch helper
# modules they lower to (backends/torch/runtime.py: Attention, WindowAttention), and the public
# attributes of torch.nn.Module, which a submodule of that name would shadow.
_RESERVED = frozenset({
    "relative_position_bias_table", "relative_position_index", "in_proj_weight", "in_proj_bias",
    "q_proj_weight", "k_proj_weight", "v_proj_weight",
    "heads", "dropout", "causal", "max_len", "scale", "packed", "logit_bias", "window", "shift", "proj_dropout",
    "qkv_name", "proj_name", "names", "training", "v2", "logit_scale", "cpb_mlp", "relative_coords_table",
    "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "compile", "cpu", "cuda", "double",
    "dump_patches", "eval", "extra_repr", "float", "forward", "get_buffer", "get_extra_state", "get_parameter",
    "get_submodule", "half", "ipu", "load_state_dict", "modules", "mtia", "named_buffers", "named_children",
    "named_modules", "named_parameters", "parameters", "register_backward_hook", "register_buffer",
    "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
    "register_full_backward_pre_hook", "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
    "register_module", "register_parameter", "register_state_dict_post_hook", "register_state_dict_pre_hook",
    "requires_grad_", "set_extra_state", "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train",
    "type", "xpu", "zero_grad", "T_destination",
})


def _check_projection_names(op: str, attrs: dict, *names: str) -> None:
    """Projection names become module names in generated code and state_dict key segments:
    Python identifiers, distinct, not one of the op's other parameters."""
    seen = set()
    for name in names:
        v = attrs[name]
        if v is None:  # the default layout (torch.nn.MultiheadAttention's)
            continue
        if not isinstance(v, str) or not v.isidentifier() or keyword.iskeyword(v) or v.startswith("_") or v in _RESERVED:
            raise CDLTypeError(f"{op}: {name} names the projection's parameters ({v}.weight)",
                               expected="a Python identifier not starting with '_', not a name the op or a "
                                        "torch module uses already", got=repr(v),
                               hint=f"as the reference model names it, e.g. {name}=\"to_{name}\"")
        if v in seen:
            raise CDLTypeError(f"{op}: the projections need distinct names", got=f"{name}={v!r}")
        seen.add(v)


def _window_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, heads = ins[0].shape[3], attrs["heads"]
    wh, ww = tuple_n(attrs["window"], 2)
    p = {**_linear(attrs["qkv"], c, 3 * c, attrs["qkv_bias"]), **_linear(attrs["proj"], c, c, attrs["proj_bias"])}
    if not attrs["v2"]:
        p["relative_position_bias_table"] = ParamSpec(((2 * wh - 1) * (2 * ww - 1), heads),
                                                      Init("trunc_normal", (0.02,)))
        return p
    # torchvision's ShiftedWindowAttentionV2: logit_scale = log(10), the cpb_mlp's Linear default init
    p["logit_scale"] = ParamSpec((heads, 1, 1), Init("const", (math.log(10.0),)))
    p["cpb_mlp.0.weight"] = ParamSpec((CPB_HIDDEN, 2), linear_init(2))
    p["cpb_mlp.0.bias"] = ParamSpec((CPB_HIDDEN,), linear_init(2))
    p["cpb_mlp.2.weight"] = ParamSpec((heads, CPB_HIDDEN), linear_init(CPB_HIDDEN))
    return p


CPB_HIDDEN = 512  # the width of SwinV2's continuous position bias MLP (torchvision's and timm's)


def relative_coords_table(wh: int, ww: int) -> np.ndarray:
    """[1, 2wh-1, 2ww-1, 2] float32: SwinV2's log-spaced relative coordinates, the cpb_mlp's input
    (torchvision's relative_coords_table buffer: offsets / (window - 1) * 8, sign(t) log2(|t| + 1) / 3)."""
    h = np.arange(-(wh - 1), wh, dtype=np.float32) / np.float32(wh - 1) * np.float32(8)
    w = np.arange(-(ww - 1), ww, dtype=np.float32) / np.float32(ww - 1) * np.float32(8)
    t = np.stack(np.meshgrid(h, w, indexing="ij"), axis=-1)[None]
    return (np.sign(t) * np.log2(np.abs(t) + np.float32(1)) / np.float32(3)).astype(np.float32)


def cpb_bias_table(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, wh: int, ww: int) -> np.ndarray:
    """SwinV2's [(2wh-1)(2ww-1), heads] bias table from its cpb_mlp weights (``cpb_mlp.0.weight``,
    ``cpb_mlp.0.bias``, ``cpb_mlp.2.weight``): 16 sigmoid(cpb_mlp(relative_coords_table)), float64.
    Backends that fix the table when they compile (TVM, ONNX) compute it here."""
    coords = relative_coords_table(wh, ww).reshape(-1, 2)
    table = (np.maximum(coords @ w1.T + b1, 0) @ w2.T).astype(np.float64)
    return 16.0 / (1.0 + np.exp(-table))


def logit_scale_factor(s: np.ndarray) -> np.ndarray:
    """SwinV2's per-head logit multiplier exp(min(logit_scale, log 100)), in the parameter's dtype."""
    return np.exp(np.minimum(s, np.float32(math.log(100.0)))).astype(s.dtype)


def relative_position_index(wh: int, ww: int) -> np.ndarray:
    """[T, T] (T = wh*ww): the row of the bias table for each pair of tokens of a window, torchvision's
    relative_position_index (Swin stores it flattened, MaxViT as [T, T])."""
    ys, xs = np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    return (ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + xs[:, None] - xs[None, :] + ww - 1


def shift_mask(hp: int, wp: int, wh: int, ww: int, sh: int, sw: int) -> np.ndarray:
    """[windows, T, T] float64: -100 between tokens Swin's cyclic shift (sh, sw) brought together from different
    regions of the padded [hp, wp] map, 0 elsewhere (torchvision's attn_mask).  The backends that fix it when
    they compile (TVM, ONNX) and the ONNX importer's check compute it here."""
    region = np.zeros((hp, wp))
    count = 0
    for h in ((0, -wh), (-wh, -sh), (-sh, None)):
        for w in ((0, -ww), (-ww, -sw), (-sw, None)):
            region[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    region = region.reshape(hp // wh, wh, wp // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = region[:, None, :] - region[:, :, None]
    return np.where(diff != 0, -100.0, 0.0)


def _window_derived(attrs: dict, ins: list[TensorType]) -> dict[str, np.ndarray]:
    win = tuple_n(attrs["window"], 2)
    out = {"relative_position_index": relative_position_index(*win)}
    if attrs["v2"]:
        out["relative_coords_table"] = relative_coords_table(*win)
    return out


def padded(size, w: int):
    """A spatial size rounded up to a multiple of the window (torchvision pads bottom/right)."""
    return -(-size // w) * w if isinstance(size, int) else dim_mul(dim_floordiv(dim_add(size, w - 1), w), w)


def _window_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    n, h, w, c = ins[0].shape
    wh, ww = tuple_n(attrs["window"], 2)
    hp, wp = bind_dim(padded(h, wh)), bind_dim(padded(w, ww))
    windows = bind_dim(n) * (hp // wh) * (wp // ww)
    tokens = windows * wh * ww
    cost = (_proj_cost(tokens, c, 3 * c, attrs["qkv_bias"]) + attention_cost(windows, wh * ww, wh * ww, c, attrs["heads"])
            + _proj_cost(tokens, c, c, attrs["proj_bias"]))
    if attrs["v2"]:  # the cpb_mlp over the coordinates table (once), and normalizing q and k (3 flops an element)
        rows = (2 * wh - 1) * (2 * ww - 1)
        cost = cost + Cost(rows * CPB_HIDDEN * (2 + attrs["heads"]), 2 * rows * CPB_HIDDEN * (2 + attrs["heads"])
                           + 3 * 2 * tokens * c)
    return cost


def _window_workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
    """The padded, shifted and windowed copies of x (and of the output on the way back): eight
    padded maps; q, k, v: three more; attention in every window; the relative position bias and
    the shift mask per window, [windows, heads, T, T], built in several steps."""
    n, h, w, c = ins[0].shape
    wh, ww = tuple_n(attrs["window"], 2)
    item, heads, t = work_bytes(ins[0]), attrs["heads"], wh * ww
    hp, wp = padded(h, wh), padded(w, ww)
    windows = (hp // wh) * (wp // ww)
    maps = 11 * n * hp * wp * c * item
    return maps + attention_workspace(n * windows, heads, t, t, c, item) + 5 * windows * heads * t * t * 4


WINDOW = OpDef(
    name="window_attention", group="attention",
    attrs=(_HEADS, Attr("window", "ints", 7, doc="window size (int or [h, w])", domain=POSITIVE),
           Attr("shift", "ints", 0, doc="cyclic shift (Swin's shifted windows); 0 <= shift < window",
                domain=NON_NEGATIVE),
           _QKV_BIAS, _PROJ_BIAS, _DROPOUT, Attr("proj_dropout", "float", 0.0, doc="dropout on the output",
                                                          domain=PROBABILITY),
           _SCALE,
           Attr("qkv", "str", "qkv", doc="name of the fused q/k/v projection (its parameters: <qkv>.weight, "
                                         "<qkv>.bias), e.g. \"to_qkv\" for torchvision's MaxViT"),
           Attr("proj", "str", "proj", doc="name of the output projection, e.g. \"merge\" for torchvision's MaxViT"),
           Attr("v2", "bool", False, doc="Swin V2 (torchvision's ShiftedWindowAttentionV2): cosine attention scaled "
                                         "by exp(min(logit_scale, log 100)), the bias 16 sigmoid(cpb_mlp(coords)), "
                                         "the key's bias unused")),
    infer=_window_infer, params=_window_params, cost=_window_cost, workspace=_window_workspace,
    derived=_window_derived,
    doc="Swin (shifted) window attention on channels-last [N, H, W, C], exactly torchvision's "
        "ShiftedWindowAttention: zero-pad H, W to multiples of the window, cyclic shift with the "
        "shifted-window mask (no shift along a side the window covers), relative position bias table "
        "[(2wh-1)(2ww-1), heads]. scale= and the projection names qkv=/proj= also make it "
        "torchvision's MaxViT RelativePositionalMultiHeadAttention on windows (see examples/maxvit_t.cdl).",
    example="window_attention(heads=3, window=7, shift=3)",
    shape_rule="[N, H, W, C] -> [N, H, W, C]; heads divides C",
    prune=opaque("heads and windows: not analyzed"),
    example_inputs="x: f32[N, 14, 14, 96]",
)


# ---- CvT convolutional attention ------------------------------------------------------------------
def _proj_out(size, k: int, stride: int):
    """Spatial size after a CvT projection: a conv with padding k // 2."""
    return conv_out_size(size, k // 2, k // 2, k, stride, 1)


def _dw_bn(prefix: str, c: int, k: int) -> dict[str, ParamSpec]:
    return {
        f"{prefix}.conv.weight": ParamSpec((c, 1, k, k), linear_init(k * k)),
        f"{prefix}.bn.weight": ParamSpec((c,), Init("ones")),
        f"{prefix}.bn.bias": ParamSpec((c,), Init("zeros")),
        f"{prefix}.bn.running_mean": ParamSpec((c,), Init("zeros"), buffer=True),
        f"{prefix}.bn.running_var": ParamSpec((c,), Init("ones"), buffer=True),
        f"{prefix}.bn.num_batches_tracked": ParamSpec((), Init("zeros"), dtype="i64", buffer=True),
    }


def _conv_attn_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    op, x = "conv_attention", ins[0]
    expect_rank(op, x, 4, what="token map [N, C, H, W]")
    c = _static(op, x, 1, "channel count")
    check_heads(op, c, attrs["heads"])
    k, sq, skv = attrs["k"], attrs["stride_q"], attrs["stride_kv"]
    if k <= 0 or sq <= 0 or skv <= 0:
        raise CDLTypeError(f"{op}: k and strides must be positive", got=f"k={k}, stride_q={sq}, stride_kv={skv}")
    _check_dropout(op, attrs, "dropout")
    _check_scale(op, attrs)
    h, w = _proj_out(x.shape[2], k, sq), _proj_out(x.shape[3], k, sq)
    for size in (_proj_out(x.shape[2], k, skv), _proj_out(x.shape[3], k, skv), h, w):
        if isinstance(size, int) and size <= 0:
            raise ShapeError(f"{op}: the token map is too small for k={k}", got=str(x))
    return [x.with_shape((x.shape[0], c, h, w))]


def _conv_attn_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, k, b = ins[0].shape[1], attrs["k"], attrs["qkv_bias"]
    p: dict[str, ParamSpec] = {}
    for s in "qkv":
        p.update(_dw_bn(f"conv_proj_{s}", c, k))
    for s in "qkv":
        p.update(_linear(f"proj_{s}", c, c, b))
    p.update(_linear("proj", c, c, attrs["proj_bias"]))
    return p


def _conv_attn_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    n, c, h, w = ins[0].shape
    k, skv = attrs["k"], attrs["stride_kv"]
    lq = bind_dim(outs[0].shape[2]) * bind_dim(outs[0].shape[3])
    lk = bind_dim(_proj_out(h, k, skv)) * bind_dim(_proj_out(w, k, skv))
    nb = bind_dim(n)
    dw = Cost(nb * (lq + 2 * lk) * c * k * k, 2 * nb * (lq + 2 * lk) * c * k * k + 4 * nb * (lq + 2 * lk) * c)
    return (dw + _proj_cost(nb * lq, c, c, attrs["qkv_bias"]) + _proj_cost(nb * lk, c, 2 * c, attrs["qkv_bias"])
            + attention_cost(n, lq, lk, c, attrs["heads"]) + _proj_cost(nb * lq, c, c, attrs["proj_bias"]))


def _conv_attn_workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
    """The depthwise conv and batchnorm outputs of q (at stride_q) and k, v (at stride_kv), their
    linear projections, attention over them, and the projected output before its transpose."""
    n, c, h, w = ins[0].shape
    k, skv = attrs["k"], attrs["stride_kv"]
    lq = outs[0].shape[2] * outs[0].shape[3]
    lk = _proj_out(h, k, skv) * _proj_out(w, k, skv)
    item = work_bytes(ins[0])
    maps = 3 * n * c * (lq + 2 * lk) * item + 2 * nbytes(ins[0])
    return maps + attention_workspace(n, attrs["heads"], lq, lk, c, item) + 2 * nbytes(outs[0])


CONV_ATTENTION = OpDef(
    name="conv_attention", group="attention",
    attrs=(_HEADS, Attr("k", "int", 3, doc="depthwise projection kernel", domain=POSITIVE),
           Attr("stride_kv", "int", 2, doc="stride of the key/value projections (squeezes K, V)", domain=POSITIVE),
           Attr("stride_q", "int", 1, doc="stride of the query projection", domain=POSITIVE),
           _QKV_BIAS, _PROJ_BIAS, _DROPOUT, _SCALE),
    infer=_conv_attn_infer, params=_conv_attn_params, cost=_conv_attn_cost, workspace=_conv_attn_workspace,
    doc="CvT convolutional attention on a token map [N, C, H, W]: q/k/v each from a depthwise conv "
        "(padding k//2) + batchnorm, then a linear projection; multi-head attention; output projection. "
        "Parameter names follow the CvT reference (conv_proj_q.conv/bn, proj_q, ..., proj). Note: CvT "
        "scales logits by C**-0.5; pass scale= for that, the default is the head width's.",
    example="conv_attention(heads=2, k=3, stride_kv=2)",
    shape_rule="[N, C, H, W] -> [N, C, H', W'] (H' = H for stride_q=1); keys/values at stride_kv",
    prune=opaque("projections and heads inside the op: not analyzed"),
)


# ---- HaloNet blocked local attention ------------------------------------------------------------
def _halo_normalize(attrs: dict, ins: list[TensorType]) -> dict:
    expect_rank("halo_attention", ins[0], 4, what="image [N, C, H, W]")
    if attrs["dim"] is None:
        attrs["dim"] = _static("halo_attention", ins[0], 1, "channel count")
    return attrs


def _halo_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    op, x = "halo_attention", ins[0]
    expect_rank(op, x, 4, what="image [N, C, H, W]")
    _static(op, x, 1, "channel count")
    dim, block, halo = attrs["dim"], attrs["block_size"], attrs["halo"]
    check_heads(op, dim, attrs["heads"], "channels" if dim == x.shape[1] else "output channels (dim)")
    if block <= 0 or halo < 0:
        raise CDLTypeError(f"{op}: block_size must be positive and halo >= 0", got=f"block_size={block}, halo={halo}")
    for size in x.shape[2:]:
        if isinstance(size, int) and size % block:
            raise ShapeError(f"{op}: spatial size {size} is not a multiple of block_size={block}", got=str(x),
                             hint="pad the feature map or pick a block size that divides H and W")
    _check_scale(op, attrs)
    return [x.with_shape((x.shape[0], dim, x.shape[2], x.shape[3]))]


def _halo_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, dim, heads = ins[0].shape[1], attrs["dim"], attrs["heads"]
    win = attrs["block_size"] + 2 * attrs["halo"]
    p = {"q.weight": ParamSpec((dim, c, 1, 1), linear_init(c))}
    if attrs["qkv_bias"]:
        p["q.bias"] = ParamSpec((dim,), linear_init(c))
    p["kv.weight"] = ParamSpec((2 * dim, c, 1, 1), linear_init(c))
    if attrs["qkv_bias"]:
        p["kv.bias"] = ParamSpec((2 * dim,), linear_init(c))
    rel = Init("trunc_normal", ((dim // heads) ** -0.5,))
    p["pos_embed.height_rel"] = ParamSpec((2 * win - 1, dim // heads), rel)
    p["pos_embed.width_rel"] = ParamSpec((2 * win - 1, dim // heads), rel)
    return p


def _halo_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    n, c, h, w = ins[0].shape
    dim, block, win = attrs["dim"], attrs["block_size"], attrs["block_size"] + 2 * attrs["halo"]
    pixels = bind_dim(n) * bind_dim(h) * bind_dim(w)
    blocks = pixels // (block * block)
    rel_macs = pixels * 2 * win * dim  # q . height_rel and q . width_rel
    return (_proj_cost(pixels, c, 3 * dim, attrs["qkv_bias"]) + Cost(rel_macs, 2 * rel_macs)
            + attention_cost(blocks, block * block, win * win, dim, attrs["heads"]))


def _halo_workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
    """q [N, dim, H, W] (and its blocked copy), kv [N, 2 dim, H, W] and its halo-padded copy, the
    key/value windows copied out per block [N, 2 dim, blocks, win^2], the height and width
    logits [N, heads, blocks, b^2, win] and their sum [N, heads, blocks, b^2, win^2], attention
    over it (three logit-sized buffers), and the output's permuted copy.  halo=100000 makes the
    windows and logits terabytes: refused here, before anything is allocated."""
    n, _, h, w = ins[0].shape
    dim, heads, b, halo = attrs["dim"], attrs["heads"], attrs["block_size"], attrs["halo"]
    win, item = b + 2 * halo, work_bytes(ins[0])
    blocks = (h // b) * (w // b)
    maps = n * dim * (2 * h * w + 2 * h * w + 2 * (h + 2 * halo) * (w + 2 * halo) + h * w)
    windows = 2 * n * dim * blocks * win * win
    logits = n * heads * blocks * b * b * (2 * win + 4 * win * win)
    return (maps + windows + logits) * item


HALO = OpDef(
    name="halo_attention", group="attention",
    attrs=(_HEADS, Attr("block_size", "int", 8, doc="query block size (`block` is a CDL keyword); must divide H and W",
                  domain=POSITIVE),
           Attr("halo", "int", 3, doc="extra context around each block (keys/values see block_size + 2*halo)",
                  domain=NON_NEGATIVE),
           Attr("dim", "int", None, doc="output channels (default: input channels)", domain=POSITIVE),
           Attr("qkv_bias", "bool", False, doc="bias on the q and kv projections"), _SCALE),
    infer=_halo_infer, params=_halo_params, cost=_halo_cost, normalize=_halo_normalize, workspace=_halo_workspace,
    doc="HaloNet blocked local self-attention on [N, C, H, W]: queries in block x block tiles attend to the "
        "(block + 2*halo)^2 neighbourhood of their tile (zero-padded at borders), plus relative position logits "
        "(height/width tables). Parameters as timm's HaloAttn (q, kv with per-head [k | v] channels, "
        "pos_embed.height_rel/width_rel) when dim is a multiple of 8.",
    example="halo_attention(heads=8, block_size=8, halo=3)",
    shape_rule="[N, C, H, W] -> [N, dim, H, W]; block_size divides H and W",
    prune=opaque("projections and heads inside the op: not analyzed"),
    example_inputs="x: f32[N, 64, 16, 16]",
)


# ---- tokens: patches, class token, positions ----------------------------------------------------
def _patch_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    op, x = "patch_embed", ins[0]
    expect_rank(op, x, 4, what="image [N, C, H, W]")
    _static(op, x, 1, "channel count")
    ph, pw = tuple_n(attrs["patch"], 2, "patch")
    if ph <= 0 or pw <= 0 or attrs["dim"] <= 0:
        raise CDLTypeError(f"{op}: dim and patch must be positive", got=f"dim={attrs['dim']}, patch={[ph, pw]}")
    for size, p in ((x.shape[2], ph), (x.shape[3], pw)):
        if isinstance(size, int) and size % p:
            raise ShapeError(f"{op}: image size {size} is not a multiple of the patch size {p}", got=str(x),
                             hint="pad or resize the image (torchvision's ViT requires divisibility too)")
    L = dim_mul(dim_floordiv(x.shape[2], ph), dim_floordiv(x.shape[3], pw))
    return [x.with_shape((x.shape[0], L, attrs["dim"]))]


def _patch_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, dim = ins[0].shape[1], attrs["dim"]
    ph, pw = tuple_n(attrs["patch"], 2)
    p = {"weight": ParamSpec((dim, c, ph, pw), linear_init(c * ph * pw))}
    if attrs["bias"]:
        p["bias"] = ParamSpec((dim,), linear_init(c * ph * pw))
    return p


def _patch_cost(attrs, ins, outs):
    ph, pw = tuple_n(attrs["patch"], 2)
    macs = outs[0].numel() * ins[0].shape[1] * ph * pw
    return Cost(macs, 2 * macs + (outs[0].numel() if attrs["bias"] else 0))


def _class_token_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    _tokens("class_token", x)
    if attrs["tokens"] <= 0:
        raise CDLTypeError("class_token: tokens must be positive", got=str(attrs["tokens"]))
    return [x.with_shape((x.shape[0], dim_add(x.shape[1], attrs["tokens"]), x.shape[2]))]


def _pos_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    c = _tokens("pos_embed", x)
    if attrs["kind"] == "learned":
        _static("pos_embed", x, 1, "sequence length for a learned table (kind=sinusoidal works for any L)")
    elif c % 2:
        raise ShapeError("pos_embed: a sinusoidal table needs an even channel count (sin/cos pairs)", got=str(x))
    return [x]


def _pos_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    if attrs["kind"] != "learned":
        return {}
    _, L, c = ins[0].shape
    return {"pos_embedding": ParamSpec((1, L, c), Init("normal", (0.0, attrs["std"])))}


def _layer_scale_shape(attrs: dict, x: TensorType) -> tuple[int, ...]:
    if attrs["layout"] == "first":
        expect_rank("layer_scale", x, *range(2, 9), what="[N, C, ...] input")
        return (_static("layer_scale", x, 1, "channel count (dim 1, layout=first)"),) + (1,) * (x.rank - 2)
    if x.rank < 1:
        raise ShapeError("layer_scale needs at least one dimension", got=str(x))
    return (_static("layer_scale", x, x.rank - 1, "channel count (last dim, layout=last)"),)


def _layer_scale_axis(attrs: dict, axis: int, x: TensorType) -> bool:
    """The axis layer_scale's gamma runs along: dim 1 (layout=first) or the last."""
    return axis == (1 if attrs["layout"] == "first" else x.rank - 1)


def _layer_scale_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    _layer_scale_shape(attrs, ins[0])
    return [ins[0]]


PATCH_EMBED = OpDef(
    name="patch_embed", group="attention",
    attrs=(Attr("dim", "int", doc="embedding width", domain=POSITIVE),
           Attr("patch", "ints", 16, doc="patch size (int or [h, w])", domain=POSITIVE),
           Attr("bias", "bool", True)),
    infer=_patch_infer, params=_patch_params, cost=_patch_cost,
    workspace=io_workspace(per_input=2, per_output=3),  # conv reorders, then the flattened and transposed copy
    doc="non-overlapping patches -> tokens: a conv with kernel = stride = patch, then flatten(2) and "
        "transpose(1, 2). Parameters `weight`, `bias` (a Conv2d's): name the node conv_proj to get "
        "torchvision ViT's keys.",
    example="patch_embed(768, 16) as conv_proj",
    shape_rule="[N, C, H, W] -> [N, (H/p)*(W/p), dim]",
    out_channels=OutChannels(axis=-1, params={"weight": 0, "bias": 0}),
    prune=PRUNE_RULE,
    example_inputs="x: f32[N, 3, 224, 224]",
)

CLASS_TOKEN = OpDef(
    name="class_token", group="attention",
    attrs=(Attr("tokens", "int", 1, doc="how many learned tokens to prepend", domain=POSITIVE),),
    infer=_class_token_infer, cost=zero_cost,
    params=lambda a, ins: {"class_token": ParamSpec((1, a["tokens"], ins[0].shape[2]), Init("zeros"))},
    doc="prepends a learned token (parameter `class_token` [1, 1, C], zero-initialized as in torchvision's "
        "ViT) to every sequence.",
    example="class_token",
    shape_rule="[N, L, C] -> [N, L+tokens, C]",
    prune=keep_channels(on_axis(2), {"class_token": 2}),
    example_inputs="x: f32[N, 196, 64]",
)

POS_EMBED = OpDef(
    name="pos_embed", group="attention",
    attrs=(Attr("kind", "sym", "learned", choices=("learned", "sinusoidal")),
           Attr("std", "float", 0.02, doc="init std of a learned table (torchvision ViT: 0.02)",
                domain=NON_NEGATIVE_REAL)),
    infer=_pos_infer, params=_pos_params,
    workspace=io_workspace(per_output=2),  # the sinusoidal table [L, C]: positions, frequencies, sin/cos pairs
    doc="adds position embeddings to tokens: learned (parameter `pos_embedding` [1, L, C], like "
        "torchvision ViT's encoder.pos_embedding) or the fixed sin/cos table of 'Attention Is All You Need' "
        "(computed in forward, no state).",
    example="pos_embed(learned)",
    shape_rule="out = in",
    prune=PRUNE_RULE,
    example_inputs="x: f32[N, 196, 64]",
)

LAYER_SCALE = OpDef(
    name="layer_scale", group="attention",
    attrs=(Attr("init", "float", 1e-6, doc="initial value of every scale"),
           Attr("layout", "sym", "last", choices=("last", "first"),
                doc="last: channels last, gamma [C]; first: [N, C, ...], gamma [C, 1, ...] (ConvNeXt)")),
    infer=_layer_scale_infer,
    params=lambda a, ins: {"layer_scale": ParamSpec(_layer_scale_shape(a, ins[0]), Init("const", (a["init"],)))},
    doc="per-channel learned scale (CaiT/ConvNeXt); parameter `layer_scale`, [C] or [C, 1, 1] as in "
        "torchvision's ConvNeXt block.",
    example="layer_scale(1e-6, layout=first)",
    shape_rule="out = in",
    prune=keep_channels(_layer_scale_axis, {"layer_scale": 0}),
)



OPS = [MHSA, PACKED_ATTENTION, CROSS, WINDOW, CONV_ATTENTION, HALO, PATCH_EMBED, CLASS_TOKEN, POS_EMBED, LAYER_SCALE]
