"""Where evaluations run: a local process pool (default) or a Ray cluster.

An executor has ``slots`` (evaluations it runs at once), ``submit(cid, task)`` and
``poll(timeout) -> [(cid, result)]``.  Results are the dicts of ``evaluate_candidate``; a worker
that dies (a segfault, the OOM killer, a lost Ray node) yields ``{"status": "crashed"}`` and the
search decides whether to retry.  Workers never touch the history: the parent is its only writer.

Local workers die with the search process, even one killed with ``kill -9`` (``lifeline``), and
``close`` stops the evaluations still in flight at once: their candidates stay ``running`` in the
history and the next resume evaluates them again.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from typing import Any, Protocol

from convdsl.errors import UsageError
from convdsl.search.evaluate import evaluate_candidate


class Executor(Protocol):
    slots: int

    def submit(self, cid: int, task: dict[str, Any]) -> None: ...

    def poll(self, timeout: float) -> list[tuple[int, dict[str, Any]]]: ...

    def in_flight(self) -> int: ...

    def close(self) -> None: ...


def _init_worker(parent_pid: int) -> None:
    """Die with the search; one intra-op thread per worker: tiny networks gain nothing from more,
    and W workers on W cores must not fight over them."""
    from convdsl.search.lifeline import die_with_parent

    die_with_parent(parent_pid)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


class LocalExecutor:
    """A pool of worker processes (spawned: a fresh interpreter, no state copied from the parent)."""

    def __init__(self, workers: int | None = None) -> None:
        self.slots = max(1, workers or len(os.sched_getaffinity(0)))
        self._pool: cf.ProcessPoolExecutor | None = None
        self._futures: dict[cf.Future, int] = {}

    def _ensure(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.slots, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(os.getpid(),))
        return self._pool

    def submit(self, cid: int, task: dict[str, Any]) -> None:
        try:
            fut = self._ensure().submit(evaluate_candidate, task)
        except cf.process.BrokenProcessPool:
            self._restart()
            fut = self._ensure().submit(evaluate_candidate, task)
        self._futures[fut] = cid

    def in_flight(self) -> int:
        return len(self._futures)

    def poll(self, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        if not self._futures:
            return []
        done, _ = cf.wait(list(self._futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out, broken = [], False
        for fut in done:
            cid = self._futures.pop(fut)
            try:
                out.append((cid, fut.result()))
            except cf.process.BrokenProcessPool as e:
                broken = True
                out.append((cid, {"status": "crashed", "error": f"worker process died ({e})"}))
            except Exception as e:  # pickling errors and the like: the candidate fails, the search goes on
                out.append((cid, {"status": "failed", "error": f"{type(e).__name__}: {e}"}))
        if broken:
            self._restart()
        return out

    def _restart(self) -> None:
        """A dead worker breaks the whole pool: every evaluation in it is reported crashed."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        """Stop the pool; evaluations still in flight are killed, not waited for."""
        if self._pool is not None:
            if any(not f.done() for f in self._futures):
                _kill_workers(self._pool)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._futures.clear()


def _kill_workers(pool: cf.ProcessPoolExecutor) -> None:
    kill = getattr(pool, "kill_workers", None)  # Python 3.14+
    if kill is not None:
        kill()
        return
    processes = getattr(pool, "_processes", None) or {}  # pid -> Process, CPython 3.3-3.13
    for p in list(processes.values()):
        p.kill()


class RayExecutor:
    """Evaluations as Ray tasks (one CPU each) on the cluster at ``address`` (``auto``, ``ray://host:port``,
    ``host:port``), or on a local Ray started here when ``address`` is None.  A Ray already
    initialized in this process is used as it is.  convdsl must be installed on every node; the
    task carries the program and its imported files, and the weights come back in the result."""

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs the ray package", hint="pip install 'convdsl[search]'") from None
        self.ray = ray
        self._owns = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False}
            if address is None:
                kw["num_cpus"] = workers or len(os.sched_getaffinity(0))
            ray.init(**kw)
            self._owns = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, min(workers, cpus) if workers else cpus)
        self._remote = ray.remote(num_cpus=1, max_retries=0)(evaluate_candidate)
        self._refs: dict[Any, int] = {}

    def submit(self, cid: int, task: dict[str, Any]) -> None:
        self._refs[self._remote.options(name=f"convdsl-candidate-{cid}").remote(task)] = cid

    def in_flight(self) -> int:
        return len(self._refs)

    def poll(self, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:  # take everything else that is ready too
            ready, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        out = []
        for ref in ready:
            cid = self._refs.pop(ref)
            try:
                out.append((cid, self.ray.get(ref)))
            except Exception as e:  # a dead worker or node: retried by the search
                out.append((cid, {"status": "crashed", "error": f"{type(e).__name__}: {e}"}))
        return out

    def close(self) -> None:
        for ref in list(self._refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:
                pass
        self._refs.clear()
        if self._owns:
            self.ray.shutdown()


EXECUTORS = ("local", "ray")


def make_executor(name: str, workers: int | None = None, address: str | None = None) -> Executor:
    if name == "local":
        if address:
            raise UsageError("--address is for --executor ray")
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address, workers)
    raise UsageError(f"unknown executor '{name}'", hint="local or ray")
