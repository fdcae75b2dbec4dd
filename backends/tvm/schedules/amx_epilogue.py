"""A residual block's last int8 AMX conv, its residual add and the next quantize as one kernel.

After the blocked layout (layout.py), a ResNet block whose shortcut is the block's input ends as

    c = call_tir(qconv2d, (x, w, bias, mult, offsets))        float32, NCHW16c   (acc + bias) * mult
    r = maximum((astype(u, f32) - zr) * sr, lowest)           the dequantized shortcut u (u8 / i8, NCHW16c),
                                                              or a float32 shortcut r (a downsampling conv's)
    q = astype(clip(round(relu(c + r) * inv) + zp, lo, hi))   the block output, u8 / i8

and FuseOps makes the conv's requantization read the int32 accumulator back from memory (``acc``: OH x
ww x O x 4 bytes; 3.2 MB for ResNet-50's 56 x 56 x 256 expansions, which ran at 3-4% of the tile roof).
``fuse_requant_epilogues`` replaces ``q`` with one ``amx.conv_requant_extern`` whose micro-kernel blocks are
requantized in the block loop with this epilogue (``amx.Epilogue``): the same float ops in the same order as
the TIR FuseOps would make, so the result is bit-identical.  The chain is matched only where each
intermediate value has no other reader; anything else is left to FuseOps.

Also without a shortcut, MobileNet's expansion convs (conv -> ReLU6 -> quantize):

    q = astype(clip(round(clip(c, a, b) * inv) + zp, lo, hi))

as one kernel whose block loop computes c * inv and clamps to [lo, hi] narrowed by the clip
(``amx.clip_bounds``: every step is monotone, so the clip is a clamp of the quantized value; equal for every
input).  Without it the 16 -> 96 expansion at 112 x 112 wrote its 4.8 MB int32 accumulator and read it back.
The same chain after any other float32 producer (a depthwise conv, the VNNI stem) is rewritten as
astype(clip(round(c * inv) + zp, lo', hi')) with the narrowed range: the clip's two ops per vector gone from
the epilogue FuseOps then appends to that producer.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from convdsl.backends.tvm.schedules import amx
from convdsl.backends.tvm.schedules.layout import OPAQUE, static_shape

_INT8 = ("uint8", "int8")
_CONST = type(relax.const(np.zeros(1, "float32")))  # Relax's constant node class (not exported by name in TVM 0.27)


def _op(value) -> str | None:
    return value.op.name if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else None


def _scalar(e) -> float | None:
    """The value of a one-element float32 constant, else None."""
    if not isinstance(e, _CONST) or not hasattr(e.value, "numpy"):
        return None
    v = e.value.numpy()
    return float(v.reshape(-1)[0]) if v.size == 1 and v.dtype == np.float32 else None


class _Chains:
    """The dataflow block's bindings, their readers, and the chains above found in it."""

    def __init__(self, mod: tvm.IRModule, func: relax.Function):
        self.mod = mod
        self.value: dict = {}
        self.readers: dict = {}
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.value[b.var] = b.value
                    for v in _vars(b.value):
                        self.readers[v] = self.readers.get(v, 0) + 1
        self.found = {var: m for var in self.value if (m := self._match(var)) is not None}

    def _only(self, e, op: str):
        """``e``'s value if it is a call of ``op`` that only one binding reads, else None."""
        if not isinstance(e, relax.Var) or self.readers.get(e, 0) != 1:
            return None
        v = self.value.get(e)
        return v if _op(v) == op else None

    def _with_const(self, call) -> tuple[relax.Expr, float] | None:
        """(the tensor operand, the scalar) of a binary call with one one-element constant."""
        a, b = call.args
        if _scalar(b) is not None:
            return a, _scalar(b)
        if _scalar(a) is not None and _op(call) in ("relax.add", "relax.multiply", "relax.maximum"):
            return b, _scalar(a)
        return None

    def _match(self, var):
        q = self.value[var]
        if _op(q) != "relax.astype" or str(q.attrs.dtype) not in _INT8:
            return None
        clip = self._only(q.args[0], "relax.clip")
        if clip is None or not all(isinstance(a, (tvm.tirx.IntImm, tvm.tirx.FloatImm)) for a in clip.args[1:]):
            return None
        lo, hi = (float(a.value) for a in clip.args[1:])
        add_zp = self._only(clip.args[0], "relax.add")
        zp = self._with_const(add_zp) if add_zp is not None else None
        rnd = self._only(zp[0], "relax.round") if zp is not None else None
        mul = self._only(rnd.args[0], "relax.multiply") if rnd is not None else None
        inv = self._with_const(mul) if mul is not None else None
        if inv is not None and (act := self._only(inv[0], "relax.clip")) is not None:  # conv -> ReLU6 -> quantize
            kernel = self._conv(act.args[0])
            bounds = act.args[1:]
            if not all(isinstance(a, (tvm.tirx.IntImm, tvm.tirx.FloatImm)) for a in bounds) \
                    or str(act.args[0].ty.dtype) != "float32":
                return None
            a, b = (float(v.value) for v in bounds)
            if inv[1] <= 0 or _op(mul) != "relax.multiply":
                return None
            low, high = amx.clip_bounds(a, b, inv[1], zp[1], lo, hi)
            if kernel is None:  # any other producer (a depthwise conv, the VNNI stem): the clip folded, FuseOps after
                return _Fold(act.args[0], mul, add_zp, low, high, str(q.attrs.dtype))
            return kernel, None, amx.Epilogue(None, 0.0, 1.0, 0.0, inv[1], zp[1], low, high, str(q.attrs.dtype),
                                              (a, b))
        relu = self._only(inv[0], "relax.nn.relu") if inv is not None else None
        add = self._only(relu.args[0], "relax.add") if relu is not None else None
        if add is None:
            return None
        for conv, res in (add.args, add.args[::-1]):
            kernel = self._conv(conv)
            shortcut = self._shortcut(res, static_shape(conv)) if kernel is not None else None
            if shortcut is not None:
                u, zr, sr, floor = shortcut
                return kernel, u, amx.Epilogue(str(u.ty.dtype), zr, sr, floor, inv[1], zp[1], lo, hi,
                                               str(q.attrs.dtype))
        return None

    def _conv(self, e):
        """(the conv's call_tir, its spec) if ``e`` is a blocked AMX int8 conv with a float output read once."""
        from convdsl.backends.tvm.lower_quant import INT8_CONV_ATTR, int8_conv_from_spec

        call = self._only(e, "relax.call_tir")
        if call is None:
            return None
        func = self.mod[call.args[0]] if isinstance(call.args[0], relax.GlobalVar) else None
        spec = func.attrs.get(INT8_CONV_ATTR) if func is not None and func.attrs is not None else None
        shape = static_shape(e)
        if spec is None or shape is None or len(shape) != 5 or shape[-1] != amx.OC:
            return None
        c, geo, kw, kind = int8_conv_from_spec(str(spec))
        if geo is None or kind != "conv" or kw["out_dtype"] != "float32" or kw.get("relu"):
            return None
        return call, geo, kw

    def _shortcut(self, e, shape):
        """(u, zero point, scale, floor) if ``e`` is maximum((astype(u, f32) - zr) * sr, floor), u int8 of ``shape``;
        (e, 0, 1, 0) if ``e`` is float32 of ``shape`` (read as it is)."""
        if not isinstance(e, relax.Var):
            return None
        if str(e.ty.dtype) == "float32" and static_shape(e) == shape:  # a float shortcut (a downsampling conv's)
            return e, 0.0, 1.0, 0.0
        mx = self.value.get(e)
        if _op(mx) != "relax.maximum" or (floor := self._with_const(mx)) is None:
            return None
        mul = self.value.get(floor[0])
        if _op(mul) != "relax.multiply" or (scale := self._with_const(mul)) is None:
            return None
        sub = self.value.get(scale[0])
        if _op(sub) != "relax.subtract" or (zero := self._with_const(sub)) is None:
            return None
        cast = self.value.get(zero[0])
        if _op(cast) != "relax.astype" or str(cast.attrs.dtype) != "float32":
            return None
        u = cast.args[0]
        if not isinstance(u, relax.Var) or str(u.ty.dtype) not in _INT8 or static_shape(u) != shape:
            return None
        return u, zero[1], scale[1], floor[1]


