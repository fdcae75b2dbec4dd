"""Convolutions: conv1d/2d/3d (groups, depthwise, dilation, stride, padding
modes zeros/same/circular/reflect/replicate) and transposed convolution.

Lowered in backends/torch/lower_conv.py and backends/tvm/lower_conv.py; how pruning treats each op
is its ``prune=`` (PRUNE_RULE ops: convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.domains import NON_NEGATIVE, POSITIVE
from convdsl.ir.optable import (PRUNE_RULE, SPATIAL_EXAMPLE_INPUTS, Attr, Cost, Init, OpDef, OutChannels, ParamSpec,
                                check_positive, expect_rank, nbytes, tuple_n, work_bytes)
from convdsl.ir.types import Dim, TensorType, dim_add, dim_floordiv, dim_mul

PAD_MODES = ("zeros", "circular", "reflect", "replicate")
MAX_PHASE_WORK = 4.0  # a transposed conv's phase decomposition at most this many times its multiply-adds


def conv_padding(attrs: dict, spatial: list, nd: int) -> list[tuple[int, int]]:
    """Per spatial dim (before, after) padding.  'same' keeps ceil(in/stride)
    (TensorFlow's rule; for stride 1 this is PyTorch's padding='same')."""
    k = tuple_n(attrs["k"], nd, "k")
    s = tuple_n(attrs["stride"], nd, "stride")
    d = tuple_n(attrs["dilation"], nd, "dilation")
    pad = attrs["pad"]
    if pad == "valid":
        return [(0, 0)] * nd
    if pad == "same":
        out = []
        for i in range(nd):
            size = spatial[i]
            eff = d[i] * (k[i] - 1) + 1
            if isinstance(size, int):
                o = -(-size // s[i])
                total = max((o - 1) * s[i] + eff - size, 0)
            elif s[i] == 1:
                total = eff - 1
            else:
                raise ShapeError("pad=same with stride > 1 needs a static spatial size", got=str(size))
            out.append((total // 2, total - total // 2))
        return out
    if isinstance(pad, int):
        if pad < 0:
            raise CDLTypeError("pad must be >= 0", got=str(pad))
        return [(pad, pad)] * nd
    pad = tuple(pad)
    if len(pad) == nd:
        pairs = [(p, p) for p in pad]
    elif len(pad) == 2 * nd:  # (before0, after0, before1, after1, ...)
        pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(nd)]
    else:
        raise CDLTypeError(f"pad needs 1, {nd} or {2 * nd} values", got=str(list(pad)))
    if any(p < 0 for pr in pairs for p in pr):
        raise CDLTypeError("pad must be >= 0", got=str(list(pad)))
    return pairs


# The widest padding each mode can make from a dim of ``size`` (PyTorch's limits: reflect
# mirrors without repeating the edge, circular wraps around at most once); None: no limit.
PAD_LIMITS = {"reflect": lambda size: size - 1, "circular": lambda size: size}


def _check_pad_mode(op: str, mode: str, pad: int, size) -> None:
    limit = PAD_LIMITS.get(mode)
    if limit is None or not isinstance(size, int) or pad <= limit(size):
        return
    what = "smaller than" if mode == "reflect" else "at most"
    raise ShapeError(f"{op}: {mode} padding {pad} must be {what} the input size {size}",
                     expected=f"padding <= {limit(size)}", got=f"padding {pad} for a dim of size {size}",
                     hint=f"{mode} padding {'mirrors' if mode == 'reflect' else 'wraps around'} the input at most "
                          "once: pad less, or use pad_mode=zeros or replicate, which have no limit")


def conv_out_size(size: Dim, lo: int, hi: int, k: int, s: int, d: int) -> Dim:
    """Output size of a convolution along one dim: floor((in + lo + hi - d*(k-1) - 1) / s) + 1."""
    eff = d * (k - 1) + 1
    if isinstance(size, int):
        return (size + lo + hi - eff) // s + 1
    return dim_add(dim_floordiv(dim_add(size, lo + hi - eff), s), 1)


def make_conv(nd: int) -> OpDef:
    name = f"conv{nd}d"

    def normalize(attrs: dict, ins: list[TensorType]) -> dict:
        expect_rank(name, ins[0], nd + 2)
        cin = ins[0].shape[1]
        if not isinstance(cin, int):
            raise ShapeError(f"{name} needs a static channel count", got=str(ins[0]))
        if attrs["groups"] == "depthwise":
            attrs["groups"] = cin
        if attrs["out"] is None:
            attrs["out"] = cin
        return attrs

    def infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
        x = ins[0]
        cin, out, groups = x.shape[1], attrs["out"], attrs["groups"]
        k = tuple_n(attrs["k"], nd, "k")
        s = tuple_n(attrs["stride"], nd, "stride")
        d = tuple_n(attrs["dilation"], nd, "dilation")
        check_positive(name, "k", k)
        check_positive(name, "stride", s)
        check_positive(name, "dilation", d)
        if out <= 0 or groups <= 0:
            raise CDLTypeError(f"{name}: out channels and groups must be positive", got=f"out={out}, groups={groups}")
        if cin % groups or out % groups:
            raise ShapeError(f"{name}: groups={groups} must divide in channels ({cin}) and out channels ({out})",
                             expected=f"channels divisible by {groups}", got=f"in={cin}, out={out}")
        pads = conv_padding(attrs, list(x.shape[2:]), nd)
        for (lo, hi), size in zip(pads, x.shape[2:]):
            _check_pad_mode(name, attrs["pad_mode"], max(lo, hi), size)
        spatial = []
        for i in range(nd):
            size = x.shape[2 + i]
            o = conv_out_size(size, pads[i][0], pads[i][1], k[i], s[i], d[i])
            if isinstance(o, int) and o <= 0:
                raise ShapeError(f"{name}: input {x} is too small for kernel {k[i]} (dilation {d[i]}, padding {pads[i]})",
                                 got=str(x))
            spatial.append(o)
        return [TensorType((x.shape[0], out, *spatial), x.dtype)]

    def params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
        cin, out, groups = ins[0].shape[1], attrs["out"], attrs["groups"]
        k = tuple_n(attrs["k"], nd, "k")
        fan_in = cin // groups * math.prod(k)
        bound = 1.0 / math.sqrt(fan_in)
        p = {"weight": ParamSpec((out, cin // groups, *k), _init(attrs, bound))}
        if attrs["bias"]:
            p["bias"] = ParamSpec((out,), Init("uniform", (-bound, bound)))
        return _trainable(p, attrs)

    def cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
        cin, groups = ins[0].shape[1], attrs["groups"]
        k = tuple_n(attrs["k"], nd, "k")
        macs = outs[0].numel() * (cin // groups) * math.prod(k)
        return Cost(macs, 2 * macs + (outs[0].numel() if attrs["bias"] else 0))

    def workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
        """oneDNN (torch) and TVM reorder the input, output and weights to blocked layouts: twice
        the input and the output, once the weights; a padding mode other than zeros pads a copy
        of the input first; a dtype other than f32/bf16 takes PyTorch's slow path, whose im2col
        buffer holds N * C_in*prod(k) * prod(output spatial) values."""
        x, y = ins[0], outs[0]
        k = tuple_n(attrs["k"], nd, "k")
        item = work_bytes(x)
        ws = 2 * nbytes(x) + 2 * nbytes(y) + x.shape[1] // attrs["groups"] * y.shape[1] * math.prod(k) * item
        if attrs["pad_mode"] != "zeros":
            pads = conv_padding(attrs, list(x.shape[2:]), nd)
            ws += x.shape[0] * x.shape[1] * math.prod(s + lo + hi for s, (lo, hi) in zip(x.shape[2:], pads)) * item
        if x.dtype not in ("f32", "bf16"):
            ws += x.shape[0] * x.shape[1] * math.prod(k) * math.prod(y.shape[2:]) * item
        return ws

    return OpDef(
        name=name,
        group="convolution",
        attrs=(
            Attr("out", "int", None, doc="output channels (default: input channels)", domain=POSITIVE),
            Attr("k", "ints", 3, doc="kernel size", domain=POSITIVE),
            Attr("stride", "ints", 1, domain=POSITIVE),
            Attr("pad", "ints|sym", 0, choices=("same", "valid"), doc="int, per-dim list, or same/valid", domain=NON_NEGATIVE),
            Attr("dilation", "ints", 1, domain=POSITIVE),
            Attr("groups", "int|sym", 1, choices=("depthwise",), doc="int or depthwise (= in channels)", domain=POSITIVE),
            Attr("bias", "bool", True),
            Attr("pad_mode", "sym", "zeros", choices=PAD_MODES),
            Attr("init", "sym", "default", choices=("default", "orthogonal", "gabor", "zeros"),
                 doc="weight initializer"),
            Attr("trainable", "bool", True, doc="false: a fixed filter bank"),
        ),
        infer=infer,
        params=params,
        cost=cost,
        normalize=normalize,
        workspace=workspace,
        doc=f"{nd}-D convolution over [N, C, {', '.join('DHW'[3 - nd:])}]; in-channels inferred.",
        example=f"conv{nd}d(64, 3, stride=2, pad=1)" if nd != 1 else "conv1d(64, 5, pad=same)",
        example_inputs=SPATIAL_EXAMPLE_INPUTS[nd],
        shape_rule="out = floor((in + pad_lo + pad_hi - dilation*(k-1) - 1) / stride) + 1",
        out_channels=OutChannels(axis=1, params={"weight": 0, "bias": 0}),
        int8=f"qconv{nd}d",
        prune=PRUNE_RULE,
    )


def _init(attrs: dict, bound: float) -> Init:
    kind = attrs.get("init", "default")
    if kind == "orthogonal":
        return Init("orthogonal", (1.0,))
    if kind == "gabor":
        return Init("gabor", ())
    if kind == "zeros":
        return Init("zeros")
    return Init("uniform", (-bound, bound))


def _trainable(spec_map: dict[str, ParamSpec], attrs: dict) -> dict[str, ParamSpec]:
    if attrs.get("trainable", True):
        return spec_map
    return {k: ParamSpec(v.shape, v.init, v.dtype, v.buffer, False) for k, v in spec_map.items()}


def phase_taps(k, stride, dilation) -> tuple[int, ...]:
    """T per dim: the taps of the phase decomposition's conv, (k - 1) d // s + 1 (``phase_kernel``)."""
    return tuple((ki - 1) * di // si + 1 for ki, si, di in zip(k, stride, dilation))


def phase_kernel(w: np.ndarray, stride, dilation, groups: int) -> np.ndarray:
    """The conv kernel of a transposed conv's stride-phase (sub-pixel) decomposition.

    Per dim, output position Y = s q + r (before the crop) collects the taps j with j d = r + s m_j, from input
    q - m_j, so phase r is a stride-1 correlation of the input (padded by T - 1 on both sides) with the taps of
    phase r placed at T - 1 - m_j; one conv with O s^nd output channels computes every phase, ``phase_shuffle``
    interleaves them and a crop takes [pad, pad + out) (``phase_window``; backends/tvm/lower_conv.py).

    ``w``: the transposed conv's kernel [C, O/g, *k] (torch's layout).  Returns [O * prod(s), C/g, *T], output
    channels phase-major within each group, (g, r_1, ..., r_nd, o): 16 consecutive channels of one phase stay 16
    consecutive channels of the output, i.e. one vector of a blocked layout, where (g, o, r..) would make the
    interleave a gather of every s^nd-th channel.  Each phase's taps at T - 1 - m_j, zeros elsewhere."""
    c, og = w.shape[:2]
    k = w.shape[2:]
    t = phase_taps(k, stride, dilation)
    wg = w.reshape((groups, c // groups, og) + k)
    out = np.zeros((groups,) + tuple(stride) + (og, c // groups) + t, dtype=w.dtype)
    for taps in np.ndindex(*k):
        r = tuple(j * di % si for j, si, di in zip(taps, stride, dilation))
        u = tuple(ti - 1 - j * di // si for j, si, di, ti in zip(taps, stride, dilation, t))
        # [g, c/g, o/g] -> [g, o/g, c/g]
        out[(slice(None),) + r + (slice(None), slice(None)) + u] = wg[(Ellipsis,) + taps].transpose(0, 2, 1)
    return out.reshape((groups * og * int(np.prod(stride)), c // groups) + t)


def phase_shuffle(o: int, groups: int, stride, q) -> tuple[list[int], list[int], list[int]]:
    """How the phases of ``phase_kernel``'s conv (``o`` output channels, each phase ``q`` long per dim) are
    interleaved: reshape its [N, O s.., Q..] to the first list ([N, (g,) s.., O/g, Q..]; N as 0, "keep"), permute
    by the second ([N, (g,) O/g, Q_1, s_1, ..]), reshape to the third ([N, O, Q_1 s_1, ..])."""
    nd = len(stride)
    lead = [groups] if groups > 1 else []
    sd, od = 1 + len(lead), 1 + len(lead) + nd  # where s_1 and O/g are
    dims = [0, *range(1, sd), od] + [i for j in range(nd) for i in (od + 1 + j, sd + j)]
    return [0, *lead, *stride, o // groups, *q], dims, [0, o, *(qi * si for qi, si in zip(q, stride))]


def transposed_sizes(lengths, k, stride, pad, dilation, output_pad) -> list[int]:
    """A transposed conv's static output sizes, (n - 1) s - 2 pad + d (k - 1) + output_pad + 1 per dim."""
    return [(n - 1) * si - 2 * p + di * (ki - 1) + op + 1
            for n, si, p, di, ki, op in zip(lengths, stride, pad, dilation, k, output_pad)]


def of_a_point(lengths, pad, output_pad, dilation, groups: int) -> bool:
    """A transposed conv of a 1x1(x1) input with no pad, output_pad, dilation or groups (a GAN generator's first
    layer, a latent vector to a k x k map): each output position is one tap, so it is the matmul
    [N, C] x [C, O k^nd], where its phases' conv (k taps over the input padded by k - 1) would read padding in all
    but one of its k^nd products per output (DCGAN's 100 -> 512 x 4 x 4: 16x the work)."""
    return all(n == 1 for n in lengths) and groups == 1 and not any(pad) and not any(output_pad) \
        and all(d == 1 for d in dilation)


def phase_work_too_big(k, stride, dilation) -> bool:
    """Whether the phase decomposition (``phase_kernel``'s conv: s^nd T^nd taps per k^nd) would do more than
    ``MAX_PHASE_WORK`` times the transposed conv's multiply-adds."""
    return bool(np.prod([si * ti for si, ti in zip(stride, phase_taps(k, stride, dilation))])
                > MAX_PHASE_WORK * np.prod(k))


def int8_phase_refusal(lengths, k, stride, pad, dilation, output_pad) -> str | None:
    """Why a transposed conv over static spatial ``lengths`` does not run on int8 as the conv of its stride
    phases (passes/quantize.py's split, the QDQ importer's), or None."""
    _, short, _ = phase_window(lengths, k, stride, pad, dilation, output_pad)
    if any(short):
        return ("its output_pad reaches past the last position an input reaches: the phases would need zeros "
                "appended, and an int8 tensor's zero is its zero point")
    if phase_work_too_big(k, stride, dilation):
        return f"its stride-phase decomposition would do more than {MAX_PHASE_WORK:g}x its multiply-adds"
    return None


def phase_window(lengths, k, stride, pad, dilation, output_pad) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Where a transposed conv's output lies in the interleaved output of its phases (``phase_kernel``'s conv on
    an input of spatial ``lengths``, interleaved by ``phase_shuffle``), per dim: (q, each phase's length; short,
    the zeros to append past the last position an input reaches (an output_pad beyond it); (start, stop), the
    output's positions in the interleaved and appended [q s + short])."""
    t = phase_taps(k, stride, dilation)
    q = [n + ti - 1 for n, ti in zip(lengths, t)]
    out = transposed_sizes(lengths, k, stride, pad, dilation, output_pad)
    short = [max(p + n - qi * si, 0) for p, n, qi, si in zip(pad, out, q, stride)]
    return q, short, [(p, p + n) for p, n in zip(pad, out)]


def phase_convs(w: np.ndarray, lengths, stride, pad, dilation, output_pad,
                groups: int) -> tuple[list[np.ndarray], list[list[tuple[int, int]]], list[int]] | None:
    """A transposed conv as one stride-1 conv per output phase, each computing exactly its phase's positions:
    (the kernels [O, C/g, *T_r], each one's (before, after) padding, Q: the positions of every phase per dim), in
    phase order (r_1, ..., r_nd); concatenated along channels they are ``phase_shuffle``'s phase-major layout
    with groups 1, interleaved with no crop.  None where the phases differ in length (an output size not a
    multiple of the stride), where a phase has no tap, or where a window would start or end inside the input.

    Per dim, output Y = s i + r is position Y + pad = s (i + c) + r' of the uncropped decomposition (``phase_kernel``:
    r' = (r + pad) mod s, c = (r + pad) div s), which sums w[j] x[i + c - m_j] over the taps j d = r' + s m_j:
    a correlation with those taps at M - m_j (M the largest m_j, T = M + 1 taps) over the input padded by M - c
    before.  Unlike ``phase_kernel``'s one conv, no phase computes the positions of the crop or the zero taps of
    the others (k 3 / stride 2 / pad 1: 9 taps per 2 x 2 outputs instead of 16, over n x n positions instead of
    (n + 1)^2)."""
    k = w.shape[2:]
    c, og = w.shape[:2]
    out = transposed_sizes(lengths, k, stride, pad, dilation, output_pad)
    if any(m % si for m, si in zip(out, stride)):
        return None
    q = [m // si for m, si in zip(out, stride)]
    dims = []  # per dim, per output phase r: (its taps (j, m_j), T, before, after)
    for n, ki, si, p, di, qi in zip(lengths, k, stride, pad, dilation, q):
        phases = []
        for r in range(si):
            rp, shift = (r + p) % si, (r + p) // si
            taps = [(j, (j * di - rp) // si) for j in range(ki) if j * di % si == rp]
            if not taps:
                return None
            t = max(m for _, m in taps) + 1
            lo = t - 1 - shift
            hi = qi - 1 + t - n - lo
            if lo < 0 or hi < 0:
                return None
            phases.append((taps, t, lo, hi))
        dims.append(phases)
    wg = w.reshape((groups, c // groups, og) + tuple(k))
    kernels, pads = [], []
    for r in np.ndindex(*stride):
        ph = [dims[i][ri] for i, ri in enumerate(r)]
        t = tuple(p[1] for p in ph)
        ker = np.zeros((groups, og, c // groups) + t, dtype=w.dtype)
        for taps in itertools.product(*(p[0] for p in ph)):
            u = tuple(p[1] - 1 - m for p, (_, m) in zip(ph, taps))
            ker[(slice(None),) * 3 + u] = wg[(Ellipsis,) + tuple(j for j, _ in taps)].transpose(0, 2, 1)
        kernels.append(ker.reshape((groups * og, c // groups) + t))
        pads.append([(p[2], p[3]) for p in ph])
    return kernels, pads, q


def make_conv_transpose(nd: int) -> OpDef:
    name = f"conv_transpose{nd}d"

    def normalize(attrs: dict, ins: list[TensorType]) -> dict:
        expect_rank(name, ins[0], nd + 2)
        if not isinstance(ins[0].shape[1], int):
            raise ShapeError(f"{name} needs a static channel count", got=str(ins[0]))
        if attrs["out"] is None:
            attrs["out"] = ins[0].shape[1]
        return attrs

    def infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
        x = ins[0]
        cin, out, groups = x.shape[1], attrs["out"], attrs["groups"]
        k = tuple_n(attrs["k"], nd, "k")
        s = tuple_n(attrs["stride"], nd, "stride")
        d = tuple_n(attrs["dilation"], nd, "dilation")
        p = tuple_n(attrs["pad"], nd, "pad")
        op_ = tuple_n(attrs["output_pad"], nd, "output_pad")
        check_positive(name, "k", k)
        check_positive(name, "stride", s)
        check_positive(name, "dilation", d)
        if out <= 0 or groups <= 0 or cin % groups or out % groups:
            raise ShapeError(f"{name}: groups={groups} must divide in ({cin}) and out ({out}) channels")
        if any(o >= max(si, di) for o, si, di in zip(op_, s, d)):
            raise CDLTypeError(f"{name}: output_pad must be smaller than stride or dilation")
        spatial = []
        for i in range(nd):
            size = x.shape[2 + i]
            extra = -2 * p[i] + d[i] * (k[i] - 1) + op_[i] + 1
            o = (size - 1) * s[i] + extra if isinstance(size, int) else dim_add(dim_mul(dim_add(size, -1), s[i]), extra)
            if isinstance(o, int) and o <= 0:
                raise ShapeError(f"{name}: output would be empty", got=str(x))
            spatial.append(o)
        return [TensorType((x.shape[0], out, *spatial), x.dtype)]

    def params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
        cin, out, groups = ins[0].shape[1], attrs["out"], attrs["groups"]
        k = tuple_n(attrs["k"], nd, "k")
        # PyTorch computes fan_in from weight.size(1) = out/groups for transposed convs
        fan_in = out // groups * math.prod(k)
        bound = 1.0 / math.sqrt(fan_in)
        p = {"weight": ParamSpec((cin, out // groups, *k), Init("uniform", (-bound, bound)))}
        if attrs["bias"]:
            p["bias"] = ParamSpec((out,), Init("uniform", (-bound, bound)))
        return p

    def cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
        cin, out, groups = ins[0].shape[1], attrs["out"], attrs["groups"]
        k = tuple_n(attrs["k"], nd, "k")
        macs = ins[0].numel() * (out // groups) * math.prod(k)
        return Cost(macs, 2 * macs)

    def workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
        """Layout reorders as for conv (twice input and output, once weights), plus PyTorch's
        col2im buffer of one sample: C_out*prod(k) * prod(input spatial) values."""
        x, y = ins[0], outs[0]
        k = tuple_n(attrs["k"], nd, "k")
        item = work_bytes(x)
        weights = x.shape[1] * (attrs["out"] // attrs["groups"]) * math.prod(k) * item
        return 2 * nbytes(x) + 2 * nbytes(y) + weights + attrs["out"] * math.prod(k) * math.prod(x.shape[2:]) * item

    return OpDef(
        name=name,
        group="convolution",
        attrs=(
            Attr("out", "int", None, domain=POSITIVE),
            Attr("k", "ints", 2, domain=POSITIVE),
            Attr("stride", "ints", 1, domain=POSITIVE),
            Attr("pad", "ints", 0, domain=NON_NEGATIVE),
            Attr("output_pad", "ints", 0, doc="smaller than stride or dilation", domain=NON_NEGATIVE),
            Attr("dilation", "ints", 1, domain=POSITIVE),
            Attr("groups", "int", 1, domain=POSITIVE),
            Attr("bias", "bool", True),
        ),
        infer=infer,
        params=params,
        cost=cost,
        normalize=normalize,
        workspace=workspace,
        doc=f"{nd}-D transposed convolution (fractionally strided); in-channels inferred.",
        example=f"conv_transpose{nd}d(64, 2, stride=2)",
        example_inputs=SPATIAL_EXAMPLE_INPUTS[nd],
        shape_rule="out = (in - 1)*stride - 2*pad + dilation*(k-1) + output_pad + 1",
        out_channels=OutChannels(axis=1, params={"weight": 1, "bias": 0}),  # weight [in, out/groups, k...]
        prune=PRUNE_RULE,
    )


OPS = [make_conv(1), make_conv(2), make_conv(3), make_conv_transpose(1), make_conv_transpose(2), make_conv_transpose(3)]
