"""quantize: post-training int8 quantization of convolutions and linear layers.

Precondition: ``verify(graph)`` passes; the graph holds trained float32
weights and is used for inference.  Run ``fold_bn`` first (the ``int8``
pipeline and ``convdsl quantize`` do), so that batchnorms are folded into the
convs that get quantized.

Postcondition: every conv1d/2d/3d (zero padding) and linear (the ops whose
``int8`` in the op table names their quantized op) that reads a float tensor
and is not kept in float by ``per_layer`` is a ``qconv*d``/``qlinear`` with
the same node id: int8 weights, symmetric per output channel
(``<id>.weight`` i8, ``<id>.w_scale`` f32), int32 bias (``<id>.bias``), int8
input, int32 accumulation, and a fused ``relu`` when its only reader was one (or a ``relu6`` whose value
is requantized to int8: its calibrated range lies in [0, 6], so the clamps at the zero point and at qmax
are its bounds).
Its input is a ``quantize`` node (per-tensor, asymmetric, scale and zero point
from calibration) or, when the producer is itself quantized, the producer's
int8 output directly.  Its output is int8 (requantized with the calibrated
range of the value) when some reader is quantized, and float32 otherwise;
float readers of an int8 value read a ``dequantize`` of it, and so do the
other float readers of a float value quantized for a layer (a residual add
reading a block's output: ``reuse_int8``, off with ``--float-residuals``).  Max-pooling and
reshapes/permutes between quantized layers (ops marked ``int8_passthrough``)
run on the int8 tensor (they commute with quantization).  A ``concat`` (ops marked ``int8_shared_scale``) that a
quantized layer reads runs on int8 too where every input comes from a quantized layer, directly or through those
ops: the layers write one scale, that of the union of their calibrated ranges and the concat's (``_share_ranges``;
a relu'd layer's zero point may then lie above qmin, where its clamp stands for the relu), so U-Net's skip and
up-conv join as they are; an input from a float op, or through a fused relu6 (whose bound is the clamp at the top
of its own range), keeps the concat float.  Every other op, and every layer kept in float, is
unchanged: quantize/dequantize nodes stand at the boundaries.  Graph inputs
and outputs keep their dtypes.  ``quantize_with_report`` also returns what was
done (per-layer scales, what stayed float and why).  The input graph is not
modified.

Transposed convs: a ``conv_transpose{1,2,3}d`` (static spatial size) is first split into the ``conv{nd}d`` of
its stride phases (``<id>.phases``: ``convdsl/ir/ops/conv.py``'s ``phase_kernel``, O s^nd output channels, the
bias repeated per phase), a ``reshape`` -> ``permute`` -> ``reshape`` that interleaves the phases, and where the
output is a window of that (a ``pad``, or a last phase longer than the output: ``phase_window``) an
``index_select`` of a run per cropped dim (``<id>.crop``, a slice in every backend); the conv is then quantized
as above (per (channel, phase) weight scales) and the shuffle and crop run on its int8 output where a quantized
layer reads it (a relu / relu6 that alone reads the transposed conv moves onto the phases, whose qconv fuses
it).  U-Net's 2x2 / stride-2 up-convs need no crop; k 3 / stride 2 / pad 1 / output_pad 1 (FCN-style decoders)
and k 4 / stride 2 / pad 1 (DCGAN) crop one position at each end.  A transposed conv of a 1x1 input (``of_a_point``:
a GAN generator's first layer) is a ``flatten`` -> ``linear`` to its taps (``<id>.taps``) -> ``reshape``
(``<id>.to_map``) instead.  Kept float, with the reason in the report:
an ``output_pad`` past the last position any input reaches (zeros appended: in int8 those would be the zero
point, and the phases' conv adds the bias before) and decompositions past ``MAX_PHASE_WORK``.

Transformers: an ``mhsa`` (self-attention with packed q/k/v weights, no mask or relative bias) is
first split into ``linear`` (its q/k/v projection, ``<id>.in_proj``) -> ``packed_attention``
(``<id>.attention``) -> ``linear`` (``<id>.<proj>``, default ``<id>.out_proj``), and a ``patch_embed``
into ``conv2d`` -> ``flatten`` -> ``transpose``; the linears and the conv are then quantized as
above, the attention between them becomes ``qattention`` (int8 q|k|v in, int8 out when its reader
is quantized), and a ``layernorm`` (over the last dim) or exact ``gelu`` whose value a quantized
layer reads becomes ``qlayernorm`` / ``qgelu``, which write the int8 tensor themselves (the
quantize node goes).  These ops compute with exact integer sums and single float32 steps, so the
int8 backends agree with the torch simulation to the bit through a whole transformer.
``qlayernorm``'s 16-bit input step is twice the calibrated max |x| over 32767.

The arithmetic of the quantized ops is defined in ``convdsl/ir/ops/quant.py``;
the torch backend simulates it exactly, the TVM backend runs it in int8.
"""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np

from convdsl.errors import UsageError
from convdsl.ir.graph import Graph, ModuleBuilder, Node, Value
from convdsl.ir.ops import OPS
from convdsl.ir.ops.attention import mha_names
from convdsl.ir.ops.conv import (int8_phase_refusal, of_a_point, phase_kernel, phase_shuffle, phase_taps,
                                 phase_window)
from convdsl.ir.ops.quant import INT_DTYPES, LN_QMAX, QRANGE, f32, qparams_for_range, quantize_bias, quantize_weight
from convdsl.ir.optable import Init, ParamSpec, bind_attrs, tuple_n
from convdsl.ir.types import TensorType
from convdsl.passes.calibrate import METHODS, as_batches, observe
from convdsl.passes.rewrite import owners, sole_user


def _quantizable(node: Node) -> bool:
    return node.op in OPS and OPS[node.op].int8 is not None


