"""Graph IR -> readable PyTorch source (jinja2), and the in-memory module.

The in-memory ``nn.Module`` is built from the very source written to disk, so
the Python API and the standalone file cannot disagree.  Names are made the
way torch.fx's ``_Namespace`` makes them: unique, never a keyword, builtin or
a name the generated code itself uses.

A user's strings (file and folder paths, network, block and instance names,
input names, attribute values) reach the source in one of three forms only:

- ``Namespace.make`` / ``class_name_for``: an ASCII identifier;
- ``repr()`` (in ``module_ref``, ``_assign_module`` and the lowering table): a
  Python literal;
- ``text()``: inert text in a comment or docstring.  The template's ``finalize``
  passes every ``{{ ... }}`` that is not ``Code`` (source the generator wrote
  itself) through ``text()``, so a value the template prints cannot be code by
  accident, and ``check_structure`` refuses a module with any statement the
  template did not write.
"""
from __future__ import annotations

import ast as pyast
import builtins
import inspect
import keyword
import linecache
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from jinja2 import Environment, PackageLoader, StrictUndefined
from torch import nn

from convdsl.errors import LoweringError
from convdsl.ir.graph import Graph, Node, Value
from convdsl.ir.types import FLOAT_DTYPES, TORCH_DTYPE, symbol_sources
from convdsl.version import __version__

from convdsl.backends.torch.common import lit
from convdsl.backends.torch.lowering import HELPERS, lowering_for

_RESERVED = set(dir(builtins)) | set(keyword.kwlist) | {"self", "torch", "nn", "F", "math", "load"} | set(HELPERS)
_MODULE_ATTRS = set(dir(nn.ModuleDict)) | set(dir(nn.Module)) | {"training"}
_PLAIN_MODULE, _PLAIN_SCOPE = nn.Module(), nn.ModuleDict()


class Code(str):
    """Python source written by the generator itself: sanitized identifiers, ``repr()`` literals,
    lowering output, helper definitions.  The template prints it as it is; any other value is
    ``text()``."""


_UNESCAPED = frozenset(map(chr, range(0x20, 0x7F))) - {"\\", '"'}
_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def text(value: Any) -> str:
    """``value`` as text that is inert in a ``#`` comment and in a triple-quoted docstring:
    printable ASCII as it is; backslash, double quote and every other character (line breaks, NUL,
    bidi controls, any non-ASCII) escaped as in a Python string literal (``\\n``, ``\\x00``,
    ``\\u202e``).  Every user string the template prints goes through here."""
    out = []
    for c in str(value):
        if c in _UNESCAPED:
            out.append(c)
        elif c in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[c])
        else:
            o = ord(c)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


def _finalize(value: Any) -> str:
    """Jinja's hook on every ``{{ ... }}``: generated source as it is, anything else as ``text()``."""
    return value if isinstance(value, Code) else text(value)


class Namespace:
    """Unique, safe Python identifiers (ASCII: Python folds other identifiers with NFKC, so
    ``𝐭𝐨𝐫𝐜𝐡`` would be the name ``torch``) derived from arbitrary names."""

    def __init__(self, reserved: set[str] | None = None) -> None:
        self.used = set(_RESERVED) | set(reserved or ())

    def make(self, base: str) -> Code:
        name = re.sub(r"[^A-Za-z0-9_]", "_", base)
        if not name or name[0].isdigit():
            name = "v_" + name
        name = re.sub(r"__+", "_", name)
        if name.startswith("_"):
            name = "v" + name
        candidate, i = name, 1
        while candidate in self.used or keyword.iskeyword(candidate):
            candidate = f"{name}_{i}"
            i += 1
        self.used.add(candidate)
        return Code(candidate)


def class_name_for(network: str) -> Code:
    parts = re.split(r"[^A-Za-z0-9]+", network)
    name = "".join(p[:1].upper() + p[1:] for p in parts if p) or "Network"
    if name[0].isdigit():
        name = "Net" + name
    return Code(name if name not in _RESERVED else name + "Net")


