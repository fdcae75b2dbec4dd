"""State-space sequence mixers over u[N, C, L]: S4D (diagonal LTI SSM), SGConv
(structured global convolution) and a Mamba-style selective scan.

Each keeps the channel count and length.  ``bidirectional=true`` always means
y = F(u) + flip(F(flip(u))) with the *same* parameters for both directions
(skip terms included, so D counts twice).

Lowered in backends/torch/lower_ssm.py and backends/tvm/lower_ssm.py; how pruning treats each op
is its ``prune=`` (PRUNE_RULE ops: convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

import math

from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.domains import Domain, NON_NEGATIVE, POSITIVE, POSITIVE_REAL
from convdsl.ir.optable import Attr, Cost, Init, OpDef, ParamSpec, keep_channels, on_axis, work_bytes
from convdsl.ir.types import TensorType, bind_dim
from convdsl.ir.ops.fft import long_conv_cost, long_conv_workspace, seq_dims

MAX_SCALES = 20  # SGConv's full kernel is kernel_dim * 2**(n_scales-1) taps


def _length_or(x: TensorType, default: int) -> int:
    L = x.shape[2]
    return L if isinstance(L, int) else default


def _dt_range(op: str, attrs: dict) -> None:
    lo, hi = attrs["dt_min"], attrs["dt_max"]
    if not 0.0 < lo <= hi:
        raise CDLTypeError(f"{op}: step sizes need 0 < dt_min <= dt_max", got=f"dt_min={lo}, dt_max={hi}")


# ---- S4D -------------------------------------------------------------------------------
def _s4d_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    seq_dims("s4d", ins[0])
    n = attrs["state"]
    if n < 2 or n % 2:
        raise CDLTypeError("s4d: state must be even and >= 2 (complex states come in conjugate pairs)",
                           expected="an even number such as 64", got=str(n))
    _dt_range("s4d", attrs)
    return [ins[0]]


def _s4d_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, _ = seq_dims("s4d", ins[0])
    m = attrs["state"] // 2
    return {
        # S4D-Lin: A_n = -1/2 + i*pi*n, n = 0..state/2-1
        "log_A_real": ParamSpec((c, m), Init("const", (math.log(0.5),))),
        "A_imag": ParamSpec((c, m), Init("arange", (0.0, math.pi))),
        # complex C ~ CN(0, 1) like torch.randn(cfloat): real and imag each std sqrt(1/2)
        "C": ParamSpec((c, m, 2), Init("normal", (0.0, math.sqrt(0.5)))),
        "D": ParamSpec((c,), Init("normal", (0.0, 1.0))),
        # log step size uniform in [log dt_min, log dt_max]
        "log_dt": ParamSpec((c,), Init("uniform", (math.log(attrs["dt_min"]), math.log(attrs["dt_max"])))),
    }


def _s4d_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    x = ins[0]
    c, L = bind_dim(x.shape[1]), _length_or(x, 1)
    kernel = Cost(c * attrs["state"] // 2 * L * 4, c * attrs["state"] // 2 * L * 20)  # Vandermonde: exp + C-mult
    conv = long_conv_cost(x, L, extra_per_elem=2)
    return kernel + (conv + conv if attrs["bidirectional"] else conv)


# ---- SGConv ------------------------------------------------------------------------------
def _sg_normalize(attrs: dict, ins: list[TensorType]) -> dict:
    _, L = seq_dims("sgconv", ins[0])
    if attrs["kernel_dim"] <= 0:
        raise CDLTypeError("sgconv: kernel_dim must be positive", got=str(attrs["kernel_dim"]))
    if attrs["n_scales"] is None:
        if not isinstance(L, int):
            raise ShapeError("sgconv needs n_scales when the sequence length is symbolic", got=str(ins[0]),
                             hint="the kernel covers kernel_dim * 2**(n_scales-1) steps, e.g. sgconv(n_scales=5)")
        # SGConv: enough scales that the concatenated kernel covers L
        attrs["n_scales"] = 1 + max(0, math.ceil(math.log2(L / attrs["kernel_dim"])))
    return attrs


def _sg_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    seq_dims("sgconv", ins[0])
    s = attrs["n_scales"]
    if not 1 <= s <= MAX_SCALES:
        raise CDLTypeError(f"sgconv: n_scales must be in 1..{MAX_SCALES}", got=str(s))
    if attrs["decay"] <= 0:
        raise CDLTypeError("sgconv: decay (the weight ratio between scales) must be positive",
                           got=str(attrs["decay"]))
    return [ins[0]]


def sgconv_length(attrs: dict) -> int:
    """Taps of the full concatenated SGConv kernel: d, d, 2d, 4d, ... -> d * 2**(S-1)."""
    return attrs["kernel_dim"] * 2 ** (attrs["n_scales"] - 1)


def sgconv_upsampling(taps: int, factor: int, interp: str) -> "np.ndarray":
    """The [taps, taps * factor] matrix M with piece @ M = F.interpolate(piece, scale_factor=factor,
    mode=interp) (align_corners=false) for a piece of ``taps`` samples, in float64: SGConv's upsampling
    as a product, which the ONNX export writes and its importer checks.  Linear: the source position
    of output x is max((x + 1/2) / factor - 1/2, 0), split between its two neighbours; nearest:
    floor(x / factor)."""
    import numpy as np

    out = taps * factor
    m = np.zeros((taps, out))
    x = np.arange(out)
    if interp == "nearest":
        m[np.minimum(x // factor, taps - 1), x] = 1.0
        return m
    src = np.maximum((x + 0.5) / factor - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, taps - 1)
    w1 = src - i0
    np.add.at(m, (i0, x), 1.0 - w1)
    np.add.at(m, (i1, x), w1)
    return m


def _sg_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, _ = seq_dims("sgconv", ins[0])
    return {
        "kernel": ParamSpec((attrs["n_scales"], c, attrs["kernel_dim"]), Init("normal", (0.0, 1.0))),  # SGConv: randn
        "D": ParamSpec((c,), Init("normal", (0.0, 1.0))),
    }


def _sg_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    x = ins[0]
    L = _length_or(x, sgconv_length(attrs))
    kernel = Cost(0, 4 * bind_dim(x.shape[1]) * sgconv_length(attrs))  # interpolate, scale, normalize
    conv = long_conv_cost(x, L, extra_per_elem=2)
    return kernel + (conv + conv if attrs["bidirectional"] else conv)


# ---- selective scan (Mamba) ---------------------------------------------------------------
def softplus_inv(y: float) -> float:
    """x with softplus(x) = y."""
    return y + math.log(-math.expm1(-y))


def _ss_normalize(attrs: dict, ins: list[TensorType]) -> dict:
    c, _ = seq_dims("selective_scan", ins[0])
    if attrs["dt_rank"] == "auto":
        attrs["dt_rank"] = math.ceil(c / 16)  # Mamba's default
    return attrs


MAX_STATE = 65536  # A_log's initial values are a Python tuple of `state` logs: bounded before they are made


def _ss_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    seq_dims("selective_scan", ins[0])
    for name in ("state", "dt_rank"):
        if attrs[name] <= 0:
            raise CDLTypeError(f"selective_scan: {name} must be positive", got=str(attrs[name]))
    if attrs["state"] > MAX_STATE:
        raise CDLTypeError(f"selective_scan: state is a size per channel (Mamba: 16), at most {MAX_STATE:,}",
                           got=str(attrs["state"]))
    if attrs["d_conv"] < 0:
        raise CDLTypeError("selective_scan: d_conv counts conv taps (0 for no conv)", got=str(attrs["d_conv"]))
    _dt_range("selective_scan", attrs)
    return [ins[0]]


def _ss_params(attrs: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
    c, _ = seq_dims("selective_scan", ins[0])
    n, r, k = attrs["state"], attrs["dt_rank"], attrs["d_conv"]
    p = {}
    if k:
        bound = 1.0 / math.sqrt(k)  # nn.Conv1d default for a depthwise conv
        p["conv1d.weight"] = ParamSpec((c, 1, k), Init("uniform", (-bound, bound)))
        p["conv1d.bias"] = ParamSpec((c,), Init("uniform", (-bound, bound)))
    bound = 1.0 / math.sqrt(c)  # nn.Linear default
    p["x_proj.weight"] = ParamSpec((r + 2 * n, c), Init("uniform", (-bound, bound)))
    p["dt_proj.weight"] = ParamSpec((c, r), Init("uniform", (-r ** -0.5, r ** -0.5)))  # Mamba dt_init="random"
    # softplus(bias) spread over [dt_min, dt_max]: uniform in softplus^-1 space, which for dt <= 0.1 is
    # log-uniform dt (Mamba's draw) to within 5%
    p["dt_proj.bias"] = ParamSpec((c,), Init("uniform", (softplus_inv(attrs["dt_min"]), softplus_inv(attrs["dt_max"]))))
    # S4D-Real: A = -(1, 2, ..., state) for every channel, stored as log(-A)
    p["A_log"] = ParamSpec((c, n), Init("const", (tuple(math.log(i) for i in range(1, n + 1)),)))
    p["D"] = ParamSpec((c,), Init("ones"))
    return p


def _ss_cost(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> Cost:
    x = ins[0]
    n, r, k = attrs["state"], attrs["dt_rank"], attrs["d_conv"]
    c = bind_dim(x.shape[1])
    tokens = bind_dim(x.shape[0]) * bind_dim(x.shape[2])
    macs = tokens * c * (k + (r + 2 * n) + r)  # conv, x_proj, dt_proj
    scan = tokens * c * n  # one state update per (token, channel, state)
    macs += scan  # y = C . h
    one = Cost(macs, 2 * macs + 6 * scan + 6 * tokens * c)  # exp(dt A), dt*B*u, h update; softplus, D*u
    return one + one if attrs["bidirectional"] else one


def _bidirectional_workspace(attrs: dict, x: TensorType) -> int:
    """The flipped input, the backward pass's output flipped back and the sum."""
    return 3 * math.prod(x.shape) * work_bytes(x) if attrs["bidirectional"] else 0


