"""The properties, as plain functions of one ``Case`` (a program and its inputs).

The hypothesis tests (tests/properties/) and the regression replay
(tests/regressions/) call the same functions; each raises
``PropertyFailed`` with a readable reason.

    fmt          format_source is idempotent and parse(fmt(p)) == parse(p); the
                 formatted program elaborates to the same graph
    elaborate    the program elaborates, verifies, and has the generator's shapes
    runs         a program the front end accepts runs in torch (or is refused cleanly)
    reprint      print_graph(IR) re-elaborates to an equivalent graph that computes
                 bit-identical outputs with the same weights
    standalone   the written torch artifact, loaded by its own load(), is bit-identical
                 to the in-memory module
    twin         an equivalent spelling of the program (Program.twin) agrees
    passes       every semantics-preserving pass and named pipeline preserves outputs
    prune        all-keep pruning masks give an identical graph and identical outputs
    export       torch.export of the generated module agrees with eager
    tvm          tvm-llvm agrees with torch
    quantize     int8 quantization of any program succeeds, verifies and runs
    quantize_bound  for one conv/linear: the int8 error is within the bound its scales imply
    quantize_tvm the int8 graph on tvm-llvm matches the torch backend's simulation
    bf16_tvm     tvm-llvm --precision bf16 stays within bf16's tolerance of torch eager (CPUs with
                 AVX512_BF16; elsewhere the precision is refused, which is checked instead)
    cast         f16 / bf16 inference stays within the tolerance of its dtype
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from convdsl.ir.graph import Graph
from convdsl.verify import differential as D
from convdsl.verify.inputs import make_inputs

# The passes that must not change outputs (beyond rounding): every pass registered
# in convdsl.passes whose name says nothing of pruning or quantization.
LOSSY = re.compile(r"prune|quant|int8|fp16|bf16|half|cast|lowp")


class PropertyFailed(AssertionError):
    pass


class Unsupported(Exception):
    """The backend has no lowering for an op of the program: nothing to compare (yet)."""


class KnownBug(Unsupported):
    """A failure already kept as an xfail regression (tests/regressions/<file>): not news."""


# (pattern of the error, the regression file that keeps it) for open bugs outside convdsl.verify;
# none is open now (the fixed ones are in docs/testing.md's table)
KNOWN_BUGS: list[tuple[str, str]] = []


def _known(e: BaseException) -> Optional[str]:
    text = str(e)
    for pattern, where in KNOWN_BUGS:
        if re.search(pattern, text):
            return where
    return None


@dataclass
class Case:
    text: str
    twin: Optional[str] = None
    seed: int = 0  # the inputs: make_inputs(graph, seed, batch, kind)
    batch: int = 2
    kind: Optional[str] = None
    weights_seed: int = 0  # randomize_constants(graph, weights_seed)
    expected_shapes: Optional[list[tuple]] = None
    network: Optional[str] = None  # which network of the text (None: the only one)
    twin_network: Optional[str] = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def graph(self) -> Graph:
        if "graph" not in self.cache:
            self.cache["graph"] = D.randomize_constants(_load(self.text, self.network), self.weights_seed)
        return self.cache["graph"]

    def inputs(self, graph: Optional[Graph] = None) -> list[np.ndarray]:
        return make_inputs(graph or self.graph(), self.seed, self.batch, self.kind)

    def reference(self) -> list[np.ndarray]:
        if "ref" not in self.cache:
            self.cache["ref"] = D.torch_runner(self.graph())(self.inputs())
        return self.cache["ref"]


def _agree(case: Case, what: str, got: list[np.ndarray], tol: D.Tolerance) -> D.Comparison:
    c = D.compare(case.reference(), got, tol)
    if not c.ok:
        exact = _no_worse_than_torch(case, got)
        if exact is not None:
            return D.Comparison(True, c.max_abs, c.max_rel, c.excess, exact)
        raise PropertyFailed(f"{what} differs from torch eager (input seed {case.seed}, batch {case.batch}, "
                             f"kind {case.kind or 'by seed'}): {c.why}; max abs error {c.max_abs:.3g}")
    return c


def _no_worse_than_torch(case: Case, got: list[np.ndarray]) -> Optional[str]:
    """When a float32 result is off from torch's float32 result, the float64 run of the same graph
    decides: on an ill-conditioned input (a layer norm over two channels near 300, say) torch's own
    error can exceed any fixed tolerance, and a backend at most twice as far from the exact result
    as torch is not wrong.  None (fails) when it is further, or when no f64 run exists."""
    g = case.graph()
    if any(t.dtype != "f32" for t in g.output_types()):
        return None
    try:
        from convdsl.passes.cast import cast

        exact = D.torch_runner(cast(g, "f64"))(case.inputs())
    except Exception:
        return None
    ref = case.reference()
    for r, o, e in zip(ref, got, exact):
        if r.shape != o.shape or not (np.isfinite(r) == np.isfinite(o)).all():
            return None
        fin = np.isfinite(r)
        err_torch = np.abs(r[fin].astype(np.float64) - e[fin])
        err_got = np.abs(o[fin].astype(np.float64) - e[fin])
        if err_got.size and err_got.max() > 2 * err_torch.max() + 1e-6 * (1 + np.abs(e[fin]).max()):
            return None
    return "ill-conditioned: no further from the float64 result than torch"


# ---- front end ------------------------------------------------------------------------
def prop_fmt(case: Case) -> None:
    from convdsl.lang.format import format_source
    from convdsl.lang.parser import parse

    once = format_source(case.text)
    twice = format_source(once)
    if twice != once:
        raise PropertyFailed("format_source is not idempotent:\n" + _first_diff(once, twice))
    if parse(once) != parse(case.text):
        raise PropertyFailed("parse(fmt(p)) != parse(p)")
    same_graph(_load(case.text, case.network), _load(once, case.network), "the formatted program")


def prop_elaborate(case: Case) -> None:
    g = _load(case.text, case.network)
    if case.expected_shapes is not None:
        got = [tuple(t.shape) for t in g.output_types()]
        if got != [tuple(s) for s in case.expected_shapes]:
            raise PropertyFailed(f"output shapes {got}, the generator expected {case.expected_shapes}")


def prop_runs(case: Case) -> None:
    """What the front end accepts, torch runs: a program is either refused at elaboration
    with a convdsl error (location, hint) or its module runs on inputs of its types."""
    from convdsl.errors import ConvDSLError

    try:
        case.graph()
    except ConvDSLError:
        return
    try:
        case.reference()
    except Exception as e:
        raise PropertyFailed(f"the front end accepts the program but torch fails on it: {D._describe(e)}") from e


def _load(text: str, network: Optional[str] = None) -> Graph:
    """Program text -> verified graph (the front end, as load_graph runs it on text)."""
    from convdsl.ir.verify import verify
    from convdsl.lang.elaborate import elaborate

    return verify(elaborate(text, "<string>", network))


def same_graph(a: Graph, b: Graph, what: str) -> None:
    """Same nodes (ids, ops, attrs, types), edges, inputs, outputs and parameter specs."""
    if a.order() != b.order():
        raise PropertyFailed(f"{what}: node ids or order differ: {_set_diff(a.order(), b.order())}")
    for nid in a.order():
        na, nb = a.node(nid), b.node(nid)
        if (na.op, na.attrs, na.types, na.params) != (nb.op, nb.attrs, nb.types, nb.params):
            raise PropertyFailed(f"{what}: node {nid} differs: {na.op}{na.attrs} {na.types} "
                                 f"vs {nb.op}{nb.attrs} {nb.types}")
        if a.inputs_of(nid) != b.inputs_of(nid):
            raise PropertyFailed(f"{what}: inputs of {nid} differ: {a.inputs_of(nid)} vs {b.inputs_of(nid)}")
    if a.outputs != b.outputs or a.output_types() != b.output_types():
        raise PropertyFailed(f"{what}: outputs differ: {a.outputs} vs {b.outputs}")
    if {n: s.shape for n, s in a.params.specs.items()} != {n: s.shape for n, s in b.params.specs.items()}:
        raise PropertyFailed(f"{what}: parameters differ: {_set_diff(a.params.names(), b.params.names())}")


def _set_diff(x, y) -> str:
    return f"only in first {sorted(set(x) - set(y))[:5]}, only in second {sorted(set(y) - set(x))[:5]}"


def _first_diff(a: str, b: str) -> str:
    for i, (la, lb) in enumerate(zip(a.splitlines(), b.splitlines())):
        if la != lb:
            return f"line {i + 1}:\n  {la!r}\n  {lb!r}"
    return f"lengths {len(a)} vs {len(b)}"


def prop_reprint(case: Case) -> None:
    from convdsl.lang.printer import print_graph

    g = case.graph()
    again = _load(print_graph(g))
    for nid in g.order():  # ops, attributes, types and wiring survive printing
        if nid not in again:
            raise PropertyFailed(f"print_graph: node {nid} is missing after re-elaboration")
        na, nb = g.node(nid), again.node(nid)
        if (na.op, na.types, na.params) != (nb.op, nb.types, nb.params) or not _attrs_equal(na.attrs, nb.attrs):
            raise PropertyFailed(f"print_graph: node {nid} re-elaborates as {nb.op}{nb.attrs} {nb.types}, "
                                 f"was {na.op}{na.attrs} {na.types}")
        if g.inputs_of(nid) != again.inputs_of(nid):
            raise PropertyFailed(f"print_graph: inputs of {nid} differ: {g.inputs_of(nid)} vs {again.inputs_of(nid)}")
    if len(again) != len(g) or again.outputs != g.outputs:
        raise PropertyFailed(f"print_graph: {len(again)} nodes / outputs {again.outputs}, was {len(g)} / {g.outputs}")
    D.copy_params(g, again)
    _agree(case, "print_graph -> elaborate", D.torch_runner(again)(case.inputs()), D.EXACT)


def _attrs_equal(a: dict, b: dict) -> bool:
    def norm(v):
        if isinstance(v, (list, tuple)):
            return tuple(norm(x) for x in v)
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    return {k: norm(v) for k, v in a.items()} == {k: norm(v) for k, v in b.items()}


# ---- torch --------------------------------------------------------------------------
def prop_standalone(case: Case, folder: Optional[str | Path] = None) -> None:
    run = D.standalone_runner(case.graph(), folder)
    _agree(case, "the standalone model.py + weights.safetensors", run(case.inputs()), D.EXACT)


def prop_twin(case: Case) -> None:
    if not case.twin:
        return
    g = case.graph()
    twin = _load(case.twin, case.twin_network)
    try:
        D.copy_params(g, twin, by="order")
    except AssertionError as e:
        raise PropertyFailed(f"the twin program's parameters do not line up: {e}") from None
    _agree(case, "the equivalent spelling (twin)", D.torch_runner(twin)(case.inputs()), D.tolerance_for(g))


def prop_export(case: Case) -> None:
    x = case.inputs()
    _agree(case, "torch.export", D.export_runner(case.graph(), x)(x), D.tolerance_for(case.graph()))


# ---- passes -------------------------------------------------------------------------
def semantic_passes() -> list[str]:
    """Every registered pass and named pipeline that must preserve outputs."""
    from convdsl.passes import PASSES, PIPELINES

    names = [p for p in PASSES if not LOSSY.search(p)]
    names += [p for p, steps in PIPELINES.items() if steps and not any(LOSSY.search(s) for s in steps)]
    return names


def prop_passes(case: Case, names: Optional[list[str]] = None) -> None:
    from convdsl.passes import run_passes

    g = case.graph()
    tol = D.tolerance_for(g)
    for name in names or semantic_passes():
        try:
            out = run_passes(g, name, verify_each=True)
        except Exception as e:
            raise PropertyFailed(f"pass {name} failed: {D._describe(e)}") from e
        if out.output_types() != g.output_types():
            raise PropertyFailed(f"pass {name} changed the output types: {out.output_types()} vs {g.output_types()}")
        _agree(case, f"after pass {name}", D.torch_runner(out)(case.inputs()), tol)


def prop_prune_keep(case: Case) -> None:
    from convdsl.passes.prune import analyze, apply_masks

    g = case.graph()
    deps = analyze(g)
    kept = apply_masks(g, {grp.name: np.arange(grp.size) for grp in deps.groups}, deps)
    same_graph(g, kept, "all-keep pruning")
    _agree(case, "all-keep pruning", D.torch_runner(kept)(case.inputs()), D.EXACT)


# ---- other backends -------------------------------------------------------------------
def _tvm_runner(graph: Graph, name: str, batch: int):
    """D.tvm_runner, with an op TVM cannot lower reported as Unsupported and a known bug as KnownBug."""
    from convdsl.errors import LoweringError

    try:
        return D.tvm_runner(graph, name, batch)
    except LoweringError as e:
        if "has no lowering" in str(e):
            raise Unsupported(str(e).split("\n")[0]) from e
        raise
    except Exception as e:
        if _known(e):
            raise KnownBug(f"known bug, tests/regressions/{_known(e)}") from e
        raise


def prop_tvm(case: Case, name: str = "tvm-llvm") -> None:
    g = case.graph()
    run = _tvm_runner(g, name, case.batch)
    _agree(case, name, run(case.inputs()), D.tolerance_for(g, D.FACTORS.get(name, 10.0)))


def _quantized(case: Case) -> tuple[Graph, Graph]:
    """(float graph, int8 graph calibrated on the case's own inputs: min/max, so nothing clips
    beyond the zero point's rounding)."""
    if "quantized" not in case.cache:
        from convdsl.backends.torch import build_module
        from convdsl.passes.quantize import quantize

        case.cache["quantized"] = quantize(case.graph(), [tuple(case.inputs())], method="minmax", build=build_module)
    return case.graph(), case.cache["quantized"]


def prop_quantize(case: Case) -> None:
    """On any program: int8 quantization succeeds (or refuses with a convdsl error), verifies,
    keeps the signature, and its torch module runs with finite outputs where the float ones are."""
    from convdsl.errors import ConvDSLError

    try:
        g, q = _quantized(case)
    except ConvDSLError:
        return
    except Exception as e:
        raise PropertyFailed(f"quantize crashed: {D._describe(e)}") from e
    if q.output_types() != g.output_types() or q.input_types() != g.input_types():
        raise PropertyFailed(f"quantize changed the signature: {q.input_types()} -> {q.output_types()}")
    try:
        got = D.torch_runner(q)(case.inputs())
    except Exception as e:
        raise PropertyFailed(f"the quantized graph does not run in torch: {D._describe(e)}") from e
    for i, (r, o) in enumerate(zip(case.reference(), got)):
        if (np.isfinite(r) & ~np.isfinite(o)).any():
            raise PropertyFailed(f"quantized output {i} has non-finite values where the float one has none")


def prop_quantize_bound(case: Case) -> None:
    """For a program of one conv or linear (then maybe batchnorm, folded first; then maybe relu): every output element of the int8
    graph is within the bound its scales imply.  With input step s_x (asymmetric u8; minmax on
    these inputs, so an element is off by at most one step after the zero point's rounding) and
    weight steps s_w[c] (symmetric per channel: off by at most half a step),

        |y_q - y| <= s_x * sum|w| + s_w/2 * sum|x| + s_x*s_w/2 * n + s_x*s_w/2 (int32 bias)

    summed over each output's receptive field (n terms), plus float32 rounding (1e-5 relative).
    relu is 1-Lipschitz, so a fused relu keeps the bound."""
    import torch

    from convdsl.passes import run_passes

    # a batchnorm after the layer is folded into it first, as the int8 pipeline does: the bound is
    # about the layer that is quantized (tests/regressions/quantize_bound_conv_then_batchnorm.cdl)
    from convdsl.backends.torch import build_module
    from convdsl.passes.quantize import quantize_with_report

    g = run_passes(case.graph(), ["fold_bn"])
    q, report = quantize_with_report(g, [tuple(case.inputs())], method="minmax", build=build_module)
    layers = {rec["node"]: rec for rec in report.layers}
    x = case.inputs()[0]
    got32 = D.torch_runner(q)([x])[0]
    got, ref = got32.astype(np.float64), case.reference()[0].astype(np.float64)
    (nid,) = [n.id for n in g.nodes() if n.op in ("conv1d", "conv2d", "conv3d", "linear")]
    if nid not in layers:  # kept in float (e.g. a circular pad): must be untouched
        _agree(case, "a layer quantize kept in float", [got32], D.tolerance_for(g))
        return
    node = g.node(nid)
    s_x = float(layers[nid]["in"]["scale"])
    s_w = np.asarray(q.params[f"{nid}.w_scale"], np.float64)
    w = np.asarray(g.params[node.params["weight"]], np.float64)
    b = np.asarray(g.params[node.params["bias"]], np.float64) if node.attrs.get("bias") else np.zeros(w.shape[0])
    apply = _linear_map(node, g.in_types(nid)[0])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float64))  # noqa: E731
    ax = np.abs(x.astype(np.float64))
    with torch.no_grad():
        sum_w = apply(t(np.ones_like(ax)), t(np.abs(w))).numpy()
        sum_x = apply(t(ax), t(np.ones_like(w))).numpy()
        count = apply(t(np.ones_like(ax)), t(np.ones_like(w))).numpy()
        mag = apply(t(ax), t(np.abs(w))).numpy()
    ch = (-1,) + (1,) * (ref.ndim - 2) if node.op != "linear" else (1,) * (ref.ndim - 1) + (-1,)
    sw, bb = s_w.reshape(ch), np.abs(b).reshape(ch)
    bound = s_x * sum_w + sw / 2 * sum_x * 1.001 + s_x * sw / 2 * count + s_x * sw / 2 + 1e-5 * (mag + bb) + 1e-6
    err = np.abs(got - ref)
    case.cache["quantize_tightness"] = float((err / bound).max()) if err.size else 0.0
    if (err > bound).any():
        j = np.unravel_index(int(np.argmax(err - bound)), err.shape)
        raise PropertyFailed(f"int8 {node.op} {nid}: error {err[j]:.4g} at {list(j)} exceeds the bound "
                             f"{bound[j]:.4g} (s_x {s_x:.3g}, s_w {float(s_w.reshape(-1)[0]):.3g}, ...)")


