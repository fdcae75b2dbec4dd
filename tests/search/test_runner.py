"""The search loop and its history, with an executor that makes results up (no training)."""
from __future__ import annotations

import json

import pytest

from convdsl.errors import UsageError
from convdsl.search import Search, SearchConfig, Store, write_report

from .fakes import FakeExecutor
from .spaces import TINY


def config(tmp_path, **kw) -> SearchConfig:
    path = tmp_path / "tiny.cdl"
    path.write_text(TINY)
    base = dict(space_file=str(path), space_text=TINY, budget=10, objective=("accuracy", "params"),
                population=4, sample=2, lag=1, epochs=1)
    base.update(kw)
    return SearchConfig(**base)


def run(folder, cfg, executor=None, **kw) -> list[tuple]:
    s = Search.create(folder, cfg)
    s.run(executor or FakeExecutor(2), **kw)
    rows = [(r.id, r.hash, r.val_acc, r.parent, r.operator) for r in s.store.rows("kind = 'search'")]
    s.close()
    return rows


def test_a_search_fills_its_budget_and_stores_everything(tmp_path):
    rows = run(tmp_path / "a", config(tmp_path))
    assert [r[0] for r in rows] == list(range(10))
    assert len({r[1] for r in rows}) == 10  # no program evaluated twice
    assert {r[4] for r in rows[:4]} == {"sample"} and all(r[3] is not None for r in rows[4:])
    store = Store(tmp_path / "a")
    assert store.count(status="done") == 10 and store.integrity() == "ok"
    assert all(r.attempts == 1 and r.finished >= r.started for r in store.rows())
    summary = write_report(store, plot=False)
    assert summary["counts"]["done"] == 10
    front = summary["front"]
    assert front and all((tmp_path / "a" / f["file"]).exists() for f in front)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["counts"]["proposed"] == 10


@pytest.mark.slow
def test_the_programs_do_not_depend_on_the_order_results_arrive(tmp_path):
    a = run(tmp_path / "a", config(tmp_path), FakeExecutor(2))
    b = run(tmp_path / "b", config(tmp_path), FakeExecutor(1))  # another finishing order
    assert a == b
    c = run(tmp_path / "c", config(tmp_path, seed=1), FakeExecutor(2))
    assert [r[1] for r in c] != [r[1] for r in a]


@pytest.mark.slow
def test_a_stopped_search_resumes_to_the_same_history(tmp_path):
    full = run(tmp_path / "full", config(tmp_path))
    s = Search.create(tmp_path / "part", config(tmp_path))
    s.run(FakeExecutor(2, delay=0.05), stop_after=0.15, drain=False)  # stops with evaluations in flight
    done_before = {r.id: (r.hash, r.finished) for r in s.store.rows("status = 'done'")}
    assert 0 < len(done_before) < 10 and s.store.count(status="running") > 0
    s.close()
    s = Search.open(tmp_path / "part")
    ex = FakeExecutor(2)
    s.run(ex)
    rows = s.store.rows("kind = 'search'")
    assert [(r.id, r.hash, r.val_acc, r.parent, r.operator) for r in rows] == full
    for r in rows:  # finished ones were neither repeated nor rewritten
        if r.id in done_before:
            assert (r.hash, r.finished) == done_before[r.id] and r.id not in ex.submitted
    assert s.store.events()[-2]["what"] == "resume"
    s.close()


def test_a_time_limit_lets_evaluations_in_flight_finish(tmp_path):
    s = Search.create(tmp_path / "a", config(tmp_path))
    s.run(FakeExecutor(2, delay=0.05), stop_after=0.15)
    assert s.store.count(status="running") == 0 and 0 < s.store.count(status="done") < 10
    s.close()


def test_a_crashed_worker_is_retried(tmp_path):
    s = Search.create(tmp_path / "a", config(tmp_path, budget=4))
    s.run(FakeExecutor(1, crash=(2,)))
    r = s.store.row(2)
    assert r.status == "done" and r.attempts == 2
    s.close()


def test_references_are_measured_like_candidates(tmp_path):
    ref = "network ref(image: f32[N, 1, 8, 8], classes=10) {\n    return image | flatten | linear(classes)\n}\n"
    cfg = config(tmp_path, budget=2, references=[{"name": "linear", "file": str(tmp_path / "ref.cdl"), "text": ref}])
    s = Search.create(tmp_path / "a", cfg)
    ex = FakeExecutor(1)
    s.run(ex)
    assert ex.submitted[0] == -1  # references first
    r = s.store.row(-1)
    assert r.kind == "reference" and r.name == "linear" and r.status == "done"
    assert s.store.count() == 2  # not part of the budget
    summary = write_report(s.store, plot=False)
    assert summary["references"][0]["name"] == "linear"
    s.close()


def test_one_search_per_folder(tmp_path):
    s = Search.create(tmp_path / "a", config(tmp_path))
    with pytest.raises(UsageError, match="another search"):
        Search.open(tmp_path / "a")
    with pytest.raises(UsageError, match="another search"):
        Search.create(tmp_path / "a", config(tmp_path))
    s.close()
    with pytest.raises(UsageError, match="already holds"):
        Search.create(tmp_path / "a", config(tmp_path))
    Search.open(tmp_path / "a").close()  # free again


def test_a_larger_budget_on_resume(tmp_path):
    run(tmp_path / "a", config(tmp_path, budget=5))
    s = Search.open(tmp_path / "a", budget=7)
    s.run(FakeExecutor(2))
    assert s.store.count(status="done") == 7
    s.close()
    with pytest.raises(UsageError, match="below"):
        Search.open(tmp_path / "a", budget=3)


def test_finish_only_moves_a_running_candidate(tmp_path):
    s = Search.create(tmp_path / "a", config(tmp_path, budget=1))
    s.run(FakeExecutor(1))
    assert not s.store.finish(0, {"status": "done", "val_acc": 0.0})
    assert s.store.row(0).val_acc != 0.0
    s.close()


def test_bad_configurations_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="objective"):
        Search.create(tmp_path / "a", config(tmp_path, objective=("accuracy", "flops")))
    with pytest.raises(UsageError, match="strategy"):
        Search.create(tmp_path / "b", config(tmp_path, strategy="grid"))
