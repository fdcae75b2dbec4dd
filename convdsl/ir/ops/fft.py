"""FFT mixing: global filter (GFNet), adaptive frequency filter (AFFNet) over
(H, W), and FFT long convolution over a sequence (FlashFFTConv / Hyena).

All transforms are real FFTs.  Cost counts ~5 n log2 n flops per transform of
n points (the usual radix-2 estimate) plus 6 flops per complex product.

Lowered in backends/torch/lower_fft.py and backends/tvm/lower_fft.py; how pruning treats each op
is its ``prune=`` (PRUNE_RULE ops: convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

import math

from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.domains import NON_NEGATIVE_REAL, POSITIVE
from convdsl.ir.optable import (Attr, Cost, Init, OpDef, ParamSpec, expect_rank, keep_channels, nbytes, on_axis, opaque,
                                work_bytes)
from convdsl.ir.types import Dim, TensorType, bind_dim

LAYOUTS = ("nchw", "nhwc")


def fft_flops(n: int) -> int:
    """~5 n log2 n flops for one FFT of n points (0 for n <= 1)."""
    return int(5 * n * math.log2(n)) if n > 1 else 0


def static_dim(op: str, x: TensorType, dim: int, what: str) -> int:
    d = x.shape[dim]
    if not isinstance(d, int):
        raise ShapeError(f"{op} needs a static {what}", expected=f"an integer {what}", got=str(x))
    return d


# ---- 2-D filters over an image [N, C, H, W] or [N, H, W, C] -------------------------
def image_dims(op: str, attrs: dict, x: TensorType) -> tuple[Dim, Dim, Dim]:
    """(C, H, W) of a rank-4 input in the op's layout."""
    expect_rank(op, x, 4)
    if attrs["layout"] == "nchw":
        return x.shape[1], x.shape[2], x.shape[3]
    return x.shape[3], x.shape[1], x.shape[2]


def _channel_axis(attrs: dict, axis: int, x: TensorType) -> bool:
    """Channels are dim 1 (nchw) or 3 (nhwc)."""
    return axis == (1 if attrs["layout"] == "nchw" else 3)


def filter_size(attrs: dict, x: TensorType) -> tuple[int, int]:
    """The (H, W) a global filter is built for: the input's, or h/w when the input is symbolic."""
    _, H, W = image_dims("global_filter", attrs, x)
    out = []
    for name, size in (("h", H), ("w", W)):
        given = attrs[name]
        if given is not None and given <= 0:
            raise CDLTypeError(f"global_filter: {name} must be positive", got=str(given))
        if isinstance(size, int):
            if given is not None and given != size:
                raise ShapeError(f"global_filter: {name}={given} does not match the input",
                                 expected=f"{name}={size} (or leave it out)", got=str(x))
            out.append(size)
        elif given is None:
            raise ShapeError(f"global_filter needs a static {'height' if name == 'h' else 'width'} "
                             f"(the filter has one weight per frequency)", got=str(x),
                             hint=f"give the size the filter is for, e.g. global_filter({name}=14)")
        else:
            out.append(given)
    return out[0], out[1]


def _gf_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    c, _, _ = image_dims("global_filter", attrs, x)
    if not isinstance(c, int):
        raise ShapeError("global_filter needs a static channel count", got=str(x))
    filter_size(attrs, x)
    return [x]


