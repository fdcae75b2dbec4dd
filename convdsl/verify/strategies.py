"""Hypothesis strategies: random well-typed CDL programs (as text) and their inputs.

    from convdsl.verify.strategies import programs, cases

    @given(programs())
    def test_fmt_round_trips(p):          # p.text is CDL, p.twin an equivalent spelling
        ...

    @given(cases())
    def test_passes_preserve_outputs(case):   # a Case: program + input seed/batch/kind
        prop_passes(case)

Programs come from ``programs.generate`` driven by hypothesis draws: every
choice is a small integer shrinking towards the simplest option, so a failing
program shrinks to a few statements of plain operators.  ``focus`` limits the
pipe stages to some families of ``steps.STEPS`` (e.g. ``("conv",)``), for
tests aimed at one lowering.
"""
from __future__ import annotations

from typing import Optional, Sequence

from hypothesis import strategies as st

from convdsl.verify.draws import HypothesisDraw
from convdsl.verify.inputs import KINDS
from convdsl.verify.programs import KINDS as KINDS_OF_TENSORS
from convdsl.verify.programs import Program, generate, single_layer
from convdsl.verify.properties import Case


@st.composite
def programs(draw, max_statements: int = 8, focus: Optional[Sequence[str]] = None,
             kinds: Sequence[str] = KINDS_OF_TENSORS) -> Program:
    return generate(HypothesisDraw(draw), max_statements, focus, kinds)


def input_kinds() -> st.SearchStrategy[Optional[str]]:
    """None (the seed picks the kind) first, then each kind of values."""
    return st.sampled_from([None, *KINDS])


@st.composite
def cases(draw, max_statements: int = 8, focus: Optional[Sequence[str]] = None,
          kinds: Sequence[str] = KINDS_OF_TENSORS, batch: Optional[int] = None) -> Case:
    p = draw(programs(max_statements, focus, kinds))
    return Case(p.text, p.twin, seed=draw(st.integers(0, 2**16)), batch=batch or draw(st.integers(1, 3)),
                kind=draw(input_kinds()), weights_seed=draw(st.integers(0, 2**16)),
                expected_shapes=[t.shape for t in p.outputs])


@st.composite
def single_layer_cases(draw) -> Case:
    """One conv or linear (then maybe relu), with inputs: for the quantization bound."""
    p = single_layer(HypothesisDraw(draw))
    return Case(p.text, None, seed=draw(st.integers(0, 2**16)), batch=draw(st.integers(1, 3)),
                kind=draw(input_kinds()), weights_seed=draw(st.integers(0, 2**16)),
                expected_shapes=[t.shape for t in p.outputs])


def case_of(p: Program, seed: int = 0, batch: int = 2, kind: Optional[str] = None, weights_seed: int = 0) -> Case:
    return Case(p.text, p.twin, seed=seed, batch=batch, kind=kind, weights_seed=weights_seed,
                expected_shapes=[t.shape for t in p.outputs])
