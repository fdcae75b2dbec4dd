"""The history store on its own: whole-or-nothing creation, what a killed creation leaves, the
lock file, text SQLite cannot store as it is."""
from __future__ import annotations

import os
import sqlite3

import pytest

from convdsl.search.history import APPLICATION_ID, HistoryError
from convdsl.search.store import DB_NAME, PARTIAL_NAME, Store, take_lock

META = {"config": {"space_file": "s.cdl"}, "version": "test"}
CANDIDATE = dict(cid=-1, program="network r() {}", selection={}, text="network r() {}", hash="h", graph_hash="g",
                 active=[], kind="reference", name="ref")


def test_a_history_is_created_whole(tmp_path):
    s = Store.create(tmp_path / "out", META, [CANDIDATE])
    assert s.meta("config") == META["config"] and s.row(-1).name == "ref" and not s.replaced_incomplete
    s.close()
    assert sorted(os.listdir(tmp_path / "out")) == sorted([DB_NAME, "search.lock"])  # no partial, no journal left
    con = sqlite3.connect(tmp_path / "out" / DB_NAME)
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_what_a_killed_creation_leaves_is_cleared(tmp_path):
    """A partial history (killed before its rename) and the side files of a main file already
    removed (killed while replacing an incomplete history) are a dead creation's, not data."""
    out = tmp_path / "out"
    out.mkdir()
    (out / PARTIAL_NAME).write_bytes(b"half a history")
    (out / f"{PARTIAL_NAME}-journal").write_bytes(b"j")
    (out / f"{DB_NAME}-wal").write_bytes(b"stale frames of another database")
    with pytest.raises(HistoryError, match="stopped while creating its history"):
        Store(out)
    s = Store.create(out, META, [])
    assert s.count("reference") == 0 and s.integrity() == "ok"
    s.close()
    assert not (out / PARTIAL_NAME).exists() and not (out / f"{PARTIAL_NAME}-journal").exists()


def test_only_an_empty_history_is_replaced(tmp_path):
    out = tmp_path / "out"
    Store.create(out, META, []).close()
    with pytest.raises(HistoryError, match="already holds a search"):
        Store.check_free(out)
    with pytest.raises(HistoryError, match="already holds a search"):
        Store.create(out, META, [])
    con = sqlite3.connect(out / DB_NAME)  # what an earlier convdsl left when killed before its configuration
    con.execute("DELETE FROM meta")
    con.commit()
    con.close()
    with pytest.raises(HistoryError, match="incomplete history"):
        Store(out)
    s = Store.create(out, META, [])
    assert s.replaced_incomplete
    s.close()


def test_the_lock_file_is_never_truncated_through_a_hard_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "out").mkdir()
    os.link(victim, tmp_path / "out" / "search.lock")
    fd = take_lock(tmp_path / "out")
    with pytest.raises(HistoryError, match="another search is running"):
        take_lock(tmp_path / "out")
    os.close(fd)
    assert victim.read_text() == "precious\n"


def test_text_with_undecodable_path_bytes_is_stored_escaped(tmp_path):
    """A front-end error quoting a file name that is not UTF-8 (lone surrogates in Python) failed
    the whole transaction with UnicodeEncodeError."""
    s = Store.create(tmp_path / "out", META, [])
    bad = "sp\udcff.cdl:3:5: shape error"
    s.add(0, program="p", selection={}, text="t", hash="h0", graph_hash="g0", active=[], detail=bad,
          rejected=[{"reason": "elaborate", "error": bad, "operator": "add_skip"}])
    s.mark_running(0)
    assert s.finish(0, {"status": "failed", "error": bad, "worker": "w\udcfe"})
    r = s.row(0)
    assert r.error == r.detail == "sp\\udcff.cdl:3:5: shape error" and r.worker == "w\\udcfe"
    assert s.rejected()[0]["error"] == r.error
    s.close()