def _safe_attr(seg: str) -> bool:
    return (seg.isascii() and seg.isidentifier() and not keyword.iskeyword(seg) and seg not in _MODULE_ATTRS
            and not seg.startswith("_"))


def module_ref(path: str) -> str:
    """Source that reaches the submodule at dotted ``path`` from ``self``."""
    ref = "self"
    for i, seg in enumerate(path.split(".")):
        if _safe_attr(seg):
            ref += f".{seg}"
        elif i == 0:
            ref += f"._modules[{seg!r}]"
        else:
            ref += f"[{seg!r}]"
    return ref


@dataclass
class Generated:
    source: str
    class_name: str
    helpers: list[str] = field(default_factory=list)
    tree: pyast.Module | None = field(default=None, repr=False)  # the parsed source, as checked


@lru_cache(maxsize=1)
def _template():
    env = Environment(loader=PackageLoader("convdsl.backends.torch", "templates"), undefined=StrictUndefined,
                      keep_trailing_newline=True, autoescape=False, finalize=_finalize)
    return env.get_template("module.py.j2")


def generate(graph: Graph) -> Generated:
    """Render the network as one standalone Python module that imports only torch."""
    ns = Namespace()
    class_name = class_name_for(graph.name)
    ns.used.add(class_name)
    var: dict[Value, str] = {}
    args: list[str] = []
    for nid in graph.inputs:
        name = ns.make(nid)
        var[Value(nid, 0)] = name
        args.append(name)
    protected = set(args)  # the inputs keep their names and values: sizes are read from them
    outputs = set(graph.outputs)
    sources: dict[str, tuple[str, int, int]] = {}  # symbol -> (input variable, dim, divisor)
    for name, nid in zip(args, graph.inputs):
        for sym, (i, c) in symbol_sources(graph.node(nid).type.shape).items():
            sources.setdefault(sym, (name, i, c))

    init_lines: list[str] = []
    forward_lines: list[str] = []
    helpers: list[str] = ["load_safetensors"]
    containers: set[str] = set()
    bases: dict[str, str] = {}  # variable -> the scope it was named after

    for node in graph.nodes():
        if node.op == "input":
            continue
        low = lowering_for(node)
        in_vals = graph.inputs_of(node.id)
        in_types = [graph.type_of(v) for v in in_vals]
        in_names = [var[v] for v in in_vals]
        for h in low.helpers:
            if h not in helpers:
                helpers.append(h)
        mod_ref, ctor = None, None
        if node.exact_param:  # `op as param name`: the parameter itself, on the parent module
            if low.param_call is None:
                raise LoweringError(f"{node.op} cannot hold its parameter under the name '{node.id}' ('as param') "
                                    "in the torch backend", node.span, hint="name it with 'as' instead")
            _check_name(node.id, node)
            init_lines.extend(_containers(node.id, containers))
            init_lines.append(_assign_param(node.id, _param_ctor(graph, node)))
            expr = low.param_call(node, in_types, _param_ref(node.id, graph.params.specs[node.id].buffer), in_names)
        elif low.module is not None:
            ctor = low.module(node, in_types)
            if ctor is not None:
                ctor += _dtype_suffix(graph, node)
                _check_name(node.id, node)
                mod_ref = module_ref(node.id)
                init_lines.extend(_containers(node.id, containers))
                init_lines.append(_assign_module(node.id, ctor))
        if not node.exact_param:
            expr = low.call(node, in_types, mod_ref, in_names, sources=sources) if low.sizes else \
                low.call(node, in_types, mod_ref, in_names)
        for h in low.helpers_if_named:  # helpers of special cases: copied only when the code names them
            if h not in helpers and re.search(rf"\b{h}\b", f"{ctor or ''} {expr}"):
                helpers.append(h)
        n_out = len(node.types)
        if low.alias:  # no line: the output is another name for the input
            var[Value(node.id, 0)] = in_names[0]
            protected.add(in_names[0])
            continue
        base = node.scope.replace(".", "_") if node.scope else "x"
        if n_out == 1:
            target = _reuse(graph, node, in_vals, var, protected, outputs, bases, base)
            if target is None:
                target = ns.make(base)
                bases[target] = base
            var[Value(node.id, 0)] = target
            if target == in_names[0]:
                expr = _in_place(graph, node, in_vals, in_names, expr)
            forward_lines.append(f"{target} = {expr}")
        else:
            targets = [ns.make(f"{base}_{i}") for i in range(n_out)]
            for i, t in enumerate(targets):
                var[Value(node.id, i)] = t
            forward_lines.append(f"{', '.join(targets)} = {expr}")
    # `self.a = Scope()`, or `self.add_module('0', Scope())` for a name that is no identifier
    if any(l.rstrip().endswith(("= Scope()", ", Scope())")) for l in init_lines):
        helpers.insert(0, "Scope")
    rets = [var[v] for v in graph.outputs]
    returns = rets[0] if len(rets) == 1 else "(" + ", ".join(rets) + ")"
    sig_in = ", ".join(f"{n}: {graph.node(i).type}" for n, i in zip(args, graph.inputs))
    sig_out = ", ".join(str(t) for t in graph.output_types())
    init_lines = init_lines or ["pass"]
    source = _template().render(
        # text: shown in the header comment and the class docstring (see text())
        version=__version__,
        source=_display_path(graph.source_file),
        network=graph.name,
        n_params=graph.params.count(),
        signature=f"({sig_in}) -> {sig_out}",
        # code: written by this generator
        helpers=[_helper_source(h) for h in helpers],
        class_name=class_name,
        init_lines=[Code(line) for line in init_lines],
        args=Code(", ".join(args)),
        forward_lines=[Code(line) for line in forward_lines],
        returns=Code(returns),
    )
    tree = check_structure(source, class_name, helpers, len(init_lines), len(forward_lines))
    return Generated(source, class_name, helpers, tree)


