"""Named points where a search can be held, so that tests kill it exactly there.

With ``CONVDSL_SEARCH_STOP_AT=NAME`` in its environment, a search that reaches the point
``NAME`` prints ``convdsl: stopped at NAME (pid P)`` to stderr and waits to be killed; every other
point, and every search without the variable, runs on.  The points:

    create:partial    the new history is written under its temporary name, not yet renamed
    running:ID        candidate ID is dispatched (its evaluation is in flight)
    stored:ID         candidate ID's result is committed, nothing else dispatched since
    report            the Pareto programs are written, the summary and the plot not yet

``tests/adversarial/test_search_kill.py`` kills a search with SIGKILL at each of them and checks
that no process is left and that ``--resume`` finishes with nothing lost or repeated.
"""
from __future__ import annotations

import os
import sys
import time

ENV = "CONVDSL_SEARCH_STOP_AT"


def stop_point(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    print(f"convdsl: stopped at {name} (pid {os.getpid()})", file=sys.stderr, flush=True)
    while True:  # until killed
        time.sleep(60)
