"""Each heavy kernel's achieved GFLOP/s (GOP/s for int8) against this machine's measured peak.

    python benchmarks/roofline.py [--nets resnet50,resnet18,mobilenet_v2,vit_s16] [--precisions f32,bf16,int8]
                                  [--threads 2] [--min-percent 5] [--clock wall|cpu] [--doc]

Peak per precision is measured, not looked up: a C micro-kernel (built here with gcc) runs
independent chains of the precision's instruction on every thread (f32: ``vfmadd231ps``, 32 FLOP
per zmm instruction; bf16: ``vdpbf16ps``, 64; int8: ``vpdpbusd``, 128 ops; on an AVX2 CPU without
AVX-512: ymm ``vfmadd231ps``, 16 FLOP, and for int8 ``vpmaddubsw`` + ``vpmaddwd`` (ones) + ``vpaddd``,
64 ops, what convdsl's AVX2 int8 kernel executes with the 7-bit weights ``convdsl quantize`` makes there; on an AMX CPU also ``tdpbusd`` / ``tdpbf16ps`` on tile registers), and memory bandwidth is a large NumPy copy.  Each kernel is judged against the peak of its own arithmetic (a bf16 or int8 build keeps some kernels in f32, and its AMX layers run on tiles).  For every tvm-llvm kernel taking more than ``--min-percent`` of a network's
time: its FLOPs per call (``mac_flops``: 2 x its multiply-accumulates, the work the peak's instruction
does, read off the kernel before scheduling; a kernel without products counts all its arithmetic), its
measured time (the VM's per-kernel profile), achieved rate, peak / achieved, all its arithmetic (TVM's
estimate: epilogues, softmax, GELU too) over the counted FLOPs, and its arithmetic intensity
(FLOPs per byte of its arguments): a kernel under the machine balance (peak / bandwidth) is
memory-bound, its bound is bandwidth x intensity, and that is what it is judged against; a kernel whose
other arithmetic allows less than both (``epilogue_bound``: an int8 conv over few input channels, whose
requantization outweighs its ``vpdpbusd`` lanes) is epilogue-bound, judged against that.  The
profile's ``vm.builtin.*`` rows are not kernels: their time is the profiler's instrument around each
call; the header gives the VM's unprofiled cost per kernel call (``vm_call_us``) instead.

Each network and precision is profiled ``--profiles`` times (2) and the profile with the least kernel time
kept: this machine has stretches of a few seconds in which every kernel runs at up to half speed (ViT-S int8
profiled 42.4 ms of kernels once, 19.2 in the profile before it; a register-only peak loop run before and after a
profile did not see them), and one inside a profile put kernels under the 2x line that were not.

``--clock cpu`` is for a machine other processes load: there wall time measures the share of the
cores this process got, not the code.  Each kernel is then compiled alone (scheduled as the
build schedules it) and timed in process CPU time, and judged against one core's peak per
second of CPU time (and the copy bandwidth per second of CPU time); the network's share of each
kernel (%) still comes from the profile.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import ALL_NETS, CALIB_SAMPLES, bn_from_calibration, calibration_inputs, convdsl_int8, load_graph  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADING = "## Roofline"
PEAK_C = r"""
#include <immintrin.h>
#define CHAINS 12
__attribute__((target("avx512f"))) double peak_f32(long iters) {
    __m512 acc[CHAINS]; __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
    for (int j = 0; j < CHAINS; j++) acc[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
        _Pragma("GCC unroll 12") for (int j = 0; j < CHAINS; j++) acc[j] = _mm512_fmadd_ps(a, acc[j], b);
    float s = 0; for (int j = 0; j < CHAINS; j++) s += _mm512_reduce_add_ps(acc[j]);
    return s;
}
__attribute__((target("avx512f,avx512bf16"))) double peak_bf16(long iters) {
    __m512 acc[CHAINS]; __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3c00);
    for (int j = 0; j < CHAINS; j++) acc[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
        _Pragma("GCC unroll 12") for (int j = 0; j < CHAINS; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
    float s = 0; for (int j = 0; j < CHAINS; j++) s += _mm512_reduce_add_ps(acc[j]);
    return s;
}
__attribute__((target("avx512f,avx512vnni"))) double peak_int8(long iters) {
    __m512i acc[CHAINS]; __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    for (int j = 0; j < CHAINS; j++) acc[j] = _mm512_set1_epi32(j);
    for (long i = 0; i < iters; i++)
        _Pragma("GCC unroll 12") for (int j = 0; j < CHAINS; j++) acc[j] = _mm512_dpbusd_epi32(acc[j], a, b);
    long s = 0; for (int j = 0; j < CHAINS; j++) s += _mm512_reduce_add_epi32(acc[j]);
    return (double)s;
}
__attribute__((target("avx2,fma"))) double peak_f32_avx2(long iters) {
    __m256 acc[CHAINS]; __m256 a = _mm256_set1_ps(1.0001f), b = _mm256_set1_ps(0.9999f);
    for (int j = 0; j < CHAINS; j++) acc[j] = _mm256_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
        _Pragma("GCC unroll 12") for (int j = 0; j < CHAINS; j++) acc[j] = _mm256_fmadd_ps(a, acc[j], b);
    float s = 0, o[8]; for (int j = 0; j < CHAINS; j++) { _mm256_storeu_ps(o, acc[j]); for (int k = 0; k < 8; k++) s += o[k]; }
    return s;
}
__attribute__((target("avx2"))) double peak_int8_avx2(long iters) {
    /* what convdsl's AVX2 int8 kernel executes: vpmaddwd (16 int16 products summed in pairs) + vpaddd */
    __m256i acc[CHAINS]; __m256i a = _mm256_set1_epi16(3), b = _mm256_set1_epi16(-2);
    for (int j = 0; j < CHAINS; j++) acc[j] = _mm256_set1_epi32(j);
    for (long i = 0; i < iters; i++)
        _Pragma("GCC unroll 12") for (int j = 0; j < CHAINS; j++) acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(a, b));
    int o[8]; long s = 0; for (int j = 0; j < CHAINS; j++) { _mm256_storeu_si256((__m256i *)o, acc[j]); for (int k = 0; k < 8; k++) s += o[k]; }
    return (double)s;
}
__attribute__((target("avx2"))) double peak_int8_avx2_maddubs(long iters) {
    /* what convdsl's AVX2 int8 kernel executes with 7-bit weights: vpmaddubsw (32 u8 x s8 products summed in
       int16 pairs) + vpmaddwd with ones (pairs of pairs into int32) + vpaddd; the asm keeps it in the loop */
    __m256i acc[CHAINS]; __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
    for (int j = 0; j < CHAINS; j++) acc[j] = _mm256_set1_epi32(j);
    for (long i = 0; i < iters; i++) {
        __asm__("" : "+x"(a));
        _Pragma("GCC unroll 12") for (int j = 0; j < CHAINS; j++)
            acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), one));
    }
    int o[8]; long s = 0; for (int j = 0; j < CHAINS; j++) { _mm256_storeu_si256((__m256i *)o, acc[j]); for (int k = 0; k < 8; k++) s += o[k]; }
    return (double)s;
}/* AMX: 4 accumulator tiles, operands already in tile registers (no loads): the tile unit's roof.
   Each thread loads its own tile configuration (16 rows x 64 bytes); the process must have asked
   Linux for the tile state first (targets.request_amx). */
