"""Masks: which channels of each group to keep, from scores and a ratio.

``select`` turns a ratio into per-group removal counts (one ratio for every
group, or a global threshold over all groups' scores), rounds the kept counts
to a hardware-friendly multiple, keeps the same count in every block of a
balanced group, never drops a pinned channel, and keeps the highest scores.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping

import numpy as np

from convdsl.errors import UsageError
from convdsl.ir.graph import Graph
from convdsl.passes.const_fold import CONSTANT
from convdsl.passes.prune.groups import Dependencies, Group, lcm

DEFAULT_PROTECT = ("first", "last")


def protected_groups(graph: Graph, deps: Dependencies, protect: Iterable[str]) -> dict[str, str]:
    """Groups whose channels stay, with the reason: groups produced by protected nodes.

    ``first``: the first producers on every path from an input; ``last``: the last ones
    before every output; anything else is an fnmatch pattern over node ids (``fc``, ``layer4.*``)."""
    producers = {m.node for g in deps.groups for m in g.members if m.role != "norm"}
    chosen: dict[str, str] = {}
    patterns = []
    for p in protect:
        if p == "first":
            chosen.update({n: "first layer" for n in _frontier(graph, producers, forward=True)})
        elif p == "last":
            chosen.update({n: "last layer" for n in _frontier(graph, producers, forward=False)})
        else:
            patterns.append(p)
    for p in patterns:
        hits = [n for n in producers if fnmatch.fnmatchcase(n, p)]
        if not hits and not any(fnmatch.fnmatchcase(n.id, p) for n in graph.nodes()):
            raise UsageError(f"--protect '{p}' names no node of {graph.name}",
                             hint="give a node id such as fc or a pattern such as 'layer4.*'")
        chosen.update({n: f"protected ({p})" for n in hits})
    out = {}
    for g in deps.groups:
        for n in g.producers:
            if n in chosen:
                out[g.name] = f"{chosen[n]}: {n}"
                break
    return out


def _frontier(graph: Graph, producers: set[str], forward: bool) -> set[str]:
    """Producers reached from the inputs (or back from the outputs) without passing another producer.
    A ``parameter`` node's input only places it in the graph (its values are never read), so no path
    runs through it: an imported model's free parameters hang off the network input, and a walk through
    them found the layers after every GlobalResponseNorm (timm ConvNeXt-V2) "first", which pinned every
    residual stream."""
    start = list(graph.inputs) if forward else list(dict.fromkeys(v.node for v in graph.outputs))
    seen, found, stack = set(start), set(), list(start)
    while stack:
        nid = stack.pop()
        if nid in producers:
            found.add(nid)
            continue
        if graph.node(nid).op == CONSTANT:
            continue
        nxt = [c for c, _ in graph.users(nid)] if forward else [v.node for v in graph.inputs_of(nid)]
        for n in nxt:
            if n not in seen:
                seen.add(n)
                stack.append(n)
    return found


def keep_count(g: Group, remove: int, round_to: int) -> int:
    """Kept units after removing ``remove``, rounded to the group's step, within [step, size]."""
    cells = 1 if g.cells is None else int(g.cells.max()) + 1
    step = lcm(max(round_to, 1), cells)
    pinned_floor = int(np.ceil(g.pinned.sum() / step) * step) if g.pinned.any() else 0
    if g.cells is not None and g.pinned.any():  # every cell must keep its pinned units
        worst = max(int(g.pinned[g.cells == c].sum()) for c in range(cells))
        pinned_floor = max(pinned_floor, worst * cells)
    if g.size <= step or g.size % cells:
        return g.size
    k = g.size - remove
    k = int(round(k / step)) * step
    return int(min(g.size, max(k, step, pinned_floor)))


def top_k(g: Group, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` units to keep: pinned first, then by score (ties: lower index)."""
    s = np.where(g.pinned, np.inf, scores)
    if g.cells is None:
        order = np.lexsort((np.arange(g.size), -s))
        return np.sort(order[:k])
    cells = int(g.cells.max()) + 1
    per = k // cells
    keep = []
    for c in range(cells):
        idx = np.flatnonzero(g.cells == c)
        order = idx[np.lexsort((idx, -s[idx]))]
        keep.extend(order[:per].tolist())
    return np.sort(np.array(keep, np.int64))


def select(deps: Dependencies, scores: Mapping[str, np.ndarray], ratio: float | Mapping[str, float], *,
           scope: str = "global", round_to: int = 1, protected: Mapping[str, str] | None = None,
           max_group_ratio: float = 0.9) -> dict[str, np.ndarray]:
    """Masks (group name -> kept unit indices) for every group.

    ``ratio`` is the fraction of prunable channels to remove.  ``scope="layer"`` removes that
    fraction from every group; ``"global"`` removes the lowest-scoring ``ratio`` of all prunable
    channels together (scores are normalized per member, see criteria.py), at most
    ``max_group_ratio`` of any one group.  A mapping ``{pattern: ratio}`` sets per-group ratios
    (fnmatch over group names, ``*`` for the rest) and implies ``scope="layer"``."""
    if scope not in ("global", "layer"):
        raise UsageError(f"unknown pruning scope '{scope}'", hint="global or layer")
    protected = protected or {}
    active = [g for g in deps.groups if g.prunable and g.name not in protected and g.name in scores]
    remove: dict[str, int] = {}
    if isinstance(ratio, Mapping):
        for g in active:
            r = next((v for p, v in ratio.items() if p != "*" and fnmatch.fnmatchcase(g.name, p)), ratio.get("*", 0.0))
            remove[g.name] = int(round(_check_ratio(r) * (~g.pinned).sum()))
    elif scope == "layer":
        for g in active:
            remove[g.name] = int(round(_check_ratio(ratio) * (~g.pinned).sum()))
    else:
        _check_ratio(ratio)
        pool = np.concatenate([scores[g.name][~g.pinned] for g in active]) if active else np.zeros(0)
        n = int(round(ratio * len(pool)))
        thr = np.sort(pool)[n - 1] if n > 0 else -np.inf
        for g in active:
            s = scores[g.name][~g.pinned]
            cap = int(max_group_ratio * g.size)
            remove[g.name] = min(int((s <= thr).sum()), cap)
    masks = {}
    for g in deps.groups:
        r = remove.get(g.name, 0)
        k = keep_count(g, r, round_to) if r > 0 else g.size
        masks[g.name] = np.arange(g.size) if k >= g.size else top_k(g, scores[g.name], k)
    return masks


def _check_ratio(r: float) -> float:
    if not 0.0 <= r < 1.0:
        raise UsageError(f"pruning ratio must be in [0, 1), got {r}")
    return float(r)
