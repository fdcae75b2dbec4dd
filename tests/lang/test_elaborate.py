"""AST -> graph IR: the language features produce the expected nodes, types,
instance names and parameter names; nothing is allocated."""
from __future__ import annotations

import pytest

from convdsl.errors import ChoiceError, CDLNameError, CDLTypeError, ConvDSLError, ResourceError, ShapeError
from convdsl.ir.ops import OPS
from convdsl.ir.types import Size, TensorType
from convdsl.lang.elaborate import MAX_BLOCK_DEPTH, Options, elaborate, elaborate_file


def ids(g) -> list[str]:
    return [n.id for n in g.nodes()]


def ops(g) -> list[str]:
    return [n.op for n in g.nodes() if n.op != "input"]


def out_type(g, i: int = 0) -> TensorType:
    return g.output_types()[i]


def net(body: str, inputs: str = "x: f32[N, 3, 16, 16]", head: str = "") -> str:
    return f"{head}\nnetwork n({inputs}) {{\n{body}\n}}\n"


def test_ops_used_here_exist():
    assert {"conv2d", "batchnorm", "relu", "linear", "add", "global_avgpool", "upsample", "maxpool2d"} <= set(OPS)


# ---- blocks -------------------------------------------------------------------------
CONV_BN = ("block conv_bn(c, k=3, stride=1, p=k // 2) = "
           "conv2d(c, k, stride=stride, pad=p, bias=false) | batchnorm | relu")


def test_seq_block_defaults_reference_earlier_params():
    g = elaborate(net("return x | conv_bn(8, k=5) as stem", head=CONV_BN))
    conv = g.node("stem.conv2d")
    assert conv.attrs["k"] == 5 and conv.attrs["pad"] == 2 and conv.attrs["bias"] is False
    assert ops(g) == ["conv2d", "batchnorm", "relu"]
    assert out_type(g) == TensorType(("N", 8, 16, 16))


def test_in_channels_are_inferred():
    g = elaborate(net("return x | conv2d(8) | conv2d(4, 1) | global_avgpool(keepdim=false) | linear(10)"))
    weights = {n: s.shape for n, s in g.params.specs.items() if n.endswith("weight")}
    assert weights == {"conv2d.weight": (8, 3, 3, 3), "conv2d_1.weight": (4, 8, 1, 1), "linear.weight": (10, 4)}


def test_symbolic_batch_dim_flows_through():
    g = elaborate(net("return x | conv2d(8, stride=2, pad=1) | relu | global_avgpool(keepdim=false) | linear(5)"))
    assert [t.shape[0] for n in g.nodes() for t in n.types] == ["N"] * len(g)
    assert out_type(g) == TensorType(("N", 5))
    assert "N" in g.symbols


def test_graph_block_multiple_inputs_and_outputs():
    src = net("""
    a, b = x | split2(8)
    y = merge(a, b) as m
    return y, a
""", head="""
block split2(c)(x) {
    a = x | conv2d(c, 1) as left
    b = x | conv2d(c, 3, pad=1) as right
    return a, b
}
block merge()(a, b) {
    return relu(a + b)
}
""")
    g = elaborate(src)
    assert {"split2.left", "split2.right", "m.add", "m.relu"} <= set(ids(g))
    assert len(g.outputs) == 2 and g.output_names == ["y", "a"]
    assert g.inputs_of("m.add") == [("split2.left", 0), ("split2.right", 0)]


def test_block_applied_by_call_and_by_pipe_agree():
    head = "block two()(x) {\n return x | relu | relu\n}"
    g1 = elaborate(net("return two(x)", head=head))
    g2 = elaborate(net("return x | two", head=head))
    assert ids(g1) == ids(g2)


def test_pipes_across_lines_and_layer_values():
    src = net("""
    stage = conv2d(8, 3, pad=1)
          | batchnorm
          | relu
    y = x
      | stage
      | stage
    return y
""")
    g = elaborate(src)
    assert ops(g) == ["conv2d", "batchnorm", "relu"] * 2


