"""Compiled artifacts: a folder with the backend's files, the weights, the
network as flat CDL, and ``manifest.json``.

Running an artifact never executes code from the folder: the network is
rebuilt from ``network.cdl`` and ``weights.safetensors`` (the generated
``model.py`` is for people and for deployment without convdsl).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from convdsl.backends import backend_module
from convdsl.errors import UsageError
from convdsl.ir.graph import Graph
from convdsl.lang.printer import print_graph
from convdsl.ir.types import NUMPY_DTYPE, bind_dim
from convdsl.ir.weights import save_weights
from convdsl.version import __version__

MANIFEST_VERSION = 1


def manifest_for(graph: Graph, backend: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    def io(names, types):
        return [{"name": n, "shape": list(t.shape), "dtype": t.dtype} for n, t in zip(names, types)]

    import torch

    return {
        "format": MANIFEST_VERSION,
        "convdsl_version": __version__,
        "backend": backend,
        "network": graph.name,
        "inputs": io(graph.inputs, graph.input_types()),
        "outputs": io(graph.output_names, graph.output_types()),
        "symbols": graph.symbols,
        "ops": graph.ops_used(),
        "params": graph.params.count(),
        "source_file": os.path.basename(graph.source_file) if graph.source_file else None,
        "source_hash": graph.source_hash,
        "versions": {"torch": torch.__version__},
        **(extra or {}),
    }


def write_artifact(graph: Graph, out: str | os.PathLike, backend: str = "torch") -> list[str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mod = backend_module(backend)
    files = mod.write_artifact(graph, out)  # backend-specific files (model.py, lib.so, ...)
    (out / "network.cdl").write_text(print_graph(graph, header=f"network {graph.name} as compiled by convdsl {__version__}"))
    save_weights(graph, out / "weights.safetensors")
    extra = getattr(mod, "manifest_extra", lambda g: {})(graph)
    manifest = manifest_for(graph, backend, extra)
    manifest["files"] = sorted(set(files) | {"network.cdl", "weights.safetensors", "manifest.json"})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest["files"]


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{folder} is not a convdsl artifact (no manifest.json)",
                         hint="create one with: convdsl compile net.cdl -o OUT") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON ({e})") from None
    if manifest.get("format") != MANIFEST_VERSION:
        raise UsageError(f"{folder} has artifact format {manifest.get('format')}, this convdsl reads {MANIFEST_VERSION}",
                         hint="recompile it with this convdsl version")
    return manifest


def load_artifact_graph(folder: str | os.PathLike) -> tuple[Graph, dict[str, Any]]:
    from convdsl.ir.verify import verify
    from convdsl.ir.weights import load_weights
    from convdsl.lang.elaborate import elaborate_file

    manifest = read_manifest(folder)
    g = elaborate_file(Path(folder) / "network.cdl")
    load_weights(g, Path(folder) / "weights.safetensors")
    return verify(g), manifest


def make_inputs(graph: Graph, batch: int = 1, seed: int = 0) -> list[np.ndarray]:
    """Seeded random inputs with every symbolic dim set to ``batch``."""
    rng = np.random.default_rng(seed)
    out = []
    for t in graph.input_types():
        shape = [bind_dim(d, {s: batch for s in graph.symbols}) for d in t.shape]
        dtype = NUMPY_DTYPE.get(t.dtype, "float32")
        if dtype.startswith("float"):
            out.append(rng.standard_normal(shape).astype(dtype))
        else:
            out.append(rng.integers(0, 10, size=shape).astype(dtype))
    return out


def load_inputs(paths: list[str], graph: Graph) -> list[np.ndarray]:
    if len(paths) != len(graph.inputs):
        raise UsageError(f"network {graph.name} takes {len(graph.inputs)} input(s), got {len(paths)} --input file(s)")
    arrays = []
    for p, t, name in zip(paths, graph.input_types(), graph.inputs):
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read {p} as a .npy array ({e})") from None
        if arr.ndim != t.rank or any(isinstance(d, int) and d != s for d, s in zip(t.shape, arr.shape)):
            raise UsageError(f"input '{name}' needs shape {t}, {p} has {list(arr.shape)}")
        arrays.append(arr.astype(NUMPY_DTYPE.get(t.dtype, "float32"), copy=False))
    return arrays


def run_artifact_or_program(target: str, *, backend: str, weights: str | None, inputs: list[str], batch: int,
                            graph_loader: Callable[[], Graph]) -> dict[str, Any]:
    manifest = None
    if Path(target).is_dir():
        graph, manifest = load_artifact_graph(target)
        backend = manifest["backend"]
    else:
        graph = graph_loader()
    arrays = load_inputs(inputs, graph) if inputs else make_inputs(graph, batch)
    mod = backend_module(backend)
    # a backend with compiled files (TVM's library) loads them, checking target and versions;
    # the others rebuild the network from network.cdl
    load_runner = getattr(mod, "load_runner", None)
    runner = load_runner(target, manifest) if manifest is not None and load_runner else mod.runner(graph)
    runner(arrays)  # warm-up
    t0 = time.perf_counter()
    outs = runner(arrays)
    ms = (time.perf_counter() - t0) * 1e3
    return {"network": graph.name, "backend": backend, "ms": ms, "outputs": dict(zip(graph.output_names, outs))}