def _linear_map(node, x_type):
    """(x, w) -> the layer's linear part with the node's geometry (float64 torch), zero padding."""
    import torch.nn.functional as F

    from convdsl.ir.ops.conv import conv_padding
    from convdsl.ir.optable import tuple_n

    if node.op == "linear":
        return lambda x, w: x @ w.T
    nd = int(node.op[4])
    a = node.attrs
    pads = conv_padding(a, list(x_type.shape[2:]), nd)
    flat = tuple(p for pr in reversed(pads) for p in pr)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return lambda x, w: conv(F.pad(x, flat), w, stride=tuple_n(a["stride"], nd),
                             dilation=tuple_n(a["dilation"], nd), groups=a["groups"])


def prop_quantize_tvm(case: Case, name: str = "tvm-llvm") -> None:
    """The int8 graph on TVM computes what the torch backend's simulation computes."""
    from convdsl.errors import ConvDSLError

    try:
        _, q = _quantized(case)
    except ConvDSLError:
        return
    ref = D.torch_runner(q)(case.inputs())
    run = _tvm_runner(q, name, case.batch)
    c = D.compare(ref, run(case.inputs()), D.tolerance_for(q, D.FACTORS.get(name, 10.0)))
    if not c.ok:
        raise PropertyFailed(f"int8 graph on {name} differs from its torch simulation: {c.why}")