# ---- names -------------------------------------------------------------------------
RESNETISH = """
block conv_bn(c, k=3, stride=1) = conv2d(c, k, stride=stride, pad=k // 2, bias=false) as conv | batchnorm as bn | relu

block basic(c, stride=1)(x) {
    y = x | conv_bn(c, stride=stride) as a | conv_bn(c) as b
    s = x | conv_bn(c, k=1, stride=stride) as down if stride != 1 or channels(x) != c else x
    return relu(y + s)
}

network net(image: f32[N, 3, 32, 32], classes=10) {
    h = image | conv_bn(8) as stem
    for i, c in enumerate([8, 16]) {
        for j in range(2) {
            h = h | basic(c, stride=2 if i > 0 and j == 0 else 1) as "layer{i + 1}.{j}"
        }
    }
    return h | global_avgpool(keepdim=false) | linear(classes) as fc
}
"""


def test_label_interpolation_and_parameter_scopes():
    g = elaborate(RESNETISH)
    names = set(g.params.names())
    assert {"stem.conv.weight", "stem.bn.weight", "stem.bn.running_mean", "layer1.0.a.conv.weight",
            "layer1.1.b.bn.bias", "layer2.0.down.conv.weight", "fc.weight", "fc.bias"} <= names
    assert "layer1.0.down.conv.weight" not in names  # no projection where stride 1 and channels match
    assert g.node("layer2.0.a.conv").attrs["stride"] == 2
    assert g.node("layer2.0.a.conv").scope == "layer2.0.a"
    assert g.node("layer2.0.a.conv").block == "conv_bn"
    assert out_type(g) == TensorType(("N", 10))


def test_parameters_are_lazy():
    g = elaborate(RESNETISH)
    assert g.params.names()
    assert not any(g.params.is_materialized(n) for n in g.params.names())


def test_automatic_names_are_unique_and_readable():
    g = elaborate(net("return x | relu | relu | conv_bn(3) | conv_bn(3)", head=CONV_BN))
    assert ids(g) == ["x", "relu", "relu_1", "conv_bn.conv2d", "conv_bn.batchnorm", "conv_bn.relu",
                      "conv_bn_1.conv2d", "conv_bn_1.batchnorm", "conv_bn_1.relu"]


def test_label_on_expression_makes_a_scope():
    g = elaborate(net("y = (x | conv2d(4) | relu) as head\nreturn y"))
    assert ids(g) == ["x", "head.conv2d", "head.relu"]


def test_labeled_if_expression():
    # regression: `(a if c else b) as name` crashed with TypeError for non-call branches
    g = elaborate(net("return (x | relu if true else x) as r"))
    assert ids(g) == ["x", "r.relu"]
    g = elaborate(net("return (relu if false else gelu)(x) as act"))
    assert ops(g) == ["gelu"]


# ---- control flow and hyper-parameter code -----------------------------------------------
def test_for_repeat_if_elif_else():
    body = """
    repeat depth {
        x = x | conv2d(4, 1)
    }
    for k in [1, 3] {
        x = x | conv2d(4, k, pad=k // 2)
    }
    if mode == 0 {
        x = x | relu
    } elif mode == 1 {
        x = x | gelu
    } else {
        x = x | silu
    }
    return x
"""
    for mode, act in [(0, "relu"), (1, "gelu"), (2, "silu")]:
        g = elaborate(net(body, inputs=f"x: f32[N, 3, 8, 8], depth=2, mode={mode}"))
        assert ops(g) == ["conv2d"] * 4 + [act]
    g = elaborate(net(body, inputs="x: f32[N, 3, 8, 8], depth=0, mode=0"))
    assert ops(g) == ["conv2d"] * 2 + ["relu"]


def test_overrides_set_network_parameters():
    g = elaborate(net("return x | linear(c)", inputs="x: f32[N, 4], c=3"), options=Options(overrides={"c": 7}))
    assert out_type(g) == TensorType(("N", 7))


def test_assert_passes_and_fails():
    ok = net('assert channels(x) == 3, "rgb"\nreturn x')
    elaborate(ok)
    with pytest.raises(CDLTypeError, match="need four channels"):
        elaborate(net('assert channels(x) == 4, "need four channels"\nreturn x'))


def test_def_functions_and_constants():
    src = """
BASE = 4
def width(i, mult=2) = BASE * mult ** i
def pick(flag) = relu if flag else gelu
network n(x: f32[N, 3, 8, 8]) {
    y = x | conv2d(width(2)) | pick(false)
    return y
}
"""
    g = elaborate(src)
    assert g.node("conv2d").attrs["out"] == 16
    assert ops(g) == ["conv2d", "gelu"]


