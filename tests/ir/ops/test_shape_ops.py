"""Shape ops (flatten, reshape, permute, transpose, squeeze/unsqueeze, concat,
split, pad, pixel_shuffle/unshuffle): shape rules against PyTorch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convdsl.errors import CDLTypeError, ShapeError
from opcheck import infer1, run_infer


@pytest.mark.parametrize("shape,start,end", [
    ((2, 3, 4, 5), 1, -1), ((2, 3, 4, 5), 0, -1), ((2, 3, 4, 5), 2, 3), ((2, 3, 4, 5), 1, 2),
    ((2, 3, 4, 5), -2, -1), ((7,), 0, -1), ((2, 3, 4, 5), 3, 3), ((2, 3, 1, 1), 1, -1),
])
def test_flatten_matches_torch(shape, start, end):
    want = torch.flatten(torch.randn(shape), start, end).shape
    assert infer1("flatten", shape, start, end) == tuple(want)


def test_flatten_symbolic_and_errors():
    assert infer1("flatten", ("N", 64, 1, 1)) == ("N", 64)
    assert infer1("flatten", ("N", 8, 4, 4)) == ("N", 128)
    assert infer1("flatten", ("N", "L", 4), 0, 1) == ("L*N", 4)
    with pytest.raises(ShapeError, match="start comes after end"):
        infer1("flatten", (2, 3, 4), 2, 1)
    with pytest.raises(ShapeError, match="out of range"):
        infer1("flatten", (2, 3), 2)


@pytest.mark.parametrize("shape,spec", [
    ((2, 8, 4, 4), [0, -1]), ((2, 8, 4, 4), [2, 2, 4, 16]), ((2, 8, 4, 4), [-1]), ((2, 8, 4, 4), [0, 0, 16]),
    ((2, 12, 5), [0, 3, 4, 5]), ((2, 12, 5), [0, -1, 4, 5]), ((6,), [2, 3]), ((2, 3, 4), [0, 0, 0]),
])
def test_reshape_matches_torch(shape, spec):
    x = torch.randn(shape)
    torch_spec = [shape[i] if v == 0 else v for i, v in enumerate(spec)]
    assert infer1("reshape", shape, spec) == tuple(x.reshape(torch_spec).shape)


def test_reshape_symbolic_dims_pass_through():
    assert infer1("reshape", ("N", 8, 4, 4), [0, -1]) == ("N", 128)
    assert infer1("reshape", ("N", 8, 4, 4), [0, 2, 4, 16]) == ("N", 2, 4, 16)
    assert infer1("reshape", ("N", 96), [0, 3, 32]) == ("N", 3, 32)
    assert infer1("reshape", ("N", "L", 64), [-1, 64]) == ("L*N", 64)
    assert infer1("reshape", ("N", "L", 64), [0, 0, 4, -1]) == ("N", "L", 4, 16)


def test_reshape_errors():
    with pytest.raises(ShapeError, match="cannot view"):
        infer1("reshape", (2, 8, 4, 4), [0, 3, -1])
    with pytest.raises(ShapeError, match="cannot view"):
        infer1("reshape", (2, 8, 4, 4), [2, 100])
    assert infer1("reshape", ("N", 8, 4, 4), [2, -1]) == (2, "64*N")  # valid for every N
    with pytest.raises(ShapeError, match="cannot view"):
        infer1("reshape", ("N", 8), [3, -1])  # only when 3 divides N
    with pytest.raises(ShapeError, match="cannot view"):
        infer1("reshape", ("N", 8), [0, 4, 4])
    with pytest.raises(CDLTypeError, match="only one dim may be -1"):
        infer1("reshape", (2, 8), [-1, -1])
    with pytest.raises(CDLTypeError, match="positive"):
        infer1("reshape", (2, 8), [0, -4])
    with pytest.raises(ShapeError, match="keeps input dim 2"):
        infer1("reshape", (2, 8), [1, 16, 0])


@pytest.mark.parametrize("shape,dims", [((2, 3, 4, 5), [0, 2, 3, 1]), ((2, 3, 4, 5), [0, 3, 1, 2]),
                                        ((2, 3, 4), [-1, 0, 1]), ((5,), [0])])
def test_permute_matches_torch(shape, dims):
    assert infer1("permute", shape, dims) == tuple(torch.randn(shape).permute(dims).shape)


def test_permute_errors_and_symbolic():
    assert infer1("permute", ("N", 3, "H", 8), [0, 2, 3, 1]) == ("N", "H", 8, 3)
    with pytest.raises(ShapeError, match="one dim per input dim"):
        infer1("permute", (2, 3, 4), [0, 1])
    with pytest.raises(CDLTypeError, match="repeat"):
        infer1("permute", (2, 3, 4), [0, 1, 1])
    with pytest.raises(ShapeError, match="out of range"):
        infer1("permute", (2, 3, 4), [0, 1, 3])


@pytest.mark.parametrize("shape,a,b", [((2, 3, 4), 1, 2), ((2, 3, 4, 5), -1, -2), ((2, 3, 4), 0, 0), ((2, 3), 0, -1)])
def test_transpose_matches_torch(shape, a, b):
    assert infer1("transpose", shape, a, b) == tuple(torch.randn(shape).transpose(a, b).shape)


def test_transpose_errors():
    with pytest.raises(ShapeError, match="out of range"):
        infer1("transpose", (2, 3), 1, 2)
    with pytest.raises(CDLTypeError, match="needs 'dim1'"):
        infer1("transpose", (2, 3), 1)


@pytest.mark.parametrize("shape,dims", [((2, 3, 1, 1), [2, 3]), ((2, 3, 1, 1), None), ((1, 3, 1), 0),
                                        ((2, 1, 4), -2), ((2, 3), None)])
def test_squeeze_matches_torch(shape, dims):
    x = torch.randn(shape)
    if dims is None:
        assert infer1("squeeze", shape) == tuple(x.squeeze().shape)
    else:
        want = x.squeeze(dims if isinstance(dims, int) else tuple(dims))
        assert infer1("squeeze", shape, dims) == tuple(want.shape)


def test_squeeze_symbolic_and_errors():
    assert infer1("squeeze", ("N", 64, 1, 1)) == ("N", 64)  # a symbolic batch is never squeezed implicitly
    with pytest.raises(ShapeError, match="not 1"):
        infer1("squeeze", (2, 3, 1), 1)
    with pytest.raises(ShapeError, match="not 1"):
        infer1("squeeze", ("N", 3), 0)


@pytest.mark.parametrize("shape,dim", [((2, 3), 0), ((2, 3), 2), ((2, 3), -1), ((2, 3), -3), ((4,), 1)])
def test_unsqueeze_matches_torch(shape, dim):
    assert infer1("unsqueeze", shape, dim) == tuple(torch.randn(shape).unsqueeze(dim).shape)


def test_unsqueeze_errors():
    with pytest.raises(ShapeError, match="out of range"):
        infer1("unsqueeze", (2, 3), 3)


@pytest.mark.parametrize("shapes,dim", [
    ([(2, 3, 5, 5), (2, 4, 5, 5)], 1), ([(2, 3, 5, 5), (2, 3, 5, 5), (2, 1, 5, 5)], 1),
    ([(2, 3, 5, 7), (2, 3, 5, 2)], -1), ([(1, 3), (4, 3)], 0), ([(2, 3, 4)], 1),
])
def test_concat_matches_torch(shapes, dim):
    want = torch.cat([torch.randn(s) for s in shapes], dim=dim).shape
    assert run_infer("concat", shapes, dim=dim) == [tuple(want)]


def test_concat_symbolic():
    assert run_infer("concat", [("N", 32, "H", "W"), ("N", 64, "H", "W")]) == [("N", 96, "H", "W")]
    assert run_infer("concat", [("N", "L", 8), ("N", 4, 8)], dim=1) == [("N", "L+4", 8)]


def test_concat_errors_name_the_dims():
    with pytest.raises(ShapeError, match=r"dim 2: 9 vs 10.*dim 3: 11 vs 12"):
        run_infer("concat", [(2, 8, 9, 11), (2, 4, 10, 12)])
    with pytest.raises(ShapeError, match="input 2 differ in dim 0: 2 vs 3"):
        run_infer("concat", [(2, 8, 9), (2, 4, 9), (3, 4, 9)])
    with pytest.raises(ShapeError, match="rank"):
        run_infer("concat", [(2, 8, 9, 11), (2, 8, 9)])
    with pytest.raises(ShapeError, match="out of range"):
        run_infer("concat", [(2, 8), (2, 8)], dim=2)
    err = pytest.raises(ShapeError, run_infer, "concat", [(2, 8, 9, 11), (2, 4, 10, 11)]).value
    assert err.hint and "concat dim" in err.hint


@pytest.mark.parametrize("shape,kwargs,torch_fn", [
    ((2, 64, 5, 5), dict(sizes=[16, 48]), lambda x: torch.split(x, [16, 48], dim=1)),
    ((2, 64, 5, 5), dict(sizes=[16, 16, 32], dim=1), lambda x: torch.split(x, [16, 16, 32], dim=1)),
    ((2, 10, 7), dict(sizes=3, dim=1), lambda x: torch.split(x, 3, dim=1)),
    ((2, 10, 7), dict(sizes=5, dim=-1), lambda x: torch.split(x, 5, dim=-1)),
    ((2, 64, 5, 5), dict(chunks=4), lambda x: torch.chunk(x, 4, dim=1)),
    ((6, 3), dict(chunks=3, dim=0), lambda x: torch.chunk(x, 3, dim=0)),
    ((2, 4, 5), dict(chunks=1), lambda x: torch.chunk(x, 1, dim=1)),
])
def test_split_matches_torch(shape, kwargs, torch_fn):
    want = [tuple(t.shape) for t in torch_fn(torch.randn(shape))]
    assert run_infer("split", [shape], **kwargs) == want


def test_split_symbolic_and_errors():
    assert run_infer("split", [("N", 64, "H", "W")], chunks=2) == [("N", 32, "H", "W")] * 2
    with pytest.raises(ShapeError, match="add up"):
        run_infer("split", [(2, 64)], sizes=[16, 32])
    with pytest.raises(ShapeError, match="do not divide"):
        run_infer("split", [(2, 10)], chunks=3)
    with pytest.raises(CDLTypeError, match="exactly one"):
        run_infer("split", [(2, 10)])
    with pytest.raises(CDLTypeError, match="exactly one"):
        run_infer("split", [(2, 10)], sizes=[5, 5], chunks=2)
    with pytest.raises(ShapeError, match="static size"):
        run_infer("split", [("N", 10)], chunks=2, dim=0)
    with pytest.raises(CDLTypeError, match="positive"):
        run_infer("split", [(2, 10)], chunks=0)


def _torch_pad(shape, pad, mode, value=0.0):
    nd = len(shape) - 2
    if isinstance(pad, int):
        pairs = [(pad, pad)] * nd
    elif len(pad) == nd:
        pairs = [(p, p) for p in pad]
    else:
        pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(nd)]
    flat = tuple(p for pr in reversed(pairs) for p in pr)
    mode = "constant" if mode == "zeros" else mode
    kw = {"value": value} if mode == "constant" else {}
    return F.pad(torch.randn(shape), flat, mode=mode, **kw)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("shape,pad", [
    ((2, 3, 5, 7), 1), ((2, 3, 5, 7), [1, 2]), ((2, 3, 5, 7), [0, 1, 2, 3]), ((2, 3, 9), [4, 1]),
    ((1, 2, 3, 4, 5), 2), ((2, 3, 5, 7), [4, 0, 0, 6]),
])
def test_pad_matches_torch(mode, shape, pad):
    try:
        want = tuple(_torch_pad(shape, pad, mode).shape)
    except (RuntimeError, NotImplementedError):
        want = None
    try:
        got = infer1("pad", shape, pad, mode=mode)
    except ShapeError:
        got = None
    assert got == want


def test_pad_symbolic_and_errors():
    assert infer1("pad", ("N", 3, "H", 8), [0, 1, 0, 1]) == ("N", 3, "H+1", 9)
    with pytest.raises(ShapeError, match="too large"):
        infer1("pad", (2, 3, 4, 4), 4, mode="reflect")
    with pytest.raises(CDLTypeError, match="1, 2 or 4 values"):
        infer1("pad", (2, 3, 4, 4), [1, 2, 3])
    with pytest.raises(CDLTypeError, match=">= 0"):
        infer1("pad", (2, 3, 4, 4), -1)
    with pytest.raises(ShapeError, match="rank"):
        infer1("pad", (2, 3), 1)
    with pytest.raises(ShapeError, match="rank 3 to 5"):
        infer1("pad", (1, 1, 2, 3, 4, 5), 1, mode="reflect")


@pytest.mark.parametrize("shape,r", [((2, 12, 5, 7), 2), ((1, 18, 3, 3), 3), ((2, 4, 5, 6), 1), ((8, 5, 7), 2)])
def test_pixel_shuffle_matches_torch(shape, r):
    assert infer1("pixel_shuffle", shape, r) == tuple(F.pixel_shuffle(torch.randn(shape), r).shape)


@pytest.mark.parametrize("shape,r", [((2, 3, 10, 14), 2), ((1, 2, 9, 6), 3), ((3, 8, 4), 2)])
def test_pixel_unshuffle_matches_torch(shape, r):
    assert infer1("pixel_unshuffle", shape, r) == tuple(F.pixel_unshuffle(torch.randn(shape), r).shape)


def test_pixel_shuffle_errors_and_symbolic():
    assert infer1("pixel_shuffle", ("N", 12, "H", "W"), 2) == ("N", 3, "2*H", "2*W")
    with pytest.raises(ShapeError, match="divisible by 4"):
        infer1("pixel_shuffle", (2, 6, 5, 5), 2)
    with pytest.raises(ShapeError, match="divisible by 2"):
        infer1("pixel_unshuffle", (2, 6, 5, 4), 2)
    with pytest.raises(ShapeError, match="rank >= 3"):
        infer1("pixel_shuffle", (4, 4), 2)
    with pytest.raises(CDLTypeError, match="positive"):
        infer1("pixel_unshuffle", (2, 4, 4, 4), 0)


def test_a_batch_folded_by_reshape_unfolds_again():
    """Issue 14 item 2: after reshape([-1, 16, 8, 8]) on f32[N, 64, 8, 8], reshape([-1, 64, 8, 8])
    failed with 'cannot view f32[4*N, 16, 8, 8]': the everyday pattern of windowed attention
    (windows or heads folded into the batch and back).  Shapes against torch at N = 3, and
    numbers: the program's torch module against the same reshapes done by torch."""
    from convdsl.api import compile as cdl_compile

    assert infer1("reshape", ("N", 64, 8, 8), [-1, 16, 8, 8]) == ("4*N", 16, 8, 8)
    assert infer1("reshape", ("4*N", 16, 8, 8), [-1, 64, 8, 8]) == ("N", 64, 8, 8)
    assert infer1("reshape", ("L*N", 6), [-1, 2, 3]) == ("L*N", 2, 3)
    with pytest.raises(ShapeError, match="-1 cannot take a part of N"):
        infer1("reshape", ("N", 6), [4, -1])  # 6*N elements: 4 divides them only for some N
    src = ("network n(x: f32[N, 64, 8, 8]) {\n"
           "    w = x | reshape([0, 4, 16, 4, 2, 4, 2]) | permute([0, 1, 4, 6, 2, 3, 5])\n"
           "    t = w | reshape([-1, 16, 4, 4]) | conv2d(16, 3, pad=1, bias=false) as conv\n"
           "    y = t | reshape([-1, 4, 2, 2, 16, 4, 4]) | permute([0, 1, 4, 5, 2, 6, 3])\n"
           "    return y | reshape([-1, 64, 8, 8])\n"
           "}\n")
    m = cdl_compile(src)
    x = torch.randn(3, 64, 8, 8)
    w = x.reshape(3, 4, 16, 4, 2, 4, 2).permute(0, 1, 4, 6, 2, 3, 5)
    t = m.conv(w.reshape(-1, 16, 4, 4))
    want = t.reshape(-1, 4, 2, 2, 16, 4, 4).permute(0, 1, 4, 5, 2, 6, 3).reshape(-1, 64, 8, 8)
    torch.testing.assert_close(m(x), want)


