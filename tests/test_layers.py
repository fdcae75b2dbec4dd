"""The compiler's layers only point down, and its imports are ones a tool can follow.

Every module of the package (convdsl/, backends/ as convdsl.backends, grammar/ as
convdsl.grammar) is read with ``ast``, function-local imports included, and:

- each import goes to the same layer or one below it (``ALLOWED``; docs/layout.md draws it);
- no two modules import each other, directly or around a loop;
- no module imports another module's private ``_name``;
- every import of convdsl is absolute (``convdsl....``), and nothing anywhere (package, tests,
  benchmarks) imports ``backends`` or ``grammar`` as top-level packages: they are installed as
  ``convdsl.backends`` and ``convdsl.grammar``.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"convdsl": ROOT / "convdsl", "convdsl.backends": ROOT / "backends", "convdsl.grammar": ROOT / "grammar"}

# module (or package prefix) -> layer; the longest matching prefix wins ("convdsl" is the root only)
LAYER_OF = {
    "convdsl.errors": "base", "convdsl.version": "base", "convdsl.grammar": "base",
    "convdsl.outputs": "base", "convdsl.trust": "base",  # output folders written whole; artifact keys and digests
    "convdsl.ir": "ir",
    "convdsl.lang": "lang",
    "convdsl.passes": "passes",
    "convdsl.backends": "backends", "convdsl.artifact": "backends",  # the compiled-folder format backends write
    "convdsl.inputs": "backends",  # the arrays a compiled network runs on (convdsl run --input/--batch)
    "convdsl.train": "train",
    "convdsl.search": "search",
    "convdsl.verify": "verify",
    "convdsl.importer": "importer",  # ONNX files and torch modules -> CDL: a front end for other formats
    "convdsl.lsp": "lsp",  # the language server: a view of the front end
    "convdsl": "top", "convdsl.api": "top", "convdsl.cli": "top", "convdsl.__main__": "top",
    "convdsl.notebook": "top",  # %%cdl compiles through the API
}

# layer -> the layers it may import.  Data flows lang -> ir -> passes -> backends, but the front end
# builds IR, so ir is the bottom.  A layer that must run a network without importing a backend
# (passes' calibration and data criteria, train) takes a builder (ir.graph.ModuleBuilder).
_CORE = {"base", "ir", "lang", "passes"}
ALLOWED = {
    "base": {"base"},
    "ir": {"base", "ir"},
    "lang": {"base", "ir", "lang"},
    "passes": _CORE,
    "backends": _CORE | {"backends"},
    "train": _CORE | {"train"},  # not backends: train(..., build=build_module)
    "search": _CORE | {"backends", "train", "search"},  # trains and times candidates
    "verify": _CORE | {"backends", "verify"},  # runs backends against each other
    "importer": {"base", "ir", "lang", "importer"},  # builds IR and prints it as CDL; runs no pass or backend
    "lsp": {"base", "ir", "lang", "lsp"},  # parses and elaborates as you type; compiles nothing
    "top": set(LAYER_OF.values()),
}

# Function-local imports that close a loop on purpose, each with its reason.  Only a protocol hook
# belongs here: a method that an outside caller (Jupyter) looks up by name on a low-level class.
HOOKS = {
    ("convdsl.ir.graph", "convdsl.ir.display"):
        "Graph._repr_html_/_repr_svg_: Jupyter asks the graph to show itself; the picture and the table "
        "are drawn by display.py, which reads graphs",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (the longest existing module prefix of what was named)
    names: tuple[str, ...]  # names taken from it (from-imports)
    line: int
    absolute: bool


def module_name(base: str, root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([base, *parts])


@cache
def package_modules() -> dict[str, Path]:
    mods = {}
    for base, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).parts
            if base == "convdsl" and rel[0] in ("backends", "grammar"):
                continue
            mods[module_name(base, root, path)] = path
    return mods


def imports_of(module: str, source: str, known: set[str]) -> list[Import]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append(Import(module, _resolve(a.name, known), (), node.lineno, True))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.append(Import(module, f"<relative {'.' * node.level}{node.module or ''}>", (), node.lineno, False))
                continue
            for a in node.names:
                full = f"{node.module}.{a.name}"
                target = full if full in known else _resolve(node.module or "", known)
                out.append(Import(module, target, () if full in known else (a.name,), node.lineno, True))
    return out


def _resolve(name: str, known: set[str]) -> str:
    """The module ``name`` refers to: itself or its longest known prefix (``name`` if external)."""
    probe = name
    while probe and probe not in known:
        probe = probe.rpartition(".")[0]
    return probe or name


def layer(module: str) -> str | None:
    """The layer of a convdsl module (None for other modules); "convdsl" names the root package only."""
    best = max((p for p in LAYER_OF if module == p or (p != "convdsl" and module.startswith(p + "."))), key=len,
               default=None)
    return None if best is None else LAYER_OF[best]


def violations(edges: list[Import]) -> list[str]:
    """Layer breaches, cycles and private imports among ``edges`` (package modules only)."""
    found = []
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.absolute:
            found.append(f"{e.module}:{e.line} uses a relative import {e.target}")
            continue
        src, dst = layer(e.module), layer(e.target)
        if not e.target.startswith("convdsl") or e.target == e.module:
            continue  # not convdsl
        if dst is None:
            found.append(f"{e.module}:{e.line} imports {e.target}, which belongs to no layer (add it to LAYER_OF)")
            continue
        if src is None:
            found.append(f"{e.module} belongs to no layer (add it to LAYER_OF)")
        elif dst not in ALLOWED[src]:
            found.append(f"{e.module}:{e.line} ({src}) imports {e.target} ({dst})")
        private = [n for n in e.names if n.startswith("_") and not n.startswith("__")]
        if private:
            found.append(f"{e.module}:{e.line} imports private {', '.join(private)} from {e.target}")
        if (e.module, e.target) not in HOOKS:
            graph.setdefault(e.module, set()).add(e.target)
    for cycle in cycles(graph):
        found.append("import cycle: " + " -> ".join(cycle + [cycle[0]]))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


@cache
def package_edges() -> list[Import]:
    mods = package_modules()
    known = set(mods)
    return [e for m, path in mods.items() for e in imports_of(m, path.read_text(), known)]


def test_every_module_has_a_layer():
    assert [m for m in package_modules() if layer(m) is None] == []


def test_layers_only_point_down_without_cycles_or_private_imports():
    found = violations(package_edges())
    assert not found, "\n".join(found)


def test_each_hook_is_a_function_local_import_that_exists():
    for src, dst in HOOKS:
        tree = ast.parse(package_modules()[src].read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not [n for n in top if dst in (getattr(n, "module", None), *(a.name for a in n.names))], \
            f"{src} imports {dst} at module level: not a hook"
        assert any(e.module == src and e.target == dst for e in package_edges()), f"stale hook {src} -> {dst}"


def test_the_check_catches_each_kind_of_breach():
    known = {"convdsl.ir.graph", "convdsl.lang.parser", "convdsl.train.trainer", "convdsl.backends.torch",
             "convdsl.passes.a", "convdsl.passes.b"}
    edges = (imports_of("convdsl.ir.graph", "from convdsl.lang.parser import parse", known)
             + imports_of("convdsl.train.trainer", "def f():\n    from convdsl.backends.torch import build_module", known)
             + imports_of("convdsl.passes.a", "from convdsl.passes.b import _helper", known)
             + imports_of("convdsl.passes.b", "import convdsl.passes.a", known)
             + imports_of("convdsl.passes.b", "from .a import x", known))
    found = violations(edges)
    assert "convdsl.ir.graph:1 (ir) imports convdsl.lang.parser (lang)" in found
    assert "convdsl.train.trainer:2 (train) imports convdsl.backends.torch (backends)" in found  # function-local
    assert "convdsl.passes.a:1 imports private _helper from convdsl.passes.b" in found
    assert "import cycle: convdsl.passes.a -> convdsl.passes.b -> convdsl.passes.a" in found
    assert "convdsl.passes.b:1 uses a relative import <relative .a>" in found
    assert len(found) == 5


def test_nothing_imports_backends_or_grammar_as_top_level_packages():
    files = [*package_modules().values(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0] in ("backends", "grammar")]
    assert not bad, "\n".join(bad)