typedef struct { unsigned char palette, start; unsigned char r[14]; unsigned short colsb[16]; unsigned char rows[16]; }
    __attribute__((packed)) amx_cfg;
static unsigned char amx_a[16 * 64], amx_b[16 * 64];
__attribute__((target("amx-tile"))) static void amx_setup(void) {
    amx_cfg c = {0}; c.palette = 1;
    for (int t = 0; t < 8; t++) { c.rows[t] = 16; c.colsb[t] = 64; }
    _tile_loadconfig(&c);
    _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
    _tile_loadd(0, amx_a, 64); _tile_loadd(1, amx_a, 64); _tile_loadd(2, amx_b, 64); _tile_loadd(3, amx_b, 64);
}
/* the same loop for each tile product: 4 accumulators (tiles 4-7) from 2 A (0, 1) x 2 B (2, 3) tiles */
#define AMX_PEAK(name, features, dp, out_t) \
__attribute__((target(features))) double name(long iters) { \
    out_t out[16 * 16]; \
    amx_setup(); \
    for (long i = 0; i < iters; i++) { dp(4, 0, 2); dp(5, 0, 3); dp(6, 1, 2); dp(7, 1, 3); } \
    _tile_stored(4, out, 64); _tile_release(); \
    return (double)out[0]; \
}
AMX_PEAK(peak_amx_int8, "amx-tile,amx-int8", _tile_dpbusd, int)
AMX_PEAK(peak_amx_bf16, "amx-tile,amx-bf16", _tile_dpbf16ps, float)
"""
# precision -> [(flag it needs, C function, ops per loop iteration)], the widest the CPU has first:
# zmm vfmadd231ps 32 FLOP, vdpbf16ps 64, vpdpbusd 128 int ops, 12 chains; ymm vfmadd231ps 16, and for int8
# without VNNI vpmaddubsw + vpmaddwd(ones) 64 (convdsl quantize's 7-bit weights on such a CPU; 8-bit ones
# run vpmaddwd, 32); AMX: 4 tiles per iteration, tdpbusd 16 x 16 x 64 MACs, tdpbf16ps 16 x 16 x 32
KERNELS = {
    "f32": [("avx512f", "peak_f32", 12 * 32), ("avx2", "peak_f32_avx2", 12 * 16)],
    "bf16": [("avx512_bf16", "peak_bf16", 12 * 64)],
    "int8": [("avx512_vnni", "peak_int8", 12 * 128), ("avx2", "peak_int8_avx2_maddubs", 12 * 64)],
    "bf16 (AMX)": [("amx_bf16", "peak_amx_bf16", 4 * 16 * 16 * 32 * 2)],
    "int8 (AMX)": [("amx_int8", "peak_amx_int8", 4 * 16 * 16 * 64 * 2)],
}
NEEDS = {"f32": "avx512f or avx2", "bf16": "avx512_bf16", "int8": "avx512_vnni or avx2", "bf16 (AMX)": "amx_bf16",
         "int8 (AMX)": "amx_int8"}


def peaks(threads: int, seconds: float = 0.3, clock: str = "wall") -> dict[str, float]:
    """GFLOP/s (GOP/s) of each precision's instruction on ``threads`` threads, best of 5.

    ``clock="wall"``: what the threads achieved in elapsed time (on a loaded machine, a share of
    the cores, as the kernels measured in the same run get); ``"cpu"``: per second of each
    thread's own CPU time, summed over the threads (the cores' peak whenever they run, load
    or not)."""
    from convdsl.backends.tvm.targets import cpu_flags

    flags = cpu_flags()
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = Path(tmp) / "peak.c", Path(tmp) / "peak.so"
        src.write_text(PEAK_C)
        subprocess.run(["gcc", "-O3", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
        so = ctypes.CDLL(str(lib))
        out = {}
        for prec, choices in KERNELS.items():
            have = [(name, ops) for flag, name, ops in choices if flag in flags]
            if not have:
                continue
            name, ops = have[0]
            if "AMX" in prec:
                from convdsl.backends.tvm.targets import request_amx

                request_amx()
            fn = getattr(so, name)
            fn.argtypes, fn.restype = [ctypes.c_long], ctypes.c_double
            fn(1000)
            t = time.perf_counter()
            fn(100_000)
            iters = max(10_000, int(100_000 * seconds / max(time.perf_counter() - t, 1e-6)))
            best = 0.0
            for _ in range(5):
                cpu = [0.0] * threads

                def work(i):
                    c = time.thread_time()
                    fn(iters)  # ctypes drops the GIL
                    cpu[i] = time.thread_time() - c

                ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
                t = time.perf_counter()
                for th in ts:
                    th.start()
                for th in ts:
                    th.join()
                dt = time.perf_counter() - t
                rate = (threads * iters * ops / dt if clock == "wall" else
                        sum(iters * ops / max(c, 1e-9) for c in cpu))
                best = max(best, rate / 1e9)
            out[prec] = best
        return out


def bandwidth(threads: int, clock: str = "wall") -> float:
    """GB/s of a 256 MiB NumPy copy (read + write), best of 5 (``clock="cpu"``: per second of the
    copying thread's CPU time)."""
    a = np.ones(64 << 20, np.float32)
    b = np.empty_like(a)
    best = 0.0
    now = time.perf_counter if clock == "wall" else time.thread_time
    for _ in range(5):
        t = now()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / max(now() - t, 1e-9) / 1e9)
    return best


