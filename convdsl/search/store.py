"""The search history in SQLite: every candidate's program, hash, metrics, status and timing.

One writer: only the search's parent process writes (workers return their results to it), and a
lock file keeps a second search off the same folder.  A history comes into existence whole: it is
written under a temporary name (schema, configuration and references in one transaction) and
renamed to ``search.sqlite``, so a search killed while creating it leaves either no history or a
complete one.  Each later state change is one transaction, in WAL mode with
``synchronous=FULL``, so a search killed at any instant (even ``kill -9``) leaves every finished
evaluation on disk.  On resume the candidates that were ``running`` go back to
``pending`` and are evaluated again; ``finish`` only moves a ``running`` candidate to ``done``
or ``failed``, so no finished evaluation is ever repeated or overwritten.

Candidate ids are the search's proposal order (0, 1, ...); the hand-written references that are
measured for comparison get negative ids.

Nothing read back is trusted (``history``): a file that is not a history, a damaged one, or a row
of the wrong types is a ``HistoryError`` naming the file and what is wrong, and is left as it is.
SQLite errors while writing (a full disk, a read-only folder) are ``HistoryError`` too, raised
after the transaction is rolled back, so the history stays consistent and resumable.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from convdsl.search.faults import stop_point
from convdsl.search.files import own_dir, write_atomic
from convdsl.search.history import (APPLICATION_ID, SCHEMA_VERSION, HistoryError, classify, damaged, event_values,
                                    json_value, rejected_values, row_values)

DB_NAME = "search.sqlite"
PARTIAL_NAME = DB_NAME + ".partial"  # a history being created
LOCK_NAME = "search.lock"
_SIDE_FILES = ("-wal", "-shm", "-journal")

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
    """The SQLite history of one search folder (an existing, complete one; ``create`` makes one).
    ``lock=True`` holds the folder for this process: a second search on it is refused."""

    def __init__(self, folder: str | os.PathLike, *, lock: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self.db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self.replaced_incomplete = False
        if not os.path.lexists(self.path):
            hint = "start one with: convdsl search SPACE.cdl --out DIR"
            if os.path.lexists(self.folder / PARTIAL_NAME):
                hint = (f"a search was stopped while creating its history, before anything was evaluated; start it "
                        f"again: convdsl search SPACE.cdl --out {self.folder}")
            raise HistoryError(f"{self.folder} holds no search ({DB_NAME} is missing)", hint=hint)
        try:
            if lock:
                self._lock_fd = take_lock(self.folder)
            if classify(self.path) == "incomplete":
                raise HistoryError(f"{self.path} is an incomplete history: a search was stopped while creating it, "
                                   "before anything was evaluated",
                                   hint=f"start the search again (it replaces the incomplete history): "
                                        f"convdsl search SPACE.cdl --out {self.folder}")
            self._connect()
            self._migrate()
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(cls, folder: str | os.PathLike, meta: dict[str, Any], candidates: list[dict[str, Any]] = ()) -> "Store":
        """A new history holding ``meta`` and ``candidates`` (``add``'s keyword arguments), locked.
        Refused if the folder holds a search; an incomplete history (nothing in it) is replaced
        (``replaced_incomplete`` says so)."""
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HistoryError(f"cannot create the search folder {folder}: {e.strerror or e}") from None
        fd = take_lock(folder)
        path, partial = folder / DB_NAME, folder / PARTIAL_NAME
        try:
            replaced = False
            if os.path.lexists(path):
                if classify(path) == "complete":
                    raise HistoryError(f"{folder} already holds a search",
                                       hint=f"continue it: convdsl search --resume {folder}")
                replaced = True
            for p in [partial, *(Path(str(partial) + s) for s in _SIDE_FILES)]:
                _remove(p)  # a creation that was killed (we hold the lock: nobody else's)
            _build(partial, meta, candidates)
            stop_point("create:partial")
            # the main file first: its side files without it are orphans the next creation removes
            for p in [path, *(Path(str(path) + s) for s in _SIDE_FILES)]:
                _remove(p)
            os.replace(partial, path)
            _fsync_dir(folder)
        except OSError as e:
            os.close(fd)
            raise HistoryError(f"cannot create {path}: {e.strerror or e}") from None
        except BaseException:
            os.close(fd)
            raise
        store = cls.__new__(cls)
        store.folder, store.path, store.db, store._lock_fd = folder, path, None, fd
        store.replaced_incomplete = replaced
        try:
            store._connect()
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def check_free(folder: str | os.PathLike) -> None:
        """Refuse at once a folder that holds a search or that a search is running on (``create``
        checks again under the lock: this only spares loading data and torch to learn it)."""
        folder = Path(folder)
        if not folder.is_dir():
            return
        if os.path.lexists(folder / LOCK_NAME):  # nothing is created here: a refused search leaves no trace
            os.close(take_lock(folder))
        path = folder / DB_NAME
        if os.path.lexists(path) and classify(path) == "complete":
            raise HistoryError(f"{folder} already holds a search", hint=f"continue it: convdsl search --resume {folder}")

    def _connect(self) -> None:
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # explicit transactions
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as e:
            raise damaged(self.path, e) from None

    def _migrate(self) -> None:
        cols = {r[1] for r in self._q("PRAGMA table_info(candidates)")}
        if "graph_hash" not in cols:  # a history from before network hashes: use the text hash
            with self.tx() as db:
                db.execute("ALTER TABLE candidates ADD COLUMN graph_hash TEXT NOT NULL DEFAULT ''")
                db.execute("UPDATE candidates SET graph_hash = hash")

    # ---- locking and transactions ---------------------------------------------------------
    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; an SQLite error (a full disk...) rolls it back and is a HistoryError."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise damaged(self.path, e) from None
        try:
            yield self.db
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise damaged(self.path, e) from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

    def _q(self, sql: str, args: tuple | list = ()) -> list[sqlite3.Row]:
        """A read, whole (a damaged page may only show up while iterating)."""
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise damaged(self.path, e) from None

    # ---- meta -----------------------------------------------------------------------------
    def set_meta(self, **items: Any) -> None:
        with self.tx() as db:
            for k, v in items.items():
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, json.dumps(v)))

    def meta(self, key: str, default: Any = None) -> Any:
        rows = self._q("SELECT value FROM meta WHERE key = ?", (key,))
        return json_value(self.path, f"meta entry {key!r}", rows[0][0]) if rows else default

    def event(self, what: str, detail: Any = None) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO events (t, what, detail) VALUES (?, ?, ?)",
                       (time.time(), what, json.dumps(detail) if detail is not None else None))

    def events(self) -> list[dict]:
        return [event_values(self.path, dict(r)) for r in self._q("SELECT * FROM events ORDER BY id")]

    # ---- candidates -----------------------------------------------------------------------
    def add(self, cid: int, **candidate: Any) -> None:
        """A new candidate, with the mutants refused on the way to it, in one transaction; see
        ``_insert``."""
        with self.tx() as db:
            _insert(db, cid, **candidate)

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
                (status, time.time(), storable(result.get("worker")), storable(result.get("error")),
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
        return [Row(**row_values(self.path, dict(r))) for r in self._q(sql, args)]

    def row(self, cid: int) -> Row | None:
        r = self._q("SELECT * FROM candidates WHERE id = ?", (cid,))
        return Row(**row_values(self.path, dict(r[0]))) if r else None

    def next_pending(self) -> int | None:
        """References first (negative ids, -1 first), then search candidates in order."""
        r = self._q("SELECT id FROM candidates WHERE status = 'pending'"
                    " ORDER BY kind = 'search', CASE WHEN id < 0 THEN -id ELSE id END LIMIT 1")
        return r[0][0] if r else None

    def count(self, kind: str = "search", status: str | tuple[str, ...] | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM candidates WHERE kind = ?", [kind]
        if status is not None:
            st = (status,) if isinstance(status, str) else status
            sql += f" AND status IN ({', '.join('?' * len(st))})"
            args += list(st)
        return self._q(sql, args)[0][0]

    def finished_through(self, cid: int) -> bool:
        """Are search candidates 0..cid all finished (done or failed)?"""
        if cid < 0:
            return True
        n = self._q("SELECT COUNT(*) FROM candidates WHERE kind = 'search' AND id <= ?"
                    " AND status IN ('done', 'failed')", (cid,))[0][0]
        return n == cid + 1

    def hashes(self) -> dict[str, int]:
        """network hash -> id of the first search candidate that builds that network."""
        out: dict[str, int] = {}
        for r in self._q("SELECT graph_hash, id FROM candidates WHERE kind = 'search' ORDER BY id"):
            out.setdefault(r[0], r[1])
        return out

    def rejected(self) -> list[dict]:
        return [rejected_values(self.path, dict(r)) for r in self._q("SELECT * FROM rejected ORDER BY id")]

    def rejected_counts(self) -> dict[str, dict[str, int]]:
        """operator -> reason -> count."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rejected():
            counts = out.setdefault(r["operator"] or "sample", {})
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        return out

    def check_rows(self) -> None:
        """Read every row once (each is checked as it is read): a damaged history is refused
        before a search resumes on it, not halfway."""
        self.rows()
        self.events()
        self.rejected()

    def integrity(self) -> str:
        return self._q("PRAGMA integrity_check")[0][0]


def _insert(db: sqlite3.Connection, cid: int, *, program: str, selection: dict[str, int], text: str, hash: str,
            graph_hash: str, active: list[str], parent: int | None = None, operator: str | None = None,
            detail: str | None = None, kind: str = "search", name: str | None = None,
            rejected: list[dict] | None = None, cached: "Row | None" = None) -> None:
    """Insert a candidate and the mutants refused on the way to it.  A ``cached`` duplicate is
    stored finished, with the metrics of the evaluation it repeats."""
    now = time.time()
    db.execute(
        "INSERT INTO candidates (id, kind, name, parent, operator, detail, program, selection, text, hash,"
        " graph_hash, active, status, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
        (cid, kind, storable(name), parent, storable(operator), storable(detail), program,
         json.dumps(selection, sort_keys=True), text, hash, graph_hash, json.dumps(active), now))
    for r in rejected or []:
        db.execute("INSERT INTO rejected (candidate, parent, operator, reason, error, text, created)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (cid, r.get("parent"), storable(r.get("operator")), storable(r["reason"]), storable(r.get("error")),
                    storable(r.get("text")), now))
    if cached is not None:
        cols = ", ".join(f"{m} = ?" for m in METRICS)
        db.execute(f"UPDATE candidates SET status = ?, cached_from = ?, finished = ?, started = ?,"
                   f" history = ?, error = ?, {cols} WHERE id = ?",
                   (cached.status, cached.id, now, now, json.dumps(cached.history), cached.error,
                    *[getattr(cached, m) for m in METRICS[:-1]], 0.0, cid))