# ---- index_select ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,index,dim", [
    ((2, 5, 3), [4, 0, 0, -1], 1), ((2, 5, 3), [2], -1), ((2, 5, 3), 1, 2), ((3, 4, 6, 6), [5, 4, 3, 2, 1, 0], 3),
    ((169, 4), [0, 12, 168, 13] * 5, 0),  # a relative-position bias table read by a window's pair index
])
def test_index_select_matches_numpy_take(shape, index, dim):
    """Shape rule and numbers (torch backend) against numpy.take, which counts negative positions
    from the end as index_select does."""
    import numpy as np

    import convdsl
    from opcheck import one_op_program

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = np.take(x, index, axis=dim) if isinstance(index, list) else np.take(x, [index], axis=dim)
    assert infer1("index_select", shape, index, dim=dim) == want.shape
    model = convdsl.compile(one_op_program("index_select", [shape], index, dim=dim))
    np.testing.assert_array_equal(model(torch.from_numpy(x)).numpy(), want)


def test_index_select_errors_are_located_and_say_what_fits():
    with pytest.raises(ShapeError, match=r"position 5 is out of range for size 5 of dim 1"):
        infer1("index_select", (2, 5, 3), [0, 5], dim=1)
    with pytest.raises(ShapeError, match="static size"):
        infer1("index_select", ("N", 5), [0], dim=0)
    with pytest.raises(CDLTypeError, match="index takes a list of 1 to 1048576 entries"):  # its domain
        infer1("index_select", (2, 5), [], dim=1)


