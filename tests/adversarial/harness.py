"""Running convdsl the way an attacker would: a fresh process under a memory cap and a time
limit, with the checks every hostile input must pass.

    r = run_cli("check", path, cwd=tmp_path)
    assert_refused(r, exit_code=5, location=f"{path}:3:9")

``run_cli`` never lets a hung or runaway command hang the suite: the process is killed at
``timeout`` seconds and its address space is capped at ``mem_mb`` (RLIMIT_AS), so a
resource bomb that is not refused shows up as a MemoryError traceback, a signal, or a
timeout, and fails the test.  ``tree_state``/``assert_only_changed`` check that nothing
outside the output folder was created, changed or removed.
"""
from __future__ import annotations

import hashlib
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Exit codes documented in the README ("Errors"); anything else is a defect.
EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}
DEFAULT_MEM_MB = 3072  # torch and TVM reserve address space; 3 GiB is far below the bombs we send
DEFAULT_TIMEOUT = 60.0


@dataclass
class Result:
    args: list[str]
    returncode: int | None  # None: killed at the time limit
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = DEFAULT_TIMEOUT,
            mem_mb: int = DEFAULT_MEM_MB, stdin: bytes | None = None, env: dict | None = None) -> Result:
    """``python -m convdsl ARGS`` in a fresh process, capped in memory and time."""
    limit = mem_mb * 1024 * 1024

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    full_env = {**os.environ, "PYTHONFAULTHANDLER": "", "COLUMNS": "200", **(env or {})}
    cmd = [sys.executable, "-m", "convdsl", *map(str, args)]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, timeout=timeout,
                           preexec_fn=cap, env=full_env)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, e.stdout or b"", e.stderr or b""
    return Result(cmd, rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.monotonic() - t0)


def assert_no_crash(r: Result) -> None:
    """The process ended by itself, with a documented exit code and no Python traceback."""
    assert r.returncode is not None, f"{r.args} did not finish in time ({r.seconds:.0f} s)"
    assert r.returncode >= 0, f"{r.args} died of signal {-r.returncode}\n{r.stderr[-2000:]}"
    assert r.returncode in EXIT_CODES, f"{r.args} exited {r.returncode}, not a documented code\n{r.stderr[-2000:]}"
    assert "Traceback (most recent call last)" not in r.output, f"{r.args} printed a traceback:\n{r.output[-3000:]}"


def assert_refused(r: Result, exit_code: int | set[int] | None = None, location: str | None = None,
                   mentions: str | None = None) -> None:
    """A clean, located refusal: documented non-zero exit code, no traceback, and (when the
    input has a location) ``file:line:col`` followed by the source line and a caret."""
    assert_no_crash(r)
    assert r.returncode != 0, f"{r.args} was accepted:\n{r.output[-2000:]}"
    if exit_code is not None:
        codes = {exit_code} if isinstance(exit_code, int) else exit_code
        assert r.returncode in codes, f"{r.args}: exit {r.returncode}, expected {sorted(codes)}\n{r.stderr[-2000:]}"
    if location is not None:
        assert location in r.stderr, f"{r.args}: no location {location!r} in\n{r.stderr[-2000:]}"
        assert re.search(r"^\s*\^+", r.stderr, re.M), f"{r.args}: no caret under the location\n{r.stderr[-2000:]}"
    if mentions is not None:
        assert mentions in r.output, f"{r.args}: {mentions!r} not in\n{r.output[-2000:]}"


def tree_state(root: str | os.PathLike) -> dict[str, tuple]:
    """Every entry under ``root`` (not following links): kind, mode, size and content hash."""
    state: dict[str, tuple] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                state[rel] = ("link", os.readlink(p))
            elif p.is_file():
                state[rel] = ("file", st.st_mode, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            elif p.is_dir():
                state[rel] = ("dir", st.st_mode)
            else:
                state[rel] = ("other", st.st_mode)
    return state


def assert_only_changed(before: dict[str, tuple], after: dict[str, tuple], allowed: tuple[str, ...] = ()) -> None:
    """Nothing changed between two ``tree_state``s except under the ``allowed`` relative paths."""
    def ok(path: str) -> bool:
        return any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)

    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p) and not ok(p))
    assert not changed, f"files changed outside {list(allowed)}: {changed[:20]}"


def run_cli_with_limits(*args: str, rlimits: dict[int, int], cwd: str | os.PathLike | None = None,
                        timeout: float = DEFAULT_TIMEOUT, mem_mb: int = DEFAULT_MEM_MB,
                        env: dict | None = None) -> Result:
    """``run_cli`` with more resource limits on the child, e.g. ``{resource.RLIMIT_FSIZE: 256 * 1024}``:
    no file may grow past 256 KiB, the way a full disk stops a write (Python ignores SIGXFSZ, so
    the write fails with EFBIG; a C compiler child is killed by the signal)."""
    limit = mem_mb * 1024 * 1024

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        for which, value in rlimits.items():
            resource.setrlimit(which, (value, value))

    full_env = {**os.environ, "PYTHONFAULTHANDLER": "", "COLUMNS": "200", **(env or {})}
    cmd = [sys.executable, "-m", "convdsl", *map(str, args)]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=timeout, preexec_fn=cap, env=full_env)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, e.stdout or b"", e.stderr or b""
    return Result(cmd, rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.monotonic() - t0)
