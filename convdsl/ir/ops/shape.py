"""Shape ops: flatten, reshape, permute/transpose, squeeze/unsqueeze, concat,
split, pad, pixel_shuffle/pixel_unshuffle, select, index_select.  None has
parameters; all move or copy data without arithmetic (cost 0).

Lowered in backends/torch/lower_shape.py and backends/tvm/lower_shape.py; how pruning treats each op
is its ``prune=`` (PRUNE_RULE ops: convdsl/passes/prune/couplings.py, apply.py).
"""
from __future__ import annotations

from collections import Counter

from convdsl.errors import CDLTypeError, ShapeError
from convdsl.ir.domains import Domain, POSITIVE
from convdsl.ir.optable import (PRUNE_RULE, Attr, Init, OpDef, ParamSpec, before_axis, format_value,
                                identity_if_same_type, keep_channels, off_attr, opaque, zero_cost)
from convdsl.ir.types import Dim, Size, TensorType, dim_add, dim_factors, dim_floordiv, dim_mul, dims_prod
from convdsl.ir.ops.conv import PAD_MODES
from convdsl.ir.ops.pool import normalize_dims


def _shape(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


# ---- flatten / reshape -------------------------------------------------------
def _flatten_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    if x.rank == 0:
        raise ShapeError("flatten needs an input of rank >= 1", got=str(x))
    start, end = normalize_dims("flatten", attrs["start"], x.rank, "start")[0], \
        normalize_dims("flatten", attrs["end"], x.rank, "end")[0]
    if start > end:
        raise ShapeError("flatten: start comes after end", expected="start <= end (after resolving negative dims)",
                         got=f"start={attrs['start']}, end={attrs['end']} on {x}")
    return [x.with_shape((*x.shape[:start], dims_prod(x.shape[start:end + 1]), *x.shape[end + 1:]))]


def _split_static(dims) -> tuple[int, Counter]:
    """The element count of ``dims`` as a number times a multiset of symbolic factors: a dim
    that is a product (``4*N``, ``H*W``) contributes its number and its symbols, so sizes that
    folded a window or the heads into the batch can be unfolded again; any other symbolic
    dim (``(H-1)//2+1``) is one factor."""
    static, syms = 1, Counter()
    for d in dims:
        coef, factors = dim_factors(d)
        static *= coef
        syms.update(factors)
    return static, syms


def _reshape_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    # 0 copies the input dim at the same index (so a symbolic batch passes
    # through); one -1 takes whatever is left, symbols included; a symbolic size
    # (4*N, dim(x, 0)) must be made of the input's symbols.
    x, spec = ins[0], attrs["shape"]
    spec = (spec,) if isinstance(spec, (int, Size)) else tuple(spec)
    if sum(1 for v in spec if v == -1) > 1:
        raise CDLTypeError("reshape: only one dim may be -1", got=format_value(spec))
    out: list[Dim | None] = []
    for i, v in enumerate(spec):
        if isinstance(v, Size):
            out.append(v.dim)
        elif v == 0:
            if i >= x.rank:
                raise ShapeError(f"reshape: 0 at position {i} keeps input dim {i}, but the input has rank {x.rank}",
                                 got=f"{format_value(spec)} for {x}")
            out.append(x.shape[i])
        elif v == -1:
            out.append(None)
        elif v < 0:
            raise CDLTypeError("reshape: sizes must be positive, 0 (keep) or -1 (infer)", got=format_value(spec))
        else:
            out.append(v)
    in_static, in_syms = _split_static(x.shape)
    out_static, out_syms = _split_static(d for d in out if d is not None)
    left, extra = in_syms - out_syms, out_syms - in_syms
    given = dims_prod(d for d in out if d is not None)

    def mismatch(why: str, hint: str) -> ShapeError:
        return ShapeError(f"reshape: cannot view {x} as {format_value(spec)}",
                          expected=f"{_shape(x.shape)} = {dims_prod(x.shape)} elements in all",
                          got=_shape("-1" if d is None else d for d in out) + f": {why}", hint=hint)

    if extra:
        names = ", ".join(sorted(extra.elements()))
        floor = [f for f in extra if "//" in f]
        raise mismatch(f"the sizes hold {names} beyond the input's own factors",
                       f"{floor[0]} is a floor division, not a factor of the input's size: divide exactly with / "
                       "(dim(x, 0) / 4 on a dim of 4*N is N), or leave that dim to -1" if floor else
                       "a symbolic size in the shape must regroup the input's own symbols (N, 4 * N, dim(x, 0)); "
                       "write -1 for the dim that takes the rest")
    if None in out:
        if in_static % out_static:
            sym = "*".join(sorted(in_syms.elements()))
            raise mismatch(f"the other dims give {given} elements, which does not divide them",
                           f"the numbers in the shape multiply to {out_static}, which does not divide {in_static} "
                           + (f"(the input's elements per {sym}); -1 cannot take a part of {sym}, whose value is "
                              f"unknown: choose sizes whose product divides {in_static}, or give the input a fixed "
                              f"{sym.split('*')[0]} (a number in its type)" if sym else "(the input's elements)"))
        rest = []
        for d in x.shape:  # leftover symbols, in input order
            for f in dim_factors(d)[1]:
                if left[f] > 0:
                    rest.append(f)
                    left[f] -= 1
        fill = dims_prod([*rest, in_static // out_static])
        out = [fill if d is None else d for d in out]
    elif left:
        names = "*".join(sorted(left.elements()))
        raise mismatch(f"the dims give {given} elements; the input's {names} is left over",
                       f"keep it in the shape: write it ({names.split('*')[0]}, dim(x, 0), 0 to keep an input dim "
                       "in place) or -1 to take the rest")
    elif in_static != out_static:
        raise mismatch(f"the dims give {given} elements",
                       "write 0 to keep an input dim (e.g. the batch) and -1 for the dim that takes the rest")
    return [x.with_shape(out)]


# ---- permute / transpose / squeeze / unsqueeze --------------------------------
def _permute_dims(attrs: dict, rank: int) -> tuple[int, ...]:
    dims = (attrs["dims"],) if isinstance(attrs["dims"], int) else attrs["dims"]
    return normalize_dims("permute", dims, rank)


def _permute_is_identity(attrs: dict, x: TensorType, y: TensorType) -> bool:
    return x == y and list(_permute_dims(attrs, x.rank)) == list(range(x.rank))


def _transpose_is_identity(attrs: dict, x: TensorType, y: TensorType) -> bool:
    return x == y and normalize_dims("transpose", attrs["dim0"], x.rank) == \
        normalize_dims("transpose", attrs["dim1"], x.rank)


def _permute_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    dims = (attrs["dims"],) if isinstance(attrs["dims"], int) else attrs["dims"]
    if len(dims) != x.rank:
        raise ShapeError(f"permute needs one dim per input dim ({x.rank})", expected=f"{x.rank} dims",
                         got=f"{format_value(dims)} for {x}")
    perm = normalize_dims("permute", dims, x.rank)
    return [x.with_shape(x.shape[d] for d in perm)]


def _transpose_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    a, = normalize_dims("transpose", attrs["dim0"], x.rank)
    b, = normalize_dims("transpose", attrs["dim1"], x.rank)
    shape = list(x.shape)
    shape[a], shape[b] = shape[b], shape[a]
    return [x.with_shape(shape)]


def squeeze_dims(attrs: dict, x: TensorType) -> tuple[int, ...]:
    """The dims squeeze removes: the given ones (each must be 1) or every static 1.
    A symbolic dim is never squeezed implicitly, so a batch of one keeps its dim."""
    if attrs["dims"] is None:
        return tuple(i for i, d in enumerate(x.shape) if d == 1)
    dims = normalize_dims("squeeze", attrs["dims"], x.rank)
    for d in dims:
        if x.shape[d] != 1:
            raise ShapeError(f"squeeze: dim {d} of {x} is {x.shape[d]}, not 1", expected="size 1", got=str(x.shape[d]))
    return tuple(sorted(dims))


def _squeeze_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    drop = squeeze_dims(attrs, x)
    return [x.with_shape(d for i, d in enumerate(x.shape) if i not in drop)]


def _unsqueeze_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    d, = normalize_dims("unsqueeze", attrs["dim"], x.rank + 1)
    return [x.with_shape((*x.shape[:d], 1, *x.shape[d:]))]


# ---- concat / split ----------------------------------------------------------
def _concat_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    first = ins[0]
    for i, t in enumerate(ins[1:], 1):
        if t.rank != first.rank:
            raise ShapeError(f"concat: input {i} has rank {t.rank}, input 0 has rank {first.rank}",
                             expected=f"rank {first.rank}", got=f"{t}")
        if t.dtype != first.dtype:
            raise ShapeError("concat: dtypes differ", expected=first.dtype, got=f"{t.dtype} (input {i})")
    dim, = normalize_dims("concat", attrs["dim"], first.rank)
    for i, t in enumerate(ins[1:], 1):
        differ = [j for j in range(first.rank) if j != dim and t.shape[j] != first.shape[j]]
        if differ:
            which = ", ".join(f"dim {j}: {first.shape[j]} vs {t.shape[j]}" for j in differ)
            raise ShapeError(f"concat along dim {dim}: input 0 and input {i} differ in {which}",
                             expected=f"{_shape(first.shape[:dim] + ('*',) + first.shape[dim + 1:])}",
                             got=f"{first} and {t}",
                             hint="only the concat dim may differ; resize or pool the inputs to match")
    size: Dim = 0
    for t in ins:
        size = dim_add(size, t.shape[dim])
    return [first.with_shape((*first.shape[:dim], size, *first.shape[dim + 1:]))]


def split_sizes(attrs: dict, x: TensorType) -> tuple[int, ...]:
    """Sizes of the pieces along ``dim`` (PyTorch's split / chunk semantics)."""
    sizes, chunks = attrs["sizes"], attrs["chunks"]
    d, = normalize_dims("split", attrs["dim"], x.rank)
    n = x.shape[d]
    if (sizes is None) == (chunks is None):
        raise CDLTypeError("split needs exactly one of sizes or chunks", got="both" if chunks is not None else "neither",
                           hint="split([16, 48]) for given sizes, split(chunks=2) for equal pieces")
    if not isinstance(n, int):
        raise ShapeError(f"split needs a static size along dim {d}", got=str(x))
    if chunks is not None:
        if chunks <= 0:
            raise CDLTypeError("split: chunks must be positive", got=str(chunks))
        if n % chunks:
            raise ShapeError(f"split: {chunks} chunks do not divide dim {d} of size {n} evenly",
                             expected=f"a size divisible by {chunks}", got=str(x))
        return (n // chunks,) * chunks
    if isinstance(sizes, int):  # torch.split(x, size): pieces of that size, the last may be smaller
        if sizes <= 0:
            raise CDLTypeError("split: size must be positive", got=str(sizes))
        return tuple(min(sizes, n - i) for i in range(0, n, sizes))
    if any(s < 0 for s in sizes) or sum(sizes) != n:
        raise ShapeError(f"split: sizes must add up to dim {d} ({n})", expected=f"sum = {n}",
                         got=f"{format_value(sizes)} (sum {sum(sizes)})")
    return tuple(sizes)


def _split_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    d, = normalize_dims("split", attrs["dim"], x.rank)
    return [x.with_shape((*x.shape[:d], s, *x.shape[d + 1:])) for s in split_sizes(attrs, x)]


# ---- pad ----------------------------------------------------------------------


def explicit_pads(pad, nd: int) -> list[tuple[int, int]]:
    """(before, after) per spatial dim from an int, nd ints (symmetric), or 2*nd
    ints (before0, after0, before1, after1, ... in dim order)."""
    if isinstance(pad, int):
        pairs = [(pad, pad)] * nd
    elif len(pad) == nd:
        pairs = [(p, p) for p in pad]
    elif len(pad) == 2 * nd:
        pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(nd)]
    else:
        raise CDLTypeError(f"pad needs 1, {nd} or {2 * nd} values for {nd} spatial dim(s)", got=format_value(pad))
    if any(p < 0 for pr in pairs for p in pr):
        raise CDLTypeError("pad must be >= 0", got=format_value(pad))
    return pairs


def _pad_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x, mode = ins[0], attrs["mode"]
    if x.rank < 3 or (mode != "zeros" and x.rank > 5):
        want = "3 to 5" if mode != "zeros" else ">= 3"
        raise ShapeError(f"pad (mode={mode}) needs [N, C, *spatial] of rank {want}", expected=f"rank {want}",
                         got=f"{x} (rank {x.rank})")
    nd = x.rank - 2
    pairs = explicit_pads(attrs["pad"], nd)
    out = list(x.shape[:2])
    for (lo, hi), size in zip(pairs, x.shape[2:]):
        if isinstance(size, int):
            limit = {"reflect": size - 1, "circular": size}.get(mode)
            if limit is not None and max(lo, hi) > limit:
                raise ShapeError(f"pad: {mode} padding {max(lo, hi)} is too large for a dim of size {size}",
                                 expected=f"padding <= {limit}", got=str(x))
        out.append(dim_add(size, lo + hi))
    return [x.with_shape(out)]


# ---- pixel shuffle -------------------------------------------------------------
def _pixel_shuffle_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x, r = ins[0], attrs["factor"]
    if x.rank < 3:
        raise ShapeError("pixel_shuffle needs [..., C, H, W]", expected="rank >= 3", got=f"{x} (rank {x.rank})")
    if r <= 0:
        raise CDLTypeError("pixel_shuffle: factor must be positive", got=str(r))
    c, h, w = x.shape[-3:]
    if not isinstance(c, int) or c % (r * r):
        raise ShapeError(f"pixel_shuffle({r}) needs channels divisible by {r * r}", expected=f"C divisible by {r * r}",
                         got=str(x), hint=f"produce {r * r}*C channels first, e.g. conv2d({r * r}*c, 3, pad=1)")
    return [x.with_shape((*x.shape[:-3], c // (r * r), dim_mul(h, r), dim_mul(w, r)))]


def _pixel_unshuffle_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x, r = ins[0], attrs["factor"]
    if x.rank < 3:
        raise ShapeError("pixel_unshuffle needs [..., C, H, W]", expected="rank >= 3", got=f"{x} (rank {x.rank})")
    if r <= 0:
        raise CDLTypeError("pixel_unshuffle: factor must be positive", got=str(r))
    c, h, w = x.shape[-3:]
    for d in (h, w):
        if isinstance(d, int) and d % r:
            raise ShapeError(f"pixel_unshuffle({r}) needs H and W divisible by {r}", expected=f"H, W divisible by {r}",
                             got=str(x))
    return [x.with_shape((*x.shape[:-3], dim_mul(c, r * r), dim_floordiv(h, r), dim_floordiv(w, r)))]


def _op(name: str, attrs: tuple[Attr, ...], infer, doc: str, example: str, rule: str, **kw) -> OpDef:
    kw.setdefault("prune", PRUNE_RULE)  # where channels go depends on the dims moved: a rule in passes/prune
    return OpDef(name=name, group="shape", attrs=attrs, infer=infer, cost=zero_cost, doc=doc, example=example,
                 shape_rule=rule, **kw)


def select_dim(attrs: dict, x: TensorType) -> int:
    d = attrs["dim"]
    if not -x.rank <= d < x.rank:
        raise ShapeError(f"select: dim {d} is out of range for a rank-{x.rank} input",
                         expected=f"dim in [{-x.rank}, {x.rank - 1}]", got=str(d))
    return d % x.rank


def _select_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    d = select_dim(attrs, x)
    size, i = x.shape[d], attrs["index"]
    if isinstance(size, int) and not -size <= i < size:
        raise ShapeError(f"select: index {i} is out of range for size {size} of dim {d}",
                         expected=f"index in [{-size}, {size - 1}]", got=str(x))
    return [x.with_shape(x.shape[:d] + x.shape[d + 1:])]


SELECT = OpDef(
    name="select", group="shape",
    attrs=(Attr("index", "int", doc="position to take (negative counts from the end)"), Attr("dim", "int", 1)),
    infer=_select_infer, cost=zero_cost,
    doc="takes one slice along dim and drops that dim, e.g. the class token: x[:, 0].",
    example="select(0)",
    shape_rule="[N, L, C] -> [N, C] (dim removed)", int8_passthrough=True,
    prune=PRUNE_RULE,
)


# ---- index_select --------------------------------------------------------------------------------
MAX_INDEX = 2**20  # positions in one index_select: a relative-position table of a 32 x 32 window is 1,024**2

def index_positions(attrs: dict, x: TensorType) -> tuple[int, tuple[int, ...]]:
    """(dim, the positions taken along it, each in [0, size)) of an index_select on ``x``."""
    d, = normalize_dims("index_select", attrs["dim"], x.rank)
    index = attrs["index"]
    index = (index,) if isinstance(index, int) else tuple(index)
    if not index:
        raise CDLTypeError("index_select needs at least one position", got="[]",
                           hint="index_select([0, 2], dim=1) takes positions 0 and 2 along dim 1")
    size = x.shape[d]
    if not isinstance(size, int):
        raise ShapeError(f"index_select needs a static size along dim {d}", got=str(x),
                         hint="gather along a dim whose size is known (not the batch)")
    bad = [i for i in index if not -size <= i < size]
    if bad:
        raise ShapeError(f"index_select: position {bad[0]} is out of range for size {size} of dim {d}",
                         expected=f"positions in [{-size}, {size - 1}]", got=str(x))
    return d, tuple(i % size for i in index)


def index_as_slice(index: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(start, stop, step) where ``index`` (``index_positions``'s) is a slice, an ascending run with one step
    (the crop an imported Slice or the quantizer's transposed-conv split makes), else None: backends take such a
    run as a slice instead of a gather."""
    step = index[1] - index[0] if len(index) > 1 else 1
    if step < 1 or any(b - a != step for a, b in zip(index, index[1:])):
        return None
    return index[0], index[-1] + 1, step


def _index_select_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    d, index = index_positions(attrs, x)
    return [x.with_shape((*x.shape[:d], len(index), *x.shape[d + 1:]))]


def _index_select_is_identity(attrs: dict, x: TensorType, y: TensorType) -> bool:
    d, index = index_positions(attrs, x)
    return x == y and index == tuple(range(x.shape[d]))


INDEX_SELECT = OpDef(
    name="index_select", group="shape",
    attrs=(Attr("index", "ints", doc="positions to take along dim, in order (repeats allowed; negative counts "
                                     "from the end)",
                domain=Domain(min_len=1, max_len=MAX_INDEX, name=f"1 to {MAX_INDEX:,} positions")),
           Attr("dim", "int", 1, doc="the dim gathered along")),
    infer=_index_select_infer, cost=zero_cost,
    doc="gathers positions along one dim (torch.index_select, numpy.take): out[..., i, ...] = x[..., index[i], ...]. "
        "E.g. a relative-position bias table [(2M-1)^2, heads] gathered with the index of every pair of "
        "positions in an M x M window: table | index_select(relative_index, dim=0).",
    example="index_select([0, 2, 1], dim=1)",
    shape_rule="in[dim] -> len(index)",
    identity_when=_index_select_is_identity, int8_passthrough=True,  # moves values, keeps their scale
    prune=keep_channels(off_attr("dim")),  # channels pass unless they are the dim gathered along
)


# ---- take: index_select by an index table held as a buffer --------------------------------------------
def take_shape(attrs: dict) -> tuple[int, ...]:
    shape = attrs["shape"]
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _take_infer(attrs: dict, ins: list[TensorType]) -> list[TensorType]:
    x = ins[0]
    d, = normalize_dims("take", attrs["dim"], x.rank)
    if not isinstance(x.shape[d], int):
        raise ShapeError(f"take needs a static size along dim {d}", got=str(x),
                         hint="gather along a dim whose size is known (not the batch)")
    return [x.with_shape((*x.shape[:d], *take_shape(attrs), *x.shape[d + 1:]))]


TAKE = OpDef(
    name="take", group="shape",
    attrs=(Attr("shape", "ints", doc="the index table's shape", domain=POSITIVE),
           Attr("dim", "int", 1, doc="the dim gathered along")),
    infer=_take_infer, cost=zero_cost,
    params=lambda a, ins: {"index": ParamSpec(take_shape(a), Init("zeros"), dtype="i64", buffer=True,
                                              trainable=False)},
    doc="gathers along one dim by an integer index table held as a buffer (i64 `index`, values in [0, size); "
        "numpy.take, torch's x[:, index]): out = x.shape[:dim] + index.shape + x.shape[dim+1:].  "
        "index_select with the positions stored in the weights file instead of the program: what import "
        "writes for a model's constant index buffers (LeViT's attention_bias_idxs [196, 196], MaxViT's "
        "relative_position_index), named by the source key with `as param`.",
    example="take([3, 3], dim=1)",
    shape_rule="[..., in[dim], ...] -> [..., *shape, ...]",
    prune=opaque("the positions it gathers are data (a buffer), not attributes a pruning rule can follow"),
)


OPS = [
    _op("flatten", (Attr("start", "int", 1), Attr("end", "int", -1)), _flatten_infer,
        "merge dims start..end (inclusive) into one.", "x | global_avgpool | flatten",
        "[d0, ..., d_start, ..., d_end, ...] -> [d0, ..., d_start*...*d_end, ...]",
        identity_when=identity_if_same_type, int8_passthrough=True),
    _op("reshape", (Attr("shape", "dims", doc="new shape; 0 keeps the input dim, one -1 is inferred; symbolic "
                                               "sizes (4 * N, dim(x, 0)) regroup the input's symbols",
                          domain=Domain("[-1, inf)", name="positive, 0 (keep) or -1 (infer)")),), _reshape_infer,
        "view the same elements with a new shape.", "reshape([0, 16, -1])",
        "same number of elements; 0 copies the input dim at that position, -1 takes the rest",
        identity_when=identity_if_same_type, int8_passthrough=True),
    _op("permute", (Attr("dims", "ints", doc="a permutation of the input dims"),), _permute_infer,
        "reorder dims: out dim i is input dim dims[i].", "permute([0, 2, 3, 1])", "out[i] = in[dims[i]]",
        identity_when=_permute_is_identity, int8_passthrough=True),
    _op("transpose", (Attr("dim0", "int"), Attr("dim1", "int")), _transpose_infer,
        "swap two dims.", "transpose(1, 2)", "swap in[dim0] and in[dim1]",
        identity_when=_transpose_is_identity, int8_passthrough=True),
    _op("squeeze", (Attr("dims", "ints", None, doc="dims of size 1 to drop (default: every static 1)"),),
        _squeeze_infer, "drop dims of size 1.", "squeeze([2, 3])", "remove the given size-1 dims",
        identity_when=identity_if_same_type, int8_passthrough=True, example_inputs="x: f32[N, 64, 1, 1]"),
    _op("unsqueeze", (Attr("dim", "int"),), _unsqueeze_infer,
        "insert a dim of size 1 at position dim.", "unsqueeze(1)", "insert 1 at dim (dim in [-rank-1, rank])",
        int8_passthrough=True),
    _op("concat", (Attr("dim", "int", 1),), _concat_infer,
        "join tensors along dim; all other dims must match.", "(a, b) | concat", "sum of sizes along dim",
        inputs=(1, None), input_names=("a", "b"), identity_when=identity_if_same_type, int8_shared_scale=True,
        example_inputs="a: f32[N, 64, 14, 14], b: f32[N, 32, 14, 14]"),
    _op("split", (Attr("sizes", "ints", None, doc="piece sizes, or one int: pieces of that size (last may be smaller)",
                       domain=POSITIVE),
                  Attr("chunks", "int", None, doc="number of equal pieces (must divide the size)", domain=POSITIVE),
                  Attr("dim", "int", 1)), _split_infer,
        "cut a tensor along dim into several outputs.", "a, b = x | split([16, 48])",
        "one output per piece; sizes add up to in[dim]", identity_when=identity_if_same_type),
    _op("pad", (Attr("pad", "ints", doc="int, one per spatial dim, or (before, after) pairs in dim order"),
                Attr("mode", "sym", "zeros", choices=PAD_MODES),
                Attr("value", "float", 0.0, doc="fill value for mode=zeros")), _pad_infer,
        "pad the spatial dims (2 and after) of [N, C, *spatial].", "pad([0, 1, 0, 1])",
        "out = in + before + after per spatial dim", identity_when=identity_if_same_type,
        prune=keep_channels(before_axis(2))),
    _op("pixel_shuffle", (Attr("factor", "int", domain=POSITIVE),), _pixel_shuffle_infer,
        "sub-pixel upsampling: move channel blocks into space.", "pixel_shuffle(2)",
        "[N, C*r*r, H, W] -> [N, C, H*r, W*r]", identity_when=identity_if_same_type),
    _op("pixel_unshuffle", (Attr("factor", "int", domain=POSITIVE),), _pixel_unshuffle_infer,
        "inverse of pixel_shuffle: move space blocks into channels.", "pixel_unshuffle(2)",
        "[N, C, H*r, W*r] -> [N, C*r*r, H, W]", identity_when=identity_if_same_type),
    SELECT,
    INDEX_SELECT,
    TAKE,
]
