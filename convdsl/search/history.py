"""Reading a search history that may have been damaged: what ``Store`` checks before it trusts one.

A history is a file users keep, copy, sync and sometimes edit by hand, so nothing read from it is
assumed well-formed.  ``classify`` tells, without writing a byte, whether a file is a complete
convdsl history, an incomplete one (left by a search stopped while creating it, under an earlier
convdsl that did not create histories atomically), or something else; every row is checked
against its column's type and meaning when it is read (``row_values``).  Anything wrong is a
``HistoryError`` naming the file, the row and the column; the file is never changed or removed.
"""
from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from convdsl.errors import UsageError

APPLICATION_ID = 0x43444C53  # "CDLS" in the SQLite header: a convdsl search history
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

# every table and the columns a history of this schema must have (graph_hash: added by migration)
TABLES = {
    "meta": {"key", "value"},
    "candidates": {"id", "kind", "name", "parent", "operator", "detail", "program", "selection", "text", "hash",
                   "active", "status", "attempts", "cached_from", "created", "started", "finished", "worker",
                   "val_acc", "val_loss", "params", "macs", "latency_ms", "latency_wall_ms", "latency_cpu_ms",
                   "train_seconds", "seconds", "history", "error"},
    "rejected": {"id", "candidate", "parent", "operator", "reason", "error", "text", "created"},
    "events": {"id", "t", "what", "detail"},
}


class HistoryError(UsageError):
    """A search folder whose history cannot be used: missing, incomplete, not a history, damaged,
    or not writable (disk full, read-only).  The file is left exactly as it was."""

    kind = "history error"


# ---- recognizing a history ------------------------------------------------------------------
def classify(path: Path) -> str:
    """``"complete"`` or ``"incomplete"`` (a history holding nothing yet: no configuration, no
    candidate, no event); raises ``HistoryError`` for anything that is not a usable history.
    Reads only (``query_only``; SQLite may still recover a hot journal, as any reader would)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise HistoryError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise HistoryError(f"{path} is not a regular file", hint=_LEFT_ALONE)
    if st.st_size == 0:
        return "incomplete"  # created, then stopped before SQLite wrote its first page
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as e:
        raise HistoryError(f"cannot read {path}: {e.strerror or e}") from None
    if not head.startswith(SQLITE_MAGIC):
        raise HistoryError(f"{path} is not a search history (not an SQLite database)", hint=_LEFT_ALONE)
    db = connect_readonly(path)
    try:
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            app, version = db.execute("PRAGMA application_id").fetchone()[0], db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as e:
            raise damaged(path, e) from None
        if check != "ok":
            raise HistoryError(f"{path} is damaged (SQLite integrity check: {short(check)})", hint=_LEFT_ALONE)
        if app not in (0, APPLICATION_ID) or not set(TABLES) <= tables:
            raise HistoryError(f"{path} is an SQLite database but not a convdsl search history",
                               expected=f"tables {', '.join(sorted(TABLES))}",
                               got=", ".join(sorted(tables)) or "no tables", hint=_LEFT_ALONE)
        if version > SCHEMA_VERSION:
            raise HistoryError(f"{path} was written by a newer convdsl (history schema {version}, this one reads "
                               f"{SCHEMA_VERSION})", hint="resume it with the convdsl that started it")
        try:
            for table, want in TABLES.items():
                have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                if not want <= have:
                    raise HistoryError(f"{path}: table {table} lacks column(s) {', '.join(sorted(want - have))}",
                                       hint=_LEFT_ALONE)
            has_config = db.execute("SELECT COUNT(*) FROM meta WHERE key = 'config'").fetchone()[0] > 0
            filled = sum(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("candidates", "events"))
        except sqlite3.Error as e:
            raise damaged(path, e) from None
        if has_config:
            return "complete"
        if filled:
            raise HistoryError(f"{path} holds candidates but no search configuration", hint=_LEFT_ALONE)
        return "incomplete"
    finally:
        db.close()


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot write (not ``mode=ro``: that cannot read a WAL history whose
    ``-shm`` file is gone)."""
    try:
        db = sqlite3.connect(path, timeout=30.0)
        db.execute("PRAGMA query_only = 1")
        return db
    except sqlite3.Error as e:
        raise damaged(path, e) from None


_LEFT_ALONE = "the file was left as it is: restore it from a copy, or start the search in another folder"


def damaged(path: Path, e: sqlite3.Error) -> HistoryError:
    """The HistoryError for an error SQLite raised on ``path``: a full disk, a read-only file or
    folder, or a damaged file."""
    name = getattr(e, "sqlite_errorname", "") or ""
    folder = path.parent
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        return HistoryError(f"cannot write {path}: {e}", hint=f"free disk space, then continue with: convdsl search "
                                                              f"--resume {folder} (every stored result is kept)")
    if name.startswith("SQLITE_READONLY") or (name.startswith("SQLITE_CANTOPEN") and not os.access(folder, os.W_OK)):
        return HistoryError(f"cannot write {path}: the file or its folder is read-only",
                            hint="a search needs write access to its folder (its lock, history and report)")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return HistoryError(f"{path} is busy: another process holds it ({e})", hint="wait for it, then retry")
    return HistoryError(f"{path} is damaged or unreadable: {e}", hint=_LEFT_ALONE)


