"""The CDL writer (convdsl/importer/structure.py): a flat imported graph with its module hierarchy
becomes blocks, calls and labels that elaborate back to the same graph."""
from __future__ import annotations

import re

from convdsl.importer.api import parse_back
from convdsl.importer.builder import Builder, Origin
from convdsl.importer.structure import Writer
from convdsl.ir.types import TensorType


def _branches(dead: str) -> Builder:
    """x -> two instances ``a``, ``b`` of one module class (relu -> sigmoid), then the output of
    ``a``; the instance ``dead`` is not read by anything after it (a source that keeps a branch
    whose result is unused, as a search space at its first choices does)."""
    b = Builder("net")
    x = b.input("x", TensorType(("N", 4, 8, 8)))
    b.modules.update({"a": "pkg.Branch", "b": "pkg.Branch"})
    outs = {}
    for inst in ("a", "b"):
        y = b.add("relu", [x], {}, id=f"{inst}.relu", chain=[inst], origin=Origin(f"{inst}/Relu", "Relu", inst))[0]
        outs[inst] = b.add("sigmoid", [y], {}, id=f"{inst}.sigmoid", chain=[inst],
                           origin=Origin(f"{inst}/Sigmoid", "Sigmoid", inst))[0]
    live = outs["b" if dead == "a" else "a"]
    return b.result([live], ["y"], "test")


def test_an_instance_nothing_reads_returns_its_unread_value():
    for dead in ("a", "b"):
        imp = _branches(dead)
        text = Writer(imp).build()
        assert not re.search(r"^\s*return\s*$", text, re.M), text
        assert not re.search(r"^\s*=", text, re.M), text  # no assignment without a target
        # both instances are calls of one block (the same body and return)
        blocks = re.findall(r"^block (\w+)", text, re.M)
        assert blocks == ["branch"], text
        assert re.findall(r"= x \| branch\(\) as (\w+)", text) == ["a", "b"], text
        # it elaborates back to the same ops, the unread branch included
        r = parse_back(_branches(dead))
        assert sorted(n.op for n in r.graph.nodes()) == ["input", "relu", "relu", "sigmoid", "sigmoid"]
        assert r.graph.output_types() == imp.graph.output_types()


def test_a_required_attribute_after_keywords_is_written_as_a_keyword():
    """qconv2d's in_scale (no default) follows k, stride... (defaults, written as keywords): written
    positionally it would be a positional argument after keywords, a syntax error."""
    import numpy as np

    b = Builder("net")
    x = b.input("x", TensorType(("N", 4, 8, 8), "u8"))
    y = b.add("qconv2d", [x], {"out": 8, "k": 1, "in_scale": 0.05, "in_zp": 3}, id="conv", chain=[],
              origin=Origin("conv/Conv", "Conv", ""),
              params={"weight": np.ones((8, 4, 1, 1), np.int8), "w_scale": np.full(8, 0.01, np.float32),
                      "bias": np.zeros(8, np.int32)})[0]
    text = Writer(b.result([y], ["y"], "test")).build()
    assert re.search(r"qconv2d\(8, k=1, in_scale=0\.05, in_zp=3\)", text), text
    r = parse_back(b.result([y], ["y"], "test"))
    assert next(n for n in r.graph.nodes() if n.op == "qconv2d").attrs["in_scale"] == 0.05