@lru_cache(maxsize=None)
def _helper_source(name: str) -> Code:
    return Code(inspect.getsource(HELPERS[name]).rstrip())  # inspect re-reads runtime.py on every call


TEMPLATE_IMPORTS = ("import math", "import torch", "import torch.nn.functional as F", "from torch import nn")


def check_structure(source: str, class_name: str, helpers: list[str], n_init: int, n_forward: int) -> pyast.Module:
    """The generated module has exactly the statements the template writes: its four imports,
    the helpers by name, the network class with one statement per init and forward line, and
    ``load``.  A lowering that ever wrote two statements on one line, or a user string that
    ever escaped its literal, is refused here rather than executed or written to disk."""
    def fail(what: str):
        return LoweringError(f"generated code failed its structure check ({what}); this is a convdsl bug",
                             hint="please report it with the .cdl file")

    try:
        tree = pyast.parse(source)
    except (SyntaxError, ValueError) as e:
        raise fail(f"it does not parse: {e}") from None
    body = list(tree.body)
    imports = [pyast.unparse(n) for n in body[:len(TEMPLATE_IMPORTS)]]
    if tuple(imports) != TEMPLATE_IMPORTS:
        raise fail(f"imports {imports}")
    rest = body[len(TEMPLATE_IMPORTS):]
    defs = [(type(n).__name__, getattr(n, "name", None)) for n in rest]
    want = [("ClassDef" if isinstance(HELPERS[h], type) else "FunctionDef", h) for h in helpers]
    want += [("ClassDef", class_name), ("FunctionDef", "load")]
    if defs != want:
        raise fail(f"top-level statements {defs}")
    cls = rest[len(helpers)]
    members = [(type(n).__name__, getattr(n, "name", None)) for n in cls.body]
    if members != [("Expr", None), ("FunctionDef", "__init__"), ("FunctionDef", "forward")]:
        raise fail(f"class body {members}")
    init, forward = cls.body[1], cls.body[2]
    if len(init.body) != 1 + n_init or len(forward.body) != n_forward + 1:
        raise fail(f"{len(init.body) - 1} statements in __init__ for {n_init} lines, "
                   f"{len(forward.body) - 1} in forward for {n_forward}")
    return tree


