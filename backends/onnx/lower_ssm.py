"""ONNX exports of the state-space ops (see export.py for the entry format).

- s4d, sgconv (LTI): the convolution kernel depends only on weights, so it is
  computed here, once, by the torch backend's own S4D / SGConv helpers in
  float64, and applied as a long depthwise convolution (``long_conv``): the
  long-convolution form.
- selective_scan (input-dependent): projections as MatMuls, then the
  recurrence h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t as one
  ONNX ``Scan`` over time: the scan form.
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper

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
    """y = K * u + D u  (+ the same run backwards in time when bidirectional)."""
    name = f"{node.id}.kernel"
    y = long_conv(cx, u, c, kernel, causal=True, name=name)
    if bidirectional:  # flip(K * flip(u)) + D u, D counted twice
        back = long_conv(cx, flip(cx, u, [2]), c, kernel, causal=True, name=name)
        y = cx.op("Add", [y, flip(cx, back, [2])])
        d = 2.0 * d
    return cx.op("Add", [y, cx.op("Mul", [u, cx.const(d[:, None])])])


def _tensors(cx: Exporter, *names: str) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(np.asarray(cx.array(n), dtype=np.float64)) for n in names}


def _s4d(cx, node, args, ins):
    from convdsl.backends.torch.runtime import S4D

    c, length = ins[0].shape[1], _length(cx, ins[0])
    p = _tensors(cx, "log_A_real", "A_imag", "C", "D", "log_dt")
    m = S4D(c, node.attrs["state"]).double()
    m.load_state_dict(p)
    with torch.no_grad():
        k = m.kernel(length).numpy()
    return _lti(cx, node, args[0], c, k, p["D"].numpy(), node.attrs["bidirectional"])


def _sgconv(cx, node, args, ins):
    from convdsl.backends.torch.runtime import SGConv

    a = node.attrs
    c, length = ins[0].shape[1], _length(cx, ins[0])
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