def test_index_select_of_every_position_in_order_is_an_identity():
    from convdsl.ir.ops import OPS
    from convdsl.ir.types import TensorType

    x = TensorType((2, 3, 4))
    assert OPS["index_select"].identity_when({"index": [0, 1, 2], "dim": 1}, x, x)
    assert not OPS["index_select"].identity_when({"index": [2, 1, 0], "dim": 1}, x, x)


@pytest.mark.parametrize("index,dim,run", [
    ([1, 2, 3, 4], 2, "1:5"), ([0, 2, 4], 3, "0:5:2"), ([5], -1, "5:6"), ([-3, -2], 1, "1:3"),  # runs: slices
    ([1, 2, 4], 2, None), ([3, 2, 1], 3, None), ([2, 2], 2, None),  # not one step up: gathers
])
def test_index_select_of_a_run_is_a_slice_in_every_backend(index, dim, run):
    """A run of positions with one step (the crop of an imported Slice, or of the quantizer's transposed-conv
    split) is taken as a slice: torch's x[:, 1:5], ONNX's Slice, TVM's strided_slice; anything else stays a
    gather.  Numbers against numpy.take in each."""
    import numpy as np

    import convdsl
    from convdsl.api import load_graph
    from convdsl.ir.ops.shape import index_as_slice
    from opcheck import one_op_program

    shape = (2, 4, 6, 6)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = np.take(x, index, axis=dim)
    src = one_op_program("index_select", [shape], index, dim=dim)
    assert (index_as_slice(tuple(i % shape[dim] for i in index)) is not None) == (run is not None)
    model = convdsl.compile(src)
    np.testing.assert_array_equal(model(torch.from_numpy(x)).numpy(), want)
    positions = "[" + ", ".join(str(i % shape[dim]) for i in index) + "]"
    assert (f"{run}]" in model.source) if run else (positions in model.source)
    g = load_graph(src)
    ort = pytest.importorskip("onnxruntime")
    from convdsl.backends.onnx import export_graph

    m = export_graph(g)
    assert [n.op_type for n in m.graph.node if n.op_type != "Identity"] == (["Slice"] if run else ["Gather"])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {sess.get_inputs()[0].name: x})[0], want)
    ctvm = pytest.importorskip("convdsl.backends.tvm")
    from convdsl.backends.tvm.lowering import lower_graph

    relax = lower_graph(g, "tvm-llvm").script()
    assert ("R.strided_slice" in relax, "R.take" in relax) == ((True, False) if run else (False, True))
    built = ctvm.backend("tvm-llvm", progress=False, use_db=False).build_module(g)
    np.testing.assert_array_equal(np.asarray(built(x)), want)