def _dtype_suffix(graph: Graph, node: Node) -> str:
    """``.to(torch.float64)`` for a module whose float parameters are not f32 (an f64 network, a
    graph the cast pass made f16/bf16): modules are built in f32, and ``.to`` converts their float
    parameters and buffers only, as ``load_state_dict`` then expects."""
    dtypes = {graph.params.specs[key].dtype for key in node.params.values()} & set(FLOAT_DTYPES)
    if len(dtypes) != 1 or dtypes == {"f32"}:
        return ""
    return f".to(torch.{TORCH_DTYPE[dtypes.pop()]})"


def _display_path(path: str | None) -> str:
    if not path:
        return "<string>"
    import os

    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("..") else os.path.basename(path)
    except ValueError:
        return os.path.basename(path)


def _containers(path: str, made: set[str]) -> list[str]:
    lines = []
    segs = path.split(".")
    for i in range(1, len(segs)):
        prefix = ".".join(segs[:i])
        if prefix not in made:
            made.add(prefix)
            lines.append(_assign_module(prefix, "Scope()"))
    return lines


def _check_name(path: str, node: Node) -> None:
    """PyTorch cannot register a submodule whose name shadows a Module attribute."""
    segs = path.split(".")
    for i, seg in enumerate(segs):
        holder = _PLAIN_MODULE if i == 0 else _PLAIN_SCOPE
        if hasattr(holder, seg) or seg == "":
            raise LoweringError(
                f"instance name '{'.'.join(segs[:i + 1])}' cannot be a PyTorch submodule name "
                f"('{seg}' is an attribute of torch.nn.{type(holder).__name__})", node.span,
                hint="rename the instance with 'as', e.g. as " + (seg + "_"),
            )


def _assign_module(path: str, ctor: str) -> str:
    segs = path.split(".")
    parent = module_ref(".".join(segs[:-1])) if len(segs) > 1 else "self"
    last = segs[-1]
    if _safe_attr(last):
        return f"{parent}.{last} = {ctor}"
    if parent == "self":
        return f"self.add_module({last!r}, {ctor})"
    return f"{parent}[{last!r}] = {ctor}"


def _param_ctor(graph: Graph, node: Node) -> str:
    spec = graph.params.specs[node.id]
    dtype = "" if spec.dtype == "f32" else f", dtype=torch.{TORCH_DTYPE[spec.dtype]}"
    if spec.buffer:  # take's index table: state, not a parameter
        return f"torch.zeros({lit(tuple(spec.shape))}{dtype})"
    return f"nn.Parameter(torch.zeros({lit(tuple(spec.shape))}{dtype}))"


def _assign_param(path: str, ctor: str) -> str:
    """``self.encoder.pos_embedding = nn.Parameter(...)``: a parameter registered on its parent module
    (a buffer, ``torch.zeros(...)``, with ``register_buffer``)."""
    parent, _, last = path.rpartition(".")
    holder = module_ref(parent) if parent else "self"
    if not ctor.startswith("nn.Parameter("):
        return f"{holder}.register_buffer({last!r}, {ctor})"
    if _safe_attr(last):
        return f"{holder}.{last} = {ctor}"
    return f"{holder}.register_parameter({last!r}, {ctor})"


def _param_ref(path: str, buffer: bool = False) -> str:
    """How forward reads the parameter (or buffer) at ``path``: an attribute, or, for a name that is no
    identifier (an ONNX initializer's ``a/const_4``), the registry it was registered in."""
    parent, _, last = path.rpartition(".")
    holder = module_ref(parent) if parent else "self"
    if _safe_attr(last):
        return f"{holder}.{last}"
    return f"{holder}.{'_buffers' if buffer else '_parameters'}[{last!r}]"


