"""Shared pieces of the pass tests: example graphs with non-trivial batchnorm
state, seeded inputs, and the numerical comparison every pass test uses.

Tolerance: outputs of a rewritten graph must match the original's torch module
within ``TOL`` *relative to the output scale*: ``max|y - y_ref| <= TOL *
max|y_ref|`` (per output).  Both sides run in float32; rounding differs because
folded weights are products rounded once, so an absolute bound would depend on
each network's output magnitude.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from convdsl.api import load_graph
from convdsl.backends.torch import build_module
from convdsl.ir.graph import Graph
from convdsl.ir.types import bind_dim

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = sorted(p.stem for p in EXAMPLES_DIR.glob("*.cdl"))
TOL = 1e-5
# concrete sizes for the symbolic dims; batch 1 keeps vgg16 and the 224x224 nets cheap
SIZES = {"N": 1, "H": 17, "W": 20}
BATCHNORMS = ("batchnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d")


def with_bn_stats(graph: Graph, seed: int = 0) -> Graph:
    """A copy whose batchnorms have seeded, non-trivial running stats and affine
    parameters (new arrays; the argument's are left alone)."""
    g = graph.copy()
    rng = np.random.default_rng(seed)
    for node in g.nodes():
        if node.op not in BATCHNORMS:
            continue
        c = node.type.shape[1]
        values = {"running_mean": rng.normal(0.0, 0.5, c), "running_var": rng.uniform(0.5, 2.0, c),
                  "weight": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0.0, 0.2, c)}
        for local, arr in values.items():
            if local in node.params:
                g.params[node.params[local]] = arr.astype(np.float32)
    return g


@lru_cache(maxsize=None)
def example(name: str) -> Graph:
    """The example at batch 1 with non-trivial BN state; shared, so passes must not mutate it."""
    return with_bn_stats(load_graph(EXAMPLES_DIR / f"{name}.cdl", bind={"N": 1}))


def inputs_for(graph: Graph, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*(bind_dim(d, SIZES) for d in t.shape), generator=gen) for t in graph.input_types()]


def outputs(graph: Graph, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        y = build_module(graph)(*inputs)
    return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


@lru_cache(maxsize=None)
def reference(name: str) -> tuple[np.ndarray, ...]:
    g = example(name)
    return tuple(outputs(g, inputs_for(g)))


def rel_diff(got: list[np.ndarray], want: list[np.ndarray] | tuple[np.ndarray, ...]) -> float:
    """max over outputs of max|got - want| / max|want|."""
    assert len(got) == len(want)
    worst = 0.0
    for a, b in zip(got, want):
        assert a.shape == b.shape
        scale = max(float(np.abs(b).max()), 1e-30)
        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()) / scale)
    return worst


def assert_same_function(new: Graph, old: Graph, tol: float = TOL, seed: int = 0) -> float:
    """Run both graphs on the same seeded inputs; return the relative difference."""
    xs = inputs_for(old, seed)
    d = rel_diff(outputs(new, xs), outputs(old, xs))
    assert d <= tol, f"outputs differ by {d:.3g} (relative), tolerance {tol:g}"
    return d


def param_fingerprint(graph: Graph) -> dict[str, str]:
    """A digest of every array (materializing it), to show a pass left its input alone."""
    return {k: hashlib.blake2b(np.ascontiguousarray(graph.params[k]).data, digest_size=16).hexdigest()
            for k in graph.params.names()}


def same_graph(a: Graph, b: Graph) -> bool:
    """Whether two graphs are the same program with the same parameter values; then
    they compute the same function and there is nothing to run."""
    if sorted(a.g.nodes) != sorted(b.g.nodes) or a.inputs != b.inputs or a.outputs != b.outputs:
        return False
    for nid in a.g.nodes:
        x, y = a.node(nid), b.node(nid)
        if (x.op, x.attrs, x.types, x.params) != (y.op, y.attrs, y.types, y.params) \
                or a.inputs_of(nid) != b.inputs_of(nid):
            return False
    if a.params.specs != b.params.specs:
        return False
    for k in a.params.names():
        if a.params.is_materialized(k) or b.params.is_materialized(k):
            x, y = a.params[k], b.params[k]
            if x is not y and not np.array_equal(x, y):
                return False
    return True
