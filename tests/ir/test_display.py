"""Graph display in notebooks: ``Graph._repr_html_`` / ``_repr_svg_`` (convdsl/ir/display.py)."""
from __future__ import annotations

import re
import shutil

import pytest

from convdsl.ir import display
from convdsl.lang.elaborate import elaborate

NET = """
block cb(c) = conv2d(c, 3, pad=1) | batchnorm | relu
network small(x: f32[N, 3, 16, 16]) {
    y = x | cb(8) as a | cb(16) as b
    return y | global_avgpool(keepdim=false) | linear(10) as fc
}
"""


def test_html_lists_every_layer_with_its_shape_and_params():
    g = elaborate(NET)
    html = g._repr_html_()
    rows = re.findall(r"<tr><td style='text-align:left'>([^<]+)</td><td style='text-align:left'>([^<]+)</td>"
                      r"<td style='text-align:left'>([^<]+)</td><td>([\d,]+)</td>", html)
    by_name = {name: (op, shape, int(params.replace(",", ""))) for name, op, shape, params in rows}
    assert by_name["a.conv2d"] == ("conv2d", "[1, 8, 16, 16]", 8 * 3 * 9 + 8)  # weight + bias
    assert by_name["fc"] == ("linear", "[1, 10]", 16 * 10 + 10)
    assert len(rows) == len(g) - 1  # every op node, the input excluded
    assert f"{g.params.count():,} params" in html


def test_svg_when_graphviz_is_there(monkeypatch):
    g = elaborate(NET)
    if shutil.which("dot"):
        svg = g._repr_svg_()
        assert svg.startswith("<svg") and "fc" in svg
    monkeypatch.setattr(display.shutil, "which", lambda name: None)
    assert g._repr_svg_() is None
    assert "install Graphviz" in g._repr_html_() and "<table" in g._repr_html_()


@pytest.mark.parametrize("limit", [2])
def test_long_tables_are_cut_but_totals_are_not(monkeypatch, limit):
    monkeypatch.setattr(display, "MAX_ROWS", limit)
    g = elaborate(NET)
    html = display.graph_html(g)
    assert html.count("<tr><td style='text-align:left'>") == limit
    assert f"… {len(g) - 1 - limit} more layers" in html
    assert f"<th>{g.params.count():,}</th>" in html


def test_a_module_from_convdsl_compile_displays_its_graph():
    """Not only %%cdl cells: the module the Python API compiles shows the same picture and table."""
    import torch

    import convdsl

    module = convdsl.compile(NET)
    html = module._repr_html_()
    assert "small (compiled: torch)" in html and "a.conv2d" in html and f"{convdsl.load_graph(NET).params.count():,} params" in html
    assert module(torch.zeros(2, 3, 16, 16)).shape == (2, 10)  # still the plain nn.Module