def test_builtins_and_arithmetic():
    src = net("""
    c = channels(x) * 2 ** 2 - 4
    h = dim(x, -1) // 2
    ks = [k for k in [1]] if false else [3, 5]
    assert c == 8 and h == 8 and rank(x) == 4 and shape(x)[1] == 3 and x.channels == 3
    assert len(ks) == 2 and sum(ks) == 8 and max(ks) == 5 and min(1, 2) == 1 and abs(-2) == 2
    assert round(2.6) == 3 and ceil(2.1) == 3 and floor(2.9) == 2 and int(2.9) == 2
    assert make_divisible(37) == 40 and 7 % 3 == 1 and -7 // 2 == -4 and 1 - 2 - 3 == -4
    return x | conv2d(c, ks[0])
""")
    with pytest.raises(ConvDSLError):  # no comprehensions in CDL
        elaborate(src)
    g = elaborate(src.replace("[k for k in [1]] if false else ", ""))
    assert g.node("conv2d").attrs["out"] == 8


def test_tensor_arithmetic_with_numbers():
    g = elaborate(net("return 1 - (x * 2.0 + 1) / 4"))
    assert ops(g) == ["affine", "affine", "affine", "affine"]
    g = elaborate(net("return -x"))
    assert ops(g) == ["neg"]


# ---- imports ---------------------------------------------------------------------------------
LIB = """
WIDTH = 8
block conv_bn(c, k=3) = conv2d(c, k, pad=k // 2, bias=false) | batchnorm | relu
"""


def test_import_and_import_as(tmp_path):
    (tmp_path / "lib.cdl").write_text(LIB)
    main = tmp_path / "main.cdl"
    main.write_text('import "lib.cdl"\nimport "lib.cdl" as m\n'
                    "network n(x: f32[N, 3, 8, 8]) {\n return x | conv_bn(WIDTH) | m.conv_bn(m.WIDTH * 2, k=1)\n}\n")
    g = elaborate_file(main)
    assert g.node("conv_bn_1.conv2d").attrs["out"] == 16
    assert g.node("conv_bn.conv2d").span.file.endswith("lib.cdl")  # spans point into the imported file


