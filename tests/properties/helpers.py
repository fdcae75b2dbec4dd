"""Settings and the failure hook shared by the property tests.

Example counts follow the hypothesis profile (``HYPOTHESIS_PROFILE``, see
tests/conftest.py): ``ci`` keeps the whole property suite to a few minutes on
two cores, ``thorough`` is for long runs.  A property that fails saves the
failing program under tests/regressions/ (``found_<test>.cdl``, overwritten
while hypothesis shrinks, so what stays is the minimal program) unless
``CONVDSL_SAVE_REGRESSIONS=0``; tests/regressions/test_replay.py replays it
in every run from then on.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hypothesis import HealthCheck, settings

from convdsl.verify import regressions
from convdsl.verify.properties import PROPERTIES, Case, Unsupported

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
REGRESSIONS = Path(__file__).resolve().parent.parent / "regressions"
SLOW_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
               HealthCheck.function_scoped_fixture]


def examples(ci: int, thorough: int) -> settings:
    """Per-test example counts: ``ci`` in CI (and any other profile), ``thorough`` in thorough."""
    n = thorough if PROFILE == "thorough" else ci
    return settings(max_examples=n, deadline=None, suppress_health_check=SLOW_HEALTH)


def check(case: Case, names: list[str], found_by: str) -> None:
    """Run the named properties on ``case``; on failure save the program and re-raise."""
    started = time.perf_counter()
    try:
        for name in names:
            try:
                PROPERTIES[name](case)
            except Unsupported as e:  # the backend lacks an op: not a disagreement
                from hypothesis import event

                event(f"{name}: {e}")
    except Exception as e:
        if os.environ.get("CONVDSL_SAVE_REGRESSIONS", "1") != "0":
            regressions.save(case, REGRESSIONS, ",".join(names), found_by=found_by,
                             error=f"{type(e).__name__}: {e}", name=f"found_{found_by}")
        _log(found_by, case, names, started, f"{type(e).__name__}: {str(e)[:300]}")
        raise
    _log(found_by, case, names, started, None)


def _log(test: str, case: Case, names: list[str], started: float, error: str | None) -> None:
    """With CONVDSL_VERIFY_LOG=path, one JSON line per example (the thorough run's counts)."""
    path = os.environ.get("CONVDSL_VERIFY_LOG")
    if not path:
        return
    import hashlib

    rec = {"test": test, "program": hashlib.sha1(case.text.encode()).hexdigest()[:12], "checks": names,
           "seconds": round(time.perf_counter() - started, 3), "error": error,
           "nodes": len(case.cache["graph"]) if "graph" in case.cache else None}
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
