"""`convdsl bench`: one run over several backends, JSON rows, the kernel profile, and the
thread count applied to torch and TVM alike."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convdsl", "bench", str(ROOT / "examples" / "digits_cnn.cdl"), *args],
                          capture_output=True, text=True, timeout=600)


def test_bench_json_rows_profile_and_threads() -> None:
    out = _bench("--backends", "torch,tvm-llvm", "--repeat", "3", "--warmup", "1", "--json", "--profile", "--threads", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r["backend"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"torch", "tvm-llvm"}
    for r in rows.values():
        assert r["median_ms"] > 0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and r["samples"] == 3
        assert r["threads"] == 1  # both libraries ran on one thread
        # CPU time of the process over the timed samples / their wall time: one thread keeps at most
        # one core busy (a pool left at two threads would show up to 2)
        assert 0 < r["cores_busy"] <= 1.1
    assert rows["torch"]["speedup_vs_torch"] == 1.0
    assert rows["tvm-llvm"]["speedup_vs_torch"] == pytest.approx(rows["torch"]["median_ms"] / rows["tvm-llvm"]["median_ms"], rel=1e-2)
    prof = rows["tvm-llvm"]["profile"]
    assert prof and all(p["ms"] >= 0 for p in prof)
    assert rows["torch"]["profile"] is None  # only TVM modules have kernels to profile


def test_bench_refuses_an_unknown_backend_with_a_hint() -> None:
    out = _bench("--backends", "torch,tvm-lvm", "--repeat", "1")
    assert out.returncode != 0
    assert "unknown benchmark backend 'tvm-lvm'" in out.stderr and "tvm-llvm" in out.stderr
    assert "Traceback" not in out.stderr


def test_tvm_runs_on_every_core_available_unless_told_otherwise() -> None:
    """TVM's own default is its guess of physical cores (1 on a 2-vCPU machine)."""
    import os

    code = ("import os, convdsl.backends.tvm, tvm; "
            "print(tvm.get_global_func('runtime.NumThreads')(), len(os.sched_getaffinity(0)))")
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    threads, cores = out.stdout.split()
    assert threads == cores
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(env, TVM_NUM_THREADS="1"))
    assert out.stdout.split()[0] == "1"  # the user's setting wins


def test_timed_call_runs_the_module_on_inputs_placed_once_and_reports_the_pool() -> None:
    """What `convdsl bench` and benchmarks/peers.py time: the module on an input already on the device,
    the same result as a plain call; the child process reports TVM's pool as it runs."""
    code = """
import numpy as np
import convdsl.backends.tvm as ctvm
from convdsl.cli.common import program_graph
from convdsl.backends.tvm.targets import thread_pool
g = program_graph("examples/digits_cnn.cdl", None, (), (), (), None, 0)
m = ctvm.backend("tvm-llvm", progress=False).build_module(g)
x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
call = m.runner.timed_call([x])
a, b = call().numpy(), m(x)
x[...] = 0  # the timed call keeps its own copy of the input
c = call().numpy()
print(np.abs(a - b).max(), np.abs(a - c).max(), thread_pool())
"""
    import os

    env = dict(os.environ, TVM_NUM_THREADS="1", TVM_BIND_THREADS="0", TVM_THREAD_POOL_SPIN_COUNT="7")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    d_call, d_copy, pool = out.stdout.strip().split(" ", 2)
    assert float(d_call) == 0.0 and float(d_copy) == 0.0
    assert pool == "1 threads, unbound, spin 7"
