"""Vectorizable transcendental functions on CPUs: a Relax rewrite before legalization.

    softmax(x)  =>  topi.nn.fast_softmax(x)      exp as a polynomial (topi.fast_exp)
    exp / erf / tanh  =>  topi.fast_exp / fast_erf / fast_tanh
    gelu(x)     =>  x * (0.5 + 0.5 * fast_erf(x / sqrt 2))

LLVM turns ``llvm.exp``/``erf`` of a vector into one libm call per lane, so an
exp-heavy kernel (ViT-S's softmax, its GELU MLP) ran at scalar libm speed whatever its
schedule; the polynomial forms (TVM's own, float32-accurate: Eigen's erf/tanh, a
clamped Cephes-style exp) vectorize like any other arithmetic.  Relative error stays
at float32 rounding level (the op suite checks 1e-4 of the output's scale).
"""
from __future__ import annotations

import math

import tvm
from tvm import relax, te, topi
from tvm.relax.expr_functor import PyExprMutator, mutator


def _gelu(x: te.Tensor) -> te.Tensor:
    inv_sqrt2 = tvm.tirx.const(1.0 / math.sqrt(2.0), x.dtype)
    half = tvm.tirx.const(0.5, x.dtype)
    erf = topi.fast_erf(te.compute(x.shape, lambda *i: x(*i) * inv_sqrt2, name="gelu_scale"))
    return te.compute(x.shape, lambda *i: x(*i) * (half + half * erf(*i)), name="gelu")


@mutator
class _FastMath(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        op = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        x = call.args[0] if call.args else None
        if x is None or not isinstance(x.ty, relax.TensorType) or str(x.ty.dtype) != "float32":
            return call
        if op == "relax.nn.softmax":
            return self.builder_.call_te(topi.nn.fast_softmax, x, int(call.attrs.axis), primfunc_name_hint="softmax")
        if op == "relax.exp":
            return self.builder_.call_te(topi.fast_exp, x, primfunc_name_hint="exp")
        if op == "relax.erf":
            return self.builder_.call_te(topi.fast_erf, x, primfunc_name_hint="erf")
        if op == "relax.tanh":
            return self.builder_.call_te(topi.fast_tanh, x, primfunc_name_hint="tanh")
        if op == "relax.nn.gelu":
            return self.builder_.call_te(_gelu, x, primfunc_name_hint="gelu")
        return call


def fast_math(mod: tvm.IRModule) -> tvm.IRModule:
    m = _FastMath(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            m.builder_.update_func(gv, m.visit_expr(func))
    return m.builder_.get()


@tvm.transform.module_pass(opt_level=0, name="ConvdslFastMath")
def FastMath(mod: tvm.IRModule, ctx) -> tvm.IRModule:  # noqa: N802 - a pass, named like TVM's
    return fast_math(mod)