def mac_flops(func) -> float:
    """2 x the multiply-accumulates of ``func`` (a PrimFunc before scheduling): every reduction block whose
    update adds a product to its accumulator (``acc + a * b``, casts allowed: the f32, bf16 and int8 convs,
    GEMMs and attention's two products), instances over its iterators' domains, the padded rows and
    channels a kernel computes included.  That is the work the measured peak's instruction does (an FMA,
    ``vdpbf16ps`` or ``vpdpbusd`` lane's multiply-adds); a kernel's other arithmetic (epilogues, softmax's
    exponentials and max/sum reductions, GELU) is not in it: it costs time, and the rate shows that."""
    import tvm
    from tvm import s_tir, tirx
    from tvm.ir.expr import TensorLoad

    def bare(e):
        while isinstance(e, tirx.Cast):
            e = e.value
        return e

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    total = 0.0
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        b = sch.get(block)
        store = b.body
        if not any(int(iv.iter_type) == 2 for iv in b.iter_vars) or not isinstance(store, tirx.BufferStore):
            continue
        update = bare(store.value)
        if not isinstance(update, tirx.Add):
            continue
        a, c = bare(update.a), bare(update.b)
        product = c if isinstance(a, TensorLoad) and a.source.same_as(store.buffer) else \
            a if isinstance(c, TensorLoad) and c.source.same_as(store.buffer) else None
        if isinstance(product, tirx.Mul):
            total += 2.0 * float(np.prod([int(iv.dom.extent) for iv in b.iter_vars]))
    return total


