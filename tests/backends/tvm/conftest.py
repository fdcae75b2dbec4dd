"""Shared pieces of the TVM backend tests: skip without TVM, one-op programs,
randomized weights, and a comparison with the torch backend on the same weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from convdsl.backends.torch import build_module as torch_module  # noqa: E402
from convdsl.ir.graph import Graph  # noqa: E402
from convdsl.ir.verify import verify  # noqa: E402
from convdsl.lang.elaborate import Options, elaborate  # noqa: E402

TOL = 1e-4  # float32: max |tvm - torch| <= TOL * max(1, max |torch|)
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


class Quoted(str):
    """A string attribute written as a CDL string literal, not a bare word."""


def cdl_value(v) -> str:
    if isinstance(v, Quoted):
        return '"' + v + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(cdl_value(x) for x in v) + "]"
    if isinstance(v, str):
        return v  # a bare word (quote it in the test for string attributes)
    return repr(v)


def one_op(op: str, shapes, *args, dtypes=None, **kwargs) -> str:
    """``network t(x0: f32[...], ...) { return (x0, ...) | op(args) }``."""
    dtypes = dtypes or ["f32"] * len(shapes)
    params = ", ".join(f"x{i}: {dt}[{', '.join(str(d) for d in s)}]" for i, (s, dt) in enumerate(zip(shapes, dtypes)))
    src = "x0" if len(shapes) == 1 else "(" + ", ".join(f"x{i}" for i in range(len(shapes))) + ")"
    argtext = ", ".join([cdl_value(a) for a in args] + [f"{k}={cdl_value(v)}" for k, v in kwargs.items()])
    return f"network t({params}) {{\n    return {src} | {op}({argtext})\n}}\n"


def graph_of(text: str, seed: int = 0, randomize: bool = True, **opts) -> Graph:
    """Elaborate; float weights random normal (variances positive) so every weight's wiring shows."""
    g = verify(elaborate(text, "<test>", options=Options(**opts)))
    if randomize:
        rng = np.random.default_rng(seed)
        for name, arr in list(g.params.items()):
            if arr.dtype.kind == "f":
                w = rng.standard_normal(arr.shape).astype(arr.dtype)
                g.params[name] = np.abs(w) + 0.5 if "var" in name else w
    return g


def random_inputs(g: Graph, seed: int = 0) -> list[np.ndarray]:
    from convdsl.artifact import make_inputs

    return make_inputs(g, 1, seed)


def torch_outputs(g: Graph, arrays: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    model = torch_module(g).eval()
    with torch.inference_mode():
        out = model(*[torch.from_numpy(a) for a in arrays])
    return [o.detach().numpy() for o in (out if isinstance(out, tuple) else (out,))]


def assert_close(outs, refs, tol: float = TOL) -> None:
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape, (o.shape, r.shape)
        scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
        err = float(np.abs(o.astype(np.float64) - r.astype(np.float64)).max()) if r.size else 0.0
        assert err <= tol * scale, f"max |tvm - torch| = {err:.3g} > {tol:g} * {scale:.3g}"


@pytest.fixture(scope="session")
def llvm_runner():
    """Compile a graph for tvm-llvm once per session (keyed by its text and seed) -> runner."""
    from convdsl.backends.tvm import backend

    cache: dict = {}

    def get(g: Graph, key):
        if key not in cache:
            cache[key] = backend("tvm-llvm", use_db=False).runner(g)
        return cache[key]

    return get


def randomize_int8_params(g: Graph, seed: int = 0) -> Graph:
    """An int8 program's parameters drawn over their whole ranges: int8 weights in [-128, 127] (-128 included),
    int32 biases in [-3000, 3000), weight scales in [0.002, 0.022)."""
    rng = np.random.default_rng(seed)
    for key, a in list(g.params.items()):
        if a.dtype == np.int8:
            g.params[key] = rng.integers(-128, 128, a.shape).astype(np.int8)
        elif a.dtype == np.int32:
            g.params[key] = rng.integers(-3000, 3000, a.shape).astype(np.int32)
        elif key.endswith("w_scale"):
            g.params[key] = (rng.random(a.shape) * 0.02 + 0.002).astype(np.float32)
    return g


def check_against_simulation(g: Graph, shape, out_dtype: str):
    """Build ``g`` (an int8 program) for tvm-llvm, run it on 3 N(0, 1) inputs [2, *shape] (seed 1) and compare
    with the torch backend's int8 simulation: equal integers (int8 outputs), or float32 within 1e-6 of the
    output's scale.  Returns (the built module, the simulation's output)."""
    import torch

    import convdsl.backends.tvm as ctvm

    x = (3 * np.random.default_rng(1).standard_normal((2, *shape))).astype(np.float32)
    m = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)
    got = m(x)
    with torch.no_grad():
        want = torch_module(g)(torch.from_numpy(x)).numpy()
    if out_dtype == "f32":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
    else:
        assert got.dtype == want.dtype
        assert int(np.abs(got.astype(np.int64) - want.astype(np.int64)).max()) == 0  # exact
    return m, want


def kernel_names(g: Graph, precision: str = "f32") -> list[str]:
    """The PrimFuncs of ``g``'s tvm-llvm module at ``precision`` after lowering, the layout pass and fusion
    (``optimize_passes``, Winograd off), sorted: which kernels a conv became."""
    import tvm

    from convdsl.backends.tvm.build import optimize_passes
    from convdsl.backends.tvm.lowering import lower_graph
    from convdsl.backends.tvm.targets import make_target

    spec = make_target("tvm-llvm")
    with spec.tvm_target():
        mod = tvm.transform.Sequential(optimize_passes(spec, precision, False))(
            lower_graph(g, "tvm-llvm", None, (), precision))
    return sorted(str(gv.name_hint) for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc))


def quantized_resnet18():
    """The zoo's ResNet-18 at 64x64 (every stage runs, down to 2x2; the build takes seconds), quantized on
    N(0, 1) inputs, and an input."""
    from convdsl.api import load_graph
    from convdsl.passes import run_passes
    from convdsl.passes.quantize import quantize

    root = EXAMPLES.resolve()
    src = (root / "resnet18.cdl").read_text().replace("224, 224", "64, 64")
    g = run_passes(load_graph(src.replace('import "blocks/', f'import "{root}/blocks/')), "O2")
    rng = np.random.default_rng(0)
    q = quantize(g, [rng.standard_normal((2, 3, 64, 64)).astype(np.float32)], build=torch_module)
    return q, rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
