"""Activation ranges for post-training quantization, measured on the torch backend.

``observe(graph, values, batches, method, build=...)`` runs the float network on
the calibration batches with the requested values as extra outputs (a copy of
the graph whose outputs are those values, made a module by ``build``, the
torch backend's ``build_module``, so no hooks and no tracing) and returns one
clipping range ``(lo, hi)`` per value:

- ``minmax``: the smallest and largest value seen;
- ``percentile``: the ``percentile``-th and ``(100 - percentile)``-th
  percentiles, read from a histogram (``bins`` bins over the min/max range);
- ``mse``: the range ``[a*min, a*max]`` (a in (0, 1]) whose int8 quantization
  has the smallest expected squared error: ``scale**2 / 12`` for each value
  inside the range (exact zeros excepted: they quantize exactly), the squared
  distance to the range for each value clipped.

Histogram methods take a second pass over the batches.  Nothing here edits
the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from convdsl.errors import UsageError
from convdsl.ir.graph import Graph, ModuleBuilder, Value
from convdsl.ir.ops.quant import QRANGE, qparams_for_range

METHODS = ("minmax", "percentile", "mse")


@dataclass
class Stats:
    """What calibration saw of one value."""

    lo: float = float("inf")
    hi: float = float("-inf")
    count: int = 0
    zeros: int = 0
    hist: np.ndarray | None = field(default=None, repr=False)


def as_batches(batches: Any) -> list[tuple]:
    """Calibration data -> a list of input tuples (torch tensors).  Accepts one array, a list of
    arrays (one batch each, single-input networks), or a list of tuples (one array per input)."""
    import torch

    if batches is None:
        raise UsageError("quantization needs calibration data", hint="e.g. quantize(g, [x_batch, ...]) or --calib digits")
    if isinstance(batches, (np.ndarray, torch.Tensor)):
        batches = [batches]
    out = []
    for b in batches:
        items = b if isinstance(b, (tuple, list)) else (b,)
        out.append(tuple(torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x) for x in items))
    if not out:
        raise UsageError("quantization needs at least one calibration batch")
    return out


def observe(graph: Graph, values: Sequence[Value], batches: Iterable, method: str = "minmax", *,
            build: ModuleBuilder, percentile: float = 99.99, bins: int = 2048, dtype: str = "u8",
            threads: int | None = None) -> tuple[dict[Value, tuple[float, float]], dict[Value, Stats]]:
    """Clipping range of each of ``values`` (Values of ``graph``) on the calibration ``batches``,
    run by the module ``build`` makes of the graph; also the raw statistics."""
    import torch

    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}'", hint=f"methods: {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise UsageError(f"percentile must be in (50, 100], got {percentile}")
    values = list(dict.fromkeys(values))
    if not values:
        return {}, {}
    data = as_batches(batches)
    probe = graph.copy()
    probe.outputs = values
    probe.output_names = [f"{v.node}:{v.out}" for v in values]
    model = build(probe)
    stats = {v: Stats() for v in values}
    was = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for inputs in data:  # pass 1: min, max, counts
                for v, t in zip(values, _run(model, inputs)):
                    s = stats[v]
                    t = t.detach().float()
                    s.lo = min(s.lo, float(t.min()))
                    s.hi = max(s.hi, float(t.max()))
                    s.count += t.numel()
                    s.zeros += int((t == 0).sum())
            if method != "minmax":  # pass 2: histograms over each value's [min, max]
                for inputs in data:
                    for v, t in zip(values, _run(model, inputs)):
                        s = stats[v]
                        if s.hi > s.lo:
                            h = torch.histc(t.detach().float(), bins, s.lo, s.hi).double().numpy()
                            s.hist = h if s.hist is None else s.hist + h
    finally:
        torch.set_num_threads(was)
    ranges = {v: clip_range(stats[v], method, percentile=percentile, dtype=dtype) for v in values}
    return ranges, stats


def _run(model, inputs: tuple) -> list:
    out = model(*inputs)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def clip_range(s: Stats, method: str, *, percentile: float = 99.99, dtype: str = "u8") -> tuple[float, float]:
    if s.count == 0:
        raise UsageError("calibration saw no values")
    if method == "minmax" or s.hist is None or s.hi <= s.lo:
        return s.lo, s.hi
    edges = np.linspace(s.lo, s.hi, len(s.hist) + 1)
    if method == "percentile":
        cdf = np.cumsum(s.hist) / s.hist.sum()
        tail = (100.0 - percentile) / 100.0
        lo_i = int(np.searchsorted(cdf, tail, side="left"))
        hi_i = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
        lo = s.lo if lo_i == 0 else float(edges[lo_i])
        hi = s.hi if hi_i >= len(s.hist) - 1 else float(edges[hi_i + 1])
        return lo, hi
    return _mse_range(s, edges, dtype)


def _mse_range(s: Stats, edges: np.ndarray, dtype: str) -> tuple[float, float]:
    """The shrink factor a of [min, max] with the least expected squared quantization error."""
    # error(a) = n_inside * scale(a)^2 / 12 + sum_clipped (x - nearest end)^2,  x = bin centers
    qmin, qmax = QRANGE[dtype]
    centers = (edges[:-1] + edges[1:]) / 2
    counts = s.hist
    lo0, hi0 = min(s.lo, 0.0), max(s.hi, 0.0)
    best, best_err = (s.lo, s.hi), np.inf
    for a in np.linspace(1.0, 0.05, 96):
        lo, hi = a * lo0, a * hi0
        scale, zp = qparams_for_range(lo, hi, dtype)
        rlo, rhi = (qmin - zp) * scale, (qmax - zp) * scale  # the representable range
        clipped = np.where(centers < rlo, rlo - centers, np.where(centers > rhi, centers - rhi, 0.0))
        inside = counts[clipped == 0].sum() - s.zeros
        err = max(inside, 0.0) * scale * scale / 12.0 + float((counts * clipped * clipped).sum())
        if err < best_err:  # the widest range wins ties (a runs from 1 down)
            best, best_err = (float(lo), float(hi)), err
    return best


def describe(ranges: dict[Value, tuple[float, float]], dtype: str = "u8") -> dict[str, dict]:
    """Printable summary: value -> range, scale, zero point."""
    out = {}
    for v, (lo, hi) in ranges.items():
        scale, zp = qparams_for_range(lo, hi, dtype)
        out[f"{v.node}" + (f":{v.out}" if v.out else "")] = {"range": [lo, hi], "scale": scale, "zero_point": zp}
    return out
