"""Differential checks: run one program on several backends and pass pipelines
and compare every result with the reference, torch eager on the graph as written.

A *variant* is a name, a factory ``graph -> runner`` (a runner maps a list
of NumPy inputs to a list of NumPy outputs) and a tolerance.  Variants:

    torch-standalone   the artifact folder (model.py + weights.safetensors) loaded
                       by the generated file's own load() and safetensors reader
    reprint            print_graph(graph) elaborated again, same weights
    torch @ fold_bn    a pass or named pipeline, then torch
    torch @ prune-keep all-keep pruning masks applied
    torch-export       torch.export.export of the module, run as exported
    tvm-llvm           the TVM backend for the host CPU

``check(graph, variants, seeds)`` returns one ``Row`` per variant: the worst
error over the inputs, whether it passed, and the seed of the worst input
(``inputs.make_inputs(graph, seed)`` rebuilds it).

Tolerances (see docs/testing.md): an output element passes when
``|got - ref| <= atol * scale + rtol * |ref|`` with ``scale = max(1, max |ref|)``;
non-finite values must agree exactly (NaN with NaN, +inf with +inf).
"""
from __future__ import annotations

import importlib.util
import itertools
import math
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from convdsl.ir.graph import Graph
from convdsl.ir.types import TORCH_DTYPE
from convdsl.verify.inputs import make_inputs

Runner = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float  # times the output's scale, max(1, max |ref|)

    def scaled(self, factor: float) -> "Tolerance":
        return Tolerance(self.rtol * factor, self.atol * factor)


# By dtype, for computations that may round differently (another kernel, a folded
# weight, a different summation order).  Rewrites that must not change a single
# bit (the standalone file, a reprinted graph) use EXACT.
TOLERANCES = {
    "f64": Tolerance(1e-9, 1e-11),
    "f32": Tolerance(1e-4, 1e-5),
    "f16": Tolerance(1e-2, 1e-2),
    "bf16": Tolerance(8e-2, 8e-2),
}
EXACT = Tolerance(0.0, 0.0)
# How much looser than TOLERANCES a backend or rewrite may be.
FACTORS = {"tvm-llvm": 10.0, "tvm-cuda": 10.0, "torch-export": 1.0, "passes": 1.0, "twin": 1.0}


def tolerance_for(graph: Graph, factor: float = 1.0) -> Tolerance:
    dtypes = [t.dtype for t in graph.output_types()]
    worst = max((TOLERANCES.get(dt, TOLERANCES["f32"]) for dt in dtypes), key=lambda t: t.rtol,
                default=TOLERANCES["f32"])
    return worst.scaled(factor)


# ---- comparing ------------------------------------------------------------------------
@dataclass
class Comparison:
    ok: bool
    max_abs: float = 0.0
    max_rel: float = 0.0  # max |got - ref| / max(1, max |ref|)
    excess: float = 0.0  # max of error / allowed error (> 1 fails)
    why: str = ""