@dataclass(frozen=True)
class _Fold:
    """A clip -> quantize chain after a producer that is not an AMX conv: rewritten as the quantize alone, of the
    clip's input, to the range ``amx.clip_bounds`` narrows (``mul`` and ``add_zp``: the chain's scale and zero-point
    calls, whose constants are reused)."""

    x: relax.Expr
    mul: relax.Call
    add_zp: relax.Call
    lo: float
    hi: float
    dtype: str


def _vars(e) -> list:
    if isinstance(e, relax.Var):
        return [e]
    if isinstance(e, relax.Tuple):
        return [v for f in e.fields for v in _vars(f)]
    if isinstance(e, relax.Call):
        return [v for a in e.args for v in _vars(a)]
    return []


@mutator
class _Fuser(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, found: dict):
        super().__init__(mod)
        self.found = found

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        match = self.found.get(binding.var)
        if match is None:
            return super().visit_var_binding_(binding)
        if isinstance(match, _Fold):  # round(x * inv) + zp clamped to the narrowed range: the clip's two ops gone
            scale = next(a for a in match.mul.args if _scalar(a) is not None)
            zp = next(a for a in match.add_zp.args if _scalar(a) is not None)
            emit = self.builder_.emit
            y = emit(relax.op.multiply(self.visit_expr(match.x), scale))
            y = emit(relax.op.add(emit(relax.op.round(y)), zp))
            y = relax.op.astype(emit(relax.op.clip(y, match.lo, match.hi)), match.dtype)
            return self.set_var_remap(binding.var, emit(y, name_hint=binding.var.name))
        from convdsl.backends.tvm.lower_quant import vnni_conv2d

        (call, geo, kw), u, epilogue = match
        x, w, bias, mult, offsets = (self.visit_expr(f) for f in call.args[1].fields)
        xs = static_shape(x)
        ib = xs[-1] if xs is not None and len(xs) == 5 else None
        kernel = functools.partial(vnni_conv2d, amx=geo, blocked=(ib, amx.OC), **{**kw, "out_dtype": epilogue.out_dtype},
                                   epilogue=epilogue)
        shortcut = self.visit_expr(u) if u is not None else None
        suffix = "_residual" if u is not None else "_clip"
        new = self.builder_.call_te(kernel, x, w, bias, mult, offsets=offsets, shortcut=shortcut,
                                    primfunc_name_hint=call.args[0].name_hint + suffix)
        gv = new.args[0]
        self.builder_.update_func(gv, self.builder_.get()[gv].with_attr("op_pattern", OPAQUE))
        self.set_var_remap(binding.var, self.builder_.emit(new, name_hint=binding.var.name))


def fuse_requant_epilogues(mod: tvm.IRModule) -> tvm.IRModule:
    """Every matched chain (module docstring) of ``mod``'s Relax functions as one AMX kernel; the conv and
    the float ops it replaces are left unread and removed."""
    found = {}
    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            found.update(_Chains(mod, func).found)
    if not found:
        return mod
    m = _Fuser(mod, found)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            m.builder_.update_func(gv, m.visit_expr(func))
    return relax.transform.DeadCodeElimination()(m.builder_.get())


@tvm.transform.module_pass(opt_level=0, name="ConvdslAmxEpilogue")
def AmxEpilogue(mod: tvm.IRModule, ctx) -> tvm.IRModule:  # noqa: N802 - a pass, named like TVM's
    return fuse_requant_epilogues(mod)