# ---- rows -------------------------------------------------------------------------------------
_INT, _REAL, _TEXT = "an integer", "a number", "text"
# column -> (kind, may be NULL)
CANDIDATE_COLUMNS: dict[str, tuple[str, bool]] = {
    "id": (_INT, False), "kind": (_TEXT, False), "name": (_TEXT, True), "parent": (_INT, True),
    "operator": (_TEXT, True), "detail": (_TEXT, True), "program": (_TEXT, False), "selection": (_TEXT, False),
    "text": (_TEXT, False), "hash": (_TEXT, False), "graph_hash": (_TEXT, False), "active": (_TEXT, True),
    "status": (_TEXT, False), "attempts": (_INT, False), "cached_from": (_INT, True), "created": (_REAL, False),
    "started": (_REAL, True), "finished": (_REAL, True), "worker": (_TEXT, True), "val_acc": (_REAL, True),
    "val_loss": (_REAL, True), "params": (_INT, True), "macs": (_INT, True), "latency_ms": (_REAL, True),
    "latency_wall_ms": (_REAL, True), "latency_cpu_ms": (_REAL, True), "train_seconds": (_REAL, True),
    "seconds": (_REAL, True), "history": (_TEXT, True), "error": (_TEXT, True),
}
KINDS = ("search", "reference")
STATUSES = ("pending", "running", "done", "failed")
DONE_NEEDS = ("val_acc", "params", "macs", "latency_ms")  # what the report prints of a finished candidate


def short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _is(kind: str, v: Any) -> bool:
    if kind == _INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == _REAL:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, str)


def row_values(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """A candidate row as stored -> the values of a ``Row`` (JSON columns decoded), or a
    ``HistoryError`` naming the candidate and the column that is wrong."""
    rid = raw.get("id")
    where = f"{path}: candidate {short(rid)}"

    def bad(col: str, what: str) -> HistoryError:
        return HistoryError(f"{where}: column {col} {what}", hint=_LEFT_ALONE)

    for col, (kind, nullable) in CANDIDATE_COLUMNS.items():
        v = raw.get(col)
        if v is None:
            if not nullable:
                raise bad(col, "is empty (NULL)")
        elif not _is(kind, v):
            raise bad(col, f"holds {short(v)}, expected {kind}")
    out = dict(raw)
    if out["kind"] not in KINDS:
        raise bad("kind", f"is {short(out['kind'])}, expected one of {', '.join(KINDS)}")
    if out["status"] not in STATUSES:
        raise bad("status", f"is {short(out['status'])}, expected one of {', '.join(STATUSES)}")
    if out["status"] == "done":
        for col in DONE_NEEDS:
            if out[col] is None:
                raise bad(col, "is empty for a finished ('done') candidate")
    if out["val_acc"] is not None and not 0.0 <= out["val_acc"] <= 1.0:
        raise bad("val_acc", f"is {out['val_acc']}, expected an accuracy from 0 to 1")
    out["selection"] = _json(out["selection"], lambda: bad("selection", "is not valid JSON"))
    if not isinstance(out["selection"], dict) or not all(isinstance(k, str) and _is(_INT, i)
                                                         for k, i in out["selection"].items()):
        raise bad("selection", "is not a map of choice names to option numbers")
    out["active"] = _json(out["active"], lambda: bad("active", "is not valid JSON")) if out["active"] else []
    if not isinstance(out["active"], list) or not all(isinstance(k, str) for k in out["active"]):
        raise bad("active", "is not a list of choice names")
    if out["history"]:
        out["history"] = _json(out["history"], lambda: bad("history", "is not valid JSON"))
        if not isinstance(out["history"], list):
            raise bad("history", "is not a list of epochs")
    else:
        out["history"] = None
    return out


def _json(text: str, error) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, or nesting too deep to decode
        raise error() from None


def json_value(path: Path, what: str, text: Any) -> Any:
    """A JSON cell outside the candidates table (meta values, event details)."""
    if not isinstance(text, str):
        raise HistoryError(f"{path}: {what} holds {short(text)}, expected JSON text", hint=_LEFT_ALONE)
    return _json(text, lambda: HistoryError(f"{path}: {what} is not valid JSON ({short(text)})", hint=_LEFT_ALONE))


def event_values(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    where = f"event {short(raw.get('id'))}"
    if not _is(_REAL, raw.get("t")) or not isinstance(raw.get("what"), str):
        raise HistoryError(f"{path}: {where} has a time {short(raw.get('t'))} or a name {short(raw.get('what'))} of "
                           "the wrong type", hint=_LEFT_ALONE)
    detail = json_value(path, where, raw["detail"]) if raw.get("detail") is not None else None
    return {"t": raw["t"], "what": raw["what"], "detail": detail}


def rejected_values(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    for col in ("operator", "reason"):
        v = raw.get(col)
        if not (isinstance(v, str) or (v is None and col == "operator")):
            raise HistoryError(f"{path}: rejected mutant {short(raw.get('id'))}: column {col} holds {short(v)}, "
                               "expected text", hint=_LEFT_ALONE)
    return raw