SPLIT_OPS = ("mhsa", "patch_embed", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")  # split_for_int8 splits
# them into quantizable parts
# activations a quantized layer absorbs (its ``relu``: the requantization clamps at the zero point). relu6 only
# where the layer writes int8 whose range ends at or below 6 (``_relu6_fold``): the clamp at qmax is then its
# upper bound too
FUSED_ACTIVATIONS = ("relu", "relu6")
FUSED_OUTPUT = ("qlayernorm", "qgelu")  # float in, int8 out: made only where a quantized layer reads the value
WEIGHTLESS = ("qattention",)  # int8 in, no weights


def _qop(node: Node) -> str:
    return OPS[node.op].int8


def _passthrough(node: Node) -> bool:
    """Commutes with per-tensor quantization: runs on the int8 tensor, keeping its scale."""
    return node.op in OPS and OPS[node.op].int8_passthrough


def _shared_scale(node: Node) -> bool:
    """Joins tensors (concat): runs on int8 ones that share one scale."""
    return node.op in OPS and OPS[node.op].int8_shared_scale


@dataclass
class QuantizeReport:
    """What ``quantize`` did: the settings, each quantized layer (node, op, input scale and zero
    point, output, fused relu) and the layers kept in float with the reason."""

    method: str
    percentile: float | None
    weight_bits: int
    act_dtype: str
    calibration_batches: int
    calibration_samples: int
    layers: list[dict[str, Any]]
    kept_float: dict[str, str]
    weight_bits_reason: str = "given"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["float"] = out.pop("kept_float")
        return out


class Quantized(NamedTuple):
    graph: Graph
    report: QuantizeReport


AUTO = "auto"


def weight_bits_for_cpu(flags: Iterable[str]) -> tuple[int, str]:
    """(weight bits, why) for the CPU with these /proc/cpuinfo ``flags``: 8 where AVX-512 VNNI's
    ``vpdpbusd`` sums u8 x s8 products exactly in int32; 7 ([-63, 63]) on an AVX2 CPU without it,
    where x86's u8 x s8 instruction is ``vpmaddubsw``, whose int16 pair sums saturate for 8-bit
    weights (2 * 255 * 127 > 32767) but never for 7-bit ones (2 * 255 * 63 = 32130): the int8
    kernels then run it exactly, twice the products per instruction of ``vpmaddwd`` on int16
    (the reduced range fbgemm uses on such CPUs); 8 on other CPUs."""
    flags = set(flags)
    if "avx512_vnni" in flags:
        return 8, "avx512_vnni: vpdpbusd sums 8-bit products exactly"
    if "avx2" in flags:
        return 7, "avx2 without avx512_vnni: 7-bit weights let vpmaddubsw sum its pairs exactly in int16"
    return 8, "no AVX2 or VNNI int8 instruction: 8-bit weights"


def quantize(graph: Graph, calib_batches: Any = None, method: str = "minmax", per_layer: Mapping[str, str] | None = None,
             weight_bits: int | str = 8, act_dtype: str = "u8", percentile: float = 99.99, fuse_relu: bool = True,
             threads: int | None = None, *, build: ModuleBuilder, cpu_flags: Iterable[str] | None = None,
             reuse_int8: bool = True) -> Graph:
    """A copy of ``graph`` with its convs and linears in int8 (see the module docstring and
    ``quantize_with_report``)."""
    return quantize_with_report(graph, calib_batches, method, per_layer, weight_bits, act_dtype, percentile,
                                fuse_relu, threads, build=build, cpu_flags=cpu_flags, reuse_int8=reuse_int8).graph


def quantize_with_report(graph: Graph, calib_batches: Any = None, method: str = "minmax",
                         per_layer: Mapping[str, str] | None = None, weight_bits: int | str = 8, act_dtype: str = "u8",
                         percentile: float = 99.99, fuse_relu: bool = True, threads: int | None = None, *,
                         build: ModuleBuilder, cpu_flags: Iterable[str] | None = None,
                         reuse_int8: bool = True) -> Quantized:
    """``quantize``: (the int8 graph, a ``QuantizeReport``).

    ``calib_batches``: calibration inputs (an array, a list of batches, or a list of tuples for
    several inputs), run through the float graph by the module ``build`` makes of it (the torch
    backend's ``build_module``).  ``method``: minmax,
    percentile or mse.  ``per_layer``: {node id, fnmatch pattern or scope: "float" | "int8"};
    the last matching entry wins.  ``weight_bits`` (2..8) narrows the weight range (still stored
    as int8), or ``"auto"``: the bits ``weight_bits_for_cpu(cpu_flags)`` chooses for the CPU whose
    flags are given (7 on AVX2 without VNNI, else 8; the report says which and why).
    ``act_dtype``: u8 (default, x86's u8 x s8) or i8 activations.  ``reuse_int8`` (default): the float
    readers of a value quantized for a layer (a residual connection's add) read the dequantize of that
    int8 value, as in an ONNX QDQ graph or OpenVINO's int8 path, so the value exists once, in int8, and its
    producer's epilogue can quantize it; False: they read the float value (one rounding less on the skip
    path, and the float tensor is written and read again)."""
    # conv(x, w) [-> relu]  =>  quantize(x) -> qconv(q_x, int8(w)) [-> dequantize]
    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}'", hint=f"methods: {', '.join(METHODS)}")
    if act_dtype not in INT_DTYPES:
        raise UsageError(f"activations can be u8 or i8, not '{act_dtype}'")
    reason = "given"
    if weight_bits == AUTO:
        if cpu_flags is None:
            raise UsageError("weight_bits='auto' needs the CPU's flags (cpu_flags=...)")
        weight_bits, reason = weight_bits_for_cpu(cpu_flags)
    if not isinstance(weight_bits, int) or not 2 <= weight_bits <= 8:
        raise UsageError(f"weight_bits must be between 2 and 8, got {weight_bits}")
    g = graph.copy()
    split_for_int8(g, per_layer or {})
    plan, fusable, kept = _plan(g, per_layer or {}, fuse_relu)
    order = g.order()
    out_of = {nid: Value(relu or nid) for nid, relu in plan.items()}  # the value each quantized layer replaces
    sources = _int8_sources(g, order, plan, fusable)
    wants_int = _int_wanted(g, order, plan, sources)
    joins = [nid for nid in sources if _shared_scale(g.node(nid)) and Value(nid) in wants_int]
    # a relu6 read in float stays (only the int8 clamp can stand for its bound)
    _keep_relu6_where(g, plan, out_of, lambda nid: out_of[nid] not in wants_int)
    fused = [nid for nid in fusable if Value(nid) in wants_int]
    for nid in fusable:
        if nid not in fused:
            kept[nid] = "no quantized layer reads its output"
    observed = [g.inputs_of(nid)[0] for nid in plan] + [v for v in out_of.values() if v in wants_int]
    observed += [Value(nid) for nid in fused] + [g.inputs_of(nid)[0] for nid in fused] + [Value(c) for c in joins]
    batches = as_batches(calib_batches)
    ranges, stats = observe(g, observed, batches, method, build=build, percentile=percentile, dtype=act_dtype,
                            threads=threads)
    _share_ranges(joins, sources, ranges)

    # (a calibration method that widened the range past 6: the relu6 stays)
    _keep_relu6_where(g, plan, out_of, lambda nid: not _relu6_fold(ranges[out_of[nid]], act_dtype))
    rw = _Rewriter(g, ranges, act_dtype, reuse_int8, stats)
    fused_in = {nid: g.inputs_of(nid)[0] for nid in fused}  # the calibrated values, before rewrites move them
    layers = []
    for nid in order:
        if nid in plan and _qop(g.node(nid)) in WEIGHTLESS:
            layers.append(rw.attention(g.node(nid), out_of[nid] in wants_int))
        elif nid in plan:
            layers.append(rw.layer(g.node(nid), plan[nid], out_of[nid] in wants_int, weight_bits))
        elif nid in fused:
            layers.append(rw.fused_output(g.node(nid), fused_in[nid]))
        elif nid in g and _passthrough(g.node(nid)) and Value(nid) in wants_int:
            rw.passthrough(g.node(nid))
        elif nid in joins:
            rw.join(g.node(nid))
    rw.drop_dead_dequantizes()
    report = QuantizeReport(method, percentile if method == "percentile" else None, weight_bits, act_dtype,
                            len(batches), sum(len(b[0]) for b in batches), layers, kept, reason)
    return Quantized(g, report)