def _gf_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, _, _ = image_dims("global_filter", attrs, ins[0])
    h, w = filter_size(attrs, ins[0])
    # GFNet: torch.randn(h, w//2+1, dim, 2) * 0.02; stored channel-first here
    return {"complex_weight": ParamSpec((c, h, w // 2 + 1, 2), Init("normal", (0.0, 0.02)))}


def _planes(op: str, attrs: dict, x: TensorType) -> int:
    """N * C: the number of (H, W) planes transformed (a symbolic batch counts as 1)."""
    c, _, _ = image_dims(op, attrs, x)
    return bind_dim(x.shape[0]) * bind_dim(c)


def _gf_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    h, w = filter_size(attrs, ins[0])
    planes = _planes("global_filter", attrs, ins[0])
    bins = planes * h * (w // 2 + 1)
    return Cost(4 * bins, planes * 2 * fft_flops(h * w) + 6 * bins)


def _aff_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    c, _, _ = image_dims("adaptive_filter", attrs, x)
    if not isinstance(c, int):
        raise ShapeError("adaptive_filter needs a static channel count", got=str(x))
    blocks, factor = attrs["blocks"], attrs["hidden_factor"]
    if blocks <= 0 or factor <= 0:
        raise CDLTypeError("adaptive_filter: blocks and hidden_factor must be positive",
                           got=f"blocks={blocks}, hidden_factor={factor}")
    if c % blocks:
        raise ShapeError(f"adaptive_filter: blocks={blocks} must divide the channels ({c})",
                         expected=f"channels divisible by {blocks}", got=str(x))
    if attrs["sparsity"] < 0:
        raise CDLTypeError("adaptive_filter: sparsity (the soft-shrink threshold) must be >= 0",
                           got=str(attrs["sparsity"]))
    return [x]


def _aff_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, _, _ = image_dims("adaptive_filter", attrs, ins[0])
    k = attrs["blocks"]
    bs = c // k
    hid = bs * attrs["hidden_factor"]
    init = Init("normal", (0.0, 0.02))  # AFFNet/AFNO: 0.02 * randn
    # [2, ...]: index 0 multiplies/adds to the real part, 1 to the imaginary part
    return {
        "w1": ParamSpec((2, k, bs, hid), init),
        "b1": ParamSpec((2, k, hid), init),
        "w2": ParamSpec((2, k, hid, bs), init),
        "b2": ParamSpec((2, k, bs), init),
    }


def _aff_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    x = ins[0]
    c, h, w = (bind_dim(d) for d in image_dims("adaptive_filter", attrs, x))
    bins = bind_dim(x.shape[0]) * h * (w // 2 + 1)  # frequencies per channel, whole batch
    hid = c * attrs["hidden_factor"]
    # two block-diagonal complex matmuls (4 real MACs per complex MAC), then M * X
    macs = bins * 4 * 2 * (c // attrs["blocks"]) * hid + 4 * bins * c
    return Cost(macs, bind_dim(x.shape[0]) * c * 2 * fft_flops(h * w) + 2 * macs + 6 * bins * c)


# ---- 1-D long convolution over a sequence [N, C, L] ---------------------------------------
def seq_dims(op: str, x: TensorType) -> tuple[int, Dim]:
    """(C, L) of a [N, C, L] sequence; C must be static."""
    expect_rank(op, x, 3, what="sequence [N, C, L]")
    return static_dim(op, x, 1, "channel count"), x.shape[2]


def _fc_normalize(attrs: dict, ins: list[TensorType]) -> dict:
    _, L = seq_dims("fft_conv", ins[0])
    if attrs["kernel_len"] is None:
        if not isinstance(L, int):
            raise ShapeError("fft_conv needs kernel_len when the sequence length is symbolic",
                             got=str(ins[0]), hint="e.g. fft_conv(kernel_len=1024)")
        attrs["kernel_len"] = L
    return attrs


def _fc_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    _, L = seq_dims("fft_conv", x)
    k = attrs["kernel_len"]
    if k <= 0:
        raise CDLTypeError("fft_conv: kernel_len must be positive", got=str(k))
    if attrs["causal"] and isinstance(L, int) and k > L:
        raise ShapeError(f"fft_conv: a causal kernel of {k} taps is longer than the sequence ({L}); "
                         f"taps past {L - 1} never reach the output",
                         expected=f"kernel_len <= {L}", got=str(k))
    return [x]


def _fc_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, _ = seq_dims("fft_conv", ins[0])
    k = attrs["kernel_len"]
    bound = 1.0 / math.sqrt(k)  # nn.Conv1d's default for a depthwise kernel of k taps
    p = {"kernel": ParamSpec((c, k), Init("uniform", (-bound, bound)))}
    if attrs["bias"]:
        p["bias"] = ParamSpec((c,), Init("uniform", (-bound, bound)))
    if attrs["skip"]:
        p["D"] = ParamSpec((c,), Init("normal", (0.0, 1.0)))  # Hyena/S4: torch.randn(d_model)
    return p


def long_conv_cost(x: TensorType, kernel_len: int, extra_per_elem: int = 0) -> Cost:
    """One FFT convolution of every (batch, channel) row with a per-channel kernel,
    zero-padded to n = L + K (the kernel's transform counted once per channel)."""
    c = bind_dim(x.shape[1])
    L = x.shape[2] if isinstance(x.shape[2], int) else kernel_len  # a symbolic length: assume K
    rows = bind_dim(x.shape[0]) * c
    n = L + kernel_len
    bins = rows * (n // 2 + 1)
    return Cost(4 * bins, (2 * rows + c) * fft_flops(n) + 6 * bins + extra_per_elem * rows * L)


def _fc_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    return long_conv_cost(ins[0], attrs["kernel_len"], int(attrs["bias"]) + 2 * int(attrs["skip"]))


# ---- working memory -----------------------------------------------------------------------
def dft_matrix(n: int) -> int:
    """Elements of the largest dense DFT matrix TVM's lowering (backends/tvm/dft.py) builds for an
    n-point transform: n x n when n <= 128 or n has no divisor in 2..min(128, sqrt(n)) (a prime
    n of 100,003 points is a 10**10-element matrix), else that of n // n1 (Cooley-Tukey)."""
    while n > 128:
        n1 = next((d for d in range(min(128, math.isqrt(n)), 1, -1) if n % d == 0), None)
        if n1 is None:
            return n * n
        n //= n1
    return n * n


def dft_workspace(*sizes: int) -> int:
    """TVM's DFT constants for transforms of these sizes: each matrix is computed in float64 at
    compile time (index, phase, cos and sin arrays) and kept as float32 re/im pairs."""
    return sum(40 * dft_matrix(n) for n in sizes)


def fft_len_bound(n: int) -> int:
    """At least the transform length either backend pads n points to: TVM uses n, torch the next
    2^a 3^b 5^c, never more than 25% above n."""
    return n + n // 4 + 8


def long_conv_workspace(x: TensorType, kernel_len: int) -> int:
    """One FFT long convolution of u[N, C, L] with kernel[C, K], both padded to n >= L + K: the
    padded input, its spectrum, the product and the inverse (torch), or the real and imaginary
    parts of each DFT stage (TVM): five n-point rows per (sample, channel), three per channel
    for the kernel, plus TVM's DFT constants."""
    rows, c, L = x.shape[0] * x.shape[1], x.shape[1], x.shape[2]
    n = fft_len_bound(L + kernel_len)
    return (5 * rows + 3 * c) * n * work_bytes(x) + dft_workspace(L + kernel_len)


def _spectral_workspace(op: str, copies: int):
    def workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
        """rfft2 of the input: the (N, C) planes of H x (W//2+1) complex bins, ``copies`` times
        (spectrum, products, the inverse's input), a float copy of the input and the output
        before a layout change, plus TVM's DFT constants over H and W."""
        x = ins[0]
        c, h, w = image_dims(op, attrs, x)
        bins = x.shape[0] * c * h * (w // 2 + 1)
        return copies * bins * 2 * work_bytes(x) + 2 * nbytes(x) + dft_workspace(h, w)
    return workspace


_LAYOUT = Attr("layout", "sym", "nchw", choices=LAYOUTS, doc="nchw: [N, C, H, W]; nhwc: [N, H, W, C]")

OPS = [
    OpDef(
        name="global_filter", group="fft mixing",
        attrs=(
            Attr("h", "int", None, doc="height the filter is for (default: the input's; needed if symbolic)",
                 domain=POSITIVE),
            Attr("w", "int", None, doc="width W the filter is for (the weight has W//2+1 frequency columns)",
                 domain=POSITIVE),
            _LAYOUT,
        ),
        infer=_gf_infer, params=_gf_params, cost=_gf_cost, workspace=_spectral_workspace("global_filter", 4),
        doc="GFNet global filter (Rao et al. 2021): y = irfft2(rfft2(x) * W, s=(H, W)) over (H, W), "
            "both transforms norm='ortho', with a learned complex weight per channel and frequency, "
            "stored as real/imag pairs complex_weight[C, H, W//2+1, 2] (init normal std 0.02, as GFNet). "
            "Equivalently a circular convolution of each channel with an H x W kernel. "
            "GFNet's own weight [H, W//2+1, C, 2] loads after permute(2, 0, 1, 3).",
        example="global_filter()",
        shape_rule="[N, C, H, W] -> [N, C, H, W] (nhwc: [N, H, W, C] -> same)",
        prune=keep_channels(_channel_axis, {"complex_weight": 0}),
    ),
    OpDef(
        name="adaptive_filter", group="fft mixing",
        attrs=(
            Attr("blocks", "int", 8, doc="channel groups of the block-diagonal frequency MLP", domain=POSITIVE),
            Attr("hidden_factor", "int", 1, doc="hidden width of the MLP per block, as a multiple of C/blocks",
                 domain=POSITIVE),
            Attr("sparsity", "float", 0.01, doc="soft-shrink threshold on the produced filter", domain=NON_NEGATIVE_REAL),
            Attr("slope", "float", 0.1, doc="negative slope of the MLP's leaky ReLU"),
            Attr("residual", "bool", True, doc="add the input to the output (as AFFNet's mixer does)"),
            _LAYOUT,
        ),
        infer=_aff_infer, params=_aff_params, cost=_aff_cost, workspace=_spectral_workspace("adaptive_filter", 8),
        doc="AFFNet adaptive frequency filter (Huang et al. 2023), the AFF token mixer: X = rfft2(x, "
            "norm='ortho'); a per-frequency complex MLP over channels, block-diagonal in `blocks` groups "
            "(grouped 1x1 convs on the spectrum), makes a filter from X: "
            "M = softshrink(W2 lrelu(W1 X + b1) + b2, sparsity), where the complex matmuls use "
            "w[0] + i w[1] and the leaky ReLU acts on real and imaginary parts separately; "
            "y = irfft2(M * X, s=(H, W), norm='ortho') (+ x if residual). Params w1[2, blocks, C/blocks, hid], "
            "b1[2, blocks, hid], w2[2, blocks, hid, C/blocks], b2[2, blocks, C/blocks] with "
            "hid = C/blocks * hidden_factor, all normal std 0.02 (names and layout as AFFNet's AFNO2D_channelfirst).",
        example="adaptive_filter(blocks=8)",
        shape_rule="[N, C, H, W] -> [N, C, H, W]; blocks divides C",
        prune=opaque("its frequency MLP is block-diagonal over channel groups"),
    ),
    OpDef(
        name="fft_conv", group="fft mixing",
        attrs=(
            Attr("kernel_len", "int", None, doc="taps per channel (default: the sequence length)", domain=POSITIVE),
            Attr("causal", "bool", True, doc="true: y[t] = sum_j k[j] u[t-j]; false: kernel centered"),
            Attr("bias", "bool", True, doc="add a learned per-channel bias"),
            Attr("skip", "bool", False, doc="add D * u (the Hyena/S4 skip term, param D[C])"),
        ),
        infer=_fc_infer, params=_fc_params, cost=_fc_cost, normalize=_fc_normalize,
        workspace=lambda attrs, ins, outs: long_conv_workspace(ins[0], attrs["kernel_len"]),
        doc="FFT long convolution (FlashFFTConv semantics): each channel of u[N, C, L] is convolved with "
            "its own kernel[C, K]: both are zero-padded to L + K (2L when K = L), multiplied as rfft "
            "spectra and transformed back, so nothing wraps around. causal=true keeps outputs 0..L-1: "
            "y[t] = sum_j kernel[j] u[t-j]. causal=false centers the kernel: "
            "y[t] = sum_j kernel[j] u[t - j + K//2] (zeros outside 0..L-1). Then + bias[C], + D[C] * u. "
            "kernel and bias init uniform(+-1/sqrt(K)) as a depthwise nn.Conv1d; D normal(0, 1).",
        example="fft_conv(causal=true)",
        shape_rule="[N, C, L] -> [N, C, L]",
        prune=keep_channels(on_axis(1), {"kernel": 0, "bias": 0, "D": 0}),
        example_inputs="x: f32[N, 64, 256]",
    ),
]
