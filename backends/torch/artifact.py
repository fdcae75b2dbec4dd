"""Torch artifact files and the numpy-in/numpy-out runner used by `convdsl run`."""
from __future__ import annotations

from pathlib import Path

import torch

from convdsl.ir.graph import Graph

from .codegen import build_module, generate


def write_artifact(graph: Graph, out: Path) -> list[str]:
    """Backend files of a torch artifact: the standalone generated module."""
    (out / "model.py").write_text(generate(graph).source)
    return ["model.py"]


def runner(graph: Graph):
    """A callable (numpy arrays) -> numpy arrays running the in-memory module."""
    model = build_module(graph)

    def run(arrays):
        with torch.inference_mode():
            out = model(*[torch.from_numpy(a) for a in arrays])
        outs = out if isinstance(out, tuple) else (out,)
        return [o.numpy() for o in outs]

    return run
