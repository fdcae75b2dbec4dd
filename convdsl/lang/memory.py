"""What ``--max-memory`` bounds: the memory a run of the network may need.

A run holds the parameters, at most every tensor the network computes (the torch backend keeps
a value until its variable is reused or ``forward`` returns; TVM's memory planner never needs
more than all of them), and the working memory of the one op running (attention logits,
unfolded windows, FFT buffers: ``OpDef.workspace``).  ``MemoryBudget`` adds these up op by op
with every symbol bound to a size, and refuses the op that crosses the limit, so nothing is
allocated before the refusal:

- the elaborator charges every input and op as it makes them (sizes from ``--bind``, 1 for a
  symbol not bound);
- ``check_memory`` re-checks a whole graph at other sizes, for commands that learn them later
  (``bench --batch``, ``run --batch`` or the shapes of ``--input`` files).

A run that passes allocates at most this sum plus what the interpreter and libraries take
(tests/adversarial/test_memory.py measures it on the ops with the largest workspaces).
"""
from __future__ import annotations

import math
from typing import Mapping

from convdsl.errors import ResourceError, Span, format_bytes
from convdsl.ir.graph import Graph
from convdsl.ir.types import DTYPE_BYTES, TensorType, bind_dim

WORKSPACE_NOTE = ("attention logits, unfolded windows, FFT buffers and index tables that an op allocates while "
                  "it runs (OpDef.workspace)")
_HINT = "raise the limit with --max-memory, or use smaller sizes"


class MemoryBudget:
    """Parameters + tensors + the largest workspace so far, against ``limit`` bytes."""

    def __init__(self, limit: int, bind: Mapping[str, int] | None = None) -> None:
        self.limit = limit
        self.bind = dict(bind or {})
        self.param_bytes = 0
        self.tensor_bytes = 0
        self.workspace: tuple[int, str | None] = (0, None)  # the largest, and its op
        self._sizes: dict[str, int] = {}  # symbolic dim text -> its size (parsing it is most of the cost)
        self._bound: dict[TensorType, TensorType] = {}  # a network has few distinct types: each is bound once
        self._nbytes: dict[TensorType, int] = {}

    def size(self, d: int | str) -> int:
        """A dimension as a concrete size (a negative size counts as 0)."""
        if isinstance(d, int):
            return max(0, d)
        n = self._sizes.get(d)
        if n is None:
            n = self._sizes[d] = max(0, bind_dim(d, self.bind))
        return n

    def bound(self, t: TensorType) -> TensorType:
        """``t`` with every dimension a concrete size (a negative size counts as 0)."""
        b = self._bound.get(t)
        if b is None:
            b = self._bound[t] = TensorType(tuple(self.size(d) for d in t.shape), t.dtype)
        return b

    def nbytes(self, t: TensorType) -> int:
        n = self._nbytes.get(t)
        if n is None:
            n = self._nbytes[t] = math.prod(self.size(d) for d in t.shape) * DTYPE_BYTES.get(t.dtype, 4)
        return n

    @property
    def total(self) -> int:
        return self.param_bytes + self.tensor_bytes + self.workspace[0]

    def add(self, types: list[TensorType], param_bytes: int, workspace: int, span: Span | None, what: str,
            op: str | None = None) -> None:
        """Charge new tensors (``types``), parameters and an op's workspace; ``ResourceError``
        at ``span`` when one of them alone, or the running total, is over the limit."""
        limit = self.limit
        sizes = [self.nbytes(t) for t in types]
        for t, n in zip(types, sizes):
            if n > limit:
                raise ResourceError(f"{what} {t} would take {format_bytes(n)}, over the limit of {format_bytes(limit)}",
                                    span, hint=_HINT)
        if workspace > limit:
            raise ResourceError(f"{op} would need {format_bytes(workspace)} of working memory at run time, over the "
                                f"limit of {format_bytes(limit)}", span, notes=["besides its output: " + WORKSPACE_NOTE],
                                hint=_HINT)
        self.param_bytes += param_bytes
        if self.param_bytes > limit:
            raise ResourceError(f"parameters would take {format_bytes(self.param_bytes)}, over the limit of "
                                f"{format_bytes(limit)}", span, hint="raise the limit with --max-memory, or shrink the network")
        self.tensor_bytes += sum(sizes)
        if workspace > self.workspace[0]:
            self.workspace = (workspace, op)
        if self.total > limit:
            ws, ws_op = self.workspace
            raise ResourceError(
                f"the network would need {format_bytes(self.total)} at run time, over the limit of {format_bytes(limit)}",
                span, notes=[f"parameters {format_bytes(self.param_bytes)} + tensors {format_bytes(self.tensor_bytes)} "
                             "(every input and op output so far: a run may hold them all)"
                             + (f" + working memory of {ws_op} {format_bytes(ws)}" if ws else "")], hint=_HINT)


def check_memory(graph: Graph, bind: Mapping[str, int], limit: int) -> int:
    """The bytes a run of ``graph`` may need with its symbols bound by ``bind`` (the graph's own
    bindings for the others); ``ResourceError`` at the node that crosses ``limit``."""
    from convdsl.ir.ops import OPS

    budget = MemoryBudget(limit, {**graph.symbols, **bind})
    seen: set[str] = set()  # parameters shared by several nodes count once
    for node in graph.nodes():
        if node.op == "input":
            budget.add(list(node.types), 0, 0, node.span, f"input {node.id}")
            continue
        op = OPS[node.op]
        ins = graph.in_types(node.id)
        params = 0
        for key in node.params.values():
            if key not in seen:
                seen.add(key)
                spec = graph.params.specs[key]
                params += budget.nbytes(TensorType(tuple(spec.shape), spec.dtype))
        workspace = op.workspace(node.attrs, [budget.bound(t) for t in ins], [budget.bound(t) for t in node.types])
        budget.add(list(node.types), params, workspace, node.span, f"output of {node.op}", node.op)
    return budget.total
