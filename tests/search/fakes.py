"""An in-process executor with made-up metrics: exercises the search loop without training."""
from __future__ import annotations

import hashlib
import time
from typing import Any


def fake_result(task: dict[str, Any]) -> dict[str, Any]:
    h = int(hashlib.sha256(task["text"].encode()).hexdigest()[:8], 16)
    return {"status": "done", "val_acc": (h % 1000) / 1000, "val_loss": 1.0, "params": len(task["text"]),
            "macs": h % 5000, "latency_ms": (h % 97) / 10, "latency_wall_ms": 0.0, "latency_cpu_ms": 0.0,
            "train_seconds": 0.0, "seconds": 0.0, "history": [], "worker": "fake"}


class FakeExecutor:
    """``slots`` evaluations at once, finished newest first (the search must not depend on the
    order results arrive); ``crash`` lists candidate ids whose first attempt dies."""

    def __init__(self, slots: int = 2, crash: tuple[int, ...] = (), delay: float = 0.0) -> None:
        self.slots = slots
        self.delay = delay
        self.pending: list[tuple[int, dict]] = []
        self.crash = set(crash)
        self.submitted: list[int] = []

    def submit(self, cid: int, task: dict[str, Any]) -> None:
        self.pending.append((cid, task))
        self.submitted.append(cid)

    def in_flight(self) -> int:
        return len(self.pending)

    def poll(self, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        if not self.pending:
            return []
        time.sleep(self.delay)
        cid, task = self.pending.pop()
        if cid in self.crash:
            self.crash.discard(cid)
            return [(cid, {"status": "crashed", "error": "worker died"})]
        return [(cid, fake_result(task))]

    def close(self) -> None:
        pass
