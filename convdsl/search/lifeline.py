"""Worker processes die with the search that started them, however it dies.

A search killed with ``kill -9`` runs no cleanup, so its evaluation workers (a torch process of
~850 MB each) would be orphaned and live on; multiprocessing's resource tracker, which exits when
the last process holding its pipe does, would live on with them.  Every worker therefore binds its
life to its parent's as its first act:

- on Linux the kernel sends it SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``);
- elsewhere (or if ``prctl`` fails) a daemon thread polls the parent and exits the worker;
- either way, a parent that died before the binding took effect is noticed at once
  (``getppid()`` is no longer the parent's pid) and the worker exits.

``PR_SET_PDEATHSIG`` fires when the *thread* that created the worker ends; the pool creates its
workers from the search's main thread (``submit``), which lives as long as the process.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5


def die_with_parent(parent_pid: int, kernel: bool = True, interval: float = POLL_SECONDS) -> str:
    """Bind this process's life to ``parent_pid``'s; returns how (``"pdeathsig"`` or ``"watchdog"``).
    ``kernel=False`` skips ``prctl`` (the watchdog alone, as on other systems)."""
    how = "pdeathsig" if kernel and _pdeathsig() else _start_watchdog(parent_pid, interval)
    if os.getppid() != parent_pid:  # the parent died before the binding: nobody will collect our result
        os._exit(1)
    return how


def _pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _start_watchdog(parent_pid: int, interval: float) -> str:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)  # orphaned: reparented to init or a subreaper

    threading.Thread(target=watch, name="convdsl-parent-watchdog", daemon=True).start()
    return "watchdog"
