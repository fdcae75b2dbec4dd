"""The Python API: text in, graph or module out."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from convdsl.backends import BACKENDS, backend_module
from convdsl.ir.display import attach_display
from convdsl.ir.graph import Graph
from convdsl.ir.verify import verify
from convdsl.ir.weights import load_weights
from convdsl.lang.elaborate import Options, elaborate, elaborate_file
from convdsl.lang.source import read_program


def load_graph(source: str | os.PathLike, *, network: str | None = None, weights: str | os.PathLike | None = None,
               overrides: Mapping[str, Any] | None = None, choices: Mapping[str, Any] | None = None,
               bind: Mapping[str, int] | None = None, seed: int = 0, check: bool = True,
               weights_map: Sequence[str] = (), strict: bool = True) -> Graph:
    """A .cdl path (or CDL text containing a newline) -> verified graph IR.

    ``weights``: a .safetensors file whose keys are the parameter names (``weights_map``:
    ``REGEX=REPLACEMENT`` renames of its keys first; ``strict=False``: keys the network does not
    have are ignored and parameters the file lacks keep their initialization, as ``--non-strict``).
    ``overrides``: network hyper-parameters (``--set``); ``choices``: ``--choose``; ``bind``:
    sizes of symbolic dims (``--bind``); ``seed``: of the deterministic initialization."""
    opts = Options(choices=choices, overrides=dict(overrides or {}), bind=dict(bind or {}), seed=seed)
    text_given = isinstance(source, str) and "\n" in source
    g = elaborate(source, "<string>", network, opts) if text_given else elaborate_file(source, network, opts)
    if weights is not None:
        load_weights(g, weights, strict=strict, renames=weights_map)
    return verify(g) if check else g


def compile(source: str | os.PathLike | Graph, backend: str = "torch", **kwargs: Any):
    """Compile a program (path, text or graph) to a runnable module of ``backend`` (``torch``,
    ``tvm-llvm``, ``tvm-cuda``, ``onnx``); in a notebook the module shows its graph (picture and
    statistics table).  ``kwargs`` are ``load_graph``'s: ``network``, ``weights`` (a .safetensors
    file), ``weights_map``, ``strict``, ``overrides``, ``choices``, ``bind`` (symbolic dims, e.g.
    ``{"N": 8}``), ``seed``."""
    g = source if isinstance(source, Graph) else load_graph(source, **kwargs)
    mod = backend_module(backend)
    name = backend if isinstance(backend, str) else getattr(backend, "name", type(backend).__name__)
    return attach_display(mod.build_module(g), g, name)


def import_model(module, example_inputs, name: str | None = None):
    """A PyTorch ``nn.Module`` -> ``ImportResult`` (``.text``: the CDL program with blocks and loops,
    ``.weights``: its parameters under the module's state_dict keys, ``.graph``: the verified graph),
    traced with ``torch.export`` with a symbolic batch."""
    from convdsl.importer import import_torch

    return import_torch(module, tuple(example_inputs), name=name)


def read_text(path: str | os.PathLike) -> str:
    """The text of a .cdl file, read as every command reads its main file (``read_program``)."""
    return read_program(path)


__all__ = ["BACKENDS", "backend_module", "compile", "import_model", "load_graph", "read_text"]