def prop_bf16_tvm(case: Case) -> None:
    """tvm-llvm with bf16 operands (f32 accumulation) computes torch eager's function within bf16's tolerance;
    on a CPU without AVX512_BF16 the build must refuse with a convdsl error that says so."""
    from convdsl.errors import ConvDSLError, LoweringError

    try:
        run = D.tvm_runner(case.graph(), "tvm-llvm", case.batch, "bf16")
    except LoweringError as e:  # the f32 lowering's own gaps are prop_tvm's findings
        if "has no lowering" in str(e):
            raise Unsupported(str(e).split("\n")[0]) from e
        raise
    except ConvDSLError as e:
        if "AVX512_BF16" in str(e):
            return  # refused on this CPU, with the reason: what the property asks there
        raise
    _agree(case, "tvm-llvm bf16", run(case.inputs()), D.TOLERANCES["bf16"])


def prop_cast(case: Case) -> None:
    """Half precision (cast to f16 / bf16 inside, f32 at the edges) stays within the tolerance
    of its dtype (docs/testing.md).  Inputs of ordinary magnitude only: large or spiky values
    overflow f16 by design, and an offset input (300 + N(0, 1)) keeps only about two bits of its
    spread once rounded to f16 (steps of 0.25 at 300; bf16: steps of 2), which a normalization
    then scales up to the output's own size."""
    from convdsl.passes.cast import cast

    if (case.kind or "") in ("large", "spiky", "offset") or (case.kind is None and case.seed < 6):
        return
    g = case.graph()
    for dtype in ("f16", "bf16"):
        try:
            out = cast(g, dtype)
        except Exception as e:
            from convdsl.errors import ConvDSLError

            if isinstance(e, ConvDSLError):
                continue
            raise PropertyFailed(f"cast to {dtype} crashed: {D._describe(e)}") from e
        try:
            got = D.torch_runner(out)(case.inputs())
        except NotImplementedError as e:  # torch has no CPU kernel for an op in this dtype (avg_pool3d in f16)
            if "not implemented for" in str(e):
                raise Unsupported(f"torch on CPU, {dtype}: {str(e).splitlines()[0]}") from e
            raise
        try:
            _agree(case, f"cast to {dtype}", got, D.TOLERANCES[dtype])
        except PropertyFailed:
            why = _ill_conditioned_norm(case, dtype) or _sign_only_cosine_attention(case)
            if why:
                raise Unsupported(why) from None
            raise


