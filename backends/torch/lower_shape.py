"""Torch lowerings of the shape ops (convdsl/ir/ops/shape.py); see common.py.

Each is one tensor method or torch function; views keep a symbolic dim (the
batch) by reading it from the tensor at run time.
"""
from __future__ import annotations

import torch
from torch import nn

from convdsl.errors import LoweringError
from convdsl.ir.graph import Node
from convdsl.ir.ops.pool import normalize_dims
from convdsl.ir.ops.shape import (explicit_pads, index_as_slice, index_positions, select_dim, split_sizes, squeeze_dims,
                                  take_shape)
from convdsl.ir.types import Dim, Size, TensorType, dim_eval, symbol_sources

from convdsl.backends.torch.common import TorchLowering, family, keywords, lit, template

LOWERINGS = family("shape")


def _flatten_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    start, end = node.attrs["start"], node.attrs["end"]
    return f"torch.flatten({args[0]}, {start})" if end == -1 else f"torch.flatten({args[0]}, {start}, {end})"


class _Src:
    """Python source of a run-time size (``x.shape[0] // 4``), built by ``dim_eval``."""

    def __init__(self, text: str, loose: bool = False) -> None:
        self.text, self.loose = text, loose  # loose: a sum or a quotient, bracketed as an operand

    @staticmethod
    def _of(v, tight: bool = False) -> str:
        if isinstance(v, _Src):
            return f"({v.text})" if tight and v.loose else v.text
        return f"({v})" if tight and v < 0 else str(v)

    def __add__(self, o):
        return _Src(f"{self._of(self)} + {self._of(o, True)}", True)

    def __radd__(self, o):
        return _Src(f"{self._of(o)} + {self._of(self, True)}", True)

    def __mul__(self, o):
        return _Src(f"{self._of(self, True)} * {self._of(o, True)}")

    def __rmul__(self, o):
        return _Src(f"{self._of(o, True)} * {self._of(self, True)}")

    def __floordiv__(self, o):
        return _Src(f"{self._of(self, True)} // {self._of(o, True)}", True)

    def __rfloordiv__(self, o):
        return _Src(f"{self._of(o, True)} // ({self.text})", True)

    def __neg__(self):
        return _Src(f"-{self._of(self, True)}")


def _shape_src(x: str, i: int, c: int) -> _Src:
    return _Src(f"{x}.shape[{i}]") if c == 1 else _Src(f"{x}.shape[{i}] // {c}", True)


def size_source(d: Dim, x: str, t: TensorType, sources: dict | None = None) -> str | None:
    """Python source computing the dim ``d`` when the code runs, from the shape of the tensor
    ``x`` (of type ``t``): ``x.shape[i]`` where ``t`` has ``d``, else its symbols read from
    ``t``'s dims (``4 * x.shape[0]`` for 4*N on f32[N, ...]) or, failing that, from the
    network's inputs (``sources``); None when a symbol is in neither.  Only variable names,
    indices and integers reach the text, never a symbol's name."""
    if isinstance(d, int):
        return str(d)
    if d in t.shape:
        return f"{x}.shape[{t.shape.index(d)}]"
    values = {s: _shape_src(*where) for s, where in (sources or {}).items()}
    values.update({s: _shape_src(x, i, c) for s, (i, c) in symbol_sources(t.shape).items()})
    try:
        v = dim_eval(d, values)
    except KeyError:
        return None
    return v.text if isinstance(v, _Src) else str(v)


def _reshape_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str],
                  sources: dict | None = None) -> str:
    spec = node.attrs["shape"]
    spec = (spec,) if isinstance(spec, (int, Size)) else spec
    x = ins[0]
    sizes = {i: size_source(v.dim, args[0], x, sources) for i, v in enumerate(spec) if isinstance(v, Size)}
    unknown = [i for i, e in sizes.items() if e is None]
    if len(unknown) > 1 or (unknown and -1 in spec):
        d = spec[unknown[-1]].dim
        raise LoweringError(f"reshape: the size {d} cannot be computed from the shapes of {x} or the network's "
                            "inputs", node.span, hint="write -1 for that dim, or compile with the symbols bound (--bind)")
    if unknown:
        infer = unknown[0]  # the count gives it
    else:
        infer = next(iter(sizes)) if len(sizes) == 1 and -1 not in spec else None
    parts = []
    for i, v in enumerate(spec):
        if v == 0:  # keep the input dim: a literal when static, read at run time when symbolic
            parts.append(str(x.shape[i]) if isinstance(x.shape[i], int) else f"{args[0]}.shape[{i}]")
        elif isinstance(v, Size):
            parts.append("-1" if i == infer else sizes[i])
        else:
            parts.append(str(v))
    return f"{args[0]}.reshape({', '.join(parts)})"