def test_import_from_subfolder_is_relative_to_the_importer(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.cdl").write_text("block act() = relu\n")
    (tmp_path / "sub" / "lib.cdl").write_text('import "inner.cdl"\nblock twice() = act | act\n')
    main = tmp_path / "main.cdl"
    main.write_text('import "sub/lib.cdl" as lib\nnetwork n(x: f32[1, 4]) {\n return x | lib.twice\n}\n')
    assert ops(elaborate_file(main)) == ["relu", "relu"]


def test_circular_import_is_refused(tmp_path):
    (tmp_path / "a.cdl").write_text('import "b.cdl"\nblock fa() = relu\n')
    (tmp_path / "b.cdl").write_text('import "a.cdl"\nblock fb() = relu\n')
    main = tmp_path / "main.cdl"
    main.write_text('import "a.cdl"\nnetwork n(x: f32[1, 3]) {\n return x | fa\n}\n')
    with pytest.raises(CDLNameError, match="circular import") as info:
        elaborate_file(main)
    assert info.value.span.file.endswith("b.cdl") and info.value.span.line == 1
    assert any("a.cdl -> " in n for n in info.value.notes)


def test_missing_import(tmp_path):
    main = tmp_path / "main.cdl"
    main.write_text('import "nope.cdl"\nnetwork n(x: f32[1]) { return x }\n')
    with pytest.raises(CDLNameError, match="cannot import") as info:
        elaborate_file(main)
    assert (info.value.span.line, info.value.span.column) == (1, 1)


def test_module_attribute_typo(tmp_path):
    (tmp_path / "lib.cdl").write_text(LIB)
    main = tmp_path / "main.cdl"
    main.write_text('import "lib.cdl" as m\nnetwork n(x: f32[N, 3, 8, 8]) {\n return x | m.conv_b(4)\n}\n')
    with pytest.raises(CDLNameError) as info:
        elaborate_file(main)
    assert "conv_bn" in info.value.hint


# ---- recursion -------------------------------------------------------------------------------
UNET = """
block unet(c, depth)(x) {
    if depth == 0 {
        return x | conv2d(c, 3, pad=1) as conv | relu
    }
    d = x | conv2d(c, 3, stride=2, pad=1) as down | relu
    inner = d | unet(c, depth - 1) as inner
    u = inner | upsample(scale=2.0) as up
    return u + x
}

network net(x: f32[N, 8, 32, 32], depth=3) {
    return x | unet(8, depth) as body
}
"""


def test_recursive_block_with_base_case():
    g = elaborate(UNET)
    assert "body.inner.inner.inner.conv" in g
    assert g.node("body.inner.inner.down").types[0] == TensorType(("N", 8, 4, 4))
    assert out_type(g) == TensorType(("N", 8, 32, 32))
    assert "body.inner.inner.inner.conv.weight" in g.params


def test_infinite_recursion_is_refused():
    src = UNET.replace("depth == 0", "depth == -100")
    with pytest.raises(ResourceError, match="recursion") as info:
        elaborate(src)
    assert info.value.span.line == 7  # the recursive call
    assert info.value.hint and "base case" in info.value.hint


def test_recursion_depth_limit_is_generous_enough():
    body = "\n".join(["block r(n) = relu if n == 0 else r(n - 1)"])
    elaborate(net("return x | r(%d)" % (MAX_BLOCK_DEPTH - 2), head=body))
    with pytest.raises(ResourceError):
        elaborate(net("return x | r(%d)" % (MAX_BLOCK_DEPTH + 1), head=body))


def test_recursive_def_is_refused():
    with pytest.raises(ResourceError):
        elaborate(net("return x | conv2d(f(1))", head="def f(n) = f(n + 1)"))


@pytest.mark.slow
def test_exponential_calls_are_refused():
    head = "def f(n) = 1 if n == 0 else f(n - 1) + f(n - 1)"
    g = elaborate(net("return x | linear(f(4))", inputs="x: f32[1, 2]", head=head))
    assert out_type(g).shape == (1, 16)
    with pytest.raises(ResourceError, match="steps"):
        elaborate(net("return x | linear(f(40))", inputs="x: f32[1, 2]", head=head))


# ---- choices ---------------------------------------------------------------------------------
SPACE = """
block mb(c, k=choice(3, 5, name="k"))(x) {
    return x | conv2d(c, k, pad=same)
}
network net(x: f32[N, 3, 32, 32], w=choice(16, 32, name="width")) {
    h = x | conv2d(w, choice(1, 3)) | relu
    return h | mb(w)
}
"""


def test_unresolved_choice_is_refused():
    with pytest.raises(ChoiceError) as info:
        elaborate(SPACE)
    assert (info.value.span.line, info.value.span.column) == (5, 37)
    assert "width" in info.value.hint


def test_choices_resolved_by_index_and_value():
    g = elaborate(SPACE, options=Options(choices={"k": 1, "width": 1, "6:23": 0}))
    assert g.node("conv2d").attrs["out"] == 32 and g.node("conv2d").attrs["k"] == 1
    assert g.node("mb.conv2d").attrs["k"] == 5
    assert g.choices == ["6:23", "k", "width"]


def test_first_choice():
    g = elaborate(SPACE, options=Options(first_choice=True))
    assert g.node("conv2d").attrs["out"] == 16 and g.node("mb.conv2d").attrs["k"] == 3


def test_choice_between_layers():
    src = net('return x | choice(relu, gelu, silu, name="act")')
    assert ops(elaborate(src, options=Options(choices={"act": 2}))) == ["silu"]


def test_choice_out_of_range():
    with pytest.raises(ChoiceError, match="no option 9") as info:
        elaborate(SPACE, options=Options(choices={"k": 9, "width": 0, "6:23": 0}))
    assert info.value.expected == "3, 5"


# ---- networks ----------------------------------------------------------------------------------
def test_network_selection():
    src = "network a(x: f32[1, 2]) { return x | relu }\nnetwork b(x: f32[1, 2]) { return x | gelu }\n"
    assert ops(elaborate(src, network="b")) == ["gelu"]
    with pytest.raises(ConvDSLError, match="several networks"):
        elaborate(src)
    with pytest.raises(ConvDSLError, match="no network 'c'"):
        elaborate(src, network="c")


def test_nothing_is_allocated_for_a_huge_but_legal_network():
    # 4 GiB of parameters under a 16 GiB limit: elaboration only records specs
    g = elaborate(net("return x | linear(32768) | linear(32768)", inputs="x: f32[N, 32768]"))
    assert g.params.nbytes() > 4 * 1024**3
    assert not any(g.params.is_materialized(n) for n in g.params.names())


def test_memory_limit_counts_parameters():
    with pytest.raises(ResourceError, match="parameters"):
        elaborate(net("return x | linear(32768) | linear(32768)", inputs="x: f32[N, 32768]"),
                  options=Options(max_bytes=1024**3))


@pytest.mark.parametrize("dtype", ["f64", "f16", "bf16"])
def test_parameters_follow_the_float_dtype_they_compute_in(dtype):
    """An f64 network has f64 weights (tests/regressions/float64_input.cdl); so does the part of a
    network after a cast; counters stay i64."""
    g = elaborate(net("return x | conv2d(4, 3) | batchnorm", inputs=f"x: {dtype}[N, 3, 8, 8]"))
    assert {n: s.dtype for n, s in g.params.specs.items() if "num_batches" not in n} == {
        n: dtype for n in ("conv2d.weight", "conv2d.bias", "batchnorm.weight", "batchnorm.bias",
                           "batchnorm.running_mean", "batchnorm.running_var")}
    assert g.params.specs["batchnorm.num_batches_tracked"].dtype == "i64"
    g = elaborate(net("return x | linear(4) as a | cast(f64) | linear(4) as b", inputs="x: f32[N, 3]"))
    assert (g.params.specs["a.weight"].dtype, g.params.specs["b.weight"].dtype) == ("f32", "f64")
    assert g.params["b.weight"].dtype == "float64"


def test_memory_limit_counts_bytes_of_the_parameter_dtype():
    limit = Options(max_bytes=6 * 1024**2)  # a 1024 x 1024 weight: 4 MiB in f32, 8 MiB in f64
    elaborate(net("return x | linear(1024, bias=false)", inputs="x: f32[N, 1024]"), options=limit)
    with pytest.raises(ResourceError, match="parameters"):
        elaborate(net("return x | linear(1024, bias=false)", inputs="x: f64[N, 1024]"), options=limit)


def test_duplicate_input_names_are_refused():
    # regression: the second input raised ValueError("duplicate node id") from the graph
    with pytest.raises(CDLNameError, match="declared twice"):
        elaborate("network n(x: f32[1, 3], x: f32[1, 3]) { return x }")


def test_block_parameters_declared_twice():
    with pytest.raises(CDLNameError, match="declared twice"):
        elaborate(net("return x | f(1, 2)", head="block f(a, a) = relu"))


def test_shape_errors_inside_blocks_point_at_the_op():
    src = net("return x | bad", head="block bad() = conv2d(4, 3, groups=2)")
    with pytest.raises(ShapeError) as info:
        elaborate(src)
    assert info.value.span.line == 1


# ---- issue 14: the language as a newcomer meets it ----------------------------------------
def test_label_on_def_call_names_what_the_def_builds():
    """Item 1: `x | bn() as "layers.1"` named the parameters batchnorm, batchnorm_1... silently."""
    head = ("def bn() = batchnorm(momentum=0.1)\n"
            "def conv_bn(c) = conv2d(c, 3, bias=false) as \"0\" | batchnorm as \"1\"\n"
            "def gate(a, b) = a * sigmoid(b | conv2d(channels(a), 1))")
    g = elaborate(net('y = x | bn() as "layers.1" | conv_bn(8) as stem\n'
                      'return gate(y, y) as "se"', head=head))
    assert sorted(g.params.specs) == [
        "layers.1.bias", "layers.1.num_batches_tracked", "layers.1.running_mean", "layers.1.running_var",
        "layers.1.weight", "se.conv2d.bias", "se.conv2d.weight", "stem.0.weight", "stem.1.bias",
        "stem.1.num_batches_tracked", "stem.1.running_mean", "stem.1.running_var", "stem.1.weight"]


def test_label_on_def_that_returns_a_number_is_refused():
    with pytest.raises(CDLTypeError, match=r"half returns the integer 4, which has no parameters to name"):
        elaborate(net("c = half(8) as h\nreturn x", head="def half(c) = c // 2"))


def test_slices_item_assignment_and_a_def_applied_to_a_tensor():
    """Issue 14 item 10: `depths[0:-1]` and `d[0] = 2` were syntax errors, and `bn2(y, 0.3)` said
    'takes at most 1 hyper-parameters' although ops and blocks apply that way."""
    head = "DEPTHS = [1, 2, 3, 4]\ndef bn2(m=0.1) = batchnorm(momentum=m)\ndef gate(a, b) = a * sigmoid(b)"
    g = elaborate(net("d = DEPTHS[0:-1]\n"
                      "d[0] = 2\n"
                      'assert d == [2, 2, 3] and DEPTHS == [1, 2, 3, 4], "lists are values"\n'
                      "assert DEPTHS[::-1] == [4, 3, 2, 1] and DEPTHS[1:] == [2, 3, 4] and DEPTHS[:] == DEPTHS\n"
                      "for k in d[::2] { x = x | conv2d(k, 1) }\n"
                      "parts = x | split(chunks=3)\n"
                      "y = concat(parts[1:], dim=1)\n"
                      "z = bn2(y, 0.3) as norm\n"
                      "return gate(z, bn2(z)), bn2(parts[0])", head=head))
    assert [g.params.specs[f"{n}.weight"].shape[0] for n in ("conv2d", "conv2d_1")] == [2, 3]
    assert g.node("norm").attrs["momentum"] == 0.3 and g.node("norm").type.shape == ("N", 2, 16, 16)
    assert [g.node(n).attrs["momentum"] for n in ("batchnorm", "batchnorm_1")] == [0.1, 0.1]
    assert ops(g)[-2:] == ["mul", "batchnorm"]


@pytest.mark.parametrize("body, message", [
    ("l = [1, 2]\nl[2] = 0\nreturn x", "index 2 out of range for a list of 2"),
    ("l = [1, 2]\nm = l[0:1.5]\nreturn x", "a slice takes integers"),
    ("l = [1, 2]\nm = l[::0]\nreturn x", "a slice step cannot be zero"),
    ("c = 3\nc[0] = 1\nreturn x", "only a list's items can be assigned; 'c' is the integer 3"),
])
def test_slice_and_item_assignment_errors(body, message):
    with pytest.raises(CDLTypeError, match=message):
        elaborate(net(body))


# ---- symbolic sizes as values (issue 14 item 2) ---------------------------------------------------
def test_symbolic_dims_are_values_that_fold_into_the_batch_and_back():
    """`reshape([dim(x, 0), ...])` said 'bad value for reshape(shape=...)' and `dim(x, 0) * 4` said
    ''*' needs numbers': a symbolic dim is now a size that takes + - * / // and stands in a
    shape list; the network's symbols are names too."""
    g = elaborate(net("n = dim(x, 0)\n"
                      "y = x | reshape([n * 4, 3, 8, 8]) as fold\n"
                      'assert dim(y, 0) == 4 * N and dim(y, 0) / 4 == n and dim(y, 0) // n == 4, "sizes compare"\n'
                      'assert shape(y)[0] - n == 3 * N and y.shape[0] != n and -n + n == 0, "and subtract"\n'
                      "z = y | reshape([dim(y, 0) / 4, 3, 16, -1]) as unfold\n"
                      "return z | reshape([N, -1]) as flat", inputs="x: f32[N, 3, 16, 16]"))
    assert g.node("fold").attrs["shape"][0] == Size("4*N")
    assert [g.node(n).type.shape for n in ("fold", "unfold", "flat")] == [("4*N", 3, 8, 8), ("N", 3, 16, 16),
                                                                          ("N", 768)]


def test_a_symbol_shadows_nothing_the_program_binds():
    head = "N = 5"
    g = elaborate(net("return x | reshape([N, -1])", head=head, inputs="x: f32[B, 5, 2]"))  # the constant N
    assert out_type(g).shape == (5, "2*B")
    g = elaborate(net("H = 2\nreturn x | reshape([N, H, -1])", inputs="x: f32[N, 4, H]"))  # the local H
    assert out_type(g).shape == ("N", 2, "2*H")
    g = elaborate(net("return x | reshape([N * 2, -1])", inputs="x: f32[N, 4, 4]"),
                  options=Options(bind={"N": 3}, concrete=True))  # a bound symbol is its size
    assert out_type(g).shape == (6, 8) and g.node("reshape").attrs["shape"] == (6, -1)


@pytest.mark.parametrize("body, error, message, col", [
    ("n = dim(x, 0) / 4\nreturn x", CDLTypeError, r"'/' on a symbolic size: N is not a multiple of 4 for every N", 5),
    ("assert dim(x, 0) > 1\nreturn x", CDLTypeError, "'>' cannot order a symbolic size", 8),
    ("n = dim(x, 0) % 2\nreturn x", CDLTypeError, "'%' is not defined for symbolic sizes", 5),
    ("n = dim(x, 0) * 0.5\nreturn x", CDLTypeError, "'\\*' between a symbolic size and the number 0.5", 5),
    ("return x | reshape([dim(x, 0) // 4, -1])", ShapeError, r"the sizes hold \(N\)//4 beyond the input's own factors", 12),
    ("return x | reshape([N * N, -1])", ShapeError, "the sizes hold N beyond", 12),
    ("return x | reshape([-1, 5, 4, 4])", ShapeError, "-1 cannot take a part of N", 12),
    ("return x | reshape([3, 16, 16])", ShapeError, "the input's N is left over", 12),
    ("return x | conv2d(dim(x, 0))", CDLTypeError, r"bad value for conv2d\(out=...\)", 12),
])
def test_symbolic_size_errors_are_located_and_say_why(body, error, message, col):
    with pytest.raises(error, match=message) as info:
        elaborate(net(body, inputs="x: f32[N, 3, 16, 16]"))
    assert info.value.span is not None and (info.value.span.line, info.value.span.column) == (3, col)
    assert info.value.hint


def test_a_window_relative_position_index_fits_an_op_list_and_a_longer_list_is_located():
    """Imported Swin/MaxViT programs write the relative-position index of every pair of positions in a window
    literally (7x7: 2,401 positions; 12x12: 20,736); it must pass the op-list limit, and a list past the limit is
    refused at its op with the limit named."""
    import numpy as np
    import torch

    from convdsl.backends.torch import build_module
    from convdsl.lang.limits import MAX_ATTR_ITEMS

    m = 12
    coords = np.stack(np.meshgrid(np.arange(m), np.arange(m), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (m - 1)
    index = (rel[..., 0] * (2 * m - 1) + rel[..., 1]).reshape(-1)  # Swin's relative_position_index, flattened
    src = (f"network net(t: f32[{(2 * m - 1) ** 2}, 3]) {{\n"
           f"    return t | index_select([{', '.join(map(str, index))}], dim=0)\n}}")
    g = elaborate(src)
    table = torch.randn((2 * m - 1) ** 2, 3)
    with torch.no_grad():
        out = build_module(g)(table)
    torch.testing.assert_close(out, table[torch.from_numpy(index)])  # torch's own gather is the reference

    with pytest.raises(CDLTypeError) as e:
        elaborate(f"network net(t: f32[4, 3]) {{\n    return t | index_select(range({MAX_ATTR_ITEMS + 1}), dim=0)\n}}")
    assert e.value.span.line == 2 and f"at most {MAX_ATTR_ITEMS:,} items" in e.value.render()


def test_several_tensors_piped_into_a_pipeline_def_are_its_first_stages_inputs():
    """(a, b) | cat2() with cat2() = concat | relu: the pipeline's first op gets both tensors.  The pipeline
    handed them on as one list, and a valid program crashed with AttributeError ('list' object has no attribute
    'type'); found by tests/lang/test_fuzz.py's mutated seeds, as a tuple piped into a def of one-input ops."""
    head = "def cat2() = concat | relu\ndef cb(c) = conv2d(c, 1) | batchnorm\n"
    body = "network net(x: f32[N, 3, 8, 8]) {{\n    a = x | conv2d(8, 1)\n    b = x | conv2d(8, 1)\n    return {}\n}}\n"
    g = elaborate(head + body.format("(a, b) | cat2()"), "t.cdl", None, Options())
    assert g.output_types() == [TensorType(("N", 16, 8, 8), "f32")]
    with pytest.raises(CDLTypeError, match=r"t.cdl:2:13: .*conv2d takes 1 input tensor\(s\), got 2"):
        elaborate(head + body.format("(a, b) | cb(8)"), "t.cdl", None, Options())
