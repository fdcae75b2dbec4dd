"""fmt round-trips on random programs; print_graph(IR) re-elaborates to an equivalent graph."""
from __future__ import annotations

from hypothesis import given

from convdsl.verify.strategies import cases

from .helpers import check, examples


@examples(ci=60, thorough=500)
@given(cases())
def test_fmt_is_idempotent_and_round_trips(case) -> None:
    check(case, ["fmt"], "test_fmt_is_idempotent_and_round_trips")


@examples(ci=30, thorough=300)
@given(cases())
def test_printed_ir_re_elaborates_to_an_equivalent_graph(case) -> None:
    check(case, ["reprint"], "test_printed_ir_re_elaborates_to_an_equivalent_graph")
