"""Helper modules and functions that generated PyTorch code may need.

Their source is copied verbatim into generated files (see ``codegen.py``), so
every definition here must depend on nothing but ``torch``, ``nn``, ``F``,
``math`` and each other.  Keep them small and readable: users read them.
"""
from __future__ import annotations

import math  # noqa: F401  (available to helpers)

import torch
import torch.nn.functional as F  # noqa: F401
from torch import nn


class Scope(nn.ModuleDict):
    """A named group of submodules (one block instance), so parameter names read
    like ``layer1.0.conv1.weight``."""


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of [N, C, H, W] at each position (as in
    torchvision's ConvNeXt); state_dict: weight, bias of shape [C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def load_safetensors(path: str) -> dict:
    """Minimal reader for the safetensors format (header length, JSON header, raw data)."""
    import json
    import struct

    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = dtypes[info["dtype"]]
        if end > start:
            t = torch.frombuffer(bytearray(body[start:end]), dtype=dtype)
        else:
            t = torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"])
    return out


HELPERS: dict[str, object] = {"Scope": Scope, "LayerNorm2d": LayerNorm2d, "load_safetensors": load_safetensors}
