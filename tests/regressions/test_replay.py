"""Replays every saved regression program (tests/regressions/*.cdl) with the checks its
header names.  A file with an ``# xfail:`` line is a known bug outside convdsl.verify,
kept (and reported) until it is fixed; when it starts passing, the xfail must go.  A file
with an ``# expect-error:`` line is a program that must be refused at elaboration (a bug
fixed by refusing it): the replay checks the error first, then runs its checks.  A file with an
``# expect-unsupported:`` line is a program on which a property must decline to judge, with a
reason containing that text (a false alarm fixed by recognising when no implementation can meet
the tolerance): the replay checks that the property declines, and for that reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from convdsl.verify import regressions
from convdsl.verify.differential import tvm_available
from convdsl.verify.properties import PROPERTIES, Unsupported

HERE = Path(__file__).resolve().parent
FILES = sorted(HERE.glob("*.cdl"))
DEFAULT = ["elaborate", "runs", "fmt", "reprint", "standalone", "twin", "passes", "prune", "export", "tvm", "quantize",
           "cast"]


def _params():
    for path in FILES:
        _, _, xfail = regressions.load(path)
        marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
        yield pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", list(_params()))
def test_regression(path: Path) -> None:
    case, checks, _ = regressions.load(path)
    expected = regressions.header(path).get("expect-error")
    if expected:
        regressions.check_refused(case, expected)
    unsupported = regressions.header(path).get("expect-unsupported")
    declined = []
    names = DEFAULT if checks == ["all"] else checks
    for name in names:
        if name in ("tvm", "quantize_tvm", "bf16_tvm") and not tvm_available("tvm-llvm"):
            continue
        try:
            PROPERTIES[name](case)
        except Unsupported as e:
            if not unsupported or unsupported not in str(e):
                raise
            declined.append(name)
    assert not unsupported or declined, f"no property declined with {unsupported!r}"


def test_regression_files_are_readable() -> None:
    for path in FILES:
        case, checks, _ = regressions.load(path)
        assert all(c == "all" or c in PROPERTIES for c in checks), (path.name, checks)
        assert "network" in case.text