def storable(value: Any) -> Any:
    """Text SQLite can store: a message that quotes a path with undecodable bytes (Python's lone
    surrogates) keeps them as ``\\udcff`` escapes instead of failing the whole transaction."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _build(path: Path, meta: dict[str, Any], candidates: list[dict[str, Any]]) -> None:
    """A whole history at ``path``: schema, meta and candidates in one transaction, then WAL mode
    (persistent in the file) and closed, so nothing but the one file remains."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for statement in _statements(_SCHEMA):
            db.execute(statement)
        for k, v in meta.items():
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (k, json.dumps(v)))
        for c in candidates:
            _insert(db, **c)
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as e:
        raise damaged(path, e) from None
    finally:
        db.close()


def take_lock(folder: Path) -> int:
    """Hold ``folder`` for this process (an exclusive ``flock`` on its lock file, released when the
    process dies, however); a second search on it is refused.  The lock file is never followed
    through a link, nor truncated when it has other names (hard links)."""
    import fcntl

    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise HistoryError(f"{path} is a symbolic link; a search never writes through one",
                               hint="remove the link") from None
        raise HistoryError(f"cannot create the lock file {path}: {e.strerror or e}",
                           hint="a search needs write access to its folder") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HistoryError(f"{path} is not a regular file", hint="remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise HistoryError(f"another search is running on {folder}",
                               hint="wait for it, or stop it and resume with --resume") from None
        if st.st_nlink == 1:  # who holds it, for people; a failed write (disk full) changes nothing
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def weights_path(folder: str | os.PathLike, cid: int) -> Path:
    return Path(folder) / "weights" / f"{cid}.safetensors"


def write_weights(folder: str | os.PathLike, cid: int, data: bytes) -> Path:
    """Weights file of a candidate, written whole before its result is committed."""
    path = weights_path(folder, cid)
    own_dir(path.parent)
    return write_atomic(path, data)
