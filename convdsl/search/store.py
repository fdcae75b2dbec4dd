"""The search history in SQLite: every candidate's program, hash, metrics, status and timing.

One writer: only the search's parent process writes (workers return their results to it), and a
lock file keeps a second search off the same folder.  Each state change is one transaction, in
WAL mode with ``synchronous=FULL``, so a search killed at any instant (even ``kill -9``) leaves
every finished evaluation on disk.  On resume the candidates that were ``running`` go back to
``pending`` and are evaluated again; ``finish`` only moves a ``running`` candidate to ``done``
or ``failed``, so no finished evaluation is ever repeated or overwritten.

Candidate ids are the search's proposal order (0, 1, ...); the hand-written references that are
measured for comparison get negative ids.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from convdsl.errors import UsageError

DB_NAME = "search.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'search' CHECK (kind IN ('search', 'reference')),
    name TEXT,
    parent INTEGER,
    operator TEXT,
    detail TEXT,
    program TEXT NOT NULL,
    selection TEXT NOT NULL,
    text TEXT NOT NULL,
    hash TEXT NOT NULL,
    graph_hash TEXT NOT NULL,
    active TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    cached_from INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    worker TEXT,
    val_acc REAL,
    val_loss REAL,
    params INTEGER,
    macs INTEGER,
    latency_ms REAL,
    latency_wall_ms REAL,
    latency_cpu_ms REAL,
    train_seconds REAL,
    seconds REAL,
    history TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS candidates_status ON candidates (status);
CREATE INDEX IF NOT EXISTS candidates_graph_hash ON candidates (graph_hash);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    candidate INTEGER,
    parent INTEGER,
    operator TEXT,
    reason TEXT NOT NULL,
    error TEXT,
    text TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    what TEXT NOT NULL,
    detail TEXT
);
"""

METRICS = ("val_acc", "val_loss", "params", "macs", "latency_ms", "latency_wall_ms", "latency_cpu_ms",
           "train_seconds", "seconds")


@dataclass
class Row:
    """One candidate as stored."""

    id: int
    kind: str
    name: str | None
    parent: int | None
    operator: str | None
    detail: str | None
    program: str
    selection: dict[str, int]
    text: str
    hash: str
    graph_hash: str
    active: list[str]
    status: str
    attempts: int
    cached_from: int | None
    created: float
    started: float | None
    finished: float | None
    worker: str | None
    val_acc: float | None
    val_loss: float | None
    params: int | None
    macs: int | None
    latency_ms: float | None
    latency_wall_ms: float | None
    latency_cpu_ms: float | None
    train_seconds: float | None
    seconds: float | None
    history: list | None
    error: str | None

    def metric(self, name: str) -> float | None:
        return {"accuracy": self.val_acc, "latency": self.latency_ms}.get(name, getattr(self, name, None))


