"""prune: structured channel pruning with dependency groups.

    deps  = analyze(graph)                                # groups of coupled channels
    masks = compute_masks(graph, ratio=0.5, criterion="l1", target="macs", round_to=8)
    small = apply_masks(graph, masks)                      # physically smaller graph
    small = prune(graph, ratio=0.5, criterion="taylor", data=dataset)   # all three

Precondition: ``verify(graph)`` passes.  Data criteria (``taylor``,
``activation``) need calibration data and ``build``, the torch backend's
``build_module``, to run the network on it.

Postcondition: a new graph (the argument and its arrays are untouched) in which
the channels the masks drop are gone: smaller ``out``/``dim``/``heads``/``groups``
attributes, parameters sliced along their channel axes, types re-inferred, and
``verify`` passes.  Network inputs and outputs keep their shapes.  Coupled
channels (see ``groups.py``) are removed together, so the result computes what
the original computes with those channels' producers zeroed, up to the
downstream effect of the biases and norms that went with them.  With every
channel kept the result is an identical copy.  ``prune_with_report`` also
returns a report (see ``report.py``) and the masks.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple

from convdsl.errors import UsageError
from convdsl.ir.graph import Graph, ModuleBuilder
from convdsl.ir.stats import summary
from convdsl.passes.prune.apply import Masks, PruneError, apply_masks
from convdsl.passes.prune.criteria import CRITERIA, Scores, check_criterion, importance
from convdsl.passes.prune.groups import Dependencies, Group, analyze
from convdsl.passes.prune.masks import DEFAULT_PROTECT, protected_groups, select
from convdsl.passes.prune.report import build_report, to_markdown

TARGETS = ("macs", "params", "channels")


def _materialized(graph: Graph) -> Graph:
    """A copy with every parameter materialized once, so copies made while searching share them."""
    g = graph.copy()
    for name in g.params.names():
        g.params[name]
    return g


def measure(graph: Graph, target: str) -> int:
    """The quantity a ``target`` ratio refers to: MACs (at the graph's default bindings) or params."""
    return summary(graph)["macs"] if target == "macs" else graph.params.count()


def search(graph: Graph, deps: Dependencies, scores: Scores, ratio: float, target: str, *, tolerance: float,
           **options: Any) -> tuple[Masks, float, float]:
    """Bisect the channel ratio until the measured ``target`` reduction is within ``tolerance``
    of ``ratio``; returns (masks, channel ratio, measured reduction), the closest one seen."""
    base = measure(graph, target)

    def at(r: float) -> tuple[Masks, float]:
        masks = select(deps, scores.by_group, r, **options)
        return masks, 1.0 - measure(apply_masks(graph, masks, deps, shapes_only=True), target) / base

    lo, hi = 0.0, 0.99
    masks, red = at(hi)
    best = (abs(red - ratio), masks, hi, red)
    if red < ratio - tolerance:
        return masks, hi, red
    for _ in range(40):
        mid = (lo + hi) / 2
        masks, red = at(mid)
        if abs(red - ratio) < best[0]:
            best = (abs(red - ratio), masks, mid, red)
        if abs(red - ratio) <= tolerance or hi - lo < 1e-5:
            break
        lo, hi = (mid, hi) if red < ratio else (lo, mid)
    return best[1], best[2], best[3]


def compute_masks(graph: Graph, ratio: float | Mapping[str, float] = 0.5, criterion: str = "l1", *,
                  target: str = "macs", scope: str = "global", round_to: int = 1,
                  protect: Iterable[str] = DEFAULT_PROTECT, data: Any = None, tolerance: float = 0.005,
                  max_group_ratio: float = 0.9, calib_samples: int = 256, seed: int = 0,
                  deps: Dependencies | None = None, scores: Scores | None = None,
                  info: dict | None = None, build: ModuleBuilder | None = None) -> Masks:
    """Masks ``{group name: kept channel indices}`` removing ``ratio`` of the ``target``:
    ``macs`` or ``params`` (searched: the channel ratio is bisected until the measured reduction
    is within ``tolerance``) or ``channels`` (the channel ratio itself).  See ``masks.select``
    for ``scope``, ``round_to`` and ``max_group_ratio``; ``protect`` keeps the output channels of
    the first/last layers and of nodes matching the given patterns.  ``info`` (a dict) receives
    the channel ratio used, the measured reduction, notes and protected groups."""
    if target not in TARGETS:
        raise UsageError(f"unknown pruning target '{target}'", hint=f"targets: {', '.join(TARGETS)}")
    check_criterion(criterion, data, build)
    deps = deps or analyze(graph)
    scores = scores or importance(graph, deps, criterion, data, samples=calib_samples, seed=seed, build=build)
    protected = protected_groups(graph, deps, list(protect))
    options = dict(scope=scope, round_to=round_to, protected=protected, max_group_ratio=max_group_ratio)
    notes = list(scores.notes)
    if target == "channels" or isinstance(ratio, Mapping) or ratio == 0:
        masks = select(deps, scores.by_group, ratio, **options)
        r = ratio if not isinstance(ratio, Mapping) else float("nan")
        red = None if target == "channels" else 0.0
    else:
        if not 0.0 <= ratio < 1.0:
            raise UsageError(f"pruning ratio must be in [0, 1), got {ratio}")
        masks, r, red = search(graph, deps, scores, ratio, target, tolerance=tolerance, **options)
        if abs(red - ratio) > tolerance:
            notes.append(f"asked to remove {ratio:.1%} of {target}, got {red:.1%} "
                         f"(limited by pinned channels, rounding or max_group_ratio)")
    if info is not None:
        info.update(channel_ratio=r, reduction=red, notes=notes, protected=protected)
    return masks


class Pruned(NamedTuple):
    graph: Graph
    report: dict[str, Any]  # JSON-serializable (report.build_report)
    masks: Masks


def prune(graph: Graph, ratio: float | Mapping[str, float] = 0.5, criterion: str = "l1", *,
          target: str = "macs", scope: str = "global", round_to: int = 1,
          protect: Iterable[str] = DEFAULT_PROTECT, data: Any = None, tolerance: float = 0.005,
          max_group_ratio: float = 0.9, calib_samples: int = 256, seed: int = 0,
          build: ModuleBuilder | None = None) -> Graph:
    """``apply_masks(graph, compute_masks(graph, ...))``.  With its defaults it is a plain
    ``Graph -> Graph`` pass (50% of MACs, l1, global); ``prune_with_report`` takes the same
    arguments and also returns the report and the masks."""
    return prune_with_report(graph, ratio, criterion, target=target, scope=scope, round_to=round_to, protect=protect,
                             data=data, tolerance=tolerance, max_group_ratio=max_group_ratio,
                             calib_samples=calib_samples, seed=seed, build=build).graph


def prune_with_report(graph: Graph, ratio: float | Mapping[str, float] = 0.5, criterion: str = "l1", *,
                      target: str = "macs", scope: str = "global", round_to: int = 1,
                      protect: Iterable[str] = DEFAULT_PROTECT, data: Any = None, tolerance: float = 0.005,
                      max_group_ratio: float = 0.9, calib_samples: int = 256, seed: int = 0,
                      build: ModuleBuilder | None = None) -> Pruned:
    """``prune``: (the pruned graph, its report, the masks)."""
    # conv(out=C) -> ... -> consumer(in=C)  =>  conv(out=C-k) -> ... -> consumer(in=C-k), for every coupled member
    g = _materialized(graph)
    deps = analyze(g)
    info: dict = {}
    protect = list(protect)
    masks = compute_masks(g, ratio, criterion, target=target, scope=scope, round_to=round_to, protect=protect,
                          data=data, tolerance=tolerance, max_group_ratio=max_group_ratio,
                          calib_samples=calib_samples, seed=seed, deps=deps, info=info, build=build)
    out = apply_masks(g, masks, deps)
    settings = {"criterion": criterion, "scope": scope, "target": target,
                "ratio": ratio if not isinstance(ratio, Mapping) else dict(ratio),
                "channel_ratio": info["channel_ratio"], "round_to": round_to, "protect": protect}
    return Pruned(out, build_report(g, out, deps, masks, settings, info["notes"], info["protected"]), masks)


__all__ = ["CRITERIA", "DEFAULT_PROTECT", "Dependencies", "Group", "Masks", "PruneError", "Pruned", "Scores", "TARGETS",
           "analyze", "apply_masks", "compute_masks", "importance", "measure", "prune", "prune_with_report", "search",
           "to_markdown"]