# unit roundoff of the half dtypes: a stored value is off by up to |value| * u
_ROUNDOFF = {"f16": 2.0 ** -11, "bf16": 2.0 ** -8}


def _ill_conditioned_norm(case: Case, dtype: str) -> Optional[str]:
    """Why no ``dtype`` implementation can meet the tolerance, or None.  A layer, group or instance
    norm subtracts its group's mean: when the network itself makes a group nearly constant (a bias
    that dominates a channel's spread, tests/regressions/cast_f16_instancenorm_near_constant.cdl),
    the input stored in ``dtype`` is off by |mean| * u, which normalization scales by 1 / std.
    Judged on the float32 run: a group whose |mean| / std * u exceeds half the dtype's tolerance
    is ill-conditioned in ``dtype``, as an offset input is (prop_cast's docstring)."""
    import torch
    from torch import nn

    tol = D.TOLERANCES[dtype].rtol
    worst: list[tuple[float, str]] = []

    def hook(name):
        def look(mod, args, out):
            x = args[0].detach().double()
            if isinstance(mod, nn.GroupNorm):
                groups = x.reshape(x.shape[0], mod.num_groups, -1)
            elif isinstance(mod, nn.LayerNorm):
                groups = x.reshape(*x.shape[: x.dim() - len(mod.normalized_shape)], -1)
            else:  # instance norm: one group per sample and channel
                groups = x.reshape(x.shape[0], x.shape[1], -1)
            ratio = groups.mean(-1).abs() / groups.std(-1, unbiased=False).clamp_min(1e-30)
            worst.append((float(ratio.max()), name))
        return look

    from convdsl.backends.torch import build_module

    model = build_module(case.graph()).eval()
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        model(*[torch.from_numpy(np.ascontiguousarray(x)) for x in case.inputs()])
    ratio, name = max(worst, default=(0.0, ""))
    if ratio * _ROUNDOFF[dtype] > tol / 2:
        return (f"{dtype}: the input of {name} is nearly constant within a group (|mean| / std = {ratio:.3g}): "
                f"stored in {dtype} it keeps about {max(0.0, 1 / (ratio * _ROUNDOFF[dtype])):.2g} steps of its spread")
    return None


