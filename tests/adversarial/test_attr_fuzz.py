"""The op-attribute fuzzer (issue 12, must-show 3): every op of the registry, every attribute,
one at a time set to an edge value (tests/adversarial/attrfuzz.py: 0, negatives, int32 and int64
bounds, 10**400, 1e309, -1e309, NaN, 1e-300, 3.5e38, bools, strings, bare words, empty, nested
and 65-entry lists).  Every program ``check`` accepts must compile and run on torch and on
tvm-llvm; every other one must be refused with a located ``ConvDSLError`` (a documented exit
code, the source line, no traceback) — the same front end refuses it for both backends.

Per CI run (profile ``ci``): every case is checked and every accepted one runs on torch, in
process; tvm-llvm builds a sample (the base program and one accepted edge per op, batched into a few networks:
a TVM build is the cost); a sample goes through the real CLI.  HYPOTHESIS_PROFILE=thorough adds
the values between the edges (``MORE_VALUES``) and runs every accepted program on tvm-llvm.
Counts and times: docs/testing.md.
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings

import pytest

from convdsl.errors import ConvDSLError
from convdsl.ir.ops import OPS
from tests.adversarial.attrfuzz import BASES, EDGE_VALUES, MORE_VALUES, Case, batch_text, cases
from tests.adversarial.batch import Case as CliCase
from tests.adversarial.batch import run_cli_batch
from tests.adversarial.harness import EXIT_CODES, assert_no_crash, assert_refused

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
VALUES = EDGE_VALUES + (MORE_VALUES if THOROUGH else ())
TVM_PER_OP = 1  # accepted programs per op built on tvm-llvm per CI run (all of them when thorough)
TVM_BATCH = 48  # single-op programs per TVM build


def _graph(case: Case):
    """The checked graph of ``case``, or None when check refuses it, located and documented."""
    from convdsl.api import load_graph

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return load_graph(case.text())
    except ConvDSLError as e:
        assert e.span is not None, f"{case}: refused without a location: {e.render()}"
        assert e.exit_code in EXIT_CODES and e.exit_code != 0, f"{case}: exit code {e.exit_code}"
        assert f"{e.span.line}:{e.span.column}" in e.render(), f"{case}: {e.render()}"
        return None


def _run_torch(case: Case, g) -> None:
    from convdsl.verify.differential import torch_runner
    from convdsl.verify.inputs import make_inputs

    try:
        outs = torch_runner(g)(make_inputs(g, 0))
    except Exception as e:  # noqa: BLE001 - the finding: accepted by check, crashing at run time
        pytest.fail(f"check accepts {case} but torch fails: {type(e).__name__}: {str(e)[:300]}\n{case.text()}")
    assert len(outs) == len(g.output_names), case


@functools.lru_cache(maxsize=None)
def _by_op() -> dict[str, list[Case]]:
    out: dict[str, list[Case]] = {}
    for c in cases(VALUES):
        out.setdefault(c.op, []).append(c)
    return out


def _op_cases(op: str) -> list[Case]:
    return [c for c in _by_op()[op] if c.attr is not None]


def test_every_op_of_the_registry_has_a_base_program():
    assert set(BASES) == set(OPS), "add the new op to tests/adversarial/attrfuzz.py BASES"


@pytest.mark.parametrize("op", sorted(OPS))
def test_accepted_attributes_run_on_torch_and_the_rest_are_refused_located(op):
    base = Case(op, None, "")
    g = _graph(base)
    assert g is not None, f"the base program of {op} is refused: fix BASES"
    _run_torch(base, g)
    for case in _op_cases(op):
        g = _graph(case)
        if g is not None:
            _run_torch(case, g)


def _stable(case: Case) -> str:
    return hashlib.sha256(str(case).encode()).hexdigest()


def _tvm_sample(shard: int, shards: int) -> list[Case]:
    """Accepted programs for tvm-llvm: per op, TVM_PER_OP of them in a fixed pseudo-random order
    (every accepted one when thorough); ops split in ``shards`` so that workers share the builds."""
    out = []
    for i, op in enumerate(sorted(OPS)):
        if i % shards != shard:
            continue
        taken = [Case(op, None, "")]
        for case in sorted(_op_cases(op), key=_stable):
            if not THOROUGH and len(taken) > TVM_PER_OP:
                break
            if _graph(case) is not None:
                taken.append(case)
        out += taken
    return out


def _tvm_failures(batch: list[Case]) -> list[tuple[Case, str]]:
    """Build and run ``batch`` as one network on tvm-llvm; on failure, halve it to name the programs."""
    from convdsl.api import load_graph
    from convdsl.verify.differential import tvm_runner
    from convdsl.verify.inputs import make_inputs

    try:
        g = load_graph(batch_text(batch))
        outs = tvm_runner(g)(make_inputs(g, 0))
        assert len(outs) == len(batch)
        return []
    except Exception as e:  # noqa: BLE001 - located below
        if len(batch) == 1:
            return [(batch[0], f"{type(e).__name__}: {str(e)[:300]}")]
        half = len(batch) // 2
        return _tvm_failures(batch[:half]) + _tvm_failures(batch[half:])


@pytest.mark.parametrize("shard", range(3))
def test_accepted_attributes_run_on_tvm_llvm(shard):
    from convdsl.verify.differential import tvm_available

    if not tvm_available("tvm-llvm"):
        pytest.skip("TVM is not installed")
    sample = _tvm_sample(shard, 3)
    failures = []
    for i in range(0, len(sample), TVM_BATCH):
        failures += _tvm_failures(sample[i:i + TVM_BATCH])
    assert not failures, "check accepts, tvm-llvm fails:\n" + "\n".join(f"  {c}: {why}" for c, why in failures)


# ---- through the real CLI ---------------------------------------------------------------------
# One per class the fuzzer found (issue 12), refused with exit code 5 at the call; then programs
# check accepts at the edges of their domains, run by `convdsl run` on torch and tvm-llvm.
REFUSED = [
    Case("batchnorm2d", "eps", "1e309"),  # was written as bare `inf` into model.py
    Case("affine", "scale", "(1e309 - 1e309)"),  # NaN
    Case("batchnorm2d", "eps", "-0.5"),
    Case("conv_transpose2d", "pad", "-1"),
    Case("maxpool2d", "stride", "1000000000000"),
    Case("conv2d", "stride", "9223372036854775808"),
    Case("leaky_relu", "slope", "1e300"),
    Case("quantize", "scale", "1e-300"),
    Case("pos_embed", "std", "-3"),
    Case("reshape", "shape", "[" + ", ".join(["1"] * 65) + "]"),
    Case("dropout", "p", "1.5"),
]
ACCEPTED = [
    Case("vector_norm", "p", "1e309"),  # the max norm: math.inf in model.py
    Case("batchnorm2d", "eps", "0"),
    Case("maxpool2d", "stride", "2147483647"),
    Case("leaky_relu", "slope", "3e38"),
    Case("quantize", "scale", "1e-30"),
]


def test_a_sample_through_the_real_cli(tmp_path):
    runs = []
    for i, case in enumerate(REFUSED + ACCEPTED):
        path = tmp_path / f"case{i}.cdl"
        path.write_text(case.text())
        runs.append((case, path))
    cli = [CliCase("check", str(p)) for _, p in runs[:len(REFUSED)]]
    for _, p in runs[len(REFUSED):]:
        cli += [CliCase("run", str(p), "-b", "torch"), CliCase("run", str(p), "-b", "tvm-llvm")]
    results = run_cli_batch(cli, cwd=tmp_path, mem_mb=8192)  # torch and TVM in one process reserve more
    for (case, path), r in zip(runs[:len(REFUSED)], results):
        assert_refused(r, exit_code=5, location=f"{path}:2:")
        assert "expected:" in r.output, (str(case), r.output)
    for k, (case, path) in enumerate(runs[len(REFUSED):]):
        for r in results[len(REFUSED) + 2 * k: len(REFUSED) + 2 * k + 2]:
            assert_no_crash(r)
            assert r.returncode == 0, (str(case), r.args, r.output[-2000:])
