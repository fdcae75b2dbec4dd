"""The live display of a running search: one line per finished candidate, and on a terminal (unless
disabled) a rich progress bar with the best accuracy, the size of the front and the rejection
count.  Lines go to stderr, so logs of a long search stay readable."""
from __future__ import annotations

import time
from typing import Any

from convdsl.search.store import Row


class SearchProgress:
    def __init__(self, search: Any, enabled: bool = True) -> None:
        from rich.console import Console

        self.search = search
        self.console = Console(stderr=True, highlight=False)
        self.cost = search.config.cost
        self.bar = None
        self.t0 = time.time()
        if enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=self.console,
                                refresh_per_second=2)
            self.task = self.bar.add_task(f"search ({search.config.strategy})", total=search.config.budget,
                                          status="")
            self.bar.start()
        self.enabled = enabled

    def __call__(self, what: str, data: Any) -> None:
        if what == "start" and data["requeued"]:
            self._print(f"resuming: {len(data['requeued'])} unfinished evaluation(s) re-queued "
                        f"({', '.join(f'#{i}' for i in data['requeued'])})")
        elif what == "finished":
            self._print(self._line(data))
        if what in ("start", "finished", "tick") and self.bar is not None:
            self._refresh()

    def _refresh(self) -> None:
        store = self.search.store
        done = store.count(status=("done", "failed"))
        front = self.search.front()
        best = max((r.val_acc for r in front), default=None)
        running = store.count(status="running") + store.count("reference", "running")
        status = (f"best {100 * best:.2f}%  front {len(front)}  " if best is not None else "") + \
                 f"running {running}  rejected {sum(sum(v.values()) for v in store.rejected_counts().values())}"
        self.bar.update(self.task, completed=done, status=status)

    def _line(self, r: Row) -> str:
        who = f"#{r.id}" if r.kind == "search" else f"reference {r.name}"
        if r.status != "done":
            err = (r.error or "").strip().splitlines()
            return f"{who} {r.status}: {err[0] if err else ''}"
        cost = ""
        if r.params is not None:
            cost = f"{r.params:>9,} params {r.macs or 0:>11,} MACs {r.latency_ms or 0:7.3f} ms"
        how = ""
        if r.kind == "search":
            how = f"repeat of #{r.cached_from}" if r.cached_from is not None else \
                  (f"{r.operator} of #{r.parent}: {r.detail}" if r.parent is not None else "random sample")
        return f"{who:>6} {100 * r.val_acc:6.2f}% {cost} {r.seconds or 0:6.1f}s  {how}"

    def _print(self, text: str) -> None:
        (self.bar.console if self.bar is not None else self.console).print(text, markup=False)

    def close(self) -> None:
        if self.bar is not None:
            self._refresh()
            self.bar.stop()
