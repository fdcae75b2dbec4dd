"""GPU lowering for convdsl: Relax rewrites that put convolutions on DLight's fast paths.

Runs on CUDA (any GPU) targets before legalization; DLight's default rules schedule
the result (``build.schedule_passes``).  The list, top to bottom (``gpu_passes``):

1. precision (``f16``): ``HalfPrecision`` (TVM's ``ToMixedPrecision``): conv and matmul read float16 and
   accumulate in float32, activations are stored in float16, the network's inputs and
   outputs stay float32.  DLight's Matmul rule routes float16 GEMMs whose I, J, K
   extents all exceed 64 to its tensor-core (wmma) schedule; ``tensor_core_rule`` (a
   DLight rule that ``build.schedule_passes`` puts before Matmul) takes the float16 GEMMs
   with an extent of 16..64 (ResNet's 64-channel convs, attention with head dim 64) to
   the same wmma schedule with tiles shrunk to fit.  ``bf16``: conv and
   matmul read bfloat16 (weights cast once, at compile time), accumulate in float32,
   and return float32 (no tensor cores in DLight for bf16: it halves the bytes).
2. ``ConvToGemm``: every conv1d/2d/3d with a constant weight and groups == 1 becomes
   an explicit im2col plus a plain GEMM::

       conv(x, W)  =>  cols = im2col(x)                  [N, C*k, *out]  (zero padding folded in)
                       y[n, o, *p] = sum_k W'[o, k] * cols[n, k, *p]     W' = W.reshape(O, C*k)

   The GEMM is one reduction block reading two buffers with plain indices, so DLight's
   Matmul rule sees ``C[S, I, J] += A[S, I, K] * B[S, J, K]`` with I = O, J = N*out,
   K = C*k; the output is already NCHW, so the elementwise epilogue (bias, folded
   batchnorm, activation, residual add) still fuses into it.  A 1x1 conv with stride 1
   and no padding reads its input as the cols.  (DLight's Matmul also reindexes
   TOPI's conv into an implicit GEMM, with div/mod in every tile load: ``conv="implicit"``
   keeps that path.)
3. ``DepthwiseDirect``: a depthwise conv (groups == in channels, any channel multiplier,
   at most 64 taps) becomes one spatial kernel, one thread per output element that
   sums its taps in registers (unrolled; padding folded in).  As a GEMM its K is the tap
   count (9), and DLight's generic reduction rule spends a thread block per output.

Precondition: a Relax module from ``lower_graph`` (NCHW/OIHW convs with constant
weights).  Postcondition: the same function; the rewritten convs are ``call_tir`` of
the computes below, whose PrimFuncs DLight's Matmul rule (GEMMs) or Fallback rule
(depthwise) schedule.
"""
from __future__ import annotations

import math
import os

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from convdsl.backends.tvm.schedules.layout import static_shape

PRECISIONS = ("f32", "f16", "bf16")
CONV_MODES = ("im2col", "implicit")
MAX_DEPTHWISE_TAPS = 64  # beyond this (large kernels: 31x31) the unrolled sum is too long; TOPI keeps it
PRECISION_ENV = "CONVDSL_GPU_PRECISION"  # fallback when no precision is given (backend.resolve_precision)
CONV_ENV = "CONVDSL_GPU_CONV"

_CONV_OPS = {"relax.nn.conv1d": 1, "relax.nn.conv2d": 2, "relax.nn.conv3d": 3}
_LAYOUTS = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}


