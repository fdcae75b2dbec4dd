"""The importer's entry points: source -> (CDL text, weights, verified graph)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from convdsl.errors import ModelImportError
from convdsl.ir.graph import Graph
from convdsl.ir.verify import verify

from convdsl.importer.builder import Imported
from convdsl.importer.structure import write_cdl


@dataclass
class ImportResult:
    text: str  # the CDL program
    weights: dict[str, np.ndarray]  # by convdsl parameter name (= the source's keys, see renamed)
    graph: Graph  # the program elaborated back, with the weights
    renamed: dict[str, str]  # convdsl parameter name -> source key, where they differ
    flat: Graph  # the graph the frontend built


def parse_back(imp: Imported, file: str = "<import>") -> ImportResult:
    """Write the CDL, elaborate it with the front end, load the weights, and check that the program
    is the imported graph (same parameters, same ops)."""
    from convdsl.lang.elaborate import elaborate

    text = write_cdl(imp)
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
    return ImportResult(text, weights, verify(g), dict(imp.renamed), flat)


def import_torch(module, example_inputs, name: str | None = None, dynamic_batch: bool = True) -> ImportResult:
    from convdsl.importer.torch_export import import_module

    imp = import_module(module, tuple(example_inputs), name, dynamic_batch)
    imp.source = imp.source or type(module).__name__
    return parse_back(imp)


def import_onnx(path: str | os.PathLike, name: str | None = None) -> ImportResult:
    from convdsl.importer.onnx_import import import_file

    return parse_back(import_file(path, name))
