"""One-input pipe stages for random programs, valid by construction.

Each generator takes a ``Draw``, the input's *kind* and shape, and returns a
``Step``: the CDL text of the stage (``conv2d(8, 3, stride=2, pad=same)``),
the output kind and shape computed here (independently of the op table, so a
disagreement is a finding), and optionally an *equivalent spelling* (``alt``)
that must compute the same function with the same weights, e.g.
``pad([1, 1], mode=reflect) | conv1d(8, 3)`` for ``conv1d(8, 3, pad=1,
pad_mode=reflect)``.  A generator returns None when the input does not suit it.

Kinds of tensors (the batch dim is always the symbol ``N``):

    vec [N, F]   seq [N, C, L]   tok [N, L, C]   img [N, C, H, W]
    nhwc [N, H, W, C]   vol [N, C, D, H, W]

Hyper-parameters are drawn with the simplest option first, so shrinking
turns ``conv2d(12, [3, 5], stride=2, dilation=2, pad=same, pad_mode=circular)``
into ``conv2d(4, 1)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from convdsl.ir.optable import format_value
from convdsl.verify.draws import Draw

Shape = tuple  # ("N", int, ...)
MAX_NUMEL = 3072  # per sample: keeps every program fast on a CPU
SPATIAL = {"seq": 1, "img": 2, "vol": 3}  # channels-first kinds and their spatial rank
RANK = {"vec": 2, "seq": 3, "tok": 3, "img": 4, "nhwc": 4, "vol": 5}
WIDTHS = (4, 8, 2, 6, 12, 16, 3)


@dataclass(frozen=True)
class Step:
    text: str
    kind: str
    shape: Shape
    alt: Optional[str] = None
    ops: tuple[str, ...] = ()


StepFn = Callable[[Draw, str, Shape], Optional[Step]]


def numel(shape: Shape) -> int:
    return math.prod(d for d in shape[1:])


def fits(shape: Shape) -> bool:
    return all(isinstance(d, int) and d > 0 for d in shape[1:]) and numel(shape) <= MAX_NUMEL


lit = format_value  # a CDL literal


def call(op: str, *pos, **kw) -> str:
    """``op(pos..., k=v...)``, leaving out keywords whose value is None."""
    pos = list(pos)
    while pos and pos[-1] is None:
        pos.pop()
    parts = [lit(p) for p in pos] + [f"{k}={lit(v) if not isinstance(v, Word) else v}" for k, v in kw.items()
                                     if v is not None]
    return f"{op}({', '.join(parts)})" if parts else op


class Word(str):
    """A bare word argument (pad=same, mode=bilinear)."""


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---- elementwise ------------------------------------------------------------------
def activation(d: Draw, kind: str, shape: Shape) -> Step:
    i = d.int(0, 16)
    simple = ["relu", "sigmoid", "tanh", "silu", "gelu", "relu6", "hardswish", "hardsigmoid", "neg", "identity",
              "erf"]
    if i < len(simple):
        op = simple[i]
        alt = {"relu": "leaky_relu(slope=0.0)", "identity": "dropout(0.3)"}.get(op)
        return Step(op, kind, shape, alt, (op,))
    if i == 11:
        return Step("gelu(approximate=tanh)", kind, shape, None, ("gelu",))
    if i == 12:
        slope = d.pick([0.01, 0.2, -0.5, 1.5])
        return Step(call("leaky_relu", slope), kind, shape, None, ("leaky_relu",))
    if i == 13:
        shared = d.flag()
        return Step(call("prelu", shared=shared or None), kind, shape, None, ("prelu",))
    if i == 14:
        p = d.pick([0.1, 0.5])
        return Step(call("dropout", p), kind, shape, "identity", ("dropout",))
    if i == 15:
        p = d.pick([0.1, 0.3])
        return Step(call("drop_path", p, mode=Word(d.pick(["row", "batch"]))), kind, shape, "identity", ("drop_path",))
    dim = d.int(-len(shape), len(shape) - 1)
    return Step(call("softmax", dim=dim), kind, shape, None, ("softmax",))


def glu(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    dims = [i for i in range(1, len(shape)) if shape[i] % 2 == 0]
    if not dims:
        return None
    dim = d.pick(dims)
    out = list(shape)
    out[dim] //= 2
    return Step(call("glu", dim=dim), kind, tuple(out), call("glu", dim=dim - len(shape)), ("glu",))


# ---- convolution ------------------------------------------------------------------
def _same_pads(size: int, k: int, s: int, dil: int) -> tuple[int, int]:
    eff = dil * (k - 1) + 1
    o = -(-size // s)
    total = max((o - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def conv(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    nd = SPATIAL.get(kind)
    if nd is None:
        return None
    cin, spatial = shape[1], list(shape[2:])
    out = d.pick([cin, *WIDTHS])
    per_dim = nd > 1 and d.flag(20)
    ks = [d.pick([3, 1, 2, 5]) for _ in range(nd)] if per_dim else [d.pick([3, 1, 2, 5])] * nd
    stride = d.pick([1, 2, 3])
    dil = d.pick([1, 1, 2])
    pad_kind = d.pick(["int", "same", "valid", "list"])
    if pad_kind == "int":
        p = d.int(0, 2)
        pads = [(p, p)] * nd
        pad_arg = p
    elif pad_kind == "same":
        pads = [_same_pads(sz, k, stride, dil) for sz, k in zip(spatial, ks)]
        pad_arg = Word("same")
    elif pad_kind == "valid":
        pads, pad_arg = [(0, 0)] * nd, Word("valid")
    else:
        pairs = d.flag()
        flat = [d.int(0, 2) for _ in range(2 * nd if pairs else nd)]
        pads = [(flat[2 * i], flat[2 * i + 1]) for i in range(nd)] if pairs else [(p, p) for p in flat]
        pad_arg = flat
    mode = d.pick(["zeros", "zeros", "circular", "reflect", "replicate"])
    # the op table's limits (PyTorch's): reflect pads < size, circular pads <= size (wraps at most once)
    if mode == "reflect" and any(max(lo, hi) >= sz for (lo, hi), sz in zip(pads, spatial)):
        mode = "zeros"
    if mode == "circular" and any(max(lo, hi) > sz for (lo, hi), sz in zip(pads, spatial)):
        mode = "zeros"
    sizes = []
    for (lo, hi), sz, k in zip(pads, spatial, ks):
        eff = dil * (k - 1) + 1
        if sz + lo + hi - eff < 0:
            return None
        sizes.append((sz + lo + hi - eff) // stride + 1)
    common = [g for g in divisors(math.gcd(cin, out))]
    groups = d.pick([1, *common[1:], *(["depthwise"] if out % cin == 0 else [])])
    g_arg = Word("depthwise") if groups == "depthwise" else (groups if groups != 1 else None)
    g_alt = cin if groups == "depthwise" else g_arg
    bias = d.flag(80)
    k_arg = ks if per_dim else ks[0]
    o_shape = (shape[0], out, *sizes)
    if not fits(o_shape):
        return None
    common_kw = dict(stride=stride if stride != 1 else None, dilation=dil if dil != 1 else None,
                     bias=None if bias else False)
    op = f"conv{nd}d"
    text = call(op, out, k_arg, pad=pad_arg if pad_arg not in (0,) else None, groups=g_arg,
                pad_mode=Word(mode) if mode != "zeros" else None, **common_kw)
    # twin: explicit pad op, then an unpadded conv with groups spelled as a number
    flat_pairs = [p for pr in pads for p in pr]
    unpadded = call(op, out, k_arg, groups=g_alt, **common_kw)  # the pad op knows the same four modes
    alt = (call("pad", flat_pairs, mode=Word(mode) if mode != "zeros" else None) + " | " + unpadded
           if any(flat_pairs) else unpadded)
    step = Step(text, kind, o_shape, alt, (op, "pad") if any(flat_pairs) else (op,))
    return with_batchnorm(d, step)


def with_batchnorm(d: Draw, step: Step) -> Step:
    """Sometimes a batchnorm right after a conv or linear: what fold_bn folds."""
    if not d.flag(35) or step.kind not in ("img", "seq", "vol", "vec"):
        return step
    alt = None if step.alt is None else step.alt + " | batchnorm"
    return Step(step.text + " | batchnorm", step.kind, step.shape, alt, (*step.ops, "batchnorm"))


def conv_transpose(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    nd = SPATIAL.get(kind)
    if nd is None:
        return None
    cin, spatial = shape[1], list(shape[2:])
    out = d.pick([cin, *WIDTHS])
    k = d.pick([2, 3, 1, 4])  # 4: DCGAN's up-convs (stride 2, pad 1)
    stride = d.pick([1, 2])
    dil = d.pick([1, 2])
    pad = d.int(0, 1)
    opad = d.int(0, max(stride, dil) - 1)
    sizes = [(sz - 1) * stride - 2 * pad + dil * (k - 1) + opad + 1 for sz in spatial]
    if min(sizes) < 1:
        return None
    groups = d.pick(divisors(math.gcd(cin, out)))
    o_shape = (shape[0], out, *sizes)
    if not fits(o_shape):
        return None
    op = f"conv_transpose{nd}d"
    text = call(op, out, k, stride=stride if stride != 1 else None, pad=pad or None, output_pad=opad or None,
                dilation=dil if dil != 1 else None, groups=groups if groups != 1 else None,
                bias=None if d.flag(80) else False)
    return with_batchnorm(d, Step(text, kind, o_shape, None, (op,)))


# ---- normalization ----------------------------------------------------------------
def norm(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    i = d.int(0, 4)
    eps = d.pick([None, 1e-3])
    if i == 0 and kind in ("vec", "seq", "img", "vol", "tok"):
        nd = {2: 1, 3: 1, 4: 2, 5: 3}[len(shape)]
        alt = call(f"batchnorm{nd}d", eps=eps) if len(shape) > 2 else None  # batchnorm1d refuses [N, C]
        return Step(call("batchnorm", eps=eps), kind, shape, alt, ("batchnorm",))
    if i == 1 and kind in ("seq", "img", "vol"):
        g = d.pick(divisors(shape[1]))
        return Step(call("groupnorm", g, eps=eps, affine=None if d.flag(70) else False), kind, shape, None,
                    ("groupnorm",))
    if i == 2 and kind in SPATIAL and math.prod(shape[2:]) > 1:  # the op table refuses one spatial element
        nd = SPATIAL[kind]
        return Step(call(f"instancenorm{nd}d", affine=d.flag() or None, eps=eps), kind, shape, None,
                    (f"instancenorm{nd}d",))
    if kind == "img" and i in (3, 4):
        return Step(call("layernorm2d", eps=eps), kind, shape,
                    f"permute([0, 2, 3, 1]) | {call('layernorm', eps=eps)} | permute([0, 3, 1, 2])",
                    ("layernorm2d",))
    if kind in ("tok", "vec", "nhwc", "seq"):
        dims = d.pick([1, 2]) if kind in ("tok", "nhwc", "seq") else 1
        return Step(call("layernorm", dims=dims if dims != 1 else None, eps=eps,
                         bias=None if d.flag(80) else False), kind, shape, None, ("layernorm",))
    return None


# ---- pooling and resampling -------------------------------------------------------
def _pool_out(size: int, k: int, s: int, p: int, dil: int, ceil: bool) -> int:
    eff = dil * (k - 1) + 1
    out = (size + 2 * p - eff + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    nd = SPATIAL.get(kind)
    if nd is None:
        return None
    spatial = list(shape[2:])
    which = d.int(0, 3)
    if which == 2:
        out = d.pick([1, 2, 3])
        op = f"adaptive_{d.pick(['avg', 'max'])}pool{nd}d"
        return Step(call(op, out if out != 1 else None), kind, (*shape[:2], *[out] * nd), None, (op,))
    if which == 3:
        op = d.pick(["global_avgpool", "global_maxpool"])
        keep = d.flag(70)
        dims = list(range(2, 2 + nd))
        red = "mean" if op == "global_avgpool" else "amax"
        if keep:
            return Step(op, kind, (*shape[:2], *[1] * nd), call(red, dims, keepdim=True), (op,))
        return Step(call(op, keepdim=False), "vec", shape[:2], call(red, dims), (op,))
    is_max = which == 0
    k = d.pick([2, 3, 1])
    s = d.pick([None, 1, 2])
    stride = k if s is None else s
    p = d.int(0, k // 2)
    dil = d.pick([1, 2]) if is_max else 1
    ceil = d.flag(30)
    eff = dil * (k - 1) + 1
    if any(sz + 2 * p - eff < 0 for sz in spatial):
        return None
    if not is_max and nd == 3 and any(sz < k for sz in spatial):
        return None
    sizes = [_pool_out(sz, k, stride, p, dil, ceil) for sz in spatial]
    if min(sizes) < 1:
        return None
    op = f"{'max' if is_max else 'avg'}pool{nd}d"
    extra = dict(stride=s, pad=p or None, ceil_mode=ceil or None)
    if is_max:
        extra["dilation"] = dil if dil != 1 else None
    else:
        extra["count_include_pad"] = None if d.flag(70) else False
    text = call(op, k, **extra)
    alt = call(op, k, **{**extra, "stride": stride}) if s is None else None
    return Step(text, kind, (*shape[:2], *sizes), alt, (op,))


def upsample(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    nd = SPATIAL.get(kind)
    if nd is None:
        return None
    spatial = list(shape[2:])
    mode = d.pick(["nearest", {1: "linear", 2: "bilinear", 3: "trilinear"}[nd], *(["bicubic"] if nd == 2 else [])])
    use_size = d.flag(30)
    if use_size:
        size = [d.int(1, 2 * sz + 1) for sz in spatial]
        arg = dict(size=size if nd > 1 else size[0])
        out, alt = size, None
    else:
        scale = d.pick([2, 3, 1.5])
        out = [int(math.floor(sz * scale)) for sz in spatial]
        arg = dict(scale=scale)
        alt = call("upsample", size=out, mode=Word(mode) if mode != "nearest" else None) if isinstance(scale, int) \
            and mode == "nearest" else None
    align = mode != "nearest" and d.flag(30)
    o_shape = (*shape[:2], *out)
    if min(out) < 1 or not fits(o_shape):
        return None
    text = call("upsample", **arg, mode=Word(mode) if mode != "nearest" else None, align_corners=align or None)
    return Step(text, kind, o_shape, alt, ("upsample",))


# ---- shape ------------------------------------------------------------------------
def pad(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    nd = SPATIAL.get(kind)
    if nd is None:
        return None
    spatial = list(shape[2:])
    pairs = [(d.int(0, 2), d.int(0, 2)) for _ in range(nd)]
    mode = d.pick(["zeros", "reflect", "replicate", "circular"])
    if mode == "reflect" and any(max(p) >= sz for p, sz in zip(pairs, spatial)):
        mode = "zeros"
    if mode == "circular" and any(max(p) > sz for p, sz in zip(pairs, spatial)):
        mode = "zeros"
    value = d.pick([None, 1.5]) if mode == "zeros" else None
    o_shape = (*shape[:2], *[sz + lo + hi for sz, (lo, hi) in zip(spatial, pairs)])
    if not fits(o_shape):
        return None
    text = call("pad", [p for pr in pairs for p in pr], mode=Word(mode) if mode != "zeros" else None, value=value)
    return Step(text, kind, o_shape, None, ("pad",))


def flip_rot(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    if kind == "img" and d.flag():
        k = d.pick([1, 2, 3, -1])
        o_shape = (*shape[:2], shape[3], shape[2]) if k % 2 else shape
        return Step(call("rot90", k), kind, o_shape, "flip([2, 3])" if k == 2 else None, ("rot90",))
    dims = d.pick([-1, [1], list(range(1, len(shape)))])
    return Step(call("flip", dims if dims != -1 else None), kind, shape, None, ("flip",))


def pixel_shuffle(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    if kind != "img":
        return None
    n, c, h, w = shape
    if c % 4 == 0 and d.flag():
        return Step("pixel_shuffle(2)", kind, (n, c // 4, 2 * h, 2 * w), None, ("pixel_shuffle",))
    if h % 2 == 0 and w % 2 == 0 and fits((n, 4 * c, h // 2, w // 2)):
        return Step("pixel_unshuffle(2)", kind, (n, 4 * c, h // 2, w // 2), None, ("pixel_unshuffle",))
    return None


def transition(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    """Steps that change the kind of tensor."""
    n = shape[0]
    i = d.int(0, 3)
    if kind == "img":
        _, c, h, w = shape
        if i == 0:
            return Step("flatten(2)", "seq", (n, c, h * w), call("reshape", [0, c, -1]), ("flatten",))
        if i == 1:
            return Step("permute([0, 2, 3, 1])", "nhwc", (n, h, w, c), None, ("permute",))
        if i == 2:
            ps = [p for p in (1, 2, 3) if h % p == 0 and w % p == 0]
            p, dim = d.pick(ps), d.pick([8, 4, 6])
            return Step(call("patch_embed", dim, p), "tok", (n, (h // p) * (w // p), dim), None, ("patch_embed",))
        if d.flag():
            return Step("global_avgpool | squeeze([2, 3])", "vec", (n, c), "global_avgpool(keepdim=false)",
                        ("global_avgpool", "squeeze"))
        return Step("flatten", "vec", (n, c * h * w), call("reshape", [0, -1]), ("flatten",))
    if kind == "nhwc":
        _, h, w, c = shape
        return Step("permute([0, 3, 1, 2])", "img", (n, c, h, w), None, ("permute",))
    if kind == "seq":
        _, c, L = shape
        if i <= 1:
            return Step("transpose(1, 2)", "tok", (n, L, c), "permute([0, 2, 1])", ("transpose",))
        if i == 2:
            return Step("unsqueeze(2)", "img", (n, c, 1, L), "unsqueeze(-2)", ("unsqueeze",))
        return Step(call("mean", 2), "vec", (n, c), call("global_avgpool", keepdim=False), ("mean",))
    if kind == "tok":
        _, L, c = shape
        if i <= 1:
            return Step("transpose(1, 2)", "seq", (n, c, L), "permute([0, 2, 1])", ("transpose",))
        if i == 2:
            idx = d.int(-L, L - 1)
            return Step(call("select", idx), "vec", (n, c), None, ("select",))
        return Step(call("mean", 1), "vec", (n, c), None, ("mean",))
    if kind == "vec":
        _, f = shape
        if i <= 1:
            return Step("unsqueeze(1)", "seq", (n, 1, f), call("reshape", [0, 1, f]), ("unsqueeze",))
        a = d.pick([x for x in divisors(f)])
        return Step(call("reshape", [0, a, -1]), "tok", (n, a, f // a), call("reshape", [0, a, f // a]),
                    ("reshape",))
    if kind == "vol":
        _, c, dd, h, w = shape
        return Step(call("flatten", 2, 3), "img", (n, c, dd * h, w), call("reshape", [0, 0, -1, w]), ("flatten",))
    return None


def reduce(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    """mean / amax / vector_norm over some dims, keeping them (so the kind stays)."""
    dims = sorted({d.int(1, len(shape) - 1) for _ in range(d.int(1, 2))})
    op = d.pick(["mean", "amax", "vector_norm"])
    o_shape = tuple(1 if i in dims else s for i, s in enumerate(shape))
    arg = dims[0] if len(dims) == 1 else dims
    text = call(op, arg, keepdim=True)
    return Step(text, kind, o_shape, call(op, [x - len(shape) for x in dims], keepdim=True), (op,))


# ---- linear, attention ------------------------------------------------------------
def linear(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    if kind not in ("vec", "tok", "nhwc", "seq"):
        return None
    out = d.pick([shape[-1], *WIDTHS])
    o_shape = (*shape[:-1], out)
    return with_batchnorm(d, Step(call("linear", out, bias=None if d.flag(80) else False), kind, o_shape, None,
                                  ("linear",)))


def tokens(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    if kind != "tok":
        return None
    n, L, c = shape
    i = d.int(0, 4)
    if i == 0:
        heads = d.pick(divisors(c))
        dim = d.pick([None, *[w for w in WIDTHS if w % heads == 0]])
        width = dim or c
        mask = d.flag(30)
        rel = d.flag(30)
        max_len = d.pick([None, L + 2]) if rel else None
        kw = dict(dim=dim, mask=Word("causal") if mask else None, rel_pos=rel or None, max_len=max_len,
                  qkv_bias=None if d.flag(80) else False, proj_bias=None if d.flag(80) else False)
        text = call("mhsa", heads, **kw)
        alt = call("mhsa", heads, **kw, scale=(width // heads) ** -0.5)
        return Step(text, kind, (n, L, width), alt, ("mhsa",))
    if i == 1:
        t = d.pick([1, 2])
        return Step(call("class_token", tokens=t if t != 1 else None), kind, (n, L + t, c), None, ("class_token",))
    if i == 2:
        sin = c % 2 == 0 and d.flag()
        return Step(call("pos_embed", Word("sinusoidal") if sin else None), kind, shape, None, ("pos_embed",))
    if i == 3:
        return Step(call("layer_scale", d.pick([0.5, 1e-6])), kind, shape, None, ("layer_scale",))
    return linear(d, kind, shape)


def image_attention(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    if kind == "nhwc":
        n, h, w, c = shape
        heads = d.pick(divisors(c))
        win = d.pick([2, 3, [2, 3]])
        wl = win if isinstance(win, list) else [win, win]
        shift = d.pick([0, *range(1, min(wl))]) if min(wl) > 1 else 0
        v2 = d.pick([False, True])  # SwinV2's cosine attention and continuous position bias
        return Step(call("window_attention", heads, window=win, shift=shift or None, v2=True if v2 else None), kind,
                    shape, None, ("window_attention",))
    if kind != "img":
        return None
    n, c, h, w = shape
    i = d.int(0, 2)
    if i == 0:
        heads = d.pick(divisors(c))
        k = d.pick([3, 1])
        skv = d.pick([2, 1])
        return Step(call("conv_attention", heads, k=k if k != 3 else None, stride_kv=skv if skv != 2 else None),
                    kind, shape, None, ("conv_attention",))
    if i == 1:
        blocks = [b for b in divisors(math.gcd(h, w))]
        b = d.pick(blocks)
        dim = d.pick([None, 8, 4])
        heads = d.pick(divisors(dim or c))
        halo = d.int(0, 2)
        return Step(call("halo_attention", heads, block_size=b, halo=halo, dim=dim), kind, (n, dim or c, h, w),
                    None, ("halo_attention",))
    return Step(call("layer_scale", d.pick([0.5, 2.0]), layout=Word("first")), kind, shape, None, ("layer_scale",))


# ---- fft mixing, state space ------------------------------------------------------
def spectral(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    if kind == "img" or kind == "nhwc":
        if d.flag() or kind == "nhwc":
            return Step(call("global_filter", layout=Word("nhwc") if kind == "nhwc" else None), kind, shape, None,
                        ("global_filter",))
        c = shape[1]
        blocks = d.pick(divisors(c))
        return Step(call("adaptive_filter", blocks=blocks, hidden_factor=d.pick([None, 2]),
                         residual=None if d.flag() else False, sparsity=d.pick([None, 0.0])),
                    kind, shape, None, ("adaptive_filter",))
    if kind != "seq":
        return None
    L = shape[2]
    i = d.int(0, 3)
    bidir = d.flag(30) or None
    if i == 0:
        causal = d.flag(70)
        k = d.pick([None, 1, 2, 3, 2 * L]) if not causal else d.pick([None, *range(1, L + 1)])
        return Step(call("fft_conv", kernel_len=k, causal=None if causal else False, bias=None if d.flag() else False,
                         skip=d.flag() or None), kind, shape, None, ("fft_conv",))
    if i == 1:
        return Step(call("s4d", state=d.pick([2, 4, 8]), bidirectional=bidir), kind, shape, None, ("s4d",))
    if i == 2:
        return Step(call("selective_scan", state=d.pick([2, 1, 4]), d_conv=d.pick([None, 2, 4]),
                         dt_rank=d.pick([None, 1, 2]), bidirectional=bidir), kind, shape, None, ("selective_scan",))
    return Step(call("sgconv", kernel_dim=d.pick([2, 4, 3]), decay=d.pick([None, 0.7]),
                     interp=d.pick([None, Word("nearest")]), bidirectional=bidir), kind, shape, None, ("sgconv",))


def index_select(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    """Positions gathered along one dim that is not the batch: a permutation, a subset or repeats, or a run with
    one step (which backends take as a slice)."""
    dims = [i for i in range(1, len(shape)) if shape[i] > 1]
    if not dims:
        return None
    dim = d.pick(dims)
    n = shape[dim]
    if d.flag():
        index = list(range(d.int(0, n - 1), n, d.int(1, 2)))[:d.int(1, 4)]
    else:
        index = [d.int(-n, n - 1) for _ in range(d.int(1, 4))]
    out = list(shape)
    out[dim] = len(index)
    alt = call("index_select", [i % n for i in index], dim=dim - len(shape))  # the same, counted from the ends
    return Step(call("index_select", index, dim=dim), kind, tuple(out), alt, ("index_select",))


def take(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    """An index table along one dim that is not the batch: a buffer, all zeros as initialized (every
    position reads position 0); rank 1, so the kind keeps its rank (rank-2 tables: tests/ir/ops)."""
    dims = list(range(1, len(shape)))
    if not dims:
        return None
    dim = d.pick(dims)
    out = list(shape)
    out[dim] = d.int(1, 4)
    return Step(call("take", [out[dim]], dim=dim), kind, tuple(out), None, ("take",))


def fold_batch(d: Draw, kind: str, shape: Shape) -> Optional[Step]:
    """Windows of dim 1 folded into the batch and back (windowed attention's pattern), a softmax
    over each window between: -1 and a symbolic size (``4 * N``, ``N``) spell the same reshapes."""
    if len(shape) < 3 or not isinstance(shape[1], int):
        return None
    ks = [k for k in divisors(shape[1]) if k > 1]
    if not ks:
        return None
    k, rest = d.pick(ks), [lit(x) for x in shape[2:]]
    inner = ", ".join([str(shape[1] // k), *rest])
    text = f"reshape([-1, {inner}]) | softmax(1) | reshape([N, {', '.join([str(shape[1]), *rest])}])"
    alt = f"reshape([{k} * N, {inner}]) | softmax(1) | reshape([-1, {', '.join([str(shape[1]), *rest])}])"
    return Step(text, kind, shape, alt, ("reshape", "softmax"))


# The menu, simplest first (shrinking moves towards the start).
STEPS: list[tuple[str, StepFn]] = [
    ("activation", activation),
    ("conv", conv),
    ("norm", norm),
    ("pool", pool),
    ("linear", linear),
    ("transition", transition),
    ("tokens", tokens),
    ("spectral", spectral),
    ("upsample", upsample),
    ("pad", pad),
    ("conv_transpose", conv_transpose),
    ("flip", flip_rot),
    ("pixel_shuffle", pixel_shuffle),
    ("glu", glu),
    ("reduce", reduce),
    ("image_attention", image_attention),
    ("index_select", index_select),
    ("take", take),
    ("fold_batch", fold_batch),
]


def draw_step(d: Draw, kind: str, shape: Shape, menu: Sequence[tuple[str, StepFn]] = STEPS) -> Step:
    """One stage valid for (kind, shape); falls back to an activation."""
    for _ in range(6):
        _, fn = d.pick(menu)
        step = fn(d, kind, shape)
        if step is not None and fits(step.shape):
            return step
    return activation(d, kind, shape)
