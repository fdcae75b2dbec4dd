"""The search loop: propose, dispatch to an executor, store each result as it arrives.

The parent process is the only writer of the history.  A candidate is stored (``pending``, with
the mutants refused on the way to it) before it is dispatched, marked ``running`` when it is,
and ``done``/``failed`` in one transaction when its result comes back (its weights file is
written just before).  ``Search.open`` on an existing folder resumes: what was ``running`` is
re-queued, nothing finished is evaluated again, and proposals go on from the stored history.
"""
from __future__ import annotations

import contextlib
import math
import time
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from convdsl.errors import ConvDSLError, UsageError
from convdsl.search.evolution import COSTS, STRATEGIES, Strategy, make_strategy, pareto_front
from convdsl.search.executors import Executor
from convdsl.search.faults import stop_point
from convdsl.search.files import remove_stale_temporaries
from convdsl.search.history import HistoryError, short
from convdsl.search.space import Rejected, SearchSpace
from convdsl.search.store import Store, write_weights
from convdsl.train.limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_LR, MAX_SEED, MAX_WEIGHT_DECAY
from convdsl.version import __version__

MAX_ATTEMPTS = 3  # a candidate whose worker died this often is marked failed

# bounds of the numeric settings (the command line and a stored history are held to the same);
# (low, high), inclusive
LIMITS: dict[str, tuple[int | float, int | float]] = {
    "budget": (1, 1_000_000), "epochs": (1, MAX_EPOCHS), "seeds": (1, 1_000), "batch_size": (1, MAX_BATCH_SIZE),
    "latency_batch": (1, 4_096), "population": (1, 100_000), "sample": (1, 100_000), "lag": (0, 4_096),
    "seed": (0, MAX_SEED), "split_seed": (0, MAX_SEED), "max_params": (1, 2**62),
    "weight_decay": (0.0, MAX_WEIGHT_DECAY), "lr": (1e-12, MAX_LR),
}


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
        """Every setting within its domain (``LIMITS``), checked before a search starts and when
        a stored one is read back."""
        for name, (lo, hi) in LIMITS.items():
            v = getattr(self, name)
            if v is None and name in ("lr", "max_params"):
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
                raise UsageError(f"--{name.replace('_', '-')} must be between {lo:,} and {hi:,}, got {short(v)}")
        if not (isinstance(self.val_fraction, (int, float)) and 0.0 < self.val_fraction < 1.0):
            raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {short(self.val_fraction)}")
        for ref in self.references:
            if set(ref) != {"name", "file", "text"}:
                raise UsageError(f"a reference must have a name, a file and a text, got keys {sorted(ref)}")
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
    def from_json(cls, d: Any) -> "SearchConfig":
        """The configuration stored by ``to_json``; ``TypeError`` names the first key that is
        missing, unknown or of the wrong type."""
        if not isinstance(d, dict):
            raise TypeError(f"is {short(d)}, not a JSON object")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}
        for key in d:
            if key not in known:
                raise TypeError(f"has an unknown key {short(key)}")
        for name, f in known.items():
            if name not in d:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise TypeError(f"has no {name!r}")
                continue
            if not _has_type(d[name], hints[name]):
                raise TypeError(f"{name!r} is {short(d[name])}, expected {_type_name(hints[name])}")
        d = dict(d)
        if "objective" in d:
            d["objective"] = tuple(d["objective"])
        return cls(**d)

    @classmethod
    def from_history(cls, store: Store) -> "SearchConfig":
        """The configuration of a stored search, checked like one given on the command line."""
        d = store.meta("config")
        try:
            config = cls.from_json(d)
            config.validate()
        except (TypeError, UsageError) as e:
            raise HistoryError(f"{store.path}: the stored search configuration {_message(e)}",
                               hint="the file was left as it is: restore it from a copy") from None
        return config


