"""Many hostile command lines in one fresh process: ``harness.run_cli`` pays Python's and
convdsl's start-up (1-3 s) per input; a corpus of a hundred inputs runs here in one process
under the same memory cap, each case with its own time limit, captured output and exit code.

    results = run_cli_batch([Case("check", f), Case("fmt", g, timeout=10)], cwd=tmp_path)
    assert_refused(results[0], exit_code=3, location=f"{f}:2:8")

A case that raises anything but ``SystemExit`` gets its traceback printed to its stderr and exit
code 1, so ``harness.assert_no_crash`` fails it as it would a separate process; a case past its
time limit gets ``returncode None``.  When the process itself dies (a signal, the memory cap),
that case and the rest are reported with the signal, as ``run_cli`` would.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from tests.adversarial.harness import DEFAULT_MEM_MB, Result

_MARK = "@@convdsl-case@@ "

_DRIVER = r'''
import contextlib, io, json, os, signal, sys, time, traceback
cases = json.loads(sys.stdin.read())
real_out = sys.stdout
from convdsl.cli import main

class _TimeUp(BaseException):
    pass

def _alarm(*_):
    raise _TimeUp()

signal.signal(signal.SIGALRM, _alarm)
for case in cases:
    os.chdir(case["cwd"])
    out, err = io.StringIO(), io.StringIO()
    t0, rc = time.monotonic(), 0
    try:
        signal.setitimer(signal.ITIMER_REAL, case["timeout"])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(case["args"], prog_name="convdsl")
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except _TimeUp:
                raise
            except BaseException:
                traceback.print_exc()
                rc = 1
    except _TimeUp:
        rc = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    real_out.write("@@convdsl-case@@ " + json.dumps({"rc": rc, "out": out.getvalue()[-20000:],
                   "err": err.getvalue()[-20000:], "s": time.monotonic() - t0}) + "\n")
    real_out.flush()
'''


class Case:
    """One command line: ``Case("check", path)``; ``timeout`` in seconds for this case alone."""

    def __init__(self, *args, timeout: float = 30.0) -> None:
        self.args = tuple(str(a) for a in args)
        self.timeout = timeout

    def __repr__(self) -> str:
        return "convdsl " + " ".join(a if len(a) < 60 else a[:57] + "..." for a in self.args)


def run_cli_batch(cases: list[Case], cwd: str | os.PathLike, mem_mb: int = DEFAULT_MEM_MB,
                  env: dict | None = None) -> list[Result]:
    """Run ``cases`` in order in one fresh process capped at ``mem_mb`` (RLIMIT_AS); one
    ``Result`` per case (see the module docstring)."""
    limit = mem_mb * 1024 * 1024

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    payload = json.dumps([{"args": list(c.args), "cwd": str(cwd), "timeout": c.timeout} for c in cases])
    total = sum(c.timeout for c in cases) + 60
    full_env = {**os.environ, "PYTHONFAULTHANDLER": "", "COLUMNS": "200", **(env or {})}
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-c", _DRIVER], cwd=cwd, input=payload.encode(), capture_output=True,
                           timeout=total, preexec_fn=cap, env=full_env)
        stdout, stderr, rc = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"), p.returncode
    except subprocess.TimeoutExpired as e:
        stdout = (e.stdout or b"").decode("utf-8", "replace")
        stderr, rc = (e.stderr or b"").decode("utf-8", "replace"), None
    done = [json.loads(line[len(_MARK):]) for line in stdout.splitlines() if line.startswith(_MARK)]
    results = []
    for i, case in enumerate(cases):
        args = ["convdsl", *case.args]
        if i < len(done):
            d = done[i]
            results.append(Result(args, d["rc"], d["out"], d["err"], d["s"]))
        else:  # the process died during this case (or before it): what run_cli would report
            results.append(Result(args, rc if i == len(done) else None, "", stderr[-4000:] if i == len(done) else "",
                                  time.monotonic() - t0))
    return results