# ---- take ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,table,dim", [
    ((2, 5, 3), (4,), 1), ((2, 5, 3), (2, 3), -1), ((4, 13), (6, 6), 1),  # LeViT: biases[:, idxs]
    ((169, 4), (49, 49), 0),  # a relative-position bias table read by a window's pair index
])
def test_take_matches_numpy_take_through_every_backend_it_has(shape, table, dim, tmp_path):
    """Shape rule and numbers against numpy.take with the index table loaded as a buffer: the torch
    backend (the table in the state_dict as an int64 buffer, under `as param`'s exact key too) and
    ONNX Runtime on the exported file."""
    import numpy as np

    from convdsl.api import load_graph
    from convdsl.backends.torch import build_module

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    size = shape[dim]
    index = rng.integers(0, size, table)
    want = np.take(x, index, axis=dim)
    assert infer1("take", shape, list(table), dim=dim) == want.shape
    dims = ", ".join(map(str, shape))
    src = (f"network n(x: f32[{dims}]) {{\n    y = x | take({list(table)}, dim={dim}) as a\n"
           f"    z = x | take({list(table)}, dim={dim}) as param \"b.idx\"\n    return (y, z)\n}}\n")
    g = load_graph(src)
    assert g.params.specs["a.index"].buffer and not g.params.specs["b.idx"].trainable
    g.params["a.index"] = index
    g.params["b.idx"] = index
    m = build_module(g)
    state = m.state_dict()
    assert set(state) == {"a.index", "b.idx"} and all(v.dtype == torch.int64 for v in state.values())
    assert not list(m.parameters())
    for got in m(torch.from_numpy(x)):
        np.testing.assert_array_equal(got.numpy(), want)
    ort = pytest.importorskip("onnxruntime")
    from convdsl.backends.onnx import export_graph

    sess = ort.InferenceSession(export_graph(g).SerializeToString(), providers=["CPUExecutionProvider"])
    for got in sess.run(None, {sess.get_inputs()[0].name: x}):
        np.testing.assert_array_equal(got, want)


