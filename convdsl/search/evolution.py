"""Search strategies: regularized evolution with a Pareto front, and random search.

Regularized evolution (Real, Aggarwal, Huang, Le, "Regularized Evolution for Image Classifier
Architecture Search", AAAI 2019): a population of the P most recent evaluated candidates; each
child mutates the winner of a tournament of S candidates drawn from it, and the oldest leaves
the population as the child enters (aging).  With two objectives (accuracy up, a cost down) the
tournament winner is the one of lowest non-domination rank in the population (NSGA-II's
ranking; ties: higher accuracy, then lower cost).

Determinism: candidate ``i`` is proposed with its own generator ``Random(f"{seed}:{i}")`` from
the results of candidates ``0 .. i-1-lag`` only (``lag`` = workers - 1, fixed when the search
starts), so the sequence of programs does not depend on which worker finishes first, and a
resumed search proposes exactly what the uninterrupted one would have.  Random search draws
every choice uniformly; it never needs a result.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from convdsl.search.mutate import OPERATORS, NoSite, mutate
from convdsl.search.space import Checked, Genotype, Rejected, SearchSpace
from convdsl.search.store import Row

STRATEGIES = ("evolution", "random")
COSTS = ("latency", "params", "macs")


# ---- Pareto ---------------------------------------------------------------------------------
def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is no worse than b everywhere and better somewhere (every objective minimized)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """0 for the Pareto front, 1 for the front once it is removed, ... (minimization)."""
    n = len(points)
    ranks = [-1] * n
    left = set(range(n))
    r = 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = r
        left -= front
        r += 1
    return ranks


def objectives(row: Row, objective: Sequence[str]) -> tuple[float, ...]:
    """The minimized vector of a candidate: (-accuracy, cost...)."""
    out = []
    for name in objective:
        v = row.metric(name)
        v = float("inf") if v is None else float(v)
        out.append(-v if name == "accuracy" else v)
    return tuple(out)


def pareto_front(rows: Sequence[Row], objective: Sequence[str]) -> list[Row]:
    """Non-dominated rows, by increasing cost; of equal points the first (lowest id) is kept."""
    pts = [objectives(r, objective) for r in rows]
    front, seen = [], set()
    for i, r in enumerate(rows):
        if pts[i] in seen or any(dominates(pts[j], pts[i]) for j in range(len(rows)) if j != i):
            continue
        seen.add(pts[i])
        front.append(r)
    return sorted(front, key=lambda r: tuple(reversed(objectives(r, objective))))


# ---- proposals ------------------------------------------------------------------------------
@dataclass
class Proposal:
    checked: Checked
    parent: int | None = None
    operator: str | None = None
    detail: str | None = None
    rejected: list[dict] = field(default_factory=list)
    duplicate_of: int | None = None  # the search gave up finding a new program: reuse that result


class Strategy:
    name = "?"

    def __init__(self, space: SearchSpace, seed: int, max_tries: int = 50) -> None:
        self.space = space
        self.seed = seed
        self.max_tries = max_tries

    def rng(self, i: int) -> random.Random:
        return random.Random(f"{self.seed}:{i}")

    def ready(self, i: int, finished_through) -> bool:
        return True

    def propose(self, i: int, rows: list[Row], known: dict[str, int]) -> Proposal:
        raise NotImplementedError

    def _sampled(self, rng: random.Random, known: dict[str, int], rejected: list[dict]) -> Proposal:
        """A random point of the space that is new (or, after max_tries, a repeat)."""
        last: Checked | None = None
        for _ in range(self.max_tries):
            g = self.space.sample(rng)
            try:
                c = self.space.check(g)
            except Rejected as e:
                rejected.append({"operator": "sample", "reason": e.reason, "error": e.message, "text": e.text})
                continue
            if c.graph_hash not in known:
                return Proposal(c, operator="sample", rejected=rejected)
            last = c
            rejected.append({"operator": "sample", "reason": "duplicate", "error": f"same network as #{known[c.graph_hash]}"})
        if last is None:  # nothing valid at all: the space's first options, checked (raises if invalid)
            last = self.space.check(self.space.initial())
        return Proposal(last, operator="sample", rejected=rejected, duplicate_of=known.get(last.graph_hash))


class RandomSearch(Strategy):
    """Every candidate an independent uniform draw of all choices (the baseline)."""

    name = "random"

    def propose(self, i: int, rows: list[Row], known: dict[str, int]) -> Proposal:
        return self._sampled(self.rng(i), known, [])


class RegularizedEvolution(Strategy):
    name = "evolution"

    def __init__(self, space: SearchSpace, seed: int, objective: Sequence[str], population: int = 16,
                 sample: int = 4, lag: int = 0, operators: tuple[str, ...] = OPERATORS, max_tries: int = 50) -> None:
        super().__init__(space, seed, max_tries)
        self.objective = tuple(objective)
        self.population = max(2, population)
        self.sample = max(1, min(sample, self.population))
        self.lag = max(0, lag)
        self.operators = operators

    def ready(self, i: int, finished_through) -> bool:
        """Candidate i needs the results of 0..i-1-lag (none while the population is seeded)."""
        return i < self.population or finished_through(i - 1 - self.lag)

    def visible(self, i: int, rows: list[Row]) -> list[Row]:
        """The population for candidate i: the P most recent successful evaluations it may see."""
        cutoff = i - 1 - self.lag
        done = [r for r in rows if r.kind == "search" and r.id <= cutoff and r.status == "done"
                and r.val_acc is not None]
        return done[-self.population:]

    def propose(self, i: int, rows: list[Row], known: dict[str, int]) -> Proposal:
        rng = self.rng(i)
        rejected: list[dict] = []
        pop = self.visible(i, rows) if i >= self.population else []
        if len(pop) < 2:  # seeding the population (or every earlier candidate failed)
            return self._sampled(rng, known, rejected)
        ranks = nondominated_ranks([objectives(r, self.objective) for r in pop])
        rank = {r.id: k for r, k in zip(pop, ranks)}
        last_dup: tuple[Checked, str, str, Row] | None = None
        for _ in range(self.max_tries):
            entrants = rng.sample(pop, self.sample) if len(pop) >= self.sample else list(pop)
            parent = min(entrants, key=lambda r: (rank[r.id], *objectives(r, self.objective), r.id))
            try:
                m = mutate(self.space, Genotype(parent.program, parent.selection), rng, self.operators)
            except NoSite:
                break
            try:
                c = self.space.check(m.child)
            except Rejected as e:
                rejected.append({"parent": parent.id, "operator": m.operator, "reason": e.reason,
                                 "error": f"{m.detail}\n{e.message}", "text": e.text})
                continue
            if c.graph_hash in known:
                rejected.append({"parent": parent.id, "operator": m.operator, "reason": "duplicate",
                                 "error": f"{m.detail}: same network as #{known[c.graph_hash]}"})
                last_dup = (c, m.operator, m.detail, parent)
                continue
            return Proposal(c, parent.id, m.operator, m.detail, rejected)
        if last_dup is not None:
            c, op, detail, parent = last_dup
            return Proposal(c, parent.id, op, detail, rejected, duplicate_of=known[c.graph_hash])
        return self._sampled(rng, known, rejected)


def make_strategy(name: str, space: SearchSpace, seed: int, objective: Sequence[str], population: int,
                  sample: int, lag: int) -> Strategy:
    if name == "evolution":
        return RegularizedEvolution(space, seed, objective, population, sample, lag)
    if name == "random":
        return RandomSearch(space, seed)
    from convdsl.errors import UsageError

    raise UsageError(f"unknown strategy '{name}'", hint="evolution or random")
