"""``convdsl/lsp/analysis.py``: an analysis stopped at its diagnostics (``defer``) and finished later
is the whole analysis; the counts it finishes with are ``convdsl stats --json``'s."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from convdsl.lsp.analysis import ModuleCache, Sources, analyze, finish

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_deferred_analysis_has_the_diagnostics_then_finishes_to_the_whole():
    path = EXAMPLES / "resnet18.cdl"
    text = path.read_text()
    broken = text.replace("classes=1000", "classes=oops", 1)
    sources, cache = Sources(), ModuleCache()
    deferred = analyze(str(path), broken, sources, cache, defer=True)
    whole = analyze(str(path), broken, Sources(), ModuleCache())
    assert [(p.file, p.span, p.error.message) for p in deferred.problems] == \
        [(p.file, p.span, p.error.message) for p in whole.problems] != []

    a = analyze(str(path), text, sources, cache, defer=True)
    assert a.problems == [] and a.index is None and a.later
    assert all(n.totals == {} for n in a.networks) and all(i.params is None for i in a.notes.instances)
    finish(a)
    assert a.index is not None and not a.later
    stats = json.loads(subprocess.run([sys.executable, "-m", "convdsl", "stats", str(path), "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    (net,) = a.networks
    assert net.totals["params"] == stats["totals"]["params"] and net.totals["macs"] == stats["totals"]["macs"]
    ops = [n for notes in a.ops.values() for n in notes]
    assert sum(n.params for n in ops) == stats["totals"]["params"]