def test_take_errors():
    with pytest.raises(ShapeError, match="static size"):
        infer1("take", ("N", 5), [3], dim=0)
    with pytest.raises(CDLTypeError):
        infer1("take", (2, 5), [0, 3], dim=1)


def test_symbolic_sizes_in_the_shape_regroup_the_inputs_symbols():
    """reshape([dim(x, 0) * 4, ...]): a Size entry is a dim of the output as written; -1 takes what
    is left, symbols included; a size the input's factors do not hold is refused."""
    from convdsl.ir.types import Size

    assert infer1("reshape", ("N", 64, 8, 8), [Size("4*N"), 16, 8, 8]) == ("4*N", 16, 8, 8)
    assert infer1("reshape", ("4*N", 16, 8, 8), [Size("N"), -1]) == ("N", 4096)
    assert infer1("reshape", ("N", "L", 64), [Size("2*N"), Size("4*L"), -1]) == ("2*N", "4*L", 8)
    assert infer1("reshape", ("N", "H", "W", 8), [Size("H*W"), -1]) == ("H*W", "8*N")
    with pytest.raises(ShapeError, match="the sizes hold L beyond"):
        infer1("reshape", ("N", 64), [Size("L"), -1])
    with pytest.raises(ShapeError, match=r"the dims give 64 elements; the input's L\*N is left over"):
        infer1("reshape", ("N", "L", 64), [4, 16])