def gpu_passes(spec, precision: str | None = None, conv: str | None = None) -> list:
    """Relax passes for GPU targets, to run before ``LegalizeOps`` ([] on CPUs).

    ``precision``: ``f32`` (default), ``f16`` or ``bf16`` (None: ``$CONVDSL_GPU_PRECISION``; the
    backend passes the one of ``--precision`` / ``backend("tvm-cuda", precision=...)``);
    ``conv``: ``im2col`` (default) or ``implicit`` (else ``$CONVDSL_GPU_CONV``).
    """
    if spec is not None and not spec.is_gpu:
        return []
    precision = precision or os.environ.get(PRECISION_ENV) or "f32"
    conv = conv or os.environ.get(CONV_ENV) or "im2col"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown GPU precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if conv not in CONV_MODES:
        raise ValueError(f"unknown GPU conv lowering {conv!r}; expected one of {', '.join(CONV_MODES)}")
    passes = []
    if precision == "f16":
        passes.append(HalfPrecision)
    elif precision == "bf16":
        passes.append(ComputeIn("bfloat16"))
    passes.append(DepthwiseDirect)
    if conv == "im2col":
        passes.append(ConvToGemm)
    return passes


# ---- helpers ------------------------------------------------------------------------------
def _dtype(e: relax.Expr) -> str:
    return str(e.ty.dtype)


