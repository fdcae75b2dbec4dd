"""Memory refused before allocation includes what ops allocate inside them (OpDef.workspace).

Three checks, on the ops whose internal buffers dwarf their outputs (attention logits, halo
windows, relative-position tables, im2col and unfold buffers, FFT buffers, scan state):

1. Measured: one forward pass of each op at a size where its workspace is 50-400 MB, in a fresh
   process; the peak RSS during the pass may exceed the model (every op output + the largest
   workspace, convdsl/lang/memory.py) by at most SLACK.
2. Enforced: ``convdsl run prog.cdl --max-memory L`` under an address-space limit of (what the
   same command needs for a tiny network) + L + SLACK succeeds when the model says the run fits
   in L, and is refused (exit code 6) before allocating when it does not.
3. Refused fast: halo_attention(halo=100000) (1.28 TB) and mhsa(rel_pos=true) at L=60000 (29 GB)
   under the default limit, and --bind that would take sizes around the limit.

glibc's mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_) so freed buffers go back to the system
and RSS follows what the program holds; torch runs one thread so thread pools and arenas are
the same in every run.  SLACK covers the interpreter's, torch's and oneDNN's own allocations made
during a pass (kernel caches, a scratchpad): measured at 2-10 MB per op, bounded here at 48 MiB.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adversarial.batch import Case, run_cli_batch
from tests.adversarial.harness import assert_refused

MiB = 1024**2
SLACK = 48 * MiB
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONFAULTHANDLER": ""}
ROOT = Path(__file__).resolve().parents[2]


def program(x: str, op: str, second: str | None = None) -> str:
    if second is None:
        return f"network n(x: {x}) {{\n  return x | {op}\n}}\n"
    return f"network n(x: {x}, k: {second}) {{\n  return (x, k) | {op}\n}}\n"


# ops whose workspace is what a run allocates most of (sizes: workspace 50-400 MB)
WORST = {
    "halo_attention": program("f32[1, 32, 32, 32]", "halo_attention(heads=4, block_size=8, halo=16)"),
    "mhsa_rel_pos": program("f32[1, 1536, 64]", "mhsa(4, rel_pos=true)"),
    "mhsa_causal": program("f32[1, 1536, 64]", "mhsa(4, mask=causal)"),
    "window_attention": program("f32[1, 56, 56, 96]", "window_attention(heads=3, window=28, shift=14)"),
    "conv_attention": program("f32[1, 64, 56, 56]", "conv_attention(heads=4)"),
    "global_filter": program("f32[1, 64, 256, 256]", "global_filter"),
    "adaptive_filter": program("f32[1, 64, 128, 128]", "adaptive_filter(blocks=8)"),
    "fft_conv": program("f32[1, 64, 65536]", "fft_conv"),
    "s4d": program("f32[1, 64, 32768]", "s4d(state=64)"),
    "selective_scan": program("f32[1, 64, 8192]", "selective_scan(state=16, d_conv=4)"),
    "conv2d_f64_im2col": program("f64[1, 64, 128, 128]", "conv2d(64, 3, pad=1)"),
    "conv_transpose2d": program("f32[1, 64, 64, 64]", "conv_transpose2d(64, 4, stride=2, pad=1)"),
    "dynamic_filter_unfold": program("f32[1, 64, 128, 128]", "dynamic_filter(3)", "f32[1, 9, 128, 128]"),
}


def _python(args: list[str], stdin: str | None = None, limit: int | None = None, timeout: float = 300):
    def cap() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=cap, env={**os.environ, **ENV}, cwd=ROOT)


@pytest.fixture(scope="module")
def measured():
    names = list(WORST)
    p = _python(["-m", "tests.adversarial.memprobe", "ops"], stdin=json.dumps([WORST[n] for n in names]))
    assert p.returncode == 0, p.stderr[-3000:]
    return dict(zip(names, (json.loads(line) for line in p.stdout.splitlines())))


@pytest.mark.parametrize("name", list(WORST))
def test_workspace_bounds_what_the_op_allocates(measured, name):
    m = measured[name]
    model = m["outputs"] + m["workspace"]
    assert m["workspace"] >= 16 * MiB, f"{name}: the case is too small to test anything ({m})"
    assert m["peak"] <= model + SLACK, (f"{name}: a forward pass took {m['peak'] / MiB:.0f} MiB, the model allows "
                                        f"{model / MiB:.0f} MiB + {SLACK / MiB:.0f} MiB")


def _cli(tmp_path: Path, args: list[str], limit: int | None = None) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / f"probe{len(list(tmp_path.glob('probe*')))}.json"
    p = _python(["-m", "tests.adversarial.memprobe", "cli", str(out), "--", *args], limit=limit)
    report = json.loads(out.read_text()) if out.exists() else {"rc": None}
    return report, p


# (op, a size the model puts at 80-90% of the limit, a size just over it) for `convdsl run --max-memory`
RUNS = [
    ("halo_attention(heads=4, block_size=8, halo=HALO)", "f32[1, 32, 32, 32]", 36, 40),  # ~455 / 521 MiB
    ("mhsa(4, rel_pos=true)", "f32[1, L, 64]", 2048, 4096),  # ~405 / 1,600 MiB
]
LIMIT = 512 * MiB


@pytest.mark.parametrize("op,x,fits,too_big", RUNS, ids=[r[0].split("(")[0] for r in RUNS])
def test_a_run_under_max_memory_stays_under_it(tmp_path, op, x, fits, too_big):
    def prog(size: int) -> str:
        f = tmp_path / f"net{size}.cdl"
        f.write_text(program(x.replace("L", str(size)), op.replace("HALO", str(size))))
        return str(f)

    tiny_op = op.replace("HALO", "1")
    tiny = tmp_path / "tiny.cdl"
    tiny.write_text(program(x.replace("L", "16"), tiny_op))
    base, p = _cli(tmp_path, ["run", str(tiny)])
    assert base["rc"] == 0, p.stderr[-3000:]
    cap = base["vm_peak"] + LIMIT + SLACK
    run, p = _cli(tmp_path, ["run", prog(fits), "--max-memory", f"{LIMIT // MiB}MiB"], limit=cap)
    assert run["rc"] == 0, (f"accepted under --max-memory {LIMIT // MiB}MiB but failed under an address-space cap "
                            f"of baseline + limit + {SLACK // MiB} MiB:\n{p.stderr[-3000:]}")
    assert run["vm_peak"] - base["vm_peak"] > 64 * MiB, "the run allocated too little to test anything"
    over, p = _cli(tmp_path, ["run", prog(too_big), "--max-memory", f"{LIMIT // MiB}MiB"], limit=cap)
    assert over["rc"] == 6, p.stderr[-3000:]
    assert "resource error" in p.stderr and "--max-memory" in p.stderr
    assert over["vm_peak"] - base["vm_peak"] < 64 * MiB, "refused only after allocating"


def test_huge_workspaces_are_refused_before_anything_runs(tmp_path):
    files = {
        "halo": program("f32[1, 64, 64, 64]", "halo_attention(heads=8, block_size=8, halo=100000)"),
        "mhsa": program("f32[1, 60000, 64]", "mhsa(8, rel_pos=true)"),
        "window": program("f32[1, 4096, 4096, 96]", "window_attention(heads=3, window=4096)"),
        "fft_prime": program("f32[1, 8, 50018]", "fft_conv(kernel_len=3)"),  # 50,021 points: a prime-size DFT on TVM
    }
    for name, text in files.items():
        (tmp_path / f"{name}.cdl").write_text(text)
    cases = [Case("run", "halo.cdl"), Case("check", "mhsa.cdl"), Case("compile", "window.cdl", "-o", "out"),
             Case("check", "fft_prime.cdl", "--max-memory", "8GiB")]
    results = run_cli_batch(cases, cwd=tmp_path, mem_mb=2048)
    for r, name in zip(results, files):
        assert_refused(r, exit_code=6, location=f"{name}.cdl:2:", mentions="working memory")
        assert r.seconds < 20
    assert not (tmp_path / "out").exists()


def test_bind_sizes_are_checked_like_declared_ones(tmp_path):
    """--bind N=... is the size the memory check uses; the batch of bench/run checks again."""
    (tmp_path / "net.cdl").write_text(program("f32[N, 1024, 64]", "mhsa(8)"))  # 30 GB of logits at N=300
    results = run_cli_batch([Case("check", "net.cdl", "--bind", "N=300"),
                             Case("check", "net.cdl", "--bind", "N=300", "--max-memory", "64GiB"),
                             Case("bench", "net.cdl", "--batch", "300", "--backends", "torch")], cwd=tmp_path)
    assert_refused(results[0], exit_code=6, location="net.cdl:2:", mentions="working memory")
    assert results[1].returncode == 0, results[1].output[-2000:]
    assert_refused(results[2], exit_code=6, location="net.cdl:2:")
