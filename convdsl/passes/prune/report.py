"""What pruning did, per group and in total: channels, parameters and MACs before and after.

A node's parameters and MACs are counted in the group its output channels
belong to (a conv in the group of its filters; a relu costs nothing anyway);
nodes whose outputs cannot change are counted under ``(fixed)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from convdsl.ir.graph import Graph, Value
from convdsl.ir.stats import layer_stats, summary
from convdsl.passes.prune.groups import Dependencies

FIXED = "(fixed)"


def _owner(deps: Dependencies, nid: str) -> str:
    s = deps.spaces.get(Value(nid, 0))
    if s is None or not s.size:
        return FIXED
    gi = np.unique(deps.unit_group[deps.labels[s.ids]])
    if len(gi) != 1 or not deps.groups[int(gi[0])].prunable:
        return FIXED
    return deps.groups[int(gi[0])].name


def _by_group(graph: Graph, deps: Dependencies, added: dict[str, str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in layer_stats(graph):
        owner = _owner(deps, added.get(r.name, r.name))
        acc = out.setdefault(owner, [0, 0])
        acc[0] += r.params
        acc[1] += r.macs
    return out


def added_nodes(before: Graph, after: Graph) -> dict[str, str]:
    """Nodes pruning added (the linear an mhsa's out_proj became) -> the node they split off,
    the one they read."""
    return {n.id: after.inputs_of(n.id)[0].node for n in after.nodes() if n.id not in before}


def build_report(before: Graph, after: Graph, deps: Dependencies, masks: dict[str, np.ndarray],
                 settings: dict[str, Any], notes: list[str], protected: dict[str, str]) -> dict[str, Any]:
    """A JSON-serializable report of one pruning run."""
    s0, s1 = summary(before), summary(after)
    added = added_nodes(before, after)
    b0, b1 = _by_group(before, deps, {}), _by_group(after, deps, added)
    groups = []
    for g in deps.groups:
        if not g.prunable and g.name not in b0:
            continue
        kept = len(masks.get(g.name, range(g.size)))
        why = protected.get(g.name) or ("; ".join(g.reasons[:2]) if not g.prunable else None)
        groups.append({"name": g.name, "producers": g.producers, "channels": [g.size, kept],
                       "params": [b0.get(g.name, [0, 0])[0], b1.get(g.name, [0, 0])[0]],
                       "macs": [b0.get(g.name, [0, 0])[1], b1.get(g.name, [0, 0])[1]], "fixed": why})
    groups.append({"name": FIXED, "producers": [], "channels": None,
                   "params": [b0.get(FIXED, [0, 0])[0], b1.get(FIXED, [0, 0])[0]],
                   "macs": [b0.get(FIXED, [0, 0])[1], b1.get(FIXED, [0, 0])[1]], "fixed": "not prunable"})

    def red(k: str) -> float:
        return 1.0 - s1[k] / s0[k] if s0[k] else 0.0

    return {"network": before.name, **settings,
            "before": {"params": s0["params"], "macs": s0["macs"]},
            "after": {"params": s1["params"], "macs": s1["macs"]},
            "reduction": {"params": red("params"), "macs": red("macs")},
            "groups": groups, "notes": notes}


def to_markdown(rep: dict[str, Any]) -> str:
    r = rep["reduction"]
    ratio = f"{rep['ratio']:.0%}" if isinstance(rep["ratio"], (int, float)) else str(rep["ratio"])
    lines = [f"# Pruning report: {rep['network']}", "",
             f"criterion `{rep['criterion']}`, scope `{rep['scope']}`, target {rep['target']} "
             f"{ratio} (channel ratio {rep['channel_ratio']:.3f}), round to {rep['round_to']}", "",
             "| | params | MACs |", "|---|---:|---:|",
             f"| before | {rep['before']['params']:,} | {rep['before']['macs']:,} |",
             f"| after | {rep['after']['params']:,} | {rep['after']['macs']:,} |",
             f"| removed | {r['params']:.1%} | {r['macs']:.1%} |", "",
             "| group | channels | params | MACs | note |", "|---|---:|---:|---:|---|"]
    for g in rep["groups"]:
        ch = "" if g["channels"] is None else f"{g['channels'][0]} -> {g['channels'][1]}"
        lines.append(f"| {g['name']} | {ch} | {g['params'][0]:,} -> {g['params'][1]:,} | "
                     f"{g['macs'][0]:,} -> {g['macs'][1]:,} | {g['fixed'] or ''} |")
    if rep.get("accuracy"):
        lines += ["", "| accuracy | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in rep["accuracy"].items()]
    if rep["notes"]:
        lines += ["", *(f"- {n}" for n in rep["notes"])]
    return "\n".join(lines) + "\n"