def _conv_call(call: relax.Expr):
    """(nd, attrs) when ``call`` is a conv in convdsl's layout (NC..., OI...), else None."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    nd = _CONV_OPS.get(call.op.name)
    if nd is None:
        return None
    a = call.attrs
    data_layout, kernel_layout = _LAYOUTS[nd]
    if str(a.data_layout) != data_layout or str(a.kernel_layout) != kernel_layout or str(a.out_layout) != data_layout:
        return None
    return nd, a


def _geometry(nd: int, attrs) -> tuple[list[int], list[int], list[int], list[int]]:
    """strides, dilations, pads before, pads after (TVM lists padding as all befores, then all afters)."""
    pad = [int(p) for p in attrs.padding]
    if len(pad) == nd:  # symmetric form
        pad = pad + pad
    return [int(s) for s in attrs.strides], [int(d) for d in attrs.dilation], pad[:nd], pad[nd:]


def _out_dtype(attrs, x: relax.Expr) -> str:
    od = attrs.out_dtype
    od = "" if od is None else str(od)
    return od if od and od not in ("void", "None") else _dtype(x)


def _padded_read(x: te.Tensor, n, c, pos: list, size: list[int]):
    """x[n, c, *pos], zero outside the input (the conv's zero padding)."""
    inside = tirx.all(*[tirx.all(p >= 0, p < s) for p, s in zip(pos, size)])
    return tirx.if_then_else(inside, x[(n, c, *pos)], tirx.const(0, x.dtype))


# ---- im2col + GEMM -----------------------------------------------------------------------------
def im2col(x: te.Tensor, ksize: list[int], strides, dilations, pads_lo, out: list[int]) -> te.Tensor:
    """cols[n, c*prod(k) + flat(kk), *p] = x[n, c, p*s + kk*d - pad] (zero outside)."""
    n_, c_ = int(x.shape[0]), int(x.shape[1])
    size = [int(v) for v in x.shape[2:]]
    taps = math.prod(ksize)

    def f(n, k, *p):
        c, rest = k // taps, k % taps
        kk = []
        for ks in reversed(ksize):
            kk.append(rest % ks)
            rest = rest // ks
        kk.reverse()
        pos = [pi * s + ki * d - lo for pi, ki, s, d, lo in zip(p, kk, strides, dilations, pads_lo)]
        return _padded_read(x, n, c, pos, size)

    return te.compute((n_, c_ * taps, *out), f, name="im2col")


def gemm_nchw(w: te.Tensor, cols: te.Tensor, out_dtype: str) -> te.Tensor:
    """y[n, o, *p] = sum_k w[o, k] * cols[n, k, *p], accumulated in float32 for 16-bit inputs."""
    o_, k_ = (int(v) for v in w.shape)
    rest = [int(v) for v in cols.shape[2:]]
    acc = "float32" if out_dtype in ("float16", "bfloat16") else out_dtype
    k = te.reduce_axis((0, k_), name="k")

    def f(n, o, *p):
        return te.sum(w[o, k].astype(acc) * cols[(n, k, *p)].astype(acc), axis=k)

    y = te.compute((int(cols.shape[0]), o_, *rest), f, name="conv_gemm")
    return y if acc == out_dtype else te.compute(y.shape, lambda *i: y[i].astype(out_dtype), name="conv_gemm_cast")


def _const_weight(e: relax.Expr, bindings: dict) -> np.ndarray | None:
    """The value of a constant weight (through the bindings of ``astype``/var chains), or None."""
    seen = 0
    while isinstance(e, relax.Var) and e in bindings and seen < 8:
        e, seen = bindings[e], seen + 1
    if isinstance(e, tvm.ir.expr.Constant):
        return e.value.numpy()
    if (isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.astype"):
        inner = _const_weight(e.args[0], bindings)
        if inner is not None:
            return inner.astype(_np_dtype(str(e.attrs.dtype)))
    return None


def _np_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


class _Rewriter(PyExprMutator):
    """Shared walk: remembers dataflow bindings so a conv's weight can be traced to its constant."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.bindings: dict = {}

    def visit_var_binding_(self, binding) -> None:
        self.bindings[binding.var] = binding.value
        super().visit_var_binding_(binding)

    def run(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions.items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def const(self, arr: np.ndarray, dtype: str) -> relax.Constant:
        return relax.const(np.ascontiguousarray(arr.astype(_np_dtype(dtype))), dtype)

    def static_conv(self, call: relax.Expr):
        """(nd, attrs, x, x's shape, the output's shape, the weight array) of a conv with static
        shapes and a constant weight; None for anything else."""
        found = _conv_call(call)
        if found is None:
            return None
        nd, a = found
        x, wexpr = call.args
        xs, ys = static_shape(x), static_shape(call)
        w = _const_weight(wexpr, self.bindings)
        if xs is None or ys is None or w is None:
            return None
        return nd, a, x, xs, ys, w


@mutator
class _ConvToGemm(_Rewriter):
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102
        call = super().visit_call_(call)
        found = self.static_conv(call)
        if found is None or int(found[1].groups) != 1:
            return call
        nd, a, x, xs, ys, w = found
        strides, dils, lo, hi = _geometry(nd, a)
        ksize = list(w.shape[2:])
        out_dtype = _out_dtype(a, x)
        wdt = _dtype(x)  # the GEMM reads the weight in the input's dtype (float16 after ToMixedPrecision)
        wm = self.const(w.reshape(w.shape[0], -1), wdt)
        identity = all(k == 1 for k in ksize) and all(s == 1 for s in strides) and not any(lo + hi)
        if identity:  # 1x1, stride 1, no padding: the input is its own im2col
            cols = x
        else:
            cols = self.builder_.emit_te(im2col, x, ksize, strides, dils, lo, ys[2:],
                                         primfunc_name_hint="im2col")
        # the result is returned, not emitted: it takes the conv's binding, so FuseOps sees the epilogue read it
        return self.builder_.call_te(gemm_nchw, wm, cols, out_dtype, primfunc_name_hint="conv_gemm")


@tvm.transform.module_pass(opt_level=0, name="convdsl.gpu.ConvToGemm")
def ConvToGemm(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - a pass, named like TVM's
    """conv(x, W const), groups 1  =>  GEMM(W.reshape(O, -1), im2col(x)), output NCHW."""
    return _ConvToGemm(mod).run()


# ---- depthwise as a spatial kernel -------------------------------------------------------------
def depthwise_direct(x: te.Tensor, w: te.Tensor, strides, dilations, pads_lo, out: list[int],
                     out_dtype: str) -> te.Tensor:
    """y[n, o, *p] = sum over taps of w[o, 0, *t] * x[n, o // m, p*s + t*d - pad] (m: channel multiplier),
    one expression per output element (no reduction axis): a spatial kernel."""
    n_, c_ = int(x.shape[0]), int(x.shape[1])
    o_ = int(w.shape[0])
    mult = o_ // c_
    size = [int(v) for v in x.shape[2:]]
    ksize = [int(v) for v in w.shape[2:]]
    acc = "float32" if out_dtype in ("float16", "bfloat16") else out_dtype
    taps = list(np.ndindex(*ksize))

    def f(n, o, *p):
        c = o // mult if mult > 1 else o
        total = None
        for t in taps:
            pos = [pi * s + ti * d - lo for pi, ti, s, d, lo in zip(p, t, strides, dilations, pads_lo)]
            term = w[(o, 0, *t)].astype(acc) * _padded_read(x, n, c, pos, size).astype(acc)
            total = term if total is None else total + term
        return total.astype(out_dtype) if acc != out_dtype else total

    return te.compute((n_, o_, *out), f, name="depthwise")


@mutator
class _DepthwiseDirect(_Rewriter):
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102
        call = super().visit_call_(call)
        found = self.static_conv(call)
        if found is None:
            return call
        nd, a, x, xs, ys, w = found
        groups = int(a.groups)
        if groups == 1 or groups != xs[1] or w.shape[1] != 1 or math.prod(w.shape[2:]) > MAX_DEPTHWISE_TAPS:
            return call
        strides, dils, lo, _ = _geometry(nd, a)
        wc = self.const(w, _dtype(x))
        return self.builder_.call_te(depthwise_direct, x, wc, strides, dils, lo, ys[2:], _out_dtype(a, x),
                                     primfunc_name_hint="depthwise")


@tvm.transform.module_pass(opt_level=0, name="convdsl.gpu.DepthwiseDirect")
def DepthwiseDirect(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802
    """depthwise conv(x, W const), at most 64 taps  =>  one spatial kernel (taps unrolled)."""
    return _DepthwiseDirect(mod).run()


# ---- 16-bit compute ---------------------------------------------------------------------------
_MATMUL = "relax.matmul"


def ComputeIn(dtype: str):  # noqa: N802
    """conv/matmul(x, W) in float32  =>  astype(conv/matmul(astype(x, dtype), astype(W, dtype), out f32)).

    Only the GEMM-shaped ops read ``dtype``; everything else stays float32 (the casts of
    constant weights fold at compile time)."""

    @mutator
    class _Cast(_Rewriter):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = super().visit_call_(call)
            if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
                return call
            name = call.op.name
            if name not in _CONV_OPS and name != _MATMUL:
                return call
            if any(not isinstance(a.ty, relax.TensorType) or str(a.ty.dtype) != "float32" for a in call.args[:2]):
                return call
            x = self.builder_.emit(relax.op.astype(call.args[0], dtype))
            w = self.builder_.emit(relax.op.astype(call.args[1], dtype))
            if name == _MATMUL:
                return relax.op.matmul(x, w, out_dtype="float32")
            a = call.attrs
            fn = {1: relax.op.nn.conv1d, 2: relax.op.nn.conv2d, 3: relax.op.nn.conv3d}[_CONV_OPS[name]]
            return fn(x, w, strides=a.strides, padding=a.padding, dilation=a.dilation, groups=a.groups,
                      data_layout=a.data_layout, kernel_layout=a.kernel_layout, out_layout=a.out_layout,
                      out_dtype="float32")

    @tvm.transform.module_pass(opt_level=0, name=f"convdsl.gpu.ComputeIn_{dtype}")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _Cast(mod).run()

    return _pass


@tvm.transform.module_pass(opt_level=0, name="convdsl.gpu.HalfPrecision")
def HalfPrecision(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802
    """float16 compute: TVM's ``ToMixedPrecision`` (activations stored in float16, GEMMs accumulate
    in float32) where it can; it refuses some modules (TVM 0.27: ``clip`` with scalar bounds, as in
    relu6), and those get ``ComputeIn("float16")`` (GEMM inputs cast to float16, all else float32)."""
    try:
        return relax.transform.ToMixedPrecision(out_dtype="float32")(mod)
    except (tvm.error.InternalError, RuntimeError, ValueError):
        return ComputeIn("float16")(mod)


# ---- tensor cores for small float16 GEMMs ------------------------------------------------------
TC_MIN_EXTENT = 16  # a GEMM with an I, J or K extent below the wmma fragment (16) stays on DLight's rules
DLIGHT_TC_THRESHOLD = 64  # DLight's Matmul tensorizes only when I, J and K all exceed this


def _gemm_shape(func) -> tuple[int, int, int, str] | None:
    """(I, J, K, input dtype) of ``func``'s GEMM in DLight's normal form C[S, I, J] += A[S, I, K] B[S, J, K],
    found by the normalization DLight's Matmul rule applies (on a scratch schedule); None when ``func``
    is not one GEMM with static extents."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import get_root_block
    from tvm.s_tir.dlight.gpu.matmul import get_in_out_dtypes, get_index_map, get_reduction_blocks

    sch = s_tir.Schedule(func)
    blocks = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
    if blocks is None or len(blocks) != 1:
        return None
    block = blocks[0]
    maps = get_index_map(sch.get(block))
    if not maps:
        return None
    matmul_map, a_map, b_map, c_map = maps
    a, b, c = sch.reindex(block, ("read", 0)), sch.reindex(block, ("read", 1)), sch.reindex(block, ("write", 0))
    sch.transform_layout(a, ("write", 0), a_map)
    sch.transform_layout(b, ("write", 0), b_map)
    sch.transform_layout(c, ("read", 0), c_map)
    sch.transform_block_layout(block, matmul_map)
    stmt = sch.get(block)
    extents = [iv.dom.extent for iv in stmt.iter_vars[1:]]
    if len(extents) != 3 or not all(isinstance(e, tirx.IntImm) for e in extents):
        return None
    return (*(int(e.value) for e in extents), get_in_out_dtypes(stmt)[0])


def _make_tensor_core_rule():
    """DLight rule (defined lazily: DLight imports the CUDA intrinsics): see ``SmallTensorCoreMatmul``."""
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
    from tvm.s_tir.dlight.gpu.matmul import MatmulTensorization, check_sm_version

    class SmallTensorCoreMatmul(GPUScheduleRule):
        """float16 GEMMs that DLight's ``Matmul`` leaves on SIMT because an I, J or K extent is <= 64
        (ResNet's 64-channel convs, attention with head dim <= 64), handed to DLight's own tensor-core
        schedule (``MatmulTensorization``: wmma, 128 x 128 x 64 tiles, the GEMM padded to them).  Declines
        (None: the next rule, DLight's ``Matmul``, takes the function) anything else: not CUDA sm_70+, not
        float16 inputs, dynamic extents, an extent < 16, every extent > 64 (DLight's own tensor-core
        path), or a failed tensorization."""

        def apply(self, func, target, tunable):
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            if target.kind.name != "cuda" or check_sm_version(str(target.attrs.get("arch", ""))) < 70:
                return None
            if func.attrs is not None and "dlight.do_not_tensorize" in func.attrs.keys():
                return None
            try:
                shape = _gemm_shape(func)
            except Exception:  # noqa: BLE001 - not a GEMM DLight can normalize
                return None
            if shape is None or shape[3] != "float16":
                return None
            if min(shape[:3]) < TC_MIN_EXTENT or min(shape[:3]) > DLIGHT_TC_THRESHOLD:
                return None
            try:
                return MatmulTensorization().apply(func, target, tunable)
            except Exception:  # noqa: BLE001 - any schedule error: leave the function to DLight's rules
                return None

    return SmallTensorCoreMatmul


_TC_RULE = None


def tensor_core_rule():
    """A fresh ``SmallTensorCoreMatmul`` DLight rule (to run before DLight's ``Matmul``)."""
    global _TC_RULE  # noqa: PLW0603 - the class is built once, on first use
    if _TC_RULE is None:
        _TC_RULE = _make_tensor_core_rule()
    return _TC_RULE()
