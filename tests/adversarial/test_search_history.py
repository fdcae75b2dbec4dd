"""Damaged, foreign and hostile search folders: `convdsl search --resume` and `convdsl search-report`
refuse each one with a clean error naming the file and what is wrong (exit 2, no traceback,
bounded time and memory), and leave the history exactly as it was.  Links planted in a search
folder are never written through.

The history damaged here is a real one (a search run in-process with made-up metrics, so no
training), copied for each case.  Every damage goes through the library (``Search.open`` and a
run, ``write_report``, ``compare``); a fresh process of each command under the harness's caps
runs one damage of each kind in CI and every damage with HYPOTHESIS_PROFILE=thorough."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from convdsl.errors import ConvDSLError
from convdsl.search import Search, SearchConfig, Store, write_report
from convdsl.search.history import HistoryError
from convdsl.search.store import write_weights
from tests.adversarial.harness import assert_no_crash, assert_refused, run_cli, tree_state
from tests.search.fakes import FakeExecutor
from tests.search.spaces import TINY

DB = "search.sqlite"
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("history")
    (tmp / "tiny.cdl").write_text(TINY)
    cfg = SearchConfig(space_file=str(tmp / "tiny.cdl"), space_text=TINY, budget=6, objective=("accuracy", "params"),
                       population=3, sample=2, lag=0, epochs=1)
    s = Search.create(tmp / "out", cfg)
    s.run(FakeExecutor(1))
    write_report(s.store, plot=False)
    s.close()
    assert not (tmp / "out" / f"{DB}-wal").exists()
    return tmp / "out"


@pytest.fixture
def out(base, tmp_path) -> Path:
    shutil.copytree(base, tmp_path / "out")
    return tmp_path / "out"


def _sql(db: Path, *statements: str, ignore_checks: bool = False) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        if ignore_checks:
            con.execute("PRAGMA ignore_check_constraints = 1")
        for s in statements:
            con.execute(s)
    finally:
        con.close()


def _config(out: Path, edit=None, text=None) -> None:
    """Store another configuration: ``edit`` changes the decoded one in place, ``text`` makes raw
    text from it."""
    con = sqlite3.connect(out / DB, isolation_level=None)
    try:
        cfg = json.loads(con.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
        if edit is not None:
            edit(cfg)
        con.execute("UPDATE meta SET value = ? WHERE key = 'config'", (text(cfg) if text else json.dumps(cfg),))
    finally:
        con.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else "-"


# name -> (damage(out), what the error says)
DAMAGE = {
    "random bytes": (lambda o: (o / DB).write_bytes(os.urandom(8192)), "not an SQLite database"),
    "truncated": (lambda o: (o / DB).write_bytes((o / DB).read_bytes()[:3 * 4096 + 100]), "damaged"),
    "zero bytes": (lambda o: (o / DB).write_bytes(b""), "incomplete history"),
    "foreign database": (lambda o: ((o / DB).unlink(), _sql(o / DB, "CREATE TABLE users (name TEXT)",
                                                            "INSERT INTO users VALUES ('alice')")),
                         "not a convdsl search history"),
    "newer schema": (lambda o: _sql(o / DB, "PRAGMA user_version = 7"), "newer convdsl"),
    "configuration deleted": (lambda o: _sql(o / DB, "DELETE FROM meta WHERE key = 'config'"),
                              "candidates but no search configuration"),
    "configuration not JSON": (lambda o: _config(o, text=lambda c: '{"space_file": '), "is not valid JSON"),
    "configuration a list": (lambda o: _config(o, text=lambda c: "[1, 2]"), "not a JSON object"),
    "configuration nested 100000 deep": (lambda o: _config(o, text=lambda c: "[" * 100_000 + "]" * 100_000),
                                         "is not valid JSON"),
    "configuration key missing": (lambda o: _config(o, edit=lambda c: c.pop("space_text")), "has no 'space_text'"),
    "configuration key unknown": (lambda o: _config(o, edit=lambda c: c.update(evil=1)), "unknown key 'evil'"),
    "configuration budget text": (lambda o: _config(o, edit=lambda c: c.update(budget="ten")), "'budget' is 'ten'"),
    "configuration epochs -1": (lambda o: _config(o, edit=lambda c: c.update(epochs=-1)), "--epochs must be between"),
    "configuration budget 10^30": (lambda o: _config(o, edit=lambda c: c.update(budget=10**30)),
                                   "--budget must be between"),
    "configuration lr 1e309": (lambda o: _config(o, text=lambda c: json.dumps(c)[:-1] + ', "lr": 1e309}'),
                               "--lr must be between"),
    "accuracy as text": (lambda o: _sql(o / DB, "UPDATE candidates SET val_acc = 'abc' WHERE id = 0"),
                         "column val_acc holds 'abc', expected a number"),
    "selection not JSON": (lambda o: _sql(o / DB, "UPDATE candidates SET selection = '{bad' WHERE id = 1"),
                           "candidate 1: column selection is not valid JSON"),
    "selection a list": (lambda o: _sql(o / DB, "UPDATE candidates SET selection = '[1, 2]' WHERE id = 1"),
                         "not a map of choice names"),
    "selection option as text": (lambda o: _sql(o / DB, "UPDATE candidates SET selection = '{\"width\": \"1\"}'"
                                                         " WHERE id = 2"), "not a map of choice names"),
    "epoch history nested deep": (lambda o: _sql(o / DB, "UPDATE candidates SET history = '" + "[" * 50_000 + "'"
                                                          " WHERE id = 0"), "column history is not valid JSON"),
    "status unknown": (lambda o: _sql(o / DB, "UPDATE candidates SET status = 'weird' WHERE id = 3",
                                      ignore_checks=True), "CHECK constraint failed"),
    "finished without metrics": (lambda o: _sql(o / DB, "UPDATE candidates SET params = NULL WHERE id = 0"),
                                 "params is empty for a finished"),
    "program as bytes": (lambda o: _sql(o / DB, "UPDATE candidates SET program = X'00ff' WHERE id = 0"),
                         "column program holds b'\\x00\\xff', expected text"),
    "id as text": (lambda o: _sql(o / DB, "UPDATE candidates SET attempts = 'many' WHERE id = 4"),
                   "column attempts holds 'many', expected an integer"),
    "accuracy infinite": (lambda o: _sql(o / DB, "UPDATE candidates SET val_acc = 9e999 WHERE id = 2"),
                          "expected an accuracy from 0 to 1"),
    "accuracy 1e308": (lambda o: _sql(o / DB, "UPDATE candidates SET val_acc = 1e308 WHERE id = 1"),
                       "expected an accuracy from 0 to 1"),
    "selection option out of range": (lambda o: _sql(o / DB, "UPDATE candidates SET selection = "
                                                              "'{\"width\": 99, \"depth\": 0, \"mixer\": 0}' WHERE id = 1"),
                                      "gives choice 'width' option 99, which has 2 options"),
    "selection a choice missing": (lambda o: _sql(o / DB, "UPDATE candidates SET selection = '{}' WHERE id = 3"),
                                   "candidate 3: its selection has no option for choice"),
    "program unparseable": (lambda o: _sql(o / DB, "UPDATE candidates SET program = 'network (' WHERE id = 2"),
                            "its stored program does not parse"),
    "event detail not JSON": (lambda o: _sql(o / DB, "UPDATE events SET detail = '{' WHERE id = 1"),
                              "is not valid JSON"),
    "event time as text": (lambda o: _sql(o / DB, "UPDATE events SET t = 'noon' WHERE id = 1"), "wrong type"),
    "rejected reason a blob": (lambda o: _sql(o / DB, "INSERT INTO rejected (candidate, reason, created)"
                                                       " VALUES (1, X'05', 0)"), "rejected mutant"),
    "a folder named search.sqlite": (lambda o: ((o / DB).unlink(), (o / DB).mkdir()), "not a regular file"),
    "a FIFO named search.sqlite": (lambda o: ((o / DB).unlink(), os.mkfifo(o / DB)), "not a regular file"),
    "a link to /dev/zero": (lambda o: ((o / DB).unlink(), (o / DB).symlink_to("/dev/zero")), "not a regular file"),
    "history missing": (lambda o: (o / DB).unlink(), "holds no search"),
}


# damages to what only a resumed search uses (the genotypes evolution mutates): a report ignores them
RESUME_ONLY = {"selection option out of range", "selection a choice missing", "program unparseable"}
# one damage of each kind for each command in CI time; every damage through both when thorough
RESUMED = ("random bytes", "truncated", "zero bytes", "foreign database", "newer schema", "configuration not JSON",
           "configuration nested 100000 deep", "configuration budget 10^30", "accuracy as text",
           "epoch history nested deep", "program as bytes", "selection option out of range", "event detail not JSON", "a FIFO named search.sqlite",
           "a link to /dev/zero")
REPORTED = ("random bytes", "truncated", "configuration key missing", "selection not JSON", "rejected reason a blob",
            "a FIFO named search.sqlite")
CASES = [(name, "resume") for name in DAMAGE if THOROUGH or name in RESUMED] + \
        [(name, "report") for name in DAMAGE if (THOROUGH and name not in RESUME_ONLY) or name in REPORTED]


@pytest.mark.parametrize("name, command", CASES)
def test_a_damaged_history_is_refused_and_left_as_it_is(out, name, command):
    damage, says = DAMAGE[name]
    damage(out)
    before = tree_state(out)
    digest = _digest(out / DB)
    args = ("search", "--resume", "out") if command == "resume" else ("search-report", "out")
    r = run_cli(*args, cwd=out.parent, timeout=60, mem_mb=6144)
    assert_refused(r, exit_code=2, mentions=says)
    assert "history error" in r.stderr
    assert _digest(out / DB) == digest  # never changed, never removed
    after = tree_state(out)
    side = {"search.lock", f"{DB}-shm", f"{DB}-wal"}  # the lock (pid inside) and SQLite's own side files
    assert {p for p in set(before) | set(after) if before.get(p) != after.get(p)} <= side


def test_the_damages_are_history_errors_in_process_too(base, tmp_path):
    """The library raises the same errors (``Search.open``, ``write_report``, ``compare``): nothing
    but a HistoryError (a ConvDSLError) ever escapes."""
    from convdsl.search.report import compare

    for k, (name, (damage, says)) in enumerate(DAMAGE.items()):
        if "FIFO" in name:
            continue  # covered by the command (a FIFO cannot be copied by copytree)
        o = tmp_path / f"o{k}"
        shutil.copytree(base, o)
        damage(o)
        actions = [lambda: _resume(o)]
        if name not in RESUME_ONLY:
            actions += [lambda: compare([o]), lambda: _report(o)]
        for action in actions:
            with pytest.raises(ConvDSLError) as e:
                action()
            assert isinstance(e.value, HistoryError) and says in e.value.render(), (name, e.value.render())


def _resume(folder: Path) -> None:
    s = Search.open(folder)
    try:
        s.run(FakeExecutor(1))
        write_report(s.store, plot=False)
    finally:
        s.close()


def _report(folder: Path) -> None:
    store = Store(folder, lock=True)
    try:
        write_report(store, plot=False)
    finally:
        store.close()


def test_a_foreign_database_gets_no_tables_added(out):
    (out / DB).unlink()
    _sql(out / DB, "CREATE TABLE users (name TEXT)")
    run_cli("search", "--resume", "out", cwd=out.parent)
    con = sqlite3.connect(out / DB)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["users"]
    con.close()


def test_a_new_search_replaces_only_an_incomplete_history(out, tmp_path):
    """An empty history (a search killed while an earlier convdsl created it) is replaced by a new
    search with a note; a complete one is refused, a damaged one too, and neither is touched."""
    cfg = SearchConfig(space_file=str(tmp_path / "tiny.cdl"), space_text=TINY, budget=2,
                       objective=("accuracy", "params"), population=2, sample=2, lag=0, epochs=1)
    with pytest.raises(HistoryError, match="already holds a search"):
        Search.create(out, cfg)
    (out / DB).write_bytes(b"")
    s = Search.create(out, cfg)
    assert s.store.replaced_incomplete and s.store.count() == 0
    s.close()
    (out / DB).write_bytes(b"not sqlite" * 100)
    with pytest.raises(HistoryError, match="not an SQLite database"):
        Search.create(out, cfg)
    assert (out / DB).read_bytes() == b"not sqlite" * 100


def test_a_history_resumes_without_its_space_file(base, tmp_path):
    """A history carries its space and imports: moved to another folder with the space file gone,
    it resumes (a larger budget) and reports."""
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(base, moved)
    s = Search.open(moved, budget=8)
    s.run(FakeExecutor(1))
    assert s.store.count(status="done") == 8
    summary = write_report(s.store, plot=False)
    s.close()
    assert all((moved / f["file"]).is_file() for f in summary["front"])


# ---- links planted in a search folder -------------------------------------------------------------
def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(out):
    victim = out.parent / "victim.txt"
    victim.write_text("precious\n")
    (out / "search.lock").unlink()
    (out / "search.lock").symlink_to(victim)
    for args in (("search", "--resume", "out"), ("search-report", "out")):
        assert_refused(run_cli(*args, cwd=out.parent, mem_mb=6144), exit_code=2, mentions="symbolic link")
    assert victim.read_text() == "precious\n"


def test_a_lock_file_that_is_a_fifo_is_refused_without_hanging(out):
    (out / "search.lock").unlink()
    os.mkfifo(out / "search.lock")
    r = run_cli("search", "--resume", "out", cwd=out.parent, timeout=60, mem_mb=6144)
    assert_refused(r, exit_code=2, mentions="not a regular file")


def test_report_files_that_are_links_are_replaced_not_followed(out):
    victim_file, victim_dir = out.parent / "victim.md", out.parent / "victim_dir"
    victim_file.write_text("precious\n")
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("keep\n")
    for name in ("summary.md", "summary.json", "pareto.png"):
        (out / name).unlink(missing_ok=True)
        (out / name).symlink_to(victim_file)
    shutil.rmtree(out / "pareto")
    (out / "pareto").symlink_to(victim_dir)
    r = run_cli("search-report", "out", cwd=out.parent, mem_mb=6144)
    assert_no_crash(r)
    assert r.returncode == 0, r.output
    assert victim_file.read_text() == "precious\n" and (victim_dir / "keep.txt").read_text() == "keep\n"
    assert sorted(p.name for p in victim_dir.iterdir()) == ["keep.txt"]
    for name in ("summary.md", "summary.json", "pareto.png", "pareto"):
        assert not (out / name).is_symlink()
    assert any((out / "pareto").glob("*.cdl"))


def test_weights_are_never_written_through_a_link(out):
    victim = out.parent / "victim_dir"
    victim.mkdir()
    shutil.rmtree(out / "weights", ignore_errors=True)
    (out / "weights").symlink_to(victim)
    with pytest.raises(HistoryError, match="symbolic link"):
        write_weights(out, 0, b"weights")
    assert list(victim.iterdir()) == []
