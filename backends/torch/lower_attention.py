"""Torch lowerings of the attention ops (see lowering.py for the entry format).

The stateful ops lower to helper modules from ``runtime.py`` (copied into the
generated file), whose state_dict keys are the op's parameter names.
"""
from __future__ import annotations

from convdsl.ir.graph import Node
from convdsl.ir.ops.attention import LAYER_SCALE
from convdsl.ir.ops.shape import select_dim
from convdsl.ir.optable import tuple_n
from convdsl.ir.types import TensorType

from convdsl.backends.torch.lowering import TorchLowering, _kw, _r


def _module_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}({', '.join(args)})"


def _options(node: Node, defaults: dict) -> dict:
    """Attributes that differ from the helper's defaults, as keyword arguments."""
    return {k: node.attrs[k] for k, d in defaults.items() if node.attrs[k] != d}


_ATTN_DEFAULTS = {"qkv_bias": True, "proj_bias": True, "dropout": 0.0, "scale": None}


def _mhsa_module(node: Node, ins: list[TensorType]) -> str:
    a, c = node.attrs, ins[0].shape[2]
    extra = {"dim": a["dim"]} if a["dim"] != c else {}
    extra.update(_options(node, _ATTN_DEFAULTS))
    if a["mask"] == "causal":
        extra["causal"] = True
    if a["rel_pos"]:
        extra["max_len"] = a["max_len"]
    return f"Attention({c}, {a['heads']}{_kw(**extra)})"


def _mhsa_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}({args[0]}, mask={args[1]})" if len(args) > 1 else f"{mod}({args[0]})"


def _cross_module(node: Node, ins: list[TensorType]) -> str:
    a, c = node.attrs, ins[0].shape[2]
    extra = {"dim": a["dim"]} if a["dim"] != c else {}
    extra["context"] = ins[1].shape[2]
    extra.update(_options(node, _ATTN_DEFAULTS))
    return f"Attention({c}, {a['heads']}{_kw(**extra)})"


def _cross_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"{mod}({args[0]}, {args[1]}, mask={args[2]})" if len(args) > 2 else f"{mod}({args[0]}, {args[1]})"


def _window_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = {}
    if a["shift"] != 0:
        extra["shift"] = tuple_n(a["shift"], 2)
    extra.update(_options(node, {"qkv_bias": True, "proj_bias": True, "dropout": 0.0, "proj_dropout": 0.0}))
    return f"WindowAttention({ins[0].shape[3]}, {a['heads']}, {_r(tuple_n(a['window'], 2))}{_kw(**extra)})"


def _conv_attention_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    extra = _options(node, {"k": 3, "stride_kv": 2, "stride_q": 1, **_ATTN_DEFAULTS})
    return f"ConvAttention({ins[0].shape[1]}, {a['heads']}{_kw(**extra)})"


def _halo_module(node: Node, ins: list[TensorType]) -> str:
    a, c = node.attrs, ins[0].shape[1]
    extra = {"dim": a["dim"]} if a["dim"] != c else {}
    if a["qkv_bias"]:
        extra["qkv_bias"] = True
    return f"HaloAttention({c}, {a['heads']}, {a['block_size']}, {a['halo']}{_kw(**extra)})"


def _patch_module(node: Node, ins: list[TensorType]) -> str:
    a = node.attrs
    p = tuple_n(a["patch"], 2)
    k = _r(p[0] if p[0] == p[1] else p)
    return f"PatchEmbed({ins[0].shape[1]}, {a['dim']}, {k}, stride={k}{'' if a['bias'] else ', bias=False'})"


def _class_token_module(node: Node, ins: list[TensorType]) -> str:
    t = node.attrs["tokens"]
    return f"ClassToken({ins[0].shape[2]}{_kw(tokens=t) if t != 1 else ''})"


def _pos_module(node: Node, ins: list[TensorType]) -> str:
    a, (_, length, c) = node.attrs, ins[0].shape
    if a["kind"] != "learned":
        return f"PositionEmbedding({c})"
    return f"PositionEmbedding({c}, {length}{_kw(std=a['std']) if a['std'] != 0.02 else ''})"


def _layer_scale_module(node: Node, ins: list[TensorType]) -> str:
    shape = LAYER_SCALE.params(node.attrs, ins)["layer_scale"].shape
    return f"LayerScale({_r(shape)}, {_r(node.attrs['init'])})"


def _drop_path_module(node: Node, ins: list[TensorType]) -> str:
    mode = node.attrs["mode"]
    return f"DropPath({_r(node.attrs['p'])}{_kw(mode=mode) if mode != 'row' else ''})"


def _select_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    d = select_dim(node.attrs, ins[0])
    return f"{args[0]}[{':, ' * d}{node.attrs['index']}]"


LOWERINGS: dict = {
    "mhsa": TorchLowering(_mhsa_call, _mhsa_module, helpers=("Attention",)),
    "cross_attention": TorchLowering(_cross_call, _cross_module, helpers=("Attention",)),
    "window_attention": TorchLowering(_module_call, _window_module, helpers=("WindowAttention",)),
    "conv_attention": TorchLowering(_module_call, _conv_attention_module, helpers=("ConvAttention",)),
    "halo_attention": TorchLowering(_module_call, _halo_module, helpers=("HaloAttention",)),
    "patch_embed": TorchLowering(_module_call, _patch_module, helpers=("PatchEmbed",)),
    "class_token": TorchLowering(_module_call, _class_token_module, helpers=("ClassToken",)),
    "pos_embed": TorchLowering(_module_call, _pos_module, helpers=("PositionEmbedding",)),
    "layer_scale": TorchLowering(_module_call, _layer_scale_module, helpers=("LayerScale",)),
    "drop_path": TorchLowering(_module_call, _drop_path_module, helpers=("DropPath",)),
    "select": TorchLowering(_select_call),
}
