"""The importer's entry points: source -> (CDL text, weights, verified graph)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from convdsl.errors import ModelImportError
from convdsl.ir.graph import Graph
from convdsl.ir.verify import verify

from convdsl.importer.builder import Imported
from convdsl.importer.structure import Writer


@dataclass
class ImportResult:
    text: str  # the CDL program
    weights: dict[str, np.ndarray]  # by convdsl parameter name (= the source's keys, see renamed)
    graph: Graph  # the program elaborated back, with the weights
    renamed: dict[str, str]  # convdsl parameter name -> source key, where they differ
    flat: Graph  # the graph the frontend built


def parse_back(imp: Imported, file: str = "<import>", stages: dict[str, float] | None = None) -> ImportResult:
    """Write the CDL, elaborate it with the front end, load the weights, and check that the program
    is the imported graph (same parameters, same ops).  ``stages`` (if given) receives the seconds of
    "structure" (blocks, loops, labels), "fmt" and "check" (elaborate, load, verify)."""
    from convdsl.lang.elaborate import elaborate
    from convdsl.lang.format import format_source

    t0 = time.perf_counter()
    text = Writer(imp).build()
    t1 = time.perf_counter()
    text = format_source(text)
    t2 = time.perf_counter()
    g = elaborate(text, file)
    flat = imp.graph
    weights = {k: v for k, v in flat.params.items()}
    missing = sorted(set(g.params.names()) ^ set(flat.params.names()))
    if missing:  # pragma: no cover - a bug in the CDL writer
        raise ModelImportError(f"the written program's parameters differ from the source's: {missing[:5]}")
    for k, v in weights.items():
        g.params[k] = v
    ops_a = sorted(n.op for n in flat.nodes() if n.op != "input")
    ops_b = sorted(n.op for n in g.nodes() if n.op != "input")
    if ops_a != ops_b:  # pragma: no cover - a bug in the CDL writer
        raise ModelImportError("the written program's ops differ from the imported graph's")
    checked = verify(g)
    if stages is not None:
        stages.update(structure=t1 - t0, fmt=t2 - t1, check=time.perf_counter() - t2)
    return ImportResult(text, weights, checked, dict(imp.renamed), flat)


def import_torch(module, example_inputs, name: str | None = None, dynamic_batch: bool = True) -> ImportResult:
    from convdsl.importer.torch_export import import_module

    imp = import_module(module, tuple(example_inputs), name, dynamic_batch)
    imp.source = imp.source or type(module).__name__
    return parse_back(imp)


def import_onnx(path: str | os.PathLike, name: str | None = None) -> ImportResult:
    from convdsl.importer.onnx_import import import_file

    return parse_back(import_file(path, name))
