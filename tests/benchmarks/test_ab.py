"""benchmarks/ab.py: what each tree's processes run with."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from ab import tree_env  # noqa: E402


def test_a_plain_tree_is_only_put_first_on_the_path() -> None:
    base = {"PATH": "/bin", "CONVDSL_TOPHUB": "on"}
    assert tree_env("/src/a", base) == {"PATH": "/bin", "CONVDSL_TOPHUB": "on", "PYTHONPATH": "/src/a"}
    assert base == {"PATH": "/bin", "CONVDSL_TOPHUB": "on"}  # the caller's environment is not changed


def test_settings_turn_the_database_off_and_set_variables() -> None:
    env = tree_env("/src/a@off,GLIBC_TUNABLES=glibc.malloc.hugetlb=1,TVM_THREAD_POOL_SPIN_COUNT=0", {})
    assert env == {"PYTHONPATH": "/src/a", "CONVDSL_TOPHUB": "off",
                   "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "TVM_THREAD_POOL_SPIN_COUNT": "0"}


@pytest.mark.parametrize("tree", ["/src/a@of", "/src/a@=1", "/src/a@A B=1"])
def test_a_setting_that_is_neither_off_nor_a_variable_is_refused(tree) -> None:
    with pytest.raises(SystemExit, match="a setting is 'off' or NAME=VALUE"):
        tree_env(tree, {})
