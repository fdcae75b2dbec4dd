"""The TVM lowering table: op name -> a function that emits Relax IR for one node.

The graph is lowered directly with a ``relax.BlockBuilder`` (no detour through
PyTorch): one Relax function ``main`` whose parameters are the network inputs,
one dataflow binding (or a few) per graph node, in the graph's deterministic
topological order.  The table is joined from one family file per op family
(``lower_<family>.py`` for the ops of ``convdsl/ir/ops/<family>.py``); the
entry format and the lowering context are in ``common.py``, the table's checks
in ``backends/registry.py``.  Importing this module does not import TVM;
``lower_graph`` does.

Symbolic dims (the batch ``N``) are bound to the sizes in ``graph.symbols``
(``--bind N=8``) before lowering, except those in ``dynamic`` (a dynamic batch):
they become Relax shape variables, and ``Lowerer.shape`` gives TIR expressions of
them where a dim involves one (entries see them in ``ins`` too).
"""
from __future__ import annotations

from convdsl.ir.graph import Graph, Node

from convdsl.backends.registry import LoweringTable
from convdsl.backends.tvm import (lower_attention, lower_conv, lower_elementwise, lower_fft, lower_linear, lower_misc,
                                  lower_norm, lower_pool, lower_qtransformer, lower_quant, lower_shape, lower_ssm)
from convdsl.backends.tvm.common import LowerFn, Lowerer

FAMILIES = (lower_conv, lower_linear, lower_norm, lower_elementwise, lower_pool, lower_shape, lower_attention,
            lower_fft, lower_ssm, lower_misc, lower_quant, lower_qtransformer)

TVM_LOWERINGS: LoweringTable[LowerFn] = LoweringTable("tvm", [f.LOWERINGS for f in FAMILIES])


def lower_graph(graph: Graph, target: str = "tvm-llvm", bind: dict[str, int] | None = None,
                dynamic: tuple[str, ...] = (), precision: str = "f32"):
    """convdsl graph -> Relax IRModule with one function ``main`` (weights as constants);
    the symbols in ``dynamic`` stay Relax shape variables (sizes given at run time).
    ``precision``: the build's (``Lowerer.precision``), for the lowerings that emit their own
    kernels at that precision (attention's on AMX bf16 tiles)."""
    return Lowerer(graph, TVM_LOWERINGS, target, bind, dynamic, precision).lower()


def lowering_for(node: Node, target: str = "tvm-llvm") -> LowerFn:
    return TVM_LOWERINGS.lookup(node, target)
