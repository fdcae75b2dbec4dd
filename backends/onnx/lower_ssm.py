"""ONNX exports of the state-space ops (see export.py for the entry format).

- s4d, sgconv (LTI): the long-convolution form.  For float32 the convolution kernel is computed by
  nodes from the parameters, which are initializers under their own keys (S4D's Vandermonde product
  in real arithmetic: Exp, Cos, Sin; SGConv's upsampling as MatMuls with interpolation matrices, the
  decay, the L2 normalization), reversed in time and applied as a causal depthwise Conv with L taps,
  + D u: the kernel form, which ``convdsl import`` brings back as the op.  For other dtypes the
  kernel is computed here, once, by the torch backend's own S4D / SGConv helpers in float64, and
  stored as a constant (``long_conv``): the constant form.
- selective_scan (input-dependent): projections as MatMuls, then the
  recurrence h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t as one
  ONNX ``Scan`` over time: the scan form.
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper

from convdsl.ir.ops.ssm import sgconv_upsampling

from convdsl.backends.onnx.common import family, silu
from convdsl.backends.onnx.export import Exporter
from convdsl.backends.onnx.lower_fft import long_conv
from convdsl.backends.onnx.lower_shape import flip


def _length(cx: Exporter, t) -> int:
    length = t.shape[2]
    if not isinstance(length, int):
        raise cx.error("the long-convolution form needs a static sequence length",
                       hint="bind L when exporting (--bind L=1024)")
    return length


def _lti(cx: Exporter, node, u: str, c: int, kernel: np.ndarray, d: np.ndarray, bidirectional: bool) -> str:
    """y = K * u + D u  (+ the same run backwards in time when bidirectional), K a constant (the
    constant form, for dtypes other than float32)."""
    name = f"{node.id}.kernel"
    y = long_conv(cx, u, c, kernel, causal=True, name=name)
    if bidirectional:  # flip(K * flip(u)) + D u, D counted twice
        back = long_conv(cx, flip(cx, u, [2]), c, kernel, causal=True, name=name)
        y = cx.op("Add", [y, flip(cx, back, [2])])
        d = 2.0 * d
    return cx.op("Add", [y, cx.op("Mul", [u, cx.const(d[:, None])])])


def _lti_nodes(cx: Exporter, node, u: str, c: int, weight: str, length: int) -> str:
    """y = K * u + D u with the reversed kernel ``weight`` [C, 1, L] computed by nodes (the kernel
    form): a causal depthwise Conv + Mul(u, ``<key>.D.as_channels``); bidirectional, the same on the
    time-reversed input, reversed back and added (as the torch backend computes it)."""
    def one_way(x: str) -> str:
        y = cx.op("Conv", [x, weight], kernel_shape=[length], pads=[length - 1, 0], group=c)
        return cx.op("Add", [y, cx.op("Mul", [x, cx.param("D", lambda v: v[:, None], ".as_channels")])])

    y = one_way(u)
    if node.attrs["bidirectional"]:
        y = cx.op("Add", [y, flip(cx, one_way(flip(cx, u, [2])), [2])])
    return y


def _tensors(cx: Exporter, *names: str) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(np.asarray(cx.array(n), dtype=np.float64)) for n in names}


def _s4d_kernel(cx: Exporter, length: int) -> str:
    """S4D's kernel from its parameters, reversed in time, as the conv weight [C, 1, L]: the torch
    backend's S4D.kernel in real float32 arithmetic, in its order of operations.  With dt = exp(log_dt),
    A = -exp(log_A_real) + i A_imag: G = C (exp(dt A) - 1) / A, and K[l] = 2 Re(sum_n G_n exp(dt A_n l)),
    l = L-1 .. 0 (exp(a + ib) = exp(a) (cos b + i sin b); the powers' phases are the same float32
    products torch takes the complex exponential of)."""
    def op(t, *ins, **kw):
        return cx.op(t, list(ins), **kw)

    dt = op("Unsqueeze", op("Exp", cx.param("log_dt")), cx.ints([1]))  # [C, 1]
    ar, ai = op("Neg", op("Exp", cx.param("log_A_real"))), cx.param("A_imag")  # [C, M]
    xr, xi = op("Mul", dt, ar), op("Mul", dt, ai)  # dt A
    e = op("Exp", xr)
    er, ei = op("Sub", op("Mul", e, op("Cos", xi)), cx.const(np.float32(1.0))), op("Mul", e, op("Sin", xi))
    c = cx.param("C")
    cr, ci = op("Gather", c, cx.const(np.int64(0)), axis=2), op("Gather", c, cx.const(np.int64(1)), axis=2)
    nr = op("Sub", op("Mul", cr, er), op("Mul", ci, ei))  # C (exp(dt A) - 1)
    ni = op("Add", op("Mul", cr, ei), op("Mul", ci, er))
    den = op("Add", op("Mul", ar, ar), op("Mul", ai, ai))  # / A
    gr = op("Div", op("Add", op("Mul", nr, ar), op("Mul", ni, ai)), den)
    gi = op("Div", op("Sub", op("Mul", ni, ar), op("Mul", nr, ai)), den)
    steps = cx.const(np.arange(length - 1, -1, -1, dtype=np.float32))  # reversed: the Conv's weight
    pr, pi = (op("Mul", op("Unsqueeze", x, cx.ints([2])), steps) for x in (xr, xi))  # [C, M, L]
    mag = op("Exp", pr)
    vr, vi = op("Mul", mag, op("Cos", pi)), op("Mul", mag, op("Sin", pi))
    axis1 = cx.ints([1])
    k = op("Sub", op("MatMul", op("Unsqueeze", gr, axis1), vr), op("MatMul", op("Unsqueeze", gi, axis1), vi))
    return op("Mul", k, cx.const(np.float32(2.0)))  # [C, 1, L]


def _s4d(cx, node, args, ins):
    from convdsl.backends.torch.runtime import S4D

    c, length = ins[0].shape[1], _length(cx, ins[0])
    if ins[0].dtype == "f32":
        return _lti_nodes(cx, node, args[0], c, _s4d_kernel(cx, length), length)
    p = _tensors(cx, "log_A_real", "A_imag", "C", "D", "log_dt")
    m = S4D(c, node.attrs["state"]).double()
    m.load_state_dict(p)
    with torch.no_grad():
        k = m.kernel(length).numpy()
    return _lti(cx, node, args[0], c, k, p["D"].numpy(), node.attrs["bidirectional"])


def _sgconv_kernel(cx: Exporter, node, length: int) -> str:
    """SGConv's kernel from its sub-kernels, reversed in time, as the conv weight [C, 1, L]: piece i is
    Gather(kernel, i) [C, d], upsampled by 2**(i-1) for i > 1 as a MatMul with the interpolation matrix
    (``sgconv_upsampling``: F.interpolate's weights), times decay**i; Concat, divided by
    max(ReduceL2, 1e-12) per channel, cut (Slice) or zero-padded (Pad) to L, reversed, Unsqueeze(1)."""
    a = node.attrs
    s, _, d = cx.array("kernel").shape
    if s <= 2:  # the file holds no upsampling (and for one scale no decay): recorded for the importer
        cx.record(interp=a["interp"], **({"decay": a["decay"]} if s == 1 else {}))
    kernel = cx.param("kernel")
    pieces = []
    for i in range(s):
        p = cx.op("Gather", [kernel, cx.const(np.int64(i))], axis=0)
        if i > 1:
            p = cx.op("MatMul", [p, cx.const(sgconv_upsampling(d, 2 ** (i - 1), a["interp"]))])
        pieces.append(cx.op("Mul", [p, cx.const(np.float32(a["decay"] ** i))]))
    k = cx.op("Concat", pieces, axis=1)  # [C, d 2**(S-1)]
    norm = cx.op("Max", [cx.op("ReduceL2", [k], axes=[1], keepdims=1), cx.const(np.float32(1e-12))])
    k = cx.op("Div", [k, norm])
    full = d * 2 ** (s - 1)
    if full > length:
        k = cx.op("Slice", [k, cx.ints([0]), cx.ints([length]), cx.ints([1])])
    elif full < length:
        k = cx.op("Pad", [k, cx.ints([0, 0, 0, length - full])])
    return cx.op("Unsqueeze", [flip(cx, k, [1]), cx.ints([1])])


def _sgconv(cx, node, args, ins):
    from convdsl.backends.torch.runtime import SGConv

    a = node.attrs
    c, length = ins[0].shape[1], _length(cx, ins[0])
    if ins[0].dtype == "f32":
        return _lti_nodes(cx, node, args[0], c, _sgconv_kernel(cx, node, length), length)
    p = _tensors(cx, "kernel", "D")
    m = SGConv(c, p["kernel"].shape[-1], p["kernel"].shape[0], a["decay"], a["interp"]).double()
    m.load_state_dict(p)
    with torch.no_grad():
        k = m.kernel_for(length).numpy()
    return _lti(cx, node, args[0], c, k, p["D"].numpy(), a["bidirectional"])


# ---- selective scan (Mamba) -----------------------------------------------------------------
def _scan_body(cx: Exporter, a_name: str, c: int, s: int):
    """One time step: (h [N, C, S], dt, u [N, C], B, C [N, S]) -> (h', y [N, C])."""
    n = cx.fresh

    h, dt, u, b, cc = (n(f"scan/{v}") for v in ("h", "dt", "u", "B", "C"))
    h2, y = n("scan/h_next"), n("scan/y")
    ax1, ax2 = n("scan/axis1"), n("scan/axis2")
    t = {k: n(f"scan/{k}") for k in ("dt3", "da", "dtu", "dtu3", "b3", "dbu", "hda", "c3", "hc")}
    nodes = [
        helper.make_node("Constant", [], [ax1], value=helper.make_tensor(ax1, TensorProto.INT64, [1], [1])),
        helper.make_node("Constant", [], [ax2], value=helper.make_tensor(ax2, TensorProto.INT64, [1], [2])),
        helper.make_node("Unsqueeze", [dt, ax2], [t["dt3"]]),
        helper.make_node("Exp", [n("scan/dtA")], [t["da"]]),
        helper.make_node("Mul", [dt, u], [t["dtu"]]),
        helper.make_node("Unsqueeze", [t["dtu"], ax2], [t["dtu3"]]),
        helper.make_node("Unsqueeze", [b, ax1], [t["b3"]]),
        helper.make_node("Mul", [t["dtu3"], t["b3"]], [t["dbu"]]),
        helper.make_node("Mul", [t["da"], h], [t["hda"]]),
        helper.make_node("Add", [t["hda"], t["dbu"]], [h2]),
        helper.make_node("Unsqueeze", [cc, ax1], [t["c3"]]),
        helper.make_node("Mul", [h2, t["c3"]], [t["hc"]]),
        helper.make_node("ReduceSum", [t["hc"], ax2], [y], keepdims=0),
    ]
    # exp(dt A): dt [N, C, 1] * A [C, S], A = -exp(A_log) with A_log the outer graph's initializer (the
    # parameter itself is in the file; OpenVINO's Scan reads outer initializers, not outer computed values)
    a_exp, a_val = n("scan/exp_A_log"), n("scan/A")
    nodes[3:3] = [helper.make_node("Exp", [a_name], [a_exp]), helper.make_node("Neg", [a_exp], [a_val]),
                  helper.make_node("Mul", [t["dt3"], a_val], [nodes[3].input[0]])]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(h, f, ["N", c, s]), helper.make_tensor_value_info(dt, f, ["N", c]),
              helper.make_tensor_value_info(u, f, ["N", c]), helper.make_tensor_value_info(b, f, ["N", s]),
              helper.make_tensor_value_info(cc, f, ["N", s])]
    outputs = [helper.make_tensor_value_info(h2, f, ["N", c, s]), helper.make_tensor_value_info(y, f, ["N", c])]
    return helper.make_graph(nodes, "selective_scan_step", inputs, outputs)


def _one_way(cx: Exporter, node, u: str, t) -> str:
    """The selective SSM on u[N, C, L] in one direction (projections, scan, + D u)."""
    a = node.attrs
    c = t.shape[1]
    s, r, k = a["state"], a["dt_rank"], a["d_conv"]
    if k:  # causal depthwise conv: pad k-1 on the left, then SiLU
        u = cx.op("Conv", [u, cx.param("conv1d.weight"), cx.param("conv1d.bias")], kernel_shape=[k], pads=[k - 1, 0],
                  group=c)
        u = silu(cx, u)
    ut = cx.op("Transpose", [u], perm=[0, 2, 1])  # [N, L, C]
    proj = cx.op("MatMul", [ut, cx.param("x_proj.weight", lambda w: w.T, ".T")])  # [N, L, r + 2s]
    dt_low, b, cc = cx.op("Split", [proj, cx.ints([r, s, s])], outputs=3, axis=2)
    dt = cx.op("MatMul", [dt_low, cx.param("dt_proj.weight", lambda w: w.T, ".T")])  # [N, L, C]
    dt = cx.op("Softplus", [cx.op("Add", [dt, cx.param("dt_proj.bias")])])
    a_mat = cx.param("A_log")  # A = -exp(A_log), computed in the step
    # h_0 = 0 of [N, C, S]
    shape = cx.op("Concat", [cx.dim_of(u, 0), cx.ints([c, s])], axis=0)
    h0 = cx.op("ConstantOfShape", [shape], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    body = _scan_body(cx, a_mat, c, s)
    _, y = cx.op("Scan", [h0, dt, ut, b, cc], outputs=2, body=body, num_scan_inputs=4,
                 scan_input_axes=[1, 1, 1, 1], scan_output_axes=[2])  # y [N, C, L]
    return cx.op("Add", [y, cx.op("Mul", [u, cx.param("D", lambda v: v[:, None], ".as_channels")])])


def _selective_scan(cx, node, args, ins):
    if ins[0].dtype != "f32":
        raise cx.error("the scan form is exported for float32 only")
    y = _one_way(cx, node, args[0], ins[0])
    if node.attrs["bidirectional"]:  # the same SSM on the time-reversed input, reversed back
        back = _one_way(cx, node, flip(cx, args[0], [2]), ins[0])
        y = cx.op("Add", [y, flip(cx, back, [2])])
    return y


EXPORTS = family("ssm", {
    "s4d": _s4d,
    "sgconv": _sgconv,
    "selective_scan": _selective_scan,
})