def compare(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], tol: Tolerance) -> Comparison:
    if len(ref) != len(got):
        return Comparison(False, math.inf, math.inf, math.inf, f"{len(got)} outputs, expected {len(ref)}")
    worst = Comparison(True)
    for i, (r, g) in enumerate(zip(ref, got)):
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape:
            return Comparison(False, math.inf, math.inf, math.inf, f"output {i}: shape {list(g.shape)}, "
                                                                   f"expected {list(r.shape)}")
        if r.dtype != g.dtype:
            return Comparison(False, math.inf, math.inf, math.inf, f"output {i}: dtype {g.dtype}, expected {r.dtype}")
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        fin_r, fin_g = np.isfinite(r64), np.isfinite(g64)
        same_nonfinite = (~fin_r & ~fin_g) & ((np.isnan(r64) & np.isnan(g64)) | (r64 == g64))
        if ((fin_r != fin_g) | (~fin_r & ~same_nonfinite)).any():
            bad = int(((fin_r != fin_g) | (~fin_r & ~same_nonfinite)).sum())
            return Comparison(False, math.inf, math.inf, math.inf,
                              f"output {i}: {bad} element(s) finite in one result and not the other")
        if not r.size or not fin_r.any():
            continue
        rf, gf = r64[fin_r], g64[fin_r]
        err = np.abs(gf - rf)
        scale = max(1.0, float(np.abs(rf).max()))
        allowed = tol.atol * scale + tol.rtol * np.abs(rf)
        max_abs = float(err.max())
        excess = float(np.max(err / np.maximum(allowed, 1e-300))) if max_abs > 0 else 0.0
        if max_abs > worst.max_abs:
            worst.max_abs, worst.max_rel = max_abs, max_abs / scale
        worst.excess = max(worst.excess, excess)
        if (err > allowed).any():
            worst.ok = False
            j = int(np.argmax(err - allowed))
            worst.why = worst.why or (f"output {i}: |{gf[j]:.6g} - {rf[j]:.6g}| = {err[j]:.3g} "
                                      f"> {allowed[j]:.3g} ({int((err > allowed).sum())} element(s) off)")
    return worst


# ---- weights --------------------------------------------------------------------------
CONSTANT_INITS = ("zeros", "ones", "const")


def randomize_constants(graph: Graph, seed: int = 0) -> Graph:
    """A copy whose constant-initialized parameters (batchnorm statistics and affine
    weights, layer scales, class tokens, zero biases ...) hold random values instead.

    Fresh initializations make batchnorm an identity, which would let a wrong
    ``fold_bn`` pass; random statistics make every folded constant matter.
    Running variances stay positive.  Other parameters keep their values."""
    g = graph.copy()
    rng = np.random.default_rng(seed)
    for name in g.params.names():
        spec = g.params.specs[name]
        if spec.init.kind not in CONSTANT_INITS or not spec.dtype.startswith(("f", "bf")):
            continue
        arr = g.params[name]
        if name.endswith("running_var"):
            new = rng.uniform(0.5, 2.0, arr.shape)
        elif name.endswith("running_mean"):
            new = rng.normal(0.0, 0.5, arr.shape)
        else:
            tiny = np.abs(arr).max(initial=0.0) < 1e-3  # e.g. layer_scale(1e-6): make the branch count
            new = arr.astype(np.float64) + rng.normal(0.0, 0.3, arr.shape) + (0.5 if tiny else 0.0)
        g.params[name] = new.astype(arr.dtype)
    return g


# ---- runners ----------------------------------------------------------------------------
def torch_runner(graph: Graph) -> Runner:
    from convdsl.backends.torch import build_module

    model = build_module(graph)
    return _torch_call(model, graph)


def _torch_call(model, graph: Optional[Graph] = None) -> Runner:
    """numpy in, numpy out.  bf16, which NumPy cannot hold, travels as float32: inputs declared
    bf16 (in ``graph``) are converted on the way in, bf16 outputs to float32 on the way out."""
    import torch

    bf16 = [t.dtype == "bf16" for t in graph.input_types()] if graph is not None else []

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        xs = [torch.from_numpy(np.array(a)) for a in arrays]
        xs = [x.to(torch.bfloat16) if i < len(bf16) and bf16[i] else x for i, x in enumerate(xs)]
        with torch.inference_mode():
            out = model(*xs)
        outs = out if isinstance(out, tuple) else (out,)
        return [(o.float() if o.dtype == torch.bfloat16 else o).detach().numpy().copy() for o in outs]

    return run


_loaded = itertools.count()


