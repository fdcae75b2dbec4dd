"""Input arrays for ``convdsl run``: seeded random ones, or ``.npy`` files.

A file is checked against the input the network declares before its data is read: a regular
``.npy`` file (no pickle, no ``.npz``) of a numeric dtype that converts to the declared one
without changing kind (integers and booleans into floats, not floats into integers), the
declared rank and fixed dims, one size per symbol across all inputs, and all of it within
``--max-memory``.  The sizes found for the symbols (``N``, ``L``...) are returned, so that the
caller can elaborate the network again at exactly those sizes (every shape rule and the memory
checks see them).  Errors point at the input's declaration.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass

import numpy as np

from convdsl.errors import CDLTypeError, ResourceError, ShapeError, UsageError
from convdsl.ir.graph import Graph
from convdsl.ir.types import NUMPY_DTYPE, bind_dim

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what a network input can be made of


def make_inputs(graph: Graph, batch: int | None = 1, seed: int = 0) -> list[np.ndarray]:
    """Seeded random inputs with every symbolic dim set to ``batch`` (None: the graph's own sizes)."""
    rng = np.random.default_rng(seed)
    sizes = dict(graph.symbols) if batch is None else {s: batch for s in graph.symbols}
    out = []
    for t in graph.input_types():
        shape = [bind_dim(d, sizes) for d in t.shape]
        dtype = NUMPY_DTYPE.get(t.dtype, "float32")
        if dtype.startswith("float"):
            out.append(rng.standard_normal(shape).astype(dtype))
        else:
            out.append(rng.integers(0, 10, size=shape).astype(dtype))
    return out


@dataclass
class NpyFile:
    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # where the data starts

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(path: str) -> NpyFile:
    """The header of a .npy file, checked against the file's size; no data is read."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path} is not a regular file", hint="--input takes a .npy file")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise UsageError(f"{path} is a .npy file of format {version[0]}.{version[1]}",
                                 expected="format 1.0 or 2.0 (what numpy.save writes)")
            offset = f.tell()
    except (ValueError, TypeError, EOFError, OSError, SyntaxError) as e:  # numpy's header parser
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):
            raise UsageError(f"{path} is a .npz archive, not a .npy array",
                             hint="save each input on its own: numpy.save('x.npy', arrays['x'])") from None
        if st.st_size == 0:
            raise UsageError(f"{path} is empty", hint="--input takes a .npy file (numpy.save)") from None
        raise UsageError(f"{path} is not a .npy array ({str(e).splitlines()[0][:160]})",
                         hint="--input takes a .npy file (numpy.save)") from None
    if any(d < 0 for d in shape):
        raise UsageError(f"{path} declares a negative size in its shape {list(shape)}")
    npy = NpyFile(path, tuple(shape), dtype, fortran, offset)
    if dtype.hasobject:
        raise UsageError(f"{path} holds Python objects (a pickle); convdsl reads numeric arrays only",
                         hint="save a numeric array: numpy.save('x.npy', np.asarray(x, dtype=np.float32))")
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UsageError(f"{path} holds {dtype} values; network inputs are numbers",
                         expected="bool, integers or floats")
    if st.st_size != offset + npy.nbytes:
        raise UsageError(f"{path} has {st.st_size - offset:,} bytes of data, its header says "
                         f"{list(shape)} {dtype} = {npy.nbytes:,} bytes", hint="the file is truncated or damaged")
    return npy


def _read_data(npy: NpyFile) -> np.ndarray:
    buf = np.empty(npy.nbytes, np.uint8)
    with open(npy.path, "rb") as f:
        f.seek(npy.offset)
        n = f.readinto(memoryview(buf)) if npy.nbytes else 0
    if n != npy.nbytes:
        raise UsageError(f"{npy.path} changed while it was read")
    return buf.view(npy.dtype).reshape(npy.shape, order="F" if npy.fortran else "C")


def load_inputs(paths: list[str], graph: Graph, max_bytes: int) -> tuple[list[np.ndarray], dict[str, int]]:
    """The arrays of ``paths``, one per network input in order, and the size each symbolic dim
    takes from them."""
    if len(paths) != len(graph.inputs):
        raise UsageError(f"network {graph.name} takes {len(graph.inputs)} input(s) "
                         f"({', '.join(graph.inputs)}), got {len(paths)} --input file(s)")
    files = [read_header(p) for p in paths]
    sizes: dict[str, int] = {}
    where: dict[str, str] = {}
    total = 0
    for npy, name, t in zip(files, graph.inputs, graph.input_types()):
        span = graph.node(name).span
        if len(npy.shape) != t.rank:
            raise ShapeError(f"input '{name}' has rank {t.rank} ({t}), {npy.path} holds {list(npy.shape)}", span,
                             expected=str(t), got=f"{npy.dtype}{list(npy.shape)}")
        for i, (d, n) in enumerate(zip(t.shape, npy.shape)):
            if isinstance(d, int):
                if d != n:
                    raise ShapeError(f"input '{name}' needs size {d} in dim {i}, {npy.path} has {n}", span,
                                     expected=str(t), got=f"{npy.dtype}{list(npy.shape)}")
                continue
            if n == 0:
                raise ShapeError(f"{npy.path} gives {d} = 0 (dim {i} of input '{name}')", span,
                                 expected=f"{d} >= 1", got=f"{npy.dtype}{list(npy.shape)}")
            if sizes.setdefault(d, n) != n:
                raise ShapeError(f"{npy.path} gives {d} = {n} (dim {i} of input '{name}'), and {where[d]} gave "
                                 f"{d} = {sizes[d]}", span, expected=f"one size for {d} in every input",
                                 hint="inputs that share a symbol must agree on its size")
            where.setdefault(d, f"{npy.path} (input '{name}')")
        want = np.dtype(NUMPY_DTYPE.get(t.dtype, "float32"))
        if not _converts(npy.dtype, want):
            raise CDLTypeError(f"input '{name}' is {t.dtype}, {npy.path} holds {npy.dtype}", span,
                               expected=f"{want} or a type that converts to it without loss of kind "
                                        "(integers into floats, not floats into integers)",
                               got=str(npy.dtype))
        total += npy.nbytes + math.prod(npy.shape) * want.itemsize
    if total > max_bytes:
        raise ResourceError(f"the --input arrays take {_size(total)} (as read and converted), over the limit of "
                            f"{_size(max_bytes)}", graph.node(graph.inputs[0]).span,
                            hint="raise the limit with --max-memory, or give smaller inputs")
    arrays = []
    for npy, name, t in zip(files, graph.inputs, graph.input_types()):
        arr = _read_data(npy)
        want = np.dtype(NUMPY_DTYPE.get(t.dtype, "float32"))
        if want.kind in "iu" and arr.dtype != want and arr.size:
            info = np.iinfo(want)
            lo, hi = int(arr.min()), int(arr.max())
            if lo < info.min or hi > info.max:
                raise CDLTypeError(f"{npy.path} holds values from {lo} to {hi}; input '{name}' is {t.dtype} "
                                   f"({info.min} to {info.max})", graph.node(name).span)
        arrays.append(np.ascontiguousarray(arr.astype(want, copy=False)))
    return arrays, sizes


def _converts(have: np.dtype, want: np.dtype) -> bool:
    if want.kind == "b":
        return have.kind == "b"
    if want.kind in "iu":
        return have.kind in "biu"
    return have.kind in NUMERIC_KINDS  # floats take anything numeric


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}" if n < 2**1000 else f"{n // scale:,} {unit}"
    return f"{n} bytes"
