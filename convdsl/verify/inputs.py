"""Inputs for differential checks, reproducible from one integer seed.

``make_inputs(graph, seed)`` gives one array per network input, symbolic dims
bound to ``batch``.  The seed also picks the *kind* of values: the first
seeds are edge cases (zeros, ones, large, negative, tiny, spiky, offset), later ones
ordinary normal or uniform draws, so ``convdsl verify --examples 200`` always
covers the edge cases and a report can name the worst input by its seed.
"""
from __future__ import annotations

import numpy as np

from convdsl.ir.graph import Graph
from convdsl.ir.types import NUMPY_DTYPE, bind_dim

EDGE_KINDS = ("zeros", "ones", "large", "negative", "tiny", "spiky", "offset")
KINDS = ("normal", "uniform", *EDGE_KINDS)


def kind_for_seed(seed: int) -> str:
    if seed < len(EDGE_KINDS):
        return EDGE_KINDS[seed]
    return "uniform" if seed % 3 == 0 else "normal"


def values(rng: np.random.Generator, shape: list[int], kind: str) -> np.ndarray:
    """float64 values of one kind (cast by the caller)."""
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "ones":
        return np.ones(shape)
    if kind == "uniform":
        return rng.uniform(-1.0, 1.0, shape)
    x = rng.standard_normal(shape)
    if kind == "large":
        return 100.0 * x
    if kind == "negative":
        return -3.0 * np.abs(x)
    if kind == "tiny":
        return 1e-3 * x
    if kind == "spiky":  # mostly normal, about 1% of entries 1000x larger
        return np.where(rng.random(shape) < 0.01, 1000.0 * x, x)
    if kind == "offset":  # a large mean, unit spread (raw pixel values): normalizations must not cancel
        return 300.0 + x
    if kind != "normal":
        raise ValueError(f"unknown input kind {kind!r}; kinds: {', '.join(KINDS)}")
    return x


def make_inputs(graph: Graph, seed: int, batch: int = 2, kind: str | None = None) -> list[np.ndarray]:
    """One array per input of ``graph``; every symbolic dim is ``batch``."""
    rng = np.random.default_rng(seed)
    kind = kind or kind_for_seed(seed)
    out = []
    for t in graph.input_types():
        shape = [bind_dim(d, {s: batch for s in _symbols(t.shape)}) for d in t.shape]
        dtype = NUMPY_DTYPE.get(t.dtype, "float32")
        if np.dtype(dtype).kind == "f":
            out.append(values(rng, shape, kind).astype(dtype))
        elif np.dtype(dtype) == np.bool_:
            out.append(rng.random(shape) < 0.5)
        else:
            out.append(rng.integers(0, 10, size=shape).astype(dtype))
    return out


def _symbols(shape) -> set[str]:
    import re

    return {s for d in shape if not isinstance(d, int) for s in re.findall(r"[A-Za-z_]\w*", str(d))}