def standalone_runner(graph: Graph, folder: Optional[str | Path] = None) -> Runner:
    """Write the torch artifact, then import its model.py as a file and call its own load():
    the generated text and the safetensors reader copied into it are what run."""
    from convdsl.artifact import write_artifact

    if folder is None:  # everything is read by load(): the folder can go afterwards
        with tempfile.TemporaryDirectory(prefix="convdsl-verify-") as tmp:
            return standalone_runner(graph, tmp)
    folder = Path(folder)
    write_artifact(graph, folder, "torch")
    spec = importlib.util.spec_from_file_location(f"convdsl_verify_model_{next(_loaded)}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _torch_call(module.load(), graph)


def copy_params(src: Graph, dst: Graph, by: str = "name") -> None:
    """Give ``dst`` the parameter values of ``src``, by name or by declaration order."""
    names_src, names_dst = src.params.names(), dst.params.names()
    if by == "name":
        if set(names_src) != set(names_dst):
            missing = sorted(set(names_src) ^ set(names_dst))
            raise AssertionError(f"parameter names differ: {missing[:6]}")
        pairs = [(n, n) for n in names_src]
    else:
        if len(names_src) != len(names_dst):
            raise AssertionError(f"{len(names_src)} parameters vs {len(names_dst)}")
        pairs = list(zip(names_src, names_dst))
    for a, b in pairs:
        arr = src.params[a]
        if tuple(arr.shape) != tuple(dst.params.specs[b].shape):
            raise AssertionError(f"parameter {a} {list(arr.shape)} vs {b} {list(dst.params.specs[b].shape)}")
        dst.params[b] = arr


def passes_runner(graph: Graph, spec) -> Runner:
    from convdsl.passes import run_passes

    return torch_runner(run_passes(graph, spec, verify_each=True))


def export_runner(graph: Graph, example: list[np.ndarray]) -> Runner:
    import torch

    from convdsl.backends.torch import build_module

    model = build_module(graph)
    args = tuple(torch.from_numpy(np.array(a)).to(getattr(torch, TORCH_DTYPE[t.dtype]))
                 for a, t in zip(example, graph.input_types()))
    exported = torch.export.export(model, args)
    return _torch_call(exported.module(), graph)


def tvm_runner(graph: Graph, name: str = "tvm-llvm", batch: Optional[int] = None, precision: str = "f32",
               winograd: bool = True) -> Runner:
    from convdsl.backends import backend_module

    g = graph
    if batch is not None and g.symbols:
        g = graph.copy()
        g.symbols = {s: batch for s in g.symbols}
    be = backend_module(name)  # a fresh backend object per call
    if hasattr(be, "progress"):
        be.progress = False
    if precision != "f32":
        be.precision = precision
    if not winograd:
        be.winograd = False
    return be.runner(g)


def tvm_available(name: str = "tvm-llvm") -> bool:
    from convdsl.backends import BACKENDS

    return name in BACKENDS and importlib.util.find_spec("tvm") is not None


# ---- checking -------------------------------------------------------------------------
@dataclass
class Variant:
    name: str
    make: Callable[[Graph], Runner]
    tol: Tolerance


@dataclass
class Row:
    variant: str
    ok: bool
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_seed: Optional[int] = None
    examples: int = 0
    error: str = ""  # why it failed (the first mismatch, or the exception)
    tol: Optional[Tolerance] = None


@dataclass
class Report:
    network: str
    reference: str
    rows: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def check(graph: Graph, variants: Iterable[Variant], seeds: Iterable[int], batch: int = 2,
          reference: Optional[Runner] = None, kind: Optional[str] = None) -> Report:
    """Run every variant on the inputs of ``seeds`` and compare with the reference."""
    seeds = list(seeds)
    report = Report(graph.name, "torch (as written)")
    inputs = {s: make_inputs(graph, s, batch, kind) for s in seeds}
    try:
        ref_run = reference or torch_runner(graph)
        refs = {s: ref_run(inputs[s]) for s in seeds}
    except Exception as e:  # noqa: BLE001 - the reference itself cannot run: nothing to compare
        report.rows.append(Row(report.reference, False, math.inf, math.inf, error=_describe(e)))
        return report
    for v in variants:
        row = Row(v.name, True, tol=v.tol)
        try:
            run = v.make(graph)
        except Exception as e:  # noqa: BLE001 - a variant that cannot build is a finding
            report.rows.append(Row(v.name, False, math.inf, math.inf, error=_describe(e), tol=v.tol))
            continue
        worst = -1.0
        for s in seeds:
            try:
                got = run(inputs[s])
            except Exception as e:  # noqa: BLE001
                row.ok, row.error, row.worst_seed = False, _describe(e), s
                row.max_abs = row.max_rel = math.inf
                break
            c = compare(refs[s], got, v.tol)
            row.examples += 1
            if c.excess > worst or (not c.ok and row.ok):
                worst = c.excess
                row.worst_seed = s
            row.max_abs, row.max_rel = max(row.max_abs, c.max_abs), max(row.max_rel, c.max_rel)
            if not c.ok and row.ok:
                row.ok, row.error, row.worst_seed = False, c.why, s
        report.rows.append(row)
    return report


def _describe(e: BaseException) -> str:
    lines = [l for l in traceback.format_exception_only(type(e), e) if l.strip()]
    return lines[-1].strip()[:300] if lines else type(e).__name__


def standard_variants(graph: Graph, *, backends: Sequence[str] = ("torch",), opt: Optional[str] = None,
                      passes: Sequence[str] = (), export: bool = False, batch: int = 2,
                      example: Optional[list[np.ndarray]] = None) -> list[Variant]:
    """The variants ``convdsl verify`` runs: each backend as written, each backend after ``opt``
    (torch also after each prefix of the pipeline, to name the pass that breaks it)."""
    from convdsl.passes import resolve

    base = tolerance_for(graph)
    out: list[Variant] = []
    steps = [n for n, _ in resolve(opt)] if opt else []
    for b in backends:
        if b == "torch":
            out.append(Variant("torch-standalone", standalone_runner, EXACT))
            for i in range(1, len(steps) + 1):
                prefix = ",".join(steps[:i])
                label = f"torch @ {opt}" if i == len(steps) else f"torch @ {opt} up to {steps[i - 1]}"
                out.append(Variant(label, lambda g, p=prefix: passes_runner(g, p), base))
            for p in passes:
                out.append(Variant(f"torch @ {p}", lambda g, p=p: passes_runner(g, p), base))
        elif b == "tvm-llvm-bf16":  # bf16 operands, f32 accumulation: judged by bf16's tolerance
            out.append(Variant(b, lambda g: tvm_runner(g, "tvm-llvm", batch, "bf16"), TOLERANCES["bf16"]))
        elif b == "tvm-llvm-int8":  # --precision int8: a quantized program's kernels, on AMX tiles where the CPU has them
            out.append(Variant(b, lambda g: tvm_runner(g, "tvm-llvm", batch, "int8"), base.scaled(FACTORS["tvm-llvm"])))
        elif b == "tvm-llvm-direct":  # --no-winograd: every conv direct (A/B against the Winograd convs)
            out.append(Variant(b, lambda g: tvm_runner(g, "tvm-llvm", batch, winograd=False),
                               base.scaled(FACTORS["tvm-llvm"])))
        elif b == "torch-export":
            out.append(Variant("torch-export", lambda g: export_runner(g, example or make_inputs(g, 0, batch)),
                               base.scaled(FACTORS["torch-export"])))
        else:
            tol = base.scaled(FACTORS.get(b, 10.0))
            out.append(Variant(b, lambda g, b=b: tvm_runner(g, b, batch), tol))
            if opt:
                out.append(Variant(f"{b} @ {opt}", lambda g, b=b: tvm_runner(_optimized(g, opt), b, batch), tol))
    return out


def _optimized(graph: Graph, spec) -> Graph:
    from convdsl.passes import run_passes

    return run_passes(graph, spec)
