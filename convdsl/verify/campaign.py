"""A long random-testing run: many programs, every property, counts and failures kept.

    nice python -m convdsl.verify.campaign --programs 2000 --out campaign/ [--tvm-every 10]

Unlike a hypothesis test, which stops at its first failure, a campaign goes on:
program ``i`` is ``generate(RandomDraw(start + i))`` (reproducible from its
number), each property runs on it, and every failure is written to
``OUT/failures/<property>_<i>.cdl`` as a regression file (unshrunk; reduce it
before moving it to tests/regressions/).  ``OUT/log.jsonl`` gets one line per
program and ``OUT/summary.json`` the counts, rewritten as the run goes, so an
interrupted run still reports what it did.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
import zlib
from pathlib import Path

from convdsl.verify import regressions
from convdsl.verify.draws import RandomDraw
from convdsl.verify.inputs import KINDS
from convdsl.verify.programs import generate
from convdsl.verify.properties import PROPERTIES, Case, Unsupported

CHEAP = ["elaborate", "runs", "fmt", "reprint", "standalone", "twin", "passes", "prune", "quantize", "cast"]


def run(programs: int, out: Path, start: int = 0, tvm_every: int = 10, export_every: int = 10,
        max_statements: int = 8, cycle_kinds: bool = False) -> dict:
    import torch

    from convdsl.verify.differential import tvm_available

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "failures").mkdir(exist_ok=True)
    tvm = tvm_available("tvm-llvm")
    counts: collections.Counter = collections.Counter()
    failures: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    first: dict[str, int] = {}
    unsupported: collections.Counter = collections.Counter()
    t0 = time.time()
    for i in range(start, start + programs):
        p = generate(RandomDraw(i), max_statements)
        kind = KINDS[i % len(KINDS)] if cycle_kinds else None  # None: the seed picks (edge cases 0..6 only)
        case = Case(p.text, p.twin, seed=i, batch=1 + i % 3, weights_seed=i, kind=kind,
                    expected_shapes=[t.shape for t in p.outputs])
        names = list(CHEAP)
        h = zlib.crc32(p.text.encode())
        if export_every and h % export_every == 0:
            names.append("export")
        if tvm and tvm_every and (h // 7) % tvm_every == 0:
            names.append("tvm")
        if tvm and tvm_every and (h // 11) % (2 * tvm_every) == 0:
            names.append("quantize_tvm")
        if tvm and tvm_every and (h // 13) % (2 * tvm_every) == 0:
            names.append("bf16_tvm")
        rec = {"program": i, "checks": {}, "seconds": 0.0}
        started = time.perf_counter()
        rec["time"] = {}
        for name in names:
            t = time.perf_counter()
            try:
                PROPERTIES[name](case)
                rec["checks"][name] = "ok"
                counts[name] += 1
            except Unsupported as e:
                rec["checks"][name] = f"unsupported: {e}"
                counts[name + " (unsupported op)"] += 1
                unsupported[_signature(str(e))] += 1
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                why = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                rec["checks"][name] = why
                key = f"{name}: {_signature(why)}"
                failures[key] += 1
                first.setdefault(key, i)
                counts[name + " (failed)"] += 1
                regressions.save(case, out / "failures", name, found_by=f"campaign program {i}", error=why,
                                 name=f"{name}_{i}")
            rec["time"][name] = round(time.perf_counter() - t, 3)
        rec["seconds"] = round(time.perf_counter() - started, 3)
        if "graph" in case.cache:
            g = case.cache["graph"]
            rec["nodes"] = len(g)
            ops.update(n.op for n in g.nodes())
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        counts["programs"] += 1
        summary = {"programs": counts["programs"], "first_program": start, "cycle_kinds": cycle_kinds, "seconds": round(time.time() - t0),
                   "tvm": tvm, "checks": dict(sorted(counts.items())),
                   "failures": [{"kind": k, "count": v, "first_program": first[k]} for k, v in failures.most_common()],
                   "unsupported": dict(unsupported.most_common()), "ops": dict(ops.most_common())}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _signature(why: str) -> str:
    """The failure without numbers and names, to group failures of one cause."""
    import re

    why = re.sub(r"<string>:\d+:\d+", "", why)
    why = re.sub(r"\b\d+(\.\d+)?(e-?\d+)?\b", "#", why)
    return why[:140]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=2000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("campaign"))
    ap.add_argument("--tvm-every", type=int, default=10, help="run tvm-llvm on about 1 program in N (0: never)")
    ap.add_argument("--export-every", type=int, default=10, help="run torch.export on about 1 program in N")
    ap.add_argument("--max-statements", type=int, default=8)
    ap.add_argument("--cycle-kinds", action="store_true",
                    help="program i gets inputs of kind KINDS[i %% 9] (zeros, large, offset ...), not by seed")
    a = ap.parse_args(argv)
    s = run(a.programs, a.out, a.start, a.tvm_every, a.export_every, a.max_statements, a.cycle_kinds)
    print(json.dumps({k: v for k, v in s.items() if k != "ops"}, indent=2))


if __name__ == "__main__":
    main()
