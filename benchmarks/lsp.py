"""Language-server latency, measured through a real ``convdsl lsp`` over stdio (pygls's client).

    python benchmarks/lsp.py [--edits 40] [--big-edits 8] [--only-generated]

1. Edit examples/resnet50.cdl (alternately ``classes=1000`` / ``1001``, in the
   editor buffer only): time from sending the change until its diagnostics
   are published, and until the inlay hints requested right after the change
   are answered (goal: median <= 150 ms each).
2. Hover on an op of examples/blocks/resnet.cdl while resnet50 is open (goal: median <= 50 ms).
3. Generated 2,000-line files (``generated``): a library of 167 blocks and 4
   networks, edited in a block the last network uses (goal: < 1 s), and the worst
   case, one 1,900-line network edited in its head (all of it is elaborated
   again): open -> diagnostics and hints, then edits -> diagnostics, each edit a
   new text (nothing analysed before is reused whole).

The times include the client's round trip and the server's 15 ms debounce; the
server process's CPU time (psutil, 10 ms ticks) is printed beside them: on a
shared machine it is the figure that does not depend on the load.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.lsp.session import Session  # noqa: E402  (the test suite's LSP client harness)


def generated(lines: int = 2000, kind: str = "library") -> str:
    """A valid CDL file of about ``lines`` lines.

    ``library``: what a long model file looks like: many blocks (10 lines each,
    residual, with comments) and a few networks built from them.  ``one_network``:
    the worst case for an edit: 100 small blocks and one network of ~1,500
    statements (about 4,500 ops), which every edit re-parses and re-elaborates.
    """
    out: list[str] = []
    if kind == "one_network":
        for i in range(100):
            out += [f"block unit{i}(c, k=3)(x) {{",
                    "    y = x | conv2d(c, k, pad=same, bias=false) as conv | batchnorm as bn | relu",
                    "    return x + y if channels(x) == c else y", "}", ""]
        out += ["network big(image: f32[N, 3, 32, 32]) {", "    h = image | conv2d(16, 3, pad=1) as stem"]
        for j in range(lines - len(out) - 3):
            out.append(f"    h = h | unit{j % 100}(16) as u{j}" if j % 3 else f"    h = h | relu as r{j}")
        out += ["    return h | global_avgpool(keepdim=false) | linear(10) as fc", "}"]
        return "\n".join(out) + "\n"
    n_nets = 4
    n_blocks = (lines - n_nets * 40) // 11
    for i in range(n_blocks):
        out += [f"# block {i}: expand, depthwise {3 + 2 * (i % 3)}x{3 + 2 * (i % 3)}, project, residual",
                f"block unit{i}(c, expand=4, k={3 + 2 * (i % 3)})(x) {{",
                "    h = c * expand",
                "    y = x | conv2d(h, 1, bias=false) as expand_conv | batchnorm as bn1 | relu",
                "          | conv2d(h, k, pad=same, groups=depthwise, bias=false) as dw | batchnorm as bn2 | relu",
                "          | conv2d(c, 1, bias=false) as project | batchnorm as bn3",
                "    if channels(x) == c {",
                "        y = y + x",
                "    }",
                "    return y",
                "}"]
    for n in range(n_nets):
        out += ["", f"network net{n}(image: f32[N, 3, 64, 64], classes=100) {{",
                "    h = image | conv2d(16, 3, stride=2, pad=1) as stem | relu"]
        for j in range(36):
            out.append(f"    h = h | unit{(n * 36 + j) % n_blocks}({16 * (1 + j // 12)}) as b{j}")
        out += ["    return h | global_avgpool(keepdim=false) | linear(classes) as fc", "}"]
    return "\n".join(out) + "\n"


def server_process():
    """The ``convdsl lsp`` child process, for its CPU time (wall times are noisy on a shared machine)."""
    import psutil

    return next(c for c in psutil.Process().children() if "lsp" in " ".join(c.cmdline()))


def cpu(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:6.1f} ms  (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=40, help="edits of resnet50.cdl and hovers")
    ap.add_argument("--big-edits", type=int, default=8, help="edits of each generated 2,000-line file")
    ap.add_argument("--only-generated", action="store_true", help="skip resnet50.cdl and hover")
    args = ap.parse_args()
    s = Session(ROOT / "examples")
    proc = server_process()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
        print(f"CPU: {model}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
        if not args.only_generated:
            path = ROOT / "examples" / "resnet50.cdl"
            text = path.read_text()
            uri = s.open(path)
            s.diagnostics(uri, s.versions[uri])
            s.hints(uri)
            to_diag, to_hints, used = [], [], []
            for i in range(args.edits):
                new = text if i % 2 else text.replace("classes=1000", "classes=1001")
                c0 = cpu(proc)
                t0 = time.perf_counter()
                v = s.change(uri, new)
                hints = s.hints(uri)  # asked at once, as editors do; answered once the edit is analysed
                t1 = time.perf_counter()
                s.diagnostics(uri, v)
                to_hints.append(t1 - t0)
                to_diag.append(s.arrived[(uri, v)] - t0)
                used.append(cpu(proc) - c0)
                assert hints, "no hints"
            print(f"resnet50.cdl edit -> diagnostics:  {ms(to_diag)}")
            print(f"resnet50.cdl edit -> inlay hints:  {ms(to_hints)}")
            print(f"  server CPU time per edit:        {ms(used)}")

            blocks = ROOT / "examples" / "blocks" / "resnet.cdl"
            btext = blocks.read_text()
            buri = s.open(blocks)
            s.diagnostics(buri, s.versions[buri])
            line = btext[:btext.index("conv2d(c, 3, stride=stride")].count("\n")
            col = btext.splitlines()[line].index("conv2d(c, 3, stride=stride") + 2
            hovers = []
            for _ in range(args.edits):
                t0 = time.perf_counter()
                h = s.hover(buri, line, col)
                hovers.append(time.perf_counter() - t0)
                assert h is not None
            print(f"hover on an op (resnet blocks):     {ms(hovers)}")

        for kind in ("library", "one_network"):
            big = generated(kind=kind)
            with tempfile.TemporaryDirectory() as d:
                gpath = Path(d) / f"{kind}.cdl"
                gpath.write_text(big)
                c0 = cpu(proc)
                t0 = time.perf_counter()
                guri = s.open(gpath)
                diags = s.diagnostics(guri, s.versions[guri])
                t1 = time.perf_counter()
                c1 = cpu(proc)
                ghints = s.hints(guri, big.count("\n") + 1)
                t2 = time.perf_counter()
                c2 = cpu(proc)
                assert diags == [], diags[:3]
                edits, used, finished = [], [], []
                if kind == "one_network":  # the network's head: the whole network is elaborated again
                    old, pos = "linear(10)", big.rfind("linear(10)")
                    new = [f"linear({11 + i})" for i in range(args.big_edits)]
                else:  # a block that the last network uses: that network is elaborated again
                    block = big.rsplit("| unit", 1)[1].split("(")[0]
                    old, pos = "expand=4", big.index(f"block unit{block}(c, expand=4")
                    pos = big.index(old, pos)
                    new = [f"expand={5 + i}" for i in range(args.big_edits)]
                for i in range(args.big_edits):  # every edit a new text: nothing analysed before is reused whole
                    changed = big[:pos] + new[i] + big[pos + len(old):]
                    c3 = cpu(proc)
                    t3 = time.perf_counter()
                    v = s.change(guri, changed)
                    assert s.diagnostics(guri, v) == []
                    edits.append(time.perf_counter() - t3)
                    used.append(cpu(proc) - c3)
                    s.hover(guri, 0, 0)  # answered once the analysis is finished (index, statistics)
                    finished.append(cpu(proc) - c3)
                print(f"generated {kind}: {big.count(chr(10))} lines, {len(ghints)} hints")
                print(f"  open -> diagnostics {1000 * (t1 - t0):.0f} ms (server CPU {1000 * (c1 - c0):.0f} ms),"
                      f" then hints {1000 * (t2 - t1):.0f} ms (server CPU {1000 * (c2 - c1):.0f} ms)")
                print(f"  edit -> diagnostics {ms(edits)}")
                print(f"  server CPU per edit, to its diagnostics {ms(used)}")
                print(f"  server CPU per edit, analysis finished  {ms(finished)}")
    finally:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
