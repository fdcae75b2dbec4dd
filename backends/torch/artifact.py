"""Torch artifact files and the numpy-in/numpy-out runner used by `convdsl run`."""
from __future__ import annotations

from pathlib import Path

import torch

from convdsl.errors import ArtifactError
from convdsl.ir.graph import Graph

from convdsl.backends.torch.codegen import build_module, generate

FILES = {"model.py", "network.cdl", "weights.safetensors"}


def write_artifact(graph: Graph, out: Path) -> list[str]:
    """Backend files of a torch artifact: the standalone generated module."""
    (out / "model.py").write_text(generate(graph).source, encoding="utf-8")
    return ["model.py"]


def check_artifact(art) -> None:
    """A torch folder lists exactly its three files and nothing of another backend (a TVM folder
    relabelled ``torch`` still lists its library); nothing in it is code that convdsl runs, so
    no signature or pin is required (``convdsl.artifact.Artifact``)."""
    files = set(art.manifest["files"])
    if files != FILES or "tvm" in art.manifest:
        raise ArtifactError(f"{art.folder} says backend torch, and its manifest does not describe a torch folder",
                            expected=", ".join(sorted(FILES)),
                            got=", ".join(sorted(files)) + (" and a 'tvm' section" if "tvm" in art.manifest else ""),
                            hint="a compiled folder cannot change backend; recompile it")


def runner(graph: Graph):
    """A callable (numpy arrays) -> numpy arrays running the in-memory module.  bf16, which NumPy
    cannot hold, travels as float32 (converted for inputs declared bf16, and back for outputs)."""
    model = build_module(graph)
    bf16 = [t.dtype == "bf16" for t in graph.input_types()]

    def run(arrays):
        xs = [torch.from_numpy(a) for a in arrays]
        xs = [x.to(torch.bfloat16) if i < len(bf16) and bf16[i] else x for i, x in enumerate(xs)]
        with torch.inference_mode():
            out = model(*xs)
        outs = out if isinstance(out, tuple) else (out,)
        return [(o.float() if o.dtype == torch.bfloat16 else o).numpy() for o in outs]

    return run
