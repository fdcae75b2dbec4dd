"""kill -9 of `convdsl search` at any point: no process left behind, and a history that resumes with
nothing lost or repeated.

Each test holds a real search at a named point (convdsl/search/faults.py), kills the search
process alone with SIGKILL (as `kill -9 PID` does: its workers get no signal from the test), then
checks that every process it started is gone and that `--resume` (or, for a history that never
came into existence, a new search) finishes the budget.  Points: while the history is being
created, during the first evaluation, right after a stored result with two workers busy, and
while the report is written.  A search whose disk fills up (RLIMIT_FSIZE) stops with a clean
error and resumes the same way."""
from __future__ import annotations

import resource

from tests.adversarial.harness import assert_no_crash, assert_only_changed, assert_refused, run_cli, tree_state
from tests.adversarial.searching import SEARCH_ARGS, candidates, kill_9, searches, space, wait_stopped  # noqa: F401


def _resume(tmp, *extra: str):
    r = run_cli("search", "--resume", "out", *extra, "--no-progress", cwd=tmp, timeout=300, mem_mb=6144)
    assert_no_crash(r)
    assert r.returncode == 0, r.output[-3000:]
    return r


def _finished_whole(tmp, budget: int) -> dict[int, tuple]:
    rows = candidates(tmp / "out" / "search.sqlite")
    assert sorted(rows) == list(range(budget)) and all(v[0] == "done" for v in rows.values()), rows
    assert len({v[1] for v in rows.values()}) == budget  # no program evaluated twice
    for cid in rows:
        assert (tmp / "out" / "weights" / f"{cid}.safetensors").is_file()
    assert (tmp / "out" / "summary.json").is_file() and (tmp / "out" / "pareto").is_dir()
    assert not (tmp / "out" / "pareto.partial").exists() and not (tmp / "out" / "search.sqlite.partial").exists()
    return rows


def test_kill_while_the_history_is_created(tmp_path, searches):
    space(tmp_path)
    before = tree_state(tmp_path)
    proc, err = searches("tiny.cdl", "--out", "out", "--budget", "2", "--workers", "1", *SEARCH_ARGS,
                             cwd=tmp_path, stop_at="create:partial")
    wait_stopped(proc, err, "create:partial")
    assert kill_9(proc) == []
    assert not (tmp_path / "out" / "search.sqlite").exists()  # a history exists whole or not at all
    r = run_cli("search", "--resume", "out", cwd=tmp_path)
    assert_refused(r, exit_code=2, mentions="stopped while creating its history")
    r = run_cli("search", "tiny.cdl", "--out", "out", "--budget", "2", "--workers", "1", *SEARCH_ARGS,
                cwd=tmp_path, timeout=300, mem_mb=6144)  # the same command again starts cleanly
    assert r.returncode == 0, r.output[-3000:]
    _finished_whole(tmp_path, 2)
    assert_only_changed(before, tree_state(tmp_path), allowed=("out", err.name))


def test_kill_during_the_first_evaluation(tmp_path, searches):
    space(tmp_path)
    proc, err = searches("tiny.cdl", "--out", "out", "--budget", "2", "--workers", "1", *SEARCH_ARGS,
                             cwd=tmp_path, stop_at="running:0")
    wait_stopped(proc, err, "running:0")
    assert kill_9(proc) == []  # the worker (and the resource tracker) died with the search
    assert candidates(tmp_path / "out" / "search.sqlite")[0][0] == "running"
    log = _resume(tmp_path).stderr
    assert "re-queued (#0)" in log
    rows = _finished_whole(tmp_path, 2)
    assert rows[0][4] == 2 and rows[1][4] == 1  # #0 ran again from the start, #1 once


def test_kill_mid_search_with_two_workers_and_a_second_search_refused(tmp_path, searches):
    space(tmp_path)
    budget = 4
    proc, err = searches("tiny.cdl", "--out", "out", "--budget", str(budget), "--workers", "2", *SEARCH_ARGS,
                             cwd=tmp_path, stop_at="stored:1")
    wait_stopped(proc, err, "stored:1")
    # while it holds the folder, a second search on it is refused, and changes nothing
    held = tree_state(tmp_path / "out")
    assert_refused(run_cli("search", "--resume", "out", cwd=tmp_path), exit_code=2, mentions="another search")
    assert_refused(run_cli("search", "tiny.cdl", "--out", "out", *SEARCH_ARGS, cwd=tmp_path), exit_code=2,
                   mentions="another search")
    assert_refused(run_cli("search-report", "out", cwd=tmp_path), exit_code=2, mentions="another search")
    assert tree_state(tmp_path / "out") == held
    assert kill_9(proc) == []
    stored = {cid: v for cid, v in candidates(tmp_path / "out" / "search.sqlite").items() if v[0] == "done"}
    assert 1 in stored
    _resume(tmp_path)
    rows = _finished_whole(tmp_path, budget)
    for cid, v in stored.items():  # finished before the kill: kept exactly, never evaluated again
        assert rows[cid] == v and v[4] == 1


def test_kill_while_reporting(tmp_path, searches):
    space(tmp_path)
    proc, err = searches("tiny.cdl", "--out", "out", "--budget", "2", "--workers", "1", *SEARCH_ARGS,
                             cwd=tmp_path, stop_at="report")
    wait_stopped(proc, err, "report")
    assert kill_9(proc) == []
    evaluated = candidates(tmp_path / "out" / "search.sqlite")
    assert (tmp_path / "out" / "pareto.partial").is_dir() and not (tmp_path / "out" / "summary.json").exists()
    _resume(tmp_path)
    assert _finished_whole(tmp_path, 2) == evaluated  # the report is written again; nothing re-evaluated
    files = sorted(p.name for p in (tmp_path / "out" / "pareto").iterdir())
    assert files and all(f.endswith((".cdl", ".safetensors")) for f in files)


def _file_size_limit(nbytes: int):
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return cap


def test_a_full_disk_stops_the_search_cleanly_and_it_resumes(tmp_path, searches):
    """RLIMIT_FSIZE makes every write past 160 KB fail (EFBIG, as ENOSPC would on a full disk):
    the history is created (~30 KB) and its WAL fills up after a few candidates."""
    space(tmp_path)
    budget = 8
    proc, err = searches("tiny.cdl", "--out", "out", "--budget", str(budget), "--workers", "1", *SEARCH_ARGS,
                             cwd=tmp_path, preexec_fn=_file_size_limit(160 * 1024))
    rc = proc.wait(timeout=300)
    log = err.read_text(errors="replace")
    assert rc == 2 and "Traceback" not in log, log[-3000:]
    assert "cannot write" in log and "--resume" in log, log[-3000:]
    stored = {cid: v for cid, v in candidates(tmp_path / "out" / "search.sqlite").items() if v[0] == "done"}
    assert 0 < len(stored) < budget
    _resume(tmp_path)
    rows = _finished_whole(tmp_path, budget)
    for cid, v in stored.items():
        assert rows[cid] == v
