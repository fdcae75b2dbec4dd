"""Helpers for the search tests of the adversarial corpus: a real ``convdsl search`` process held at a
named point (``CONVDSL_SEARCH_STOP_AT``, convdsl/search/faults.py), killed there with SIGKILL as a
user's ``kill -9 PID`` would (the search process only, not its group), and a check that nothing it
started is left: neither a descendant found before the kill nor any process of its session after."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.search.spaces import TINY

# a tiny budget: 1 epoch on digits, params as the cost (deterministic), one worker unless asked
SEARCH_ARGS = ("--epochs", "1", "--objective", "accuracy,params", "--population", "2", "--tournament", "2",
               "--no-progress")


def space(folder: Path) -> Path:
    path = folder / "tiny.cdl"
    path.write_text(TINY)
    return path


def start_search(*args: str, cwd: Path, stop_at: str | None = None, env: dict | None = None,
                 preexec_fn=None) -> tuple[subprocess.Popen, Path]:
    """``python -m convdsl search ARGS`` in its own session; stderr goes to a file (returned)."""
    err = cwd / f"stderr-{time.monotonic_ns()}.txt"
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    if stop_at is not None:
        full_env["CONVDSL_SEARCH_STOP_AT"] = stop_at
    with open(err, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "convdsl", "search", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=f, start_new_session=True, env=full_env, preexec_fn=preexec_fn)
    return proc, err


@pytest.fixture
def searches():
    """``start_search`` whose processes (the whole session) are killed at teardown, pass or fail."""
    started: list[subprocess.Popen] = []

    def start(*args: str, **kw) -> tuple[subprocess.Popen, Path]:
        proc, err = start_search(*args, **kw)
        started.append(proc)
        return proc, err

    yield start
    for proc in started:
        if proc.poll() is None:
            kill_session(proc)


def wait_stopped(proc: subprocess.Popen, err: Path, point: str, timeout: float = 600.0) -> None:
    """Until the search announces it is held at ``point`` (a few seconds on an idle machine; the
    limit allows for a CI machine shared at load 30)."""
    mark = f"convdsl: stopped at {point} "
    deadline = time.monotonic() + timeout
    while mark not in err.read_text(errors="replace"):
        if proc.poll() is not None:
            raise AssertionError(f"the search ended (exit {proc.returncode}) before {point}:\n"
                                 f"{err.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            kill_session(proc)
            raise AssertionError(f"the search did not reach {point} in {timeout:.0f} s")
        time.sleep(0.1)


def session_processes(sid: int) -> list[psutil.Process]:
    """Live (not zombie) processes of session ``sid``, wherever they were reparented."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def kill_9(proc: subprocess.Popen, settle: float = 15.0) -> list[str]:
    """SIGKILL the search process alone; return what is still alive ``settle`` seconds later
    (empty when every worker and the resource tracker died with it)."""
    sid = os.getsid(proc.pid)
    before = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(before, timeout=settle)
    deadline = time.monotonic() + settle
    left = session_processes(sid)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = session_processes(sid)
    alive = {p.pid: p for p in [*alive, *left]}
    described = []
    for p in alive.values():
        try:
            described.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            p.kill()  # leave the machine clean even when the test fails
        except psutil.Error:
            pass
    return described


def kill_session(proc: subprocess.Popen) -> None:
    """The search and everything of its session (its own: it was started with a new session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def candidates(db: Path) -> dict[int, tuple]:
    """id -> (status, hash, val_acc, finished, attempts) of every search candidate, read-only."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0]: tuple(r[1:]) for r in con.execute(
            "SELECT id, status, hash, val_acc, finished, attempts FROM candidates WHERE kind = 'search' ORDER BY id")}
    finally:
        con.close()
