"""kill -9 of `convdsl search` at any point: no process left behind, and a history that resumes with
nothing lost or repeated.

A real search is held at a named point (convdsl/search/faults.py), the search process alone is
killed with SIGKILL (as `kill -9 PID` does: its workers get no signal from the test), then every
process it started must be gone and `--resume` (or, for a history that never came into
existence, the same command again) must go on.  Points: while the history is being created,
during the first evaluation, right after a stored result with two workers busy, and while the
report is written.  A search whose disk fills up (RLIMIT_FSIZE) stops with a clean
error and resumes the same way."""
from __future__ import annotations

import os
import resource

import pytest

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


def test_kill_9_at_every_point_of_one_search(tmp_path, searches):
    """One search (budget 4, two workers), killed at each point in turn and continued each time:
    creating its history, its first evaluation, right after a stored result with the other worker
    busy, writing its report; then finished.  One chain instead of one search per point keeps the
    CI cost to five process starts."""
    space(tmp_path)
    budget, db = 4, tmp_path / "out" / "search.sqlite"
    before = tree_state(tmp_path)
    start = ("tiny.cdl", "--out", "out", "--budget", str(budget), "--workers", "2", *SEARCH_ARGS)

    # 1. while the history is created: no history, and the same command starts again
    proc, err1 = searches(*start, cwd=tmp_path, stop_at="create:partial")
    wait_stopped(proc, err1, "create:partial")
    assert kill_9(proc) == []
    assert not db.exists() and (tmp_path / "out" / "search.sqlite.partial").exists()
    assert_refused(run_cli("search", "--resume", "out", cwd=tmp_path), exit_code=2,
                   mentions="stopped while creating its history")

    # 2. during the first evaluation: the worker (and the resource tracker) die with the search
    proc, err2 = searches(*start, cwd=tmp_path, stop_at="running:0")
    wait_stopped(proc, err2, "running:0")
    assert kill_9(proc) == []
    assert candidates(db)[0][0] == "running" and not (tmp_path / "out" / "search.sqlite.partial").exists()

    # 3. right after a stored result, the other worker busy; meanwhile a second search is refused
    proc, err3 = searches("--resume", "out", "--no-progress", cwd=tmp_path, stop_at="stored:1")
    wait_stopped(proc, err3, "stored:1")
    held = tree_state(tmp_path / "out")
    assert_refused(run_cli("search", "--resume", "out", cwd=tmp_path), exit_code=2, mentions="another search")
    assert_refused(run_cli("search", *start, cwd=tmp_path), exit_code=2, mentions="another search")
    assert_refused(run_cli("search-report", "out", cwd=tmp_path), exit_code=2, mentions="another search")
    assert tree_state(tmp_path / "out") == held
    assert kill_9(proc) == []
    rows = candidates(db)
    assert rows[0][4] == 2  # #0 was cut by the kill in step 2 and evaluated again from the start
    stored = {cid: v for cid, v in rows.items() if v[0] == "done"}
    assert 1 in stored

    # 4. while writing the report: nothing is evaluated again, the report is written again
    proc, err4 = searches("--resume", "out", "--no-progress", cwd=tmp_path, stop_at="report")
    wait_stopped(proc, err4, "report")
    assert kill_9(proc) == []
    assert (tmp_path / "out" / "pareto.partial").is_dir() and not (tmp_path / "out" / "summary.json").exists()
    evaluated = candidates(db)
    for cid, v in stored.items():  # finished before a kill: kept exactly, never evaluated again
        assert evaluated[cid] == v

    _resume(tmp_path)
    assert _finished_whole(tmp_path, budget) == evaluated
    files = sorted(p.name for p in (tmp_path / "out" / "pareto").iterdir())
    assert files and all(f.endswith((".cdl", ".safetensors")) for f in files)
    assert_only_changed(before, tree_state(tmp_path), allowed=("out", *(e.name for e in (err1, err2, err3, err4))))


def _file_size_limit(nbytes: int):
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return cap


def test_a_full_disk_stops_the_search_cleanly_and_it_resumes(tmp_path, searches):
    """RLIMIT_FSIZE makes every write past 160 KB fail (EFBIG, as ENOSPC would on a full disk):
    the history is created (~30 KB) and its WAL fills up after a few candidates."""
    space(tmp_path)
    budget = 6
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


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE") != "thorough", reason="starts a local Ray (~1 min): thorough")
def test_kill_9_with_a_local_ray(tmp_path, searches):
    """Ray's fate sharing kills its raylet, GCS and workers with the search; its two agents exit
    by themselves about a minute later (Ray's shutdown), which the settle time allows for."""
    pytest.importorskip("ray")
    space(tmp_path)
    proc, err = searches("tiny.cdl", "--out", "out", "--budget", "2", "--workers", "1", "--executor", "ray",
                         *SEARCH_ARGS, cwd=tmp_path, stop_at="running:0")
    wait_stopped(proc, err, "running:0", timeout=300)
    assert kill_9(proc, settle=150) == []