def kernel_flops(graph, spec, precision: str) -> dict[str, tuple[float, float]]:
    """{kernel name: (FLOPs per call: ``mac_flops``, or all its arithmetic where it has no products; bytes of
    its arguments)} on the module before scheduling; ``ALL_OPS`` gets TVM's estimate of all its arithmetic
    per call."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph

    with spec.tvm_target():
        mod = tvm.transform.Sequential(optimize_passes(spec, precision))(lower_graph(graph, precision=precision))
    out = {}
    for gv, f in mod.functions.items():
        if not isinstance(f, tvm.tirx.PrimFunc):
            continue
        text = f.script()
        KINDS[gv.name_hint] = _kernel_precision(f, text, precision)
        amx_flops = _amx_flops(f, text)
        if amx_flops is not None:
            flops = ALL_OPS[gv.name_hint] = amx_flops
        else:
            try:  # a kernel without products (a norm, a pool, a copy): all its arithmetic
                every = ALL_OPS[gv.name_hint] = float(estimate_tir_flops(tvm.IRModule({"main": f})))
                flops = mac_flops(f) or every
            except Exception:  # noqa: BLE001 - opaque kernels: unknown
                flops = ALL_OPS[gv.name_hint] = float("nan")
        nbytes = 0
        for p in f.params:
            t = p.ty  # a BufferType: the argument's shape and dtype
            if hasattr(t, "shape") and hasattr(t, "dtype"):
                nbytes += int(np.prod([int(d) for d in t.shape])) * tvm.DataType(str(t.dtype)).bits // 8
        out[gv.name_hint] = (flops, float(nbytes))
        FUNCS[gv.name_hint] = f
    return out


FUNCS: dict = {}  # kernel name -> its PrimFunc before scheduling (kernel_flops fills it)
ALL_OPS: dict = {}  # kernel name -> all its arithmetic per call, TVM's estimate (kernel_flops fills it)
KINDS: dict = {}  # kernel name -> the precision its products run at (kernel_flops fills it)


def _kernel_precision(func, text: str, precision: str) -> str:
    """The arithmetic of one kernel of a ``precision`` build, which is not the build's everywhere (the RGB
    stem, norms, attention's activation x activation matmuls stay f32; AMX takes the layers with enough
    channels): ``int8 (AMX)`` / ``bf16 (AMX)`` for the AMX micro-kernel, ``bf16`` where both sides of
    the products are bf16 bits (two uint16 operands, or one of bf16.py's ``vdpbf16ps`` kernels, which round their
    f32 input themselves: a kernel that only reads bf16 activations, e.g. a depthwise conv with f32 weights and
    f32 math, is f32), ``int8`` where a weight is int8, else ``f32``."""
    from convdsl.backends.tvm.schedules import amx
    from convdsl.backends.tvm.schedules.cpu import BF16_RULES

    if amx.EXTERN in text:
        return "int8 (AMX)"
    if amx.EXTERN_BF16 in text:
        return "bf16 (AMX)"
    dtypes = [str(p.ty.dtype) for p in func.params if hasattr(p.ty, "dtype")]
    vdpbf16ps = any(f'"{k}"' in text for k in BF16_RULES)  # bf16.py's kernels, by their KERNEL_ATTR
    if precision == "bf16" and (dtypes.count("uint16") >= 2 or vdpbf16ps):
        return "bf16"
    if precision == "int8" and "int8" in dtypes:
        return "int8"
    return "f32"


def _amx_flops(func, text: str) -> float | None:
    """FLOPs (ops) of a kernel whose products are convdsl's AMX micro-kernel (schedules/amx.py), which
    TVM's estimate cannot see into (an extern call): 2 x output elements x the reduction length, read
    off the packed weight [O/16, C/k, taps, k/q, 16, q] (q = 4 for int8, 2 for bf16): C * taps,
    padded channels included; for attention's ``amx_transformer.batch_matmul_bf16`` kernels, off their accumulator and
    A pack (padded rows and keys included).  None for any other kernel."""
    import re

    from convdsl.backends.tvm.schedules import amx

    if amx.EXTERN not in text and amx.EXTERN_BF16 not in text:
        return None
    if "amx_batch_matmul" in text:  # amx_transformer.batch_matmul_bf16 (attention): acc [batch, n/16, rows, 16] x k
        dims = r"(?:T\.int64\(\d+\)|\d+)"
        allocs = {m[1]: [int(d) for d in re.findall(r"\d+", re.sub(r"T\.int64\((\d+)\)", r"\1", m[2]))]
                  for m in re.finditer(rf"(\w+) = T\.sblock_alloc_buffer\(\(({dims}(?:, {dims})*)\)", text)}
        acc = [v for k, v in allocs.items() if k.startswith("acc")]
        packs = [v for k, v in allocs.items() if k == "amx_pack"] or \
            [[int(d) for d in p.ty.shape] for p in func.params
             if len(getattr(p.ty, "shape", ())) == 4 and str(p.ty.dtype) == "uint16"]
        if len(acc) != 1 or len(packs) != 1:
            return None
        return 2.0 * float(np.prod(acc[0])) * packs[0][1] * packs[0][3]
    weights = [p.ty for p in func.params if len(getattr(p.ty, "shape", ())) == 6
               and str(p.ty.dtype) in ("int8", "uint16")]
    if len(weights) != 1:
        return None
    w = [int(d) for d in weights[0].shape]
    out = func.params[-1].ty
    return 2.0 * float(np.prod([int(d) for d in out.shape])) * w[1] * w[2] * w[3] * w[5]


def epilogue_bound(all_ops: float, peak: dict) -> float:
    """The rate (counted FLOPs per second) a kernel's other arithmetic allows: ``all_ops`` (all its
    operations per counted FLOP) - 1 operations per FLOP (its epilogue, softmax, GELU: TVM's count, which
    leaves out casts and rounding, so this is optimistic), each at one per lane of an f32 vector instruction
    (half the f32 FMA peak, which counts two FLOPs a lane), fully overlapped with the products.  An int8
    conv with few input channels spends more instructions requantizing its outputs than on ``vpdpbusd``:
    MobileNet-V2's 16 -> 96 1x1 conv, 32 FLOPs of products and ~7 counted other operations per output, is
    bound to about half the int8 peak by them alone.  inf: no other arithmetic, or no f32 peak."""
    other, rate = all_ops - 1, peak.get("f32", float("nan")) / 2
    return rate / other if other > 0 and rate == rate else float("inf")


def kernel_cpu_ms(func, target, seconds: float = 0.15, rounds: int = 5) -> float:
    """ms of process CPU time per call of ``func`` scheduled as the build schedules it, compiled
    alone, on random inputs (the fastest of ``rounds`` blocks of calls).  CPU time, summed over
    the pool's threads, is what the kernel costs whenever it runs: robust to other processes
    taking the cores, which wall time is not."""
    import tvm

    from convdsl.backends.tvm.schedules import schedule_module
    from convdsl.backends.tvm.schedules.template_tuner import random_args
    from convdsl.backends.tvm.tir_pipeline import pipeline

    with target:
        mod = schedule_module(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    lib = tvm.compile(mod, target=target, tir_pipeline=pipeline(target)).jit()
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in random_args(func)]
    f = lib["main"]
    f(*tensors)
    t = time.process_time()
    f(*tensors)
    reps = max(2, min(500, int(seconds / max(time.process_time() - t, 1e-6))))
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(reps):
            f(*tensors)
        best = min(best, (time.process_time() - t) / reps)
    return best * 1e3


def vm_call_us(ops: int = 64, calls: int = 400) -> float:
    """The Relax VM's own cost per kernel call, unprofiled: a program of ``ops`` chained 16-element adds (each its
    own kernel, its output a tensor the VM allocates from the planned storage) against one add, per call of
    ``main``, medians, divided by the extra calls.  The profile's ``vm.builtin.*`` rows (allocation views, null
    values) are mostly the profiler's own per-call instrument (Python), which this leaves out."""
    import tvm
    from tvm import relax

    from convdsl.backends.tvm.build import codegen_passes
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm")

    def per_call(n: int) -> float:
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((16,), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                y = x
                for i in range(n):
                    y = bb.emit(relax.op.add(y, relax.const(np.float32(i))))
                out = bb.emit_output(y)
            bb.emit_func_output(out)
        mod = relax.transform.LegalizeOps()(bb.get())  # not fused: one kernel per add
        ex = tvm.compile(mod, spec.tvm_target(), relax_pipeline=tvm.transform.Sequential(codegen_passes(spec)))
        main = relax.VirtualMachine(ex, tvm.cpu())["main"]
        a = tvm.runtime.tensor(np.zeros(16, np.float32))
        for _ in range(50):
            main(a)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            main(a)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    return (per_call(ops) - per_call(1)) / (ops - 1) * 1e6


def rows_for(name: str, precision: str, args, peak: dict, bw: float, log, vm_us: float) -> tuple[list[dict], float]:
    """The rows of a network's kernels above ``--min-percent`` of its profile, and the profile's total ms."""
    import convdsl.backends.tvm as ctvm
    from convdsl.backends.tvm.runtime import profile

    g = load_graph(name)
    # the network peers.py times: batchnorm statistics from the calibration inputs (with the initial ones the
    # activations of these untrained networks vanish, to denormal floats on some layers, which run many times
    # slower: MobileNet-V2 bf16 profiled 6.1 ms against 2.5 in peers.py on Zen 4)
    calib = calibration_inputs(g, CALIB_SAMPLES)
    g = bn_from_calibration(g, calib)
    if precision == "int8":
        g = convdsl_int8(g, calib)
    backend = ctvm.backend("tvm-llvm", precision=precision, progress=False)
    m = backend.build_module(g)
    x = calibration_inputs(g, 1)[0]
    prof = profile(m.runner, m.runner.prepare([x]), repeat=5)
    flops = kernel_flops(g, backend.spec, precision)
    total = sum(r["ms"] for r in prof)
    out = []
    for r in prof:
        if r["percent"] < args.min_percent:
            continue
        if r["kernel"].startswith("vm.builtin."):  # not a kernel: the VM's bookkeeping between kernels
            out.append({"network": name, "precision": precision, "kind": precision, "kernel": r["kernel"],
                        "calls": r["calls"], "ms": r["ms"], "percent": r["percent"], "gflops": float("nan"),
                        "peak": float("nan"), "of_peak": float("nan"), "intensity": float("nan"),
                        "all_ops": float("nan"),
                        "verdict": f"not a kernel: the profiler's instrument around each call; unprofiled "
                                   f"{vm_us:.2f} us per call ({r['calls'] * vm_us / 1e3:.3f} ms)"})
            continue
        f, nbytes = flops.get(r["kernel"], (float("nan"), float("nan")))
        rate = f * r["calls"] / (r["ms"] / 1e3) / 1e9 if r["ms"] else float("nan")
        if args.clock == "cpu":  # the kernel alone, per second of CPU time (peak and bandwidth: per core)
            try:
                rate = f / (kernel_cpu_ms(FUNCS[r["kernel"]], backend.spec.tvm_target()) / 1e3) / 1e9
            except Exception as e:  # noqa: BLE001 - reported as unknown
                log(f"[{name} {precision}] {r['kernel']}: cannot time alone ({type(e).__name__})")
                rate = float("nan")
        kind = KINDS.get(r["kernel"], precision)
        all_ops = ALL_OPS.get(r["kernel"], float("nan")) / f if f else float("nan")  # per counted FLOP
        p = peak.get(kind, float("nan"))
        intensity = f / nbytes if nbytes else float("nan")
        memory = bw * intensity if intensity == intensity else float("inf")
        epilogue = epilogue_bound(all_ops, peak)
        bound = min(p, memory, epilogue)
        near = "within 2x" if rate >= bound / 2 else "not within 2x"
        verdict = ("within 2x of peak" if rate >= p / 2 else
                   f"memory-bound ({intensity:.1f} FLOP/B; bound {bound:.0f}): {near}" if bound == memory < p else
                   f"epilogue-bound ({all_ops - 1:.2f} other ops per FLOP; bound {bound:.0f}): {near}"
                   if bound == epilogue < p else "compute-bound, not within 2x of peak")
        out.append({"network": name, "precision": precision, "kind": kind, "kernel": r["kernel"], "calls": r["calls"], "ms": r["ms"],
                    "percent": r["percent"], "gflops": rate, "peak": p, "of_peak": rate / p if p else float("nan"),
                    "intensity": intensity, "all_ops": all_ops, "verdict": verdict})
    log(f"[{name} {precision}] {total:.1f} ms, {len(out)} kernels above {args.min_percent}%")
    return out, total


def render(rows: list[dict], peak: dict, bw: float, args, vm_us: float) -> str:
    from peers import machine

    lines = [HEADING, "",
             f"`python benchmarks/roofline.py --threads {args.threads} --min-percent {args.min_percent} --clock {args.clock} "
             f"--profiles {args.profiles}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load average {os.getloadavg()[0]:.1f}.",
             "", ("Measured peak per core, per second of CPU time (kernels timed alone, by CPU time, on "
                  f"{args.threads} threads): " if args.clock == "cpu" else
                  f"Measured peak on {args.threads} threads: ") + ", ".join(
                 f"{k} {v:.0f} G{'OP' if k.startswith('int8') else 'FLOP'}/s" for k, v in peak.items())
             + f"; copy bandwidth {bw:.1f} GB/s; the Relax VM's own cost per kernel call (unprofiled, `vm_call_us`) "
             f"{vm_us:.2f} us.", "",
             "| network | precision (build: kernel) | kernel | calls | ms | % | achieved G(FL)OP/s | of peak "
             "| all ops / counted | FLOP/B | verdict |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        prec = r["precision"] if r["kind"] == r["precision"] else f"{r['precision']} build: {r['kind']}"
        lines.append(f"| {r['network']} | {prec} | {r['kernel']} | {r['calls']} | {r['ms']:.2f} | "
                     f"{r['percent']:.1f} | {r['gflops']:.0f} | {r['of_peak']:.0%} | {r['all_ops']:.2f} | "
                     f"{r['intensity']:.1f} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="resnet50,resnet18,mobilenet_v2,vit_s16")
    ap.add_argument("--precisions", default="f32,bf16,int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-percent", type=float, default=5.0)
    ap.add_argument("--profiles", type=int, default=2,
                    help="profiles per network and precision; the one with the least kernel time is kept")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: kernels timed in the network, against the threads' peak (a quiet machine); cpu: each "
                         "kernel alone per second of CPU time, against one core's CPU-time peak (a loaded machine)")
    ap.add_argument("--doc", action="store_true", help="write the table to docs/benchmarks.md ('Roofline')")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    log = (lambda s: print(s, file=sys.stderr, flush=True))
    if args.clock == "cpu":  # per core: the CPU-time peak of the threads, divided by them
        peak = {k: v / args.threads for k, v in peaks(args.threads, clock="cpu").items()}
        bw = bandwidth(1, clock="cpu")
    else:
        peak, bw = peaks(args.threads), bandwidth(args.threads)
    vm_us = vm_call_us()
    log("peak: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()) + f"; bandwidth {bw:.1f} GB/s; "
        f"VM {vm_us:.2f} us per call")
    rows = []
    for name in args.nets.split(","):
        if name not in ALL_NETS:
            log(f"unknown network {name}; choose from {', '.join(ALL_NETS)}")
            return 2
        for precision in args.precisions.split(","):
            if precision != "f32" and precision not in peak:
                log(f"[{name} {precision}] skipped: this CPU lacks {NEEDS[precision]}")
                continue
            # the profile with the least kernel time of --profiles (why: the module docstring)
            takes = [rows_for(name, precision, args, peak, bw, log, vm_us) for _ in range(args.profiles)]
            rows += min(takes, key=lambda t: t[1])[0]
    text = render(rows, peak, bw, args, vm_us)
    print(text)
    if args.doc:
        from peers import write_doc

        write_doc(text.rstrip("\n"), HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
