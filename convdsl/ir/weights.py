"""Weights in and out of a graph's parameter store: safetensors only (no pickle)."""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from convdsl.errors import UsageError, WeightsError, did_you_mean
from convdsl.ir.graph import Graph
from convdsl.ir.ops import OPS
from convdsl.ir.types import NUMPY_DTYPE


_RENAME_LIMIT = 64  # --weights-map rules


@dataclass
class WeightsReport:
    """What loading a weights file did: the keys it renamed, and in non-strict mode the keys of
    the file it ignored and the parameters it left at their initialization."""

    loaded: int = 0
    renamed: dict[str, str] = field(default_factory=dict)  # file key -> parameter name
    ignored: list[str] = field(default_factory=list)  # in the file, not in the network
    kept: list[str] = field(default_factory=list)  # in the network, not in the file: initialized values kept
    derived: list[str] = field(default_factory=list)  # buffers the network recomputes; the file's copy agreed

    def notes(self) -> list[str]:
        return (_grouped(self.ignored, "key(s) of the file not in the network, ignored")
                + _grouped(self.kept, "parameter(s) not in the file, left at their initialization"))


def parse_renames(rules: Iterable[str]) -> list[tuple[re.Pattern, str]]:
    """``--weights-map REGEX=REPLACEMENT`` rules, applied in order to every key of the file (Python
    ``re.sub``; ``\\1`` refers to a group)."""
    out = []
    for rule in rules:
        pattern, sep, repl = rule.partition("=")
        if not sep or not pattern:
            raise UsageError(f"--weights-map takes REGEX=REPLACEMENT, got {rule!r}",
                             expected=r"e.g. '^module\.=' (drop a prefix) or 'block(\d)-(\d)=block\1_\2'")
        try:
            compiled = re.compile(pattern)
            compiled.sub(repl, "")  # a bad group reference in the replacement fails here, not mid-load
        except (re.error, IndexError) as e:
            raise UsageError(f"--weights-map {rule!r}: {e}", expected="a Python regular expression") from None
        out.append((compiled, repl))
    if len(out) > _RENAME_LIMIT:
        raise UsageError(f"{len(out)} --weights-map rules", expected=f"at most {_RENAME_LIMIT}")
    return out


def load_weights(graph: Graph, path: str | os.PathLike, strict: bool = True,
                 renames: Iterable[str] | Iterable[tuple[re.Pattern, str]] = ()) -> Graph:
    """``fit_weights``, returning the graph."""
    fit_weights(graph, path, strict, renames)
    return graph


def fit_weights(graph: Graph, path: str | os.PathLike, strict: bool = True,
                renames: Iterable[str] | Iterable[tuple[re.Pattern, str]] = ()) -> WeightsReport:
    """Replace the graph's parameters with those in a .safetensors file.

    ``renames`` (``REGEX=REPLACEMENT``) map the file's keys to the network's names first.  Strict:
    the file and the network have the same names.  Non-strict: keys of the file the network does
    not have (buffers it derives itself, heads it replaces) are ignored and parameters the file
    lacks keep their initialization; both are listed in the report.  Shapes must match either
    way.  Every name and shape is checked before anything is replaced, so a bad file leaves the
    graph untouched."""
    path = Path(path)
    if path.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
        raise WeightsError(f"{path} looks like a pickle checkpoint; convdsl loads safetensors only",
                           hint="convert it: safetensors.torch.save_file(torch.load(p, weights_only=True), 'w.safetensors')")
    given = list(renames)
    rules = given if all(isinstance(r, tuple) for r in given) else parse_renames(given)
    try:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} does not exist") from None
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise WeightsError(f"{path} is not a valid safetensors file ({e})") from None
    report = WeightsReport()
    named: dict[str, np.ndarray] = {}
    for key, arr in tensors.items():
        name = key
        for pattern, repl in rules:
            name = pattern.sub(repl, name)
        if name in named:
            other = next(k for k in tensors if report.renamed.get(k, k) == name)
            raise WeightsError(f"--weights-map maps both '{other}' and '{key}' to '{name}'",
                               hint="make the rules more specific")
        if name != key:
            report.renamed[key] = name
        named[name] = arr
    expected = graph.params.specs
    derived = derived_buffers(graph)
    unexpected = [n for n in named if n not in expected and n not in derived]
    missing = [n for n in expected if n not in named]
    mismatched = [f"'{n}' has shape {list(a.shape)} in the file, the network needs {list(expected[n].shape)}"
                  for n, a in named.items() if n in expected and tuple(a.shape) != tuple(expected[n].shape)]
    disagree = [f"'{n}'" for n, a in named.items() if n in derived and not _same_values(a, derived[n])]
    problems = _grouped(mismatched, "parameter(s) with another shape")
    problems += _grouped(disagree, "buffer(s) that differ from what the network derives (another window size?)")
    if strict:
        hints = {n: did_you_mean(n, expected) for n in _ranked(unexpected)[:3]}
        problems += _grouped([f"'{n}'" + (f" ({hints[n]})" if hints.get(n) else "") for n in unexpected],
                             "key(s) of the file not in the network")
        problems += _grouped([f"'{n}'" for n in missing], "parameter(s) of the network missing from the file")
    if problems:
        raise WeightsError(f"{path} does not fit network {graph.name}", notes=problems,
                           hint="was the file saved from a different program or width?" if mismatched or disagree or not strict else
                           "rename keys with --weights-map REGEX=REPLACEMENT; --non-strict ignores keys the network "
                           "does not have and keeps the initialization of parameters the file lacks")
    for name, arr in named.items():
        if name in expected:
            want = np.dtype(NUMPY_DTYPE.get(expected[name].dtype, "float32"))  # int8 weights stay int8
            graph.params[name] = arr.astype(want, copy=False)
            report.loaded += 1
    report.ignored, report.kept = unexpected, missing
    report.derived = [n for n in named if n in derived]
    return report