def _sign_only_cosine_attention(case: Case) -> Optional[str]:
    """Why no half-precision implementation can follow float32, or None: a ``window_attention`` with
    ``v2=true`` (cosine attention) and one channel per head normalizes each scalar query and key to its
    sign, a function with a jump at 0.  A q or k near 0, computed in f16 / bf16 by the qkv linear, may come
    out with the other sign and move that logit by twice the head's logit scale (up to 2 x 100): in campaign
    program 7139 (logit scales 7.4-15.8) 4 of its 2,160 q and k values came out of the bf16 linear with the
    other sign, and the output was 0.17 off where f32 was 3e-7 off the float64 result; keeping the logits,
    the softmax and the position-bias MLP in float32 did not change that."""
    for n in case.graph().nodes():
        if n.op == "window_attention" and n.attrs.get("v2"):
            channels = n.type.shape[-1]
            if isinstance(channels, int) and channels // int(n.attrs["heads"]) == 1:
                return (f"{n.id}: window_attention v2 with one channel per head normalizes each query and key "
                        "to its sign (a jump at 0): a half-precision q or k near 0 may flip a logit by twice the "
                        "logit scale")
    return None


PROPERTIES: dict[str, Callable[[Case], None]] = {
    "elaborate": prop_elaborate,
    "runs": prop_runs,
    "fmt": prop_fmt,
    "reprint": prop_reprint,
    "standalone": prop_standalone,
    "twin": prop_twin,
    "passes": prop_passes,
    "prune": prop_prune_keep,
    "export": prop_export,
    "tvm": prop_tvm,
    "quantize": prop_quantize,
    "quantize_bound": prop_quantize_bound,
    "quantize_tvm": prop_quantize_tvm,
    "bf16_tvm": prop_bf16_tvm,
    "cast": prop_cast,
}
