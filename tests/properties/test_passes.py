"""Every semantics-preserving pass and named pipeline preserves outputs; all-keep pruning
is the identity; quantization stays within the bound its scales imply."""
from __future__ import annotations

from hypothesis import given

from convdsl.verify.properties import semantic_passes
from convdsl.verify.strategies import cases, single_layer_cases

from .helpers import check, examples


def test_the_semantic_passes_are_known() -> None:
    names = semantic_passes()
    assert {"fold_bn", "dce", "cse", "remove_identity", "O1", "O2"} <= set(names), names


@examples(ci=25, thorough=300)
@given(cases())
def test_passes_preserve_outputs(case) -> None:
    check(case, ["passes"], "test_passes_preserve_outputs")


@examples(ci=25, thorough=300)
@given(cases())
def test_all_keep_pruning_is_the_identity(case) -> None:
    check(case, ["prune"], "test_all_keep_pruning_is_the_identity")


@examples(ci=30, thorough=500)
@given(single_layer_cases())
def test_quantization_error_is_bounded_by_its_scales(case) -> None:
    check(case, ["quantize_bound"], "test_quantization_error_is_bounded_by_its_scales")


@examples(ci=15, thorough=300)
@given(cases(max_statements=5))
def test_quantizing_any_program_verifies_and_runs(case) -> None:
    check(case, ["quantize"], "test_quantizing_any_program_verifies_and_runs")


@examples(ci=10, thorough=200)
@given(cases(max_statements=4))
def test_half_precision_stays_within_its_dtype_tolerance(case) -> None:
    check(case, ["cast"], "test_half_precision_stays_within_its_dtype_tolerance")
