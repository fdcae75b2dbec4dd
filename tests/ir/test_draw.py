"""Drawing: DOT structure (clusters per block instance, nodes, edges), escaping, rendering."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from convdsl.errors import UsageError
from convdsl.ir import draw
from convdsl.ir.draw import GROUP_COLORS, dot_string, html_text, render, to_dot
from convdsl.ir.graph import Graph, Value
from convdsl.ir.types import TensorType
from convdsl.lang.elaborate import elaborate

ROOT = Path(__file__).resolve().parents[2]
RESNET18 = ROOT / "examples" / "resnet18.cdl"

NET = """
block conv_bn(c, k=3, stride=1) = conv2d(c, k, stride=stride, pad=k // 2, bias=false) as conv | batchnorm as bn | relu

block basic(c, stride=1)(x) {
    y = x | conv_bn(c, stride=stride) as a | conv_bn(c) as b
    s = x | conv_bn(c, k=1, stride=stride) as downsample if stride != 1 or channels(x) != c else x
    return relu(y + s)
}

network net(image: f32[N, 3, 32, 32], classes=10) {
    x = image | conv_bn(16) as stem
    x = x | basic(16) as "layer1.0" | basic(32, stride=2) as "layer2.0"
    z = x + x
    return z | adaptive_avgpool2d(1) | flatten | linear(classes) as fc
}
"""

NODE_LINE = re.compile(r"^\s*(n\d+) \[")
EDGE_LINE = re.compile(r"^\s*(\w+) -> (\w+)")


def scopes_of(g: Graph) -> set[str]:
    """Every block-instance path and its prefixes: the clusters to expect."""
    out = set()
    for n in g.nodes():
        parts = n.scope.split(".") if n.scope else []
        out |= {".".join(parts[: i + 1]) for i in range(len(parts))}
    return out


def parse(dot: str):
    """Clusters (label -> parent label) and node -> enclosing cluster label, from the DOT text."""
    parent: dict[str, str | None] = {}
    where: dict[str, str | None] = {}
    stack: list[str | None] = []
    pending = False
    for line in dot.splitlines():
        s = line.strip()
        if s.startswith("subgraph cluster_"):
            pending = True
            continue
        if pending:
            label = re.match(r'label="((?:[^"\\]|\\.)*)"', s).group(1)
            parent[label] = stack[-1] if stack else None
            stack.append(label)
            pending = False
            continue
        if s == "}" and stack:
            stack.pop()
            continue
        m = NODE_LINE.match(line)
        if m:
            where[m.group(1)] = stack[-1] if stack else None
    return parent, where


@pytest.fixture(scope="module")
def net() -> Graph:
    return elaborate(NET, "<test>")


def test_one_node_per_op_and_one_edge_per_input(net):
    dot = to_dot(net)
    lines = dot.splitlines()
    nodes = [ln for ln in lines if NODE_LINE.match(ln)]
    assert len(nodes) == len(net)
    edges = [EDGE_LINE.match(ln).groups() for ln in lines if EDGE_LINE.match(ln)]
    op_edges = [e for e in edges if not e[1].startswith("o")]
    assert len(op_edges) == net.g.number_of_edges()  # x + x keeps both edges
    assert len(edges) - len(op_edges) == len(net.outputs)
    assert len(re.findall(r"^\s*o\d+ \[", dot, re.M)) == len(net.outputs)


def test_labels_show_name_op_and_shape(net):
    dot = to_dot(net, full_names=True)
    assert "<b>layer1.0.a.conv</b><br/>conv2d<br/>" in dot
    assert "f32[N, 16, 32, 32]" in dot
    short = to_dot(net)
    assert "<b>conv</b><br/>conv2d<br/>" in short  # relative to its cluster by default
    assert 'tooltip="layer1.0.a.conv: conv2d\\nout=16' in short  # full name and attrs on hover


def test_one_cluster_per_block_instance_nested_by_scope(net):
    dot = to_dot(net)
    assert len(re.findall(r"subgraph cluster_\d+ \{", dot)) == len(scopes_of(net))
    parent, where = parse(dot)
    assert parent["layer1.0 (basic)"] == "layer1"
    assert parent["layer1.0.a (conv_bn)"] == "layer1.0 (basic)"
    assert parent["layer2.0.downsample (conv_bn)"] == "layer2.0 (basic)"
    assert parent["stem (conv_bn)"] is None
    # every node sits in the cluster of its own scope
    ids = {n.id: f"n{i}" for i, n in enumerate(net.nodes())}
    labels = {lab.split(" (")[0]: lab for lab in parent}
    for n in net.nodes():
        assert where[ids[n.id]] == (labels[n.scope] if n.scope else None), n.id


def test_colors_follow_op_groups_and_io_is_bold(net):
    dot = to_dot(net)
    ids = {n.id: f"n{i}" for i, n in enumerate(net.nodes())}
    line = {m.group(1): ln for ln in dot.splitlines() if (m := NODE_LINE.match(ln))}
    assert f'fillcolor="{GROUP_COLORS["convolution"]}"' in line[ids["stem.conv"]]
    assert f'fillcolor="{GROUP_COLORS["normalization"]}"' in line[ids["stem.bn"]]
    assert f'fillcolor="{GROUP_COLORS["activation"]}"' in line[ids["stem.relu"]]
    assert f'fillcolor="{GROUP_COLORS["linear"]}"' in line[ids["fc"]]
    assert "bold" in line[ids["image"]] and "bold" in line[ids["fc"]]
    assert "bold" not in line[ids["stem.conv"]]
    assert "legend [" in dot and "convolution" in dot
    assert "legend [" not in to_dot(net, legend=False)


def test_edge_labels_modes(net):
    assert "label=\"f32[" not in to_dot(net)  # single-output nodes already show their type
    assert to_dot(net, edge_labels="all").count('label="f32[') == net.g.number_of_edges()
    with pytest.raises(UsageError):
        to_dot(net, edge_labels="sometimes")
    with pytest.raises(UsageError):
        to_dot(net, rankdir="up")


# -- escaping ---------------------------------------------------------------------

def test_dot_string_escapes_quotes_backslashes_and_newlines():
    assert dot_string("plain") == '"plain"'
    assert dot_string('a"b') == '"a\\"b"'
    assert dot_string("a\\b") == '"a\\\\b"'
    assert dot_string('x\\"; evil [') == '"x\\\\\\"; evil ["'
    assert dot_string("two\nlines") == '"two\\nlines"'
    assert dot_string("nul\x00") == '"nul\ufffd"'


def test_html_text_escapes_markup():
    assert html_text('<b>&"\'') == "&lt;b&gt;&amp;&quot;&#39;"
    assert html_text("a\nb") == "a<br/>b"
    assert html_text("\\N") == "\\\\N"  # Graphviz would expand \N to the node id
    assert "<" not in html_text("</font>>];  n0 -> n1; x [label=<")


HOSTILE = 'evil"; n0 -> n0 [label="pwn"]; </b>><& \\N \\G'


def hostile_graph() -> Graph:
    g = Graph(HOSTILE)
    t = TensorType(("N", 4), "f32")
    g.add_node(HOSTILE, "input", [], {"name": HOSTILE}, [t], scope="")
    g.add_node(HOSTILE + ".relu", "relu", [Value(HOSTILE)], {}, [t], scope=HOSTILE, block='b"lock<')
    g.outputs = [Value(HOSTILE + ".relu")]
    g.output_names = [HOSTILE]
    return g


def test_hostile_names_stay_inside_their_labels():
    dot = to_dot(hostile_graph())
    edges = [ln for ln in dot.splitlines() if EDGE_LINE.match(ln)]
    assert edges == ["  n0 -> n1;", "  n1 -> o0;"]  # no injected edge
    assert len(re.findall(r"subgraph cluster_\d+ \{", dot)) == 1
    assert dot_string(f"{HOSTILE} (b\"lock<)") in dot


def _dot_exe() -> str:
    exe = shutil.which("dot")
    assert exe, ("Graphviz 'dot' is not on PATH: these tests need it "
                 "(apt-get install graphviz; .ci/run installs it) and must not be skipped silently")
    return exe


def test_hostile_dot_parses_in_graphviz():
    proc = subprocess.run([_dot_exe(), "-Tsvg"], input=to_dot(hostile_graph()).encode(), capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    svg = proc.stdout.decode()
    assert svg.count('class="node"') == 3 + 1  # input, relu, output box, legend
    # every name is drawn as the literal text: no markup, no \N / \G expansion
    texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    assert texts.count(HOSTILE) == 3  # graph title, input box, output box
    assert f'{HOSTILE} (b"lock<)' in texts  # the cluster


# -- rendering --------------------------------------------------------------------

def test_render_svg_with_graphviz(net, tmp_path):
    _dot_exe()
    out = render(net, tmp_path / "net.svg")
    svg = out.read_text()
    assert "<svg" in svg
    assert svg.count('class="cluster"') == len(scopes_of(net))
    assert svg.count('class="node"') == len(net) + len(net.outputs) + 1  # + legend
    assert "layer1.0 (basic)" in svg


def test_render_png_and_pdf(net, tmp_path):
    _dot_exe()
    assert render(net, tmp_path / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert render(net, tmp_path / "net.pdf").read_bytes()[:5] == b"%PDF-"
    assert render(net, tmp_path / "picture", fmt="svg").read_text().lstrip().startswith("<?xml")


def test_render_resnet18_example(tmp_path):
    _dot_exe()
    assert RESNET18.exists(), f"{RESNET18} is the model-zoo ResNet-18 this test draws"
    g = elaborate(RESNET18.read_text(), str(RESNET18))
    svg = render(g, tmp_path / "resnet18.svg").read_text()
    assert svg.count('class="cluster"') == len(scopes_of(g))
    assert "layer4.1 (basic)" in svg


def test_dot_file_needs_no_graphviz(net, tmp_path, monkeypatch):
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    out = render(net, tmp_path / "net.dot")
    assert out.read_text() == to_dot(net)
    with pytest.raises(UsageError) as err:
        render(net, tmp_path / "net.png")
    assert "apt-get install graphviz" in err.value.hint and ".dot" in err.value.hint
    assert not (tmp_path / "net.png").exists()


def test_unknown_format_and_unwritable_path(net, tmp_path):
    with pytest.raises(UsageError, match="unknown format 'jpeg'"):
        render(net, tmp_path / "net.jpeg")
    with pytest.raises(UsageError, match="no format"):
        render(net, tmp_path / "net")
    with pytest.raises(UsageError, match="cannot write"):
        render(net, tmp_path / "missing" / "net.dot")


def test_graphviz_timeout_is_a_usage_error(net, tmp_path, monkeypatch):
    def slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

    monkeypatch.setattr(draw.shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(draw.subprocess, "run", slow)
    with pytest.raises(UsageError, match="longer than"):
        render(net, tmp_path / "net.svg", timeout=1)
