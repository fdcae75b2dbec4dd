"""Importance criteria: one score per unit of every group (low = removed first).

Each *member* of a group (a conv/linear whose filters produce its channels, an
attention head, a batchnorm scaling them) gives every channel of its space an
additive contribution; a unit sums the contributions of its channels (a
depthwise channel with multiplier m, a channel flattened into many features),
then each member's scores are divided by their mean over the group, so layers
of different scale weigh the same, and the group's score is the mean over its
members.  Scores are comparable across groups, which global ranking needs.

- ``l1`` / ``l2``: norm of each filter (Li et al. 2017): the output channel's
  weight row of a conv / linear / patch_embed (transposed conv: its column
  block); an attention head's q, k, v rows and out_proj columns.
- ``bn_scale``: |gamma| of the batchnorms over the channel (network slimming,
  Liu et al. 2017).  Groups without a batchnorm fall back to ``l1``.
- ``taylor``: first-order Taylor estimate of the loss change when a channel is
  zeroed (Molchanov et al. 2017): mean over samples of |sum over positions of
  activation x gradient| at each producer's output.  The loss is the cross-entropy
  with the data's labels (the network's own predictions when there are none;
  0.5 * mean(output^2) for non-classifier outputs).
- ``activation`` (after Beta-Rank, Homayounfar et al. 2023): for output channel
  o of a conv/linear/patch_embed, with y its output and x its input on the
  calibration samples,
  ``beta_o = mean|W_o| * mean_p( std_b y[b, o, p] / std_{b, c in group(o), window(p)} x )``:
  the filter's mean absolute weight times how much its output varies across
  samples at each output position p, relative to how much the input patch it
  reads varies (std over samples, the group's input channels and the receptive
  field window, zero padding included; a dilated window is taken as its
  bounding box; a transposed conv uses the whole input).  Linear layers treat
  each token as a position and the whole feature vector as its window.
  Beta-Rank accumulates |W_o| * (std ratio) element-wise and min-max normalizes
  per layer; here the per-member mean normalization above plays that role.

Data criteria fall back to ``l1`` for members they cannot observe (attention
heads) and note it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from convdsl.errors import UsageError, did_you_mean
from convdsl.ir.graph import Graph, ModuleBuilder, Node
from convdsl.ir.ops import OPS
from convdsl.ir.ops.attention import mha_names
from convdsl.passes.prune.groups import Dependencies, Member

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "activation")
DATA_CRITERIA = ("taylor", "activation")


def _observable(node: Node) -> bool:
    """A producer whose output channels the data criteria observe (``out_channels`` in the op table)."""
    return OPS[node.op].out_channels is not None


def _transposed(node: Node) -> bool:
    """A transposed conv: its weight is [in, out/groups, k...] (``out_channels`` weight axis 1)."""
    out = OPS[node.op].out_channels
    return out is not None and out.params.get("weight") == 1


def _channels_last(node: Node) -> bool:
    return OPS[node.op].out_channels.axis == -1


@dataclass
class Scores:
    """Per-group unit scores, and how they were obtained."""

    by_group: dict[str, np.ndarray]
    criterion: str
    notes: list[str]


def check_criterion(criterion: str, data: Any, build: ModuleBuilder | None = None) -> None:
    if criterion not in CRITERIA:
        raise UsageError(f"unknown pruning criterion '{criterion}'",
                         hint=did_you_mean(criterion, CRITERIA) or f"criteria: {', '.join(CRITERIA)}")
    if criterion in DATA_CRITERIA and data is None:
        raise UsageError(f"criterion '{criterion}' needs calibration data",
                         hint="pass data= (a Dataset, inputs, or (inputs, labels)); on the command line --data digits")
    if criterion in DATA_CRITERIA and build is None:
        raise UsageError(f"criterion '{criterion}' runs the network on its data",
                         hint="pass build= (the torch backend's build_module), as convdsl prune does")


def importance(graph: Graph, deps: Dependencies, criterion: str = "l1", data: Any = None, *,
               samples: int = 256, batch_size: int = 32, seed: int = 0, build: ModuleBuilder | None = None) -> Scores:
    """Scores of every prunable group's units under ``criterion``; the data criteria run the module
    ``build`` makes of the graph (the torch backend's ``build_module``) on ``data``."""
    check_criterion(criterion, data, build)
    notes: list[str] = []
    if criterion in ("l1", "l2"):
        contrib = {m: weight_norms(graph, m, criterion) for m in deps_members(deps) if m.role != "norm"}
    elif criterion == "bn_scale":
        contrib = {m: np.abs(graph.params[graph.node(m.node).params["weight"]]).astype(np.float64)
                   for m in deps_members(deps) if m.role == "norm"}
    else:
        observed = [m for m in deps_members(deps) if m.role == "out" and _observable(graph.node(m.node))]
        contrib = calibrate(graph, observed, criterion, data, samples, batch_size, seed, build)
    fallback: dict[Member, np.ndarray] = {}
    by_group = {}
    for gi, g in enumerate(deps.groups):
        if not g.prunable:
            continue
        s = _group_scores(deps, gi, [m for m in g.members if m in contrib], contrib, criterion)
        if s is None:
            for m in g.members:
                if m.role != "norm" and m not in fallback:
                    fallback[m] = weight_norms(graph, m, "l1")
            s = _group_scores(deps, gi, [m for m in g.members if m in fallback], fallback, "l1")
            if s is None:
                s = np.ones(g.size)
                notes.append(f"{g.name}: no member to score, channels ranked equal")
            else:
                notes.append(f"{g.name}: no {criterion} member, ranked by l1")
        by_group[g.name] = s
    return Scores(by_group, criterion, notes)


def deps_members(deps: Dependencies) -> list[Member]:
    return list(dict.fromkeys(m for g in deps.groups for m in g.members))


def _group_scores(deps: Dependencies, gi: int, members: list[Member], contrib: dict[Member, np.ndarray],
                  criterion: str) -> np.ndarray | None:
    g = deps.groups[gi]
    cols = []
    for m in members:
        units = deps.labels[deps.spaces[m.key].ids]
        sel = deps.unit_group[units] == gi
        acc = np.zeros(g.size)
        np.add.at(acc, deps.unit_index[units[sel]], contrib[m][sel])
        if criterion == "l2":
            acc = np.sqrt(acc)
        mean = acc.mean()
        cols.append(acc / mean if mean > 0 else acc)
    return np.mean(cols, axis=0) if cols else None


# ---- weight norms ---------------------------------------------------------------------------------
def weight_norms(graph: Graph, m: Member, criterion: str) -> np.ndarray:
    """Additive per-channel contribution: sum |w| (l1) or sum w^2 (l2) over the channel's rows."""
    node = graph.node(m.node)
    p = graph.params

    def red(w: np.ndarray, axis: int) -> np.ndarray:
        w = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        if criterion == "l1":
            return np.abs(w).sum(1, dtype=np.float64)
        return np.einsum("ij,ij->i", w, w, dtype=np.float64)

    if m.role == "heads":
        dim, names = node.attrs["dim"], mha_names(node.attrs)
        w_in = p[node.params[names.w]]
        rows = red(w_in[:dim], 0) + red(w_in[dim:2 * dim], 0) + red(w_in[2 * dim:], 0)
        return rows + red(p[node.params[names.out_w]], 1)
    if node.op == "mhsa":
        return red(p[node.params[mha_names(node.attrs).out_w]], 0)
    w = p[node.params["weight"]]
    if _transposed(node):  # [in, out/G, k...] -> per output channel
        G = node.attrs["groups"]
        blocks = w.reshape(G, w.shape[0] // G, w.shape[1], -1)
        return np.concatenate([red(np.moveaxis(b, 1, 0), 0) for b in blocks])
    return red(w, 0)


# ---- data-driven criteria -------------------------------------------------------------------------
def calibration_batches(graph: Graph, data: Any, samples: int, batch_size: int, seed: int):
    """(inputs, labels or None) batches as torch tensors from a Dataset, an array, or (x, y)."""
    import torch

    if len(graph.inputs) != 1:
        raise UsageError(f"calibration needs a network with one input; {graph.name} has {len(graph.inputs)}")
    if hasattr(data, "x_train"):
        x, y = data.x_train, data.y_train
    elif isinstance(data, tuple) and len(data) == 2:
        x, y = data
    else:
        x, y = data, None
    x = np.asarray(x, np.float32)
    want = graph.node(graph.inputs[0]).type.shape
    if x.ndim != len(want) or any(isinstance(w, int) and w != s for w, s in zip(want[1:], x.shape[1:])):
        raise UsageError(f"calibration data of shape {list(x.shape)} does not fit the network input "
                         f"[{', '.join(map(str, want))}]")
    idx = np.random.default_rng(seed).permutation(len(x))[:samples]
    for start in range(0, len(idx), batch_size):
        sel = np.sort(idx[start:start + batch_size])
        yield torch.from_numpy(x[sel]), (None if y is None else torch.from_numpy(np.asarray(y)[sel]).long())


class _Stats:
    """Running sums for one observed producer."""

    def __init__(self) -> None:
        self.n = 0
        self.sy = self.syy = self.sx = self.sxx = self.taylor = None

    @staticmethod
    def add(a, b):
        return b if a is None else a + b


def _positions(node: Node, y):
    """Producer output -> [B, C, P] (channels, positions)."""
    if _channels_last(node):
        y = y.reshape(y.shape[0], -1, y.shape[-1]).transpose(1, 2)
    return y.reshape(y.shape[0], y.shape[1], -1)


def _input_moments(node: Node, mod, x):
    """Per sample, per channel group g and output position p: mean of x and x^2 over the group's
    channels and the window p reads -> two [B, G, P] tensors."""
    import torch.nn.functional as F

    if not hasattr(mod, "kernel_size"):  # a linear layer: features last, every output reads all of them
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        return x.mean(-1)[:, None], (x * x).mean(-1)[:, None]
    G = getattr(mod, "groups", 1)
    xs = x.reshape(x.shape[0], G, -1, *x.shape[2:])
    m1, m2 = xs.mean(2), (xs * xs).mean(2)
    if _transposed(node):
        return m1.flatten(2).mean(-1, keepdim=True), m2.flatten(2).mean(-1, keepdim=True)
    nd = x.dim() - 2
    pool = [F.avg_pool1d, F.avg_pool2d, F.avg_pool3d][nd - 1]
    k, s = mod.kernel_size, mod.stride
    pad = getattr(mod, "padding", 0)
    dil = getattr(mod, "dilation", (1,) * nd)
    eff = tuple(d * (kk - 1) + 1 for d, kk in zip(dil, k))
    pad = tuple(min(p, e // 2) for p, e in zip(pad, eff)) if isinstance(pad, tuple) else 0
    return (pool(m1, eff, s, pad, count_include_pad=True).flatten(2),
            pool(m2, eff, s, pad, count_include_pad=True).flatten(2))


def calibrate(graph: Graph, members: list[Member], criterion: str, data: Any, samples: int, batch_size: int,
              seed: int, build: ModuleBuilder) -> dict[Member, np.ndarray]:
    """Run the torch module ``build`` makes of the graph on calibration batches and score each
    observed producer's channels."""
    import torch
    import torch.nn.functional as F

    model = build(graph)
    stats = {m: _Stats() for m in members}
    live: dict[Member, tuple] = {}

    def hook_for(m: Member, node: Node):
        def hook(mod, inp, out):
            live[m] = (mod, inp[0], out)
        return hook

    handles = [model.get_submodule(m.node).register_forward_hook(hook_for(m, graph.node(m.node))) for m in members]
    try:
        for x, y in calibration_batches(graph, data, samples, batch_size, seed):
            live.clear()
            with torch.set_grad_enabled(criterion == "taylor"):
                out = model(x.requires_grad_(criterion == "taylor"))
                out = out[0] if isinstance(out, tuple) else out
                if criterion == "taylor":
                    if out.dim() == 2:
                        target = y if y is not None else out.argmax(1).detach()
                        loss = F.cross_entropy(out, target)
                    else:
                        loss = 0.5 * out.pow(2).mean()
                    order = [m for m in members if m in live]
                    grads = torch.autograd.grad(loss, [live[m][2] for m in order], allow_unused=True)
                    for m, gr in zip(order, grads):
                        if gr is None:
                            continue
                        node = graph.node(m.node)
                        t = (_positions(node, live[m][2]) * _positions(node, gr)).sum(-1).abs().sum(0)
                        st = stats[m]
                        st.taylor = _Stats.add(st.taylor, t.detach().double())
                        st.n += x.shape[0]
                else:
                    for m in members:
                        if m not in live:
                            continue
                        mod, xin, yout = live[m]
                        node = graph.node(m.node)
                        yp = _positions(node, yout).double()
                        m1, m2 = _input_moments(node, mod, xin.double())
                        st = stats[m]
                        st.sy, st.syy = _Stats.add(st.sy, yp.sum(0)), _Stats.add(st.syy, (yp * yp).sum(0))
                        st.sx, st.sxx = _Stats.add(st.sx, m1.sum(0)), _Stats.add(st.sxx, m2.sum(0))
                        st.n += x.shape[0]
    finally:
        for h in handles:
            h.remove()
    out_scores = {}
    for m, st in stats.items():
        if not st.n:
            continue
        if criterion == "taylor":
            out_scores[m] = (st.taylor / st.n).numpy()
            continue
        node = graph.node(m.node)
        sd_y = ((st.syy / st.n - (st.sy / st.n) ** 2).clamp_min(0)).sqrt()  # [C, P]
        sd_x = ((st.sxx / st.n - (st.sx / st.n) ** 2).clamp_min(0)).sqrt()  # [G, P] (P may be 1)
        C, G = sd_y.shape[0], sd_x.shape[0]
        ratio = (sd_y / (sd_x.repeat_interleave(C // G, 0) + 1e-12)).mean(-1)
        w = weight_norms(graph, m, "l1")
        rows = graph.params[node.params["weight"]]
        per_row = rows.size / (rows.shape[0] if not _transposed(node) else C)
        out_scores[m] = (w / per_row) * ratio.numpy()
    return out_scores
