"""Compiled artifacts: a folder with the backend's files, the weights, the network as flat CDL,
``manifest.json`` and, when the user has an artifact key, ``manifest.sig``.

Writing: every file is made in a temporary sibling folder and the folder moves into place when
complete (``convdsl.outputs``).  The manifest lists each file with its SHA-256 and size; the
SHA-256 of the manifest itself is the artifact's digest, which covers the whole folder.

Reading (``open_artifact``), in this order, before anything in the folder is parsed, elaborated
or loaded: ``manifest.json`` is a regular file of bounded size; its digest equals the one the
user pinned (``--expect-sha256``), if any; its signature verifies under the user's key, if it was
signed with that key; it is well-formed JSON of the expected types; every file it lists is a
plain name inside the folder, a regular file (no link), of the listed size and SHA-256.  Then
the backend checks what it loads (``check_artifact``): TVM loads native code only from a folder
that is pinned or signed (docs/artifacts.md).  A torch folder holds no code that runs: the network
is rebuilt from ``network.cdl`` and ``weights.safetensors`` (``model.py`` is for people and for
deployment without convdsl).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from convdsl.backends import BACKENDS, backend_module
from convdsl.errors import ArtifactError, ConvDSLError, UsageError
from convdsl.inputs import make_inputs  # also imported from here by benchmarks and tests
from convdsl.ir.graph import Graph
from convdsl.ir.weights import save_weights
from convdsl.lang.printer import print_graph
from convdsl.outputs import staged_folder
from convdsl.trust import SIGNATURE, check_signature, digest_of, load_key, parse_digest, write_signature
from convdsl.version import __version__

MANIFEST_VERSION = 2
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
COMMON_FILES = ("network.cdl", "weights.safetensors")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a plain name inside the folder: no '/', no '..'
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


# ---- writing ------------------------------------------------------------------------------
def manifest_for(graph: Graph, backend: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of an artifact of ``graph``.  Each input and output lists the ``shape`` the
    artifact takes (a size, or a symbol name where it takes any size: the symbols in ``dynamic``)
    and the program's ``symbolic_shape``; ``symbols`` are the sizes ``convdsl run`` uses by
    default.  A torch folder is rebuilt from network.cdl and an ONNX model keeps every symbol as
    a ``dim_param``, so both take every symbol at any size; a TVM backend's ``manifest_extra``
    gives the shapes its library was compiled for."""
    def io(names, types):
        return [{"name": n, "shape": list(t.shape), "symbolic_shape": list(t.shape), "dtype": t.dtype}
                for n, t in zip(names, types)]

    import torch

    return {
        "format": MANIFEST_VERSION,
        "convdsl_version": __version__,
        "backend": backend,
        "network": graph.name,
        "inputs": io(graph.inputs, graph.input_types()),
        "outputs": io(graph.output_names, graph.output_types()),
        "symbols": graph.symbols,
        "dynamic": list(graph.symbols),
        "ops": graph.ops_used(),
        "params": graph.params.count(),
        "source_file": os.path.basename(graph.source_file) if graph.source_file else None,
        "source_hash": graph.source_hash,
        "versions": {"torch": torch.__version__},
        **(extra or {}),
    }


def write_artifact(graph: Graph, out: str | os.PathLike, backend: str = "torch") -> list[str]:
    """Write the artifact folder ``out`` all at once (replacing an earlier artifact there); the
    names of its files."""
    mod = backend_module(backend)
    load_key(create=True)  # before a long build: a key others can read is refused now, not after
    with staged_folder(out, replaceable=artifact_files) as tmp:
        files = mod.write_artifact(graph, tmp)  # backend-specific files (model.py, lib.so, ...)
        header = f"network {graph.name} as compiled by convdsl {__version__}"
        (tmp / "network.cdl").write_text(print_graph(graph, header=header), encoding="utf-8")
        save_weights(graph, tmp / "weights.safetensors")  # OSErrors: staged_folder's UsageError
        extra = getattr(mod, "manifest_extra", lambda g: {})(graph)
        manifest = manifest_for(graph, str(backend), extra)
        names = sorted(set(files) | set(COMMON_FILES))
        manifest["files"] = {name: file_entry(tmp / name) for name in names}
        data = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
        (tmp / MANIFEST).write_bytes(data)
        signed = write_signature(tmp, data)
    return sorted(names + [MANIFEST] + ([SIGNATURE] if signed else []))