def _has_type(value: Any, tp: Any) -> bool:
    """``value`` (decoded JSON) fits the annotation ``tp`` of a ``SearchConfig`` field."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        return isinstance(value, (list, tuple)) and all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_has_type(k, args[0]) and _has_type(v, args[1])
                                               for k, v in value.items())
    return False


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "")


def _message(e: Exception) -> str:
    return e.message if isinstance(e, ConvDSLError) else str(e)


class Search:
    """One search folder: its history, space, strategy and (while running) an executor.  Building
    one checks everything a search needs (settings, data, space) and writes nothing."""

    def __init__(self, folder: Path, config: SearchConfig, store: Store | None = None) -> None:
        self.folder = folder
        self.store = store
        self.config = config
        from convdsl.train import check_fits, load_dataset

        self.dataset = load_dataset(config.data, seed=config.split_seed, val_fraction=config.val_fraction)
        self.space = SearchSpace(config.space_text, config.space_file, config.network, config.sources,
                                 config.max_params, fits=lambda g: check_fits(g, self.dataset))
        self.strategy: Strategy = make_strategy(config.strategy, self.space, config.seed, config.objective,
                                                config.population, config.sample, config.lag)
        from convdsl.train import OPTIMIZERS  # the trainer, and torch

        if config.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer '{config.optimizer}'", hint=" or ".join(OPTIMIZERS))

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, config: SearchConfig) -> "Search":
        """A new search in ``folder``: everything is checked first, then the history is created
        whole (configuration and references in one transaction, ``Store.create``)."""
        config.validate()
        folder = Path(folder)
        Store.check_free(folder)
        probe = SearchSpace(config.space_text, config.space_file, config.network, max_params=None)
        config.sources = dict(probe.sources)  # imported files travel with the history (and to workers)
        config.network = probe.network
        s = cls(folder, config)
        references = s._references()
        s.store = Store.create(folder, {"config": config.to_json(), "version": __version__, "schema": 1,
                                        "created": time.time()}, references)
        return s

    @classmethod
    def open(cls, folder: str | Path, **overrides: Any) -> "Search":
        """Reopen a search to resume it; ``budget`` may be raised."""
        folder = Path(folder)
        store = Store(folder, lock=True)
        try:
            config = SearchConfig.from_history(store)
            store.check_rows()
            budget = overrides.get("budget")
            if budget is not None:
                proposed = store.count()
                if budget < proposed:
                    raise UsageError(f"--budget {budget} is below the {proposed} candidates already proposed")
                config.budget = budget
                config.validate()
            s = cls(folder, config, store)
            s._check_genotypes()
            if budget is not None:
                store.set_meta(config=config.to_json())
        except BaseException:
            store.close()
            raise
        remove_stale_temporaries(folder / "weights")
        return s

    def _check_genotypes(self) -> None:
        """Every stored candidate is a point of the space, as evolution will mutate it: its
        program parses and its selection gives each of that program's choices an option it has."""
        from convdsl.lang.parser import parse
        from convdsl.search.space import choices_of

        sizes: dict[str, dict[str, int]] = {}  # program text -> choice key -> options (mutants share texts)
        for r in self.store.rows("kind = 'search'"):
            if r.program not in sizes:
                try:
                    program = parse(r.program, self.config.space_file)
                except ConvDSLError as e:
                    raise HistoryError(f"{self.store.path}: candidate {r.id}: its stored program does not parse",
                                       notes=[e.render()], hint="the file was left as it is: restore it from a copy") \
                        from None
                sizes[r.program] = {k: len(c.options) for k, c in choices_of(program).items()}
            for key, n in sizes[r.program].items():
                i = r.selection.get(key)
                if i is None or not 0 <= i < n:
                    what = f"has no option for choice '{key}'" if i is None else \
                        f"gives choice '{key}' option {i}, which has {n} options"
                    raise HistoryError(f"{self.store.path}: candidate {r.id}: its selection {what}",
                                       hint="the file was left as it is: restore it from a copy")

    def _references(self) -> list[dict[str, Any]]:
        """Hand-written programs to compare with, trained and timed exactly as candidates are
        (their imported files join the configuration's sources)."""
        out = []
        for k, ref in enumerate(self.config.references):
            space = SearchSpace(ref["text"], ref["file"], None)
            try:
                checked = space.check(space.initial())
            except Rejected as e:
                raise UsageError(f"reference {ref['file']} is refused by the front end ({e.reason})",
                                 notes=[e.message]) from None
            self.config.sources.update(space.sources)
            out.append(dict(cid=-(k + 1), program=ref["text"], selection={}, text=checked.text, hash=checked.hash,
                            graph_hash=checked.graph_hash, active=[], kind="reference", name=ref["name"]))
        return out

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
                    stop_point(f"running:{cid}")
                if not running:
                    break
                for cid, result in executor.poll(timeout=0.5):
                    running.discard(cid)
                    self._finish(cid, result)
                    stop_point(f"stored:{cid}")
                    emit("finished", self.store.row(cid))
                emit("tick", None)
        except BaseException:
            with contextlib.suppress(HistoryError):  # the first error is the one to report (a full disk...)
                self.store.event("stop", {"seconds": time.time() - start, "in_flight": sorted(running)})
            raise
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
