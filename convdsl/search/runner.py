"""The search loop: propose, dispatch to an executor, store each result as it arrives.

The parent process is the only writer of the history.  A candidate is stored (``pending``, with
the mutants refused on the way to it) before it is dispatched, marked ``running`` when it is,
and ``done``/``failed`` in one transaction when its result comes back (its weights file is
written just before).  ``Search.open`` on an existing folder resumes: what was ``running`` is
re-queued, nothing finished is evaluated again, and proposals go on from the stored history.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from convdsl.version import __version__
from convdsl.errors import UsageError
from convdsl.search.evolution import COSTS, STRATEGIES, Strategy, make_strategy, pareto_front
from convdsl.search.executors import Executor
from convdsl.search.space import SearchSpace
from convdsl.search.store import Store, write_weights

MAX_ATTEMPTS = 3  # a candidate whose worker died this often is marked failed


@dataclass
class SearchConfig:
    """Everything that decides what a search computes; stored in the history, reused on resume."""

    space_file: str
    space_text: str
    network: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    strategy: str = "evolution"
    budget: int = 60
    seed: int = 0
    objective: tuple[str, ...] = ("accuracy", "latency")
    data: str = "digits"
    val_fraction: float = 0.2
    split_seed: int = 0
    epochs: int = 6
    seeds: int = 1  # training seeds per candidate; its accuracy is their mean
    batch_size: int = 64
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 5e-4
    backend: str = "torch"
    latency_batch: int = 1
    latency_clock: str = "cpu"
    population: int = 10
    sample: int = 3
    lag: int = 1
    max_params: int | None = None
    references: list[dict[str, str]] = field(default_factory=list)  # {"name", "file", "text"}

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy '{self.strategy}'", hint=" or ".join(STRATEGIES))
        if not self.objective or self.objective[0] != "accuracy" or len(self.objective) > 2 \
                or any(c not in COSTS for c in self.objective[1:]):
            raise UsageError(f"unknown objective '{','.join(self.objective)}'",
                             hint="accuracy, or accuracy plus one cost: " + ", ".join(f"accuracy,{c}" for c in COSTS))
        if self.budget < 1 or self.epochs < 1 or self.seeds < 1:
            raise UsageError("--budget, --epochs and --seeds must be positive")
        if self.latency_clock not in ("cpu", "wall"):
            raise UsageError(f"unknown latency clock '{self.latency_clock}'", hint="cpu or wall")

    @property
    def cost(self) -> str | None:
        return self.objective[1] if len(self.objective) > 1 else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["objective"] = list(self.objective)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SearchConfig":
        d = dict(d)
        d["objective"] = tuple(d["objective"])
        return cls(**d)


class Search:
    """One search folder: its history, space, strategy and (while running) an executor."""

    def __init__(self, folder: Path, store: Store, config: SearchConfig) -> None:
        self.folder = folder
        self.store = store
        self.config = config
        from convdsl.train import check_fits, load_dataset

        self.dataset = load_dataset(config.data, seed=config.split_seed, val_fraction=config.val_fraction)
        self.space = SearchSpace(config.space_text, config.space_file, config.network, config.sources,
                                 config.max_params, fits=lambda g: check_fits(g, self.dataset))
        self.strategy: Strategy = make_strategy(config.strategy, self.space, config.seed, config.objective,
                                                config.population, config.sample, config.lag)

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, config: SearchConfig) -> "Search":
        config.validate()
        folder = Path(folder)
        if (folder / "search.sqlite").exists():
            raise UsageError(f"{folder} already holds a search", hint=f"continue it: convdsl search --resume {folder}")
        probe = SearchSpace(config.space_text, config.space_file, config.network, max_params=None)
        config.sources = dict(probe.sources)  # imported files travel with the history (and to workers)
        config.network = probe.network
        store = Store(folder, create=True)
        store.lock()
        store.set_meta(config=config.to_json(), version=__version__, schema=1, created=time.time())
        s = cls(folder, store, config)
        s._add_references()
        return s

    @classmethod
    def open(cls, folder: str | Path, **overrides: Any) -> "Search":
        """Reopen a search to resume it; ``budget`` may be raised."""
        folder = Path(folder)
        store = Store(folder)
        store.lock()
        config = SearchConfig.from_json(store.meta("config"))
        if overrides.get("budget") is not None:
            proposed = store.count()
            if overrides["budget"] < proposed:
                store.close()
                raise UsageError(f"--budget {overrides['budget']} is below the {proposed} candidates"
                                 " already proposed")
            config.budget = overrides["budget"]
            store.set_meta(config=config.to_json())
        return cls(folder, store, config)

    def _add_references(self) -> None:
        """Hand-written programs to compare with, trained and timed exactly as candidates are."""
        for k, ref in enumerate(self.config.references):
            space = SearchSpace(ref["text"], ref["file"], None)
            checked = space.check(space.initial())
            self.config.sources.update(space.sources)
            self.store.add(-(k + 1), program=ref["text"], selection={}, text=checked.text, hash=checked.hash,
                           graph_hash=checked.graph_hash, active=[], kind="reference", name=ref["name"])
        self.store.set_meta(config=self.config.to_json())

    # ---- the loop -------------------------------------------------------------------------
    def task(self, cid: int) -> dict[str, Any]:
        row = self.store.row(cid)
        c = self.config
        ref = next((r for k, r in enumerate(c.references) if -(k + 1) == cid), None)
        return {"text": row.text, "file": ref["file"] if ref else c.space_file,
                "network": None if ref else c.network, "sources": c.sources,
                "data": c.data, "split_seed": c.split_seed, "val_fraction": c.val_fraction, "epochs": c.epochs,
                "seeds": c.seeds,
                "batch_size": c.batch_size, "lr": c.lr, "optimizer": c.optimizer, "weight_decay": c.weight_decay,
                "seed": c.seed, "backend": c.backend, "latency_batch": c.latency_batch,
                "latency_clock": c.latency_clock, "threads": 1}

    def propose_next(self) -> int | None:
        """Store the next proposal if the budget and the strategy allow one now."""
        i = self.store.count()
        if i >= self.config.budget or not self.strategy.ready(i, self.store.finished_through):
            return None
        rows = self.store.rows("kind = 'search' AND id < ?", (i,))
        known = self.store.hashes()
        p = self.strategy.propose(i, rows, known)
        c = p.checked
        cached = self.store.row(p.duplicate_of) if p.duplicate_of is not None else None
        if cached is not None and cached.status not in ("done", "failed"):
            cached = None  # its result is not in yet: evaluate this one (deterministically the same)
        self.store.add(i, program=c.genotype.program, selection=c.genotype.selection, text=c.text, hash=c.hash,
                       graph_hash=c.graph_hash, active=c.active, parent=p.parent, operator=p.operator, detail=p.detail,
                       rejected=p.rejected, cached=cached)
        return i

    def run(self, executor: Executor, on_event: Callable[[str, Any], None] | None = None,
            stop_after: float | None = None, drain: bool = True) -> None:
        """Run until the budget is spent, or until ``stop_after`` seconds have passed: then no
        evaluation starts, and those in flight are waited for and stored (``drain``) or left
        ``running`` for the next resume to re-queue."""
        emit = on_event or (lambda what, data: None)
        requeued = self.store.requeue_running()
        self.store.event("resume" if self.store.events() else "start",
                         {"requeued": requeued, "workers": executor.slots})
        emit("start", {"requeued": requeued})
        start = time.time()
        running: set[int] = set()
        try:
            while True:
                stopping = stop_after is not None and time.time() - start > stop_after
                if stopping and not drain:
                    break
                while not stopping and len(running) < executor.slots:
                    cid = self.store.next_pending()
                    if cid is None:
                        cid = self.propose_next()
                        if cid is None:
                            break
                        row = self.store.row(cid)
                        emit("proposed", row)
                        if row.status != "pending":  # a repeat, answered from the history
                            emit("finished", row)
                            continue
                    self.store.mark_running(cid)
                    executor.submit(cid, self.task(cid))
                    running.add(cid)
                if not running:
                    break
                for cid, result in executor.poll(timeout=0.5):
                    running.discard(cid)
                    self._finish(cid, result)
                    emit("finished", self.store.row(cid))
                emit("tick", None)
        finally:
            self.store.event("stop", {"seconds": time.time() - start, "in_flight": sorted(running)})

    def _finish(self, cid: int, result: dict[str, Any]) -> None:
        if result.get("status") == "crashed":
            row = self.store.row(cid)
            if row is not None and row.attempts < MAX_ATTEMPTS:
                self.store.requeue(cid)
                return
            result = {**result, "status": "failed"}
        if result.get("weights"):
            write_weights(self.folder, cid, result["weights"])
        self.store.finish(cid, result)

    # ---- views ----------------------------------------------------------------------------
    def front(self):
        done = self.store.rows("kind = 'search' AND status = 'done'")
        return pareto_front(done, self.config.objective)

    def close(self) -> None:
        self.store.close()