def _permute_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    dims = node.attrs["dims"]
    dims = (dims,) if isinstance(dims, int) else dims
    return f"{args[0]}.permute({', '.join(str(d) for d in dims)})"


def _squeeze_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    dims = squeeze_dims(node.attrs, ins[0])
    if not dims:
        return args[0]
    return f"{args[0]}.squeeze({dims[0] if len(dims) == 1 else lit(dims)})"


def _concat_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return f"torch.cat([{', '.join(args)}], dim={node.attrs['dim']})"


def _split_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    if len(split_sizes(a, ins[0])) == 1:  # one piece: the tensor itself
        return args[0]
    if a["chunks"] is not None:
        return f"torch.chunk({args[0]}, {a['chunks']}, dim={a['dim']})"
    return f"torch.split({args[0]}, {lit(a['sizes'])}, dim={a['dim']})"


def _pad_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    a = node.attrs
    pairs = explicit_pads(a["pad"], ins[0].rank - 2)
    flat = tuple(p for lo_hi in reversed(pairs) for p in lo_hi)  # F.pad wants last dim first
    if a["mode"] == "zeros":
        return f"F.pad({args[0]}, {lit(flat)}{keywords(value=a['value']) if a['value'] != 0.0 else ''})"
    return f"F.pad({args[0]}, {lit(flat)}, mode={a['mode']!r})"


def _select_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    d = select_dim(node.attrs, ins[0])
    return f"{args[0]}[{':, ' * d}{node.attrs['index']}]"


def _index_select_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    d, index = index_positions(node.attrs, ins[0])
    run = index_as_slice(index)
    if run is not None:  # x[:, 1:17] reads better than 16 positions
        start, stop, step = run
        return f"{args[0]}[{':, ' * d}{start}:{stop}{f':{step}' if step > 1 else ''}]"
    return f"{args[0]}[{':, ' * d}{list(index)}]"  # a list index keeps the dim: x[:, [2, 0, 1]]


class IndexTable(nn.Module):
    """take's integer index table: a buffer (saved in the state_dict, never trained)."""

    def __init__(self, shape):
        super().__init__()
        self.register_buffer("index", torch.zeros(shape, dtype=torch.int64))


HELPERS: dict[str, object] = {"IndexTable": IndexTable}


def _take_index(node: Node, ins: list[TensorType], args: list[str], index: str) -> str:
    d, = normalize_dims("take", node.attrs["dim"], ins[0].rank)
    return f"{args[0]}[{':, ' * d}{index}]"  # a tensor index puts its shape in place of dim d


def _take_call(node: Node, ins: list[TensorType], mod: str | None, args: list[str]) -> str:
    return _take_index(node, ins, args, f"{mod}.index")


def _take_module(node: Node, ins: list[TensorType]) -> str:
    return f"IndexTable({lit(take_shape(node.attrs))})"


LOWERINGS.add("flatten", TorchLowering(_flatten_call))
LOWERINGS.add("reshape", TorchLowering(_reshape_call, sizes=True))
LOWERINGS.add("permute", TorchLowering(_permute_call))
LOWERINGS.add("transpose", TorchLowering(template("{x}.transpose({dim0}, {dim1})")))
LOWERINGS.add("squeeze", TorchLowering(_squeeze_call))
LOWERINGS.add("unsqueeze", TorchLowering(template("{x}.unsqueeze({dim})")))
LOWERINGS.add("concat", TorchLowering(_concat_call))
LOWERINGS.add("split", TorchLowering(_split_call))
LOWERINGS.add("pad", TorchLowering(_pad_call))
LOWERINGS.add("pixel_shuffle", TorchLowering(template("F.pixel_shuffle({x}, {factor})")))
LOWERINGS.add("pixel_unshuffle", TorchLowering(template("F.pixel_unshuffle({x}, {factor})")))
LOWERINGS.add("select", TorchLowering(_select_call))
LOWERINGS.add("index_select", TorchLowering(_index_select_call))
LOWERINGS.add("take", TorchLowering(_take_call, _take_module, helpers=("IndexTable",),
                                    param_call=lambda node, ins, p, args: _take_index(node, ins, args, p)))
