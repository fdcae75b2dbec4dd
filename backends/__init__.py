"""Code generators, installed as ``convdsl.backends``: one package per backend, and the
table that finds a backend by name.

Backends are imported by module name (``backend_module``) so that importing
convdsl imports no backend, and torch or TVM load only when asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

from convdsl.errors import UsageError, did_you_mean

# backend name -> module implementing build_module(graph); a module serving several names (one
# per target) defines backend(name), which returns the object to use.
BACKENDS = {
    "torch": "convdsl.backends.torch",
    "tvm-llvm": "convdsl.backends.tvm",
    "tvm-cuda": "convdsl.backends.tvm",
    "onnx": "convdsl.backends.onnx",
}


def backend_module(name: Any):
    """The backend for ``name``; a backend object already configured (e.g. TVM with a
    target and tuning options) is returned as it is."""
    if not isinstance(name, str):
        return name
    if name not in BACKENDS:
        raise UsageError(f"unknown backend '{name}'",
                         hint=did_you_mean(name, BACKENDS) or f"backends: {', '.join(BACKENDS)}")
    mod = importlib.import_module(BACKENDS[name])
    factory = getattr(mod, "backend", None)
    return factory(name) if factory is not None else mod
