"""TVM's TIR lowering for CPU targets, with small scratch buffers on the stack.

TVM 0.27's ``LowerTVMBuiltin`` keeps an allocation on the stack only where its storage scope is
"global" and its constant size under 1 KB; every other allocation on a CPU becomes a
``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace`` pair.  The kernels' register tiles are
"local" buffers (the accumulators an epilogue reads, ``set_scope(..., "local")`` in ``cpu.py``),
allocated inside the parallel task loop: so every task of every conv and GEMM with an epilogue
called the workspace allocator twice, zeroed the tile in memory and stored it there, where the
same kernel without an epilogue kept its accumulators in registers.  ViT-S's fc1 alone (198 x 384
x 1536, a 6 x 4-vector tile, bias epilogue) on Zen 4: 1109-1149 us against 1037-1098 without the
epilogue; with the tile on the stack 1036-1085 (scratch timings, 4 rounds each).

``StackLocals`` marks every "local" allocation of constant size up to ``STACK_BYTES`` with TVM's own
``disable_lower_builtin`` annotation, which leaves it a stack ``alloca`` (created in the function's
entry block by the LLVM code generator, so a loop does not grow the stack); LLVM then keeps what it
can in registers.  Only "local" buffers: the schedules make them (register tiles, Winograd's tiles,
a depthwise conv's padded rows) and only TIR loads and stores touch them, which TVM emits for the
alloca's alignment (16 bytes, its code generator's cap); a "global" scratch buffer may be handed to
an extern micro-kernel (AMX) that assumes 64-byte alignment, so those stay workspace allocations.

``pipeline(target)`` names the TIR pipeline to pass to ``tvm.compile``: TVM's default one followed
by ``StackLocals`` on CPUs, TVM's default elsewhere.  Every CPU build,
the tuner's candidates and the benchmarks' kernels compile through it, so the code that is timed
is the code that runs.
"""
from __future__ import annotations

import tvm
from tvm import tirx

STACK_BYTES = 8192  # per buffer (register tiles are 0.5-2 KB)
ON = True  # False: TVM's default pipeline (workspace allocations), for A/B timings
NAME = "convdsl_cpu"
_ANNOTATION = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin


def _small(buffer) -> bool:
    size = buffer.dtype.bits * buffer.dtype.lanes // 8
    for d in buffer.shape:
        if not isinstance(d, tirx.IntImm):
            return False
        size *= int(d)
    return 0 < size <= STACK_BYTES


def _on_stack(s):
    """``s`` with its small allocations annotated (the statement itself where nothing changes)."""
    if isinstance(s, tirx.AllocBuffer):
        ann = dict(s.annotations) if s.annotations else {}
        if _ANNOTATION in ann or s.buffer.scope() != "local" or not _small(s.buffer):
            return s
        ann[_ANNOTATION] = tirx.IntImm("int32", 1)
        return tirx.AllocBuffer(s.buffer, ann, s.span)
    if isinstance(s, tirx.SeqStmt):
        seq = [_on_stack(x) for x in s.seq]
        return s if all(a.same_as(b) for a, b in zip(seq, s.seq)) else tirx.SeqStmt(seq, s.span)
    if isinstance(s, tirx.For):
        body = _on_stack(s.body)
        return s if body.same_as(s.body) else tirx.For(s.loop_var, s.min, s.extent, s.kind, body, s.thread_binding,
                                                       s.annotations, s.step, s.span)
    if isinstance(s, tirx.AttrStmt):
        body = _on_stack(s.body)
        return s if body.same_as(s.body) else tirx.AttrStmt(s.node, s.attr_key, s.value, body, s.span)
    if isinstance(s, tirx.IfThenElse):
        then = _on_stack(s.then_case)
        other = None if s.else_case is None else _on_stack(s.else_case)
        if then.same_as(s.then_case) and (other is None or other.same_as(s.else_case)):
            return s
        return tirx.IfThenElse(s.condition, then, other, s.span)
    if isinstance(s, tirx.While):
        body = _on_stack(s.body)
        return s if body.same_as(s.body) else tirx.While(s.condition, body, s.span)
    return s


@tirx.transform.prim_func_pass(opt_level=0, name="ConvdslStackLocals")
def StackLocals(func, mod, ctx):  # noqa: N802 - a pass, named like TVM's
    body = _on_stack(func.body)
    return func if body.same_as(func.body) else func.with_body(body)


def _factory():
    from tvm.s_tir import pipeline as s_tir_pipeline

    lower, host, device = s_tir_pipeline.default_s_tir_pipeline()
    return tvm.transform.Sequential([lower, StackLocals]), host, device


def pipeline(target) -> str:
    """The TIR pipeline's name for ``tvm.compile(..., tir_pipeline=)`` / ``tvm.tirx.build(..., pipeline=)``."""
    from tvm.tirx import compilation_pipeline

    kind = target.kind.name if isinstance(target, tvm.target.Target) else str(target).split()[0]
    if not ON or kind != "llvm":
        return "default"
    if NAME not in compilation_pipeline.PIPELINE_MAP:
        compilation_pipeline.register_tir_pipeline(NAME, _factory)
    return NAME