def file_entry(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            n += len(chunk)
    return {"sha256": h.hexdigest(), "bytes": n}


def artifact_files(folder: Path) -> set[str] | None:
    """The files an existing artifact folder may hold (those its manifest lists), or None when
    ``folder`` does not look like one: what ``compile -o`` may replace."""
    try:
        data = _read_manifest_bytes(folder)
        files = json.loads(data.decode("utf-8")).get("files")
    except (ConvDSLError, ValueError, RecursionError, AttributeError):
        return None
    names = set(files) if isinstance(files, (dict, list)) else set()
    if not all(isinstance(n, str) and FILE_NAME.fullmatch(n) for n in names):
        return None
    return names | {MANIFEST, SIGNATURE}


# ---- reading and checking ------------------------------------------------------------------
@dataclass
class Artifact:
    """A folder whose manifest and files passed every check of ``open_artifact``."""

    folder: Path
    manifest: dict[str, Any]
    digest: str  # SHA-256 of manifest.json
    trusted: str | None  # what vouches for it ("pinned by --expect-sha256", "signed with ..."), or None
    untrusted_because: str = ""

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    def path(self, name: str) -> Path:
        return self.folder / name


def open_artifact(folder: str | os.PathLike, expect_sha256: str | None = None) -> Artifact:
    """Check an artifact folder as described at the top of this module; nothing is loaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    data = _read_manifest_bytes(folder)
    digest = digest_of(data)
    trusted, why = None, ""
    if expect_sha256 is not None:
        want = parse_digest(expect_sha256)
        if digest != want:
            raise ArtifactError(f"{folder} is not the artifact you pinned: its digest is {digest}",
                                expected=want, hint="the folder changed since you took its digest; recompile it")
        trusted = "pinned by --expect-sha256"
    signed, why = check_signature(folder, data)  # a signature by your key that fails is refused here
    if trusted is None and signed:
        trusted = why
    manifest = _parse_manifest(folder, data)
    for name, entry in manifest["files"].items():
        check_file(folder, name, entry)
    return Artifact(folder, manifest, digest, trusted, "" if trusted else why)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked manifest of ``folder`` (every file verified)."""
    return open_artifact(folder).manifest


def _read_manifest_bytes(folder: Path) -> bytes:
    path = folder / MANIFEST
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"{folder} is not a convdsl artifact (no manifest.json)",
                         hint="create one with: convdsl compile net.cdl -o OUT") from None
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{path} is not a regular file", got="a symbolic link or special file",
                            hint="an artifact's files are plain files inside its folder")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is {st.st_size:,} bytes", expected=f"at most {MAX_MANIFEST_BYTES:,}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            data = os.read(fd, MAX_MANIFEST_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is over {MAX_MANIFEST_BYTES:,} bytes")
    return data


def _parse_manifest(folder: Path, data: bytes) -> dict[str, Any]:
    where = folder / MANIFEST
    try:
        m = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{where} is not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise ArtifactError(f"{where} nests too deeply to be a manifest") from None
    except ValueError as e:
        raise ArtifactError(f"{where} is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(m, dict):
        raise ArtifactError(f"{where} is not a JSON object", got=type(m).__name__)
    fmt = m.get("format")
    if type(fmt) is not int or fmt != MANIFEST_VERSION:
        raise UsageError(f"{folder} has artifact format {str(fmt)[:20]}, this convdsl reads {MANIFEST_VERSION}",
                         hint="recompile it with this convdsl version")

    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            got = json.dumps(m.get(field.split(".")[0]))[:80] if field.split(".")[0] in m else "nothing"
            raise ArtifactError(f"{where}: '{field}' is malformed", expected=expected, got=got,
                                hint="recompile the artifact")

    need(isinstance(m.get("backend"), str) and m["backend"] in BACKENDS, "backend", " / ".join(BACKENDS))
    need(isinstance(m.get("network"), str), "network", "a string")
    need(isinstance(m.get("convdsl_version"), str), "convdsl_version", "a string")
    for key in ("inputs", "outputs"):
        need(io_specs_ok(m.get(key), symbolic=True), key, 'a list of {"name": str, "shape": [int or str], "dtype": str}')
    symbols = m.get("symbols")
    need(isinstance(symbols, dict) and all(isinstance(k, str) and _is_size(v) for k, v in symbols.items()),
         "symbols", "an object of sizes (positive integers)")
    need(isinstance(m.get("versions"), dict) and all(isinstance(v, str) for v in m["versions"].values()),
         "versions", "an object of version strings")
    files = m.get("files")
    need(isinstance(files, dict) and files, "files", 'an object {"name": {"sha256": ..., "bytes": ...}}')
    for name, entry in files.items():
        if not (FILE_NAME.fullmatch(name) and name not in (MANIFEST, SIGNATURE)):
            raise ArtifactError(f"{where} lists the file {name[:100]!r}, which is not a plain name inside the folder",
                                expected="letters, digits, '.', '_', '-' (no '/', no '..', no absolute path)",
                                hint="an artifact never refers to files outside its folder")
        ok = (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _HEX64.fullmatch(entry["sha256"])
              and type(entry.get("bytes")) is int and entry["bytes"] >= 0)
        need(bool(ok), f"files.{name}", 'an object {"sha256": "<64 hex digits>", "bytes": size}')
    for name in COMMON_FILES:
        need(name in files, "files", f"a list that includes {name}")
    return m


def io_specs_ok(specs: Any, symbolic: bool) -> bool:
    """A list of {"name", "shape", "dtype"}; shapes of sizes (or symbol names, when ``symbolic``)."""
    def dim_ok(d):
        return (type(d) is int and 0 <= d < 2**62) or (symbolic and isinstance(d, str) and len(d) <= 256)

    return isinstance(specs, list) and len(specs) <= 4096 and all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("dtype"), str)
        and isinstance(s.get("shape"), list) and len(s["shape"]) <= 64 and all(dim_ok(d) for d in s["shape"])
        for s in specs)