def _s4d_workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
    """The kernel K[C, L] from a Vandermonde product computed 2,048 steps at a time ([C, state/2,
    2048] complex powers and their exponent), the pieces and their concatenation, then an FFT
    long convolution with a kernel of L taps."""
    x = ins[0]
    c, L, item = x.shape[1], x.shape[2], work_bytes(x)
    vandermonde = 3 * c * (attrs["state"] // 2) * min(L, 2048) * 2 * item
    return vandermonde + 3 * c * L * item + long_conv_workspace(x, L) + _bidirectional_workspace(attrs, x)


def _sg_workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
    """The multi-scale kernel (kernel_dim * 2**(S-1) taps per channel: the upsampled pieces, their
    concatenation and its normalized copy), cut or padded to L, then an FFT long convolution."""
    x = ins[0]
    c, L, item = x.shape[1], x.shape[2], work_bytes(x)
    return (3 * c * sgconv_length(attrs) + 2 * c * L) * item + long_conv_workspace(x, L) \
        + _bidirectional_workspace(attrs, x)


def _ss_workspace(attrs: dict, ins: list[TensorType], outs: list[TensorType]) -> int:
    """The scan's inputs (conv and SiLU, dt, dt*u: [N, C, L] each; B, C and dt_low: [N, L, rank +
    2*state]) and its state per step: dt*A, its running sums and decays [N, C, L, state] (three
    of them), and per chunk of 8 steps the pairwise decays [N, C, 8, 8, state]; TVM holds one
    state [N, C, state] per step and the same inputs."""
    x = ins[0]
    n, c, L = x.shape
    s, item = attrs["state"], work_bytes(x)
    inputs = 6 * n * c * (L + attrs["d_conv"]) + 2 * n * L * (attrs["dt_rank"] + 2 * s)
    state = 3 * n * c * L * s + 3 * n * c * 64 * s
    return (inputs + state) * item + _bidirectional_workspace(attrs, x)


_DT_MIN = Attr("dt_min", "float", 0.001, doc="smallest initial step size", domain=POSITIVE_REAL)
_DT_MAX = Attr("dt_max", "float", 0.1, doc="largest initial step size (>= dt_min)", domain=POSITIVE_REAL)
_BIDIR = Attr("bidirectional", "bool", False, doc="y = F(u) + flip(F(flip(u))), shared parameters")

OPS = [
    OpDef(
        name="s4d", group="state space",
        attrs=(
            Attr("state", "int", 64, doc="state size N (even: N/2 complex conjugate pairs)", domain=POSITIVE),
            _DT_MIN, _DT_MAX,
            _BIDIR,
        ),
        infer=_s4d_infer, params=_s4d_params, cost=_s4d_cost, workspace=_s4d_workspace,
        doc="S4D diagonal LTI SSM (Gu et al. 2022), one per channel: x' = A x + B u, y = 2 Re(C x) + D u with "
            "N/2 complex modes A = -exp(log_A_real) + i A_imag, B = 1 (absorbed into C), step dt = exp(log_dt); "
            "ZOH discretization dA = exp(dt A), dB = (dA - 1)/A. Computed as the convolution with "
            "K[c, l] = 2 Re(sum_n C_n dB_n dA_n^l) (a Vandermonde product, rebuilt from the parameters "
            "each call) applied by FFT, + D u; the step-by-step recurrence gives the same output. "
            "Init S4D-Lin: log_A_real = log(1/2), A_imag = pi*n, C[C, N/2, 2] (real, imag) normal std "
            "sqrt(1/2), D normal(0, 1), log_dt uniform in [log dt_min, log dt_max].",
        example="s4d(state=64)",
        shape_rule="[N, C, L] -> [N, C, L]",
        prune=keep_channels(on_axis(1), {"log_A_real": 0, "A_imag": 0, "C": 0, "D": 0, "log_dt": 0}),
        example_inputs="x: f32[N, 64, 256]",
    ),
    OpDef(
        name="sgconv", group="state space",
        attrs=(
            Attr("kernel_dim", "int", 64, doc="taps of each sub-kernel", domain=POSITIVE),
            Attr("n_scales", "int", None, doc="number of sub-kernels (default: enough to cover L)",
                 domain=Domain(f"[1, {MAX_SCALES}]", name=f"in 1..{MAX_SCALES}")),
            Attr("decay", "float", 0.5, doc="weight ratio between consecutive scales (SGConv: decaying)",
                 domain=Domain("(0, 1]")),
            Attr("interp", "sym", "linear", choices=("linear", "nearest"), doc="upsampling of sub-kernels"),
            _BIDIR,
        ),
        infer=_sg_infer, params=_sg_params, cost=_sg_cost, normalize=_sg_normalize, workspace=_sg_workspace,
        doc="SGConv structured global convolution (Li et al. 2022): sub-kernel i of kernel[S, C, d] is "
            "upsampled by 2**max(0, i-1) (F.interpolate, align_corners=false) and weighted by decay**i; "
            "the pieces are concatenated (d * 2**(S-1) taps), divided by their L2 norm per channel, then "
            "cut or zero-padded to L and applied as a causal FFT convolution, + D u. "
            "Init as SGConv: kernel and D normal(0, 1). (SGConv divides by the norm at initialization; "
            "here the norm is recomputed each call, so the kernel always has unit norm.)",
        example="sgconv(kernel_dim=64)",
        shape_rule="[N, C, L] -> [N, C, L]",
        prune=keep_channels(on_axis(1), {"kernel": 1, "D": 0}),
        example_inputs="x: f32[N, 64, 256]",
    ),
    OpDef(
        name="selective_scan", group="state space",
        attrs=(
            Attr("state", "int", 16, doc="state size N per channel", domain=POSITIVE),
            Attr("dt_rank", "int|sym", "auto", choices=("auto",), doc="rank of the dt projection; auto = ceil(C/16)",
                 domain=POSITIVE),
            Attr("d_conv", "int", 0, doc="taps of a causal depthwise conv + SiLU before the scan (0: none)",
                 domain=NON_NEGATIVE),
            _BIDIR,
            _DT_MIN, _DT_MAX,
        ),
        infer=_ss_infer, params=_ss_params, cost=_ss_cost, normalize=_ss_normalize, workspace=_ss_workspace,
        doc="Mamba selective SSM (Gu & Dao 2023) on u[N, C, L]: (optional u = silu(causal depthwise conv1d(u))); "
            "x_proj gives (dt_low, B, C) per step from u; dt = softplus(dt_proj(dt_low)) per channel; "
            "A = -exp(A_log); h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t; y_t = C_t . h_t + D u_t. "
            "The gate (y * silu(z)) and the in/out projections belong to the block, written in CDL. "
            "Params as Mamba's: conv1d.weight/bias, x_proj.weight, dt_proj.weight/bias, A_log, D. "
            "Init: A_log = log(1..N) (S4D-Real), D = 1, dt_proj.weight uniform(+-dt_rank^-0.5), "
            "dt_proj.bias uniform in [softplus^-1(dt_min), softplus^-1(dt_max)], linear/conv as PyTorch.",
        example="selective_scan(state=16, d_conv=4)",
        shape_rule="[N, C, L] -> [N, C, L]",
        prune=keep_channels(on_axis(1), {"conv1d.weight": 0, "conv1d.bias": 0, "dt_proj.weight": 0,
                                                  "dt_proj.bias": 0, "A_log": 0, "D": 0, "x_proj.weight": 1}),
                                                  example_inputs="x: f32[N, 64, 256]",
    ),
]