def derived_buffers(graph: Graph) -> dict[str, np.ndarray]:
    """Every buffer a reference model stores that the graph's ops compute themselves (OpDef.derived),
    under the key a state_dict gives it: '<node>.<local name>'."""
    out = {}
    for node in graph.nodes():
        fn = OPS[node.op].derived if node.op in OPS else None
        if fn is not None:
            for local, value in fn(node.attrs, graph.in_types(node.id)).items():
                out[f"{node.id}.{local}"] = value
    return out


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """The same numbers in the same order: a flattened copy (Swin's [T*T]) counts as the same."""
    return a.size == b.size and bool(np.array_equal(a.reshape(-1), np.asarray(b).reshape(-1)))


_SHOWN = 5  # names shown per kind of problem


def _ranked(names: list[str]) -> list[str]:
    """Real mismatches first: a ``num_batches_tracked`` counter says nothing about the network."""
    return sorted(names, key=lambda n: "num_batches_tracked" in n)


def _grouped(items: list[str], what: str) -> list[str]:
    """One note per kind: the total, then the first few, bookkeeping buffers last."""
    if not items:
        return []
    shown = _ranked(items)[:_SHOWN]
    more = f", and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return [f"{len(items)} {what}: " + ", ".join(shown) + more]


def save_weights(graph: Graph, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write all parameters and buffers; written to a temp file first, then renamed.  The same
    parameters and metadata give the same bytes in every process (artifact manifests list SHA-256s)."""
    path = Path(path)
    arrays = {name: _storable(name, arr) for name, arr in graph.params.items()}  # bad dtypes fail here
    meta = {"network": graph.name, **(metadata or {})}
    order = _layout(arrays)
    header = _safetensors_header(arrays, order, {k: str(v) for k, v in meta.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            for name in order:
                f.write(arrays[name])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# safetensors.numpy.save_file keeps the metadata in a Rust HashMap, whose order changes from one
# process to the next, so the same weights gave files with other SHA-256s.  convdsl writes the format
# itself, metadata keys sorted: the header's length (u64, little-endian), the JSON header padded with
# spaces to a multiple of 8 bytes, the tensors' bytes.  NumPy dtype -> safetensors dtype, for what
# safetensors.numpy reads back, in the order of safetensors' Dtype enum: its writer lays tensors out
# from the last dtype in this order to the first (wider ones first, so each stays aligned), then by
# name.  convdsl does the same, so with one metadata key the file is the library's, byte for byte.
_SAFETENSORS_DTYPE = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16",
                      "float16": "F16", "int32": "I32", "uint32": "U32", "float32": "F32",
                      "complex64": "C64", "float64": "F64", "int64": "I64", "uint64": "U64"}
_RANK = {name: i for i, name in enumerate(_SAFETENSORS_DTYPE)}


def _storable(name: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` as the file holds it: C order, little-endian."""
    if arr.dtype.name not in _SAFETENSORS_DTYPE:
        raise WeightsError(f"cannot save parameter '{name}': dtype {arr.dtype.name}",
                           hint="a weights file holds " + ", ".join(_SAFETENSORS_DTYPE))
    return np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")


def _layout(arrays: dict[str, np.ndarray]) -> list[str]:
    return sorted(arrays, key=lambda n: (-_RANK[arrays[n].dtype.name], n))


def _safetensors_header(arrays: dict[str, np.ndarray], order: list[str], metadata: dict[str, str]) -> bytes:
    entries: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in order:
        a = arrays[name]
        entries[name] = {"dtype": _SAFETENSORS_DTYPE[a.dtype.name], "shape": list(a.shape),
                         "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(entries, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text
