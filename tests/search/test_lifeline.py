"""Workers die with their parent: the kernel's parent-death signal, or the watchdog elsewhere."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

# a parent that starts one child bound to it, prints the child's pid, then waits to be killed
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "bound"
    print(child.pid, flush=True)
    time.sleep(600)
""")
CHILD = textwrap.dedent("""
    import os, time
    from convdsl.search.lifeline import die_with_parent
    print(die_with_parent(os.getppid(), kernel={kernel}, interval=0.1) and "bound", flush=True)
    time.sleep(600)
""")


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("kernel", [True, False], ids=["pdeathsig", "watchdog"])
def test_a_bound_child_dies_when_its_parent_is_killed(kernel):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD.format(kernel=kernel)], stdout=subprocess.PIPE,
                              text=True)
    child = int(parent.stdout.readline())
    try:
        assert psutil.Process(child).ppid() == parent.pid
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _gone(child, 5.0), "the child outlived its parent"
    finally:
        if not _gone(child, 0):
            os.kill(child, signal.SIGKILL)


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    code = "from convdsl.search.lifeline import die_with_parent; die_with_parent(1 if __import__('os').getppid() != 1 else 2); print('alive')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "alive" not in r.stdout