def _is_size(v: Any) -> bool:
    return type(v) is int and 1 <= v < 2**62


def check_file(folder: Path, name: str, entry: dict[str, Any]) -> None:
    """A listed file: a regular file (never followed through a link) of the listed size and hash."""
    h = hashlib.sha256()
    with _open_listed(folder, name, entry) as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    if h.hexdigest() != entry["sha256"]:
        raise ArtifactError(f"{folder / name} does not match its SHA-256 in manifest.json (changed after compiling)",
                            hint="recompile the artifact")


@contextmanager
def _open_listed(folder: Path, name: str, entry: dict[str, Any]) -> Iterator[Any]:
    path = folder / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ArtifactError(f"{folder} lists {name} in manifest.json, and it is missing",
                            hint="recompile the artifact") from None
    except OSError as e:  # ELOOP: a symbolic link
        why = "a symbolic link" if e.errno == 40 else e.strerror
        raise ArtifactError(f"{path} is {why}, not a file of the artifact",
                            hint="an artifact's files are plain files inside its folder") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path} is not a regular file", hint="an artifact's files are plain files")
        if st.st_size != entry["bytes"]:
            raise ArtifactError(f"{path} has {st.st_size:,} bytes, manifest.json says {entry['bytes']:,} "
                                "(changed or truncated after compiling)", hint="recompile the artifact")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        yield f


