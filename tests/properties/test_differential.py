"""All properties on each program: the thorough run (HYPOTHESIS_PROFILE=thorough) uses
this test for its 2,000+ programs; torch.export and tvm-llvm run on every 10th program."""
from __future__ import annotations

import zlib

from hypothesis import given

from convdsl.verify.differential import tvm_available
from convdsl.verify.strategies import cases

from .helpers import check, examples

CHEAP = ["elaborate", "runs", "fmt", "reprint", "standalone", "twin", "passes", "prune", "quantize", "cast"]


@examples(ci=8, thorough=2000)
@given(cases())
def test_all_properties(case) -> None:
    names = list(CHEAP)
    sample = zlib.crc32(case.text.encode()) % 10 == 0
    if sample:
        names.append("export")
        if tvm_available("tvm-llvm"):
            names.append("tvm")
    check(case, names, "test_all_properties")
