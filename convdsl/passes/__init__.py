"""Graph -> graph optimizations, and the named pipelines that order them.

A pass is a plain function ``Graph -> Graph``: it works on ``graph.copy()``,
returns the new graph and leaves its argument (and its parameter arrays)
untouched.  Each pass lives in its own file whose docstring states its
precondition and postcondition.  A pass that needs settings (a pruning
ratio, calibration data) is still a ``Graph -> Graph`` function once they
are bound, e.g. ``functools.partial(prune, ratio=0.5)``, and can be given to
``run_passes`` directly, next to names; ``options`` binds them to a pass
named in a pipeline.  Nothing travels on the graph: what a pass reports
comes back from a ``*_with_report`` function or into ``log``.

    g = run_passes(g, "O2")                      # a named pipeline
    g = run_passes(g, "fold_bn,dce")             # passes by name
    g = run_passes(g, ["fold_bn", my_pass], verify_each=True)
    g = run_passes(g, "int8", options={"quantize_int8": {"calib_batches": xs, "build": build_module}})
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, Sequence, Union

from convdsl.errors import IRError, UsageError, did_you_mean
from convdsl.ir.graph import Graph
from convdsl.ir.verify import verify
from convdsl.passes.const_fold import const_fold
from convdsl.passes.cse import cse
from convdsl.passes.dce import dce
from convdsl.passes.fold_bn import fold_bn
from convdsl.passes.quantize import quantize_int8
from convdsl.passes.remove_identity import remove_identity

Pass = Callable[[Graph], Graph]

# Every pass by name (what --passes accepts).
PASSES: dict[str, Pass] = {
    "fold_bn": fold_bn,
    "remove_identity": remove_identity,
    "cse": cse,
    "const_fold": const_fold,
    "dce": dce,
    "quantize_int8": quantize_int8,  # needs options: calib_batches and build (see run_passes)
    # further passes (structured pruning, casts) are added here, one line each
}

# The optimization levels (what --opt accepts), in the order the passes run.
PIPELINES: dict[str, list[str]] = {
    # no rewriting: the graph as written
    "O0": [],
    # exact clean-ups: drop no-ops (dropout included: inference) and dead nodes
    "O1": ["remove_identity", "dce"],
    # inference optimizations: fold BN into convs first, so the clean-ups see the fused graph
    "O2": ["fold_bn", "remove_identity", "cse", "const_fold", "dce"],
    # post-training int8 after O2's passes (convdsl/passes/quantize.py; needs calibration data)
    "int8": ["fold_bn", "remove_identity", "cse", "const_fold", "dce", "quantize_int8", "dce"],
}

PassSpec = Union[str, Pass, Sequence[Union[str, Pass]]]
Options = Mapping[str, Mapping[str, Any]]  # pass name -> keyword arguments


@dataclass(frozen=True)
class PassRecord:
    """What one pass of ``run_passes`` did: node and parameter counts before and after."""

    name: str
    nodes: tuple[int, int]
    params: tuple[int, int]


def resolve(spec: PassSpec, options: Options | None = None) -> list[tuple[str, Pass]]:
    """(name, function) pairs for a pipeline name, a pass name, a comma-separated
    list of them, or a sequence of names and functions; ``options`` binds keyword
    arguments to the passes it names."""
    if isinstance(spec, str):
        items: list[str | Pass] = [s.strip() for s in spec.split(",") if s.strip()]
    elif callable(spec):
        items = [spec]
    else:
        items = list(spec)
    out: list[tuple[str, Pass]] = []
    for item in items:
        if callable(item):
            out.append((pass_name(item), item))
        elif item in PIPELINES:
            out.extend((name, PASSES[name]) for name in PIPELINES[item])
        elif item in PASSES:
            out.append((item, PASSES[item]))
        else:
            raise unknown_name(str(item))
    for name in options or {}:
        if name not in PASSES:
            raise unknown_name(name)
        if name not in (n for n, _ in out):
            raise UsageError(f"options given for the pass '{name}', which is not run",
                             hint=f"the passes: {', '.join(n for n, _ in out) or 'none'}")
    return [(n, partial(fn, **options[n]) if options and n in options else fn) for n, fn in out]


def run_passes(graph: Graph, passes: PassSpec, *, verify_each: bool = False, options: Options | None = None,
               log: list[PassRecord] | None = None) -> Graph:
    """Run ``passes`` (see ``resolve``) in order on ``graph`` and return the result.

    The result is always verified; with ``verify_each`` the input and the graph
    after every pass are too, and a failure names the pass that broke it.
    ``options`` gives keyword arguments to passes by name (the int8 pipeline's
    calibration data); ``log``, a list, receives a ``PassRecord`` per pass.
    """
    steps = resolve(passes, options)
    if verify_each:
        _verify(graph, "in the graph given to run_passes, before any pass")
    g = graph
    for name, fn in steps:
        before = (len(g), g.params.count())
        out = fn(g)
        if not isinstance(out, Graph):
            raise TypeError(f"pass {name!r} returned {type(out).__name__}, not a Graph")
        if out is g:
            raise TypeError(f"pass {name!r} returned its input; passes work on graph.copy()")
        if log is not None:
            log.append(PassRecord(name, (before[0], len(out)), (before[1], out.params.count())))
        if verify_each:
            _verify(out, f"after pass '{name}'")
        g = out
    if steps and not verify_each:
        _verify(g, f"after the passes {', '.join(n for n, _ in steps)} (verify_each=True names the one)")
    return g


def pass_name(fn: Pass) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__name__", type(inner).__name__)


def unknown_name(name: str) -> UsageError:
    return UsageError(
        f"unknown pass or pipeline '{name}'",
        expected=f"a pipeline ({', '.join(PIPELINES)}) or passes ({', '.join(PASSES)})",
        got=name,
        hint=did_you_mean(name, [*PIPELINES, *PASSES]),
    )


def _verify(g: Graph, where: str) -> Graph:
    """verify(g); a failure says where in the pipeline it was found."""
    try:
        return verify(g)
    except IRError as e:
        e.notes.append(f"found by verify() {where}")
        raise


__all__ = ["PASSES", "PIPELINES", "Pass", "PassRecord", "resolve", "run_passes", "const_fold", "cse", "dce",
           "fold_bn", "remove_identity"]