# ---- planning ---------------------------------------------------------------------------------------
def layer_setting(nid: str, per_layer: Mapping[str, str]) -> str:
    """int8 or float for node ``nid``: the last per_layer entry that names it (id, pattern or scope)."""
    setting = "int8"
    for pattern, value in per_layer.items():
        if value not in ("float", "int8"):
            raise UsageError(f"per-layer setting for '{pattern}' must be float or int8, got {value!r}")
        if nid == pattern or fnmatch.fnmatchcase(nid, pattern) or nid.startswith(pattern + "."):
            setting = value
    return setting


def _plan(g: Graph, per_layer: Mapping[str, str], fuse_relu: bool
          ) -> tuple[dict[str, str | None], list[str], dict[str, str]]:
    """{layer to quantize: the relu fused into it (or None)}, the layer norms and GELUs that may write
    int8 (``FUSED_OUTPUT``: they do where a quantized layer reads them), and {layer kept in float: why}."""
    plan: dict[str, str | None] = {}
    fusable: list[str] = []
    kept: dict[str, str] = {}
    matched = set()
    for node in g.nodes():
        if not _quantizable(node) and node.op not in SPLIT_OPS:
            continue
        for pattern in per_layer:
            if node.id == pattern or fnmatch.fnmatchcase(node.id, pattern) or node.id.startswith(pattern + "."):
                matched.add(pattern)
        if not _quantizable(node):  # an mhsa, patch_embed or transposed conv left whole: its setting or its form
            kept[node.id] = _why_not(g, node, per_layer) or _conv_transpose_why_not(g, node) \
                or f"{node.op} with these attributes is not split into int8 parts"
            continue
        reason = _why_not(g, node, per_layer)
        if reason:
            kept[node.id] = reason
            continue
        if _qop(node) in FUSED_OUTPUT:
            fusable.append(node.id)
            continue
        if _qop(node) in WEIGHTLESS:
            plan[node.id] = None
            continue
        relu = sole_user(g, Value(node.id)) if fuse_relu else None
        plan[node.id] = relu if relu is not None and g.node(relu).op in FUSED_ACTIVATIONS else None
    unknown = sorted(set(per_layer) - matched)
    if unknown:
        from convdsl.errors import did_you_mean

        names = [n.id for n in g.nodes() if _quantizable(n) or n.op in SPLIT_OPS]
        raise UsageError(f"per-layer config names no quantizable layer: {', '.join(unknown)}",
                         hint=did_you_mean(unknown[0], names) or f"layers: {', '.join(names[:12])}")
    return plan, fusable, kept


def _keep_relu6_where(g: Graph, plan: dict[str, str | None], out_of: dict[str, Value], keep) -> None:
    """The layers of ``plan`` with a fused relu6 for which ``keep(layer)``: planned without it again (the relu6
    stays a float op after the layer's float32 output)."""
    for nid, act in plan.items():
        if act is not None and g.node(act).op == "relu6" and keep(nid):
            plan[nid], out_of[nid] = None, Value(nid)