class Store:
    """The SQLite history of one search folder."""

    def __init__(self, folder: str | os.PathLike, create: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        if not create and not self.path.exists():
            raise UsageError(f"{self.folder} holds no search ({DB_NAME} is missing)",
                             hint="start one with: convdsl search SPACE.cdl --out DIR")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # explicit transactions
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=30000")
        with self.tx() as db:
            cols = {r[1] for r in db.execute("PRAGMA table_info(candidates)")}
            if cols and "graph_hash" not in cols:  # a history from before network hashes: use the text hash
                db.execute("ALTER TABLE candidates ADD COLUMN graph_hash TEXT NOT NULL DEFAULT ''")
                db.execute("UPDATE candidates SET graph_hash = hash")
            for statement in _statements(_SCHEMA):
                db.execute(statement)
        self._lock_fd: int | None = None

    # ---- locking and transactions ---------------------------------------------------------
    def lock(self) -> None:
        """Hold the folder for this process; a second search on it is refused."""
        import fcntl

        fd = os.open(self.folder / "search.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(f"another search is running on {self.folder}",
                             hint="wait for it, or stop it and resume with --resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- meta -----------------------------------------------------------------------------
    def set_meta(self, **items: Any) -> None:
        with self.tx() as db:
            for k, v in items.items():
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, json.dumps(v)))

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def event(self, what: str, detail: Any = None) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO events (t, what, detail) VALUES (?, ?, ?)",
                       (time.time(), what, json.dumps(detail) if detail is not None else None))

    def events(self) -> list[dict]:
        return [{"t": r["t"], "what": r["what"], "detail": json.loads(r["detail"]) if r["detail"] else None}
                for r in self.db.execute("SELECT * FROM events ORDER BY id")]

    # ---- candidates -----------------------------------------------------------------------
    def add(self, cid: int, *, program: str, selection: dict[str, int], text: str, hash: str, graph_hash: str,
            active: list[str], parent: int | None = None, operator: str | None = None, detail: str | None = None,
            kind: str = "search", name: str | None = None, rejected: list[dict] | None = None,
            cached: "Row | None" = None) -> None:
        """A new candidate, with the mutants refused on the way to it, in one transaction.  A
        ``cached`` duplicate is stored finished, with the metrics of the evaluation it repeats."""
        now = time.time()
        with self.tx() as db:
            db.execute(
                "INSERT INTO candidates (id, kind, name, parent, operator, detail, program, selection, text, hash,"
                " graph_hash, active, status, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                (cid, kind, name, parent, operator, detail, program, json.dumps(selection, sort_keys=True), text,
                 hash, graph_hash, json.dumps(active), now))
            for r in rejected or []:
                db.execute("INSERT INTO rejected (candidate, parent, operator, reason, error, text, created)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (cid, r.get("parent"), r.get("operator"), r["reason"], r.get("error"), r.get("text"), now))
            if cached is not None:
                cols = ", ".join(f"{m} = ?" for m in METRICS)
                db.execute(f"UPDATE candidates SET status = ?, cached_from = ?, finished = ?, started = ?,"
                           f" history = ?, error = ?, {cols} WHERE id = ?",
                           (cached.status, cached.id, now, now, json.dumps(cached.history), cached.error,
                            *[getattr(cached, m) for m in METRICS[:-1]], 0.0, cid))

    def mark_running(self, cid: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE candidates SET status = 'running', started = ?, attempts = attempts + 1"
                       " WHERE id = ? AND status = 'pending'", (time.time(), cid))

    def finish(self, cid: int, result: dict[str, Any]) -> bool:
        """Store an evaluation; only a ``running`` candidate can finish (returns False otherwise)."""
        status = "done" if result.get("status") == "done" else "failed"
        vals = [result.get(m) for m in METRICS]
        cols = ", ".join(f"{m} = ?" for m in METRICS)
        with self.tx() as db:
            cur = db.execute(
                f"UPDATE candidates SET status = ?, finished = ?, worker = ?, error = ?, history = ?, {cols}"
                " WHERE id = ? AND status = 'running'",
                (status, time.time(), result.get("worker"), result.get("error"),
                 json.dumps(result.get("history")) if result.get("history") is not None else None, *vals, cid))
            return cur.rowcount == 1

    def requeue(self, cid: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE candidates SET status = 'pending' WHERE id = ? AND status = 'running'", (cid,))

    def requeue_running(self) -> list[int]:
        """After a crash: every candidate left ``running`` goes back to ``pending``."""
        with self.tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM candidates WHERE status = 'running' ORDER BY id")]
            db.execute("UPDATE candidates SET status = 'pending' WHERE status = 'running'")
        return ids

    def rows(self, where: str = "", args: tuple = ()) -> list[Row]:
        sql = "SELECT * FROM candidates" + (f" WHERE {where}" if where else "") + " ORDER BY kind DESC, id"
        return [_row(r) for r in self.db.execute(sql, args)]

    def row(self, cid: int) -> Row | None:
        r = self.db.execute("SELECT * FROM candidates WHERE id = ?", (cid,)).fetchone()
        return _row(r) if r else None

    def next_pending(self) -> int | None:
        """References first (negative ids, -1 first), then search candidates in order."""
        r = self.db.execute("SELECT id FROM candidates WHERE status = 'pending'"
                            " ORDER BY kind = 'search', CASE WHEN id < 0 THEN -id ELSE id END LIMIT 1").fetchone()
        return r[0] if r else None

    def count(self, kind: str = "search", status: str | tuple[str, ...] | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM candidates WHERE kind = ?", [kind]
        if status is not None:
            st = (status,) if isinstance(status, str) else status
            sql += f" AND status IN ({', '.join('?' * len(st))})"
            args += list(st)
        return self.db.execute(sql, args).fetchone()[0]

    def finished_through(self, cid: int) -> bool:
        """Are search candidates 0..cid all finished (done or failed)?"""
        if cid < 0:
            return True
        n = self.db.execute("SELECT COUNT(*) FROM candidates WHERE kind = 'search' AND id <= ?"
                            " AND status IN ('done', 'failed')", (cid,)).fetchone()[0]
        return n == cid + 1

    def hashes(self) -> dict[str, int]:
        """network hash -> id of the first search candidate that builds that network."""
        out: dict[str, int] = {}
        for r in self.db.execute("SELECT graph_hash, id FROM candidates WHERE kind = 'search' ORDER BY id"):
            out.setdefault(r[0], r[1])
        return out

    def rejected(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM rejected ORDER BY id")]

    def rejected_counts(self) -> dict[str, dict[str, int]]:
        """operator -> reason -> count."""
        out: dict[str, dict[str, int]] = {}
        for r in self.db.execute("SELECT COALESCE(operator, 'sample'), reason, COUNT(*) FROM rejected"
                                 " GROUP BY 1, 2"):
            out.setdefault(r[0], {})[r[1]] = r[2]
        return out

    def integrity(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _row(r: sqlite3.Row) -> Row:
    d = dict(r)
    d["selection"] = json.loads(d["selection"])
    d["active"] = json.loads(d["active"]) if d["active"] else []
    d["history"] = json.loads(d["history"]) if d["history"] else None
    return Row(**d)


def weights_path(folder: str | os.PathLike, cid: int) -> Path:
    return Path(folder) / "weights" / f"{cid}.safetensors"


def write_weights(folder: str | os.PathLike, cid: int, data: bytes) -> Path:
    """Weights file of a candidate, written whole before its result is committed."""
    path = weights_path(folder, cid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
