"""Pareto ranking, regularized evolution and random search on made-up results."""
from __future__ import annotations

import pytest

from convdsl.search.evolution import (RandomSearch, RegularizedEvolution, dominates, nondominated_ranks,
                                      pareto_front)
from convdsl.search.space import SearchSpace
from convdsl.search.store import Row

from .spaces import TINY


def row(i: int, acc: float, params: int, program: str = "", selection=None, status: str = "done") -> Row:
    return Row(id=i, kind="search", name=None, parent=None, operator=None, detail=None, program=program,
               selection=selection or {}, text="", hash=str(i), graph_hash=str(i), active=[], status=status, attempts=1,
               cached_from=None, created=0.0, started=0.0, finished=0.0, worker=None, val_acc=acc, val_loss=0.0,
               params=params, macs=params, latency_ms=params / 1000, latency_wall_ms=None, latency_cpu_ms=None,
               train_seconds=None, seconds=None, history=None, error=None)


def test_dominance_and_ranks():
    assert dominates((0, 0), (1, 0)) and not dominates((0, 0), (0, 0)) and not dominates((0, 1), (1, 0))
    pts = [(-0.9, 100), (-0.95, 200), (-0.9, 150), (-0.8, 300), (-0.97, 1000)]
    assert nondominated_ranks(pts) == [0, 0, 1, 2, 0]


def test_front_keeps_the_trade_off_sorted_by_cost():
    rows = [row(0, 0.90, 100), row(1, 0.95, 200), row(2, 0.90, 150), row(3, 0.97, 1000), row(4, 0.95, 200)]
    front = pareto_front(rows, ("accuracy", "params"))
    assert [r.id for r in front] == [0, 1, 3]  # #4 equals #1: the first is kept
    assert [r.id for r in pareto_front(rows, ("accuracy",))] == [3]


def test_evolution_seeds_the_population_then_mutates_tournament_winners():
    space = SearchSpace(TINY, "<tiny>")
    evo = RegularizedEvolution(space, seed=0, objective=("accuracy", "params"), population=4, sample=2, lag=1)
    assert evo.ready(3, lambda i: False)  # seeding needs no results
    assert not evo.ready(4, lambda i: False) and evo.ready(4, lambda i: i <= 2)
    rows, known = [], {}
    for i in range(4):
        p = evo.propose(i, rows, known)
        assert p.operator == "sample" and p.parent is None
        known[p.checked.graph_hash] = i
        g = p.checked.genotype
        rows.append(row(i, 0.5 + 0.1 * i, p.checked.params, g.program, g.selection))
    p = evo.propose(4, rows, known)
    assert p.parent in (0, 1, 2) and p.operator not in (None, "sample")  # #3 is not visible yet (lag 1)
    assert p.checked.graph_hash not in known
    # the same seed and history give the same child; another seed usually another
    again = RegularizedEvolution(space, seed=0, objective=("accuracy", "params"), population=4, sample=2, lag=1)
    assert again.propose(4, rows, known).checked.graph_hash == p.checked.graph_hash


def test_aging_keeps_only_the_most_recent():
    space = SearchSpace(TINY, "<tiny>")
    evo = RegularizedEvolution(space, seed=0, objective=("accuracy",), population=3, sample=3, lag=0)
    rows = [row(i, a, 10) for i, a in enumerate([0.99, 0.5, 0.6, 0.7, 0.4])]
    assert [r.id for r in evo.visible(5, rows)] == [2, 3, 4]  # the best (#0) has aged out
    rows[3].status = "failed"
    assert [r.id for r in evo.visible(5, rows)] == [1, 2, 4]


@pytest.mark.slow
def test_random_search_draws_new_programs():
    space = SearchSpace(TINY, "<tiny>")
    rs = RandomSearch(space, seed=1)
    known: dict[str, int] = {}
    for i in range(12):  # exactly the size of the space
        p = rs.propose(i, [], known)
        assert p.duplicate_of is None
        known[p.checked.graph_hash] = i
    p = rs.propose(12, [], known)  # nothing new is left: a repeat, after counted tries
    assert p.duplicate_of is not None and len(p.rejected) == rs.max_tries
    assert all(r["reason"] == "duplicate" for r in p.rejected)


def test_random_search_is_deterministic_per_seed():
    space = SearchSpace(TINY, "<tiny>")
    a = [RandomSearch(space, seed=5).propose(i, [], {}).checked.graph_hash for i in range(4)]
    b = [RandomSearch(space, seed=5).propose(i, [], {}).checked.graph_hash for i in range(4)]
    assert a == b
