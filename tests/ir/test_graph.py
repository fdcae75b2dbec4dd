import pytest

from convdsl.errors import IRError
from convdsl.ir.graph import Value
from convdsl.lang.printer import print_graph
from convdsl.ir.types import TensorType
from convdsl.ir.verify import verify
from convdsl.lang.elaborate import elaborate

from ..helpers import RESNETISH, graph_of


def test_order_is_topological_and_deterministic():
    g1, g2 = graph_of(RESNETISH), graph_of(RESNETISH)
    order = g1.order()
    assert order == g2.order()
    pos = {n: i for i, n in enumerate(order)}
    for u, v in g1.g.edges():
        assert pos[u] < pos[v]


@pytest.mark.parametrize("rewire", [False, True])
def test_order_is_networkx_lexicographic_topological_sort(rewire):
    """The creation-order shortcut gives networkx's order; an edge from a newer node (a pass rewired
    the graph) takes the sort."""
    import networkx as nx

    g = graph_of(RESNETISH)
    if rewire:  # the first op after the input reads the last op's output instead (shapes aside)
        first = next(n.id for n in g.nodes() if n.op != "input")
        late = g.add_node("late", "relu", [Value(g.inputs[0])], {}, [g.node(g.inputs[0]).types[0]])
        g.set_inputs(first, [Value(late)])
        assert any(g.node(u).seq > g.node(v).seq for u, v in g.g.edges())
    seq = {n: d["node"].seq for n, d in g.g.nodes(data=True)}
    assert g.order() == list(nx.lexicographical_topological_sort(g.g, key=seq.__getitem__))


def test_ports_keep_operand_order():
    g = graph_of("network n(a: f32[2, 3], b: f32[3, 4]) { return a @ b }")
    mm = [n for n in g.nodes() if n.op == "matmul"][0]
    assert g.inputs_of(mm.id) == [Value("a"), Value("b")]
    assert mm.type == TensorType((2, 4))


def test_parameter_names_follow_instance_labels():
    g = graph_of(RESNETISH)
    names = g.params.names()
    assert "stem.conv.weight" in names
    assert "layer2.0.downsample.conv.weight" in names
    assert "layer1.0.downsample.conv.weight" not in names  # identity shortcut in layer1
    assert "fc.weight" in names and "fc.bias" in names


def test_params_are_lazy_and_deterministic():
    g = graph_of("network n(x: f32[N, 3, 8, 8]) { return x | conv2d(16) }")
    assert not g.params.is_materialized("conv2d.weight")
    w1 = graph_of("network n(x: f32[N, 3, 8, 8]) { return x | conv2d(16) }").params["conv2d.weight"]
    w2 = g.params["conv2d.weight"]
    assert (w1 == w2).all()
    # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 3*3*3
    bound = 1 / 27**0.5
    assert w2.min() >= -bound and w2.max() <= bound and w2.max() > 0.8 * bound


def test_seed_changes_values_not_names():
    a = graph_of("network n(x: f32[1, 4]) { return x | linear(3) }", seed=0)
    b = graph_of("network n(x: f32[1, 4]) { return x | linear(3) }", seed=1)
    assert a.params.names() == b.params.names()
    assert not (a.params["linear.weight"] == b.params["linear.weight"]).all()


def test_verify_catches_a_wrong_recorded_type():
    g = graph_of(RESNETISH)
    node = g.node("fc")
    node.types = [TensorType(("N", 16, 8, 99))]
    with pytest.raises(IRError, match="fc"):
        verify(g)


def test_verify_catches_missing_parameter_and_cycle():
    g = graph_of(RESNETISH)
    g.params.remove("fc.bias")
    with pytest.raises(IRError, match="fc.bias"):
        verify(g)
    g = graph_of("network n(x: f32[1, 4]) { y = relu(x)\n return relu(y) }")
    relus = [n.id for n in g.nodes() if n.op == "relu"]
    g.g.add_edge(relus[1], relus[0], port=1, out=0)
    with pytest.raises(IRError, match="cycle"):
        verify(g)


def test_copy_is_independent():
    g = graph_of(RESNETISH)
    h = g.copy()
    h.node("fc").attrs["out"] = 3
    assert g.node("fc").attrs["out"] == 10


def test_printer_round_trips_structure_and_names():
    g = graph_of(RESNETISH)
    text = print_graph(g)
    h = verify(elaborate(text, "<printed>"))
    assert [n.id for n in g.nodes()] == [n.id for n in h.nodes()]
    assert [(n.op, n.attrs, n.types) for n in g.nodes()] == [(n.op, n.attrs, n.types) for n in h.nodes()]
    assert sorted(g.g.edges(data=True)) == sorted(h.g.edges(data=True))
    assert g.params.names() == h.params.names()
    assert print_graph(h) == text  # printing is a fixed point


def test_printer_keeps_symbolic_inputs_and_multiple_outputs():
    g = graph_of("network n(x: f32[N, 4]) { a = relu(x)\n b = sigmoid(x)\n return a, b }")
    text = print_graph(g)
    assert "x: f32[N, 4]" in text
    h = elaborate(text, "<printed>")
    assert len(h.outputs) == 2