@contextmanager
def private_copy(art: Artifact, name: str) -> Iterator[Path]:
    """A copy of the listed file ``name`` in a fresh 0700 folder, hashed as it is copied: what is
    loaded is exactly the bytes that were checked (no one can swap or truncate the file between
    the check and the load, which for a shared library would be a SIGBUS or worse)."""
    entry = art.manifest["files"][name]
    tmp = Path(tempfile.mkdtemp(prefix="convdsl-verified-"))
    dst = tmp / name
    try:
        h = hashlib.sha256()
        with _open_listed(art.folder, name, entry) as src, open(dst, "wb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != entry["sha256"]:
            raise ArtifactError(f"{art.folder / name} changed while it was loaded", hint="recompile the artifact")
        yield dst
    finally:
        try:
            dst.unlink(missing_ok=True)
            tmp.rmdir()
        except OSError:
            pass


def load_artifact_graph(folder: str | os.PathLike | Artifact, bind: dict[str, int] | None = None,
                        max_bytes: int | None = None, weights: bool = True) -> tuple[Graph, dict[str, Any]]:
    """The artifact's network (``network.cdl`` + ``weights.safetensors``) after ``open_artifact``'s
    checks; with ``bind``, its inputs take those sizes as fixed dims (every shape rule and memory
    check sees them)."""
    from convdsl.ir.verify import verify
    from convdsl.ir.weights import load_weights
    from convdsl.lang.elaborate import DEFAULT_MAX_BYTES, Options, elaborate_file

    art = folder if isinstance(folder, Artifact) else open_artifact(folder)
    sizes = {**art.manifest["symbols"], **(bind or {})}
    opts = Options(bind=sizes, concrete=bind is not None, max_bytes=max_bytes or DEFAULT_MAX_BYTES)
    g = elaborate_file(art.path("network.cdl"), None, opts)
    if weights:
        load_weights(g, art.path("weights.safetensors"))
    return verify(g), art.manifest


# ---- running --------------------------------------------------------------------------------
GraphLoader = Callable[["dict[str, int] | None"], Graph]


def run_artifact_or_program(target: str, *, backend: str, inputs: list[str], batch: int | None,
                            graph_loader: GraphLoader, bound: dict[str, int] | None = None,
                            expect_sha256: str | None = None, max_bytes: int | None = None) -> dict[str, Any]:
    """``convdsl run``: check the folder (or elaborate the file), find the sizes of the symbolic
    dims (from the ``--input`` arrays, else ``--batch``, else as compiled), elaborate the network
    again with its inputs fixed at those sizes (the elaborator's shape rules and memory checks,
    before anything is allocated), then run it.  ``graph_loader(sizes)`` elaborates the .cdl file:
    ``None`` for a first look at its inputs (no weights), sizes for the network that runs."""
    from convdsl.inputs import load_inputs
    from convdsl.lang.elaborate import DEFAULT_MAX_BYTES

    max_bytes = max_bytes or DEFAULT_MAX_BYTES
    bound = dict(bound or {})
    art = None
    if Path(target).is_dir():
        art = open_artifact(target, expect_sha256)
        mod = backend_module(art.backend)
        check = getattr(mod, "check_artifact", None)
        if check is not None:
            check(art)  # TVM: trusted, this TVM, this machine; torch: the files a torch folder has

        def load(sizes):
            return load_artifact_graph(art, sizes, max_bytes, weights=sizes is not None)[0]
    else:
        if expect_sha256 is not None:
            raise UsageError("--expect-sha256 checks a compiled folder; TARGET is a .cdl file")
        mod = None  # imported once the inputs are known good (torch takes seconds to import)
        load = graph_loader
    if inputs and batch is not None:
        raise UsageError("--batch sizes generated inputs; the --input arrays give their own sizes",
                         hint="leave out --batch")
    graph = load(None)
    arrays = None
    if inputs:
        arrays, sizes = load_inputs(inputs, graph, max_bytes)
        for s, n in sizes.items():
            if s in bound and bound[s] != n:
                raise UsageError(f"--bind {s}={bound[s]}, and the --input arrays have {s} = {n}",
                                 hint="leave out --bind: the sizes come from the arrays")
        given = "the --input arrays"
    else:
        # --batch sizes every symbol; on a folder that takes some at any size and was compiled for
        # others (a dynamic N with H and W bound), only those
        dynamic = art.manifest.get("dynamic") if art is not None else None
        open_ = set(dynamic) if isinstance(dynamic, list) and dynamic else set(graph.symbols)
        sizes = {s: bound.get(s, batch if batch is not None and s in open_ else v) for s, v in graph.symbols.items()}
        given = " and ".join(([f"--batch {batch}"] if batch is not None else []) +
                             [f"--bind {k}={v}" for k, v in bound.items()]) or "its manifest's symbols"
    if art is not None:
        check_sizes(art, graph, sizes, given)  # before the network is built or its library loaded
    graph = load(sizes)
    arrays = arrays if arrays is not None else make_inputs(graph, None)
    mod = mod or backend_module(backend)
    load_runner = getattr(mod, "load_runner", None)
    runner = load_runner(art) if art is not None and load_runner is not None else mod.runner(graph)
    runner(arrays)  # warm-up
    t0 = time.perf_counter()
    outs = runner(arrays)
    ms = (time.perf_counter() - t0) * 1e3
    return {"network": graph.name, "backend": art.backend if art else str(backend), "ms": ms,
            "outputs": dict(zip(graph.output_names, outs)), "artifact": art}


def check_sizes(art: Artifact, graph: Graph, sizes: dict[str, int], given: str) -> None:
    """The sizes ``convdsl run`` is about to use against the shapes the artifact takes (its
    manifest's ``inputs``: a size where it was compiled for one, a symbol where it takes any):
    a folder compiled for N=1 refuses ``--batch 4`` here, at the input's declaration, with the
    way to rebuild it, before anything of it is loaded."""
    from convdsl.errors import ShapeError
    from convdsl.ir.types import bind_dim

    names = set(graph.inputs)
    for spec in art.manifest["inputs"]:
        program = spec.get("symbolic_shape", spec["shape"])
        if not isinstance(program, list) or len(program) != len(spec["shape"]):
            continue
        for sym, took in zip(program, spec["shape"]):
            if not (isinstance(sym, str) and isinstance(took, int)):
                continue
            try:
                want = bind_dim(sym, sizes)
            except (ValueError, IndexError, ZeroDivisionError):
                continue
            if want == took:
                continue
            name = spec["name"]
            shown = f"{spec['dtype']}{spec['shape']}"
            mentioned = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sym))
            rebuild = " ".join(f"--bind {k}={v}" for k, v in sizes.items() if k in mentioned)
            src = art.manifest.get("source_file") or "FILE"
            src = src if isinstance(src, str) and FILE_NAME.fullmatch(src) else "FILE"
            again = f"convdsl compile {src} --backend {art.backend}"
            batch = sym == program[0]  # the batch symbol (what --dynamic-batch leaves open)
            dyn = f", or for any batch: {again} --dynamic-batch" if art.backend == "tvm-llvm" and batch else ""
            raise ShapeError(f"{art.folder} takes {name}: {shown}, compiled for {sym} = {took}; with {given}, "
                             f"{sym} = {want}", graph.node(name).span if name in names else None,
                             expected=f"{sym} = {took}", got=f"{sym} = {want}",
                             hint=f"run it at {sym} = {took}, or recompile it for {sym} = {want}: {again} {rebuild}"
                                  f"{dyn}")


def file_hash(path: str | os.PathLike) -> str:
    return file_entry(Path(path))["sha256"]