def _relu6_fold(value_range: tuple[float, float], act_dtype: str) -> bool:
    """Whether quantize(relu6(y)) with the qparams of relu6's calibrated ``value_range`` equals
    clamp(round(y / scale) + zp, zp, qmax), a layer's fused-relu requantization: real 0 is qmin (a range from
    0: zp = qmin, so the clamp at zp is relu6's lower bound) and 6 maps at or past qmax (a range ending at or
    below 6), so for y > 6 both give qmax (rounding is monotone).  Always true of a calibrated relu6 output."""
    qmin, qmax = QRANGE[act_dtype]
    scale, zp = qparams_for_range(*value_range, act_dtype)
    return zp == qmin and round(6.0 * float(np.float32(1.0) / np.float32(scale))) + zp >= qmax


def _why_not(g: Graph, node: Node, per_layer: Mapping[str, str]) -> str | None:
    if layer_setting(node.id, per_layer) == "float":
        return "kept in float by the per-layer config"
    x = g.in_types(node.id)[0]
    if x.dtype != "f32":
        return f"input is {x.dtype}, not f32"
    if node.op != "linear" and node.attrs.get("pad_mode", "zeros") != "zeros":
        return f"pad_mode={node.attrs['pad_mode']} (only zero padding is quantized)"
    if any(owners(g, key) != [node.id] for key in node.params.values()):
        return "its weights are shared with another node"
    if any(key != f"{node.id}.{local}" for local, key in node.params.items()):
        return "its parameters are not named <id>.<name>"
    if node.op == "layernorm" and node.attrs["dims"] != 1:
        return f"it normalizes over {node.attrs['dims']} dims (qlayernorm normalizes over the last)"
    if node.op == "gelu" and node.attrs["approximate"] != "none":
        return "approximate=tanh (qgelu computes the erf form)"
    if node.op == "packed_attention" and (x.rank != 3 or not isinstance(x.shape[-1], int)):
        return f"input {x} is not tokens [N, L, 3C] with a static width"
    return None


# ---- splitting the ops whose parts are quantized ------------------------------------------------------
def _splittable_mhsa(g: Graph, node: Node) -> bool:
    """An mhsa the int8 path splits: self-attention with one packed q/k/v weight (input width = dim), no
    mask input, causal mask or relative bias, its parameters its own and named <id>.<name>."""
    a = node.attrs
    if node.op != "mhsa" or len(g.inputs_of(node.id)) != 1 or a["rel_pos"] or a["mask"] not in (None, "none"):
        return False
    x = g.in_types(node.id)[0]
    if x.dtype != "f32" or x.rank != 3 or x.shape[-1] != a["dim"]:
        return False
    return all(key == f"{node.id}.{local}" and owners(g, key) == [node.id] for local, key in node.params.items())


def split_for_int8(g: Graph, per_layer: Mapping[str, str]) -> list[str]:
    """Split, in place, each splittable ``mhsa``, each ``patch_embed`` and each splittable transposed conv that
    the per-layer config leaves int8 (module docstring); returns the ids split."""
    done = []
    for node in list(g.nodes()):
        if layer_setting(node.id, per_layer) != "int8":
            continue
        if _splittable_mhsa(g, node):
            _split_mhsa(g, node)
        elif node.op == "patch_embed" and g.in_types(node.id)[0].dtype == "f32" \
                and all(owners(g, key) == [node.id] for key in node.params.values()):
            _split_patch_embed(g, node)
        elif node.op.startswith("conv_transpose") and _why_not(g, node, per_layer) is None \
                and _conv_transpose_why_not(g, node) is None:
            _split_conv_transpose(g, node)
        else:
            continue
        done.append(node.id)
    return done


def _add_op(g: Graph, nid: str, op: str, inputs: list[Value], kwargs: dict, like: Node, seq: float,
            arrays: Mapping[str, np.ndarray] | None = None) -> str:
    """Add node ``nid`` = ``op(**kwargs)`` of ``inputs`` in ``like``'s scope, its parameters
    ``<nid>.<name>`` set from ``arrays``."""
    opdef = OPS[op]
    attrs = bind_attrs(opdef, [], kwargs)
    ins = [g.type_of(v) for v in inputs]
    if opdef.normalize is not None:
        attrs = opdef.normalize(attrs, ins)
    specs = opdef.param_specs(attrs, ins)
    g.add_node(nid, op, inputs, attrs, opdef.infer(attrs, ins), params={k: f"{nid}.{k}" for k in specs},
               span=like.span, scope=like.scope, block=like.block)
    g.node(nid).seq = seq
    for local, spec in specs.items():
        g.params.declare(f"{nid}.{local}", spec)
        g.params[f"{nid}.{local}"] = np.asarray(arrays[local], np.float32)
    return nid


def _take_params(g: Graph, node: Node) -> dict[str, np.ndarray]:
    """``node``'s parameter arrays by local name, removed from the graph (its parts declare them again)."""
    arrays = {local: g.params[key] for local, key in node.params.items()}
    for key in node.params.values():
        g.params.remove(key)
    return arrays


def _replace(g: Graph, node: Node, last: str) -> None:
    """Readers and graph outputs of ``node`` read ``last`` instead; ``node`` goes."""
    for c, p in g.users(Value(node.id)):
        g.g.add_edge(last, c, port=p, out=0)
    g.outputs = [Value(last) if o == Value(node.id) else o for o in g.outputs]
    g.remove_node(node.id)