def _reuse(graph: Graph, node: Node, in_vals: list[Value], var: dict[Value, str], protected: set[str],
           outputs: set[Value], bases: dict[str, str], base: str) -> str | None:
    """Reuse the input's variable when this node is its only reader and in the
    same block instance (x = f(x)), so chains read like hand-written code and
    dead tensors are freed early."""
    if not in_vals:
        return None
    v = in_vals[0]
    name = var[v]
    if name in protected or v in outputs or bases.get(name) != base:
        return None
    if len(graph.users(v)) != 1:
        return None
    return name


def _in_place(graph: Graph, node: Node, in_vals: list[Value], in_names: list[str], expr: str) -> str:
    """``torch.relu_(x)`` / ``x.add_(y)`` for a relu or add whose first input is read by nothing
    else (the caller checked: its variable is reused) and comes from an op whose backward does
    not need that output (``TorchLowering.output_not_saved``; what torchvision does with
    ReLU(inplace=True) and ``out += identity``): the same numbers, one allocation less per layer."""
    producer = graph.node(in_vals[0].node)
    if producer.op == "input" or not lowering_for(producer).output_not_saved:
        return expr
    x = in_names[0]
    if node.op == "relu" and expr == f"torch.relu({x})":
        return f"torch.relu_({x})"
    if node.op == "add" and len(in_vals) == 2 and graph.type_of(in_vals[0]) == node.types[0] \
            and graph.type_of(in_vals[1]).dtype == node.types[0].dtype and expr == f"{x} + {in_names[1]}":
        return f"{x}.add_({in_names[1]})"
    return expr


# ---- building and running ----------------------------------------------------------
_counter = 0


def load_source(gen: Generated, filename: str | None = None) -> type:
    """Compile generated source into a fresh namespace and return the module class.

    The text comes from ``generate`` (sanitized identifiers, repr'd literals), never
    from user input, the same way torch.fx materializes its GraphModules."""
    global _counter
    _counter += 1
    filename = filename or f"<convdsl-generated-{_counter}>"
    linecache.cache[filename] = (len(gen.source), None, gen.source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": f"convdsl_generated_{_counter}", "__file__": filename}
    code = compile(gen.tree if gen.tree is not None else gen.source, filename, "exec")
    exec(code, namespace)  # noqa: S102 - generated code, see docstring
    return namespace[gen.class_name]


def state_dict_of(graph: Graph) -> dict[str, torch.Tensor]:
    """The graph's parameters as torch tensors of their declared dtypes (sharing memory with the
    store, except bf16, which NumPy stores as float32 and is converted)."""
    out = {}
    for name, arr in graph.params.items():
        if not arr.flags.c_contiguous or not arr.flags.writeable:
            arr = arr.copy()
        t = torch.from_numpy(arr)
        want = getattr(torch, TORCH_DTYPE.get(graph.params.specs[name].dtype, "float32"))
        out[name] = t if t.dtype == want else t.to(want)
    return out


def assign_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict(state, strict=True, assign=True)`` in linear time (torch's
    filters the whole dict once per submodule, quadratic for 10,000-layer nets)."""
    modules = dict(model.named_modules())
    expected = {f"{p}.{n}" if p else n for p, m in modules.items()
                for n in [k for k, v in m._parameters.items() if v is not None]
                + [k for k, v in m._buffers.items() if v is not None and k not in m._non_persistent_buffers_set]}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise RuntimeError(f"state does not fit the generated module: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, tensor in state.items():
        path, _, name = key.rpartition(".")
        mod = modules[path]
        if name in mod._parameters:
            old = mod._parameters[name]
            mod._parameters[name] = nn.Parameter(tensor, requires_grad=old.requires_grad if old is not None else True)
        else:
            mod._buffers[name] = tensor


def build_module(graph: Graph, gen: Generated | None = None) -> nn.Module:
    """The network as an ``nn.Module`` in eval mode, holding the graph's parameters."""
    gen = gen or generate(graph)
    cls = load_source(gen)
    with torch.device("meta"):
        model = cls()
    assign_state(model, state_dict_of(graph))
    model.source = gen.source  # type: ignore[attr-defined]
    return model.eval()
