"""Torch lowerings of the attention ops (convdsl/ir/ops/attention.py); see common.py for the entry format.

The stateful ops lower to helper modules from ``runtime.py`` (copied into the
generated file), whose state_dict keys are the op's parameter names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from convdsl.ir.graph import Node
from convdsl.ir.ops.attention import LAYER_SCALE
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.torch.common import TorchLowering, family, keywords, lit, module_call

LOWERINGS = family("attention")


def _options(node: Node, defaults: dict) -> dict:
    """Attributes that differ from the helper's defaults, as keyword arguments."""
    return {k: node.attrs[k] for k, d in defaults.items() if node.attrs[k] != d}


_ATTN_DEFAULTS = {"qkv_bias": True, "proj_bias": True, "dropout": 0.0, "scale": None}
_MHA_DEFAULTS = {**_ATTN_DEFAULTS, "qkv": None, "proj": "out_proj"}  # mhsa, cross_attention: the Attention helper


def _mhsa_module(node: Node, ins: list[TensorType]) -> str:
    a, c = node.attrs, ins[0].shape[2]
    extra = {"dim": a["dim"]} if a["dim"] != c else {}
    extra.update(_options(node, _MHA_DEFAULTS))
    if a["mask"] == "causal":
        extra["causal"] = True
    if a["rel_pos"]:
        extra["max_len"] = a["max_len"]
    return f"Attention({c}, {a['heads']}{keywords(**extra)})"


def _mhsa_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}({args[0]}, mask={args[1]})" if len(args) > 1 else f"{mod}({args[0]})"


def _cross_module(node: Node, ins: list[TensorType]) -> str:
    a, c = node.attrs, ins[0].shape[2]
    extra = {"dim": a["dim"]} if a["dim"] != c else {}
    extra["context"] = ins[1].shape[2]
    extra.update(_options(node, _MHA_DEFAULTS))
    return f"Attention({c}, {a['heads']}{keywords(**extra)})"


def _cross_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}({args[0]}, {args[1]}, mask={args[2]})" if len(args) > 2 else f"{mod}({args[0]}, {args[1]})"


def _window_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = {}
    if a["shift"] != 0:
        extra["shift"] = tuple_n(a["shift"], 2)
    extra.update(_options(node, {"qkv_bias": True, "proj_bias": True, "dropout": 0.0, "proj_dropout": 0.0,
                                 "scale": None, "qkv": "qkv", "proj": "proj", "v2": False}))
    return f"WindowAttention({ins[0].shape[3]}, {a['heads']}, {lit(tuple_n(a['window'], 2))}{keywords(**extra)})"


def _conv_attention_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = _options(node, {"k": 3, "stride_kv": 2, "stride_q": 1, **_ATTN_DEFAULTS})
    return f"ConvAttention({ins[0].shape[1]}, {a['heads']}{keywords(**extra)})"


def _halo_module(node: Node, ins: list[TensorType]) -> str:
    a, c = node.attrs, ins[0].shape[1]
    extra = {"dim": a["dim"]} if a["dim"] != c else {}
    if a["qkv_bias"]:
        extra["qkv_bias"] = True
    if a["scale"] is not None:
        extra["scale"] = a["scale"]
    return f"HaloAttention({c}, {a['heads']}, {a['block_size']}, {a['halo']}{keywords(**extra)})"


def _patch_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    p = tuple_n(a["patch"], 2)
    k = lit(p[0] if p[0] == p[1] else p)
    return f"PatchEmbed({ins[0].shape[1]}, {a['dim']}, {k}, stride={k}{'' if a['bias'] else ', bias=False'})"


def _class_token_module(node: Node, ins: list[TensorType]) -> str:
    t = node.attrs["tokens"]
    return f"ClassToken({ins[0].shape[2]}{keywords(tokens=t) if t != 1 else ''})"


def _pos_module(node: Node, ins: list[TensorType]) -> str:
    a, (_, length, c) = node.attrs, ins[0].shape
    if a["kind"] != "learned":
        return f"PositionEmbedding({c})"
    return f"PositionEmbedding({c}, {length}{keywords(std=a['std']) if a['std'] != 0.02 else ''})"


def _layer_scale_module(node: Node, ins: list[TensorType]) -> str:
    shape = LAYER_SCALE.params(node.attrs, ins)["layer_scale"].shape
    return f"LayerScale({lit(shape)}, {lit(node.attrs['init'])})"


def packed_attention(x: torch.Tensor, heads: int, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v per head of tokens [N, L, 3C] holding q | k | v -> [N, L, C] (heads merged)."""
    n, length, c3 = x.shape
    q, k, v = x.view(n, length, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return y.transpose(1, 2).reshape(n, length, c3 // 3)


HELPERS: dict[str, object] = {"packed_attention": packed_attention}  # copied into generated code (lowering.py)


def _packed_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    scale = node.attrs["scale"]
    return f"packed_attention({args[0]}, {node.attrs['heads']}{'' if scale is None else f', {scale!r}'})"


LOWERINGS.add("mhsa", TorchLowering(_mhsa_call, _mhsa_module, helpers=("Attention",)))
LOWERINGS.add("packed_attention", TorchLowering(_packed_call, helpers=("packed_attention",)))
LOWERINGS.add("cross_attention", TorchLowering(_cross_call, _cross_module, helpers=("Attention",)))
LOWERINGS.add("window_attention", TorchLowering(module_call, _window_module, helpers=("WindowAttention",)))
LOWERINGS.add("conv_attention", TorchLowering(module_call, _conv_attention_module, helpers=("ConvAttention",)))
LOWERINGS.add("halo_attention", TorchLowering(module_call, _halo_module, helpers=("HaloAttention",)))
LOWERINGS.add("patch_embed", TorchLowering(module_call, _patch_module, helpers=("PatchEmbed",)))
def _class_token_param(node: Node, ins: list[TensorType], p: str, args: list[str]) -> str:
    return f"torch.cat([{p}.expand({args[0]}.shape[0], -1, -1), {args[0]}], dim=1)"


LOWERINGS.add("class_token", TorchLowering(module_call, _class_token_module, helpers=("ClassToken",),
                                           param_call=_class_token_param))
LOWERINGS.add("pos_embed", TorchLowering(module_call, _pos_module, helpers=("PositionEmbedding",),
                                         param_call=lambda node, ins, p, args: f"{args[0]} + {p}"))
LOWERINGS.add("layer_scale", TorchLowering(module_call, _layer_scale_module, helpers=("LayerScale",),
                                           param_call=lambda node, ins, p, args: f"{args[0]} * {p}"))