def _split_mhsa(g: Graph, node: Node) -> None:
    a, nid = node.attrs, node.id
    names = mha_names(a)
    x = g.inputs_of(nid)[0]
    arr = _take_params(g, node)
    qkv = {"weight": arr[names.w], **({"bias": arr[names.b]} if a["qkv_bias"] else {})}
    out = {"weight": arr[names.out_w], **({"bias": arr[names.out_b]} if a["proj_bias"] else {})}
    proj = names.out_w.rsplit(".", 1)[0]
    p = _add_op(g, g.unique_id(f"{nid}.in_proj"), "linear", [x], {"out": 3 * a["dim"], "bias": a["qkv_bias"]},
                node, node.seq, qkv)
    att = _add_op(g, g.unique_id(f"{nid}.attention"), "packed_attention", [Value(p)],
                  {"heads": a["heads"], "scale": a["scale"]}, node, node.seq + 0.1)
    o = _add_op(g, g.unique_id(f"{nid}.{proj}"), "linear", [Value(att)], {"out": a["dim"], "bias": a["proj_bias"]},
                node, node.seq + 0.2, out)
    _replace(g, node, o)


def _split_patch_embed(g: Graph, node: Node) -> None:
    a, nid = node.attrs, node.id
    x = g.inputs_of(nid)[0]
    arr = _take_params(g, node)
    conv = g.unique_id(f"{nid}.conv")
    c = _add_op(g, conv, "conv2d", [x], {"out": a["dim"], "k": a["patch"], "stride": a["patch"], "bias": a["bias"]},
                node, node.seq, arr)
    f = _add_op(g, g.unique_id(f"{nid}.flatten"), "flatten", [Value(c)], {"start": 2}, node, node.seq + 0.1)
    t = _add_op(g, g.unique_id(f"{nid}.tokens"), "transpose", [Value(f)], {"dim0": 1, "dim1": 2}, node,
                node.seq + 0.2)
    _replace(g, node, t)


def _conv_transpose_why_not(g: Graph, node: Node) -> str | None:
    """Why ``split_for_int8`` leaves the transposed conv ``node`` whole for its form (None: it splits it, where
    ``_why_not``, the reasons every layer shares, has none either; other ops: None)."""
    if not node.op.startswith("conv_transpose"):
        return None
    a, nd = node.attrs, int(node.op[len("conv_transpose")])
    x = g.in_types(node.id)[0]
    if not all(isinstance(n, int) for n in x.shape[2:]):
        return f"input {x} has a symbolic spatial size (the phases are interleaved by static reshapes)"
    return int8_phase_refusal(x.shape[2:], *(tuple_n(a[n], nd) for n in ("k", "stride", "pad", "dilation",
                                                                         "output_pad")))


