"""Blocked layout for CPU convolutions: a Relax rewrite before legalization.

    conv2d(x, W)          NCHW x OIHW   =>  conv2d_nchwc(pack(x), W')   NCHW[ib]c x OIHW[ib]i[ob]o
    conv2d 3x3 stride 1   (f32, CPU)    =>  winograd_output(winograd_gemm(winograd_input(pack(x)), U))
                                            where winograd.choose_m takes it (winograd.py)
    depthwise conv2d      NCHW x OIHW   =>  dwconv_nchwc(pack(x), W')   NCHW[b]c  x [C/b, KH, KW, b]
    grouped conv2d        NCHW x OIHW   =>  conv2d_nchwc(x, W', groups)  each group whole blocks, neighbouring
                                            groups merged (block-diagonal W) where narrower (grouped_blocks)
    matmul(x, W const)    [..,K] x [K,N] =>  dense_packed(x, W')         W' = [N/nb, K, nb]
    int8 conv / depthwise (lower_quant's kernels, their spec on the PrimFunc)
                                         =>  the same kernel on NCHW[b]c in, NCHW16c out

Weights are constants, so they are packed here, once, in NumPy.  The blocked
layout propagates through what does not mix channels (elementwise ops with a
per-channel or scalar constant, elementwise ops of two tensors with the same
blocking, activations, max/avg/adaptive pooling, spatial mean), so a ResNet runs
blocked from its first conv to its global pool; a value returns to NCHW (one
``unpack_nchwc`` kernel, made once per value) only where an op that is not
blocked reads it, and at the function's outputs.  This is NeoCPU's layout
planning (USENIX ATC'19) in its simplest form: one block size per channel count
(16 fp32 lanes of AVX-512 when the count allows it, else 8, 4), no search.

Precondition: a Relax module from ``lower_graph`` (NCHW/OIHW convs with constant
weights).  Postcondition: the same function; convs, depthwise convs and matmuls
with a constant weight in float32 are ``call_tir`` of the ``kernels.py`` computes.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from convdsl.backends.tvm.schedules import amx, bf16, kernels, winograd
from convdsl.backends.tvm.schedules.kernels import divisors

_UNARY = {"relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh", "relax.nn.silu", "relax.nn.gelu",
          "relax.nn.gelu_tanh", "relax.exp", "relax.negative", "relax.nn.leakyrelu", "relax.abs", "relax.square",
          "relax.sqrt", "relax.rsqrt", "relax.nn.relu6", "relax.erf", "relax.log", "relax.round", "relax.astype"}
_BINARY = {"relax.add", "relax.multiply", "relax.subtract", "relax.divide", "relax.maximum", "relax.minimum",
           "relax.power"}


def channel_block(c: int) -> int | None:
    """Lanes of the channel block for ``c`` channels (None: leave it NCHW)."""
    for b in (16, 8, 4):
        if c % b == 0:
            return b
    return c if c < 16 else None


def dense_block(n: int) -> int:
    for b in (16, 8, 4, 2):
        if n % b == 0:
            return b
    return 1


def pack_conv_weight(w: np.ndarray, ib: int, ob: int) -> np.ndarray:
    # OIHW -> [O/ob, I/ib, KH, KW, ib, ob]; a grouped conv's I is already its groups' width (C / groups)
    o, i, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(o // ob, ob, i // ib, ib, kh, kw).transpose(0, 2, 4, 5, 3, 1))


GROUP_BLOCKS = (16, 8, 4)  # channel blocks a grouped conv may take (narrower groups: the generic schedule)
# Groups merged at most in pairs.  Groups of 4 merged by 4 were slower than 4c blocks (0.95 against 0.79 ms at
# 128 x 56 x 56: the block-diagonal weight, 4x the bytes, leaves L1).
MAX_MERGE = 2
# Merged groups' vectors at most this many f32 lanes (256 bits).  Merging two groups of 8 into a 16-lane zmm block
# keeps the layout around the conv but issues as many zmm FMAs as the unmerged conv issues ymm ones: level on the
# AVX-512 Xeon (one thread, A/B in one process: RegNetY-400MF 14.40 ms merged against 14.29 in 8c blocks,
# ResNeXt-50's four grouped 3x3 shapes 3.41 against 3.31), twice the cycles on Zen 4, which runs a zmm instruction
# as two 256-bit halves (RegNetY-400MF on Zen 4, 2 threads, peers.py's network, a scratch A/B in one process,
# medians of 15 alternating rounds: f32 6.05 -> 5.76 ms unmerged, bf16 5.29 -> 5.12, int8 5.55 -> 5.15).
# AVX2's pairs of 4-wide groups in one 8-lane ymm block stay merged.
MERGE_LANES = 8


def grouped_blocks(c: int, o: int, groups: int, lanes: int | None, vector: int) -> tuple[int, int, int] | None:
    """(ib, ob, merge) of a grouped conv with ``c`` -> ``o`` channels on the blocked template; None: leave it
    to the generic schedule (groups narrower than 4 channels, or widths that no ``GROUP_BLOCKS`` divides).
    ``lanes``: the block of its input (None: NCHW); ``vector``: f32 lanes of a vector register.

    The groups' own blocks are the widest ``GROUP_BLOCKS`` that their widths divide (``native``).  Preferred
    are the blocks of the layout around the conv (the input's; ``channel_block(o)`` out), with ``merge``
    neighbouring groups computed as one whose weight is block-diagonal (``merge_groups``; merge 1: the groups
    are whole blocks as they are) where that costs no more vector instructions: ``merge`` times the
    multiply-adds, in vectors ``merge`` times as full as the native output block's and no wider than
    ``MERGE_LANES`` (AVX2's groups of 4 in blocks of 8: merge 2, each FMA 8 lanes instead of 4; RegNet's groups of
    8 in AVX-512's blocks of 16 are not merged; at most ``MAX_MERGE``).  The layout
    then stays as it is: no re-blocking copy, and the residual adds and SE multiplies after the conv see the
    same blocks.  Else the native blocks, the input re-blocked by the conv's padded copy."""
    if groups <= 1 or c % groups or o % groups:
        return None
    cg, og = c // groups, o // groups
    native_ib = next((b for b in GROUP_BLOCKS if cg % b == 0), None)
    native_ob = next((b for b in GROUP_BLOCKS if og % b == 0), None)
    if native_ib is None or native_ob is None:
        return None
    ib, ob = lanes or channel_block(c), channel_block(o)
    if ib in GROUP_BLOCKS and ob in GROUP_BLOCKS:
        for m in divisors(groups):
            if m > MAX_MERGE:
                break
            if cg * m % ib == 0 and og * m % ob == 0 and \
                    (m == 1 or m * min(native_ob, vector) <= min(ob, vector, MERGE_LANES)):
                return ib, ob, m
    return native_ib, native_ob, 1


def merge_groups(w: np.ndarray, groups: int, merge: int) -> np.ndarray:
    """The OIHW weight [O, C/groups, KH, KW] of a grouped conv as the same conv with groups / merge groups:
    each ``merge`` neighbouring groups one, its weight [O, C/groups * merge, KH, KW] block-diagonal (output
    channel j of merged group g reads only its own group's input channels; zeros elsewhere)."""
    o, cg, kh, kw = w.shape
    part = np.arange(o) // (o // groups) % merge  # which of its merged group's parts an output channel is
    out = np.zeros((o, cg * merge, kh, kw), w.dtype)
    for j in range(merge):
        out[part == j, j * cg:(j + 1) * cg] = w[part == j]
    return out


def pack_dw_weight(w: np.ndarray, b: int) -> np.ndarray:
    # [C, 1, KH, KW] -> [C/b, KH, KW, b]
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c // b, b, kh, kw).transpose(0, 2, 3, 1))


def pack_dense_weight(w: np.ndarray, nb: int) -> np.ndarray:
    # [K, N] -> [N/nb, K, nb]
    k, n = w.shape
    return np.ascontiguousarray(w.reshape(k, n // nb, nb).transpose(1, 0, 2))


def static_shape(e: relax.Expr) -> list[int] | None:
    """The static shape of a Relax tensor expression, or None (unknown rank or symbolic dims)."""
    t = e.ty
    if not isinstance(t, relax.TensorType) or t.shape is None:
        return None
    try:
        return [int(v) for v in t.shape.values]
    except (TypeError, AttributeError):
        return None


def batch_shape(e: relax.Expr) -> list | None:
    """The shape of a Relax tensor expression whose dims after the first are static: the first
    is a size or a symbolic expression (a dynamic batch); None otherwise."""
    t = e.ty
    if not isinstance(t, relax.TensorType) or t.shape is None or not hasattr(t.shape, "values"):
        return None
    values = list(t.shape.values)
    try:
        rest = [int(v) for v in values[1:]]
    except (TypeError, AttributeError):
        return None
    if not values:
        return []
    first = values[0]
    return [int(first) if isinstance(first, tvm.tirx.IntImm) else first] + rest


def same_shape(a: list | None, b: list | None) -> bool:
    """Two ``batch_shape`` results are the same shape (symbolic dims compared structurally)."""
    from tvm_ffi import structural_equal

    if a is None or b is None or len(a) != len(b):
        return False
    return all(x == y if isinstance(x, int) and isinstance(y, int)
               else not isinstance(x, int) and not isinstance(y, int) and structural_equal(x, y)
               for x, y in zip(a, b))


def _dtype(e: relax.Expr) -> str | None:
    t = e.ty
    return str(t.dtype) if isinstance(t, relax.TensorType) else None


INT8_LANES = 16  # output channel block of a blocked int8 conv (the VNNI / AMX accumulator's 16 int32 lanes)
OPAQUE, OUT_ELEMWISE_FUSABLE = 8, 4  # relax's OpPatternKind kOpaque, kOutEWiseFusable

_CONST = type(relax.const(np.zeros(1, "float32")))


def _is_const(e: relax.Expr) -> bool:
    return isinstance(e, _CONST) and hasattr(e.value, "numpy")


def _f32_or_unset(dtype) -> bool:
    return dtype is None or str(dtype) in ("", "float32", "void")


def _ints(v) -> list[int]:
    return [int(x) for x in v]


@mutator
class _Blocker(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, precision: str = "f32", winograd: bool = True):
        super().__init__(mod)
        self.winograd = winograd  # 3x3 stride-1 f32 convs as Winograd F(m x m, 3x3) where winograd.py chooses
        self.precision = precision  # "bf16": convs and matmuls with bf16 operands (bf16.py) where they fit
        self.blocked: dict = {}  # new var -> block lanes
        self.nchw: dict = {}  # blocked var -> its NCHW copy
        self.packed: dict = {}  # (NCHW or other-blocked var, lanes) -> blocked copy
        self._lanes: int | None = None  # block of the value being visited
        self.uses: dict = {}  # original var -> its uses in the function being rewritten
        self.fused_out: set = set()  # new vars a conv kernel writes (its epilogue included: FuseOps fuses it)
        self._fused_out = False  # the value being visited is one
        self.users: dict = {}  # original var -> [(binding var, call)] reading it
        self.absorbed: dict = {}  # original var of an epilogue op computed by an AMX conv -> that conv's new var
        self._absorb: list = []  # the epilogue vars of the conv being visited
        self._binding = None  # the original var of the binding being visited

    # ---- layout transforms, made once per value ----
    def to_nchw(self, e: relax.Expr) -> relax.Expr:
        if not (isinstance(e, relax.Var) and e in self.blocked):
            return e
        if e not in self.nchw:
            self.nchw[e] = self.builder_.emit(self.builder_.call_te(kernels.unpack_nchwc, e,
                                                                    primfunc_name_hint="unpack_nchwc"))
        return self.nchw[e]

    def to_blocked(self, e: relax.Expr, b: int) -> relax.Expr:
        """``e`` in blocks of ``b`` channels: itself, one copy from its other blocks (``kernels.pad_spatial``
        re-blocking, no padding), or packed from NCHW."""
        src = self.lanes(e)
        if src == b:
            return e
        shape = batch_shape(e) if src is not None else None
        if src is None or shape is None or shape[1] * src % b:
            e = self.to_nchw(e)
            src = None
        key = (e, b)
        if key not in self.packed:
            call = self.builder_.call_te(kernels.pack_nchwc, e, b, primfunc_name_hint="pack_nchwc") if src is None \
                else self.builder_.call_te(kernels.pad_spatial, e, 0, 0, 0, 0, b, primfunc_name_hint="reblock_nchwc")
            v = self.builder_.emit(call)
            self.blocked[v] = b
            self.packed[key] = v
        return self.packed[key]

    def lanes(self, e: relax.Expr) -> int | None:
        return self.blocked.get(e) if isinstance(e, relax.Var) else None

    # ---- bindings ----
    def count_uses(self, func: relax.Function) -> None:
        self.uses, self.users, self.absorbed = {}, {}, {}
        body = func.body
        for block in (body.blocks if isinstance(body, relax.SeqExpr) else []):
            for b in block.bindings:
                if isinstance(b, relax.VarBinding) and isinstance(b.value, relax.Call):
                    for a in b.value.args:
                        if isinstance(a, relax.Var):
                            self.users.setdefault(a, []).append((b.var, b.value))

        def visit(e) -> None:
            if isinstance(e, relax.Call):
                for a in e.args:
                    for f in (a.fields if isinstance(a, relax.Tuple) else [a]):
                        if isinstance(f, relax.Var):
                            self.uses[f] = self.uses.get(f, 0) + 1

        relax.analysis.post_order_visit(func, visit)

    def bf16_input(self, original: relax.Expr, xb: relax.Expr) -> relax.Expr:
        """``xb`` as bf16 bits (uint16) for a kernel that rounds its input to bf16 anyway (an AMX conv's pack, a
        vdpbf16ps conv's padded copy, a bf16 depthwise conv): where a conv kernel writes ``xb`` (FuseOps then
        fuses the rounding into its epilogue's store) and the kernel reading it is its only reader, half the
        bytes go through memory, the same values arrive.  Else ``xb`` itself."""
        if not (isinstance(xb, relax.Var) and xb in self.fused_out and _dtype(xb) == "float32"
                and isinstance(original, relax.Var) and self.uses.get(original, 0) == 1):
            return xb
        return self.builder_.emit(self.builder_.call_te(kernels.to_bf16_nchwc, xb, primfunc_name_hint="to_bf16"))

    def f32_input(self, xb: relax.Expr) -> relax.Expr:
        """``xb`` as f32 (bf16 bits widened) for a kernel that reads f32; ``_reads_bf16`` chooses bf16 bits only
        for readers that take them, so this is a guard."""
        if _dtype(xb) != "uint16":
            return xb
        return self.builder_.emit(self.builder_.call_te(kernels.from_bf16_nchwc, xb, primfunc_name_hint="from_bf16"))

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.absorbed:  # an epilogue op computed inside the AMX conv before it
            self.set_var_remap(binding.var, self.absorbed[binding.var])
            return
        self._binding = binding.var
        self._lanes = None
        self._fused_out = False
        value = self.visit_expr(binding.value)
        lanes = self._lanes
        if isinstance(value, relax.Var) and value in self.blocked:
            lanes = self.blocked[value]
        elif isinstance(value, relax.Tuple):
            value = relax.Tuple([self.to_nchw(f) for f in value.fields])
        output = not isinstance(binding.var, relax.DataflowVar)
        if output and lanes is not None:
            value, lanes = self.to_nchw(value if isinstance(value, relax.Var) else self.builder_.emit(value)), None
        if output:
            new = self.builder_.emit_output(value, name_hint=binding.var.name)
        elif isinstance(value, relax.Var):
            new = value
        else:
            new = self.builder_.emit(value, name_hint=binding.var.name)
        if lanes is not None:
            self.blocked[new] = lanes
        if self._fused_out and not output:
            self.fused_out.add(new)
        for var in self._absorb:  # the epilogue ops the kernel just made computes
            self.absorbed[var] = new
        self._absorb = []
        self.set_var_remap(binding.var, new)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        args = [self.visit_expr(a) for a in call.args]
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        handler = {
            "relax.nn.conv2d": self._conv2d,
            "relax.matmul": self._matmul,
            "relax.nn.max_pool2d": self._pool,
            "relax.nn.avg_pool2d": self._pool,
            "relax.nn.adaptive_avg_pool2d": self._adaptive_pool,
            "relax.mean": self._mean,
            "relax.call_tir": self._int8_conv,
        }.get(name)
        out = handler(call, args) if handler else None
        if out is None and name in _UNARY and self.lanes(args[0]):
            self._lanes = self.lanes(args[0])
            self._fused_out = args[0] in self.fused_out and name != "relax.astype"
            out = relax.Call(call.op, args, call.attrs, call.ty_args)
        if out is None and name in _BINARY:
            out = self._binary(call, args)
            self._fused_out = out is not None and self._lanes is not None \
                and any(isinstance(a, relax.Var) and a in self.fused_out for a in args)
        if out is None:  # not blocked: every operand in NCHW
            out = relax.Call(call.op, [self._nchw_arg(a) for a in args], call.attrs, call.ty_args)
        return out

    def _nchw_arg(self, a: relax.Expr) -> relax.Expr:
        if isinstance(a, relax.Tuple):
            return relax.Tuple([self.to_nchw(f) for f in a.fields])
        return self.to_nchw(a)

    # ---- ops ----
    def _conv2d(self, call: relax.Call, args: list[relax.Expr]) -> relax.Expr | None:
        a = call.attrs
        x, w = args
        if not _is_const(w) or str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW" \
                or str(a.out_layout) != "NCHW" or not _f32_or_unset(a.out_dtype) or _dtype(w) != "float32":
            return None
        lanes = self.lanes(x)
        if lanes is None:
            xs = batch_shape(x)
        else:
            s5 = batch_shape(x)
            xs = [s5[0], s5[1] * s5[4], s5[2], s5[3]]
        wt = w.value.numpy()
        if xs is None or len(xs) != 4 or _dtype(x) not in ("float32", "uint16"):  # uint16: bf16 bits
            return None
        c, o, groups = xs[1], wt.shape[0], int(a.groups)
        stride, dilation, padding = _ints(a.strides), _ints(a.dilation), _ints(a.padding)
        if groups == 1:
            ib = lanes or channel_block(c)
            ob = channel_block(o)
            if ib is None or ob is None:
                return None
            bf16_static = self.precision == "bf16" and isinstance(xs[0], int)
            # bf16 on vdpbf16ps: a CPU without AMX-BF16 (with it, ``_amx_bf16`` below)
            vdpbf16ps = bf16_static and not amx.has_amx_bf16(tvm.target.Target.current(allow_none=True))
            if vdpbf16ps and lanes is None and ib % bf16.PAIR and bf16.PAD_ODD_CHANNELS and _dtype(x) == "float32":
                stem = self._bf16_odd_channels(x, wt, stride, padding, dilation)
                if stem is not None:
                    return stem
            xb = self.to_blocked(x, ib)
            if bf16_static and ib % bf16.PAIR == 0:
                tiles = self._amx_bf16(call.args[0], xb, wt, xs, stride, padding, dilation, ob)
                if tiles is not None:  # (with its epilogue inside, ``_absorb``: nothing fuses after it)
                    self._lanes, self._fused_out = ob, not self._absorb
                    return tiles
            if vdpbf16ps and bf16.conv_fits(c, o, ib):
                # a 3x3 stride-1 conv whose Winograd GEMM has rows enough: f32 F(4,3) (4x fewer multiplies) beats
                # vdpbf16ps (twice the f32 rate); more exact too (winograd.choose_m, ``against_bf16``)
                wino = self._winograd(xb, wt, xs, ib, ob, stride, padding, dilation, groups, True) \
                    if bf16.WINOGRAD_F32 else None
                if wino is not None:
                    self._lanes = ob
                    return wino
                # with AMX, the convs the tiles decline (fewer than 16 input channels: the RGB stem) stay f32:
                # MobileNet-V2's 16 -> 96 1x1 at 112 x 112 took 0.54 ms on vdpbf16ps (its input copy rounds to
                # bf16, and 16 channels are 8 dot products per output), 0.32 in f32, 0.66 on tiles through the
                # f32 acc and less than f32 on tiles with the epilogue in the block loop
                if bf16.BITS_BETWEEN_CONVS:
                    xb = self.bf16_input(call.args[0], xb)
                return self._vdpbf16ps_conv(xb, wt, ib, stride, padding, dilation)
            xb = self.f32_input(xb)
            wino = self._winograd(xb, wt, xs, ib, ob, stride, padding, dilation, groups)
            if wino is not None:
                self._lanes = ob
                return wino
            wc = relax.const(pack_conv_weight(wt, ib, ob))
            self._lanes, self._fused_out = ob, True
            return self.builder_.call_te(kernels.conv2d_nchwc, xb, wc, stride, padding, dilation,
                                         primfunc_name_hint="conv2d_nchwc")
        if groups == c == o and wt.shape[1] == 1:
            b = lanes or channel_block(c)
            if b is None:
                return None
            xb = self.to_blocked(x, b)
            # bf16: the input rounded to bf16 (by the kernel's padded copy, or read as bf16 bits from the conv
            # before it: half the bytes of MobileNet's largest tensors), the weights and arithmetic f32 (rounding
            # the weights too saved nothing and cost MobileNet-V2 top-1 agreement with f32: 88% -> 85%)
            dw_bf16 = self.precision == "bf16" and isinstance(xs[0], int)
            if dw_bf16:
                xb = self.bf16_input(call.args[0], xb)
            else:
                xb = self.f32_input(xb)
            wc = relax.const(pack_dw_weight(wt, b))
            self._lanes, self._fused_out = b, True
            return self.builder_.call_te(kernels.dwconv_nchwc, xb, wc, stride, padding, dilation, dw_bf16,
                                         primfunc_name_hint="dwconv_nchwc")
        return self._grouped_conv(x, wt, c, groups, lanes, stride, padding, dilation)

    def _grouped_conv(self, x, wt, c: int, groups: int, lanes, stride, padding, dilation) -> relax.Expr | None:
        """A grouped conv (1 < groups, not depthwise) on ``conv2d_nchwc`` with ``groups``, its blocks and
        any merging of groups from ``grouped_blocks`` (None: NCHW, TVM's generic schedule).  f32 at every
        precision (bf16's kernels take groups 1 only)."""
        from convdsl.backends.tvm.schedules.cpu import Hardware

        target = tvm.target.Target.current(allow_none=True)
        vector = Hardware.of(target).lanes if target is not None and target.kind.name == "llvm" else Hardware().lanes
        plan = grouped_blocks(c, wt.shape[0], groups, lanes, vector)
        if plan is None:
            return None
        ib, ob, merge = plan
        if merge > 1:
            wt, groups = merge_groups(wt, groups, merge), groups // merge
        # the input as it is blocked (the kernel's padded copy re-blocks it to ib where they differ)
        xb = self.f32_input(self.to_blocked(x, lanes or ib))
        wc = relax.const(pack_conv_weight(wt, ib, ob))
        self._lanes, self._fused_out = ob, True
        return self.builder_.call_te(kernels.conv2d_nchwc, xb, wc, stride, padding, dilation, groups,
                                     primfunc_name_hint="conv2d_nchwc")

    def _int8_conv(self, call: relax.Call, args: list[relax.Expr]) -> relax.Expr | None:
        """A 2-D int8 conv (lower_quant's ``vnni_conv2d``, on AMX tiles or VNNI; recognized by its PrimFunc's
        ``INT8_CONV_ATTR``) made again to read and write the blocked layout: u8 activations then stay blocked
        from one conv to the next, through the requantize / residual / pooling ops between, where NCHW needs
        a transpose in each conv's pack and requantization."""
        import functools

        from convdsl.backends.tvm.lower_quant import (INT8_CONV_ATTR, int8_conv_from_spec, requantizes_in_block_loop,
                                                      vnni_conv2d)

        gv = args[0]
        func = self.builder_.get()[gv] if isinstance(gv, relax.GlobalVar) else None
        spec = func.attrs.get(INT8_CONV_ATTR) if func is not None and func.attrs is not None else None
        if spec is None or not isinstance(args[1], relax.Tuple) or len(args[1].fields) not in (4, 5):
            return None
        x, wt, bias, mult, *offsets = args[1].fields
        c, geo, kw, kind = int8_conv_from_spec(str(spec))
        if kind.startswith("depthwise"):
            return self._int8_depthwise(gv, x, wt, bias, mult, c, kw, kind)
        o = kw["out_channels"]
        ib, ob = self.lanes(x) or channel_block(c), channel_block(o)
        if geo is None:
            # VNNI / AVX2: the kernel's accumulator rows become whole output blocks, the weights' own (16: VNNI's
            # [O/16, C/4, KH, KW, 16, 4]; 8: VNNI's ymm layout for O % 16 == 8, MobileNet-V2's 24-channel
            # projections, and AVX2's [O/8, ..., 8, 4] bytes or [O/8, ..., 8, 2] int16 pairs; a grouped conv's
            # blocks lie in one group). Weights padded past O (U-Net's 2-class head) leave the conv NCHW.
            wob = (static_shape(wt) or [0] * 5)[4]
            ob = wob if wob in (INT8_LANES, INT8_LANES // 2) and o % wob == 0 else None
            if ob is None:
                return None
        elif ob not in (INT8_LANES, INT8_LANES // 2):
            # AMX: 16-channel blocks, or 8 (the requantization reads its C tile rows by channel, and the next conv
            # reads 8c)
            return None
        if ib is None or c % ib or ib < 4:  # e.g. an RGB stem: read in NCHW, write blocked
            ib, xb = None, self.to_nchw(x)
        else:
            xb = self.to_blocked(x, ib)
        self._lanes = ob
        if geo is None:
            wino = self._int8_winograd(xb, wt, bias, mult, c, ib, ob, kw)
            if wino is not None:
                return wino
        amx = {"amx": geo} if geo is not None else {}
        more = {"offsets": offsets[0]} if geo is not None else {}
        kernel = functools.partial(vnni_conv2d, blocked=(ib, ob), **kw, **amx)
        new = self.builder_.call_te(kernel, xb, wt, bias, mult, primfunc_name_hint=gv.name_hint, **more)
        # the spec stays on the blocked kernel (amx_epilogue.py reads it)
        self.builder_.update_func(new.args[0], self.builder_.get()[new.args[0]].with_attr(INT8_CONV_ATTR, spec))
        if requantizes_in_block_loop(geo, (ib, ob), kw["out_dtype"]):  # ends in the extern: nothing fuses after it
            return self._with_pattern(new, OPAQUE)
        return self._with_pattern(new, OUT_ELEMWISE_FUSABLE)  # its epilogue fuses after it, as before

    def _int8_winograd(self, xb, wt, bias, mult, c: int, ib: int | None, ob: int, kw: dict) -> relax.Expr | None:
        """An AVX2 int8 3x3 stride-1 conv in the blocked layout as the exact int8 Winograd F(2,3) kernel
        (``winograd_int8.qconv2d``), or None: the direct kernel (its weights or bias not constants, other geometry,
        a VNNI CPU, ``--no-winograd``, weights whose transformed sums could leave int32)."""
        import functools

        from convdsl.backends.tvm.lower_quant import VPMADDUBSW, VPMADDWD, requantized
        from convdsl.backends.tvm.schedules import winograd_int8

        if not self.winograd or kw.get("instruction") not in (VPMADDUBSW, VPMADDWD) \
                or not _is_const(wt) or not _is_const(bias) \
                or not winograd_int8.applies((static_shape(wt) or [0] * 4)[2:4], kw["stride"], kw["dilation"],
                                             kw.get("groups", 1), ib, ob):
            return None
        xs = batch_shape(xb)
        if xs is None or not all(isinstance(d, int) for d in xs[2:4]):
            return None
        pt, pb, pl, pr = kw["pads"]
        if not winograd_int8.chosen(c, kw["out_channels"], xs[2] + pt + pb - 2, xs[3] + pl + pr - 2):
            return None
        w = winograd_int8.weight_from_packed(wt.value.numpy(), kw["out_channels"], c)
        u = winograd_int8.transform_weight(w)
        if not winograd_int8.exact(u):
            return None
        # the direct kernel's bias has - in_zp * sum(w) folded in (it multiplies the raw input, padded with the zero
        # point); this kernel multiplies x - in_zp (padded with 0)
        b = bias.value.numpy().astype(np.int64) + kw["in_zp"] * w.astype(np.int64).reshape(w.shape[0], -1).sum(1)
        if np.abs(b).max(initial=0) > np.iinfo(np.int32).max:
            return None
        requant = functools.partial(requantized, out_dtype=kw["out_dtype"], out_zp=kw.get("out_zp", 0),
                                    lo=kw.get("lo", 0), hi=kw.get("hi", 0), relu=kw.get("relu", False),
                                    grid=kw.get("grid", False))
        kernel = functools.partial(winograd_int8.qconv2d, requant=requant)
        call = self.builder_.call_te(kernel, xb, relax.const(winograd_int8.pack_weight(u, ob)),
                                     relax.const(b.astype(np.int32)), mult, pads=kw["pads"], in_zp=kw["in_zp"],
                                     shift=kw["shift"], out_channels=kw["out_channels"], ob=ob,
                                     primfunc_name_hint="winograd_qconv2d")  # build.count_winograd's name
        return self._with_pattern(call, OUT_ELEMWISE_FUSABLE)  # its epilogue fuses after it, as the direct one's

    def _int8_depthwise(self, gv, x, wt, bias, mult, c: int, kw: dict, kind: str) -> relax.Expr | None:
        """An int8 depthwise conv (int8_depthwise's NCHW or NCHW16c kernel) made again on NCHW16c in and out
        (``depthwise_int8(in_block=16, out_block=16)``): MobileNet's blocks then stay blocked from the
        expansion conv through the depthwise to the projection."""
        import functools

        from convdsl.backends.tvm.schedules import int8_depthwise

        lanes = int8_depthwise.LANES
        if c % lanes or not _is_const(wt):
            return None
        packed = wt.value.numpy()
        if kind == "depthwise_nchw":  # one scalar per (channel, tap): [C, KH, KW] -> [C/16, KH, KW, 16]
            packed = int8_depthwise.pack_weight(packed[:, None])
        # an input in 8-channel blocks (AVX2's int8 convs write them) is read as it is: two runs of 8 bytes per
        # vector, no re-blocking copy
        ib = self.lanes(x) if self.lanes(x) == lanes // 2 else lanes
        xb = self.to_blocked(x, ib)
        self._lanes = lanes
        kernel = functools.partial(int8_depthwise.depthwise_int8, in_block=ib, out_block=lanes, **kw)
        new = self.builder_.call_te(kernel, xb, relax.const(np.ascontiguousarray(packed, np.float32)), bias, mult,
                                    primfunc_name_hint=gv.name_hint)
        return self._with_pattern(new, OUT_ELEMWISE_FUSABLE)

    def _with_pattern(self, call: relax.Call, pattern: int) -> relax.Call:
        """``call`` (a ``call_te``) with its kernel's FuseOps ``op_pattern`` set to ``pattern``."""
        gv = call.args[0]
        self.builder_.update_func(gv, self.builder_.get()[gv].with_attr("op_pattern", pattern))
        return call

    def _bf16_odd_channels(self, x, wt, stride, padding, dilation) -> relax.Expr | None:
        """A conv over an odd number of NCHW input channels (the RGB stem) on ``vdpbf16ps``, which takes the
        input channels in pairs: packed from NCHW with one zero channel more (one copy, as the f32 conv's pack),
        the weights given a zero input channel.  The products are the same; only the bf16 rounding of the
        input and the weights is new, as in every other bf16 conv."""
        o, c = wt.shape[0], wt.shape[1] + 1
        if not bf16.conv_fits(c, o, c):
            return None
        xb = self.builder_.emit(self.builder_.call_te(kernels.pack_nchwc, x, c, c, primfunc_name_hint="pack_nchwc"))
        return self._vdpbf16ps_conv(xb, np.pad(wt, ((0, 0), (0, 1), (0, 0), (0, 0))), c, stride, padding, dilation)

    def _vdpbf16ps_conv(self, xb, wt, ib: int, stride, padding, dilation) -> relax.Expr:
        """``bf16.conv2d_nchwc_bf16`` over ``xb`` (f32, or bf16 bits) in blocks of ``ib`` channels, its output in
        ``bf16.conv_block``s; its epilogue fuses after it (``fused_out``: a reader that rounds to bf16 takes bits)."""
        self._lanes = bf16.conv_block(wt.shape[0])
        self._fused_out = bf16.BITS_BETWEEN_CONVS
        return self.builder_.call_te(bf16.conv2d_nchwc_bf16, xb, relax.const(bf16.pack_conv_weight(wt, ib, self._lanes)),
                                     stride, padding, dilation, primfunc_name_hint="conv2d_nchwc_bf16")

    def _amx_bf16(self, x, xb, wt, xs, stride, padding, dilation, ob: int) -> relax.Expr | None:
        """The conv on AMX tiles (``amx.conv2d_nchwc_bf16``, ``tdpbf16ps``) where the target has AMX-BF16 and
        the conv at least 16 input channels (None: f32), its output NCHW[ob]c."""
        import functools

        if not amx.has_amx_bf16(tvm.target.Target.current(allow_none=True)) or xs[1] < amx.BF16_CHANNELS // 2 \
                or amx.OC % ob:
            return None
        pt, pl, pb, pr = padding
        geo = amx.Geometry(xs[0], xs[1], xs[2], xs[3], (pt, pb, pl, pr), tuple(stride), tuple(dilation),
                           wt.shape[2], wt.shape[3], amx.BF16_CHANNELS)
        xb = self.bf16_input(x, xb)
        fused = self._amx_bf16_epilogue(xb, wt, geo, ob)
        if fused is not None:
            return fused
        kernel = functools.partial(amx.conv2d_nchwc_bf16, geo=geo, out_blocks=wt.shape[0] // ob, out_block=ob)
        call = self.builder_.call_te(kernel, xb, relax.const(amx.pack_weight_bf16(wt)),
                                     relax.const(geo.offsets(), "int64"), primfunc_name_hint="conv2d_nchwc_bf16_amx")
        # the epilogue (bias, batchnorm, activation, residual) fuses after it, as after any conv
        return self._with_pattern(call, OUT_ELEMWISE_FUSABLE)

    def _epilogue_chain(self, var, o: int):
        """The epilogue after the conv bound to ``var`` that AMX's block loop can apply: (vars, scale, shift, lo,
        hi, end) for conv -> [multiply by a per-channel constant] -> [add a per-channel constant] -> [clip / relu],
        each the only reader of the one before, all dataflow vars; None when not even one op matches."""
        def per_channel(e):  # a constant broadcast over NCHW's channels only: [1, O, 1, 1], [O, 1, 1], a scalar
            if not _is_const(e) or _dtype(e) != "float32":
                return None
            v = e.value.numpy()
            if v.size == 1 and v.ndim <= 4:
                return np.full(o, v.reshape(-1)[0], np.float32)
            if v.size == o and 3 <= v.ndim <= 4 and v.shape[-3] == o and v.shape[-2:] == (1, 1):
                return v.reshape(-1).astype(np.float32)
            return None

        scale, shift, lo, hi, chain, cur = None, None, -np.inf, np.inf, [], var
        while True:
            readers = self.users.get(cur, [])
            if self.uses.get(cur, 0) != 1 or len(readers) != 1 or not isinstance(readers[0][0], relax.DataflowVar):
                break
            nxt, c = readers[0]
            name = c.op.name if isinstance(c.op, tvm.ir.Op) else None
            other = [a for a in c.args if not a.same_as(cur)]
            if name == "relax.multiply" and scale is None and shift is None and len(other) == 1 \
                    and per_channel(other[0]) is not None:
                scale = per_channel(other[0])
            elif name == "relax.add" and shift is None and len(other) == 1 and per_channel(other[0]) is not None:
                shift = per_channel(other[0])
            elif name == "relax.clip":
                bound = lambda a: float(getattr(getattr(a, "value", a), "value", getattr(a, "value", a)))  # noqa: E731
                lo, hi = bound(c.args[1]), bound(c.args[2])
            elif name == "relax.nn.relu":
                lo = 0.0
            else:
                break
            chain.append(nxt)
            cur = nxt
            if name in ("relax.clip", "relax.nn.relu"):
                break
        if not chain:
            return None
        ones, zeros = np.ones(o, np.float32), np.zeros(o, np.float32)
        return (chain, ones if scale is None else scale, zeros if shift is None else shift, lo, hi, cur)

    def _reads_bf16(self, var) -> bool:
        """Whether the only reader of ``var`` is a conv that rounds its input to bf16 (a depthwise conv, or one
        on AMX tiles) and so takes bf16 bits."""
        readers = self.users.get(var, [])
        if self.uses.get(var, 0) != 1 or len(readers) != 1:
            return False
        _, c = readers[0]
        if not (isinstance(c.op, tvm.ir.Op) and c.op.name == "relax.nn.conv2d" and _is_const(c.args[1])
                and c.args[0].same_as(var) and _dtype(c.args[1]) == "float32" and str(c.attrs.data_layout) == "NCHW"
                and str(c.attrs.kernel_layout) == "OIHW" and str(c.attrs.out_layout) == "NCHW"
                and _f32_or_unset(c.attrs.out_dtype)):
            return False
        w, groups = c.args[1].value.numpy(), int(c.attrs.groups)
        o, cin = w.shape[0], w.shape[1] * groups
        if groups == cin == o and w.shape[1] == 1:
            return True
        ob = channel_block(o)
        return groups == 1 and cin >= amx.BF16_CHANNELS // 2 and ob is not None and amx.OC % ob == 0 \
            and cin % amx.OC == 0

    def _amx_bf16_epilogue(self, xb, wt, geo, ob: int) -> relax.Expr | None:
        """The conv on AMX tiles with the epilogue after it (``_epilogue_chain``) applied in its block loop
        (``amx.conv2d_nchwc_bf16_epilogue``), writing bf16 bits where its reader rounds to bf16 anyway."""
        import functools

        o = wt.shape[0]
        if ob != amx.OC or not isinstance(self._binding, relax.DataflowVar):  # (an output var keeps its value)
            return None
        found = self._epilogue_chain(self._binding, o)
        if found is None:
            return None
        chain, scale, shift, lo, hi, end = found
        readers = self.users.get(end, [])
        if not readers or not all(isinstance(c.op, tvm.ir.Op) and c.op.name == "relax.nn.conv2d" for _, c in readers):
            return None  # e.g. a residual add: fused after the conv (with acc), it costs no pass of its own
        out_dtype = "uint16" if self._reads_bf16(end) else "float32"
        pad = (-o) % amx.OC
        kernel = functools.partial(amx.conv2d_nchwc_bf16_epilogue, geo=geo, out_blocks=o // amx.OC,
                                   out_dtype=out_dtype, lo=lo, hi=hi)
        call = self.builder_.call_te(kernel, xb, relax.const(amx.pack_weight_bf16(wt)),
                                     relax.const(geo.offsets(), "int64"), relax.const(np.pad(scale, (0, pad))),
                                     relax.const(np.pad(shift, (0, pad))), primfunc_name_hint="conv2d_nchwc_bf16_amx_epi")
        self._absorb = chain
        return self._with_pattern(call, OPAQUE)

    def _amx_bf16_dense(self, x, wt, xs) -> relax.Expr | None:
        """x [..., K] @ wt [K, N] on AMX tiles (``amx.dense_bf16``): the rows as the pixels of a 1x1 conv."""
        import functools

        from convdsl.backends.tvm.schedules import amx

        k, n = wt.shape
        if not amx.has_amx_bf16(tvm.target.Target.current(allow_none=True)) or k <= amx.BF16_CHANNELS // 2 \
                or not all(isinstance(d, int) for d in xs):
            return None
        rows = int(np.prod(xs[:-1]))
        geo = amx.Geometry(1, k, 1, rows, (0, 0, 0, 0), (1, 1), (1, 1), 1, 1, amx.BF16_CHANNELS)
        kernel = functools.partial(amx.dense_bf16, geo=geo, out_channels=n)
        packed = amx.pack_weight_bf16(np.ascontiguousarray(wt.T)[:, :, None, None])  # [N, K, 1, 1]
        call = self.builder_.call_te(kernel, x, relax.const(packed), relax.const(geo.offsets(), "int64"),
                                     primfunc_name_hint="dense_bf16_amx")
        return self._with_pattern(call, OUT_ELEMWISE_FUSABLE)  # bias, GELU, residual fuse after it

    def _winograd(self, xb, wt, xs, ib, ob, stride, padding, dilation, groups, against_bf16: bool = False
                  ) -> relax.Expr | None:
        """The three Winograd kernels (``winograd.py``) for a conv they fit and the per-layer rule
        chooses, on a CPU target (None: the direct conv; ``against_bf16``: the direct conv is vdpbf16ps's)."""
        target = tvm.target.Target.current(allow_none=True)
        if not self.winograd or (self.precision != "f32" and not against_bf16) or target is None \
                or target.kind.name != "llvm" \
                or not winograd.applies(wt.shape[2:], stride, dilation, groups, "float32"):
            return None
        from convdsl.backends.tvm.schedules.cpu import Hardware, dense_rows

        pt, pl, pb, pr = padding
        oh, ow = xs[2] + pt + pb - 2, xs[3] + pl + pr - 2
        c, o = wt.shape[1], wt.shape[0]
        hw = Hardware.of(target)
        m = winograd.choose_m(c, o, oh, ow, hw.registers, against_bf16)
        if m is None or oh < 1 or ow < 1:
            return None
        xb = self.f32_input(xb)  # (bf16 bits widened: Winograd reads f32)
        ty, tx = winograd.tiles(oh, ow, m)
        rows = dense_rows(ty * tx, o // ob, hw, hw.vectors(ob))  # tiles per image
        call = self.builder_.call_te(winograd.winograd_input, xb, m, [pt, pl, pb, pr], oh, ow, rows,
                                     primfunc_name_hint="winograd_input")
        # opaque to FuseOps: the input transform is injective, and FuseOps would otherwise fuse the
        # previous layer's output transform and epilogue into it (one kernel no rule schedules)
        v = self.builder_.emit(self._with_pattern(call, OPAQUE))
        u = relax.const(winograd.weight_transform(wt, m, ob))
        mm = self.builder_.emit(self.builder_.call_te(winograd.winograd_gemm, v, u, primfunc_name_hint="winograd_gemm"))
        call = self.builder_.call_te(winograd.winograd_output, mm, m, oh, ow, ob,
                                     primfunc_name_hint="winograd_output")
        # fused like a conv (its epilogue into it), not as an injective op: a residual add of two
        # branches would otherwise join the other branch's conv and take this epilogue with it
        return self._with_pattern(call, OUT_ELEMWISE_FUSABLE)

    def _matmul(self, call: relax.Call, args: list[relax.Expr]) -> relax.Expr | None:
        x, w = self.to_nchw(args[0]), args[1]
        xs = batch_shape(x)
        if not _is_const(w) or _dtype(w) != "float32" or _dtype(x) != "float32" or xs is None \
                or len(xs) < 1 or len(static_shape(w) or []) != 2 or not _f32_or_unset(call.attrs.out_dtype):
            return None
        wt = w.value.numpy()
        if len(xs) == 1:
            return None
        if self.precision == "bf16" and isinstance(xs[0], int):  # AMX pads N to whole 32s (a classifier's 1000)
            tiles = self._amx_bf16_dense(x, wt, xs)
            if tiles is not None:
                return tiles
        if self.precision == "bf16" and bf16.dense_fits(*wt.shape) and isinstance(xs[0], int):
            rows = None
            target = tvm.target.Target.current(allow_none=True)
            if len(xs) >= 2 and isinstance(xs[-2], int) and target is not None and target.kind.name == "llvm":
                from convdsl.backends.tvm.schedules.cpu import Hardware, gemm_tile

                rows = bf16.dense_rows(xs[-2], gemm_tile(xs[-2], -(-wt.shape[1] // bf16.LANES), Hardware.of(target))[0])
            return self.builder_.call_te(bf16.dense_packed_bf16, x, relax.const(bf16.pack_dense_weight(wt)), rows,
                                         wt.shape[1], primfunc_name_hint="dense_packed_bf16")
        nb = dense_block(wt.shape[1])
        rows = None
        target = tvm.target.Target.current(allow_none=True)
        if len(xs) >= 2 and isinstance(xs[-2], int) and target is not None and target.kind.name == "llvm":
            from convdsl.backends.tvm.schedules.cpu import Hardware, dense_rows

            hw = Hardware.of(target)
            rows = dense_rows(xs[-2], wt.shape[1] // nb, hw, hw.vectors(nb))
        return self.builder_.call_te(kernels.dense_packed, x, relax.const(pack_dense_weight(wt, nb)), rows,
                                     primfunc_name_hint="dense_packed")

    def _binary(self, call: relax.Call, args: list[relax.Expr]) -> relax.Expr | None:
        la, lb = self.lanes(args[0]), self.lanes(args[1])
        if la is None and lb is None:
            return None
        if la is not None and lb is not None:
            gated = self._blocked_gate(call, args, la, lb)
            if gated is not None:
                return gated
            if la != lb:  # blocks of two widths (a grouped conv's 8 beside 16): the narrower re-blocked, one copy
                lanes = max(la, lb)
                s5 = batch_shape(args[0] if la < lb else args[1])
                if s5 is None or s5[1] * s5[4] % lanes:
                    return None
                args = [self.to_blocked(a, lanes) for a in args]
            if not same_shape(batch_shape(args[0]), batch_shape(args[1])):
                return None
            self._lanes = self.lanes(args[0])
            return relax.Call(call.op, args, call.attrs, call.ty_args)
        i = 0 if la is not None else 1
        lanes, t, other = la or lb, args[i], args[1 - i]
        if not _is_const(other):
            # a tensor in NCHW of the blocked operand's shape (a residual from before the first blocked
            # layer), or one value per image and channel (a squeeze-and-excitation gate): blocked once, so
            # that the result stays blocked rather than the blocked operand going back to NCHW
            s5, so = batch_shape(t), batch_shape(other)
            if so is None or len(so) != 4 or _dtype(other) != _dtype(t):
                return None
            if same_shape([s5[0], s5[1] * s5[4], *s5[2:4]], so):
                packed = self.to_blocked(other, lanes)
            elif same_shape([s5[0], s5[1] * s5[4], 1, 1], so):
                # the gate packed by a kernel of its own: fused into the op, the ops that made the gate (a bias,
                # the sigmoid) would run again for every pixel (EfficientNet-B0 17.3 -> 21.3 ms)
                call_ = self.builder_.call_te(kernels.pack_nchwc, self.to_nchw(other), lanes,
                                              primfunc_name_hint="pack_gate_nchwc")
                packed = self.builder_.emit(self._with_pattern(call_, OPAQUE))
            else:
                return None
            new = [None, None]
            new[i], new[1 - i] = t, packed
            self._lanes = lanes
            return relax.Call(call.op, new, call.attrs, call.ty_args)
        s5 = batch_shape(t)
        c = s5[1] * s5[4]
        arr = other.value.numpy()
        if arr.ndim > 4:
            return None
        arr4 = arr.reshape((1,) * (4 - arr.ndim) + arr.shape)
        if arr4.shape[1] == c:
            n_, _, h_, w_ = arr4.shape
            packed = arr4.reshape(n_, c // lanes, lanes, h_, w_).transpose(0, 1, 3, 4, 2)
        elif arr4.shape[1] == 1:
            packed = arr4[..., None]
        else:
            return None
        if arr.size == 1:
            packed = arr  # scalars broadcast in any layout
        new = [None, None]
        new[i], new[1 - i] = t, relax.const(np.ascontiguousarray(packed))
        self._lanes = lanes
        return relax.Call(call.op, new, call.attrs, call.ty_args)

    def _blocked_gate(self, call: relax.Call, args: list[relax.Expr], la: int, lb: int) -> relax.Expr | None:
        """A blocked tensor times (or plus...) a blocked gate [N, C/b, 1, 1, b] of the same channels, one value per
        image and channel (a squeeze-and-excitation gate from a blocked 1x1 conv: RegNetY-400MF's int8 build):
        the gate copied, re-blocked to the tensor's lanes where they differ, by an opaque kernel of its own and
        broadcast over the pixels, where comparing shapes alone sent both to NCHW and back.  Opaque as
        ``_binary``'s pack of an NCHW gate is, and for a worse reason here: fused, the op would join the
        epilogue of the conv that made the gate, and that conv would run again for every pixel (RegNetY-400MF
        int8 2.2 -> 4.6 ms).  None: not a gate."""
        shapes = batch_shape(args[0]), batch_shape(args[1])
        if any(s is None or len(s) != 5 for s in shapes):
            return None
        for i, lanes, lanes_gate in ((0, la, lb), (1, lb, la)):
            full, gate = shapes[i], shapes[1 - i]
            if gate[2:4] != [1, 1] or full[2:4] == [1, 1] or full[1] * lanes != gate[1] * lanes_gate \
                    or not same_shape(full[:1], gate[:1]):
                continue
            copy = self.builder_.call_te(kernels.reblock_nchwc, args[1 - i], lanes, primfunc_name_hint="gate_nchwc")
            new = list(args)
            new[1 - i] = self.builder_.emit(self._with_pattern(copy, OPAQUE))
            self._lanes = lanes
            return relax.Call(call.op, new, call.attrs, call.ty_args)
        return None

    def _pool(self, call: relax.Call, args: list[relax.Expr]) -> relax.Expr | None:
        a = call.attrs
        lanes = self.lanes(args[0])
        if lanes is None or str(a.layout) != "NCHW" or str(a.out_layout) != "NCHW":
            return None
        kind = "max" if call.op.name == "relax.nn.max_pool2d" else "avg"
        self._lanes = lanes
        return self.builder_.call_te(topi.nn.pool2d, args[0], kernel=_ints(a.pool_size), stride=_ints(a.strides),
                                     dilation=_ints(a.dilation), padding=_ints(a.padding), pool_type=kind,
                                     ceil_mode=bool(a.ceil_mode), layout=f"NCHW{lanes}c",
                                     count_include_pad=bool(a.count_include_pad), primfunc_name_hint=f"{kind}_pool2d")

    def _adaptive_pool(self, call: relax.Call, args: list[relax.Expr]) -> relax.Expr | None:
        a = call.attrs
        lanes = self.lanes(args[0])
        if lanes is None or str(a.layout) != "NCHW" or str(a.out_layout) != "NCHW":
            return None
        s5 = batch_shape(args[0])
        size = _ints(a.output_size) if a.output_size is not None else s5[2:4]
        if len(size) == 1:
            size = size * 2
        self._lanes = lanes
        return self.builder_.call_te(topi.nn.adaptive_pool, args[0], size, "avg", layout=f"NCHW{lanes}c",
                                     primfunc_name_hint="adaptive_avg_pool2d")

    def _mean(self, call: relax.Call, args: list[relax.Expr]) -> relax.Expr | None:
        a = call.attrs
        lanes = self.lanes(args[0])
        if lanes is None or a.axis is None or sorted(int(v) % 4 for v in a.axis) != [2, 3] or not a.keepdims:
            return None
        self._lanes = lanes
        return relax.op.mean(args[0], axis=[2, 3], keepdims=True)


def blocked_layout(mod: tvm.IRModule, precision: str = "f32", winograd: bool = True) -> tvm.IRModule:
    """Rewrite ``main`` to the blocked layout (see the module docstring); ``precision="bf16"``:
    the convs and matmuls that fit ``bf16.py``'s kernels get bf16 operands; ``winograd=False``:
    every conv direct (no ``winograd.py`` kernels)."""
    m = _Blocker(mod, precision, winograd)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            m.count_uses(func)
            m.builder_.update_func(gv, m.visit_expr(func))
    out = m.builder_.get()
    return relax.transform.DeadCodeElimination()(out)


@tvm.transform.module_pass(opt_level=0, name="ConvdslBlockedLayout")
def BlockedLayout(mod: tvm.IRModule, ctx) -> tvm.IRModule:  # noqa: N802 - a pass, named like TVM's
    return blocked_layout(mod)


def blocked_layout_pass(precision: str = "f32", winograd: bool = True):
    """``BlockedLayout`` for ``precision`` (f32 with Winograd: BlockedLayout itself)."""
    if precision == "f32" and winograd:
        return BlockedLayout

    @tvm.transform.module_pass(opt_level=0, name=f"ConvdslBlockedLayout_{precision}{'' if winograd else '_direct'}")
    def _pass(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return blocked_layout(mod, precision, winograd)

    return _pass
