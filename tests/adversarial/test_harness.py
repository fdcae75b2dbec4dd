"""The harness itself must catch what it is for: tracebacks, hangs, memory bombs, stray files."""
from __future__ import annotations

import pytest

from tests.adversarial.harness import (Result, assert_no_crash, assert_only_changed, assert_refused, run_cli,
                                       tree_state)


@pytest.mark.slow
def test_a_clean_refusal_passes(tmp_path):
    f = tmp_path / "bad.cdl"
    f.write_text("network n(x: f32[N, 3, 8, 8]) {\n  return x | rleu\n}\n")
    r = run_cli("check", f, cwd=tmp_path)
    assert_refused(r, exit_code=4, location=f"{f}:2:14")


def test_the_checks_fail_on_a_traceback_a_signal_and_a_timeout():
    with pytest.raises(AssertionError, match="traceback"):
        assert_no_crash(Result([], 1, "", "Traceback (most recent call last):\n  ...", 0.1))
    with pytest.raises(AssertionError, match="signal"):
        assert_no_crash(Result([], -9, "", "", 0.1))
    with pytest.raises(AssertionError, match="in time"):
        assert_no_crash(Result([], None, "", "", 60))
    with pytest.raises(AssertionError, match="not a documented code"):
        assert_no_crash(Result([], 42, "", "", 0.1))


def test_tree_state_sees_every_change(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "out").mkdir()
    before = tree_state(tmp_path)
    (tmp_path / "out" / "x").write_text("x")
    assert_only_changed(before, tree_state(tmp_path), allowed=("out",))
    (tmp_path / "a.txt").chmod(0o600)
    with pytest.raises(AssertionError, match="a.txt"):
        assert_only_changed(before, tree_state(tmp_path), allowed=("out",))
