"""Torch lowering table: op name -> how to write it in PyTorch source.

Each entry returns *source text*; the code generator (``codegen.py``) joins
the pieces into one readable module, which is also what the in-memory
``nn.Module`` is built from, so there is one path only.

- ``module(node, in_types)`` -> constructor source for the ``nn.Module`` that
  owns the node's parameters (e.g. ``nn.Conv2d(3, 64, 7, stride=2, padding=3,
  bias=False)``), or None for stateless ops.  Its ``state_dict`` keys must be
  exactly the op's parameter names (``weight``, ``bias``, ``running_mean``...).
- ``call(node, in_types, mod, args)`` -> the forward expression; ``mod`` is the
  module reference (``self.layer1["0"].conv1``) or None, ``args`` the input
  variable names.  Multi-output ops return a tuple expression.
- ``helpers``: names of classes/functions in ``runtime.py`` the generated file
  must include (their source is copied in, so generated code imports only torch);
  ``helpers_if_named``: those included only when the node's code names them (a
  special case's helper, e.g. ``GroupNormOneValue``).

Only ``repr()`` of validated attribute values and sanitized identifiers ever
reach the generated text: a .cdl author cannot inject code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from convdsl.errors import LoweringError
from convdsl.ir.graph import Node
from convdsl.ir.ops.conv import conv_padding
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.ops.shape import explicit_pads, split_sizes, squeeze_dims
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

ModuleFn = Callable[[Node, list[TensorType]], str | None]
CallFn = Callable[[Node, list[TensorType], str | None, list[str]], str]


@dataclass(frozen=True)
class TorchLowering:
    call: CallFn
    module: ModuleFn | None = None
    helpers: tuple[str, ...] = ()
    helpers_if_named: tuple[str, ...] = ()


def _r(v) -> str:
    """Python literal for an attribute value (ints, floats, bools, tuples, validated words).
    An infinity a domain admits (vector_norm's ``p=inf``) is ``math.inf``: repr() writes ``inf``,
    a name generated code does not define; NaN is in no domain."""
    if isinstance(v, float):
        if math.isinf(v):
            return "math.inf" if v > 0 else "-math.inf"
        if math.isnan(v):
            raise LoweringError("NaN reached the torch code generator", hint="no attribute domain admits NaN")
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_r(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def _kw(**kwargs) -> str:
    return "".join(f", {k}={_r(v)}" for k, v in kwargs.items())


# ---- convolution ------------------------------------------------------------
def _conv_pads(node: Node, ins: list[TensorType], nd: int) -> list[tuple[int, int]]:
    return conv_padding(node.attrs, list(ins[0].shape[2:]), nd)


def _conv_module(nd: int) -> ModuleFn:
    def module(node: Node, ins: list[TensorType]) -> str:
        a = node.attrs
        pads = _conv_pads(node, ins, nd)
        symmetric = all(lo == hi for lo, hi in pads)
        padding = tuple(lo for lo, _ in pads) if symmetric else 0
        k = tuple_n(a["k"], nd)
        extra = {}
        if a["stride"] != 1:
            extra["stride"] = tuple_n(a["stride"], nd)
        if padding != 0 and any(padding):
            extra["padding"] = padding
        if a["dilation"] != 1:
            extra["dilation"] = tuple_n(a["dilation"], nd)
        if a["groups"] != 1:
            extra["groups"] = a["groups"]
        if not a["bias"]:
            extra["bias"] = False
        if symmetric and a["pad_mode"] != "zeros" and any(padding):
            extra["padding_mode"] = a["pad_mode"]
        return f"nn.Conv{nd}d({ins[0].shape[1]}, {a['out']}, {_r(k if len(set(k)) > 1 else k[0])}{_kw(**extra)})"

    return module


def _conv_call(nd: int) -> CallFn:
    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        pads = _conv_pads(node, ins, nd)
        if all(lo == hi for lo, hi in pads):
            return f"{mod}({args[0]})"
        flat = tuple(p for lo_hi in reversed(pads) for p in lo_hi)  # F.pad wants last dim first
        mode = node.attrs["pad_mode"]
        mode = "constant" if mode == "zeros" else mode
        return f"{mod}(F.pad({args[0]}, {_r(flat)}, mode={mode!r}))"

    return call


def _conv_t_module(nd: int) -> ModuleFn:
    def module(node: Node, ins: list[TensorType]) -> str:
        a = node.attrs
        extra = {}
        for key, name in (("stride", "stride"), ("pad", "padding"), ("output_pad", "output_padding"),
                          ("dilation", "dilation")):
            default = 1 if key in ("stride", "dilation") else 0
            if a[key] != default:
                extra[name] = tuple_n(a[key], nd)
        if a["groups"] != 1:
            extra["groups"] = a["groups"]
        if not a["bias"]:
            extra["bias"] = False
        k = tuple_n(a["k"], nd)
        return f"nn.ConvTranspose{nd}d({ins[0].shape[1]}, {a['out']}, {_r(k if len(set(k)) > 1 else k[0])}{_kw(**extra)})"

    return module


def _module_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}({', '.join(args)})"


def _fn(template: str) -> CallFn:
    """A stateless op written as a template over ``{x}``/``{a}``/``{b}`` and attrs."""

    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        fields = {k: _r(v) for k, v in node.attrs.items()}
        fields.update(x=args[0] if args else "", a=args[0] if args else "", b=args[1] if len(args) > 1 else "")
        return template.format(**fields)

    return call


def _bn_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    nd = {2: 1, 3: 1, 4: 2, 5: 3}[ins[0].rank]
    extra = {}
    if a["eps"] != 1e-5:
        extra["eps"] = a["eps"]
    if a["momentum"] != 0.1:
        extra["momentum"] = a["momentum"]
    if not a["affine"]:
        extra["affine"] = False
    return f"nn.BatchNorm{nd}d({ins[0].shape[1]}{_kw(**extra)})"


def _linear_module(node: Node, ins: list[TensorType]) -> str:
    extra = {} if node.attrs["bias"] else {"bias": False}
    return f"nn.Linear({ins[0].shape[-1]}, {node.attrs['out']}{_kw(**extra)})"


def _add_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return " + ".join(args)


def _affine_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    s, b = node.attrs["scale"], node.attrs["shift"]
    expr = args[0] if s == 1.0 else f"{args[0]} * {s!r}"
    return expr if b == 0.0 else f"{expr} + {b!r}"


def _gelu_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    if node.attrs["approximate"] == "tanh":
        return f"F.gelu({args[0]}, approximate='tanh')"
    return f"F.gelu({args[0]})"


# ---- pooling and resampling ----------------------------------------------------
def _pool_call(kind: str, nd: int) -> CallFn:
    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        a = node.attrs
        extra = {}
        if a["stride"] is not None:
            extra["stride"] = a["stride"]
        if a["pad"] != 0:
            extra["padding"] = a["pad"]
        if kind == "max" and a["dilation"] != 1:
            extra["dilation"] = a["dilation"]
        if a["ceil_mode"]:
            extra["ceil_mode"] = True
        if kind == "avg" and not a["count_include_pad"]:
            extra["count_include_pad"] = False
        return f"F.{kind}_pool{nd}d({args[0]}, {_r(a['k'])}{_kw(**extra)})"

    return call


def _spatial_dims(t: TensorType) -> tuple[int, ...]:
    return tuple(range(2, t.rank))


def _global_call(reduce: str) -> CallFn:
    def call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
        keep = node.attrs["keepdim"]
        return f"{reduce}({args[0]}, dim={_r(_spatial_dims(ins[0]))}{_kw(keepdim=True) if keep else ''})"

    return call


def _mean_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    dims = normalize_dims("mean", node.attrs["dims"], ins[0].rank)
    keep = _kw(keepdim=True) if node.attrs["keepdim"] else ""
    return f"torch.mean({args[0]}, dim={_r(dims)}{keep})"


def _upsample_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    extra = {"size": a["size"]} if a["size"] is not None else {"scale_factor": a["scale"]}
    extra["mode"] = a["mode"]
    if a["align_corners"]:
        extra["align_corners"] = True
    return f"F.interpolate({args[0]}{_kw(**extra)})"


# ---- shape ----------------------------------------------------------------------
def _flatten_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    start, end = node.attrs["start"], node.attrs["end"]
    return f"torch.flatten({args[0]}, {start})" if end == -1 else f"torch.flatten({args[0]}, {start}, {end})"


def _reshape_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    spec = node.attrs["shape"]
    spec = (spec,) if isinstance(spec, int) else spec
    x = ins[0]
    parts = []
    for i, v in enumerate(spec):
        if v == 0:  # keep the input dim: a literal when static, read at run time when symbolic
            parts.append(str(x.shape[i]) if isinstance(x.shape[i], int) else f"{args[0]}.shape[{i}]")
        else:
            parts.append(str(v))
    return f"{args[0]}.reshape({', '.join(parts)})"


def _permute_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    dims = node.attrs["dims"]
    dims = (dims,) if isinstance(dims, int) else dims
    return f"{args[0]}.permute({', '.join(str(d) for d in dims)})"


def _squeeze_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    dims = squeeze_dims(node.attrs, ins[0])
    if not dims:
        return args[0]
    return f"{args[0]}.squeeze({dims[0] if len(dims) == 1 else _r(dims)})"


def _concat_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"torch.cat([{', '.join(args)}], dim={node.attrs['dim']})"


def _split_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    if len(split_sizes(a, ins[0])) == 1:  # one piece: the tensor itself
        return args[0]
    if a["chunks"] is not None:
        return f"torch.chunk({args[0]}, {a['chunks']}, dim={a['dim']})"
    return f"torch.split({args[0]}, {_r(a['sizes'])}, dim={a['dim']})"


def _pad_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    pairs = explicit_pads(a["pad"], ins[0].rank - 2)
    flat = tuple(p for lo_hi in reversed(pairs) for p in lo_hi)  # F.pad wants last dim first
    if a["mode"] == "zeros":
        return f"F.pad({args[0]}, {_r(flat)}{_kw(value=a['value']) if a['value'] != 0.0 else ''})"
    return f"F.pad({args[0]}, {_r(flat)}, mode={a['mode']!r})"


# ---- normalization ---------------------------------------------------------------
def _ln_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    shape = tuple(ins[0].shape[ins[0].rank - a["dims"]:])
    extra = {}
    if a["eps"] != 1e-5:
        extra["eps"] = a["eps"]
    if not a["affine"]:
        extra["elementwise_affine"] = False
    elif not a["bias"]:
        extra["bias"] = False
    return f"nn.LayerNorm({_r(shape[0] if len(shape) == 1 else shape)}{_kw(**extra)})"


def _ln2d_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = {}
    if a["eps"] != 1e-5:
        extra["eps"] = a["eps"]
    if not a["affine"]:
        extra["elementwise_affine"] = False
    return f"LayerNorm2d({ins[0].shape[1]}{_kw(**extra)})"


def one_value_per_group(node: Node, ins: list[TensorType]) -> bool:
    """groupnorm whose groups hold one value each (channels/groups x static spatial size = 1)."""
    spatial = ins[0].shape[2:]
    return (ins[0].shape[1] == node.attrs["groups"] and all(isinstance(d, int) for d in spatial)
            and math.prod(spatial) == 1)


def _gn_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = {}
    if a["eps"] != 1e-5:
        extra["eps"] = a["eps"]
    if not a["affine"]:
        extra["affine"] = False
    # one value per group: the output is the bias, computed without F.group_norm's batch-1 refusal
    cls = "GroupNormOneValue" if one_value_per_group(node, ins) else "nn.GroupNorm"
    return f"{cls}({a['groups']}, {ins[0].shape[1]}{_kw(**extra)})"


def _in_module(nd: int) -> ModuleFn:
    def module(node: Node, ins: list[TensorType]) -> str:
        a = node.attrs
        extra = {}
        if a["eps"] != 1e-5:
            extra["eps"] = a["eps"]
        if a["momentum"] != 0.1:
            extra["momentum"] = a["momentum"]
        if a["affine"]:
            extra["affine"] = True
        if a["track_running_stats"]:
            extra["track_running_stats"] = True
        return f"nn.InstanceNorm{nd}d({ins[0].shape[1]}{_kw(**extra)})"

    return module


def _dropout_module(node: Node, ins: list[TensorType]) -> str:
    return f"nn.Dropout({node.attrs['p']!r})"


TORCH_LOWERINGS: dict[str, TorchLowering] = {
    **{f"conv{n}d": TorchLowering(_conv_call(n), _conv_module(n)) for n in (1, 2, 3)},
    **{f"conv_transpose{n}d": TorchLowering(_module_call, _conv_t_module(n)) for n in (1, 2, 3)},
    **{name: TorchLowering(_module_call, _bn_module) for name in ("batchnorm", "batchnorm1d", "batchnorm2d", "batchnorm3d")},
    "linear": TorchLowering(_module_call, _linear_module),
    "identity": TorchLowering(_fn("{x}")),
    "relu": TorchLowering(_fn("torch.relu({x})")),
    "relu6": TorchLowering(_fn("F.relu6({x})")),
    "leaky_relu": TorchLowering(_fn("F.leaky_relu({x}, {slope})")),
    "gelu": TorchLowering(_gelu_call),
    "silu": TorchLowering(_fn("F.silu({x})")),
    "sigmoid": TorchLowering(_fn("torch.sigmoid({x})")),
    "tanh": TorchLowering(_fn("torch.tanh({x})")),
    "hardswish": TorchLowering(_fn("F.hardswish({x})")),
    "hardsigmoid": TorchLowering(_fn("F.hardsigmoid({x})")),
    "neg": TorchLowering(_fn("-{x}")),
    "affine": TorchLowering(_affine_call),
    "add": TorchLowering(_add_call),
    "sub": TorchLowering(_fn("{a} - {b}")),
    "mul": TorchLowering(_fn("{a} * {b}")),
    "div": TorchLowering(_fn("{a} / {b}")),
    "matmul": TorchLowering(_fn("torch.matmul({a}, {b})")),
    "softmax": TorchLowering(_fn("torch.softmax({x}, dim={dim})")),
    "dropout": TorchLowering(_module_call, _dropout_module),
    # normalization
    "layernorm": TorchLowering(_module_call, _ln_module),
    "layernorm2d": TorchLowering(_module_call, _ln2d_module, helpers=("LayerNorm2d",)),
    "groupnorm": TorchLowering(_module_call, _gn_module, helpers_if_named=("GroupNormOneValue",)),
    **{f"instancenorm{n}d": TorchLowering(_module_call, _in_module(n)) for n in (1, 2, 3)},
    # pooling and resampling
    **{f"{k}pool{n}d": TorchLowering(_pool_call(k, n)) for k in ("max", "avg") for n in (1, 2, 3)},
    "global_avgpool": TorchLowering(_global_call("torch.mean")),
    "global_maxpool": TorchLowering(_global_call("torch.amax")),
    **{f"adaptive_{k}pool{n}d": TorchLowering(_fn(f"F.adaptive_{k}_pool{n}d({{x}}, {{out}})"))
       for k in ("avg", "max") for n in (1, 2, 3)},
    "mean": TorchLowering(_mean_call),
    "upsample": TorchLowering(_upsample_call),
    # shape
    "flatten": TorchLowering(_flatten_call),
    "reshape": TorchLowering(_reshape_call),
    "permute": TorchLowering(_permute_call),
    "transpose": TorchLowering(_fn("{x}.transpose({dim0}, {dim1})")),
    "squeeze": TorchLowering(_squeeze_call),
    "unsqueeze": TorchLowering(_fn("{x}.unsqueeze({dim})")),
    "concat": TorchLowering(_concat_call),
    "split": TorchLowering(_split_call),
    "pad": TorchLowering(_pad_call),
    "pixel_shuffle": TorchLowering(_fn("F.pixel_shuffle({x}, {factor})")),
    "pixel_unshuffle": TorchLowering(_fn("F.pixel_unshuffle({x}, {factor})")),
}

# op families kept in their own files, merged here (dict merge, one table)
from convdsl.backends.torch import lower_attention, lower_fft, lower_misc, lower_quant, lower_ssm  # noqa: E402
from convdsl.backends.torch.runtime import HELPERS  # noqa: E402

for _family in (lower_attention, lower_fft, lower_ssm, lower_misc, lower_quant):
    TORCH_LOWERINGS.update(_family.LOWERINGS)
HELPERS.update(lower_quant.HELPERS)  # the quantized ops keep their runtime helpers beside their lowerings


def lowering_for(node: Node, target: str = "torch") -> TorchLowering:
    entry = TORCH_LOWERINGS.get(node.op)
    if entry is None:
        raise LoweringError(
            f"op '{node.op}' has no lowering for the {target} backend", node.span,
            hint="supported ops: " + ", ".join(sorted(TORCH_LOWERINGS)),
        )
    return entry
