"""TVM lowerings of activations and elementwise arithmetic (convdsl/ir/ops/elementwise.py);
see common.py for the entry format.  dropout and drop_path are identities (inference)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from convdsl.ir.types import TensorType

from convdsl.backends.tvm.common import TVM_DTYPE, LowerFn, Lowerer, R, family, relax

if TYPE_CHECKING:
    from tvm.relax import Expr

LOWERINGS = family("elementwise")


def _unary(fn: Callable[[Expr], Expr]) -> LowerFn:
    return lambda cx, node, args, ins: fn(args[0])


def _scalar(cx: Lowerer, v: float, t: TensorType) -> Expr:
    return cx.const(v, TVM_DTYPE[t.dtype])


def _relu6(cx, node, args, ins):
    return R.clip(args[0], 0.0, 6.0)


def _leaky_relu(cx, node, args, ins):
    return R.nn.leakyrelu(args[0], node.attrs["slope"])


def _gelu(cx, node, args, ins):
    return R.nn.gelu_tanh(args[0]) if node.attrs["approximate"] == "tanh" else R.nn.gelu(args[0])


def _hardsigmoid(cx, node, args, ins):
    # relu6(x + 3) / 6
    t = ins[0]
    return R.divide(R.clip(cx.emit(R.add(args[0], _scalar(cx, 3.0, t))), 0.0, 6.0), _scalar(cx, 6.0, t))


def _hardswish(cx, node, args, ins):
    return R.multiply(args[0], cx.emit(_hardsigmoid(cx, node, args, ins)))


def _affine(cx, node, args, ins):
    s, b = node.attrs["scale"], node.attrs["shift"]
    y = args[0]
    if s != 1.0:
        y = R.multiply(y, _scalar(cx, s, ins[0]))
    if b != 0.0:
        y = R.add(cx.emit(y) if s != 1.0 else y, _scalar(cx, b, ins[0]))
    return y


_PASS_THROUGH = ("dropout", "identity", "drop_path")  # identities at inference


def _sole_producer(graph, v, op: str):
    """The node of op ``op`` whose output reaches ``v`` through identities only, each value on the way read once
    and no network output; else None."""
    while True:
        if graph.is_output(v) or len(graph.users(v)) != 1:
            return None
        node = graph.node(v.node)
        if node.op == op:
            return node
        if node.op not in _PASS_THROUGH:
            return None
        v = graph.inputs_of(node.id)[0]


def _bound(cx, v, op: str):
    """The call of Relax op ``op`` bound to the variable ``v`` in the function being built, else None."""
    import tvm

    e = cx.bb.lookup_binding(v) if isinstance(v, relax.Var) else None
    return e if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == op else None


def _linear_input(cx, v, has_bias: bool):
    """x for ``v`` = x @ W (+ b) as lower_linear emits it, else None."""
    if has_bias:
        add = _bound(cx, v, "relax.add")
        v = add.args[0] if add is not None else None
    mm = _bound(cx, v, "relax.matmul") if v is not None else None
    return mm.args[0] if mm is not None else None


def _amx_mlp(cx, node, args, ins):
    """``residual + linear(gelu(linear(x)))`` (a transformer MLP block with its residual, ViT's) at --precision bf16
    on a CPU with AMX-BF16 as two kernels: fc1 with the GELU, rounded to bf16 straight into fc2's A tiles
    (``mlp_up_bf16``), and fc2 with the bias in its tiles and the residual added as its rows are read back
    (``linear_packed_bf16``); the hidden layer is never an f32 tensor.  The arithmetic is the unfused build's
    (bf16 operands, f32 sums, bias and GELU in f32).  None where it does not apply: another precision or target,
    other shapes (dims not multiples of 32, symbolic), intermediate values read elsewhere."""
    import tvm

    from convdsl.backends.tvm.lower_norm import layer_norm_input
    from convdsl.backends.tvm.schedules import amx, amx_transformer

    target = tvm.target.Target.current(allow_none=True)
    if cx.precision != "bf16" or len(args) != 2 or target is None or target.kind.name != "llvm" \
            or not amx.has_amx_bf16(target) or any(t.dtype != "f32" or t.rank != 3 for t in ins) \
            or ins[0].shape != ins[1].shape or not all(isinstance(d, int) for d in ins[0].shape):
        return None
    g = cx.graph
    for i, v in enumerate(g.inputs_of(node.id)):
        fc2 = _sole_producer(g, v, "linear")
        gelu = _sole_producer(g, g.inputs_of(fc2.id)[0], "gelu") if fc2 is not None else None
        fc1 = _sole_producer(g, g.inputs_of(gelu.id)[0], "linear") if gelu is not None else None
        if fc1 is None or gelu.attrs["approximate"] != "none":
            continue
        w1, w2 = (np.asarray(g.params[n.params["weight"]]) for n in (fc1, fc2))
        if w1.shape[0] % amx.BLOCK_OC or w2.shape[0] % amx.BLOCK_OC or w2.shape[0] != ins[0].shape[-1] \
                or w1.shape[1] <= amx.BF16_CHANNELS // 2 or g.type_of(g.inputs_of(fc1.id)[0]).dtype != "f32":
            continue
        # the Relax values: args[i] = gelu(x W1 + b1) W2 + b2, as lower_linear and _gelu emit them
        hidden = _linear_input(cx, args[i], fc2.attrs["bias"])
        act = _bound(cx, hidden, "relax.nn.gelu") if hidden is not None else None
        x = _linear_input(cx, act.args[0], fc1.attrs["bias"]) if act is not None else None
        if x is None:
            continue
        bias = [np.asarray(g.params[n.params["bias"]], np.float32) if n.attrs["bias"]
                else np.zeros(w.shape[0], np.float32) for n, w in ((fc1, w1), (fc2, w2))]
        packed = [cx.const(amx.pack_weight_bf16(w[:, :, None, None]), "uint16") for w in (w1, w2)]
        # a layer norm read only by fc1 (ViT's ln_2) is done in fc1's pack: its f32 output never exists
        ln = layer_norm_input(cx, x, g.inputs_of(fc1.id)[0])
        x, norm = (x, ()) if ln is None else (ln[0], ln[1:])
        h = cx.bb.emit_te(amx_transformer.mlp_up_bf16, x, packed[0], cx.const(bias[0]), *norm,
                          primfunc_name_hint="mlp_up_bf16_amx")
        return cx.bb.emit_te(amx_transformer.linear_packed_bf16, h, packed[1], cx.const(bias[1]), ins[0].shape[1],
                             args[1 - i], primfunc_name_hint="mlp_down_bf16_amx")
    return None


def _amx_attention_residual(cx, node, args, ins):
    """``residual + mhsa(x)`` whose output projection is ``lower_attention``'s ``out_proj_bf16_amx`` (bf16 on AMX):
    the projection again with the residual added in its last pass (``linear_packed_bf16``), so that the sum
    is not a kernel of its own (the first projection is then unused and removed).  None otherwise."""
    import tvm

    from convdsl.backends.tvm.schedules import amx_transformer

    if cx.precision != "bf16" or len(args) != 2 or ins[0].shape != ins[1].shape or ins[0].rank != 3:
        return None
    g = cx.graph
    for i, v in enumerate(g.inputs_of(node.id)):
        if not any(_sole_producer(g, v, op) is not None for op in ("mhsa", "cross_attention")):
            continue
        call = _bound(cx, args[i], "relax.call_tir")
        if call is None or not isinstance(call.args[0], tvm.ir.GlobalVar) \
                or call.args[0].name_hint != "out_proj_bf16_amx":
            continue
        hidden, weight, bias = call.args[1].fields
        return cx.bb.emit_te(amx_transformer.linear_packed_bf16, hidden, weight, bias, ins[0].shape[1], args[1 - i],
                             primfunc_name_hint="out_proj_residual_bf16_amx")
    return None


def _add(cx, node, args, ins):
    fused = _amx_mlp(cx, node, args, ins)
    if fused is None:
        fused = _amx_attention_residual(cx, node, args, ins)
    if fused is not None:
        return fused
    y = args[0]
    for i, b in enumerate(args[1:]):
        y = R.add(y, b)
        if i < len(args) - 2:
            y = cx.emit(y)
    return y


def _binary(fn: Callable[[Expr, Expr], Expr]) -> LowerFn:
    return lambda cx, node, args, ins: fn(args[0], args[1])


def _softmax(cx, node, args, ins):
    return R.nn.softmax(args[0], axis=node.attrs["dim"] % ins[0].rank)


def _identity(cx, node, args, ins):
    return args[0]


LOWERINGS.add("identity", _identity)
LOWERINGS.add("dropout", _identity)  # inference
LOWERINGS.add("drop_path", _identity)  # inference
LOWERINGS.add("relu", _unary(lambda x: R.nn.relu(x)))
LOWERINGS.add("relu6", _relu6)
LOWERINGS.add("leaky_relu", _leaky_relu)
LOWERINGS.add("gelu", _gelu)
LOWERINGS.add("silu", _unary(lambda x: R.nn.silu(x)))
LOWERINGS.add("sigmoid", _unary(lambda x: R.sigmoid(x)))
LOWERINGS.add("tanh", _unary(lambda x: R.tanh(x)))
LOWERINGS.add("erf", _unary(lambda x: R.erf(x)))
LOWERINGS.add("hardswish", _hardswish)
LOWERINGS.add("hardsigmoid", _hardsigmoid)
LOWERINGS.add("neg", _unary(lambda x: R.negative(x)))
LOWERINGS.add("affine", _affine)
LOWERINGS.add("add", _add)
LOWERINGS.add("sub", _binary(lambda a, b: R.subtract(a, b)))
LOWERINGS.add("mul", _binary(lambda a, b: R.multiply(a, b)))
LOWERINGS.add("div", _binary(lambda a, b: R.divide(a, b)))
LOWERINGS.add("matmul", _binary(lambda a, b: R.matmul(a, b)))
LOWERINGS.add("softmax", _softmax)
