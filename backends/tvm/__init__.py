"""TVM backend: Relax IR built from the convdsl graph, compiled per target.

Backend names: ``tvm-llvm`` (the host CPU) and ``tvm-cuda`` (cross-compiles
without a GPU).  ``backend(name, ...)`` returns a configured ``TVMBackend``;
the module-level functions are those of a default ``tvm-llvm`` backend.

    import convdsl.backends.tvm as ctvm
    be = ctvm.backend("tvm-llvm", tune=64)
    be.write_artifact(graph, "out/")            # or: convdsl compile net.cdl -b tvm-llvm -o out/
    run = ctvm.load("out/")                     # checks trust, hashes, target and versions first
    y, = run([x])                               # NumPy arrays or torch tensors

TVM itself is imported lazily (it takes seconds), so importing this package
is cheap and ``convdsl --help`` stays fast.
"""
from __future__ import annotations

import os

# TVM's CPU thread pool defaults to its guess of *physical* cores, which is 1 on this kind of
# 2-vCPU machine: every compiled network ran on half the machine. Unless the user set it, use
# the cores this process may run on (read by TVM when its pool starts, on the first call).
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                              else os.cpu_count() or 1))

from convdsl.backends.tvm.backend import Module, TVMBackend, backend, load  # noqa: E402

__all__ = ["TVMBackend", "Module", "backend", "load", "build_module", "runner", "load_runner", "TVM_LOWERINGS"]


def build_module(graph) -> Module:
    """Compile ``graph`` for the host CPU (``tvm-llvm``) into a callable module."""
    return backend("tvm-llvm").build_module(graph)


def runner(graph):
    """(list of NumPy arrays) -> list of NumPy arrays, compiled for the host CPU."""
    return backend("tvm-llvm").runner(graph)


def load_runner(artifact):
    """What ``convdsl run`` uses for an artifact folder (``convdsl.artifact.open_artifact``'s result):
    ``load`` with its checks."""
    return load(artifact.folder, artifact)


def __getattr__(name: str):
    if name == "TVM_LOWERINGS":  # the table loads every family file (TVM itself only when lowering)
        from convdsl.backends.tvm.lowering import TVM_LOWERINGS

        return TVM_LOWERINGS
    raise AttributeError(name)
