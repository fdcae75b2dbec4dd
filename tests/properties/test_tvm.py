"""tvm-llvm computes what torch computes (tolerance: docs/testing.md)."""
from __future__ import annotations

import pytest
from hypothesis import given

from convdsl.verify.differential import tvm_available
from convdsl.verify.strategies import cases, single_layer_cases

from .helpers import check, examples

pytestmark = pytest.mark.skipif(not tvm_available("tvm-llvm"), reason="TVM backend not available")


@examples(ci=5, thorough=300)
@given(cases(max_statements=5))
def test_tvm_llvm_agrees_with_torch(case) -> None:
    check(case, ["tvm"], "test_tvm_llvm_agrees_with_torch")


@examples(ci=3, thorough=100)
@given(single_layer_cases())
def test_int8_layers_on_tvm_llvm_match_the_torch_simulation(case) -> None:
    check(case, ["quantize_tvm"], "test_int8_layers_on_tvm_llvm_match_the_torch_simulation")


@examples(ci=3, thorough=100)
@given(cases(max_statements=5))
def test_bf16_on_tvm_llvm_within_bf16_tolerance(case) -> None:
    check(case, ["bf16_tvm"], "test_bf16_on_tvm_llvm_within_bf16_tolerance")
