"""The op registry is complete: every op has everything an op needs, where the layout says.

Per op (``gaps`` names what is missing):

- a doc and an example that elaborates on its ``example_inputs`` (convdsl/ir/ops/<family>.py);
- a torch and a TVM lowering, or a stated reason (backends/<backend>/lower_<family>.py), and an
  ONNX export the same way when the optional ``onnx`` package is installed (the ``onnx`` extra);
- a pruning behaviour: ``OpDef.prune`` is keep_channels (data), PRUNE_RULE with a rule in
  passes/prune/couplings.py and apply.py, or opaque(why);
- an independent check by ``verify``: a random-program step draws it, or
  verify/programs.py's ``NOT_DRAWN`` says why not.

The TVM tables load without TVM (a subprocess that cannot import it runs the same check), and
the checks do fail when a piece is missing: a table without one lowering, a duplicate, an entry
for an op that does not exist.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from convdsl.backends.registry import LoweringTable, Lowerings
from convdsl.errors import ConvDSLError
from convdsl.ir.opdocs import example_program
from convdsl.ir.ops import FAMILY, OPS
from convdsl.ir.optable import PRUNE_RULE, keep_channels
from convdsl.ir.registry import RegistryError
from convdsl.lang.elaborate import elaborate
from convdsl.passes.prune.apply import APPLY
from convdsl.passes.prune.couplings import COUPLINGS
from convdsl.verify.draws import RandomDraw
from convdsl.verify.programs import NOT_DRAWN, generate, single_layer

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = 1000  # seeded random programs (about a second): enough to draw every drawable op


@cache
def drawn_ops() -> frozenset[str]:
    seen: set[str] = set()
    for seed in range(PROGRAMS):
        seen |= generate(RandomDraw(seed)).ops | single_layer(RandomDraw(seed)).ops
    return frozenset(seen)


def tables() -> dict[str, LoweringTable]:
    from convdsl.backends.torch.lowering import TORCH_LOWERINGS
    from convdsl.backends.tvm.lowering import TVM_LOWERINGS

    out = {"torch": TORCH_LOWERINGS, "tvm": TVM_LOWERINGS}
    try:
        from convdsl.backends.onnx.lowering import ONNX_EXPORTS
    except ImportError:  # the onnx extra is not installed: no ONNX backend to check
        return out
    return {**out, "onnx": ONNX_EXPORTS}


def gaps(ops=OPS, lowerings: dict[str, LoweringTable] | None = None) -> dict[str, list[str]]:
    """op name -> the pieces it lacks (only ops that lack something)."""
    lowerings = tables() if lowerings is None else lowerings
    drawn = drawn_ops()
    out: dict[str, list[str]] = {}
    for name, op in ops.items():
        family = FAMILY.get(name, "?")
        missing = []
        if not op.doc:
            missing.append(f"doc (convdsl/ir/ops/{family}.py)")
        if not op.example:
            missing.append("example")
        else:
            try:
                elaborate(example_program(op))
            except ConvDSLError as e:
                missing.append(f"an example that elaborates ({e.message})")
        for backend, table in lowerings.items():
            if name not in table and name not in table.skipped:
                missing.append(f"{backend} lowering or a stated reason (backends/{backend}/lower_{family}.py)")
        if op.prune is None:
            missing.append("a pruning behaviour (OpDef.prune: keep_channels, PRUNE_RULE or opaque)")
        elif op.prune.kind == "rule":
            if name not in COUPLINGS:
                missing.append("a coupling rule (convdsl/passes/prune/couplings.py)")
            if name not in APPLY:
                missing.append("a removal rule (convdsl/passes/prune/apply.py)")
        if name not in drawn and name not in NOT_DRAWN:
            missing.append("a random-program step (convdsl/verify/steps.py) or a reason in verify/programs.py NOT_DRAWN")
        if missing:
            out[name] = missing
    return out


def test_every_op_is_complete():
    found = gaps()
    assert not found, "ops with missing pieces:\n" + "\n".join(f"  {op}: {', '.join(m)}" for op, m in found.items())


def test_not_drawn_lists_only_ops_the_programs_never_draw():
    assert set(NOT_DRAWN) <= set(OPS), set(NOT_DRAWN) - set(OPS)
    assert not set(NOT_DRAWN) & drawn_ops(), "drawn after all: " + ", ".join(sorted(set(NOT_DRAWN) & drawn_ops()))


@pytest.mark.slow
def test_the_check_runs_without_tvm():
    """A process that cannot import TVM loads both lowering tables and finds nothing missing."""
    code = (
        "import json, sys\n"
        "class NoTVM:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tvm', 'tvm_ffi'):\n"
        "            raise ImportError('no TVM here: ' + name)\n"
        "sys.meta_path.insert(0, NoTVM())\n"
        "from tests.test_op_registry import gaps\n"
        "print(json.dumps({'gaps': gaps(), 'tvm_imported': 'tvm' in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"gaps": {}, "tvm_imported": False}


# ---- the checks fail when a piece is missing ------------------------------------------------------
def test_a_table_without_one_lowering_names_the_op_and_the_file():
    broken = {**tables(), "torch": tables()["torch"].without("conv2d")}
    assert gaps(lowerings=broken) == {"conv2d": ["torch lowering or a stated reason (backends/torch/lower_conv.py)"]}
    assert broken["torch"].missing() == ["conv2d"]


def test_a_stated_reason_counts():
    fam = Lowerings("torch", "conv")
    fam.skip("conv3d", "no 3-D kernels on this backend")
    table = LoweringTable("torch", [fam])
    assert "conv3d" not in table.missing() and "conv2d" in table.missing()


def test_an_op_without_pruning_behaviour_or_rule_is_named():
    ops = dict(OPS)
    ops["relu"] = dataclasses.replace(OPS["relu"], prune=None)
    ops["softmax"] = dataclasses.replace(OPS["softmax"], prune=PRUNE_RULE)  # marked, but no rule registered
    found = gaps(ops={k: ops[k] for k in ("relu", "softmax", "conv2d")})
    assert found == {"relu": ["a pruning behaviour (OpDef.prune: keep_channels, PRUNE_RULE or opaque)"],
                     "softmax": ["a coupling rule (convdsl/passes/prune/couplings.py)",
                                 "a removal rule (convdsl/passes/prune/apply.py)"]}


def test_an_example_that_does_not_elaborate_is_named():
    op = dataclasses.replace(OPS["conv1d"], example_inputs="x: f32[N, 64, 14, 14]")  # a 1-D conv on an image
    (gap,) = gaps(ops={"conv1d": op})["conv1d"]
    assert gap.startswith("an example that elaborates") and "rank-3" in gap


def test_tables_refuse_duplicates_unknown_ops_and_the_wrong_family():
    fam = Lowerings("torch", "conv")
    fam.add("conv2d", object())
    with pytest.raises(RegistryError, match="given twice"):
        fam.add("conv2d", object())
    with pytest.raises(RegistryError, match="not an op.*conv2d"):
        fam.add("conv2dd", object())
    with pytest.raises(RegistryError, match="elementwise.py.*lower_elementwise.py"):
        fam.add("relu", object())
    with pytest.raises(RegistryError, match="given twice"):  # one op from two family tables
        LoweringTable("torch", [fam, fam])
    with pytest.raises(RegistryError, match="PRUNE_RULE"):  # relu's channels are data on its OpDef
        COUPLINGS.add("relu", lambda b, node: None)
    assert OPS["relu"].prune == keep_channels()
