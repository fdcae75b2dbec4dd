"""The generator itself: every program it makes is valid CDL with the shapes it
predicts, its twin lines up parameter by parameter, it covers the op table, and
shrinking gives minimal programs."""
from __future__ import annotations

import collections
import warnings

from hypothesis import find, given, settings

from convdsl.api import load_graph
from convdsl.ir.ops import OPS
from convdsl.verify.draws import RandomDraw
from convdsl.verify.programs import generate
from convdsl.verify.strategies import cases, programs

from .helpers import check, examples

# ops the generator does not write, and why
NOT_GENERATED = {
    "batchnorm1d": "written as batchnorm (the twins use batchnorm1d/2d/3d)",
}


@examples(ci=60, thorough=500)
@given(cases())
def test_generated_programs_elaborate_with_the_predicted_shapes(case) -> None:
    check(case, ["elaborate"], "test_generated_programs_elaborate_with_the_predicted_shapes")
    g, twin = load_graph(case.text), load_graph(case.twin)
    assert [t.shape for t in twin.output_types()] == [t.shape for t in g.output_types()]
    assert [s.shape for s in twin.params.specs.values()] == [s.shape for s in g.params.specs.values()]


def test_the_generator_covers_the_op_table() -> None:
    seen: collections.Counter = collections.Counter()
    for seed in range(300):
        p = generate(RandomDraw(seed))
        seen.update(n.op for n in load_graph(p.twin).nodes())
        seen.update(n.op for n in load_graph(p.text).nodes())
    missing = sorted(set(OPS) - set(seen) - set(NOT_GENERATED))
    core = {"conv1d", "conv2d", "conv3d", "conv_transpose2d", "batchnorm", "groupnorm", "layernorm", "mhsa",
            "cross_attention", "global_filter", "fft_conv", "s4d", "selective_scan", "concat", "split", "add",
            "matmul", "reshape", "permute", "flatten", "upsample", "pad"}
    assert core <= set(seen), f"never generated: {sorted(core - set(seen))}"
    assert any(op.startswith("maxpool") for op in seen) and any(op.startswith("avgpool") for op in seen)
    if missing:  # a new op in the table: teach steps.py to generate it
        warnings.warn(f"ops never generated in 300 programs: {missing}", stacklevel=1)


def test_programs_shrink_to_a_minimal_program() -> None:
    """Ask for a program that uses circular conv padding: hypothesis finds one and shrinks
    it to one statement of one stage."""
    p = find(programs(focus=("conv",), kinds=("img",)), lambda p: "pad_mode=circular" in p.text,
             settings=settings(max_examples=2000, database=None, derandomize=True))
    lines = [l for l in p.text.splitlines() if l.strip().startswith("t")]
    assert len(lines) == 1, p.text
    assert "block" not in p.text and "#" not in p.text, p.text


def test_random_draws_are_reproducible() -> None:
    assert generate(RandomDraw(7)).text == generate(RandomDraw(7)).text
