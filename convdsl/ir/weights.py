"""Weights in and out of a graph's parameter store: safetensors only (no pickle)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from convdsl.errors import WeightsError, did_you_mean
from convdsl.ir.graph import Graph
from convdsl.ir.types import NUMPY_DTYPE


def load_weights(graph: Graph, path: str | os.PathLike, strict: bool = True) -> Graph:
    """Replace the graph's parameters with those in a .safetensors file.

    Every name and shape is checked before anything is replaced, so a bad file
    leaves the graph untouched."""
    path = Path(path)
    if path.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
        raise WeightsError(f"{path} looks like a pickle checkpoint; convdsl loads safetensors only",
                           hint="convert it: safetensors.torch.save_file(torch.load(p, weights_only=True), 'w.safetensors')")
    try:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} does not exist") from None
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise WeightsError(f"{path} is not a valid safetensors file ({e})") from None
    expected = graph.params.specs
    problems = []
    for name, arr in tensors.items():
        spec = expected.get(name)
        if spec is None:
            if strict:
                hint = did_you_mean(name, expected)
                problems.append(f"unexpected parameter '{name}'" + (f" ({hint})" if hint else ""))
            continue
        if tuple(arr.shape) != tuple(spec.shape):
            problems.append(f"parameter '{name}' has shape {list(arr.shape)} in the file, "
                            f"the network needs {list(spec.shape)}")
    missing = [n for n in expected if n not in tensors]
    if missing and strict:
        problems.append(f"{len(missing)} parameter(s) missing from the file, e.g. '{missing[0]}'")
    if problems:
        raise WeightsError(f"{path} does not fit network {graph.name}", notes=problems[:10],
                           hint="was the file saved from a different program or width?")
    for name, arr in tensors.items():
        if name in expected:
            want = np.dtype(NUMPY_DTYPE.get(expected[name].dtype, "float32"))  # int8 weights stay int8
            graph.params[name] = arr.astype(want, copy=False)
    return graph


def save_weights(graph: Graph, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write all parameters and buffers; written to a temp file first, then renamed."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    arrays = {name: arr if arr.flags.c_contiguous else arr.copy() for name, arr in graph.params.items()}
    meta = {"network": graph.name, **(metadata or {})}
    save_file(arrays, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)
