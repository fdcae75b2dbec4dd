"""Tuning: MetaSchedule records go to a database keyed by workload; a second compile
(of the same network, or another with the same layer) reuses them and tunes nothing."""
from __future__ import annotations

import numpy as np

from convdsl.backends.tvm import backend

from .conftest import assert_close, graph_of, random_inputs, torch_outputs

NET = """
network tiny(x: f32[N, 4, 6, 6]) {
    return x | conv2d(4, 3, pad=1) | relu
}
"""
# the same conv layer inside another network: its kernel is the same workload
OTHER = """
network other(x: f32[N, 4, 6, 6]) {
    y = x | conv2d(4, 3, pad=1) | relu
    return y | global_avgpool
}
"""


def test_second_compile_reuses_the_database(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVDSL_TUNING_DB", str(tmp_path / "db"))  # the default location, moved
    g = graph_of(NET)
    first = backend("tvm-llvm", tune=2, progress=False).build(g)
    r = first.tuning
    assert r.tasks >= 1 and r.tuned == r.tasks and r.reused == 0 and r.trials > 0
    assert r.db.startswith(str(tmp_path / "db"))
    assert first.scheduled >= 1  # the tuned schedules are applied

    again = backend("tvm-llvm", tune=2, progress=False).build(g)
    assert again.tuning.tuned == 0 and again.tuning.trials == 0 and again.tuning.reused == r.tasks
    assert again.scheduled == first.scheduled

    other = backend("tvm-llvm").build(graph_of(OTHER))
    assert other.scheduled >= 1  # the conv kernel's record serves the other network

    # a plain compile applies the records too; --no-db does not
    plain = backend("tvm-llvm").build(g)
    assert plain.scheduled == first.scheduled and plain.tuning is None
    assert backend("tvm-llvm", use_db=False).build(g).scheduled == 0

    # tuned code computes the same function
    xs = random_inputs(g)
    run = backend("tvm-llvm")._runner_for(again, g)
    assert_close(run(xs), torch_outputs(g, xs))
    assert np.isfinite(run(xs)[0]).all()