def _split_conv_transpose(g: Graph, node: Node) -> None:
    """``node`` (a transposed conv ``_conv_transpose_why_not`` accepts) as the conv of its stride phases, output
    channels phase-major (``phase_kernel``), the reshape -> permute -> reshape of ``phase_shuffle`` interleaving
    them, and an ``index_select`` of a run (a slice) per dim where the output is a window of that (its pad, or a
    longer last phase: ``phase_window``).  A relu / relu6 that alone reads the transposed conv moves in front of
    the interleave (elementwise, it commutes with moving values), where the quantized phases' conv fuses it."""
    a, nid, nd = node.attrs, node.id, int(node.op[len("conv_transpose")])
    x = g.inputs_of(nid)[0]
    k, s, d, pad, opad = (tuple_n(a[n], nd) for n in ("k", "stride", "dilation", "pad", "output_pad"))
    lengths = g.in_types(nid)[0].shape[2:]
    t = phase_taps(k, s, d)
    q, _, window = phase_window(lengths, k, s, pad, d, opad)
    arr = _take_params(g, node)
    o, groups, phases = a["out"], a["groups"], int(np.prod(s))
    point = of_a_point(lengths, pad, opad, d, groups)
    if point:  # each output position one tap: [N, C] x [C, O k^nd], a linear
        c, taps = arr["weight"].shape[0], int(np.prod(k))
        params = {"weight": arr["weight"].reshape(c, o * taps).T}
        if a["bias"]:
            params["bias"] = np.repeat(arr["bias"], taps)
        flat = _add_op(g, g.unique_id(f"{nid}.flatten"), "flatten", [x], {"start": 1}, node, node.seq - 0.1)
        last = _add_op(g, g.unique_id(f"{nid}.taps"), "linear", [Value(flat)], {"out": o * taps, "bias": a["bias"]},
                       node, node.seq, params)
    else:
        params = {"weight": phase_kernel(arr["weight"], s, d, groups)}
        if a["bias"]:
            params["bias"] = np.tile(arr["bias"].reshape(groups, 1, o // groups), (1, phases, 1)).reshape(-1)
        last = _add_op(g, g.unique_id(f"{nid}.phases"), f"conv{nd}d", [x],
                       {"out": o * phases, "k": list(t), "stride": 1, "pad": [ti - 1 for ti in t], "groups": groups,
                        "bias": a["bias"]}, node, node.seq, params)
    act = sole_user(g, Value(nid))
    act = act if act is not None and g.node(act).op in FUSED_ACTIVATIONS else None
    if act is not None:  # relu(interleave(y)) = interleave(relu(y)): the relu moves onto the phases, whose
        # quantized conv fuses it, so the interleave and crop run on the int8 tensor (DCGAN: ... -> BN -> ReLU);
        # its readers read the transposed conv meanwhile, which _replace points at the result
        g.replace_uses(Value(act), Value(nid))
        g.set_inputs(act, [Value(last)])
        g.node(act).types = [g.type_of(Value(last))]
        g.node(act).seq = node.seq + 0.05
        last = act
    if point:
        last = _add_op(g, g.unique_id(f"{nid}.to_map"), "reshape", [Value(last)], {"shape": [0, o, *k]}, node,
                       node.seq + 0.1)
    elif phases > 1:
        split, dims, merged = phase_shuffle(o, groups, s, q)
        last = _add_op(g, g.unique_id(f"{nid}.split_phases"), "reshape", [Value(last)], {"shape": split}, node,
                       node.seq + 0.1)
        last = _add_op(g, g.unique_id(f"{nid}.interleave"), "permute", [Value(last)], {"dims": dims}, node,
                       node.seq + 0.2)
        last = _add_op(g, g.unique_id(f"{nid}.merge_phases"), "reshape", [Value(last)], {"shape": merged}, node,
                       node.seq + 0.3)
    for i, ((start, stop), qi, si) in enumerate(zip(window, q, s)):
        if not point and (start, stop) != (0, qi * si):
            last = _add_op(g, g.unique_id(f"{nid}.crop"), "index_select", [Value(last)],
                           {"index": tuple(range(start, stop)), "dim": 2 + i}, node, node.seq + 0.4 + 0.01 * i)
    _replace(g, node, last)


def _int_wanted(g: Graph, order: list[str], plan: dict[str, str | None], sources: dict[str, list[Value]]
                ) -> set[Value]:
    """Values (of the input graph) that some quantized layer reads, directly or through passthrough ops
    and the joins that can run in int8 (``sources``): these are produced in int8 where their producer is
    quantized."""
    wanted: set[Value] = set()
    for nid in reversed(order):
        node = g.node(nid)
        for i in range(len(node.types)):
            v = Value(nid, i)
            for c, port in g.users(v):
                through = _passthrough(g.node(c)) or (_shared_scale(g.node(c)) and c in sources)
                if (c in plan and port == 0) or (through and Value(c) in wanted):
                    wanted.add(v)
    return wanted


def _int8_sources(g: Graph, order: list[str], plan: dict[str, str | None], fusable: list[str]
                  ) -> dict[str, list[Value]]:
    """{join (concat) whose inputs can all be int8 with one scale: the values whose producers then write that
    scale}.  An input can when it is the output of a layer to quantize (not through a fused relu6, whose bound
    is the clamp at the top of its own range), of a layer norm or GELU that may write int8, or of a passthrough
    op or another such join reading one; the producers of the values listed (the layers, and the joins read)
    write the join's scale."""
    made = {Value(relu or nid): nid for nid, relu in plan.items() if relu is None or g.node(relu).op != "relu6"}
    made.update({Value(nid): nid for nid in fusable})
    sources: dict[str, list[Value]] = {}

    def traced(v: Value) -> Value | None:  # the value whose producer writes v's int8 scale
        while v not in made and v.node not in sources:
            node = g.node(v.node)
            if not _passthrough(node):
                return None
            v = g.inputs_of(node.id)[0]
        return v

    for nid in order:
        node = g.node(nid)
        if _shared_scale(node):
            found = [traced(v) for v in g.inputs_of(nid)]
            if all(v is not None for v in found):
                sources[nid] = found
    return sources


def _share_ranges(joins: list[str], sources: dict[str, list[Value]], ranges: dict[Value, tuple[float, float]]
                  ) -> None:
    """Give each int8 join and the values its producers write (``sources``; joins chain) one range: the union
    of their calibrated ranges (a concat's covers its inputs' under minmax calibration), so that they write one
    scale and the join moves int8 values as they are."""
    from networkx.utils import UnionFind

    groups = UnionFind()
    for c in joins:
        groups.union(Value(c), *sources[c])
    for members in groups.to_sets():
        lo = min(ranges[v][0] for v in members)
        hi = max(ranges[v][1] for v in members)
        for v in members:
            ranges[v] = (lo, hi)


# ---- weights and bias ---------------------------------------------------------------------------------
LN_HEADROOM = 2.0  # qlayernorm's 16-bit input covers twice the calibrated max |x|


def ln_input_scale(lo: float, hi: float) -> float:
    """qlayernorm's input step: LN_HEADROOM * max(|lo|, |hi|) / LN_QMAX (1.0 for an all-zero input)."""
    amax = max(abs(float(lo)), abs(float(hi)))
    return f32(LN_HEADROOM * amax / LN_QMAX) if amax > 0 and np.isfinite(amax) else 1.0
INT32_MAX = 2**31 - 1
ACT_SPAN = 255  # the largest |q_x - in_zp| of u8 or i8 activations


def bias_limit(fan_in: int, bits: int = 8) -> int:
    """The largest |int32 bias| for which bias + sum(q_x - in_zp) * q_w[c] over ``fan_in`` products
    (and the input zero point folded into the bias, bias - in_zp * sum(q_w[c])) stays in int32."""
    return INT32_MAX - fan_in * ACT_SPAN * (2 ** (bits - 1) - 1)


def quantize_weight_and_bias(w: np.ndarray, b: np.ndarray | None, in_scale: float,
                             bits: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(int8 weights, float32 scales, int32 bias) for one layer, with the bias never saturated.

    The bias is in units of in_scale * w_scale[c].  When that unit is tiny (a vanishing input
    range) the bias can exceed int32; saturating it changes the function, and a bias near
    the limit makes the int32 accumulator overflow on a backend that adds in int32 (the torch
    simulation sums in float64, so the two would disagree).  As ONNX Runtime's quantizer does, such a
    channel's weight scale is raised until its bias fits ``bias_limit`` (its weights lose precision,
    but its output is dominated by the bias there)."""
    # w_scale[c] >= |b[c]| / (in_scale * limit)  =>  |round(b[c] / (in_scale * w_scale[c]))| <= limit
    q, ws = quantize_weight(w, bits)
    if b is None:
        return q, ws, None
    fan_in = int(np.prod(w.shape[1:]))
    limit = bias_limit(fan_in, bits)
    need = np.abs(np.asarray(b, np.float64)) / (np.float64(in_scale) * limit)
    low = ws.astype(np.float64) < need
    if low.any():
        ws = ws.copy()
        # float32 rounding: step up until the float32 scale itself is large enough
        for c in np.flatnonzero(low):
            s = np.float32(need[c])
            while np.float64(s) < need[c]:
                s = np.nextafter(s, np.float32(np.inf))
            ws[c] = s
        qmax = 2 ** (bits - 1) - 1
        w64 = np.asarray(w, np.float64)
        s64 = ws.astype(np.float64).reshape((-1,) + (1,) * (w64.ndim - 1))
        q = np.clip(np.round(w64 / s64), -qmax, qmax).astype(np.int8)
    qb = quantize_bias(b, in_scale, ws)
    assert np.abs(qb.astype(np.int64)).max(initial=0) <= limit  # by construction of ws
    return q, ws, qb


# ---- rewriting --------------------------------------------------------------------------------------
class _Rewriter:
    def __init__(self, g: Graph, ranges: dict[Value, tuple[float, float]], act_dtype: str,
                 reuse_int8: bool = True, stats: Mapping[Value, Any] = ()) -> None:
        self.g, self.ranges, self.act_dtype, self.reuse_int8 = g, ranges, act_dtype, reuse_int8
        self.stats = dict(stats)
        self.int_of: dict[str, tuple[Value, float, int]] = {}  # dequantize node -> (int8 value, scale, zp)
        self.quantized: dict[Value, tuple[Value, float, int]] = {}  # float value -> its quantize node
        self.dequantizes: list[str] = []

    def int8(self, x: Value) -> tuple[Value, float, int]:
        """(int8 value, scale, zero point) standing for float value ``x``."""
        if x.node in self.int_of:
            return self.int_of[x.node]
        if x not in self.quantized:
            scale, zp = qparams_for_range(*self.ranges[x], self.act_dtype)
            t = self.g.type_of(x)
            readers = self.g.users(x)
            q = self._add(f"{x.node}_quant", "quantize", [x], {"scale": scale, "zero_point": zp, "dtype": self.act_dtype},
                          [TensorType(t.shape, self.act_dtype)], after=x.node)
            self.quantized[x] = (Value(q), scale, zp)
            if self.reuse_int8 and len(readers) > 1:  # the other readers read the int8 value too
                self._reroute(x, readers, self._add(f"{x.node}_dequant", "dequantize", [Value(q)],
                                                    {"scale": scale, "zero_point": zp}, [TensorType(t.shape, "f32")],
                                                    after=q), self.quantized[x])
        return self.quantized[x]

    def layer(self, node: Node, relu: str | None, int_out: bool, bits: int) -> dict:
        g = self.g
        x = g.inputs_of(node.id)[0]
        q, in_scale, in_zp = self.int8(x)
        qop = OPS[node.op].int8
        activation = g.node(relu).op if relu else None
        attrs: dict[str, Any] = {k: v for k, v in node.attrs.items() if OPS[qop].attr(k) is not None}
        attrs.update(in_scale=in_scale, in_zp=in_zp, out_dtype="f32", out_scale=1.0, out_zp=0, relu=relu is not None)
        out = self._output(attrs, Value(relu or node.id), int_out)
        wf = g.params[node.params["weight"]]
        bf = g.params[node.params["bias"]] if node.attrs["bias"] else None
        w, ws, qb = quantize_weight_and_bias(wf, bf, in_scale, bits)
        arrays = {"weight": w, "w_scale": ws}
        if qb is not None:
            arrays["bias"] = qb
        new = self._swap(node, qop, [q], attrs, drop=[relu] if relu else [])
        self._set_params(new, arrays)
        if int_out:
            self._dequantize_uses(new, attrs["out_scale"], attrs["out_zp"])
        return {"node": node.id, "op": qop, "in": {"scale": in_scale, "zero_point": in_zp}, "out": out,
                "relu": relu is not None, "activation": activation, "weight_bits": bits}

    def _output(self, attrs: dict[str, Any], v: Value, int_out: bool) -> dict[str, Any]:
        """Set ``attrs``' output to the int8 quantization of ``v``'s calibrated range (f32 when not
        ``int_out``: attrs unchanged); returns the report's ``out`` entry."""
        if not int_out:
            return {"dtype": "f32"}
        out_scale, out_zp = qparams_for_range(*self.ranges[v], self.act_dtype)
        attrs.update(out_dtype=self.act_dtype, out_scale=out_scale, out_zp=out_zp)
        return {"dtype": self.act_dtype, "scale": out_scale, "zero_point": out_zp}

    def attention(self, node: Node, int_out: bool) -> dict:
        """packed_attention -> qattention on the int8 q|k|v."""
        q, in_scale, in_zp = self.int8(self.g.inputs_of(node.id)[0])
        attrs = {"heads": node.attrs["heads"], "scale": node.attrs["scale"], "in_scale": in_scale, "in_zp": in_zp,
                 "out_dtype": "f32", "out_scale": 1.0, "out_zp": 0}
        out = self._output(attrs, Value(node.id), int_out)
        new = self._swap(node, "qattention", [q], attrs)
        if int_out:
            self._dequantize_uses(new, attrs["out_scale"], attrs["out_zp"])
        return {"node": node.id, "op": "qattention", "in": {"scale": in_scale, "zero_point": in_zp}, "out": out,
                "relu": False}

    def fused_output(self, node: Node, calibrated: Value) -> dict:
        """layernorm / gelu read by quantized layers -> qlayernorm / qgelu writing the int8 value; ``calibrated``:
        its input as calibrated (since then a quantized producer's fused relu may have gone, or its readers moved
        to a dequantize)."""
        g, qop = self.g, _qop(node)
        x = g.inputs_of(node.id)[0]
        attrs: dict[str, Any] = {}
        out = self._output(attrs, Value(node.id), True)
        arrays = {}
        rec: dict[str, Any] = {"node": node.id, "op": qop, "in": {"dtype": "f32"}, "out": out, "relu": False}
        if qop == "qlayernorm":
            st = self.stats[calibrated]
            attrs.update(eps=node.attrs["eps"], x_scale=ln_input_scale(st.lo, st.hi))
            c = g.type_of(x).shape[-1]
            arrays = {local: g.params[node.params[local]] if local in node.params else np.full(c, fill, np.float32)
                      for local, fill in (("weight", 1.0), ("bias", 0.0))}  # affine=false: ones, zeros
            rec["in"]["x_scale"] = attrs["x_scale"]
        new = self._swap(node, qop, [x], attrs)
        self._set_params(new, arrays)
        self._dequantize_uses(new, attrs["out_scale"], attrs["out_zp"])
        return rec

    def passthrough(self, node: Node) -> None:
        """max-pool / flatten / reshape ... on an int8 tensor: same op, same scale."""
        x = self.g.inputs_of(node.id)[0]
        if x.node not in self.int_of:
            return
        q, scale, zp = self.int_of[x.node]
        new = self._swap(node, node.op, [q], dict(node.attrs))
        self._dequantize_uses(new, scale, zp)

    def join(self, node: Node) -> None:
        """concat of int8 tensors written with one scale (``_share_ranges``): same op on the int8 tensors."""
        ints = [self.int_of[x.node] for x in self.g.inputs_of(node.id)]
        assert len({(scale, zp) for _, scale, zp in ints}) == 1, f"{node.id}: its int8 inputs' scales differ"
        _, scale, zp = ints[0]
        new = self._swap(node, node.op, [q for q, _, _ in ints], dict(node.attrs))
        self._dequantize_uses(new, scale, zp)

    # -- graph edits ------------------------------------------------------------------------------
    def _swap(self, node: Node, op: str, inputs: list[Value], attrs: dict, drop: Iterable[str] = ()) -> Node:
        """Replace ``node`` (and the fused ``drop`` nodes after it) by one ``op`` node with the same id,
        seq, scope and span; readers of the last replaced value read the new node."""
        g = self.g
        last = Value(list(drop)[-1] if drop else node.id)
        readers = [(c, p) for c, p in g.users(last)]
        outputs = [i for i, o in enumerate(g.outputs) if o == last]
        for key in node.params.values():
            g.params.remove(key)
        for nid in [*drop, node.id]:
            g.remove_node(nid)
        opdef = OPS[op]
        in_types = [g.type_of(v) for v in inputs]
        if opdef.normalize is not None:
            attrs = opdef.normalize(dict(attrs), in_types)
        types = opdef.infer(attrs, in_types)
        specs = opdef.params(attrs, in_types)
        g.add_node(node.id, op, inputs, attrs, types, params={k: f"{node.id}.{k}" for k in specs}, span=node.span,
                   scope=node.scope, block=node.block)
        new = g.node(node.id)
        new.seq = node.seq
        for local, spec in specs.items():
            g.params.declare(f"{node.id}.{local}", spec)
        for c, p in readers:
            g.g.add_edge(node.id, c, port=p, out=0)
        for i in outputs:
            g.outputs[i] = Value(node.id)
        return new

    def _set_params(self, node: Node, arrays: dict[str, np.ndarray]) -> None:
        for local, arr in arrays.items():
            key = node.params[local]
            spec = self.g.params.specs[key]
            self.g.params.set_spec(key, ParamSpec(tuple(arr.shape), Init("zeros"), spec.dtype, spec.buffer,
                                                  spec.trainable))
            self.g.params[key] = arr

    def _dequantize_uses(self, node: Node, scale: float, zp: int) -> None:
        """Readers of ``node``'s int8 output read a dequantize of it (quantized readers skip it)."""
        g = self.g
        v = Value(node.id)
        readers = g.users(v)
        is_out = g.is_output(v)
        if not readers and not is_out:
            return
        t = node.type
        d = self._add(f"{node.id}_dequant", "dequantize", [v], {"scale": scale, "zero_point": zp},
                      [TensorType(t.shape, "f32")], after=node.id)
        self._reroute(v, readers, d, (v, scale, zp))
        g.outputs = [Value(d) if o == v else o for o in g.outputs]

    def _reroute(self, v: Value, readers: list, d: str, int8: tuple[Value, float, int]) -> None:
        """``readers`` of ``v`` read the dequantize node ``d`` instead (``int8``: what it dequantizes)."""
        g = self.g
        for c, p in readers:
            for u, _, k, data in list(g.g.in_edges(c, keys=True, data=True)):
                if u == v.node and data["port"] == p and data.get("out", 0) == v.out:
                    g.g.remove_edge(u, c, k)
            g.g.add_edge(d, c, port=p, out=0)
        self.int_of[d] = int8
        self.dequantizes.append(d)

    def _add(self, base: str, op: str, inputs: list[Value], attrs: dict, types: list, after: str) -> str:
        g = self.g
        prev = g.node(after)
        nid = g.add_node(g.unique_id(base), op, inputs, attrs, types, scope=prev.scope, block=prev.block)
        g.node(nid).seq = prev.seq + 0.5  # printed right after its producer (seq only breaks ties)
        return nid

    def drop_dead_dequantizes(self) -> None:
        for d in self.dequantizes:
            if d in self.g and not self.g.users(d) and not self.g.is_output(d):
                self.g.remove_node(d)


# ---- the int8 pipeline's pass ---------------------------------------------------------------------
def quantize_int8(graph: Graph, calib_batches: Any = None, **options: Any) -> Graph:
    """``quantize`` as the int8 pipeline's pass: the same arguments, given to ``run_passes`` as
    ``options={"quantize_int8": {"calib_batches": ..., "build": ...}}``; calibration data is required."""
    if calib_batches is None:
        raise UsageError("the int8 pipeline needs calibration data",
                         hint='run_passes(g, "int8", options={"quantize_int8": {"calib_batches": batches, '
                              '"build": build_module}}), or convdsl quantize net.cdl --calib digits')
    return quantize(graph, calib_batches, **options)

